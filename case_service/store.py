"""SQLite storage of cases, their status history and evidence references (never payloads).

The case file holds what the agency must keep to justify a decision: which exchange (message
id, service) delivered which document, when, and a digest that pins its content. The
documents themselves stay with the registries that own them; keeping copies here would create
a second, unsupervised register of citizens' personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import stat
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

__all__ = ["CaseRecord", "EvidenceRef", "HistoryEntry", "Store", "iso", "parse_iso"]

log = structlog.get_logger("case_service.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS case_counter (
    agency TEXT NOT NULL,
    prefix TEXT NOT NULL,
    year_be INTEGER NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (agency, prefix, year_be)
);
CREATE TABLE IF NOT EXISTS cases (
    case_no TEXT PRIMARY KEY,
    case_type TEXT NOT NULL,
    citizen_id TEXT NOT NULL,
    juristic_id TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    due_at TEXT NOT NULL,
    sla_days INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    decision TEXT,
    decision_reason TEXT,
    decided_by TEXT,
    decided_at TEXT
);
CREATE INDEX IF NOT EXISTS cases_by_citizen ON cases (citizen_id, submitted_at);
CREATE INDEX IF NOT EXISTS cases_by_status ON cases (status, due_at);
CREATE TABLE IF NOT EXISTS status_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_no TEXT NOT NULL REFERENCES cases (case_no),
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS history_by_case ON status_history (case_no, id);
-- The latest reference per evidence item; 'error' is the failure shown to users (JSON).
CREATE TABLE IF NOT EXISTS evidence (
    case_no TEXT NOT NULL REFERENCES cases (case_no),
    type TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    message_id TEXT,
    service TEXT,
    retrieved_at TEXT,
    sha256 TEXT,
    error TEXT,
    PRIMARY KEY (case_no, type)
);
-- Every exchange the service made for a case, including re-fetches for viewing: the case's
-- own account of whom it asked, on whose behalf, matching the hub's log by message id.
CREATE TABLE IF NOT EXISTS exchange (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_no TEXT NOT NULL,
    type TEXT NOT NULL,
    message_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL,
    ok INTEGER NOT NULL,
    status INTEGER,
    error_code TEXT,
    sha256 TEXT
);
CREATE INDEX IF NOT EXISTS exchange_by_case ON exchange (case_no, id);
"""


def iso(dt: datetime) -> str:
    """UTC, fixed width: stored timestamps then compare correctly as strings in SQL."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: the clock must return aware datetimes")
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass(frozen=True)
class CaseRecord:
    case_no: str
    case_type: str
    citizen_id: str
    juristic_id: str
    status: str
    submitted_at: datetime
    due_at: datetime
    sla_days: int
    updated_at: datetime
    decision: str | None
    decision_reason: str | None
    decided_by: str | None
    decided_at: datetime | None


@dataclass(frozen=True)
class HistoryEntry:
    status: str
    at: datetime
    actor: str
    note: str | None


@dataclass(frozen=True)
class EvidenceRef:
    type: str
    subject_kind: str
    subject_id: str
    status: str  # pending | ok | failed
    attempts: int
    message_id: str | None
    service: str | None
    retrieved_at: datetime | None
    sha256: str | None
    error: dict[str, Any] | None


def _case(row: sqlite3.Row) -> CaseRecord:
    return CaseRecord(
        case_no=row["case_no"],
        case_type=row["case_type"],
        citizen_id=row["citizen_id"],
        juristic_id=row["juristic_id"],
        status=row["status"],
        submitted_at=parse_iso(row["submitted_at"]),
        due_at=parse_iso(row["due_at"]),
        sla_days=row["sla_days"],
        updated_at=parse_iso(row["updated_at"]),
        decision=row["decision"],
        decision_reason=row["decision_reason"],
        decided_by=row["decided_by"],
        decided_at=parse_iso(row["decided_at"]) if row["decided_at"] else None,
    )


def _ref(row: sqlite3.Row) -> EvidenceRef:
    return EvidenceRef(
        type=row["type"],
        subject_kind=row["subject_kind"],
        subject_id=row["subject_id"],
        status=row["status"],
        attempts=row["attempts"],
        message_id=row["message_id"],
        service=row["service"],
        retrieved_at=parse_iso(row["retrieved_at"]) if row["retrieved_at"] else None,
        sha256=row["sha256"],
        error=json.loads(row["error"]) if row["error"] else None,
    )


# The database's own file and the ones SQLite keeps beside it; all hold citizens' data.
SIDE_FILES = ("", "-wal", "-shm", "-journal")


def _create_private(path: Path) -> None:
    """Create the database file 0600 (its directory 0700) before SQLite opens it, so it is
    never readable by others, whatever the umask; tighten files that already exist."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    _make_private(path)


