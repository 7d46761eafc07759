"""Searching a message log, sans-I/O: filters become one parameterised SQL query.

Only fixed column names ever reach the SQL text; every value is a bound parameter. Paging
is by leaf index (``after``), which stays correct while the log grows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime

__all__ = ["MAX_PAGE", "SearchFilter", "search_sql"]

MAX_PAGE = 1000
_EQUAL = {
    "client": "client",
    "service": "service",
    "user_id": "user_id",
    "issue": "issue",
    "message_id": "message_id",
    "status": "status",
    "role": "role",
    "error_type": "error_type",
}
# What a search returns: the record without bodies, metadata or signatures.
COLUMNS = (
    "leaf_index", "message_id", "request_id", "role", "client", "service", "user_id", "issue",
    "represented_party", "method", "status", "error_type", "started_at", "finished_at",
    "subjects",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SearchFilter:
    since: datetime | None = None
    until: datetime | None = None
    client: str | None = None
    service: str | None = None
    user_id: str | None = None
    issue: str | None = None
    message_id: str | None = None
    status: int | None = None
    role: str | None = None
    error_type: str | None = None
    subject: str | None = None


def _epoch(when: datetime) -> float:
    # A time without offset means UTC, as everywhere in the log.
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def search_sql(f: SearchFilter, *, limit: int = 100, after: int = -1) -> tuple[str, list[object]]:
    """SQL (SQLite dialect, ``?`` parameters) selecting COLUMNS in leaf order."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"page size must be 1..{MAX_PAGE}")
    where, params = ["e.leaf_index > ?"], [after]
    for field in fields(f):
        value = getattr(f, field.name)
        if value is None or field.name not in _EQUAL:
            continue
        where.append(f"e.{_EQUAL[field.name]} = ?")
        params.append(value)
    if f.since is not None:
        where.append("e.started_at >= ?")
        params.append(_epoch(f.since))
    if f.until is not None:
        where.append("e.started_at < ?")
        params.append(_epoch(f.until))
    if f.subject is not None:
        where.append("e.leaf_index IN (SELECT leaf_index FROM exchange_subject WHERE subject = ?)")
        params.append(f.subject)
    cols = ", ".join(f"e.{c}" for c in COLUMNS)
    sql = f"SELECT {cols} FROM exchange e WHERE {' AND '.join(where)} ORDER BY e.leaf_index LIMIT ?"
    return sql, [*params, limit]
