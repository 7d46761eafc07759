"""Log records for tests that need entries in a message log, not particular ones."""

from __future__ import annotations

from xroad_hub.messagelog import LogRecord

__all__ = ["record"]


def record(i: int, finished: float) -> LogRecord:
    return LogRecord(
        message_id=f"m{i}", request_id=f"r{i}", role="provider", client="TH/GOV/DGA/portal",
        service="TH/GOV/DBD/registry/echo", user_id=None, issue=None, represented_party=None,
        method="GET", status=200, error_type=None, started_at=finished - 1,
        finished_at=finished, request_meta=b"{}", request_signature=b"s", request_body=b"q",
        request_cert=b"c", response_body=b"a",
    )  # fmt: skip