def _make_private(path: Path) -> None:
    """Owner-only modes for the database and its side files; a file found more open than
    that (an older version, a copy, a umask of 0) is fixed, with a warning."""
    for suffix in SIDE_FILES:
        file = path.with_name(path.name + suffix)
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            file.chmod(mode & 0o700)
            log.warning(
                "case_db.permissions_fixed",
                path=str(file),
                was=oct(mode),
                now=oct(mode & 0o700),
                why="the case database holds citizens' data; only its owner may read it",
            )


T = TypeVar("T")


class _Abandoned(Exception):
    """The caller of a transaction was cancelled before it committed: roll it back."""


class _DbThread:
    """A plain sqlite3 connection and the one thread that ever uses it.

    An operation is a whole function run in that thread: one hop from the event loop (a
    futex wake-up there and a loop wake-up back) instead of one per statement, commit and
    rollback as with aiosqlite.
    """

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None  # used in the pool's thread only

    async def open(self, path: Path) -> None:
        def connect() -> None:
            # Created in the thread that will use it, so sqlite3's same-thread check holds.
            conn = sqlite3.connect(path)
            conn.row_factory = sqlite3.Row
            self._conn = conn

        await asyncio.get_running_loop().run_in_executor(self._pool, connect)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in the thread. Cancelling the await drops ``fn`` if it has not
        started; once started it runs to its end (a thread cannot be interrupted safely)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError("Store.open() was not called")
        return fn(self._conn)

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            # Queued behind whatever the thread still has to do, which therefore ends first.
            await asyncio.get_running_loop().run_in_executor(self._pool, close)
        finally:
            self._pool.shutdown(wait=False)


