"""The suite needs nothing outside the repository: a plain clone carries its test data.

Only the files git tracks are copied to a fresh directory with nothing beside it (no
``../shared``, no untracked files, no .venv), and there every test module is collected
(module-level reads of data files fail collection) and the modules that read data files
are run. A test reading from outside the repository, or data that was never committed,
fails here, in CI, before a new user's clone does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Modules that read files of the repository at run time (not only at import).
DATA_READERS = ["tests/test_merkle.py", "tests/test_catalog.py", "tests/test_soap_wsdl.py"]


def _tracked_files() -> list[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: there is no clone to compare with")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    return [name for name in listed.decode().split("\0") if name]


def test_suite_runs_from_a_plain_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone" / "xroad-hub"
    for name in _tracked_files():
        source = ROOT / name
        if not source.exists():  # deleted in the work tree, not yet in git
            continue
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, clone / name)
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
