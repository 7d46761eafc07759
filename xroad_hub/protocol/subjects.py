"""Data subjects: whom an exchange is about, located as the service's registration declares.

A provider registers, per service, where the subject's identifier sits in a request:

    subject = ["path:1"]            first path segment after the service code
    subject = ["query:citizenId"]   a query parameter (every occurrence)
    subject = ["header:X-Subject"]  a request header
    subject = ["body:citizenId"]    an element of a SOAP body, or a member of a JSON (or
                                    form) body, with that name, at any depth

and where persons are named in its answers (``answer_subject``, required: an empty list says
"this service's answers name no person"):

    answer_subject = ["json:records[*].owner_citizen_id"]   a JSON path: names, [*] for
                                                            every element of an array
    answer_subject = ["xml:citizenId"]      every element of that local name in a SOAP
                                            answer's body, and every member of that name
                                            in a JSON answer (bridged SOAP services answer
                                            REST clients with the XML names)

The provider's node records the values with the exchange, so citizens can later be shown
who read their data, without any work in the provider's own system. Values are read the way
services read them (see ``_normalised``), and bodies with the one strict reading the
adapters use too (``jsonbody.py``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from lxml import etree

from xroad_hub.errors import HubError
from xroad_hub.protocol.jsonbody import (
    JsonBodyError,
    is_json_media,
    loads_json,
    scalar_text,
    walk_json,
)
from xroad_hub.protocol.soap import SoapError, parse_soap

__all__ = [
    "MAX_ANSWER_SUBJECTS",
    "AnswerLocator",
    "Locator",
    "SubjectError",
    "answer_subjects",
    "extract_subjects",
    "is_person_id_name",
    "json_body_fields",
    "openapi_person_fields",
    "parse_answer_locator",
    "parse_locator",
    "signed_answer_values",
    "signed_request_values",
    "uncovered_person_fields",
]

_MAX_SUBJECT = 64
# Work bounded per answer: a page naming more persons than this is refused (fail closed:
# it would otherwise be served with persons missing from their trackers).
MAX_ANSWER_SUBJECTS = 1000
_KINDS = ("path", "query", "header", "body")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_JSON_STEP = re.compile(r"([A-Za-z0-9_\-]{1,64})?(\[\*\])?")


class SubjectError(HubError, ValueError):
    """An answer the node cannot read for the persons it names."""


@dataclass(frozen=True, slots=True)
class Locator:
    kind: str
    name: str  # path: 1-based segment number; query/header: the name

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class AnswerLocator:
    kind: str  # "json" or "xml"
    # json: steps, each a member name or "*" (every element of an array); xml: (localname,)
    steps: tuple[str, ...]

    def __str__(self) -> str:
        if self.kind == "xml":
            return f"xml:{self.steps[0]}"
        text = ""
        for step in self.steps:
            text += "[*]" if step == "*" else ("." if text else "") + step
        return f"json:{text}"


def parse_locator(text: str) -> Locator:
    kind, sep, name = text.partition(":")
    if not sep or kind not in _KINDS or not _NAME.fullmatch(name):
        raise ValueError(
            f"subject locator {text!r} must be path:N, query:NAME, header:NAME or body:NAME"
        )
    if kind == "path" and not (name.isdigit() and int(name) >= 1):
        raise ValueError(f"subject locator {text!r}: path segments are numbered from 1")
    return Locator(kind, name)


def parse_answer_locator(text: str) -> AnswerLocator:
    kind, sep, rest = text.partition(":")
    usage = (
        f"answer subject locator {text!r} must be json:PATH (e.g. json:records[*].citizen_id)"
        " or xml:ELEMENT (e.g. xml:citizenId)"
    )
    if not sep or kind not in ("json", "xml") or not rest:
        raise ValueError(usage)
    if kind == "xml":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}", rest):
            raise ValueError(usage)
        return AnswerLocator("xml", (rest,))
    steps: list[str] = []
    for part in rest.split("."):
        m = _JSON_STEP.fullmatch(part)
        if not part or m is None or (m.group(1) is None and steps and steps[-1] != "*"):
            raise ValueError(usage)
        if m.group(1):
            steps.append(m.group(1))
        if m.group(2):
            steps.append("*")
    if not steps or steps[-1] == "*":
        raise ValueError(f"{usage}; the path must end at a member name")
    return AnswerLocator("json", tuple(steps))


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
            # Servlet containers read "1101700203450;x=1" as "1101700203450": both readings.
            values += [v.split(";", 1)[0] for v in values if ";" in v]
        elif loc.kind == "query":
            values = [v for k, v in pairs if _query_key(k) == _query_key(loc.name)]
        elif loc.kind == "body":
            values = list((body_fields or {}).get(loc.name, []))
        else:
            values = [v for k, v in header_list if _header_key(k) == _header_key(loc.name)]
        found.update(v for v in map(_normalised, values) if v)
    return tuple(sorted(found))


_BRACKETS = re.compile(r"(?:\[[^\]]*\])+$")


def _query_key(name: str) -> str:
    """A query parameter's name as the most lenient server reads it, so that no spelling a
    service takes for the subject's parameter escapes the node: ASP.NET matches names
    case-insensitively, PHP turns '.' and ' ' into '_', and PHP, Rails and Express (qs) read
    ``cid[]=X``, ``cid[0]=X`` and ``cid[a]=X`` as ``cid``. Reading more names as the
    subject's only records more; reading fewer would hide a read from the citizen."""
    name = _BRACKETS.sub("", name.strip(" \t\x00")) or name
    return name.lower().replace(".", "_").replace(" ", "_")


