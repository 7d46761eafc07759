"""The REST interface of a published export, sans-I/O: ``AdapterRequest`` in, answer out.

Paths are the remainder after the service code (``/r1/{service}`` + path):

    GET /                       what the service publishes: fields, types, indexed fields
    GET /records/{key}          records whose first key field equals {key}
    GET /records?f=v[&g=w]      records matching every indexed field given (AND)
                                &limit=N (default 20) &offset=M for paging
    GET /_report                broken records of the version in service, and why the
                                last rejected file was refused

Answers are JSON and always name the data version they came from. Refusals are this
service's own answers (HTTP 4xx/503 with ``{"error": code, "message": ...}``): 400 for a
field that is unknown or not indexed, an invalid value or paging, 404 when nothing matches
or the path is unknown, 405 for methods other than GET, 503 before any valid export loaded.

Request values are only ever compared with index keys: nothing in a request names a file,
reaches a shell or a query language, and a path is matched, never resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from adapters.base import AdapterRequest, AdapterResponse

from .dataset import Dataset
from .errors import QueryError

__all__ = ["ServiceView", "answer"]

_JSON = (("Content-Type", "application/json; charset=utf-8"), ("Cache-Control", "no-store"))
_PAGING = ("limit", "offset")


@dataclass(frozen=True, slots=True)
class ServiceView:
    """What the interface needs besides the data: the service's own settings and state."""

    keys: tuple[str, ...]
    page_size: int = 20
    max_page_size: int = 100
    max_candidates: int = 10_000
    name: str = ""
    description: str = ""


def _response(
    status: int, body: dict[str, Any], extra: tuple[tuple[str, str], ...] = ()
) -> AdapterResponse:
    return AdapterResponse(status, _JSON + extra, orjson.dumps(body))


def answer(
    request: AdapterRequest,
    dataset: Dataset | None,
    view: ServiceView,
    rejection: dict[str, Any] | None = None,
) -> AdapterResponse:
    """Answer one request from ``dataset`` (the version current when it arrived)."""
    try:
        return _answer(request, dataset, view, rejection)
    except QueryError as err:
        body: dict[str, Any] = {"error": err.code, "message": err.message, **err.extra}
        if dataset is not None:
            body["data_version"] = dataset.version.as_dict()
        extra = (("Allow", "GET"),) if err.status == 405 else ()
        return _response(err.status, body, extra)


def _answer(
    request: AdapterRequest,
    dataset: Dataset | None,
    view: ServiceView,
    rejection: dict[str, Any] | None,
) -> AdapterResponse:
    if request.method != "GET":
        raise QueryError(405, "method_not_allowed", "this service answers GET only")
    path = request.path
    if path not in ("", "/", "/records", "/_report") and not path.startswith("/records/"):
        raise QueryError(404, "no_such_resource", "see GET / for what this service offers")
    if dataset is None:
        body: dict[str, Any] = {
            "error": "no_data",
            "message": "no valid export has been loaded yet; try again later",
        }
        if rejection is not None:
            body["last_rejected"] = rejection
        return _response(503, body, (("Retry-After", "60"),))
    if path in ("", "/"):
        return _response(200, _describe(dataset, view))
    if path == "/_report":
        return _response(200, _report(dataset, rejection))
    params = _params(request.query)
    if path == "/records":
        criteria = {k: v for k, v in params.items() if k not in _PAGING}
        if not criteria:
            raise QueryError(
                400,
                "query_required",
                "name at least one indexed field, e.g. /records?"
                f"{view.keys[0]}=...; whole listings are not offered",
                indexed=list(view.keys),
            )
    else:
        segment = path[len("/records/") :]
        if not segment or "/" in segment:
            raise QueryError(404, "no_such_resource", "use /records/{key} with one key value")
        try:
            value = unquote(segment, errors="strict")
        except UnicodeDecodeError:
            raise QueryError(400, "bad_request", "the key is not valid UTF-8") from None
        unknown = [k for k in params if k not in _PAGING]
        if unknown:
            raise QueryError(400, "unknown_parameter", f"unknown parameter(s) {unknown}")
        criteria = {view.keys[0]: value}
    for name, value in criteria.items():
        f = dataset.fields.get(name)
        if f is None or (not f.publish and name not in dataset.indexes):
            raise QueryError(
                400,
                "unknown_field",
                f"{name!r} is not a field of this service",
                indexed=list(view.keys),
            )
        if name not in dataset.indexes:
            raise QueryError(
                400,
                "not_indexed",
                f"{name!r} is not indexed; queries may use only {list(view.keys)}",
                indexed=list(view.keys),
            )
        if not value.strip():
            raise QueryError(400, "invalid_value", f"{name}: empty value", field=name)
    limit = _int(params.get("limit"), view.page_size, 1, view.max_page_size, "limit")
    offset = _int(params.get("offset"), 0, 0, 10**12, "offset")
    page = dataset.query(criteria, offset, limit, view.max_candidates)
    nxt = offset + limit if offset + limit < page.total else None
    body = {
        "data_version": dataset.version.as_dict(),
        "records": page.records,
        "page": {
            "offset": offset,
            "limit": limit,
            "returned": len(page.records),
            "total": page.total,
            "next_offset": nxt,
        },
    }
    if page.total == 0:
        return _response(404, {"error": "not_found", "message": "no record matches", **body})
    return _response(200, body)


def _params(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            query, keep_blank_values=True, strict_parsing=bool(query), errors="strict"
        )
    except (ValueError, UnicodeDecodeError):
        raise QueryError(400, "bad_query", "the query string is malformed or not UTF-8") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise QueryError(400, "repeated_parameter", f"give {k!r} once")
        out[k] = v
    return out


def _int(text: str | None, default: int, low: int, high: int, name: str) -> int:
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise QueryError(400, "bad_paging", f"{name} must be an integer from {low} to {high}")
    return int(text)


def _describe(dataset: Dataset, view: ServiceView) -> dict[str, Any]:
    layout = dataset.layout
    return {
        "service": view.name or layout.name,
        "description": view.description or layout.description,
        "format": layout.format,
        "encoding": layout.encoding.name,
        "fields": [
            {"name": f.name, "type": f.type, "indexed": f.name in dataset.indexes}
            for f in layout.fields
            if f.publish
        ],
        "keys": list(view.keys),
        "paths": {
            "lookup": f"/records/{{{view.keys[0]}}}",
            "query": "/records?FIELD=VALUE[&FIELD=VALUE]&limit=N&offset=M",
            "report": "/_report",
        },
        "page_size": {"default": view.page_size, "max": view.max_page_size},
        "data_version": dataset.version.as_dict(),
    }


def _report(dataset: Dataset, rejection: dict[str, Any] | None) -> dict[str, Any]:
    result = dataset.result
    return {
        "data_version": dataset.version.as_dict(),
        "records": result.records,
        "deleted": result.deleted,
        "broken": {
            "count": result.broken_count,
            "entries": [b.as_dict() for b in result.broken],
            "truncated": result.broken_count > len(result.broken),
        },
        "last_rejected": rejection,
    }
