"""The flat-file adapter's exceptions, in one place.

LayoutError       a layout file or a service's options are wrong (configuration time)
ExportRejected    a candidate export cannot be published; the previous version serves on
QueryError        a request the published service refuses; carries the HTTP answer
"""

from __future__ import annotations

__all__ = ["ExportRejected", "LayoutError", "QueryError"]


class LayoutError(ValueError):
    """A layout or option is invalid; the message names the setting and what to change."""


class ExportRejected(Exception):
    """A new export was refused as a whole (half-written, unreadable, too many bad records).

    ``broken`` holds the first broken records found (objects with ``as_dict()``) and
    ``broken_count`` all of them, so the agency can see why a file was refused.
    """

    def __init__(
        self, reason: str, *, broken: list[object] | None = None, broken_count: int = 0
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.broken = broken or []
        self.broken_count = broken_count


class QueryError(Exception):
    """A request refused by the service: ``status`` and ``code`` go into the JSON answer."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra
