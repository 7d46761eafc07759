"""Where the current export is: one file, or the newest of a directory of dated exports.

Only names the operator configured are ever opened: the configured file, or regular files
directly inside the configured directory that match its pattern. Hidden files and the
temporary names writers use before their atomic rename (``.tmp``, ``.part``, ``~``) are
never candidates, and a symbolic link that leads out of the directory is ignored.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import ExportRejected

__all__ = ["Candidate", "candidates", "read_candidate"]

_TEMPORARY = (".tmp", ".part", ".partial", "~", ".swp")


@dataclass(frozen=True, slots=True)
class Candidate:
    path: Path
    # (device, inode, size, mtime_ns): a replaced or rewritten file has a new signature.
    signature: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def modified_at(self) -> str:
        return datetime.fromtimestamp(self.signature[3] / 1e9, UTC).isoformat(timespec="seconds")

    @property
    def mtime(self) -> float:
        return self.signature[3] / 1e9


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def candidates(source: Path, pattern: str | None) -> list[Candidate]:
    """Exports that could be published, newest first (for a directory: by name, as dated
    export names sort by date). Missing source: none."""
    if pattern is None:
        try:
            st = source.stat()
        except OSError:
            return []
        return [Candidate(source, _signature(st))] if stat.S_ISREG(st.st_mode) else []
    try:
        root = source.resolve(strict=True)
        entries = list(os.scandir(root))
    except OSError:
        return []
    out = []
    for entry in entries:
        name = entry.name
        if (
            name.startswith(".")
            or name.endswith(_TEMPORARY)
            or not fnmatch.fnmatchcase(name, pattern)
        ):
            continue
        path = root / name
        try:
            if path.resolve(strict=True).parent != root:
                continue  # a link out of the export directory
            st = path.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append(Candidate(path, _signature(st)))
    out.sort(key=lambda c: c.name, reverse=True)
    return out


def read_candidate(candidate: Candidate) -> bytes:
    """The candidate's bytes, exactly those of its signature: a file replaced or still being
    written while it is read is refused (and retried at the next check)."""
    try:
        fd = os.open(candidate.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ExportRejected(f"cannot open the export: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        if _signature(os.fstat(f.fileno())) != candidate.signature:
            raise ExportRejected("the export changed before it could be read")
        data = f.read()
        if (
            _signature(os.fstat(f.fileno())) != candidate.signature
            or len(data) != candidate.signature[2]
        ):
            raise ExportRejected("the export changed while it was read")
    return data
