"""A legacy SOAP 1.1 server (document/literal wrapped) from a WSDL and one function per
operation, on aiohttp and lxml: the demo's DOPA registry and the tests' legacy services.

It is what such services are in the field: a WSDL written once, requests validated against
the WSDL's own schema, answers written as XML, faults as SOAP 1.1 Faults (HTTP 500). It knows
nothing of X-Road. Clients (zeep, the hub's SOAP adapters) only see the WSDL and the wire.

    POST /        SOAP 1.1 requests (SOAPAction optional: the body's element names the
                  operation, as in every document/literal wrapped service)
    GET  /?wsdl   the WSDL; its soap:address is the address the request came to

Faults: ``Client.XmlSyntaxError`` (not a SOAP 1.1 envelope), ``Client.SchemaValidationError``
(the wrapper does not match the schema, or names no operation), and whatever the operation
raises as ``SoapFault``.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import decimal
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from aiohttp import web
from lxml import etree

from xroad_hub.protocol.xmlsafe import XmlError, XmlLimits, parse_xml

__all__ = ["Operation", "SoapFault", "SoapService", "element", "optional_text"]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
WSDL_SOAP11 = "http://schemas.xmlsoap.org/wsdl/soap/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
_CONTENT_TYPE = "text/xml; charset=utf-8"
_MEMORY = "memory:"  # schemaLocation of a schema of the WSDL itself, for lxml's resolver
log = structlog.get_logger("xroad_hub.demo.legacysoap")


class SoapFault(Exception):
    """An answer of the service that is a SOAP Fault (``Client.X`` or ``Server.X``)."""

    def __init__(self, code: str, message: str, detail: etree._Element | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


# An operation gets the request's wrapper element (valid against the schema) and returns the
# children of the response wrapper, ``<operation>Response``.
Operation = Callable[[etree._Element], Iterable[etree._Element | None]]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date | decimal.Decimal | int):
        return value.isoformat() if isinstance(value, datetime.date) else str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"no XML Schema form for {type(value).__name__}")


def element(namespace: str, name: str, *content: object) -> etree._Element:
    """``<tns:name>`` holding elements and text; None contents are left out."""
    node = etree.Element(f"{{{namespace}}}{name}", nsmap={"tns": namespace})
    for item in content:
        if item is None:
            continue
        if isinstance(item, etree._Element):
            node.append(item)
        else:
            node.text = (node.text or "") + _text(item)
    return node


def optional_text(parent: etree._Element, name: str) -> str | None:
    """The text of the child ``name`` (in the parent's namespace), None if absent or nil."""
    namespace = etree.QName(parent).namespace
    child = parent.find(f"{{{namespace}}}{name}" if namespace else name)
    if child is None or child.get(XSI_NIL) in ("true", "1"):
        return None
    return child.text or ""


def _schema(wsdl: etree._Element) -> etree.XMLSchema:
    """One XMLSchema from the WSDL's ``types``, the schemas importing each other by namespace
    (resolved in memory: nothing is fetched)."""
    schemas = wsdl.findall(f"{{{WSDL_NS}}}types/{{{XSD_NS}}}schema")
    if not schemas:
        raise ValueError("the WSDL has no schema in wsdl:types")
    documents: dict[str, bytes] = {}
    for schema in schemas:
        # A standalone copy keeps the prefixes the WSDL declared for QName values (type="tns:X").
        standalone = etree.Element(
            schema.tag, attrib=dict(schema.attrib), nsmap={**wsdl.nsmap, **schema.nsmap}
        )
        for child in schema:
            standalone.append(copy.deepcopy(child))
        for imported in standalone.findall(f"{{{XSD_NS}}}import"):
            if imported.get("schemaLocation") is None:
                imported.set("schemaLocation", _MEMORY + imported.get("namespace", ""))
        documents[_MEMORY + schema.get("targetNamespace", "")] = etree.tostring(standalone)

    class _InMemory(etree.Resolver):
        def resolve(self, url: str | None, pubid: str | None, context: Any) -> Any:
            if url in documents:
                return self.resolve_string(documents[url], context)
            raise ValueError(f"the WSDL's schema imports {url!r}, which it does not contain")

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    parser.resolvers.add(_InMemory())
    first = documents[_MEMORY + schemas[0].get("targetNamespace", "")]
    return etree.XMLSchema(etree.fromstring(first, parser))


class SoapService:
    """The service of one WSDL: ``handle`` is the sans-I/O core, ``app`` the aiohttp shell."""

    _CACHED = 16  # WSDLs per address: addresses come from the Host header, keep a few

    def __init__(self, wsdl: bytes, operations: Mapping[str, Operation], *, max_body: int) -> None:
        self._wsdl = parse_xml(wsdl)
        self.namespace = self._wsdl.get("targetNamespace", "")
        self._schema = _schema(self._wsdl)
        port_operations = f"{{{WSDL_NS}}}portType/{{{WSDL_NS}}}operation"
        declared = {op.get("name") for op in self._wsdl.iterfind(port_operations)}
        if set(operations) != declared:
            raise ValueError(
                f"operations {sorted(operations)} do not match the WSDL's {sorted(declared)}"
            )
        self._operations = dict(operations)
        self.max_body = max_body
        self._limits = XmlLimits(max_bytes=max_body)
        self._wsdl_lock = threading.Lock()
        self._wsdl_by_url: dict[str, bytes] = {}

    # --- sans-I/O --------------------------------------------------------------------------

    def wsdl_for(self, url: str) -> bytes:
        """The WSDL whose soap:address is ``url``."""
        with self._wsdl_lock:
            wsdl = self._wsdl_by_url.get(url)
            if wsdl is None:
                root = copy.deepcopy(self._wsdl)
                for address in root.iter(f"{{{WSDL_SOAP11}}}address"):
                    address.set("location", url)
                wsdl = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
                if len(self._wsdl_by_url) < self._CACHED:
                    self._wsdl_by_url[url] = wsdl
            return wsdl

    def handle(self, body: bytes) -> tuple[int, bytes]:
        """HTTP status and SOAP envelope answering the request ``body``."""
        try:
            name, wrapper = self._request(body)
            children = list(self._operations[name](wrapper))
        except SoapFault as fault:
            return 500, self._fault(fault)
        except Exception:
            # A bug of the service: a Server fault for the caller, the details in our log.
            log.exception("legacysoap.operation_failed", service=self.namespace)
            return 500, self._fault(SoapFault("Server", "internal error of the service"))
        response = element(self.namespace, f"{name}Response", *children)
        return 200, self._envelope(response, {"tns": self.namespace})

    def _request(self, body: bytes) -> tuple[str, etree._Element]:
        try:
            envelope = parse_xml(body, self._limits)
        except XmlError as exc:
            raise SoapFault("Client.XmlSyntaxError", str(exc)) from None
        soap_body = envelope.find(f"{{{SOAP_ENV}}}Body")
        if envelope.tag != f"{{{SOAP_ENV}}}Envelope" or soap_body is None:
            raise SoapFault("Client.XmlSyntaxError", "not a SOAP 1.1 Envelope with a Body")
        wrappers = [child for child in soap_body if isinstance(child.tag, str)]
        if len(wrappers) != 1:
            raise SoapFault(
                "Client.SchemaValidationError",
                f"the Body must hold one operation element, not {len(wrappers)}",
            )
        wrapper = wrappers[0]
        if not self._schema.validate(wrapper):
            error = self._schema.error_log.last_error
            raise SoapFault("Client.SchemaValidationError", f"{error.type_name}: {error.message}")
        qname = etree.QName(wrapper)
        if qname.namespace != self.namespace or qname.localname not in self._operations:
            raise SoapFault(
                "Client.SchemaValidationError", f"{qname.localname!r} is not an operation"
            )
        return qname.localname, wrapper

    def _fault(self, fault: SoapFault) -> bytes:
        node = etree.Element(f"{{{SOAP_ENV}}}Fault")
        etree.SubElement(node, "faultcode").text = f"soap11env:{fault.code}"
        etree.SubElement(node, "faultstring").text = fault.message
        etree.SubElement(node, "faultactor").text = ""
        if fault.detail is not None:
            etree.SubElement(node, "detail").append(fault.detail)
        return self._envelope(node, {})

    @staticmethod
    def _envelope(content: etree._Element, nsmap: dict[str, str]) -> bytes:
        envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap11env": SOAP_ENV, **nsmap})
        etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body").append(content)
        return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")

    # --- aiohttp ---------------------------------------------------------------------------

    async def answer(self, request: web.Request) -> web.Response:
        if request.method == "GET" and request.query.keys() & {"wsdl", "WSDL"}:
            wsdl = self.wsdl_for(str(request.url.with_query(None)))
            return web.Response(body=wsdl, headers={"Content-Type": _CONTENT_TYPE})
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST", "GET"])
        body = await request.read()  # the app's client_max_size answers 413 beyond the cap
        # Parsing, validation and serialisation are synchronous: off the event loop.
        status, payload = await asyncio.to_thread(self.handle, body)
        return web.Response(status=status, body=payload, headers={"Content-Type": _CONTENT_TYPE})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/", self.answer)
        return app
