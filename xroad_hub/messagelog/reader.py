"""Reading a node's message log: the one interface verification, evidence export, search,
the citizens' tracker and the auditors' API go through, whichever backend stores the log.

A reader is synchronous: verification is CPU-bound (every entry's signatures), so it runs
in the CLI's own thread or, on a node, in a worker thread (``asyncio.to_thread``), never on
the node's event loop. The PostgreSQL reader drives asyncpg with an event loop of its own,
which refuses to run inside a running loop: a reader used on the node's loop fails loudly
instead of stalling every exchange.

A reader sees ONE snapshot of the log from open to close (SQLite: one read transaction;
PostgreSQL: REPEATABLE READ, READ ONLY), so the checkpoints, the entries and the subject
index it hands out agree with each other while the node keeps writing.

The worker processes of ``audit verify --jobs`` open readers of their own (``address``).
On PostgreSQL they import the snapshot of the reader they came from. SQLite has no snapshot
another process can take up: each worker sees the file as of its own first read. Entries a
node appends meanwhile are beyond the count the auditor's reader saw, so they are not
checked either way; but a change to an older entry made during the audit (retention purging
a body, or someone altering the file) is checked as the worker read it. To check a live
SQLite log exactly as it was at one moment, check a copy (``sqlite3 LOG ".backup COPY"``).

The queries are written once, below, in SQLite's dialect (``?`` parameters, unqualified
table names); each backend supplies two primitives, ``_fetch`` and ``_stream``, and the
PostgreSQL one numbers the parameters and finds the tables through its ``search_path``.
Rows come back as the driver made them (``sqlite3.Row``, ``asyncpg.Record``): both index
by name and position and have ``keys()``, and copying a million rows into dicts would cost
the verifier a third of its speed for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from xroad_hub.errors import HubError
from xroad_hub.messagelog.layout import COLUMNS, SCHEMA_VERSION
from xroad_hub.messagelog.search import SearchFilter, search_sql

__all__ = [
    "BATCH", "LogAddress", "LogReadError", "LogReader", "Row", "SQLLogReader", "as_dict",
    "short", "stored_leaf_hash",
]  # fmt: skip

# Rows per round trip when walking the whole log: big enough that the driver's per-call
# cost vanishes, small enough that memory stays flat whatever the log's size.
BATCH = 4096


class LogReadError(HubError):
    """The log cannot be opened or read (no such file or schema, not a log, I/O error)."""


class Row(Protocol):
    """One stored row: by column name or position, as both drivers hand them out."""

    def __getitem__(self, key: str | int, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


@dataclass(frozen=True, slots=True)
class LogAddress:
    """How another process opens a reader of the same log (the verifier's worker
    processes): a SQLite file, or a PostgreSQL DSN and schema, with the snapshot of the
    reader it came from when the backend can share one (PostgreSQL's exported snapshots).
    ``target`` may hold a password: it is left out of the repr."""

    target: str
    schema: str | None = None
    snapshot: str | None = None

    def __repr__(self) -> str:
        where = f"schema={self.schema!r}" if self.schema else repr(self.target)
        return f"LogAddress({where})"


def short(value: object) -> str:
    """A stored value as findings and errors quote it: its repr, cut to 40 characters."""
    try:
        text = repr(value)
    except RecursionError:  # JSON nests deeper than repr goes
        return "a value nested too deep to show"
    return text if len(text) <= 40 else text[:39] + "…"


def stored_leaf_hash(index: object, value: object) -> bytes:
    """Entry ``index``'s stored leaf hash, as a tree takes it; ValueError if it is not a
    SHA-256 hash (32 bytes): a changed row that start-up and proofs must not build on."""
    if type(value) is not bytes or len(value) != 32:
        raise ValueError(
            f"entry {index} has no SHA-256 leaf hash ({short(value)}): the log was changed; "
            "keep it for audit ('xroad-hub audit verify' lists what is wrong)"
        )
    return value


def other_layout(name: str, version: object) -> LogReadError | None:
    """The error for a log of another layout version than this reader's (0: none recorded,
    left to the queries to judge), or None."""
    if version in (0, None, SCHEMA_VERSION):
        return None
    how = (
        "upgrade a copy of it with 'xroad-hub node upgrade-log COPY' and audit the copy (the "
        "upgrade names any entry whose columns do not give the leaf stored with it, and keeps "
        "the rest as it was, checkpoints included)"
        if version == SCHEMA_VERSION - 1
        else f"audit it with a release that wrote version {version}"
    )
    return LogReadError(
        f"{name} is a message log of layout version {version}; this xroad-hub reads version "
        f"{SCHEMA_VERSION}: {how}"
    )


def as_dict(row: Row) -> dict[str, Any]:
    return {name: row[name] for name in row.keys()}  # noqa: SIM118 (rows are not mappings)


class LogReader(Protocol):
    """What the auditing side reads from a message log. Use it as a context manager; it
    never writes."""

    name: str  # for messages: the file, or the PostgreSQL schema (never a DSN: passwords)

    def count(self) -> int:
        """How many entries the log holds."""
        ...

    def entries(
        self, columns: Sequence[str] | None = None, *, between: tuple[int, int] | None = None
    ) -> Iterator[Row]:
        """Every entry (``columns`` of it, default all) in leaf order, read in batches; with
        ``between=(start, stop)`` only those with a leaf index from start to stop - 1."""
        ...

    def address(self) -> LogAddress | None:
        """Where another process opens a reader of this log, at this reader's snapshot if
        the backend can share it; None if it cannot be opened elsewhere."""
        ...

    def leaf_hashes(self, size: int, start: int = 0) -> list[bytes]:
        """RFC 9162 leaf hashes of the entries with leaf index in [start, size), in order."""
        ...

    def block_roots(self, count: int) -> dict[int, bytes]:
        """The stored roots of the tree's blocks below block ``count`` (layout.TREE_BLOCK
        leaves each), by block; derived data, so possibly incomplete (none in a log that
        no node has checkpointed since they were kept)."""
        ...

    def certificates(self) -> Iterator[tuple[Any, Any]]:
        """(sha256 hex, DER) of every stored certificate."""
        ...

    def checkpoints(self) -> list[Row]:
        """Every stored checkpoint, smallest size first."""
        ...

    def subject_index(self) -> Iterator[tuple[Any, Any]]:
        """(leaf index, subject) rows of the subject index, in leaf then subject order."""
        ...

    def entries_of(self, message_id: str) -> list[Row]:
        """Every entry (all columns) logged under ``message_id``, in leaf order."""
        ...

    def proving_checkpoint(self, index: int) -> Row | None:
        """The first checkpoint covering entry ``index`` that is witnessed and stamped."""
        ...

    def covering_checkpoints(self, index: int) -> tuple[int, int, int]:
        """How many checkpoints cover entry ``index``: all, witnessed, timestamped."""
        ...

    def globalconf_in_force(self, logged_at: float, signed_at: float) -> Row | None:
        """The newest stored global configuration issued by ``logged_at`` and not expired at
        ``signed_at``; None if none (or the log predates stored configurations)."""
        ...

    def search(self, query: SearchFilter, *, limit: int, after: int) -> list[Row]:
        """One page of entries matching ``query`` (search.COLUMNS), after leaf ``after``."""
        ...

    def subject_accesses(self, subject: str, *, limit: int, after: int) -> list[Row]:
        """One page of provider-side entries the subject index says concern ``subject``."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> LogReader: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


