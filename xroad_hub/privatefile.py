"""Files that hold citizens' data are the owner's alone (0600) from the moment they exist.

Message logs (and SQLite's -wal/-shm beside them, which SQLite creates with the database
file's mode), evidence bundles, legacy exports: never readable by other local users, not even
between creation and a later chmod. A file an older version created with a wider mode is
narrowed when it is opened again.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRIVATE_MODE", "ensure_private", "write_private"]

PRIVATE_MODE = 0o600
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def ensure_private(path: Path, *, sqlite: bool = False) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist, and narrow it (and, for a
    SQLite database, its existing -wal/-shm/-journal files) to 0600 if it does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)
    finally:
        os.close(fd)
    for suffix in _SQLITE_SIDE_FILES if sqlite else ():
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.chmod(PRIVATE_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) atomically: a temporary name, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, PRIVATE_MODE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), PRIVATE_MODE)  # a leftover temporary file may be wider
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
