"""What both log backends store: the exchange columns, in order, and the layout version.

Kept in one place so that SQLite and PostgreSQL logs cannot drift apart; both refuse a log
of another version (no silent migration of evidence).
"""

from __future__ import annotations

__all__ = ["COLUMNS", "SCHEMA_VERSION"]

SCHEMA_VERSION = 4

COLUMNS = (
    "leaf_index", "message_id", "request_id", "role", "client", "service", "user_id", "issue",
    "represented_party", "method", "status", "error_type", "started_at", "finished_at", "leaf",
    "request_meta", "request_signature", "response_meta", "response_signature",
    "request_body", "response_body", "request_cert_sha256", "response_cert_sha256", "subjects",
)  # fmt: skip