def _init(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(SCHEMA)
    db.commit()


class Store:
    """Two sqlite3 connections, each with a thread of its own: one writes, one reads.

    Each write is one transaction run whole in the writer's thread (all statements, then
    commit, or rollback on any error), so writes are serialised by that thread and no other
    coroutine's statements can land inside one. Reads run on the reader's connection: in WAL
    mode they see the last commit and never wait for a write to finish.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: _DbThread | None = None
        self._reader: _DbThread | None = None

    async def open(self) -> None:
        on_disk = str(self._path) != ":memory:"
        if on_disk:
            await asyncio.to_thread(_create_private, self._path)
        self._writer = _DbThread("case-db-write")
        await self._writer.open(self._path)
        await self._writer.run(_init)
        if on_disk:
            self._reader = _DbThread("case-db-read")
            await self._reader.open(self._path)
            # SQLite gives the WAL and shared-memory files the main file's mode; check anyway.
            await asyncio.to_thread(_make_private, self._path)
        else:
            self._reader = self._writer  # a second connection would open another database

    async def close(self) -> None:
        reader, writer = self._reader, self._writer
        self._reader = self._writer = None
        if reader is not None and reader is not writer:
            await reader.close()
        if writer is not None:
            await writer.close()

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]:
        if self._reader is None:
            raise RuntimeError("Store.open() was not called")
        return self._reader.run(fn)

    async def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` and the commit in one hop to the writer's thread; any error rolls back.

        A cancelled caller never cuts the thread's work short, nor leaves it half done: work
        not yet started is skipped; work under way runs to its end and then rolls back
        instead of committing, as the caller's own rollback on cancellation used to do. A
        cancellation that arrives once the commit has begun is too late, as it was before.
        """
        abandoned = threading.Event()

        def run(db: sqlite3.Connection) -> T:
            if abandoned.is_set():
                raise _Abandoned
            try:
                result = work(db)
                if abandoned.is_set():
                    raise _Abandoned
                db.commit()
            except BaseException:
                db.rollback()
                raise
            return result

        if self._writer is None:
            raise RuntimeError("Store.open() was not called")
        try:
            return await self._writer.run(run)
        except asyncio.CancelledError:
            abandoned.set()
            raise

    # --- writes -------------------------------------------------------------------------

    async def create_case(
        self,
        *,
        agency: str,
        prefix: str,
        year_be: int,
        case_type: str,
        citizen_id: str,
        juristic_id: str,
        submitted_at: datetime,
        due_at: datetime,
        sla_days: int,
        evidence: Sequence[tuple[str, str, str]],
        actor: str,
    ) -> str:
        """A new case in status ``submitted`` with pending evidence items; its case number.

        ``evidence`` lists (type, subject kind, subject id). The number comes from a counter
        per agency, case type and Buddhist-era year, allocated in the same transaction so two
        applications can never share one.
        """
        at = iso(submitted_at)
        due = iso(due_at)
        items = list(evidence)

        def work(db: sqlite3.Connection) -> str:
            # fetchall: the RETURNING statement runs to its end before the next one.
            [row] = db.execute(
                "INSERT INTO case_counter (agency, prefix, year_be, last) VALUES (?, ?, ?, 1)"
                " ON CONFLICT (agency, prefix, year_be) DO UPDATE SET last = last + 1"
                " RETURNING last",
                (agency, prefix, year_be),
            ).fetchall()
            case_no = f"{agency}-{prefix}-{year_be}-{int(row[0]):06d}"
            db.execute(
                "INSERT INTO cases (case_no, case_type, citizen_id, juristic_id, status,"
                " submitted_at, due_at, sla_days, updated_at)"
                " VALUES (?, ?, ?, ?, 'submitted', ?, ?, ?, ?)",
                (case_no, case_type, citizen_id, juristic_id, at, due, sla_days, at),
            )
            db.execute(
                "INSERT INTO status_history (case_no, status, at, actor) VALUES (?, ?, ?, ?)",
                (case_no, "submitted", at, actor),
            )
            db.executemany(
                "INSERT INTO evidence (case_no, type, subject_kind, subject_id, position,"
                " status) VALUES (?, ?, ?, ?, ?, 'pending')",
                [(case_no, t, k, s, i) for i, (t, k, s) in enumerate(items)],
            )
            return case_no

        return await self._transaction(work)

    async def record_fetch(
        self,
        case_no: str,
        evidence_type: str,
        *,
        at: datetime,
        message_id: str,
        user_id: str,
        reason: str,
        ok: bool,
        status: int | None,
        error_code: str | None,
        sha256: str | None,
        reference: dict[str, Any] | None,
    ) -> None:
        """Log one exchange; with ``reference`` also make it the item's current reference.

        ``reference`` holds status, service, sha256 and error of the item. Views pass none:
        a document re-fetched to be shown does not replace the one the case was built on.
        """
        stamp = iso(at)
        exchange = (
            case_no,
            evidence_type,
            message_id,
            user_id,
            reason,
            stamp,
            int(ok),
            status,
            error_code,
            sha256,
        )
        update: tuple[Any, ...] | None = None
        if reference is not None:
            error = reference.get("error")
            update = (
                reference["status"],
                message_id,
                reference.get("service"),
                stamp,
                sha256,
                json.dumps(error, ensure_ascii=False) if error else None,
                case_no,
                evidence_type,
            )

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO exchange (case_no, type, message_id, user_id, reason, at, ok,"
                " status, error_code, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                exchange,
            )
            if update is not None:
                db.execute(
                    "UPDATE evidence SET status = ?, attempts = attempts + 1,"
                    " message_id = ?, service = COALESCE(?, service), retrieved_at = ?,"
                    " sha256 = ?, error = ? WHERE case_no = ? AND type = ?",
                    update,
                )

        await self._transaction(work)

    async def not_fetched(self, case_no: str, evidence_type: str, error: dict[str, Any]) -> None:
        """Mark an item failed without an exchange: it was deliberately not fetched."""
        params = (json.dumps(error, ensure_ascii=False), case_no, evidence_type)

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE evidence SET status = 'failed', error = ? WHERE case_no = ? AND type = ?",
                params,
            )

        await self._transaction(work)

    async def transition(
        self,
        case_no: str,
        *,
        allowed_from: Iterable[str],
        to: str,
        at: datetime,
        actor: str,
        note: str | None = None,
        decision: tuple[str, str | None] | None = None,
    ) -> bool:
        """Move the case to ``to`` if its status is one of ``allowed_from``; False otherwise.

        The status test is part of the UPDATE, so the check and the change cannot be split by
        a concurrent request.
        """
        sources = list(allowed_from)
        marks = ",".join("?" * len(sources))
        stamp = iso(at)
        sets = "status = ?, updated_at = ?"
        params: list[Any] = [to, stamp]
        if decision is not None:
            sets += ", decision = ?, decision_reason = ?, decided_by = ?, decided_at = ?"
            params += [decision[0], decision[1], actor, stamp]
        sql = f"UPDATE cases SET {sets} WHERE case_no = ? AND status IN ({marks})"
        params += [case_no, *sources]

        def work(db: sqlite3.Connection) -> bool:
            changed = db.execute(sql, params).rowcount == 1
            if changed:
                db.execute(
                    "INSERT INTO status_history (case_no, status, at, actor, note)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (case_no, to, stamp, actor, note),
                )
            return changed

        return await self._transaction(work)

    async def fail_pending(self, error: dict[str, Any]) -> list[str]:
        """Mark items left ``pending`` (the process stopped mid-fetch) as failed.

        Returns the numbers of cases still ``submitted``, whose status must be recomputed.
        """
        params = (json.dumps(error),)

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE evidence SET status = 'failed', error = ? WHERE status = 'pending'", params
            )

        await self._transaction(work)

        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT case_no FROM cases WHERE status = 'submitted'").fetchall()
            return [r[0] for r in rows]

        return await self._read(read)

    # --- reads --------------------------------------------------------------------------
    # Each read fetches all its rows in the thread: a statement left unfinished would hold its
    # snapshot (the next read would not see later commits) and keep the WAL from checkpointing.

    async def get_case(self, case_no: str) -> CaseRecord | None:
        def read(db: sqlite3.Connection) -> CaseRecord | None:
            rows = db.execute("SELECT * FROM cases WHERE case_no = ?", (case_no,)).fetchall()
            return _case(rows[0]) if rows else None

        return await self._read(read)

    async def list_cases(
        self,
        *,
        citizen_id: str | None = None,
        statuses: Sequence[str] = (),
        case_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[CaseRecord]:
        where: list[str] = []
        params: list[Any] = []
        if citizen_id is not None:
            where.append("citizen_id = ?")
            params.append(citizen_id)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params += list(statuses)
        if case_type is not None:
            where.append("case_type = ?")
            params.append(case_type)
        sql = "SELECT * FROM cases"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submitted_at, case_no LIMIT ? OFFSET ?"
        params += [limit, offset]
        return await self._read(lambda db: [_case(r) for r in db.execute(sql, params).fetchall()])

    async def history(self, case_no: str) -> list[HistoryEntry]:
        def read(db: sqlite3.Connection) -> list[HistoryEntry]:
            rows = db.execute(
                "SELECT status, at, actor, note FROM status_history WHERE case_no = ? ORDER BY id",
                (case_no,),
            ).fetchall()
            return [
                HistoryEntry(r["status"], parse_iso(r["at"]), r["actor"], r["note"]) for r in rows
            ]

        return await self._read(read)

    async def evidence(self, case_no: str) -> list[EvidenceRef]:
        def read(db: sqlite3.Connection) -> list[EvidenceRef]:
            rows = db.execute(
                "SELECT * FROM evidence WHERE case_no = ? ORDER BY position", (case_no,)
            ).fetchall()
            return [_ref(r) for r in rows]

        return await self._read(read)

    async def exchanges(self, case_no: str) -> list[dict[str, Any]]:
        def read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute(
                "SELECT type, message_id, user_id, reason, at, ok, status, error_code, sha256"
                " FROM exchange WHERE case_no = ? ORDER BY id",
                (case_no,),
            ).fetchall()
            return [
                {
                    "type": r["type"],
                    "message_id": r["message_id"],
                    "user_id": r["user_id"],
                    "reason": r["reason"],
                    "at": r["at"],
                    "ok": bool(r["ok"]),
                    "status": r["status"],
                    "error_code": r["error_code"],
                    "sha256": r["sha256"],
                }
                for r in rows
            ]

        return await self._read(read)

    async def overdue(self, now: datetime, open_statuses: Sequence[str]) -> list[CaseRecord]:
        marks = ",".join("?" * len(open_statuses))
        sql = (
            f"SELECT * FROM cases WHERE status IN ({marks}) AND due_at < ? ORDER BY due_at, case_no"
        )
        params = [*open_statuses, iso(now)]
        return await self._read(lambda db: [_case(r) for r in db.execute(sql, params).fetchall()])

    async def decided(self, case_type: str | None = None) -> list[CaseRecord]:
        sql = "SELECT * FROM cases WHERE decided_at IS NOT NULL"
        params: list[Any] = []
        if case_type is not None:
            sql += " AND case_type = ?"
            params.append(case_type)
        return await self._read(lambda db: [_case(r) for r in db.execute(sql, params).fetchall()])

    async def count_by_status(self, case_type: str | None = None) -> dict[str, int]:
        sql = "SELECT status, COUNT(*) FROM cases"
        params: list[Any] = []
        if case_type is not None:
            sql += " WHERE case_type = ?"
            params.append(case_type)
        sql += " GROUP BY status"
        return await self._read(lambda db: {r[0]: r[1] for r in db.execute(sql, params).fetchall()})
