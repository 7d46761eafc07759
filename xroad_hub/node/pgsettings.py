"""The node's settings database in PostgreSQL, and what the central server's PostgreSQL
store shares with it (connecting into one schema, the DSN kept out of messages).

Same semantics as ``SQLiteSettingsStore``: a change compares the versions it was made from
inside its transaction, and all of it lands or none. SQLite had one writer at a time by
construction; here each change first takes a transaction-scoped advisory lock keyed on the
schema, so two processes (or two nodes' worth of administrators) changing the settings are
put one after the other exactly as SQLite's ``BEGIN IMMEDIATE`` did, and the version read is
the version the write replaces.

The driver is psycopg 3 (synchronous): the stores are called from worker threads
(``asyncio.to_thread``) like the SQLite ones, so an asyncio driver would need a loop per
thread. Each deployment keeps its tables in its own schema (``search_path``), so several
nodes and central servers can share one PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from xroad_hub.errors import HubError, Unavailable
from xroad_hub.messagelog.postgres import is_dsn, validate_schema_name
from xroad_hub.node.settings import SettingsUnavailable, SqlSettingsStore

__all__ = ["PgConnection", "PostgresSettingsStore", "is_dsn", "redact_dsn", "settings_schema"]


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``: what a message may show of it."""
    dsn = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", dsn)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", dsn)


def settings_schema(node_id: str) -> str:
    """The schema a node keeps its settings in (``TH/GOV/DBD/hub1`` ->
    ``settings_th_gov_dbd_hub1``): one per node, apart from its message log's."""
    return validate_schema_name(("settings_" + re.sub(r"[^a-z0-9]+", "_", node_id.lower()))[:63])


def lock_key(purpose: str, schema: str) -> int:
    """A transaction advisory lock key for one schema's writers (64 bits of a digest)."""
    digest = hashlib.sha256(f"xroad_hub.{purpose}\0{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PgConnection:
    """One connection into ``schema`` (created if missing), reopened if the server dropped
    it; ``?`` placeholders as in the SQLite stores' SQL. Not thread-safe: the store holds
    its lock around every use, as the SQLite stores do."""

    def __init__(
        self, dsn: str, schema: str, *, purpose: str, error: type[Unavailable] = Unavailable
    ) -> None:
        if not is_dsn(dsn):
            raise HubError(f"not a PostgreSQL DSN (postgresql://...): {redact_dsn(dsn)}")
        self.schema = validate_schema_name(schema)
        self._dsn = dsn
        self._purpose = purpose
        self._error = error  # the store's own Unavailable: what its callers catch
        self._lock_key = lock_key(purpose, self.schema)
        self._conn: psycopg.Connection[Any] | None = None

    def __repr__(self) -> str:  # never the DSN: it may hold a password
        return f"PgConnection(schema={self.schema!r})"

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                conn = psycopg.connect(
                    self._dsn, autocommit=True, connect_timeout=10,
                    application_name=f"xroad-hub {self._purpose} {self.schema}"[:63],
                )  # fmt: skip
            except psycopg.Error as exc:
                # psycopg's message names host and port, never the password.
                raise self._error(
                    f"cannot reach the {self._purpose} database ({redact_dsn(self._dsn)}): {exc}"
                ) from None
            try:
                conn.execute(f'SET search_path TO "{self.schema}"')
            except psycopg.Error as exc:
                conn.close()
                raise self._failed(exc) from None
            self._conn = conn
        return self._conn

    def _failed(self, exc: psycopg.Error) -> Unavailable:
        """What an operation's failure tells a person: the database, the server's words
        (their first line: a detail line may quote row values) and what to do; never the
        password, never a traceback."""
        said = next(iter(str(exc).strip().splitlines()), "") or type(exc).__name__
        return self._error(
            f"the {self._purpose} database ({redact_dsn(self._dsn)}, schema {self.schema}) "
            f"failed: {said}; check that PostgreSQL is up and reachable and the schema "
            "intact, then retry"
        )

    def create_schema(self) -> None:
        """Make the schema if it is missing (a user who may not create schemas can still
        use one made for it)."""
        if not self.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = ?", (self.schema,)
        ).fetchone():
            self.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        """Run ``sql`` (``params`` None: a script of several statements, no placeholders).
        A psycopg error is the store's Unavailable."""
        if params is not None:
            sql = sql.replace("?", "%s")
        conn = self.connection()
        idle = conn.info.transaction_status == TransactionStatus.IDLE
        try:
            return conn.execute(sql, params)  # type: ignore[arg-type]
        except psycopg.IntegrityError:
            # A constraint refusing a row is the store's rules speaking (a revocation is
            # final, one pending request per server), as sqlite3.IntegrityError is there.
            raise
        except psycopg.Error as exc:
            if not (idle and conn.broken):
                raise self._failed(exc) from None
        # The server dropped the connection while it sat idle between operations (it was
        # restarted, or the connection terminated): reopen it and run the statement once
        # more. Safe: outside a transaction the stores only read, run idempotent writes or
        # BEGIN; inside one (not idle) the transaction is lost and the failure is reported.
        try:
            return self.connection().execute(sql, params)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise self._failed(exc) from None

    def executescript(self, sql: str) -> None:
        with self.write():
            self.execute(sql, None)

    @contextmanager
    def write(self) -> Iterator[PgConnection]:
        """A transaction that has the schema's writer lock: one writer at a time. All of it
        lands or none; a failure of the database is the store's Unavailable."""
        self.execute("BEGIN")
        try:
            self.execute("SELECT pg_advisory_xact_lock(?)", (self._lock_key,))
            yield self
        except BaseException:
            self._rollback()
            raise
        self.execute("COMMIT")

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return  # the server ended the transaction with the connection
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            # The error that made the rollback necessary is the one to report; a
            # connection left mid-transaction is not reused.
            conn.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    kind TEXT NOT NULL, key TEXT NOT NULL, version BIGINT NOT NULL, data BYTEA NOT NULL,
    source TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL, updated_by TEXT NOT NULL,
    PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS documents (sha256 TEXT PRIMARY KEY, content BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 0), n BIGINT NOT NULL);
INSERT INTO generation VALUES (0, 0) ON CONFLICT DO NOTHING;
"""


class PostgresSettingsStore(SqlSettingsStore):
    """The node's settings in schema ``schema`` of the PostgreSQL database ``dsn``."""

    _KEY_ORDER = 'key COLLATE "C"'

    def __init__(self, dsn: str, schema: str) -> None:
        self._db = PgConnection(dsn, schema, purpose="settings", error=SettingsUnavailable)
        self.schema = self._db.schema
        self._lock = threading.Lock()
        self._open = False

    def __repr__(self) -> str:
        return f"PostgresSettingsStore(schema={self.schema!r})"

    def open(self) -> None:
        with self._lock:
            self._db.create_schema()
            with self._db.write() as db:  # two processes starting at once: one creates
                db.execute(_SCHEMA, None)
            self._open = True

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._open = False

    @contextmanager
    def _conn(self) -> Iterator[PgConnection]:
        with self._lock:
            if not self._open:
                raise RuntimeError("the settings store is not open")
            yield self._db

    def _write(self, db: PgConnection) -> AbstractContextManager[PgConnection]:
        return db.write()
