"""SQLite storage of cases, their status history and evidence references (never payloads).

The case file holds what the agency must keep to justify a decision: which exchange (message
id, service) delivered which document, when, and a digest that pins its content. The
documents themselves stay with the registries that own them; keeping copies here would create
a second, unsupervised register of citizens' personal data.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

__all__ = ["CaseRecord", "EvidenceRef", "HistoryEntry", "Store", "iso", "parse_iso"]

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


def _case(row: aiosqlite.Row) -> CaseRecord:
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


def _ref(row: aiosqlite.Row) -> EvidenceRef:
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


def _create_private(path: Path) -> None:
    """The case database holds citizens' data: 0600 before SQLite writes to it (its -wal and
    -shm files take the database file's mode); a wider existing file is narrowed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.chmod(0o600)


class Store:
    """One aiosqlite connection; writes that belong together run under one lock and commit.

    aiosqlite serialises statements on its thread, but a transaction spans several awaits;
    without the lock another coroutine's statements could land inside it (and its commit).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._write = asyncio.Lock()

    async def open(self) -> None:
        if str(self._path) != ":memory:":
            await asyncio.to_thread(_create_private, self._path)
        self._db = await aiosqlite.connect(self._path)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.executescript(SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("Store.open() was not called")
        return self._db

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
        db = self.db
        at = iso(submitted_at)
        async with self._write:
            try:
                async with db.execute(
                    "INSERT INTO case_counter (agency, prefix, year_be, last) VALUES (?, ?, ?, 1)"
                    " ON CONFLICT (agency, prefix, year_be) DO UPDATE SET last = last + 1"
                    " RETURNING last",
                    (agency, prefix, year_be),
                ) as cur:
                    row = await cur.fetchone()
                assert row is not None
                case_no = f"{agency}-{prefix}-{year_be}-{int(row[0]):06d}"
                await db.execute(
                    "INSERT INTO cases (case_no, case_type, citizen_id, juristic_id, status,"
                    " submitted_at, due_at, sla_days, updated_at)"
                    " VALUES (?, ?, ?, ?, 'submitted', ?, ?, ?, ?)",
                    (
                        case_no,
                        case_type,
                        citizen_id,
                        juristic_id,
                        at,
                        iso(due_at),
                        sla_days,
                        at,
                    ),
                )
                await db.execute(
                    "INSERT INTO status_history (case_no, status, at, actor) VALUES (?, ?, ?, ?)",
                    (case_no, "submitted", at, actor),
                )
                await db.executemany(
                    "INSERT INTO evidence (case_no, type, subject_kind, subject_id, position,"
                    " status) VALUES (?, ?, ?, ?, ?, 'pending')",
                    [(case_no, t, k, s, i) for i, (t, k, s) in enumerate(evidence)],
                )
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
        return case_no

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
        db = self.db
        async with self._write:
            try:
                await db.execute(
                    "INSERT INTO exchange (case_no, type, message_id, user_id, reason, at, ok,"
                    " status, error_code, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        case_no,
                        evidence_type,
                        message_id,
                        user_id,
                        reason,
                        iso(at),
                        int(ok),
                        status,
                        error_code,
                        sha256,
                    ),
                )
                if reference is not None:
                    error = reference.get("error")
                    await db.execute(
                        "UPDATE evidence SET status = ?, attempts = attempts + 1,"
                        " message_id = ?, service = COALESCE(?, service), retrieved_at = ?,"
                        " sha256 = ?, error = ? WHERE case_no = ? AND type = ?",
                        (
                            reference["status"],
                            message_id,
                            reference.get("service"),
                            iso(at),
                            sha256,
                            json.dumps(error, ensure_ascii=False) if error else None,
                            case_no,
                            evidence_type,
                        ),
                    )
                await db.commit()
            except BaseException:
                await db.rollback()
                raise

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
        db = self.db
        sources = list(allowed_from)
        marks = ",".join("?" * len(sources))
        stamp = iso(at)
        sets = "status = ?, updated_at = ?"
        params: list[Any] = [to, stamp]
        if decision is not None:
            sets += ", decision = ?, decision_reason = ?, decided_by = ?, decided_at = ?"
            params += [decision[0], decision[1], actor, stamp]
        async with self._write:
            try:
                cur = await db.execute(
                    f"UPDATE cases SET {sets} WHERE case_no = ? AND status IN ({marks})",
                    [*params, case_no, *sources],
                )
                changed = cur.rowcount == 1
                await cur.close()
                if changed:
                    await db.execute(
                        "INSERT INTO status_history (case_no, status, at, actor, note)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (case_no, to, stamp, actor, note),
                    )
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
        return changed

    async def fail_pending(self, error: dict[str, Any]) -> list[str]:
        """Mark items left ``pending`` (the process stopped mid-fetch) as failed.

        Returns the numbers of cases still ``submitted``, whose status must be recomputed.
        """
        db = self.db
        async with self._write:
            await db.execute(
                "UPDATE evidence SET status = 'failed', error = ? WHERE status = 'pending'",
                (json.dumps(error),),
            )
            await db.commit()
        async with db.execute("SELECT case_no FROM cases WHERE status = 'submitted'") as cur:
            return [r[0] for r in await cur.fetchall()]

    # --- reads --------------------------------------------------------------------------

    async def get_case(self, case_no: str) -> CaseRecord | None:
        async with self.db.execute("SELECT * FROM cases WHERE case_no = ?", (case_no,)) as cur:
            row = await cur.fetchone()
        return _case(row) if row else None

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
        async with self.db.execute(sql, [*params, limit, offset]) as cur:
            return [_case(r) for r in await cur.fetchall()]

    async def history(self, case_no: str) -> list[HistoryEntry]:
        async with self.db.execute(
            "SELECT status, at, actor, note FROM status_history WHERE case_no = ? ORDER BY id",
            (case_no,),
        ) as cur:
            return [
                HistoryEntry(r["status"], parse_iso(r["at"]), r["actor"], r["note"])
                for r in await cur.fetchall()
            ]

    async def evidence(self, case_no: str) -> list[EvidenceRef]:
        async with self.db.execute(
            "SELECT * FROM evidence WHERE case_no = ? ORDER BY position", (case_no,)
        ) as cur:
            return [_ref(r) for r in await cur.fetchall()]

    async def exchanges(self, case_no: str) -> list[dict[str, Any]]:
        async with self.db.execute(
            "SELECT type, message_id, user_id, reason, at, ok, status, error_code, sha256"
            " FROM exchange WHERE case_no = ? ORDER BY id",
            (case_no,),
        ) as cur:
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
                for r in await cur.fetchall()
            ]

    async def overdue(self, now: datetime, open_statuses: Sequence[str]) -> list[CaseRecord]:
        marks = ",".join("?" * len(open_statuses))
        async with self.db.execute(
            f"SELECT * FROM cases WHERE status IN ({marks}) AND due_at < ?"
            " ORDER BY due_at, case_no",
            [*open_statuses, iso(now)],
        ) as cur:
            return [_case(r) for r in await cur.fetchall()]

    async def decided(self, case_type: str | None = None) -> list[CaseRecord]:
        sql = "SELECT * FROM cases WHERE decided_at IS NOT NULL"
        params: list[Any] = []
        if case_type is not None:
            sql += " AND case_type = ?"
            params.append(case_type)
        async with self.db.execute(sql, params) as cur:
            return [_case(r) for r in await cur.fetchall()]

    async def count_by_status(self, case_type: str | None = None) -> dict[str, int]:
        sql = "SELECT status, COUNT(*) FROM cases"
        params: list[Any] = []
        if case_type is not None:
            sql += " WHERE case_type = ?"
            params.append(case_type)
        async with self.db.execute(sql + " GROUP BY status", params) as cur:
            return {r[0]: r[1] for r in await cur.fetchall()}
