"""The node's settings database: the authority, while the node runs, for its services,
access rights, local groups and hosted clients.

Each setting is one row (kind, key) holding a JSON document and a version. A change states
the version it was made from and is refused (``Conflict``) when the row has moved on since:
two administrators changing the same service cannot lose either change silently. Documents
the settings refer to (OpenAPI descriptions, WSDLs) are kept by their SHA-256, so that what
the node serves does not depend on a file or URL staying as it was.

``SettingsStore`` is what the node needs of a store; ``SQLiteSettingsStore`` keeps it in
``<data_dir>/node-settings.sqlite`` (0600, WAL); ``PostgresSettingsStore``
(node/pgsettings.py) keeps it in PostgreSQL (``settings_dsn``). Both run the same SQL
(``SqlSettingsStore``): only the schema, the connection and how a write transaction shuts
other writers out differ, so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from xroad_hub.errors import HubError, Unavailable
from xroad_hub.privatefile import ensure_private

__all__ = [
    "Conflict",
    "Row",
    "SQLiteSettingsStore",
    "SettingsStore",
    "SettingsUnavailable",
    "SqlSettingsStore",
]

# The kinds of settings rows.
SERVICE, GROUP, CLIENT = "service", "group", "client"
KINDS = (SERVICE, GROUP, CLIENT)


class Conflict(HubError):
    """The row changed (or appeared, or went) since the version a change was made from."""

    def __init__(self, kind: str, key: str, expected: int | None, found: int | None) -> None:
        self.kind, self.key, self.expected, self.found = kind, key, expected, found
        if found is None:
            what = f"{kind} {key} no longer exists"
        elif expected is None:
            what = f"{kind} {key} exists already"
        else:
            what = f"{kind} {key} is at version {found}, not {expected}: someone changed it"
        super().__init__(what)


class SettingsUnavailable(Unavailable):
    """The settings database failed during an operation or cannot be reached."""


@dataclass(frozen=True, slots=True)
class Row:
    kind: str
    key: str
    version: int
    data: dict[str, Any]
    source: str  # "file": imported from the node's configuration; "admin": the admin API
    updated_at: float
    updated_by: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "version": self.version,
            "data": self.data,
            "source": self.source,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True, slots=True)
class Put:
    """One row written by ``SettingsStore.apply``: ``expect`` is the version it was made
    from (None: the row must not exist yet); ``data`` None deletes it."""

    kind: str
    key: str
    expect: int | None
    data: dict[str, Any] | None
    source: str = "admin"


class SettingsStore(Protocol):
    def open(self) -> None: ...
    def close(self) -> None: ...
    def rows(self, kind: str) -> list[Row]: ...
    def get(self, kind: str, key: str) -> Row | None: ...
    def apply(self, puts: list[Put], by: str) -> list[Row]:
        """All of ``puts`` or none (Conflict): the rows written, deleted ones left out."""
        ...

    def put_document(self, content: bytes) -> str: ...
    def document(self, sha256: str) -> bytes | None: ...
    def generation(self) -> int:
        """A number every change raises: another process of the node sees a change by it."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    source TEXT NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS documents (sha256 TEXT PRIMARY KEY, content BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
INSERT OR IGNORE INTO generation VALUES (0, 0);
"""


class SqlSettingsStore:
    """The settings store's SQL, run the same on SQLite and PostgreSQL (portable: no
    ``INSERT OR REPLACE``, ``?`` placeholders). A backend gives the connection (``_conn``:
    under the store's lock, one operation at a time), how a write transaction shuts other
    writers out (``_write``) and how ``rows`` orders keys (``_KEY_ORDER``)."""

    # Byte order of the keys on both backends: SQLite's default, PostgreSQL's "C" collation
    # (its default follows the database's locale).
    _KEY_ORDER = "key"

    def _conn(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self, db: Any) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def rows(self, kind: str) -> list[Row]:
        with self._conn() as db:
            found = db.execute(
                "SELECT kind, key, version, data, source, updated_at, updated_by FROM settings"
                f" WHERE kind = ? ORDER BY {self._KEY_ORDER}",
                (kind,),
            ).fetchall()
        return [_row(r) for r in found]

    def get(self, kind: str, key: str) -> Row | None:
        with self._conn() as db:
            found = db.execute(
                "SELECT kind, key, version, data, source, updated_at, updated_by FROM settings"
                " WHERE kind = ? AND key = ?",
                (kind, key),
            ).fetchone()
        return _row(found) if found else None

    def apply(self, puts: list[Put], by: str) -> list[Row]:
        now = time.time()
        written = []
        # The versions are read inside the write transaction: the version compared is the
        # version the write replaces. Raising (Conflict) rolls all of it back.
        with self._conn() as conn, self._write(conn) as db:
            for put in puts:
                had = db.execute(
                    "SELECT version FROM settings WHERE kind = ? AND key = ?", (put.kind, put.key)
                ).fetchone()
                found = had[0] if had else None
                if found != put.expect:
                    raise Conflict(put.kind, put.key, put.expect, found)
                if put.data is None:
                    db.execute(
                        "DELETE FROM settings WHERE kind = ? AND key = ?", (put.kind, put.key)
                    )
                    continue
                version = (found or 0) + 1
                db.execute(
                    "INSERT INTO settings VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, key) "
                    "DO UPDATE SET version = excluded.version, data = excluded.data, "
                    "source = excluded.source, updated_at = excluded.updated_at, "
                    "updated_by = excluded.updated_by",
                    (put.kind, put.key, version, orjson.dumps(put.data), put.source, now, by),
                )
                written.append(Row(put.kind, put.key, version, put.data, put.source, now, by))
            db.execute("UPDATE generation SET n = n + 1 WHERE id = 0")
        return written

    def generation(self) -> int:
        with self._conn() as db:
            return int(db.execute("SELECT n FROM generation WHERE id = 0").fetchone()[0])

    def put_document(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        with self._conn() as db:
            db.execute(
                "INSERT INTO documents VALUES (?, ?) ON CONFLICT DO NOTHING", (digest, content)
            )
        return digest

    def document(self, sha256: str) -> bytes | None:
        with self._conn() as db:
            row = db.execute("SELECT content FROM documents WHERE sha256 = ?", (sha256,)).fetchone()
        return bytes(row[0]) if row else None


class SQLiteSettingsStore(SqlSettingsStore):
    """The settings in one SQLite file; several processes may share it (WAL, and every
    change compares versions inside its transaction)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ensure_private(self.path, sqlite=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        self._db = db

    def close(self) -> None:
        # Under the lock: a read still running in a worker thread (a poll cancelled while
        # its thread queries) finishes before the connection goes; closing it under that
        # query would crash the process.
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise RuntimeError("the settings store is not open")
            yield self._db

    @contextmanager
    def _write(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE: the write lock is taken before the versions are read.
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _row(r: tuple[Any, ...]) -> Row:
    return Row(r[0], r[1], int(r[2]), orjson.loads(r[3]), r[4], float(r[5]), r[6])