def _header_key(name: str) -> str:
    # CGI and WSGI servers read X_Subject as X-Subject (both HTTP_X_SUBJECT).
    return name.lower().replace("_", "-")


def json_body_fields(doc: Any) -> dict[str, list[str]]:
    """Named scalar values of a JSON document, at any depth, for ``body:NAME`` locators."""
    fields: dict[str, list[str]] = {}
    for key, value in walk_json(doc):
        text = scalar_text(value)
        if text is not None:
            fields.setdefault(key, []).append(text)
    return fields


def answer_subjects(
    locators: Iterable[AnswerLocator], content_type: str, body: bytes, *, strict: bool
) -> tuple[str, ...]:
    """The persons an answer names where the registration says they are (sorted, unique).

    ``strict`` (a successful answer): an answer the locators cannot read raises SubjectError
    rather than being served with its persons unrecorded. Otherwise (an error answer) what
    cannot be read names nobody."""
    locs = tuple(locators)
    if not locs or not body.strip():
        return ()
    try:
        if is_json_media(content_type) or (
            not _is_xml_media(content_type) and body.lstrip()[:1] in (b"{", b"[")
        ):
            values = _from_json(locs, loads_json(body))
        elif _is_xml_media(content_type) and any(loc.kind == "xml" for loc in locs):
            values = _from_xml(locs, content_type, body)
        else:
            raise SubjectError(
                f"the answer ({content_type or 'no content type'}) is not in a form its"
                f" answer_subject locators read ({', '.join(map(str, locs))})"
            )
    except (JsonBodyError, SubjectError) as exc:
        if strict:
            raise SubjectError(f"the service's answer cannot be read for the persons it names: "
                               f"{exc}") from exc  # fmt: skip
        return ()
    found: set[str] = set()
    for value in values:
        text = _normalised(value)
        if text:
            found.add(text)
            if len(found) > MAX_ANSWER_SUBJECTS:
                raise SubjectError(
                    f"the answer names more than {MAX_ANSWER_SUBJECTS} persons; ask for a "
                    "smaller page"
                )
    return tuple(sorted(found))


_FORM = "application/x-www-form-urlencoded"


