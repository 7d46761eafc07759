"""Message log backends for tests: one fixture, ``backend``, runs a test on SQLite and PostgreSQL.

Use it from a test module with ``pytest_plugins = ["tests.messagelog_backends"]`` (and import
names from here only under TYPE_CHECKING: a module pytest has not loaded as a plugin first
cannot get its asserts rewritten, which is an error with warnings as errors), then ask
for ``backend`` (both backends) or ``pg_backend`` (PostgreSQL only). ``backend.open()`` opens
a log on the test's own storage (the same file or schema every time, so a second call is a
reopen); every log opened that way is closed after the test, and a PostgreSQL test's schema
is dropped.

PostgreSQL is found at $XROAD_HUB_TEST_PG_DSN (default: the local server, database
``test``). If it cannot be reached the PostgreSQL tests are skipped with the reason, except
under CI (CI=true): there the server is part of the environment, and a skip would let the
backend go untested while the run stays green, so they fail instead.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any, NoReturn

import aiosqlite
import asyncpg
import pytest

from xroad_hub.messagelog import MessageLog, SQLiteMessageLog
from xroad_hub.messagelog.postgres import PostgresLogReader, PostgresMessageLog
from xroad_hub.messagelog.source import LogSource

__all__ = [
    "PG_DSN",
    "Backend",
    "PostgresBackend",
    "SQLiteBackend",
    "postgres_or_skip",
    "probe_postgres",
    "skip_or_fail",
]

PG_DSN = os.environ.get("XROAD_HUB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
_TABLES = ("exchange", "exchange_subject", "certificate", "checkpoint", "globalconf", "tree_block")
_pg_problem: list[str | None] = []  # memo of the one reachability probe per session


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


async def postgres_or_skip() -> None:
    """Return if PostgreSQL answers; otherwise skip the test, or fail it under CI."""
    if not _pg_problem:
        _pg_problem.append(await probe_postgres(PG_DSN))
    if _pg_problem[0] is not None:
        skip_or_fail(PG_DSN, _pg_problem[0])


async def probe_postgres(dsn: str) -> str | None:
    """Why ``dsn`` cannot be reached, or None if it can."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def skip_or_fail(dsn: str, problem: str) -> NoReturn:
    where = f"PostgreSQL at {dsn} (set XROAD_HUB_TEST_PG_DSN) is unreachable: {problem}"
    if _in_ci():
        pytest.fail(f"{where}; CI is set, where the server must be there", pytrace=False)
    pytest.skip(where)


class Backend:
    """One test's log storage, and raw access to its tables for checks behind the API."""

    name = ""

    def __init__(self) -> None:
        self.opened: list[MessageLog] = []

    def make(self, **kw: Any) -> MessageLog:
        """A log on this test's storage, not opened."""
        raise NotImplementedError

    async def open(self, **kw: Any) -> MessageLog:
        log = self.make(**kw)
        await log.open()
        self.opened.append(log)
        return log

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Rows of ``sql``, with tables written ``{exchange}`` (any of _TABLES) and
        parameters ``?``."""
        raise NotImplementedError

    async def execute(self, sql: str) -> None:
        """Run ``sql`` (table names as in ``query``) behind the log's back."""
        raise NotImplementedError

    async def tamper(self, sql: str, *args: object) -> None:
        """Change rows as whoever holds the database could (``query``'s notation); on
        PostgreSQL with foreign keys off, as its superuser could."""
        raise NotImplementedError

    async def load(self, sqlite_log: Path) -> None:
        """Put a copy of the SQLite log ``sqlite_log`` (e.g. a real node's) on this storage."""
        raise NotImplementedError

    def source(self) -> LogSource:
        """What the auditing functions take to read this storage's log."""
        raise NotImplementedError

    def cli_args(self) -> list[str]:
        """How ``xroad-hub audit`` names this storage's log."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        # A failed assertion must not leave a writer task running (the process would hang
        # at exit); close() is idempotent.
        while self.opened:
            await self.opened.pop().close()


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        self.path = tmp_path / "log" / "messages.db"

    def make(self, **kw: Any) -> MessageLog:
        return SQLiteMessageLog(self.path, **kw)

    def _sql(self, sql: str) -> str:
        return sql.format(**{t: t for t in _TABLES})

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        async with aiosqlite.connect(self.path) as db, db.execute(self._sql(sql), args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def execute(self, sql: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(self.path) as db:
            await db.executescript(self._sql(sql))
            await db.commit()

    async def tamper(self, sql: str, *args: object) -> None:
        async with aiosqlite.connect(self.path) as db:
            await db.execute(self._sql(sql), args)
            await db.commit()

    async def load(self, sqlite_log: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(sqlite_log)) as a, closing(sqlite3.connect(self.path)) as b:
            a.backup(b)  # with what is still in a live log's WAL

    def source(self) -> LogSource:
        return self.path

    def cli_args(self) -> list[str]:
        return [str(self.path)]


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self) -> None:
        super().__init__()
        self.dsn = PG_DSN
        # Unique per test, so tests (and concurrent CI runs) never see each other's rows.
        self.schema = f"test_ml_{uuid.uuid4().hex[:16]}"

    def make(self, **kw: Any) -> MessageLog:
        return PostgresMessageLog(PG_DSN, schema=kw.pop("schema", self.schema), **kw)

    def _sql(self, sql: str) -> str:
        sql = sql.format(**{t: f'"{self.schema}".{t}' for t in _TABLES})
        parts = sql.split("?")
        return parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], start=1))

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(PG_DSN)
        try:
            return [tuple(r) for r in await conn.fetch(self._sql(sql), *args)]
        finally:
            await conn.close()

    async def execute(self, sql: str) -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(self._sql(sql))
        finally:
            await conn.close()

    async def tamper(self, sql: str, *args: object) -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute("SET session_replication_role = replica")  # no FK checks
            await conn.execute(self._sql(sql), *args)
        finally:
            await conn.close()

    async def load(self, sqlite_log: Path) -> None:
        log = self.make()
        await log.open()  # creates the tables
        await log.close()
        src = sqlite3.connect(f"file:{sqlite_log}?mode=ro", uri=True)
        conn = await asyncpg.connect(PG_DSN)
        try:
            for table in ("certificate", "exchange", "exchange_subject", "checkpoint",
                          "globalconf"):  # fmt: skip
                cur = src.execute(f"SELECT * FROM {table}")
                columns = [d[0] for d in cur.description]
                await conn.copy_records_to_table(
                    table, schema_name=self.schema, columns=columns, records=cur.fetchall()
                )
        finally:
            src.close()
            await conn.close()

    def source(self) -> LogSource:
        return functools.partial(PostgresLogReader, PG_DSN, schema=self.schema)

    def cli_args(self) -> list[str]:
        return [PG_DSN, "--schema", self.schema]

    async def cleanup(self) -> None:
        await super().cleanup()
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The test's log storage, once per backend."""
    b: Backend
    if request.param == "postgres":
        await postgres_or_skip()
        b = PostgresBackend()
    else:
        b = SQLiteBackend(tmp_path)
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
async def pg_backend() -> AsyncIterator[PostgresBackend]:
    """PostgreSQL storage only, for tests of what only that backend has."""
    await postgres_or_skip()
    b = PostgresBackend()
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit verify` in pages of 8 entries, in worker processes from the first entry on
    (with jobs > 1): the main process hands the workers their pages, so these are its sizes
    alone."""
    from xroad_hub.messagelog import audit

    monkeypatch.setattr(audit, "_PAGE", 8)
    monkeypatch.setattr(audit, "_PARALLEL_MIN", 0)
