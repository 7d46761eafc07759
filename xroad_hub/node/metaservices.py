"""Service metadata answered by the provider's node itself, as X-Road clients expect.

REST (r1):  GET .../{SUBSYSTEM}/listMethods, .../allowedMethods, .../getOpenAPI?serviceCode=X
SOAP 4.0:   listMethods, allowedMethods, getWsdl(serviceCode, serviceVersion?)
xroad-hub:  GET .../{SUBSYSTEM}/getWsdl?serviceCode=X[&version=V] answers the WSDL itself;
            the client node's ``GET /wsdl?...`` uses it.

They travel as ordinary signed, logged exchanges; only the answer is made by the node, from
the services it hosts. Any client of the federation may ask for them (as in X-Road), but
allowedMethods only lists what the asking client may call. A service registered under one of
these codes takes precedence over the metaservice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

import orjson
from lxml import etree

from adapters import AdapterResponse
from xroad_hub.errors import XRoadError
from xroad_hub.node.runtime import HostedService
from xroad_hub.protocol.access import may_call
from xroad_hub.protocol.identifiers import ClientId, ServiceId, SubsystemId
from xroad_hub.protocol.soap import (
    ID_NS,
    XRD_NS,
    SoapMessage,
    build_response,
    identifier_element,
)
from xroad_hub.protocol.xmlsafe import XmlError, parse_xml

__all__ = [
    "METASERVICES",
    "answer_metaservice",
    "client_json",
    "client_list_xml",
    "point_wsdl_at",
]

METASERVICES = frozenset({"listMethods", "allowedMethods", "getOpenAPI", "getWsdl"})
_JSON = (("Content-Type", "application/json"),)
_XML = (("Content-Type", "text/xml; charset=utf-8"),)


def answer_metaservice(
    services: Iterable[HostedService],
    client: ClientId,
    service: ServiceId,
    query: str,
    soap: SoapMessage | None,
    groups: Mapping[str, frozenset[ClientId]] | None = None,
) -> AdapterResponse:
    """The answer to a metaservice request addressed to ``service.provider`` (``groups``:
    the global groups of the configuration in force, for allowedMethods)."""
    mine = sorted(
        (h for h in services if h.config.id.provider == service.provider),
        key=lambda h: h.config.id.service_code,
    )
    code = service.service_code
    if code in ("listMethods", "allowedMethods"):
        if soap is not None:
            # As in X-Road: SOAP clients are told of the services described by a WSDL.
            mine = [h for h in mine if h.wsdl is not None]
        if code == "allowedMethods":
            mine = [h for h in mine if may_call(h.config, client, groups) and not h.config.disabled]
        return _list(code, mine, soap)
    if code == "getWsdl":
        wanted, version = _wanted(query, soap)
        return _wsdl(_find(mine, wanted, version), soap)
    if code == "getOpenAPI" and soap is None:
        wanted, version = _wanted(query, None)
        hosted = _find(mine, wanted, version)
        document = hosted.openapi
        if not document:
            raise XRoadError.server_proxy(
                "UnknownService", f"{hosted.config.id} has no OpenAPI description registered"
            )
        return AdapterResponse(200, _JSON, orjson.dumps(document))
    raise XRoadError.server_proxy("UnknownService", f"unknown service {service}")


def _versioned(h: HostedService) -> ServiceId:
    return ServiceId(h.config.id.provider, h.config.id.service_code, h.config.version)


def _service_type(h: HostedService) -> str:
    return "WSDL" if h.config.adapter == "soap" else "REST"


def _list(code: str, hosted: list[HostedService], soap: SoapMessage | None) -> AdapterResponse:
    if soap is None:
        entries: list[dict[str, Any]] = []
        for h in hosted:
            sid = _versioned(h)
            p = sid.provider
            entry = {
                "object_type": "SERVICE",
                "xroad_instance": p.instance,
                "member_class": p.member_class,
                "member_code": p.member_code,
                "subsystem_code": getattr(p, "subsystem_code", None),
                "service_code": sid.service_code,
                "service_type": _service_type(h),
            }
            if sid.service_version:
                entry["service_version"] = sid.service_version
            entries.append(entry)
        return AdapterResponse(200, _JSON, orjson.dumps({"service": entries}))
    wrapper = etree.Element(f"{{{XRD_NS}}}{code}Response", nsmap={"xrd": XRD_NS})
    for h in hosted:
        wrapper.append(identifier_element("service", _versioned(h)))
    return AdapterResponse(200, _XML, build_response(soap, wrapper))


def _wanted(query: str, soap: SoapMessage | None) -> tuple[str, str | None]:
    if soap is not None:
        el = soap.body_element
        code = (el.findtext(f"{{{XRD_NS}}}serviceCode") or "").strip()
        version = (el.findtext(f"{{{XRD_NS}}}serviceVersion") or "").strip() or None
    else:
        q = parse_qs(query)
        code = (q.get("serviceCode") or [""])[0]
        version = (q.get("version") or q.get("serviceVersion") or [None])[0]
    if not code:
        raise XRoadError.client("InvalidRequest", "serviceCode is required")
    return code, version


def _find(hosted: list[HostedService], code: str, version: str | None) -> HostedService:
    for h in hosted:
        if h.config.id.service_code == code and version in (None, h.config.version):
            return h
    raise XRoadError.server_proxy(
        "UnknownService", f"no service {code}{'/' + version if version else ''} here"
    )


def _wsdl(hosted: HostedService, soap: SoapMessage | None) -> AdapterResponse:
    document = hosted.wsdl
    if document is None:
        raise XRoadError.server_proxy(
            "UnknownService", f"{hosted.config.id} is a REST service and has no WSDL"
        )
    if soap is None:
        return AdapterResponse(200, _XML, document)
    # SOAP getWsdl: the answer names the service, the WSDL travels as an attachment.
    wrapper = etree.Element(f"{{{XRD_NS}}}getWsdlResponse", nsmap={"xrd": XRD_NS})
    etree.SubElement(wrapper, f"{{{XRD_NS}}}serviceCode").text = hosted.config.id.service_code
    if hosted.config.version:
        etree.SubElement(wrapper, f"{{{XRD_NS}}}serviceVersion").text = hosted.config.version
    boundary = "xroad-hub-wsdl-" + hosted.config.id.service_code
    soap_part = build_response(soap, wrapper)
    body = b"".join(
        (
            f"--{boundary}\r\nContent-Type: text/xml; charset=UTF-8\r\n"
            "Content-ID: <soap-part>\r\n\r\n".encode(),
            soap_part,
            f"\r\n--{boundary}\r\nContent-Type: text/xml; charset=UTF-8\r\n"
            "Content-ID: <wsdl>\r\n\r\n".encode(),
            document,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    content_type = f'multipart/related; type="text/xml"; start="<soap-part>"; boundary="{boundary}"'
    return AdapterResponse(200, (("Content-Type", content_type),), body)


def client_json(client: ClientId, name: str) -> dict[str, Any]:
    ident: dict[str, Any] = {
        "object_type": client.object_type,
        "xroad_instance": client.instance,
        "member_class": client.member_class,
        "member_code": client.member_code,
    }
    if isinstance(client, SubsystemId):
        ident["subsystem_code"] = client.subsystem_code
    return {"id": ident, "name": name}


def client_list_xml(clients: list[ClientId], names: dict[ClientId, str]) -> bytes:
    root = etree.Element(f"{{{XRD_NS}}}clientList", nsmap={"xrd": XRD_NS, "id": ID_NS})
    for client in clients:
        member = etree.SubElement(root, f"{{{XRD_NS}}}member")
        member.append(identifier_element("id", client))
        etree.SubElement(member, f"{{{XRD_NS}}}name").text = names.get(client, "")
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True)


_WSDL_SOAP_NS = "http://schemas.xmlsoap.org/wsdl/soap/"


def point_wsdl_at(document: bytes, location: str) -> bytes:
    """The WSDL with every SOAP address set to ``location`` (the client's own node)."""
    try:
        root = parse_xml(document)
    except XmlError as exc:
        raise XRoadError.client_proxy("InvalidWsdl", f"the provider's WSDL: {exc}") from exc
    for address in root.iter(f"{{{_WSDL_SOAP_NS}}}address"):
        address.set("location", location)
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True)