def signed_request_values(meta: Mapping[str, Any], body: bytes | None) -> set[str]:
    """Every value a request locator of any registration could take from this signed
    request (its metadata, and its body unless purged), read and normalised as the provider's
    node reads them: what a subject the node logged must be one of, whatever its locators.
    Locators are the provider node's configuration, not signed; this needs none of them."""
    headers = [(str(k), str(v)) for k, v in meta.get("headers") or [] if isinstance(v, str)]
    path, query = str(meta.get("path") or ""), str(meta.get("query") or "")
    values = [unquote(seg) for seg in path.split("/")[1:]] if path else []
    values += [v.split(";", 1)[0] for v in values if ";" in v]
    values += [v for _, v in parse_qsl(query)] if query else []
    values += [v for _, v in headers]
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    if body is not None and body.strip():
        try:
            if meta.get("protocol") == "soap":
                message = parse_soap(content_type, body, kind="request")
                values += [el.text for el in message.body_element.iter()
                           if isinstance(el.tag, str) and len(el) == 0 and el.text]  # fmt: skip
            elif content_type.split(";", 1)[0].strip().lower() == _FORM:
                values += [v for _, v in parse_qsl(body.decode("utf-8"), errors="strict")]
            else:
                values += [v for vs in json_body_fields(loads_json(body)).values() for v in vs]
        except (SoapError, JsonBodyError, UnicodeDecodeError):
            pass  # a body the node could not read gave it no subject either
    return {n for n in map(_normalised, values) if n}


def signed_answer_values(content_type: str, body: bytes) -> set[str]:
    """Every value an answer locator of any registration could take from this answer."""
    values: list[str] = []
    try:
        if is_json_media(content_type) or (
            not _is_xml_media(content_type) and body.lstrip()[:1] in (b"{", b"[")
        ):
            values = [t for _, v in walk_json(loads_json(body)) if (t := scalar_text(v))]
        elif _is_xml_media(content_type):
            message = parse_soap(content_type, body, kind="response")
            values = [el.text or "" for el in message.body_element.iter()
                      if isinstance(el.tag, str) and len(el) == 0]  # fmt: skip
    except (SoapError, JsonBodyError):
        pass
    return {n for n in map(_normalised, values) if n}


def _is_xml_media(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("text/xml", "application/xml", "multipart/related") or media.endswith("+xml")


def _from_json(locs: tuple[AnswerLocator, ...], doc: Any) -> list[str]:
    out: list[str] = []
    for loc in locs:
        if loc.kind == "xml":
            out += [t for k, v in walk_json(doc) if k == loc.steps[0]
                    if (t := scalar_text(v)) is not None]  # fmt: skip
            continue
        current = [doc]
        for step in loc.steps:
            nxt: list[Any] = []
            for value in current:
                if step == "*" and isinstance(value, list):
                    nxt.extend(value)
                elif isinstance(value, dict) and step in value:
                    nxt.append(value[step])
            current = nxt
        for value in current:
            # A located member holding an array of ids names each of them.
            for item in value if isinstance(value, list) else [value]:
                text = scalar_text(item)
                if text is not None:
                    out.append(text)
    return out


def _from_xml(locs: tuple[AnswerLocator, ...], content_type: str, body: bytes) -> list[str]:
    try:
        message = parse_soap(content_type, body, kind="response")
    except SoapError as exc:
        raise SubjectError(f"not a SOAP answer: {exc.message}") from exc
    names = {loc.steps[0] for loc in locs if loc.kind == "xml"}
    out: list[str] = []
    for el in message.body_element.iter():
        if isinstance(el.tag, str) and etree.QName(el).localname in names and len(el) == 0:
            out.append(el.text or "")
    return out


_ID_LIKE = re.compile(r"\+?[0-9][0-9\- ]*[0-9]")


def _normalised(value: str) -> str:
    """The subject as the registries read it: padding (spaces, NUL) around it and the dashes
    people write into Thai ids (1-1017-00203-45-0) do not make it another person; neither do
    digits of another script (full-width, Thai) or a leading '+' or zeros, which a service
    parsing the id as a number reads as the same number. Values that are not printable are
    kept escaped, so an odd request is still on record."""
    value = value.strip(" \t\r\n\x00")
    if any(c.isdecimal() and not c.isascii() for c in value):
        value = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in value)
        value = unicodedata.normalize("NFKC", value)
    if _ID_LIKE.fullmatch(value):
        digits = value.lstrip("+").replace("-", "").replace(" ", "")
        if len(digits) > 13 and digits[: len(digits) - 13].strip("0") == "":
            digits = digits[-13:]
        if len(digits) == 13:
            value = digits
    if not value.isprintable():
        value = value.encode("unicode_escape").decode("ascii")
    return value[:_MAX_SUBJECT]


