"""SQLite message log (the embedded default), with group commit.

Committing every row would cap a node at a few thousand exchanges per second and make the
log the bottleneck, so appends queue up and one writer thread stores whatever has queued in
a single transaction (WAL, synchronous=FULL: a committed record survives power loss). Each
``append`` returns only after the transaction holding its record has committed; while one
batch commits the next one gathers, so batches grow with load and latency stays ~one commit.

A batch is ONE multi-row INSERT in autocommit mode: a single statement is its own atomic,
durable transaction (three statements, insert, insert, commit, cost three hops to a driver
thread: over half of the log's CPU at low concurrency). The writer thread has a connection
of its own, is the log's only writer (checkpoints, purges go through it too), and hands each
committed batch back to the event loop in one callback (see ThreadedGroupCommit); reads go
through aiosqlite.

Leaf indexes are assigned by the writer in commit order and never reused, which is what the
Merkle tree of the tamper-evident log builds on.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiosqlite

from xroad_hub.messagelog.groupcommit import Pending, ThreadedGroupCommit
from xroad_hub.messagelog.layout import COLUMNS as _COLUMNS
from xroad_hub.messagelog.layout import LEAF
from xroad_hub.messagelog.layout import SCHEMA_VERSION as _SCHEMA_VERSION
from xroad_hub.messagelog.reader import (
    BATCH,
    LogAddress,
    LogReader,
    LogReadError,
    Row,
    SQLLogReader,
    other_layout,
    stored_leaf_hash,
)
from xroad_hub.messagelog.record import LogRecord, cert_sha256_hex, leaf_of
from xroad_hub.messagelog.store import LogError
from xroad_hub.messagelog.tree import LogTree
from xroad_hub.privatefile import ensure_private

__all__ = ["SQLiteLogReader", "SQLiteMessageLog", "writer_lock"]


SCHEMA = """
CREATE TABLE IF NOT EXISTS exchange (
    leaf_index INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    client TEXT NOT NULL,
    service TEXT NOT NULL,
    user_id TEXT,
    issue TEXT,
    represented_party TEXT,
    method TEXT NOT NULL,
    status INTEGER NOT NULL,
    error_type TEXT,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    -- RFC 9162 hash of the leaf, which is rebuilt from this row (record.leaf_of).
    leaf_hash BLOB NOT NULL,
    request_meta BLOB NOT NULL,
    request_signature BLOB NOT NULL,
    response_meta BLOB,
    response_signature BLOB,
    -- Bodies are not part of the leaf (it holds their digests): retention may set them NULL.
    request_body BLOB,
    response_body BLOB,
    request_body_sha256 BLOB NOT NULL,
    response_body_sha256 BLOB,
    request_cert_sha256 TEXT NOT NULL REFERENCES certificate (sha256),
    response_cert_sha256 TEXT REFERENCES certificate (sha256),
    subjects TEXT NOT NULL DEFAULT '[]'  -- JSON list, as in the leaf
);
-- Who each exchange concerns, kept by a trigger inside the inserting statement (atomic).
CREATE TABLE IF NOT EXISTS exchange_subject (
    subject TEXT NOT NULL,
    leaf_index INTEGER NOT NULL REFERENCES exchange (leaf_index),
    PRIMARY KEY (subject, leaf_index)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS exchange_subject_index AFTER INSERT ON exchange
BEGIN
    INSERT INTO exchange_subject SELECT DISTINCT value, NEW.leaf_index FROM json_each(NEW.subjects);
END;
CREATE INDEX IF NOT EXISTS exchange_started_at ON exchange (started_at);
CREATE INDEX IF NOT EXISTS exchange_client ON exchange (client, started_at);
CREATE INDEX IF NOT EXISTS exchange_service ON exchange (service, started_at);
CREATE INDEX IF NOT EXISTS exchange_user_id ON exchange (user_id);
CREATE INDEX IF NOT EXISTS exchange_issue ON exchange (issue);
CREATE INDEX IF NOT EXISTS exchange_message_id ON exchange (message_id);
-- Signing certificates, stored once: with them the log verifies offline.
CREATE TABLE IF NOT EXISTS certificate (
    sha256 TEXT PRIMARY KEY,
    der BLOB NOT NULL
);
-- Signed tree heads (C2SP checkpoints) of this log.
CREATE TABLE IF NOT EXISTS checkpoint (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    cert_sha256 TEXT NOT NULL REFERENCES certificate (sha256),
    created_at REAL NOT NULL,
    witness_cert_sha256 TEXT REFERENCES certificate (sha256),  -- set once co-signed
    timestamp_token BLOB  -- RFC 3161 token over the checkpoint text, once obtained
);
"""

# Tables added to existing logs as they open, so no schema version (and no migration):
# - the signed global configurations the node worked under (see NodeRuntime.record):
#   evidence bundles carry the one in force at an exchange, proving the node hosted its
#   party then;
# - the roots of the tree's complete blocks of layout.TREE_BLOCK leaves, stored before each
#   checkpoint: an inclusion proof then reads a few thousandths of the log, not every leaf
#   hash. Derived data: a reader recomputes a missing root from the leaves, and a proof
#   built on a wrong one does not lead to the signed checkpoint's root.
ADDED_SCHEMA = """
CREATE TABLE IF NOT EXISTS globalconf (
    sha256 TEXT PRIMARY KEY,
    generated_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    signed BLOB NOT NULL,  -- the registry's document as downloaded
    signer_cert_sha256 TEXT NOT NULL REFERENCES certificate (sha256)
);
CREATE TABLE IF NOT EXISTS tree_block (
    block INTEGER PRIMARY KEY,  -- leaves block * TREE_BLOCK .. (block + 1) * TREE_BLOCK - 1
    root BLOB NOT NULL
);
"""


@functools.cache
def _insert_sql(rows: int) -> str:
    one = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
    return f"INSERT INTO exchange ({', '.join(_COLUMNS)}) VALUES " + ", ".join([one] * rows)


def _store_blocks(wdb: sqlite3.Connection | None, blocks: list[tuple[int, bytes]]) -> None:
    """Block roots not stored yet (in the writer thread), in multi-row statements: each is
    its own transaction under autocommit, as the log's batches are, and never leaves the
    writer's connection inside one."""
    if wdb is None:
        raise LogError("message log is not open")
    per_statement = _MAX_VARIABLES // 2
    for i in range(0, len(blocks), per_statement):
        chunk = blocks[i : i + per_statement]
        marks = ", ".join(["(?, ?)"] * len(chunk))
        wdb.execute(
            f"INSERT OR IGNORE INTO tree_block VALUES {marks}",
            [value for row in chunk for value in row],
        )


# SQLite's default is 32766 bound parameters per statement (250000 in Debian's build).
_MAX_VARIABLES = 32766


class SQLiteMessageLog:
    def __init__(self, path: Path, *, max_batch: int = 1024) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None  # reads (and creating the schema)
        # The writer thread's own connection: every write of the log goes through it.
        self._wdb: sqlite3.Connection | None = None
        self._commits = ThreadedGroupCommit(self._write, self._committed, max_batch)
        self._next_index = 0
        self._known_certs: set[bytes] = set()
        self._writer_lock: int | None = None  # see writer_lock
        self._tree = LogTree(self._leaf_hash_rows, str(path))

    async def open(self) -> None:
        # The log holds citizens' data: 0600 before SQLite writes a byte (the -wal and -shm
        # files SQLite creates take the database file's mode).
        await asyncio.to_thread(ensure_private, self.path, sqlite=True)
        self._writer_lock = writer_lock(self.path)
        try:
            await self._open()
        except BaseException:
            # The lock's descriptor is closed only after SQLite's connections: closing any
            # descriptor of the file drops every POSIX lock this process holds on it.
            if self._db is not None:
                await self._db.close()
            os.close(self._writer_lock)
            self._writer_lock = None
            raise

    async def _open(self) -> None:
        # Autocommit: every batch is one statement, hence one transaction (see above).
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._check_schema()
        await self._db.executescript(ADDED_SCHEMA)
        self._commits.max_batch = min(self._commits.max_batch, _MAX_VARIABLES // len(_COLUMNS))
        # The tree of committed leaves, from their stored hashes (each checked to be one:
        # the node would sign checkpoints over whatever it builds on). The tree puts leaf i
        # at index i: a missing row would make every later proof and checkpoint wrong, so
        # the log is refused rather than numbered on from it (as PostgreSQL's is).
        expected = 0
        try:
            async with self._db.execute(
                "SELECT leaf_index, leaf_hash FROM exchange ORDER BY leaf_index"
            ) as c:
                while rows := await c.fetchmany(4096):
                    # Distinct and ordered: the first and last in place means all are.
                    if (rows[0][0], rows[-1][0]) != (expected, expected + len(rows) - 1):
                        missing = next(i for i, r in enumerate(rows, expected) if r[0] != i)
                        raise ValueError(
                            f"no entry {missing} (next is {rows[missing - expected][0]}): rows "
                            "were removed; keep it for audit"
                        )
                    self._tree.extend(stored_leaf_hash(r[0], r[1]) for r in rows)
                    expected += len(rows)
        except ValueError as exc:
            await self._db.close()
            raise LogError(f"{self.path}: {exc}") from exc
        self._next_index = expected
        async with self._db.execute("SELECT block, root FROM tree_block") as c:
            repair, stray = self._tree.blocks_to_repair(await c.fetchall())
        # Autocommit, as above; made here, used only by the writer thread from now on.
        self._wdb = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._wdb.execute("PRAGMA synchronous=FULL")  # per connection, not kept in the file
        self._commits.start(str(self.path))
        if repair or stray:
            await self._repair_blocks(repair)

    async def _repair_blocks(self, blocks: list[tuple[int, bytes]]) -> None:
        """Store the missing block roots and drop stray ones. Derived data: if the database
        refuses now (locked, full), the next checkpoint offers every root again."""
        wdb, complete = self._wdb, self._tree.stored_blocks
        assert wdb is not None

        def repair() -> None:
            wdb.execute("DELETE FROM tree_block WHERE block < 0 OR block >= ?", (complete,))
            _store_blocks(wdb, blocks)

        try:
            await self._commits.run(repair)
        except sqlite3.Error:
            self._tree.stored_blocks = 0

    async def _check_schema(self) -> None:
        assert self._db is not None
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        async with self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'exchange'"
        ) as cur:
            exists = await cur.fetchone() is not None
        if version == 0 and not exists:
            await self._db.executescript(SCHEMA + f"PRAGMA user_version = {_SCHEMA_VERSION};")
        elif version != _SCHEMA_VERSION:
            await self._db.close()
            how = (
                f"run 'xroad-hub node upgrade-log {self.path}' (it keeps the old file as it "
                "is, beside the new one)"
                if version == _SCHEMA_VERSION - 1
                else "keep that file for audit, move it aside and start again"
            )
            raise LogError(
                f"{self.path} holds a message log of schema version {version}, this node "
                f"writes version {_SCHEMA_VERSION}: {how}"
            )

    async def append(self, record: LogRecord) -> int:
        return await self._commits.append(record)

    def _write(self, batch: list[Pending]) -> int:
        """Store a batch (in the writer thread); the leaf index of its first record."""
        assert self._wdb is not None
        first = self._next_index
        params: list[object] = []
        new_certs: dict[str, bytes] = {}
        for i, (rec, stored, _, _) in enumerate(batch, start=first):
            params.append(i)
            params += stored
            for cert in (rec.request_cert, rec.response_cert):
                if cert is not None and cert not in self._known_certs:
                    new_certs[cert_sha256_hex(cert)] = cert
        try:
            if new_certs:
                # Content-addressed, so storing one without its exchange (if the next
                # statement fails) is harmless; certificates are new only rarely.
                self._wdb.executemany(
                    "INSERT OR IGNORE INTO certificate VALUES (?, ?)", list(new_certs.items())
                )
                self._known_certs.update(new_certs.values())
            self._wdb.execute(_insert_sql(len(batch)), params)
        except Exception as exc:  # the group commit fails the batch and reports it
            raise LogError(f"message log write failed: {exc}") from exc
        self._next_index = first + len(batch)
        return first

    def _committed(self, batch: list[Pending], first: int) -> None:
        """On the loop, before the batch's appends return: the tree takes its leaves."""
        self._tree.extend(leaf_hash for _, _, leaf_hash, _ in batch)

    async def _run(self, sql: str, params: Sequence[object] = ()) -> int:
        """One statement by the writer thread (the log's only writer); its rowcount."""
        wdb = self._wdb
        if wdb is None:
            raise LogError("message log is not open")
        return await self._commits.run(lambda: wdb.execute(sql, params).rowcount)

    @property
    def group_commit(self) -> ThreadedGroupCommit:
        return self._commits

    def tree_head(self) -> tuple[int, bytes]:
        """Size and RFC 9162 root of the committed log."""
        return self._tree.head()

    async def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        """RFC 9162 proof that the tree of ``old_size`` entries is a prefix of ``size``'s."""
        return await self._tree.consistency_proof(old_size, size)

    async def _leaf_hash_rows(self, start: int, end: int) -> list[tuple[object, object]]:
        # By the writer thread: it has committed every entry the tree holds. The readers'
        # connection may still be inside an older snapshot (a cursor another caller has
        # not finished), which would miss rows and read as rows removed.
        wdb = self._wdb
        if wdb is None:
            raise LogError("message log is not open")
        sql = (
            "SELECT leaf_index, leaf_hash FROM exchange WHERE leaf_index >= ? AND leaf_index < ?"
            " ORDER BY leaf_index"
        )
        try:
            return await self._commits.run(lambda: wdb.execute(sql, (start, end)).fetchall())
        except sqlite3.Error as exc:
            raise LogError(
                f"{self.path}: reading entries {start}..{end - 1} failed: {exc}"
            ) from exc

    async def record_witness(self, size: int, cosigned_note: str, witness_cert: bytes) -> None:
        """Replace the checkpoint's note by the one a witness co-signed."""
        digest = hashlib.sha256(witness_cert).hexdigest()
        await self._run("INSERT OR IGNORE INTO certificate VALUES (?, ?)", (digest, witness_cert))
        await self._run(
            "UPDATE checkpoint SET note = ?, witness_cert_sha256 = ? WHERE size = ?",
            (cosigned_note, digest, size),
        )

    async def add_checkpoint(
        self, size: int, root: bytes, note: str, cert_der: bytes, created_at: float
    ) -> None:
        digest = hashlib.sha256(cert_der).hexdigest()
        blocks = self._tree.unsaved_blocks()  # before the checkpoint that they serve
        if blocks:
            try:
                await self._commits.run(functools.partial(_store_blocks, self._wdb, blocks))
            except sqlite3.Error as exc:
                raise LogError(
                    f"{self.path}: storing the tree's block roots failed: {exc}"
                ) from exc
            self._tree.saved(blocks)
        await self._run("INSERT OR IGNORE INTO certificate VALUES (?, ?)", (digest, cert_der))
        await self._run(
            "INSERT INTO checkpoint (size, root, note, cert_sha256, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (size, root, note, digest, created_at),
        )

    async def record_globalconf(
        self, signed: bytes, signer_cert: bytes, generated_at: float, expires_at: float
    ) -> None:
        cert_digest = hashlib.sha256(signer_cert).hexdigest()
        try:  # kept before the exchange it concerns is logged: a failure fails that exchange
            await self._run(
                "INSERT OR IGNORE INTO certificate VALUES (?, ?)", (cert_digest, signer_cert)
            )
            await self._run(
                "INSERT OR IGNORE INTO globalconf VALUES (?, ?, ?, ?, ?)",
                (hashlib.sha256(signed).hexdigest(), generated_at, expires_at, signed, cert_digest),
            )
        except Exception as exc:
            raise LogError(f"message log write failed: {exc}") from exc

    async def latest_checkpoint_size(self) -> int:
        """Size of the newest checkpoint, or -1 when there is none."""
        assert self._db is not None
        async with self._db.execute("SELECT COALESCE(MAX(size), -1) FROM checkpoint") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else -1

    async def record_timestamp(self, size: int, token: bytes) -> None:
        await self._run("UPDATE checkpoint SET timestamp_token = ? WHERE size = ?", (token, size))

    async def unstamped_checkpoints(self) -> list[tuple[int, str, float]]:
        """(size, checkpoint text, created) of checkpoints still without a timestamp."""
        assert self._db is not None
        async with self._db.execute(
            "SELECT size, note, created_at FROM checkpoint WHERE timestamp_token IS NULL"
            " ORDER BY size"
        ) as cur:
            rows = await cur.fetchall()
        return [(int(r[0]), str(r[1]).partition("\n\n")[0] + "\n", float(r[2])) for r in rows]

    async def purge_bodies(self, before: float) -> int:
        """Retention: drop the bodies of exchanges finished before ``before`` (epoch s).

        Leaves hold the bodies' digests, so the tree, the checkpoints and verification are
        unaffected; returns how many entries lost their bodies."""
        return await self._run(
            "UPDATE exchange SET request_body = NULL, response_body = NULL WHERE finished_at < ?"
            " AND (request_body IS NOT NULL OR response_body IS NOT NULL)",
            (before,),
        )

    async def count(self) -> int:
        assert self._db is not None
        async with self._db.execute("SELECT COUNT(*) FROM exchange") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def leaves(self, start: int, end: int) -> Sequence[bytes]:
        rows = await self._rows("leaf_index >= ? AND leaf_index < ?", (start, end))
        return [leaf_of(r) for r in rows]

    async def find(self, message_id: str) -> list[dict[str, object]]:
        rows = await self._rows("message_id = ?", (message_id,))
        return [dict(r) | {LEAF: leaf_of(r)} for r in rows]

    async def _rows(self, where: str, params: Sequence[object]) -> list[aiosqlite.Row]:
        assert self._db is not None
        self._db.row_factory = aiosqlite.Row
        try:
            async with self._db.execute(
                f"SELECT * FROM exchange WHERE {where} ORDER BY leaf_index", params
            ) as cur:
                return list(await cur.fetchall())
        finally:
            self._db.row_factory = None

    def reader(self) -> LogReader:
        """A reader of what this log has committed (blocking: call it in a worker thread)."""
        return SQLiteLogReader(self.path)

    async def close(self) -> None:
        """Write everything already accepted, then close."""
        if not await self._commits.stop():
            return
        if self._wdb is not None:
            self._wdb.close()
        if self._db is not None:
            await self._db.close()
        if self._writer_lock is not None:  # last: see open
            os.close(self._writer_lock)
            self._writer_lock = None


def writer_lock(path: Path) -> int:
    """A descriptor of ``path`` holding an exclusive flock (SQLite's own locks are POSIX
    locks, which flock does not touch) for as long as the log is open for writing; LogError
    if another writer holds it: two writers would assign the same leaf indexes (the
    PostgreSQL log has the same rule, with an advisory lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LogError(f"cannot open {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise LogError(
            f"{path} is already open for writing by another process (a running node, or "
            "'xroad-hub node upgrade-log'): two writers would assign the same leaf indexes; "
            "stop the other one first"
        ) from exc
    return fd


_READER_MMAP = 1 << 40


class SQLiteLogReader(SQLLogReader):
    """A message log file, opened read-only (see reader.py): nothing it does can change the
    evidence, even on a node that is still writing the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise LogReadError(f"cannot open {path}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            # Pages are read through a memory map instead of a read() into SQLite's cache
            # each: reading the rows was a third of the tree-only pass, and the map halves
            # it (SQLite caps the size at its compile-time maximum, 2 GiB by default). The
            # map is read-only; SQLite knows the file's size under its locks.
            self._conn.execute(f"PRAGMA mmap_size = {_READER_MMAP}")
            # One read transaction: every query sees the log as it was at the first one.
            self._conn.execute("BEGIN")
        except sqlite3.Error as exc:
            self._conn.close()
            raise LogReadError(f"cannot open {path}: {exc}") from exc
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error:  # not a database at all: the queries say so, as before
            version = 0
        wrong = other_layout(self.name, version)
        if wrong is not None:
            self._conn.close()
            raise wrong

    def address(self) -> LogAddress:
        # SQLite shares no snapshot between processes: a worker reads its own (what that
        # means for a log a node still writes: reader.py).
        return LogAddress(str(self.path))

    def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        try:
            return list(self._conn.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise LogReadError(str(exc)) from exc

    def _stream(self, sql: str, params: Sequence[object] = ()) -> Iterator[Row]:
        try:
            cur = self._conn.execute(sql, params)
            while batch := cur.fetchmany(BATCH):
                yield from batch
        except sqlite3.Error as exc:
            raise LogReadError(str(exc)) from exc

    def _tables(self) -> set[str]:
        rows = self._fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(r[0]) for r in rows}

    def close(self) -> None:
        self._conn.close()
