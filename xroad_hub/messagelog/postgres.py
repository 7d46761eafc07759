"""PostgreSQL message log: the SQLite log's semantics, for operators who run PostgreSQL.

Same design as ``sqlite.py`` (read it first): appends queue up, one writer task stores
whatever has queued in ONE transaction and resolves each ``append`` only after COMMIT, leaf
indexes are assigned by that writer in commit order, and the Merkle tree head is kept in
memory from committed leaves. Tables and columns are those of the SQLite log, so audit logic
written against one reads the other. What PostgreSQL adds:

- Several nodes may share one database: each log lives in its own PostgreSQL schema (e.g.
  ``node_th_gov_dbd_hub1``). The name ends up in SQL text, so it is validated strictly.
- Leaf indexes are only gap-free and unique if ONE writer assigns them, and nothing stops a
  second process from opening the same schema by mistake. The writer connection holds a
  session advisory lock keyed on the schema for the log's lifetime; a second writer is
  refused at open. The lock dies with the connection, so a lost connection is not retried
  here: another writer may have taken over, and the log fails closed until it is reopened.
- A batch goes in with binary COPY (``copy_records_to_table``) in a transaction, a small
  one (under 16 rows and 64 MiB of bodies) as ONE statement (``INSERT ... SELECT FROM
  unnest(arrays)`` for the exchanges, with their certificates and subjects in
  data-modifying CTEs of the same statement): a single round trip where a transaction
  costs four. Measured with ``scripts/bench_messagelog.py``: from about 16 rows COPY needs
  the least client CPU per row (a third less than ``executemany`` at 128 and 1024 rows)
  and commits the most rows/s, but each COPY has a fixed cost (one row costs it ~2.5x
  executemany's CPU); the one statement of a small batch halved the client CPU of a
  one-row batch against ``executemany`` in a transaction (~165 against ~345 us) and its
  commit latency (p50 0.46 against 0.73 ms), and cost less at 8 rows too. Client CPU is
  what matters: it is the node's, shared with signing and TLS.
- The writer forces ``synchronous_commit=on``: a database configured with ``off`` would
  acknowledge a COMMIT before it is on disk, and the node answers exchanges on that ack.
- Reads (``find``, ``leaves``, ``count``) and checkpoints use a small pool, so an auditor's
  query never waits behind a batch commit and never touches the writer's connection.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import asyncpg

from xroad_hub.messagelog.groupcommit import GroupCommit, Pending
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

__all__ = [
    "PostgresLogReader",
    "PostgresMessageLog",
    "added_ddl",
    "is_dsn",
    "log_ddl",
    "log_schemas",
    "schema_for_node",
    "validate_schema_name",
    "writer_lock_key",
]


# Lower-case only: PostgreSQL folds unquoted names to lower case, so "Node1" and "node1"
# would be one schema in psql and two here. 63 bytes is NAMEDATALEN - 1 (longer names are
# silently truncated, which could make two nodes share a log). pg_* is reserved.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a safe, unambiguous PostgreSQL schema name, else raise."""
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    if (
        not isinstance(schema, str)
        or not _SCHEMA_NAME.fullmatch(schema)
        or schema.startswith("pg_")
        or schema == "information_schema"
    ):
        raise ValueError(
            f"invalid message log schema name {schema!r}: use 1 to 63 characters a-z, 0-9 "
            "and _, not starting with a digit or pg_ (e.g. node_th_gov_dbd_hub1)"
        )
    return schema


def schema_for_node(node_id: str) -> str:
    """The schema a node keeps its log in: one per node, so that several share a database
    (``TH/GOV/DBD/hub1`` -> ``node_th_gov_dbd_hub1``)."""
    return validate_schema_name(("node_" + re.sub(r"[^a-z0-9]+", "_", node_id.lower()))[:63])


def is_dsn(target: str) -> bool:
    """True if ``target`` names a PostgreSQL database rather than a log file."""
    return target.startswith(("postgresql://", "postgres://"))