# --- registration: the service's own description names its person ids ---------------------

_PERSON_ID_NAME = re.compile(r"(?:.*_)?citizen_?ids?|.*citizenids?", re.IGNORECASE)
_PERSON_ID_FORMATS = frozenset(("citizen-id", "thai-citizen-id", "person-id"))


def is_person_id_name(name: str) -> bool:
    """Names that say "a citizen's id": citizen_id, owner_citizen_id, citizenId,
    ownerCitizenIds..."""
    return bool(_PERSON_ID_NAME.fullmatch(name))


def openapi_person_fields(document: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """JSON paths (steps, "*" for array elements) of the person ids in an OpenAPI 3
    document's successful JSON answers: properties named as citizen ids, or declared
    ``format: citizen-id`` or ``x-person-id: true``. Local $refs are followed."""
    found: set[tuple[str, ...]] = set()
    for item in (document.get("paths") or {}).values():
        for operation in (item or {}).values() if isinstance(item, dict) else ():
            if not isinstance(operation, dict):
                continue
            for code, response in (operation.get("responses") or {}).items():
                if not str(code).startswith("2") or not isinstance(response, dict):
                    continue
                response = _deref(document, response)
                for media, content in (response.get("content") or {}).items():
                    if is_json_media(media) and isinstance(content, dict):
                        _schema_fields(document, content.get("schema"), (), found, 0)
    return sorted(found)


def _deref(document: Mapping[str, Any], node: Any) -> Any:
    for _ in range(32):
        ref = node.get("$ref") if isinstance(node, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return node
        target: Any = document
        for part in ref[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            target = target.get(key) if isinstance(target, dict) else None
        node = target
    return node


def _schema_fields(
    document: Mapping[str, Any],
    schema: Any,
    path: tuple[str, ...],
    found: set[tuple[str, ...]],
    depth: int,
) -> None:
    schema = _deref(document, schema)
    if not isinstance(schema, dict) or depth > 32:
        return
    for combined in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(combined) or ():
            _schema_fields(document, sub, path, found, depth + 1)
    if "items" in schema:
        _schema_fields(document, schema["items"], (*path, "*"), found, depth + 1)
    for name, prop in (schema.get("properties") or {}).items():
        prop = _deref(document, prop)
        declared = isinstance(prop, dict) and (
            prop.get("format") in _PERSON_ID_FORMATS or prop.get("x-person-id") is True
        )
        if declared or is_person_id_name(name):
            found.add((*path, name))
        # An array of ids is named by its member too (citizenIds: [...]).
        _schema_fields(document, prop, (*path, name), found, depth + 1)


def uncovered_person_fields(
    locators: Iterable[AnswerLocator], fields: Iterable[tuple[str, ...]]
) -> list[str]:
    """The declared person-id fields (JSON paths) that no answer locator reads."""
    locs = tuple(locators)
    xml_names = {loc.steps[0] for loc in locs if loc.kind == "xml"}
    json_paths = {loc.steps for loc in locs if loc.kind == "json"}
    out = []
    for steps in fields:
        if steps in json_paths or steps[-1] in xml_names:
            continue
        if steps[-1] == "*" and (steps[:-1] in json_paths or steps[-2] in xml_names):
            continue
        out.append(str(AnswerLocator("json", steps[:-1] if steps[-1] == "*" else steps)))
    return out
