"""The one reading of a JSON body, shared by the node and the adapters (sans-I/O).

The node records whom a request or an answer concerns from the same bytes the service acts
on, so both must read them alike. Parsers differ at the edges: Python's ``json`` accepts
UTF-16 and UTF-32 and a byte order mark, orjson does not; on a duplicate key some keep the
first value and some the last. One strict reading removes the edges instead of picking a
side: JSON exchanged between systems MUST be UTF-8 (RFC 8259 section 8.1), without a BOM,
with unique member names, and numbers are numbers (no NaN or Infinity).
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Callable, Iterator
from typing import Any

from xroad_hub.errors import HubError

__all__ = [
    "JsonBodyError",
    "is_json_media",
    "json_charset_error",
    "loads_json",
    "scalar_text",
    "utf8_json_text",
    "walk_json",
]

_BOMS = (
    (b"\xef\xbb\xbf", "UTF-8 with a byte order mark"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)
# Bodies read for subjects are bounded by the node's body limit; nesting is bounded here so
# that a deep document is refused, not a RecursionError deep inside the parser.
MAX_DEPTH = 200


class JsonBodyError(HubError, ValueError):
    """The body is not UTF-8 JSON as RFC 8259 has it; the message says what to send."""


def is_json_media(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and
                                           media.endswith("+json"))  # fmt: skip


def json_charset_error(content_type: str) -> str | None:
    """Why a JSON Content-Type's charset parameter is refused (anything but UTF-8)."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                return f"JSON must be UTF-8 (RFC 8259), not charset={charset}"
    return None


def utf8_json_text(body: bytes) -> str:
    """The body as text, when it is UTF-8 without a byte order mark; else JsonBodyError."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            raise JsonBodyError(f"the JSON body is {name}; send UTF-8 without a BOM (RFC 8259)")
    if b"\x00" in body:
        # UTF-16 or UTF-32 without a BOM (a NUL byte is never valid in JSON text).
        raise JsonBodyError("the JSON body is not UTF-8 (it holds NUL bytes); send UTF-8")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonBodyError(f"the JSON body is not valid UTF-8 (byte {exc.start})") from None


def loads_json(body: bytes, *, parse_float: Callable[[str], Any] = decimal.Decimal) -> Any:
    """The JSON document of ``body``, read strictly (see the module docstring)."""
    text = utf8_json_text(body)
    decoder = _DECODERS.get(parse_float)
    if decoder is None:
        if len(_DECODERS) >= 16:
            _DECODERS.clear()  # a caller passing a new function each time keeps no more
        decoder = _DECODERS[parse_float] = json.JSONDecoder(
            parse_float=parse_float,
            parse_constant=_no_constant,
            object_pairs_hook=_no_duplicates,
        )
    try:
        doc = decoder.decode(text)
    except RecursionError:
        raise JsonBodyError("the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise JsonBodyError(f"the body is not valid JSON: {exc}") from None
    # A value nested N deep has N brackets before it: a text with no more than MAX_DEPTH
    # of them in all (most) needs no walk over the document.
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth_over(doc, MAX_DEPTH):
        raise JsonBodyError(f"the JSON body is nested deeper than {MAX_DEPTH} levels")
    return doc


# json.loads with any option builds a new JSONDecoder (and its scanner) per call, ~0.5% of
# the provider node's CPU; a decoder holds nothing of a document between calls (json.loads
# without options shares one too, across threads), so one per parse_float serves all alike.
_DECODERS: dict[Callable[[str], Any], json.JSONDecoder] = {}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # in C; a duplicate shows as a shorter dict, then is looked for
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            # Parsers disagree on which one counts; the node cannot know which the service
            # reads, so neither does.
            raise ValueError(f"duplicate key {key!r}")
        seen.add(key)
    raise AssertionError("unreachable: a shorter dict has a duplicate key")


def _depth_over(doc: Any, limit: int) -> bool:
    stack = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def scalar_text(value: Any) -> str | None:
    """A scalar as the text a service reads: strings as they are, integers (and numbers
    without a fraction, 1.1017002034501E12) as digits; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | decimal.Decimal):
        try:
            if value == int(value):
                return str(int(value))
        except (ValueError, OverflowError):
            return None
        return str(value)
    return None


def walk_json(doc: Any) -> Iterator[tuple[str, Any]]:
    """Every (member name, value) pair of every object in ``doc``, at any depth; a value
    that is an array of scalars yields one pair per element."""
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, list):
                    for element in item:
                        if isinstance(element, dict | list):
                            stack.append(element)
                        else:
                            yield key, element
                elif isinstance(item, dict):
                    stack.append(item)
                else:
                    yield key, item
        elif isinstance(value, list):
            stack.extend(value)