def log_ddl(s: str) -> str:
    # ``s`` is the validated, quoted schema name. Column types keep what SQLite gives back:
    # bigint/integer -> int, double precision (SQLite REAL) -> float, bytea -> bytes.
    return f"""
CREATE TABLE {s}.certificate (
    sha256 text PRIMARY KEY,
    der bytea NOT NULL
);
CREATE TABLE {s}.exchange (
    leaf_index bigint PRIMARY KEY,
    message_id text NOT NULL,
    request_id text NOT NULL,
    role text NOT NULL,
    client text NOT NULL,
    service text NOT NULL,
    user_id text,
    issue text,
    represented_party text,
    method text NOT NULL,
    status integer NOT NULL,
    error_type text,
    started_at double precision NOT NULL,
    finished_at double precision NOT NULL,
    -- RFC 9162 hash of the leaf, which is rebuilt from this row (record.leaf_of).
    leaf_hash bytea NOT NULL,
    request_meta bytea NOT NULL,
    request_signature bytea NOT NULL,
    response_meta bytea,
    response_signature bytea,
    -- Bodies are not part of the leaf (it holds their digests): retention may set them NULL.
    request_body bytea,
    response_body bytea,
    request_body_sha256 bytea NOT NULL,
    response_body_sha256 bytea,
    request_cert_sha256 text NOT NULL REFERENCES {s}.certificate (sha256),
    response_cert_sha256 text REFERENCES {s}.certificate (sha256),
    subjects text NOT NULL DEFAULT '[]'  -- JSON list, as in the leaf; text as in SQLite
);
-- Who each exchange concerns. SQLite fills it with a trigger; here the writer copies the
-- rows in the same transaction (a per-row PL/pgSQL trigger would cost more than the COPY).
CREATE TABLE {s}.exchange_subject (
    subject text NOT NULL,
    leaf_index bigint NOT NULL REFERENCES {s}.exchange (leaf_index),
    PRIMARY KEY (subject, leaf_index)
);
CREATE INDEX exchange_started_at ON {s}.exchange (started_at);
CREATE INDEX exchange_client ON {s}.exchange (client, started_at);
CREATE INDEX exchange_service ON {s}.exchange (service, started_at);
CREATE INDEX exchange_user_id ON {s}.exchange (user_id);
CREATE INDEX exchange_issue ON {s}.exchange (issue);
CREATE INDEX exchange_message_id ON {s}.exchange (message_id);
CREATE TABLE {s}.checkpoint (
    size bigint PRIMARY KEY,
    root bytea NOT NULL,
    note text NOT NULL,
    cert_sha256 text NOT NULL REFERENCES {s}.certificate (sha256),
    created_at double precision NOT NULL,
    witness_cert_sha256 text REFERENCES {s}.certificate (sha256),  -- set once co-signed
    timestamp_token bytea  -- RFC 3161 token over the checkpoint text, once obtained
);
-- SQLite keeps this in PRAGMA user_version; one row, so there is one answer.
CREATE TABLE {s}.schema_version (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    version integer NOT NULL
);
INSERT INTO {s}.schema_version (version) VALUES ({_SCHEMA_VERSION});
"""


def added_ddl(s: str) -> str:
    # As in SQLite (ADDED_SCHEMA, which says what they hold): added to existing logs as
    # they open, no schema version needed.
    return f"""
CREATE TABLE IF NOT EXISTS {s}.globalconf (
    sha256 text PRIMARY KEY,
    generated_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    signed bytea NOT NULL,
    signer_cert_sha256 text NOT NULL REFERENCES {s}.certificate (sha256)
);
CREATE TABLE IF NOT EXISTS {s}.tree_block (
    block bigint PRIMARY KEY,
    root bytea NOT NULL
);
"""


