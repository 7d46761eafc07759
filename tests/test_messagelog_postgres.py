"""What only the PostgreSQL message log has: one writer per schema (advisory lock), strict
schema names, several nodes in one database, the SQLite layout, and failing closed."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import orjson
import pytest

from xroad_hub.messagelog import LogRecord, MessageLog, SQLiteMessageLog
from xroad_hub.messagelog import postgres as pg
from xroad_hub.messagelog import sqlite as sq
from xroad_hub.messagelog.postgres import PostgresMessageLog, validate_schema_name
from xroad_hub.messagelog.store import LogError
from xroad_hub.protocol import merkle
from xroad_hub.protocol.message import MAX_CERT, MAX_META, MAX_SIGNATURE

from .sqlite_db import sqlite_db

if TYPE_CHECKING:  # loaded by pytest as a plugin (below); importing it first breaks that
    from .messagelog_backends import PostgresBackend

pytest_plugins = ["tests.messagelog_backends"]


def _rec(i: int) -> LogRecord:
    return LogRecord(
        message_id=f"msg-{i}", request_id=f"req-{i}", role="provider",
        client="TH/GOV/DGA/citizenportal", service="TH/GOV/DOPA/population/personInfo",
        user_id=None, issue=None, represented_party=None, method="GET", status=200,
        error_type=None, started_at=1700000000.0 + i, finished_at=1700000000.5 + i,
        request_meta=b'{"id":"msg-%d"}' % i, request_signature=b"sig", request_body=b"body",
        request_cert=b"client cert DER",
    )  # fmt: skip


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Node1",  # PostgreSQL would fold it to node1: two spellings, one schema
        "1node",
        "node-1",
        "node 1",
        'x"; DROP SCHEMA public CASCADE; --',
        "node1\n",  # "$" in a regex would let this through
        "pg_node",
        "information_schema",
        "n" * 64,  # PostgreSQL would truncate it to 63 bytes
        "nöde",
    ],
)
def test_bad_schema_names_are_refused_before_any_sql(name: str) -> None:
    with pytest.raises(ValueError, match="invalid message log schema name"):
        PostgresMessageLog("postgresql://nowhere.invalid/x", schema=name)


@pytest.mark.parametrize("name", ["xroad_hub", "node_th_gov_dbd_hub1", "_n", "n" * 63])
def test_good_schema_names_are_accepted(name: str) -> None:
    assert validate_schema_name(name) == name
    # the DSN may hold a password: it never shows in a repr (hence in logs)
    assert "secret" not in repr(PostgresMessageLog("postgresql://u:secret@h/db", schema=name))


async def test_a_second_writer_is_refused_while_the_first_holds_the_schema(
    pg_backend: PostgresBackend,
) -> None:
    first = await pg_backend.open()
    assert await first.append(_rec(0)) == 0
    second = pg_backend.make()
    with pytest.raises(LogError, match=r"already open for writing by backend pid \d+"):
        await second.open()
    # the refused writer touched nothing: the first one numbers on
    assert await first.append(_rec(1)) == 1
    await first.close()
    # closing released the lock: the next writer continues the numbering
    third = await pg_backend.open()
    assert await third.append(_rec(2)) == 2


async def test_nodes_sharing_a_database_each_have_their_own_log(
    pg_backend: PostgresBackend,
) -> None:
    other = f"{pg_backend.schema}_b"
    a = await pg_backend.open()
    try:
        b = await pg_backend.open(schema=other)
        assert [await a.append(_rec(i)) for i in range(3)] == [0, 1, 2]
        assert [await b.append(_rec(i)) for i in range(2)] == [0, 1]
        assert (await a.count(), await b.count()) == (3, 2)
        assert a.tree_head() != b.tree_head()
    finally:
        await pg_backend.cleanup()
        conn = await asyncpg.connect(pg_backend.dsn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')
        await conn.close()


async def test_reopen_after_concurrent_batches_continues_numbering_and_tree_head(
    pg_backend: PostgresBackend,
) -> None:
    log = await pg_backend.open(max_batch=8)
    got = await asyncio.gather(*(log.append(_rec(i)) for i in range(40)))
    assert sorted(got) == list(range(40))
    head = log.tree_head()
    await log.close()
    log = await pg_backend.open()
    assert log.tree_head() == head
    assert await log.append(_rec(40)) == 40
    leaves = await log.leaves(0, 41)
    assert log.tree_head() == (41, merkle.root([merkle.leaf_hash(x) for x in leaves]))
    assert orjson.loads(leaves[40])["message_id"] == "msg-40"


async def test_another_schema_version_is_refused(pg_backend: PostgresBackend) -> None:
    await (await pg_backend.open()).close()
    await pg_backend.execute(f'UPDATE "{pg_backend.schema}".schema_version SET version = 1')
    with pytest.raises(LogError, match="schema version 1, this node writes version"):
        await pg_backend.make().open()


async def test_a_lost_writer_connection_fails_closed(pg_backend: PostgresBackend) -> None:
    log = await pg_backend.open()
    assert await log.append(_rec(0)) == 0
    pid = log._conn.get_server_pid()  # type: ignore[attr-defined]
    await pg_backend.query("SELECT pg_terminate_backend(?)", pid)
    with pytest.raises(LogError, match="connection to PostgreSQL was lost"):
        await log.append(_rec(1))
    # the lock went with the session: a new writer takes over from what was committed
    again = await pg_backend.open()
    assert await again.append(_rec(1)) == 1
    await log.close()


async def test_an_unreachable_server_is_a_log_error() -> None:
    log = PostgresMessageLog("postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(LogError, match="cannot open the message log"):
        await log.open()


async def test_layout_is_the_sqlite_layout(pg_backend: PostgresBackend, tmp_path: Path) -> None:
    """Same tables, same columns in the same order, same version: one audit reads both."""
    sqlite_log = SQLiteMessageLog(tmp_path / "m.db")
    await sqlite_log.open()
    await sqlite_log.close()
    with sqlite_db(tmp_path / "m.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        sqlite_layout = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    await pg_backend.open()
    rows = await pg_backend.query(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = ? AND table_name <> 'schema_version'"
        " ORDER BY table_name, ordinal_position",
        pg_backend.schema,
    )
    pg_layout: dict[str, list[str]] = {}
    for table, column in rows:
        pg_layout.setdefault(table, []).append(column)
    assert pg_layout == sqlite_layout
    assert pg._COLUMNS == sq._COLUMNS
    assert pg._SCHEMA_VERSION == sq._SCHEMA_VERSION


async def test_unreachable_postgres_fails_under_ci_and_skips_outside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Imported here, not at the top: pytest has loaded the module as a plugin by now.
    from tests.messagelog_backends import probe_postgres, skip_or_fail

    dsn = "postgresql://postgres@127.0.0.1:1/test"
    problem = await probe_postgres(dsn)
    assert problem is not None
    assert "ConnectionRefusedError" in problem
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"127\.0\.0\.1:1/test .* is unreachable"):
        skip_or_fail(dsn, problem)
    for value in ("true", "1", "yes"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match=r"unreachable.*CI is set"):
            skip_or_fail(dsn, problem)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail(dsn, problem)


async def test_commits_are_durable_whatever_the_dsn_or_server_default(
    pg_backend: PostgresBackend,
) -> None:
    log = PostgresMessageLog(f"{pg_backend.dsn}?synchronous_commit=off", schema=pg_backend.schema)
    await log.open()
    pg_backend.opened.append(log)
    assert await log._conn.fetchval("SHOW synchronous_commit") == "on"  # type: ignore[attr-defined]
    async with log._pool.acquire() as conn:  # type: ignore[attr-defined]
        assert await conn.fetchval("SHOW synchronous_commit") == "on"


async def test_small_and_large_batches_store_the_same_rows(pg_backend: PostgresBackend) -> None:
    """Below pg._COPY_FROM rows a batch is inserted, from it on copied: same rows either way."""
    log = await pg_backend.open()
    batches: list[int] = []
    real_write = log._write  # type: ignore[attr-defined]

    async def counting_write(batch):  # type: ignore[no-untyped-def]
        batches.append(len(batch))
        return await real_write(batch)

    log._write = counting_write  # type: ignore[attr-defined]
    small = await log.append(_rec(0))
    large = await asyncio.gather(*(log.append(_rec(i)) for i in range(1, 2 * pg._COPY_FROM)))
    assert batches == [1, 2 * pg._COPY_FROM - 1]
    assert [small, *large] == list(range(2 * pg._COPY_FROM))
    for i in (0, 1):
        rec = _rec(i)
        (row,) = await log.find(rec.message_id)
        want = dict(zip(pg._COLUMNS, (i, *rec.stored()), strict=True))
        assert row == want | {"leaf": rec.leaf()}


async def test_a_small_batch_is_one_statement_all_or_nothing(pg_backend: PostgresBackend) -> None:
    """A small batch stores its exchanges, their subjects and new certificates together in
    one statement; when any part fails, none of it is stored and the append fails."""
    log = await pg_backend.open()
    first = dataclasses.replace(_rec(0), subjects=("1101700203450", "0105744622488"))
    await asyncio.gather(log.append(first), log.append(_rec(1)))
    conn = log._conn  # type: ignore[attr-defined]
    s = pg_backend.schema
    subjects = await conn.fetch(f'SELECT subject, leaf_index FROM "{s}".exchange_subject')
    assert sorted(map(tuple, subjects)) == [("0105744622488", 0), ("1101700203450", 0)]
    assert await conn.fetchval(f'SELECT count(*) FROM "{s}".certificate') == 1
    # Entry 2 taken behind the writer's back: the next batch fails on its primary key.
    await conn.execute(
        f'INSERT INTO "{s}".exchange SELECT 2, message_id, request_id, role, client, service,'
        " user_id, issue, represented_party, method, status, error_type, started_at,"
        " finished_at, leaf_hash, request_meta, request_signature, response_meta,"
        " response_signature, request_body, response_body, request_body_sha256,"
        " response_body_sha256, request_cert_sha256,"
        f' response_cert_sha256, subjects FROM "{s}".exchange WHERE leaf_index = 0'
    )
    doomed = dataclasses.replace(
        _rec(2), subjects=("3100100123456",), response_cert=b"provider cert DER",
        response_meta=b"{}", response_signature=b"sig",
    )  # fmt: skip
    with pytest.raises(LogError, match="message log write failed"):
        await log.append(doomed)
    assert await conn.fetchval(f'SELECT count(*) FROM "{s}".certificate') == 1
    assert await conn.fetchval(f'SELECT count(*) FROM "{s}".exchange_subject') == 2
    assert await conn.fetchval(f'SELECT count(*) FROM "{s}".exchange') == 3


async def test_a_few_exchanges_with_large_bodies_are_copied_not_one_statement(
    pg_backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL takes at most 1 GB in one protocol message: a small batch bound as ONE
    statement carries every row's bodies in it (found: 4 exchanges of 2 x 140 MiB, which
    the old per-row inserts and COPY store, made the server drop the connection, and with
    it the writer lock, so the log failed closed until reopened). A batch whose bodies are
    large goes in with COPY, one message per row, whatever its number of rows."""
    # What one statement may carry besides the bodies is capped by the envelope's limits.
    rest = 2 * (MAX_META + MAX_SIGNATURE + MAX_CERT) + 64 * 1024  # and the rest of a row
    assert pg._ONE_STATEMENT_MAX_BYTES + (pg._COPY_FROM - 1) * rest < 1 << 30
    monkeypatch.setattr(pg, "_ONE_STATEMENT_MAX_BYTES", 1000)  # (not 1 GB in a test)
    log = await pg_backend.open()
    copied: list[int] = []
    real_copy = log._write_copy  # type: ignore[attr-defined]

    async def counting_copy(rows, subjects, certs):  # type: ignore[no-untyped-def]
        copied.append(len(rows))
        await real_copy(rows, subjects, certs)

    log._write_copy = counting_copy  # type: ignore[attr-defined]
    big = [
        dataclasses.replace(_rec(0), request_body=b"x" * 600),
        dataclasses.replace(_rec(1), request_body=b"y", response_body=b"z" * 600),
    ]
    assert await asyncio.gather(*(log.append(r) for r in big)) == [0, 1]
    assert copied == [2]
    for i, rec in enumerate(big):
        (row,) = await log.find(rec.message_id)
        want = dict(zip(pg._COLUMNS, (i, *rec.stored()), strict=True))
        assert row == want | {"leaf": rec.leaf()}
    # a small batch of small bodies is still one statement
    assert await log.append(_rec(2)) == 2
    assert copied == [2]


def test_every_method_of_the_interface_with_the_same_signature() -> None:
    names = [n for n, v in vars(MessageLog).items() if callable(v) and not n.startswith("_")]
    assert "append" in names
    for name in names:
        want = inspect.signature(getattr(MessageLog, name))
        assert inspect.signature(getattr(PostgresMessageLog, name)) == want, name
        assert inspect.signature(getattr(SQLiteMessageLog, name)) == want, name
