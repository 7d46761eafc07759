"""The OpenAPI 3 description of a flat-file service, generated from its layout: what
``getOpenAPI`` serves for a legacy export (api.py is the interface it describes).

Person ids are declared ``format: citizen-id``, so that the node's check of a registration's
answer subjects (every person an answer names must be located) reads them from here too.
"""

from __future__ import annotations

from typing import Any

from .settings import FlatFileSettings

__all__ = ["flatfile_openapi"]

_SCHEMAS: dict[str, dict[str, Any]] = {
    "text": {"type": "string"},
    "integer": {"type": "integer"},
    # Answered as strings ("-1234.50"): JSON numbers would lose digits in some readers.
    "decimal": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"},
    "zoned": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"},
    "date": {"type": "string", "format": "date"},
    "citizen_id": {"type": "string", "format": "citizen-id", "pattern": "^[0-9]{13}$"},
    "juristic_id": {"type": "string", "pattern": "^[0-9]{13}$"},
    "boolean": {"type": "boolean"},
}


def flatfile_openapi(settings: FlatFileSettings, *, title: str, version: str) -> dict[str, Any]:
    layout = settings.layout
    record: dict[str, Any] = {"type": "object"}
    published = [f for f in layout.fields if f.publish]
    if published:
        record["properties"] = {
            f.name: {**_SCHEMAS.get(f.type, {"type": "string"}), "nullable": not f.required}
            for f in published
        }
    else:  # columns named by the export's own header, known once it has loaded
        record["additionalProperties"] = True
    version_schema = {"type": "object", "additionalProperties": True}
    records = {
        "type": "object",
        "required": ["data_version", "records", "page"],
        "properties": {
            "data_version": version_schema,
            "records": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
            "page": {"type": "object", "additionalProperties": True},
        },
    }
    error = {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    }

    def answers(ok: str) -> dict[str, Any]:
        return {
            "200": {"description": ok, "content": _json("#/components/schemas/Records")},
            "400": {
                "description": "a field unknown or not indexed, or a bad value",
                "content": _json("#/components/schemas/Error"),
            },
            "404": {
                "description": "no record matches",
                "content": _json("#/components/schemas/Error"),
            },
            "503": {
                "description": "no valid export loaded yet",
                "content": _json("#/components/schemas/Error"),
            },
        }

    keys = list(settings.keys)
    paging = [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_page_size},
        },
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    ]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": version,
            "description": settings.description or layout.description or layout.name,
        },
        "paths": {
            f"/records/{{{keys[0]}}}": {
                "get": {
                    "operationId": "getRecords",
                    "summary": f"records whose {keys[0]} equals the value",
                    "parameters": [
                        {
                            "name": keys[0],
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        *paging,
                    ],
                    "responses": answers("the matching records"),
                }
            },
            "/records": {
                "get": {
                    "operationId": "findRecords",
                    "summary": "records matching every indexed field given",
                    "parameters": [
                        *({"name": k, "in": "query", "schema": {"type": "string"}} for k in keys),
                        *paging,
                    ],
                    "responses": answers("the matching records"),
                }
            },
            "/": {
                "get": {
                    "operationId": "describe",
                    "summary": "the fields, keys and data version the service publishes",
                    "responses": {
                        "200": {"description": "the description", "content": _json(None)}
                    },
                }
            },
        },
        "components": {"schemas": {"Record": record, "Records": records, "Error": error}},
    }


def _json(ref: str | None) -> dict[str, Any]:
    schema = {"$ref": ref} if ref else {"type": "object", "additionalProperties": True}
    return {"application/json": {"schema": schema}}
