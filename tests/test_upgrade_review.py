"""Hostile review of ``node upgrade-log`` (xroad_hub/messagelog/upgrade.py): each test is a
defect found, reproduced on a version 4 log made as tests/test_log_upgrade.py makes it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests import test_log_upgrade as base
from xroad_hub.messagelog import upgrade
from xroad_hub.messagelog.audit import verify_log
from xroad_hub.messagelog.upgrade import UpgradeError, upgrade_sqlite_log

from .conftest import Fed
from .sqlite_db import sqlite_db

pytest_plugins = ["tests.messagelog_backends"]

logs = base.logs


def _count(path: Path) -> int:
    with sqlite_db(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM exchange").fetchone()[0])


async def test_a_changed_subject_index_is_still_reported_after_the_upgrade(fed: Fed, logs) -> None:
    """Version 4's audit reports a subject index that lacks a subject (the citizen's tracker
    misses the exchange); the upgrade must not repair it silently (SQLite rebuilt it with
    the trigger, PostgreSQL copies it as it is)."""
    _, v4 = logs
    with sqlite_db(v4) as conn:
        (index, subject) = conn.execute(
            "SELECT leaf_index, subject FROM exchange_subject ORDER BY leaf_index LIMIT 1"
        ).fetchone()
        conn.execute(
            "DELETE FROM exchange_subject WHERE leaf_index = ? AND subject = ?", (index, subject)
        )
    try:
        upgrade_sqlite_log(v4)
    except UpgradeError:
        return  # refusing, naming the entry, is as good
    report = verify_log(v4, base._roots(fed))
    assert not report.ok
    assert "subject index lacks" in str(report.findings)


async def test_a_text_leaf_gives_an_upgrade_error_naming_the_entry(logs) -> None:
    _, v4 = logs
    with sqlite_db(v4) as conn:
        conn.execute("UPDATE exchange SET leaf = CAST(leaf AS TEXT) WHERE leaf_index = 2")
    with pytest.raises(UpgradeError, match="entry 2"):
        upgrade_sqlite_log(v4)


async def test_the_command_explains_a_filesystem_error_instead_of_a_traceback(logs) -> None:
    _, v4 = logs
    v4.with_name(v4.name + ".upgrading").mkdir()  # a leftover that cannot be unlinked
    before = v4.read_bytes()
    run = base._upgrade_log(str(v4))
    assert "Traceback" not in run.stderr
    assert run.returncode == 1, run.stderr
    assert v4.read_bytes() == before


async def test_a_second_upgrade_cannot_put_its_half_copied_log_in_place(logs) -> None:
    """Two upgrades of one file (the operator ran it twice): the second, starting as the
    first released its lock, deleted the first's FILE.upgrading and built its own there,
    which the first then renamed over FILE, half copied."""
    _, v4 = logs
    entries = _count(v4)
    second_mid, first_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        def progress(done: int, total: int) -> None:
            second_mid.set()
            first_done.wait(30)

        try:
            upgrade_sqlite_log(v4, progress)
        except BaseException as exc:
            errors.append(exc)
        finally:
            second_mid.set()

    real_link = upgrade.os.link
    first = threading.get_ident()
    other = threading.Thread(target=second)

    def link(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.get_ident() == first and not other.is_alive():
            other.start()
            second_mid.wait(30)
        return real_link(src, dst, *args, **kwargs)

    upgrade.os.link = link  # type: ignore[assignment]
    try:
        try:
            upgrade_sqlite_log(v4)
            first_ok = True
        except UpgradeError:
            first_ok = False
        # Whatever each upgrade said: FILE holds every entry the moment the first one ends.
        if first_ok:
            assert _count(v4) == entries
    finally:
        first_done.set()
        other.join(60)
        upgrade.os.link = real_link  # type: ignore[assignment]
    assert _count(v4) == entries


@pytest.mark.parametrize("schema", [None, "node_a"])
def test_a_malformed_dsn_is_explained_without_its_password(schema: str | None) -> None:
    dsn = "postgresql://u:s3cretpw@127.0.0.1:notaport/test"
    run = base._upgrade_log(dsn, *(["--schema", schema] if schema else []))
    assert "Traceback" not in run.stderr
    assert run.returncode in (1, 2), run.stderr
    assert "not valid" in run.stderr
    assert "s3cretpw" not in run.stderr + run.stdout


def test_a_schema_name_postgres_would_truncate_is_refused_before_connecting() -> None:
    """validate_schema_name allows 63 characters; SCHEMA_upgrading and SCHEMA_v4 of a long
    one were cut to 63 by PostgreSQL (the old log kept as SCHEMA_v, reported as SCHEMA_v4)."""
    with pytest.raises(UpgradeError, match="too long"):
        upgrade.upgrade_postgres_log("postgresql://127.0.0.1:1/none", "n" * 61)
