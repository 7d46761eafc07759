"""The suite needs nothing outside the repository: a plain clone carries its test data.

Only the files git tracks are copied to a fresh directory with nothing beside it (no
sibling folders, no untracked files, no .venv), and there every test module is collected
(module-level reads of data files fail collection) and the modules that read data files
are run. A test reading from outside the repository, or data that was never committed,
fails here, in CI, before a new user's clone does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .repo_copy import copy_tracked

# Modules that read files of the repository at run time (not only at import).
DATA_READERS = ["tests/test_merkle.py", "tests/test_catalog.py", "tests/test_soap_wsdl.py"]


def test_suite_runs_from_a_plain_clone(tmp_path: Path) -> None:
    clone = copy_tracked(tmp_path / "clone" / "xroad-hub")
    for reader in DATA_READERS:
        assert (clone / reader).is_file(), f"{reader} is not tracked by git"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    # The clone's own packages come first on sys.path (python -m pytest adds the cwd), so
    # its files are the ones read, not the work tree's.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
    collected = subprocess.run(
        [*command, "--collect-only"], cwd=clone, env=env, capture_output=True, text=True
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    ran = subprocess.run(
        [*command, *DATA_READERS], cwd=clone, env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert " passed" in ran.stdout.splitlines()[-1]
