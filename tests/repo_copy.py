"""A copy of the repository as a plain clone would have it: the files git tracks, nothing
else (no other folder beside it, no untracked files, no .venv, no build output)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "copy_tracked"]


def copy_tracked(target: Path) -> Path:
    """Copy the tracked files (as they are in the work tree) to ``target``; skips the test
    when the repository is not a git checkout (there is no clone to compare with)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: there is no clone to compare with")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    for name in listed.decode().split("\0"):
        source = ROOT / name
        if not name or not source.is_file():  # deleted in the work tree, not yet in git
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)
    return target