_ALL = ", ".join(COLUMNS)
# Fixed SQL: the subject and paging values are bound parameters, nothing else varies. The
# (subject, leaf_index) primary key of exchange_subject makes this an index range scan.
_SUBJECT_ACCESSES = """
SELECT e.leaf_index, e.message_id, e.client, e.service, e.user_id, e.issue,
       e.represented_party, e.method, e.status, e.error_type, e.started_at, e.request_meta
FROM exchange_subject s JOIN exchange e ON e.leaf_index = s.leaf_index
WHERE s.subject = ? AND e.role = 'provider' AND s.leaf_index > ?
ORDER BY s.leaf_index
LIMIT ?
"""


class SQLLogReader:
    """The queries of `LogReader`, over a backend's two primitives (see the module doc)."""

    name = ""

    def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        raise NotImplementedError

    def _stream(self, sql: str, params: Sequence[object] = ()) -> Iterator[Row]:
        raise NotImplementedError

    def _tables(self) -> set[str]:
        """Names of the log's tables (asked, not tried: a failed statement would end a
        PostgreSQL reader's snapshot transaction)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> SQLLogReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def count(self) -> int:
        return int(self._fetch("SELECT COUNT(*) FROM exchange")[0][0])

    def entries(
        self, columns: Sequence[str] | None = None, *, between: tuple[int, int] | None = None
    ) -> Iterator[Row]:
        unknown = set(columns or ()) - set(COLUMNS)
        if unknown:  # only fixed names ever reach the SQL text
            raise ValueError(f"no column(s) {sorted(unknown)} in the exchange table")
        names = ", ".join(columns) if columns else _ALL
        if between is None:
            return self._stream(f"SELECT {names} FROM exchange ORDER BY leaf_index")
        return self._stream(
            f"SELECT {names} FROM exchange WHERE leaf_index >= ? AND leaf_index < ?"
            " ORDER BY leaf_index",
            between,
        )

    def address(self) -> LogAddress | None:
        return None

    def leaf_hashes(self, size: int, start: int = 0) -> list[bytes]:
        rows = self._stream(
            "SELECT leaf_index, leaf_hash FROM exchange WHERE leaf_index >= ? AND leaf_index < ?"
            " ORDER BY leaf_index",
            (start, size),
        )
        try:
            return [stored_leaf_hash(r[0], r[1]) for r in rows]
        except ValueError as exc:
            raise LogReadError(str(exc)) from exc

    def block_roots(self, count: int) -> dict[int, bytes]:
        if count <= 0 or "tree_block" not in self._tables():
            return {}
        rows = self._fetch("SELECT block, root FROM tree_block WHERE block < ?", (count,))
        # Anything but a hash is left out (read from the leaves instead), never converted.
        return {
            r[0]: r[1]
            for r in rows
            if type(r[0]) is int and type(r[1]) is bytes and len(r[1]) == 32
        }

    def certificates(self) -> Iterator[tuple[Any, Any]]:
        return ((r[0], r[1]) for r in self._fetch("SELECT sha256, der FROM certificate"))

    def checkpoints(self) -> list[Row]:
        return self._fetch(
            "SELECT size, root, note, cert_sha256, created_at, witness_cert_sha256,"
            " timestamp_token FROM checkpoint ORDER BY size"
        )

    def subject_index(self) -> Iterator[tuple[Any, Any]]:
        rows = self._stream(
            "SELECT leaf_index, subject FROM exchange_subject ORDER BY leaf_index, subject"
        )
        return ((r[0], r[1]) for r in rows)

    def entries_of(self, message_id: str) -> list[Row]:
        return self._fetch(
            f"SELECT {_ALL} FROM exchange WHERE message_id = ? ORDER BY leaf_index", (message_id,)
        )

    def proving_checkpoint(self, index: int) -> Row | None:
        rows = self._fetch(
            "SELECT * FROM checkpoint WHERE size > ? AND witness_cert_sha256 IS NOT NULL"
            " AND timestamp_token IS NOT NULL ORDER BY size LIMIT 1",
            (index,),
        )
        return rows[0] if rows else None

    def covering_checkpoints(self, index: int) -> tuple[int, int, int]:
        row = self._fetch(
            "SELECT COUNT(*), COUNT(witness_cert_sha256), COUNT(timestamp_token)"
            " FROM checkpoint WHERE size > ?",
            (index,),
        )[0]
        return int(row[0]), int(row[1]), int(row[2])

    def globalconf_in_force(self, logged_at: float, signed_at: float) -> Row | None:
        if "globalconf" not in self._tables():  # a log written before nodes kept them
            return None
        rows = self._fetch(
            "SELECT * FROM globalconf WHERE generated_at <= ? AND expires_at > ?"
            " ORDER BY generated_at DESC LIMIT 1",
            (logged_at, signed_at),
        )
        return rows[0] if rows else None

    def search(self, query: SearchFilter, *, limit: int, after: int) -> list[Row]:
        sql, params = search_sql(query, limit=limit, after=after)
        return self._fetch(sql, params)

    def subject_accesses(self, subject: str, *, limit: int, after: int) -> list[Row]:
        return self._fetch(_SUBJECT_ACCESSES, (subject, after, limit))
