"""SOAP bridge: a legacy SOAP 1.1 service that knows nothing of X-Road, served as one X-Road
service per WSDL operation, to REST (r1) and to X-Road SOAP clients.

REST clients send JSON (a POST body, or a query string when every request field is simple);
the operation's request wrapper is serialised by zeep from the WSDL's own schema, so nothing
is written per service. The answer is read against the same schema and returned as JSON
(mapping in jsonmap.py; answers.py reads the common shapes without zeep's object model).

X-Road SOAP clients already speak SOAP: their body element goes to the legacy service as is,
without the X-Road header (which the legacy service does not understand), and the answer's
body comes back under the request's echoed X-Road header.

Who answers what:

- the request does not fit the operation's schema: 400 ``{"error": ...}`` from the adapter.
  It is the service that refuses (X-Road error category 1, no X-Road-Error header): the
  client's node checked the protocol, the schema belongs to the service.
- a SOAP Fault from the legacy service is its own answer, passed on: 500 with
  ``{"faultcode", "faultstring", "faultdetail"}`` for REST, the Fault itself for SOAP.
- no usable answer (unreachable, timeout, redirect, too large, not SOAP, not the operation's
  response): ``Server.ServerProxy.ServiceFailed``; the details stay in this node's log.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import structlog
import zeep
from lxml import etree
from yarl import URL
from zeep.exceptions import Error as ZeepError

from xroad_hub.errors import XRoadError
from xroad_hub.logs import loggable_error
from xroad_hub.protocol.jsonbody import json_charset_error
from xroad_hub.protocol.soap import NSMAP as ENVELOPE_NSMAP
from xroad_hub.protocol.soap import SoapMessage, build_response
from xroad_hub.protocol.xmlsafe import XmlError, XmlLimits, parse_xml

from ..backend import Backends
from ..base import AdapterRequest, AdapterResponse
from ..http import UpstreamError, basic_auth, post, target_of
from .answers import ResponseCodec
from .jsonmap import InputError, RequestCodec
from .wsdl import WsdlError, WsdlInfo, WsdlOperation, zeep_client

__all__ = ["MAX_LEGACY_RESPONSE", "SoapBridgeAdapter"]

log = structlog.get_logger("xroad_hub.adapters.soap")

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
FAULT = f"{{{SOAP_ENV}}}Fault"
MAX_LEGACY_RESPONSE = 10 * 1024 * 1024
JSON_TYPE = "application/json; charset=utf-8"
XML_TYPE = "text/xml; charset=utf-8"


class SoapBridgeAdapter:
    """One operation of a legacy SOAP service, as one X-Road service code."""

    def __init__(
        self,
        info: WsdlInfo,
        wsdl: bytes | zeep.Client,
        *,
        operation: str,
        endpoint_url: str | None = None,
        timeout: float = 30.0,
        max_response_bytes: int = MAX_LEGACY_RESPONSE,
        backends: Backends | None = None,
    ) -> None:
        """Registration-time checks raise WsdlError (unknown operation, schema zeep cannot
        use) or ValueError (no usable endpoint URL). Share ``wsdl`` as a zeep.Client (see
        ``zeep_client``) between the adapters of one WSDL to parse it once. ``backends``: the
        node's pools (the node closes them), otherwise the adapter's own (``close``)."""
        self.info = info
        self.operation: WsdlOperation = info.operation(operation)
        self.client = wsdl if isinstance(wsdl, zeep.Client) else zeep_client(wsdl, info.source)
        endpoint = endpoint_url or info.endpoint
        if not endpoint:
            raise ValueError(f"{info.source}: the WSDL has no soap:address; give an endpoint URL")
        self._url = URL(endpoint)
        if self._url.scheme not in ("http", "https") or not self._url.host:
            raise ValueError(f"legacy SOAP endpoint must be an http(s) URL: {endpoint}")
        try:
            self._request_element = self.client.get_element(self.operation.input_element.text)
            self._response_element = self.client.get_element(self.operation.output_element.text)
        except ZeepError as exc:
            raise WsdlError(f"{info.source}: operation {operation}: {exc}") from exc
        self.codec = RequestCodec(self._request_element)
        self.answers = ResponseCodec(self._response_element, self.client.wsdl.types)
        self._timeout = timeout
        self._connect_timeout = min(timeout, 10.0)
        self._max = max_response_bytes
        self._limits = XmlLimits(max_bytes=max_response_bytes, max_text=max_response_bytes)
        self._own = backends is None
        self._backends = Backends(limit=64) if backends is None else backends
        self._pool = self._backends.pool(self._url)
        self._target = target_of(self._url)
        # What aiohttp sent besides Host and Content-Length (its User-Agent left out): the
        # answer is decoded here, so compressed ones are welcome.
        self._headers: tuple[tuple[str, str], ...] = (
            ("Content-Type", XML_TYPE),
            ("SOAPAction", f'"{self.operation.soap_action}"'),
            ("Accept", "*/*"),
            ("Accept-Encoding", "gzip, deflate"),
        )
        if (auth := basic_auth(self._url)) is not None:
            self._headers += (auth,)

    # -- REST -------------------------------------------------------------------------------

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        if request.soap is not None:
            return await self._handle_soap(request.soap)
        if request.path not in ("", "/"):
            return _json(404, {"error": f"{self.operation.name} has no sub-resources"})
        try:
            if request.method == "GET" and self.codec.query_allowed:
                kwargs = self.codec.from_query(request.query)
            elif request.method == "POST":
                content_type = _header(request.headers, "content-type")
                media = content_type.split(";")[0].strip().lower()
                if media and media != "application/json" and not media.endswith("+json"):
                    return _json(415, {"error": "the request body must be application/json"})
                if why := json_charset_error(content_type):
                    return _json(415, {"error": why})
                if request.query:
                    raise InputError("POST takes its input as a JSON body, not a query string")
                kwargs = self.codec.from_json_body(request.body)
            else:
                allowed = "GET, POST" if self.codec.query_allowed else "POST"
                return _json(
                    405, {"error": f"method {request.method} not allowed"}, (("Allow", allowed),)
                )
            wrapper = self._render(kwargs)
        except InputError as exc:
            return _json(400, {"error": str(exc)})
        body_child = await self._call(wrapper)
        if body_child.tag == FAULT:
            return _json(500, _fault_json(body_child))
        try:
            result = self.answers.to_json(body_child)
        except (ZeepError, ValueError, TypeError, ArithmeticError) as exc:
            # ArithmeticError: zeep lets decimal's InvalidOperation (a decimal that is not a
            # number) through, which is no ValueError.
            raise self._failed("the service's answer does not match its WSDL", exc) from exc
        return _json(200, result)

    def _render(self, kwargs: dict[str, Any]) -> etree._Element:
        holder = etree.Element("holder")
        try:
            value = self._request_element(**kwargs)
            self._request_element.render(holder, value)
        except (ZeepError, TypeError, ValueError) as exc:
            # zeep's own checks (a missing required element, content JSON cannot name)
            raise InputError(f"the request does not fit {self.operation.name}: {exc}") from exc
        return holder[0]

    # -- SOAP -------------------------------------------------------------------------------

    async def _handle_soap(self, message: SoapMessage) -> AdapterResponse:
        if message.multipart:
            # The legacy service's WSDL describes no attachments; dropping them silently would
            # lose data the client meant to send.
            raise XRoadError.client(
                "InvalidSoap",
                f"{self.operation.name} is a bridged service and takes no attachments",
            )
        wrapper = message.body_element
        if wrapper.tag != self.operation.input_element.text:
            raise XRoadError.client(
                "InvalidBody",
                f"the request body must be {self.operation.input_element.text} "
                f"(the operation {self.operation.name} of the service's WSDL)",
            )
        body_child = await self._call(_detached(wrapper))
        status = 200
        if body_child.tag == FAULT:
            status = 500
            _faultcode_for(body_child, ENVELOPE_NSMAP)
        return AdapterResponse(
            status, (("Content-Type", XML_TYPE),), build_response(message, body_child)
        )

    # -- the legacy call --------------------------------------------------------------------

    async def _call(self, wrapper: etree._Element) -> etree._Element:
        """POST ``wrapper`` in a plain SOAP 1.1 envelope; the answer's body element (the
        response wrapper or a Fault), detached from the legacy envelope."""
        payload = _envelope(wrapper)
        status, content_type, body = await self._post(payload)
        if content_type.split(";")[0].strip().lower().startswith("multipart/"):
            raise self._failed("the service answered with attachments (not bridged)", None)
        try:
            root = parse_xml(body, self._limits)
        except XmlError as exc:
            raise self._failed(f"the service's answer (HTTP {status}) is not SOAP", exc) from exc
        child = _body_child(root)
        if child is None:
            raise self._failed(f"the service's answer (HTTP {status}) has no SOAP 1.1 Body", None)
        if child.tag == FAULT:
            return _detached(child)
        if status != 200:
            raise self._failed(f"the service answered HTTP {status} without a SOAP Fault", None)
        if child.tag != self.operation.output_element.text:
            raise self._failed(
                f"the service answered {etree.QName(child).localname}, not "
                f"{self.operation.output_element.localname}",
                None,
            )
        return _detached(child)

    async def _post(self, payload: bytes) -> tuple[int, str, bytes]:
        try:
            status, content_type, body = await post(
                self._pool,
                self._target,
                payload,
                self._headers,
                total=self._timeout,
                connect=self._connect_timeout,
                max_bytes=self._max,
            )
        except UpstreamError as exc:
            raise self._failed(exc.message, exc.cause) from exc
        return status, content_type or "", body

    def _failed(self, message: str, exc: BaseException | None) -> XRoadError:
        # The client learns what kind of failure it was; addresses and library messages stay
        # in this node's log under the id the client is given.
        err = XRoadError.server_proxy(
            "ServiceFailed", f"legacy SOAP service, operation {self.operation.name}: {message}"
        )
        log.warning(
            "adapter.soap.failed",
            detail=err.detail,
            operation=self.operation.name,
            endpoint=str(self._url),
            error=loggable_error(exc) if exc is not None else message,
        )
        return err

    async def close(self) -> None:
        if self._own:
            self._backends.close()


def _envelope(wrapper: etree._Element) -> bytes:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV})
    etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body").append(wrapper)
    return etree.tostring(envelope, encoding="UTF-8", xml_declaration=True)


def _detached(element: etree._Element) -> etree._Element:
    """A copy of ``element`` that itself declares every namespace in scope where it was:
    prefixes used only inside values (xsi:type="tns:Person", a faultcode "env:Client") must
    still resolve once the element sits in another envelope."""
    out = etree.Element(element.tag, attrib=dict(element.attrib), nsmap=element.nsmap)
    out.text = element.text
    for child in element:
        out.append(copy.deepcopy(child))
    return out


def _body_child(root: etree._Element) -> etree._Element | None:
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        return None
    body = root.find(f"{{{SOAP_ENV}}}Body")
    if body is None:
        return None
    return next((c for c in body if isinstance(c.tag, str)), None)


def _faultcode_for(fault: etree._Element, nsmap: dict[str, str]) -> None:
    """Re-prefix the faultcode QName for the envelope that build_response makes: lxml drops
    a declaration whose namespace an ancestor already declares and renames the elements
    that use it, but the faultcode text keeps the old prefix unless rewritten here."""
    code_el = fault.find("faultcode")
    if code_el is None or not code_el.text:
        return
    prefix, sep, local = code_el.text.strip().rpartition(":")
    namespace = code_el.nsmap.get(prefix) if sep else None
    for new_prefix, uri in nsmap.items():
        if namespace is not None and uri == namespace:
            code_el.text = f"{new_prefix}:{local}"
            return


def _fault_json(fault: etree._Element) -> dict[str, Any]:
    code_el = fault.find("faultcode")
    code = (code_el.text or "").strip() if code_el is not None else ""
    prefix, sep, local = code.rpartition(":")
    if sep and code_el is not None and code_el.nsmap.get(prefix or None) == SOAP_ENV:
        code = local  # Client, Server, ...: the prefix means nothing outside the XML
    detail = fault.find("detail")
    faultdetail: str | None = None
    if detail is not None:
        children = [c for c in detail if isinstance(c.tag, str)]
        if children:
            # Detail content is free XML; it is handed on as XML text, losslessly.
            parts = []
            for child in children:
                standalone = _detached(child)
                etree.cleanup_namespaces(standalone)
                parts.append(etree.tostring(standalone, encoding="unicode", with_tail=False))
            faultdetail = "".join(parts)
        else:
            faultdetail = (detail.text or "").strip() or None
    return {
        "faultcode": code,
        "faultstring": (fault.findtext("faultstring") or "").strip(),
        "faultdetail": faultdetail,
    }


def _json(
    status: int, data: dict[str, Any], extra: tuple[tuple[str, str], ...] = ()
) -> AdapterResponse:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return AdapterResponse(status, (("Content-Type", JSON_TYPE), *extra), body)


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str:
    value = ""
    for key, val in headers:
        if key.lower() == name:
            value = val
    return value
