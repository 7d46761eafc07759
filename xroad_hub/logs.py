"""structlog set-up: events as data, JSON lines when not on a terminal."""

from __future__ import annotations

import json as stdjson
import logging
import re
import sys
import time
from typing import Any

import orjson
import structlog

__all__ = ["configure_logging", "loggable_error", "mask_numbers", "path_shape"]

# A path segment kept as it is in operational logs: a word of a route (letters, '-', '_',
# '.'), never anything holding a digit, a percent-escape or other characters, which is
# where ids of people (citizen ids, passport and case numbers) are found.
_ROUTE_WORD = re.compile(r"[A-Za-z][A-Za-z._-]{0,39}")
_SERVICE_PART = re.compile(r"[A-Za-z0-9._-]{1,100}")
_MAX_SEGMENTS = 16


_URL_TAIL = re.compile(r"(https?://[^/\s'\")]+)[^\s'\")]*")
_LONG_NUMBER = re.compile(r"\d{6,}")


def mask_numbers(text: str) -> str:
    """``text`` with every run of 6 or more digits (a citizen id, a case number) masked."""
    return _LONG_NUMBER.sub("{number}", text)


def loggable_error(exc: BaseException) -> str:
    """A library's exception for an operational log: its type and message, with URLs cut to
    scheme, host and port (their paths and queries carry ids) and long numbers masked (a
    parser's message may quote a value). Operators keep what failed and where."""
    text = _URL_TAIL.sub(r"\1/...", str(exc))
    text = mask_numbers(text)
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


class _LineLogger:
    """One ``write`` per line to the current stderr. structlog's PrintLogger takes a lock and
    calls ``print(..., flush=True)`` (two writes and a flush); stderr is line-buffered in any
    case (Python >= 3.9), and a line is written whole, so nothing is lost or interleaved."""

    __slots__ = ()

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")

    log = debug = info = warn = warning = msg
    error = critical = exception = failure = fatal = msg


def _line_logger(*_args: Any) -> _LineLogger:
    return _LineLogger()


class _UtcStamper:
    """The ISO 8601 UTC timestamp structlog's TimeStamper(fmt="iso", utc=True) writes
    ("2026-01-31T12:00:00.123456Z"), without a datetime per line: the part up to the second
    is formatted once per second and the microseconds appended."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: object, _name: str, event_dict: Any) -> Any:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


def _json_fallback(obj: object) -> str:
    return repr(obj)  # as structlog's JSONRenderer renders what JSON has no type for


def _json_line(_logger: object, _name: str, event_dict: Any) -> str:
    """The event as one JSON line, by orjson (a tenth of the stdlib encoder's time); what
    orjson refuses (an int beyond 64 bits) goes the stdlib way, so no event is ever lost."""
    try:
        return orjson.dumps(
            event_dict, default=_json_fallback, option=orjson.OPT_NON_STR_KEYS
        ).decode()
    except (TypeError, orjson.JSONEncodeError):
        return stdjson.dumps(event_dict, default=_json_fallback, separators=(",", ":"))


def _masked_record(_logger: object, _name: str, event_dict: Any) -> Any:
    """A standard-library record (asyncio, aiohttp, zeep...) with long numbers masked in its
    message and traceback: libraries quote the values they fail on, and those can be a
    person's id. Its logger's name says where it came from."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger"] = record.name
    event_dict["event"] = mask_numbers(str(event_dict.get("event", "")))
    if isinstance(exception := event_dict.get("exception"), str):
        event_dict["exception"] = mask_numbers(exception)
    return event_dict


_STANDARD_HANDLER = logging.StreamHandler(_STDERR)


def _route_standard_logging(renderer: Any) -> None:
    """Records of the standard library's logging become lines like structlog's: the same
    renderer, the node's context, numbers masked. Without a handler they went to stderr as
    plain text (logging's last resort), tracebacks quoting values included. WARNING and
    above, as before: libraries' info lines (aiohttp's access log) stay out."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _UtcStamper(),
            structlog.processors.format_exc_info,
            _masked_record,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    _STANDARD_HANDLER.setFormatter(formatter)  # configured again: the one handler, renewed
    root = logging.getLogger()
    if _STANDARD_HANDLER not in root.handlers:
        root.addHandler(_STANDARD_HANDLER)
    root.setLevel(logging.WARNING)


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Log to stderr; JSON lines unless stderr is a terminal (or ``json`` says otherwise).

    Each exchange is logged at info, so a JSON line is kept cheap (about a third of
    structlog's defaults): orjson, a timestamp without datetime, one write per line.
    Libraries' records (standard logging) are written the same way."""
    if json is None:
        json = not sys.stderr.isatty()
    _route_standard_logging(_json_line if json else structlog.dev.ConsoleRenderer())
    if json:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                _UtcStamper(),
                structlog.processors.format_exc_info,
                _json_line,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(
                logging.getLevelNamesMapping()[level.upper()]
            ),
            logger_factory=_line_logger,
            cache_logger_on_first_use=True,
        )
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=True,
    )
