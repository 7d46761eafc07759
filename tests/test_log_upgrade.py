"""Upgrading a version 4 SQLite message log (leaf stored in each row) to version 5 (leaf
hash stored, leaf rebuilt from the columns): `xroad-hub node upgrade-log`.

The version 4 file is made here from a real node's log, with version 4's table as that
version created it: the same entries, checkpoints (witnessed, timestamped) and leaves."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from cryptography import x509

from xroad_hub.messagelog.audit import verify_log
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.messagelog.sqlite import SQLiteMessageLog
from xroad_hub.messagelog.store import LogError
from xroad_hub.messagelog.upgrade import UpgradeError, upgrade_sqlite_log

from .conftest import Fed
from .sqlite_db import sqlite_db

if TYPE_CHECKING:
    from .messagelog_backends import PostgresBackend

pytest_plugins = ["tests.messagelog_backends"]

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"

# Version 4's exchange table and subject index, as its nodes created them.
_V4_SCHEMA = """
CREATE TABLE exchange (
    leaf_index INTEGER PRIMARY KEY, message_id TEXT NOT NULL, request_id TEXT NOT NULL,
    role TEXT NOT NULL, client TEXT NOT NULL, service TEXT NOT NULL, user_id TEXT,
    issue TEXT, represented_party TEXT, method TEXT NOT NULL, status INTEGER NOT NULL,
    error_type TEXT, started_at REAL NOT NULL, finished_at REAL NOT NULL,
    leaf BLOB NOT NULL, request_meta BLOB NOT NULL, request_signature BLOB NOT NULL,
    response_meta BLOB, response_signature BLOB, request_body BLOB, response_body BLOB,
    request_cert_sha256 TEXT NOT NULL REFERENCES certificate (sha256),
    response_cert_sha256 TEXT REFERENCES certificate (sha256),
    subjects TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE exchange_subject (
    subject TEXT NOT NULL, leaf_index INTEGER NOT NULL REFERENCES exchange (leaf_index),
    PRIMARY KEY (subject, leaf_index)
) WITHOUT ROWID;
CREATE TRIGGER exchange_subject_index AFTER INSERT ON exchange
BEGIN
    INSERT INTO exchange_subject SELECT DISTINCT value, NEW.leaf_index FROM json_each(NEW.subjects);
END;
CREATE TABLE certificate (sha256 TEXT PRIMARY KEY, der BLOB NOT NULL);
CREATE TABLE checkpoint (
    size INTEGER PRIMARY KEY, root BLOB NOT NULL, note TEXT NOT NULL,
    cert_sha256 TEXT NOT NULL REFERENCES certificate (sha256), created_at REAL NOT NULL,
    witness_cert_sha256 TEXT REFERENCES certificate (sha256), timestamp_token BLOB
);
CREATE TABLE globalconf (
    sha256 TEXT PRIMARY KEY, generated_at REAL NOT NULL, expires_at REAL NOT NULL,
    signed BLOB NOT NULL, signer_cert_sha256 TEXT NOT NULL REFERENCES certificate (sha256)
);
PRAGMA user_version = 4;
"""
_V4_COLUMNS = (
    "leaf_index", "message_id", "request_id", "role", "client", "service", "user_id", "issue",
    "represented_party", "method", "status", "error_type", "started_at", "finished_at", "leaf",
    "request_meta", "request_signature", "response_meta", "response_signature",
    "request_body", "response_body", "request_cert_sha256", "response_cert_sha256", "subjects",
)  # fmt: skip


@pytest.fixture
async def logs(fed: Fed, http, tmp_path: Path) -> tuple[Path, Path]:
    """(the provider node's version 5 log, the same log as version 4 wrote it)."""
    for path in ("echo/a", "echo/status/404", "restricted", "nosuch", "echo/1101700203450"):
        url = fed.url(DGA) + f"/r1/TH/GOV/DBD/registry/{path}"
        headers = {"X-Road-Client": "TH/GOV/DGA/devportal", "X-Road-Id": str(uuid.uuid4())}
        async with http.post(url, data=b"body", headers=headers):
            pass
    await fed.federation.nodes[DBD].checkpointer.checkpoint()
    v5 = tmp_path / "v5.sqlite"
    with sqlite_db(fed.federation.nodes[DBD].runtime.log.path) as a, sqlite_db(v5) as b:
        a.backup(b)
    v4 = tmp_path / "messagelog.sqlite"
    with sqlite_db(v4) as conn:
        conn.executescript(_V4_SCHEMA)
        conn.execute("ATTACH ? AS v5", (str(v5),))
        for table in ("certificate", "checkpoint", "globalconf"):
            conn.execute(f"INSERT INTO {table} SELECT * FROM v5.{table}")
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM v5.exchange ORDER BY leaf_index").fetchall()
        marks = ", ".join("?" * len(_V4_COLUMNS))
        conn.executemany(
            f"INSERT INTO main.exchange ({', '.join(_V4_COLUMNS)}) VALUES ({marks})",
            [[leaf_of(r) if c == "leaf" else r[c] for c in _V4_COLUMNS] for r in rows],
        )
    return v5, v4


def _roots(fed: Fed) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(fed.pki.root_ca.cert.read_bytes())]


async def test_an_upgraded_log_verifies_with_its_old_checkpoints(fed: Fed, logs) -> None:
    v5, v4 = logs
    # A node of this version refuses the old log, and says how to upgrade it.
    with pytest.raises(LogError, match=f"node upgrade-log {v4}"):
        await SQLiteMessageLog(v4).open()
    # And the auditor's tools say how to read it.
    refused = verify_log(v4, _roots(fed))
    assert not refused.ok
    assert "upgrade a copy of it with 'xroad-hub node upgrade-log COPY'" in str(refused.findings)
    before = v4.read_bytes()
    kept = upgrade_sqlite_log(v4)
    assert kept == v4.with_name("messagelog.sqlite.v4")
    assert kept.read_bytes() == before  # the old file, untouched, for audit
    assert v4.stat().st_mode & 0o777 == 0o600
    report = verify_log(v4, _roots(fed))
    assert report.ok, report.findings
    original = verify_log(v5, _roots(fed))
    assert original.ok and original.entries >= 5
    assert (report.entries, report.root) == (original.entries, original.root)
    assert (report.checkpoints, report.witnessed) == (original.checkpoints, original.witnessed)
    with sqlite_db(v4) as a, sqlite_db(v5) as b:
        query = "SELECT * FROM exchange ORDER BY leaf_index"
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
        query = "SELECT * FROM exchange_subject ORDER BY leaf_index, subject"
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
    log = SQLiteMessageLog(v4)  # and the node opens it, with the same tree
    await log.open()
    try:
        assert log.tree_head() == (report.entries, report.root)
    finally:
        await log.close()
    with pytest.raises(UpgradeError, match="already"):
        upgrade_sqlite_log(v4)


async def test_an_entry_whose_columns_do_not_give_its_leaf_stops_the_upgrade(logs) -> None:
    _, v4 = logs
    with sqlite_db(v4) as conn:
        conn.execute("UPDATE exchange SET user_id = 'someone else' WHERE leaf_index = 3")
    before = v4.read_bytes()
    with pytest.raises(UpgradeError, match="entry 3: its columns do not give the leaf"):
        upgrade_sqlite_log(v4)
    assert v4.read_bytes() == before
    assert sorted(p.name for p in v4.parent.iterdir() if p.name.startswith(v4.name)) == [v4.name]


def _upgrade_log(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "xroad_hub.cli", "node", "upgrade-log", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


async def test_the_command_upgrades_and_explains_a_refusal(logs, tmp_path: Path) -> None:
    _, v4 = logs
    run = _upgrade_log

    done = run(str(v4))
    assert done.returncode == 0, done.stderr
    with sqlite_db(v4) as conn:
        entries = conn.execute("SELECT COUNT(*) FROM exchange").fetchone()[0]
    assert f"upgraded {entries} of {entries} entries" in done.stderr
    assert f"kept as {v4}.v4" in done.stdout
    again = run(str(v4))
    assert again.returncode == 1
    assert "is a version 5 log already: nothing to do" in again.stderr
    assert "Traceback" not in again.stderr
    # The old file back in place: the one an earlier upgrade kept is never overwritten.
    kept = v4.with_name(v4.name + ".v4")
    v4.write_bytes(kept.read_bytes())
    refused = run(str(v4))
    assert refused.returncode == 1
    assert f"{kept} exists (an earlier upgrade kept it): move it aside first" in refused.stderr
    missing = run(str(tmp_path / "nothing.sqlite"))
    assert missing.returncode == 1 and "is not a file" in missing.stderr


async def _pg_as_version_4(b: PostgresBackend, v5: Path) -> None:
    """The log ``v5`` in the backend's schema as version 4 kept it: leaves, no hashes."""
    await b.load(v5)
    s = f'"{b.schema}"'
    conn = await asyncpg.connect(b.dsn)
    try:
        rows = await conn.fetch(f"SELECT * FROM {s}.exchange")
        await conn.execute(f"ALTER TABLE {s}.exchange ADD COLUMN leaf bytea")
        await conn.executemany(
            f"UPDATE {s}.exchange SET leaf = $1 WHERE leaf_index = $2",
            [(leaf_of(r), r["leaf_index"]) for r in rows],
        )
        await conn.execute(
            f"ALTER TABLE {s}.exchange DROP COLUMN leaf_hash, DROP COLUMN request_body_sha256,"
            " DROP COLUMN response_body_sha256, ALTER COLUMN leaf SET NOT NULL"
        )
        await conn.execute(f"UPDATE {s}.schema_version SET version = 4")
    finally:
        await conn.close()


async def _schemas(b: PostgresBackend) -> dict[str, int | None]:
    """The test's schemas and the log version each holds."""
    conn = await asyncpg.connect(b.dsn)
    try:
        found = {}
        for (name,) in await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", b.schema + "%"
        ):
            found[name] = await conn.fetchval(f'SELECT version FROM "{name}".schema_version')
        return found
    finally:
        for name in (b.schema + "_v4", b.schema + "_upgrading"):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


async def test_a_postgres_log_is_upgraded_in_one_transaction(
    fed: Fed, logs, pg_backend: PostgresBackend
) -> None:
    v5, _ = logs
    await _pg_as_version_4(pg_backend, v5)
    with pytest.raises(LogError, match=f"upgrade-log DATABASE --schema {pg_backend.schema}'"):
        await pg_backend.make().open()
    before = await asyncio.to_thread(verify_log, pg_backend.source(), _roots(fed))
    assert "upgrade a copy of it" in str(before.findings)
    # An altered entry: the whole upgrade is refused, and nothing in the database changed.
    await pg_backend.tamper("UPDATE {exchange} SET user_id = 'someone else' WHERE leaf_index = 2")
    refused = await asyncio.to_thread(_upgrade_log, *pg_backend.cli_args())
    assert refused.returncode == 1
    assert "entry 2: its columns do not give the leaf stored with them" in refused.stderr
    assert await _schemas(pg_backend) == {pg_backend.schema: 4}
    # The honest log.
    await pg_backend.cleanup()
    await _pg_as_version_4(pg_backend, v5)
    done = await asyncio.to_thread(_upgrade_log, *pg_backend.cli_args())
    assert done.returncode == 0, done.stderr
    assert f"kept as schema {pg_backend.schema}_v4" in done.stdout
    original = verify_log(v5, _roots(fed))
    report = await asyncio.to_thread(verify_log, pg_backend.source(), _roots(fed))
    assert report.ok, report.findings
    assert (report.entries, report.root, report.witnessed) == (
        original.entries, original.root, original.witnessed,
    )  # fmt: skip
    assert await _schemas(pg_backend) == {pg_backend.schema: 5, pg_backend.schema + "_v4": 4}
