"""structlog set-up: events as data, JSON lines when not on a terminal."""

from __future__ import annotations

import logging
import re
import sys

import structlog

__all__ = ["configure_logging", "loggable_error", "path_shape"]

# A path segment kept as it is in operational logs: a word of a route (letters, '-', '_',
# '.'), never anything holding a digit, a percent-escape or other characters, which is
# where ids of people (citizen ids, passport and case numbers) are found.
_ROUTE_WORD = re.compile(r"[A-Za-z][A-Za-z._-]{0,39}")
_SERVICE_PART = re.compile(r"[A-Za-z0-9._-]{1,100}")
_MAX_SEGMENTS = 16


_URL_TAIL = re.compile(r"(https?://[^/\s'\")]+)[^\s'\")]*")
_LONG_NUMBER = re.compile(r"\d{6,}")


def loggable_error(exc: BaseException) -> str:
    """A library's exception for an operational log: its type and message, with URLs cut to
    scheme, host and port (their paths and queries carry ids) and long numbers masked (a
    parser's message may quote a value). Operators keep what failed and where."""
    text = _URL_TAIL.sub(r"\1/...", str(exc))
    text = _LONG_NUMBER.sub("{number}", text)
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def path_shape(path: str) -> str:
    """What operational logs say about a request path: its route, with every segment that
    could be an id replaced by ``{id}``, and no query (query values are never logged).
    Under ``/r1/`` the five parts of the service id are kept: they name organisations and
    their services, which operators need, and no person."""
    segments = path.split("?", 1)[0].split("/")[1:]
    kept = 0
    if segments[:1] == ["r1"]:
        service = segments[1:6]
        full = len(service) == 5 and all(
            _SERVICE_PART.fullmatch(p) and p not in (".", "..") for p in service
        )
        kept = 6 if full else 1
    shaped = segments[:kept] + [
        s if not s or _ROUTE_WORD.fullmatch(s) else "{id}" for s in segments[kept:]
    ]
    if len(shaped) > _MAX_SEGMENTS:
        shaped = [*shaped[:_MAX_SEGMENTS], "..."]
    return "/" + "/".join(shaped)


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written, not when logging was configured: a
    stream replaced and closed since (a test's capture, a daemon's redirect) must not turn
    every later log line into an exception."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _CurrentStderr()


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Log to stderr; JSON lines unless stderr is a terminal (or ``json`` says otherwise)."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=True,
    )