def writer_lock_key(schema: str) -> int:
    """The advisory lock key of a schema: 64 bits of a digest, as PostgreSQL's signed bigint.

    A digest rather than hashtext(): stable across PostgreSQL versions, and a collision
    between two schema names (2**-64) could at worst refuse a writer, never admit two.
    """
    digest = hashlib.sha256(b"xroad_hub.messagelog\0" + schema.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# From this many rows on a batch goes in with COPY, below in one statement (see above).
_COPY_FROM = 16
# ... and so does a batch whose bodies reach this many bytes, however few its rows: the one
# statement carries all of them in one protocol message, and PostgreSQL refuses (drops the
# connection, and the writer lock with it) a message over 1 GB, which 15 exchanges can reach
# with max_body_bytes above ~34 MiB. COPY sends each row in its own message, as the old
# per-row inserts did, and at this size its fixed cost is lost in the copying.
_ONE_STATEMENT_MAX_BYTES = 64 * 1024 * 1024
# The PostgreSQL type of each of _COLUMNS (as in _ddl), for the arrays of a small batch.
_PG_TYPES = (
    "bigint", "text", "text", "text", "text", "text", "text", "text", "text", "text",
    "integer", "text", "float8", "float8", "bytea", "bytea", "bytea", "bytea", "bytea",
    "bytea", "bytea", "bytea", "bytea", "text", "text", "text",
)  # fmt: skip
assert len(_PG_TYPES) == len(_COLUMNS)


class PostgresMessageLog:
    def __init__(self, dsn: str, *, schema: str = "xroad_hub", max_batch: int = 1024) -> None:
        self.schema = validate_schema_name(schema)
        self._dsn = dsn
        self._s = f'"{self.schema}"'  # quoted as well as validated: belt and braces
        # A small batch in ONE statement (its own transaction): certificates, exchanges and
        # subjects from arrays, so that the batch costs one round trip to the server instead
        # of four (BEGIN, exchanges, subjects, COMMIT). The foreign keys hold: their checks
        # run at the end of the statement, after every part of it has inserted its rows.
        n = len(_COLUMNS)
        arrays = ", ".join(f"${i + 3}::{t}[]" for i, t in enumerate(_PG_TYPES))
        self._insert_batch = (
            f"WITH certs AS (INSERT INTO {self._s}.certificate"
            " SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT (sha256) DO NOTHING),"
            f" rows AS (INSERT INTO {self._s}.exchange ({', '.join(_COLUMNS)})"
            f" SELECT * FROM unnest({arrays}))"
            f" INSERT INTO {self._s}.exchange_subject"
            f" SELECT * FROM unnest(${n + 3}::text[], ${n + 4}::bigint[])"
        )
        self._conn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        # Looked up per batch (not bound now), so the write step can be observed in tests.
        self._commits = GroupCommit(lambda batch: self._write(batch), max_batch)
        self._next_index = 0
        self._known_certs: set[bytes] = set()
        self._tree = LogTree(self._leaf_hash_rows, f"message log in schema {self.schema!r}")

    def __repr__(self) -> str:  # never the DSN: it may hold a password
        return f"PostgresMessageLog(schema={self.schema!r})"

    async def open(self) -> None:
        settings = {
            "synchronous_commit": "on",  # durable COMMIT whatever the server default (above)
            "application_name": f"xroad-hub messagelog {self.schema}"[:63],
        }
        try:
            self._conn = await asyncpg.connect(self._dsn, server_settings=settings)
            await self._lock()
            await self._check_schema()
            await self._load_tree()
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=4, server_settings=settings
            )
        except BaseException as exc:
            await self._close_connections()
            if isinstance(exc, OSError | asyncpg.PostgresError | asyncpg.InterfaceError):
                raise LogError(
                    f"cannot open the message log in schema {self.schema!r}: {exc}"
                ) from exc
            raise
        self._commits.start(str(self.schema))

    async def _lock(self) -> None:
        assert self._conn is not None
        key = writer_lock_key(self.schema)
        if await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            return
        # Name the holder, so the operator can find the other process.
        holder = await self._conn.fetchrow(
            "SELECT a.pid, a.application_name, a.client_addr::text AS addr"
            " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            # a bigint key is split into classid (high 32 bits) and objid (low 32 bits)
            " AND (l.classid::bigint << 32) | l.objid::bigint = $1",
            key,
        )
        who = (
            f"backend pid {holder['pid']} ({holder['application_name'] or 'no name'}"
            f"{', from ' + holder['addr'] if holder['addr'] else ''})"
            if holder
            else "another session"
        )
        raise LogError(
            f"the message log in schema {self.schema!r} is already open for writing by {who}; "
            "two writers would assign the same leaf indexes. Stop the other node, or give "
            "this one its own schema"
        )

    async def _check_schema(self) -> None:
        assert self._conn is not None
        tables = {
            r["table_name"]
            for r in await self._conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                self.schema,
            )
        }
        version = 0
        if "schema_version" in tables:
            version = (
                await self._conn.fetchval(f"SELECT version FROM {self._s}.schema_version") or 0
            )
        if version == 0 and "exchange" not in tables:
            async with self._conn.transaction():
                await self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._s}")
                await self._conn.execute(log_ddl(self._s))
        elif version != _SCHEMA_VERSION:
            how = (
                f"run 'xroad-hub node upgrade-log DATABASE --schema {self.schema}' (it keeps "
                f"the old log as schema {self.schema}_v4)"
                if version == _SCHEMA_VERSION - 1
                else "keep that schema for audit, rename it (ALTER SCHEMA ... RENAME TO ...) "
                "and start again"
            )
            raise LogError(
                f"schema {self.schema!r} holds a message log of schema version {version}, this "
                f"node writes version {_SCHEMA_VERSION}: {how}"
            )
        await self._conn.execute(added_ddl(self._s))

    async def _load_tree(self) -> None:
        """Rebuild the tree head from the committed leaves (O(n) once, at start)."""
        assert self._conn is not None
        expected = 0
        hashes: list[bytes] = []
        async with self._conn.transaction():
            cursor = self._conn.cursor(
                f"SELECT leaf_index, leaf_hash FROM {self._s}.exchange ORDER BY leaf_index",
                prefetch=4096,
            )
            async for row in cursor:
                # The tree puts leaf i at index i: a missing or extra row would make every
                # later proof and checkpoint wrong, so refuse rather than number on from it.
                if row["leaf_index"] != expected:
                    raise LogError(
                        f"message log in schema {self.schema!r} has no entry {expected} "
                        f"(next is {row['leaf_index']}): rows were removed; keep it for audit"
                    )
                try:
                    hashes.append(stored_leaf_hash(expected, row["leaf_hash"]))
                except ValueError as exc:
                    raise LogError(f"message log in schema {self.schema!r}: {exc}") from exc
                expected += 1
                if len(hashes) == 4096:  # whole blocks at a time, and memory stays flat
                    self._tree.extend(hashes)
                    hashes = []
        self._tree.extend(hashes)
        self._next_index = expected
        repair, stray = self._tree.blocks_to_repair(
            await self._conn.fetch(f"SELECT block, root FROM {self._s}.tree_block")
        )
        if not (repair or stray):  # the usual open: nothing to write
            return
        async with self._conn.transaction():
            await self._conn.execute(
                f"DELETE FROM {self._s}.tree_block WHERE block < 0 OR block >= $1",
                self._tree.stored_blocks,
            )  # rows of blocks this log has not completed: stray
            await self._store_blocks(self._conn, repair)

    async def append(self, record: LogRecord) -> int:
        return await self._commits.append(record)

    async def _write(self, batch: list[Pending]) -> int:
        assert self._conn is not None
        first = self._next_index
        rows: list[tuple[Any, ...]] = []
        subjects: list[tuple[str, int]] = []
        new_certs: dict[str, bytes] = {}
        body_bytes = 0  # the unbounded part of a row (metadata, signatures, certs are capped)
        for i, (rec, stored, _, _) in enumerate(batch, start=first):
            rows.append((i, *stored))
            body_bytes += len(rec.request_body or b"") + len(rec.response_body or b"")
            # Once per subject: a name given twice must not fail the batch on the key.
            subjects += ((subject, i) for subject in sorted(set(rec.subjects)))
            for cert in (rec.request_cert, rec.response_cert):
                if cert is not None and cert not in self._known_certs:
                    new_certs[cert_sha256_hex(cert)] = cert
        try:
            if len(rows) < _COPY_FROM and body_bytes < _ONE_STATEMENT_MAX_BYTES:
                await self._conn.execute(
                    self._insert_batch,
                    list(new_certs),
                    list(new_certs.values()),
                    *(list(column) for column in zip(*rows, strict=True)),
                    [subject for subject, _ in subjects],
                    [index for _, index in subjects],
                )
            else:
                await self._write_copy(rows, subjects, new_certs)
        except Exception as exc:  # the group commit fails the batch and reports it
            reason = (
                "the connection to PostgreSQL was lost (and with it the writer lock); "
                "reopen the log"
                if self._conn.is_closed()
                else str(exc)
            )
            raise LogError(f"message log write failed: {reason}") from exc
        self._known_certs.update(new_certs.values())  # only once committed
        self._next_index = first + len(batch)
        self._tree.extend(leaf_hash for _, _, leaf_hash, _ in batch)
        return first

    async def _write_copy(
        self, rows: list[tuple[Any, ...]], subjects: list[tuple[str, int]], certs: dict[str, bytes]
    ) -> None:
        """A large batch: binary COPY in one transaction (the exchanges and the certificates
        their foreign keys need)."""
        assert self._conn is not None
        async with self._conn.transaction():
            if certs:
                await self._conn.executemany(
                    f"INSERT INTO {self._s}.certificate VALUES ($1, $2)"
                    " ON CONFLICT (sha256) DO NOTHING",
                    list(certs.items()),
                )
            await self._conn.copy_records_to_table(
                "exchange", schema_name=self.schema, columns=_COLUMNS, records=rows
            )
            if subjects:
                await self._conn.copy_records_to_table(
                    "exchange_subject",
                    schema_name=self.schema,
                    columns=("subject", "leaf_index"),
                    records=subjects,
                )

    @property
    def group_commit(self) -> GroupCommit:
        return self._commits

    def tree_head(self) -> tuple[int, bytes]:
        """Size and RFC 9162 root of the committed log."""
        return self._tree.head()

    async def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        """RFC 9162 proof that the tree of ``old_size`` entries is a prefix of ``size``'s."""
        return await self._tree.consistency_proof(old_size, size)

    async def _leaf_hash_rows(self, start: int, end: int) -> list[asyncpg.Record]:
        sql = (
            f"SELECT leaf_index, leaf_hash FROM {self._s}.exchange"
            " WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index"
        )
        try:
            async with self._reader().acquire() as conn:
                return list(await conn.fetch(sql, start, end))
        except _DB_ERRORS as exc:
            raise LogError(
                f"message log in schema {self.schema!r}: reading entries {start}..{end - 1} "
                f"failed: {exc}"
            ) from exc

    async def record_witness(self, size: int, cosigned_note: str, witness_cert: bytes) -> None:
        """Replace the checkpoint's note by the one a witness co-signed."""
        digest = hashlib.sha256(witness_cert).hexdigest()
        async with self._reader().acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {self._s}.certificate VALUES ($1, $2)"
                " ON CONFLICT (sha256) DO NOTHING",
                digest,
                witness_cert,
            )
            await conn.execute(
                f"UPDATE {self._s}.checkpoint SET note = $1, witness_cert_sha256 = $2"
                " WHERE size = $3",
                cosigned_note, digest, size,
            )  # fmt: skip

    def _reader(self) -> asyncpg.Pool:
        if self._pool is None:
            raise LogError("message log is not open")
        return self._pool

    async def add_checkpoint(
        self, size: int, root: bytes, note: str, cert_der: bytes, created_at: float
    ) -> None:
        digest = hashlib.sha256(cert_der).hexdigest()
        blocks = self._tree.unsaved_blocks()  # with the checkpoint that they serve
        async with self._reader().acquire() as conn, conn.transaction():
            await self._store_blocks(conn, blocks)
            await conn.execute(
                f"INSERT INTO {self._s}.certificate VALUES ($1, $2)"
                " ON CONFLICT (sha256) DO NOTHING",
                digest,
                cert_der,
            )
            await conn.execute(
                f"INSERT INTO {self._s}.checkpoint (size, root, note, cert_sha256, created_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                size, root, note, digest, created_at,
            )  # fmt: skip
        self._tree.saved(blocks)

    async def _store_blocks(
        self, conn: asyncpg.Connection, blocks: list[tuple[int, bytes]]
    ) -> None:
        if blocks:
            await conn.execute(
                f"INSERT INTO {self._s}.tree_block SELECT * FROM unnest($1::bigint[],"
                " $2::bytea[]) ON CONFLICT (block) DO NOTHING",
                [block for block, _ in blocks],
                [root for _, root in blocks],
            )

    async def record_globalconf(
        self, signed: bytes, signer_cert: bytes, generated_at: float, expires_at: float
    ) -> None:
        cert_digest = hashlib.sha256(signer_cert).hexdigest()
        try:  # kept before the exchange it concerns is logged: a failure fails that exchange
            async with self._reader().acquire() as conn, conn.transaction():
                await conn.execute(
                    f"INSERT INTO {self._s}.certificate VALUES ($1, $2)"
                    " ON CONFLICT (sha256) DO NOTHING",
                    cert_digest,
                    signer_cert,
                )
                await conn.execute(
                    f"INSERT INTO {self._s}.globalconf VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (sha256) DO NOTHING",
                    hashlib.sha256(signed).hexdigest(), generated_at, expires_at, signed,
                    cert_digest,
                )  # fmt: skip
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LogError(f"message log write failed: {exc}") from exc

    async def latest_checkpoint_size(self) -> int:
        """Size of the newest checkpoint, or -1 when there is none."""
        value = await self._reader().fetchval(
            f"SELECT COALESCE(MAX(size), -1) FROM {self._s}.checkpoint"
        )
        return int(value)

    async def record_timestamp(self, size: int, token: bytes) -> None:
        await self._reader().execute(
            f"UPDATE {self._s}.checkpoint SET timestamp_token = $1 WHERE size = $2", token, size
        )

    async def unstamped_checkpoints(self) -> list[tuple[int, str, float]]:
        """(size, checkpoint text, created) of checkpoints still without a timestamp."""
        rows = await self._reader().fetch(
            f"SELECT size, note, created_at FROM {self._s}.checkpoint"
            " WHERE timestamp_token IS NULL ORDER BY size"
        )
        # The note's text is what precedes its signature lines (C2SP signed note).
        return [(int(r[0]), str(r[1]).partition("\n\n")[0] + "\n", float(r[2])) for r in rows]

    async def purge_bodies(self, before: float) -> int:
        """Retention: drop the bodies of exchanges finished before ``before`` (epoch s).

        Leaves hold the bodies' digests, so the tree, the checkpoints and verification are
        unaffected; returns how many entries lost their bodies."""
        status = await self._reader().execute(
            f"UPDATE {self._s}.exchange SET request_body = NULL, response_body = NULL"
            " WHERE finished_at < $1"
            " AND (request_body IS NOT NULL OR response_body IS NOT NULL)",
            before,
        )
        return int(status.rsplit(" ", 1)[-1])  # the command tag: "UPDATE <rows>"

    async def count(self) -> int:
        return int(await self._reader().fetchval(f"SELECT count(*) FROM {self._s}.exchange"))

    async def leaves(self, start: int, end: int) -> Sequence[bytes]:
        rows = await self._reader().fetch(
            f"SELECT * FROM {self._s}.exchange WHERE leaf_index >= $1 AND leaf_index < $2"
            " ORDER BY leaf_index",
            start,
            end,
        )
        return [leaf_of(r) for r in rows]

    async def find(self, message_id: str) -> list[dict[str, object]]:
        rows = await self._reader().fetch(
            f"SELECT * FROM {self._s}.exchange WHERE message_id = $1 ORDER BY leaf_index",
            message_id,
        )
        return [dict(r) | {LEAF: leaf_of(r)} for r in rows]

    def reader(self) -> LogReader:
        """A reader of what this log has committed (blocking: call it in a worker thread)."""
        return PostgresLogReader(self._dsn, schema=self.schema)

    async def close(self) -> None:
        """Write everything already accepted, then close (which releases the writer lock)."""
        if not await self._commits.stop():
            return
        await self._close_connections()

    async def _close_connections(self) -> None:
        pool, conn, self._pool, self._conn = self._pool, self._conn, None, None
        if pool is not None:
            await pool.close()
        if conn is not None and not conn.is_closed():
            await conn.close()  # ends the session, so the advisory lock goes with it


_T = TypeVar("_T")
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


@functools.cache
def _numbered(sql: str) -> str:
    """SQLite's ``?`` parameters as PostgreSQL's ``$1, $2, ...`` (the reader's SQL holds no
    other question mark)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], start=1))


class PostgresLogReader(SQLLogReader):
    """A node's log in a PostgreSQL schema, read in one REPEATABLE READ, READ ONLY
    transaction (see reader.py). asyncpg runs on an event loop this reader owns, so it is
    used from plain threads; on a thread that runs a loop already it refuses to start."""

    def __init__(self, dsn: str, *, schema: str, snapshot: str | None = None) -> None:
        self.schema = validate_schema_name(schema)
        self.name = f"schema {self.schema!r}"
        self._dsn = dsn
        self._snapshot = snapshot
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection | None = None
        try:
            self._conn = self._run(
                asyncpg.connect(
                    dsn,
                    timeout=10,
                    # Unqualified table names are this log's; pg_catalog is searched first.
                    server_settings={
                        "search_path": self.schema,
                        "application_name": f"xroad-hub audit {self.schema}"[:63],
                    },
                )
            )
            self._run(self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            if snapshot is not None:  # another reader's, exported: see what it sees
                if not _SNAPSHOT_ID.fullmatch(snapshot):
                    raise LogReadError(f"{snapshot!r} is not a PostgreSQL snapshot id")
                self._run(self._conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
        except _DB_ERRORS as exc:
            self.close()
            raise LogReadError(f"cannot open the message log in {self.name}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        tables = self._tables()
        if "exchange" not in tables:
            self.close()
            raise LogReadError(
                f"{self.name} holds no message log; name the node's schema (its logs: "
                "node_ and the node id in lower case, e.g. node_th_gov_dbd_hub1)"
            )
        if "schema_version" in tables:
            rows = self._fetch("SELECT version FROM schema_version")
            wrong = other_layout(self.name, rows[0][0] if rows else 0)
            if wrong is not None:
                self.close()
                raise wrong

    def __repr__(self) -> str:  # never the DSN: it may hold a password
        return f"PostgresLogReader(schema={self.schema!r})"

    def address(self) -> LogAddress:
        if self._snapshot is None:  # it lives as long as this reader's transaction
            self._snapshot = str(self._fetch("SELECT pg_export_snapshot()")[0][0])
        return LogAddress(self._dsn, self.schema, self._snapshot)

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the reader may block it
            return self._loop.run_until_complete(coro)
        coro.close()
        raise RuntimeError(
            "a message log reader blocks while it reads: use it in a worker thread "
            "(asyncio.to_thread), never on an event loop"
        )

    def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        assert self._conn is not None
        try:
            return list(self._run(self._conn.fetch(_numbered(sql), *params)))
        except _DB_ERRORS as exc:
            raise LogReadError(str(exc)) from exc

    def _stream(self, sql: str, params: Sequence[object] = ()) -> Iterator[Row]:
        assert self._conn is not None
        try:
            cursor = self._run(self._conn.cursor(_numbered(sql), *params))
            while batch := self._run(cursor.fetch(BATCH)):
                yield from batch
        except _DB_ERRORS as exc:
            raise LogReadError(str(exc)) from exc

    def _tables(self) -> set[str]:
        rows = self._fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
            (self.schema,),
        )
        return {str(r[0]) for r in rows}

    def close(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None and not conn.is_closed() and not self._loop.is_closed():
                self._run(conn.close())  # ends the read-only transaction with the session
        finally:
            if not self._loop.is_running():
                self._loop.close()


# What pg_export_snapshot() returns (e.g. 00000003-0000001B-1): it is spliced into SET
# TRANSACTION SNAPSHOT, which takes no parameters.
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+(-[0-9A-F]+)+")


async def _schemas(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = 'exchange' AND table_schema IN (SELECT table_schema"
            " FROM information_schema.tables WHERE table_name = 'schema_version')"
            " ORDER BY table_schema"
        )
    finally:
        await conn.close()
    return [str(r[0]) for r in rows]


def log_schemas(dsn: str) -> list[str]:
    """The schemas of the database at ``dsn`` that hold a message log (blocking)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_schemas(dsn))
    except _DB_ERRORS as exc:
        raise LogReadError(f"cannot list the message logs in the database: {exc}") from exc
    except ValueError as exc:  # asyncpg's reading of a malformed address
        raise LogReadError(f"the database address is not valid ({exc})") from exc
    finally:
        loop.close()
