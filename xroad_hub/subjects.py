"""Data subjects: whom an exchange is about, located as the service's registration declares.

A provider registers, per service, where the subject's identifier sits in a request:

    subject = ["path:1"]            first path segment after the service code
    subject = ["query:citizenId"]   a query parameter (every occurrence)
    subject = ["header:X-Subject"]  a request header
    subject = ["body:citizenId"]    an element of a SOAP body, or a top-level key of a JSON
                                    body, with that name

The provider's node records the values with the exchange, so citizens can later be shown
who read their data, without any work in the provider's own system.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

__all__ = ["Locator", "extract_subjects", "parse_locator"]

_MAX_SUBJECT = 64
_KINDS = ("path", "query", "header", "body")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True, slots=True)
class Locator:
    kind: str
    name: str  # path: 1-based segment number; query/header: the name

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_locator(text: str) -> Locator:
    kind, sep, name = text.partition(":")
    if not sep or kind not in _KINDS or not _NAME.fullmatch(name):
        raise ValueError(
            f"subject locator {text!r} must be path:N, query:NAME, header:NAME or body:NAME"
        )
    if kind == "path" and not (name.isdigit() and int(name) >= 1):
        raise ValueError(f"subject locator {text!r}: path segments are numbered from 1")
    return Locator(kind, name)


def extract_subjects(
    locators: Iterable[Locator],
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    body_fields: Mapping[str, list[str]] | None = None,
) -> tuple[str, ...]:
    """The subject values of one request (sorted, unique, printable, bounded length)."""
    found: set[str] = set()
    segments = [unquote(s) for s in path.split("/")[1:]] if path else []
    pairs = parse_qsl(query, keep_blank_values=False) if query else []
    header_list = list(headers)
    for loc in locators:
        if loc.kind == "path":
            i = int(loc.name) - 1
            values = [segments[i]] if i < len(segments) else []
        elif loc.kind == "query":
            values = [v for k, v in pairs if k == loc.name]
        elif loc.kind == "body":
            values = list((body_fields or {}).get(loc.name, []))
        else:
            values = [v for k, v in header_list if k.lower() == loc.name.lower()]
        found.update(v for v in map(_normalised, values) if v)
    return tuple(sorted(found))


_ID_LIKE = re.compile(r"[0-9][0-9\- ]*[0-9]")


def _normalised(value: str) -> str:
    """The subject as the registries read it: padding (spaces, NUL) around it and the dashes
    people write into Thai ids (1-1017-00203-45-0) do not make it another person. Values
    that are not printable are kept escaped, so an odd request is still on record."""
    value = value.strip(" \t\r\n\x00")
    if _ID_LIKE.fullmatch(value):
        digits = value.replace("-", "").replace(" ", "")
        if len(digits) == 13:
            value = digits
    if not value.isprintable():
        value = value.encode("unicode_escape").decode("ascii")
    return value[:_MAX_SUBJECT]
