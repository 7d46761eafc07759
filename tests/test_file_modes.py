"""Files holding citizens' data are created 0600, whatever the umask: the message log and its
SQLite -wal/-shm files, the case database, legacy exports (the evidence bundle written by
``audit export`` is checked in test_evidence). Files an older version left world-readable are
narrowed when opened again."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from case_service.store import Store
from xroad_hub.demo.legacy_exports import write_atomic
from xroad_hub.messagelog.sqlite import SQLiteMessageLog

from .test_messagelog import _rec


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sqlite_files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask most systems run with: without care, new files are 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_message_log_and_its_wal_files_are_private(tmp_path: Path) -> None:
    db = tmp_path / "var" / "messages.db"
    log = SQLiteMessageLog(db)
    await log.open()
    try:
        await log.append(_rec(0))
        files = sqlite_files(db)
        assert all(f.exists() for f in files)
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await log.close()


async def test_world_readable_message_log_is_narrowed_on_open(tmp_path: Path) -> None:
    db = tmp_path / "messages.db"
    log = SQLiteMessageLog(db)
    await log.open()
    await log.append(_rec(0))
    await log.close()
    db.chmod(0o644)  # as an older version left it
    reopened = SQLiteMessageLog(db)
    await reopened.open()
    try:
        assert mode(db) == 0o600
        await reopened.append(_rec(1))
        assert {f.name: mode(f) for f in sqlite_files(db)} == {
            f.name: 0o600 for f in sqlite_files(db)
        }
    finally:
        await reopened.close()


async def test_case_database_is_private(tmp_path: Path) -> None:
    db = tmp_path / "case-service" / "cases.db"
    store = Store(db)
    await store.open()
    try:
        files = sqlite_files(db)
        assert {f.name: mode(f) for f in files if f.exists()} == {f.name: 0o600 for f in files}
        assert db.exists()
    finally:
        await store.close()


def test_legacy_exports_are_private(tmp_path: Path) -> None:
    export = tmp_path / "exports" / "titledeeds.txt"
    write_atomic(export, b"1552806801307 ...\n")
    assert mode(export) == 0o600
    export.chmod(0o644)
    write_atomic(export, b"next night's export\n")  # replaced, not rewritten in place
    assert mode(export) == 0o600
