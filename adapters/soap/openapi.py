"""OpenAPI 3.0 description of the REST view of a bridged SOAP service.

Each operation is one X-Road service code, so each is one path ``/{operation}`` below the
provider subsystem's r1 prefix (the ``servers`` URL): POST with a JSON body, and GET with
query parameters when every request field is simple. Schemas come from the WSDL's own XML
Schema (see jsonmap.py for the mapping), so the description and the adapter's behaviour
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import zeep
from zeep.exceptions import Error as ZeepError

from .jsonmap import element_schema, query_parameters, takes_query
from .wsdl import WsdlError, WsdlInfo

__all__ = ["openapi_for"]

_ERROR = {
    "type": "object",
    "description": "the service refused the request (it does not fit the operation's schema)",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_FAULT = {
    "type": "object",
    "description": "a SOAP Fault of the service, passed on",
    "properties": {
        "faultcode": {"type": "string"},
        "faultstring": {"type": "string"},
        "faultdetail": {
            "type": "string",
            "nullable": True,
            "description": "the Fault's detail: its XML content as text, or its text",
        },
    },
    "required": ["faultcode", "faultstring", "faultdetail"],
}
_XROAD_ERROR = {
    "type": "object",
    "description": "an X-Road error (header X-Road-Error), e.g. Server.ServerProxy.ServiceFailed",
    "properties": {
        "type": {"type": "string"},
        "message": {"type": "string"},
        "detail": {"type": "string"},
    },
}


def openapi_for(
    info: WsdlInfo,
    client: zeep.Client,
    *,
    title: str | None = None,
    version: str = "1.0",
    server_url: str | None = None,
    operations: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.0 document (a JSON-ready dict). ``client``: the zeep client built from
    the WSDL (``zeep_client``); ``operations``: only these (e.g. one service code)."""
    names = list(info.operations) if operations is None else list(operations)
    paths: dict[str, Any] = {}
    for name in names:
        op = info.operation(name)
        try:
            request = client.get_element(op.input_element.text)
            response = client.get_element(op.output_element.text)
        except ZeepError as exc:
            raise WsdlError(f"{info.source}: operation {name}: {exc}") from exc
        responses = {
            "200": _content("the service's answer", element_schema(response, "response")),
            "400": _content("refused by the service", {"$ref": "#/components/schemas/Error"}),
            "500": _content(
                "a SOAP Fault of the service, or an X-Road error",
                {
                    "oneOf": [
                        {"$ref": "#/components/schemas/SoapFault"},
                        {"$ref": "#/components/schemas/XRoadError"},
                    ]
                },
            ),
        }
        common: dict[str, Any] = {"tags": [info.service_name or info.port_type]}
        if op.title:
            common["summary"] = op.title
        description = "\n\n".join(t for t in (op.notes, op.tech_notes) if t)
        if description:
            common["description"] = description
        if op.version:
            common["x-xroad-service-version"] = op.version
        item: dict[str, Any] = {
            "post": {
                "operationId": name,
                **common,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": element_schema(request, "request")}},
                },
                "responses": responses,
            }
        }
        if takes_query(request):
            item["get"] = {
                "operationId": f"{name}Get",
                **common,
                "parameters": query_parameters(request),
                "responses": responses,
            }
        paths[f"/{name}"] = item
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": title or info.service_name or info.port_type,
            "version": version,
            "description": (
                f"REST view of the SOAP service {info.service_name or info.port_type} "
                f"(WSDL target namespace {info.target_namespace}). Decimals are answered as "
                "strings; dates and times are ISO 8601 strings."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR, "SoapFault": _FAULT, "XRoadError": _XROAD_ERROR}
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


def _content(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
