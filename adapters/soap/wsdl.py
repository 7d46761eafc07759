"""Reading a legacy service's WSDL 1.1 and checking that X-Road can carry it.

X-Road SOAP services are document/literal wrapped over SOAP 1.1: the request wrapper element
is named like the operation (= the X-Road service code) and the response wrapper like the
operation plus ``Response``. A WSDL that breaks one of these rules cannot be bridged without
guessing, so registration refuses it with a message naming the rule.

The WSDL must be self-contained: nothing it refers to is ever fetched, so registering a
service never makes the node reach into other hosts. A schema import is accepted when it
needs no fetching: one naming a namespace only, or one of the well-known namespaces whose
definitions the node has or needs not (X-Road's own schemas, which X-Road's specification
imports by URL, and the W3C/WS-I ones it uses for attachments). wsdl:import, xsd:include
and xsd:redefine, and imports of other documents, are refused.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import zeep
import zeep.transports
from lxml import etree

from xroad_hub.protocol.identifiers import valid_part
from xroad_hub.protocol.soap import HUB_NS
from xroad_hub.protocol.xmlsafe import XmlError, XmlLimits, parse_xml
from xroad_hub.streams import BodyTooLarge, read_capped

__all__ = [
    "ID_NS",
    "MAX_WSDL_BYTES",
    "SOAP11_NS",
    "WSDL_NS",
    "XROAD_NS",
    "XSD_NS",
    "WsdlError",
    "WsdlInfo",
    "WsdlOperation",
    "fetch_wsdl",
    "load_wsdl",
    "zeep_client",
]

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
SOAP11_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
SOAP12_NS = "http://schemas.xmlsoap.org/wsdl/soap12/"
SOAP_HTTP = "http://schemas.xmlsoap.org/soap/http"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
XROAD_NS = "http://x-road.eu/xsd/xroad.xsd"
ID_NS = "http://x-road.eu/xsd/identifiers"
WSDL20_NS = "http://www.w3.org/ns/wsdl"

# Imports whose schemaLocation is never followed: X-Road's schemas (the header fields and
# identifiers, defined by the protocol; the node checks them itself) and the W3C/WS-I
# schemas X-Road's example WSDL imports for attachments and xml:lang.
KNOWN_IMPORTS = frozenset(
    (
        XROAD_NS,
        ID_NS,
        "http://x-road.eu/xsd/representation.xsd",
        "http://x-road.eu/xsd/security-token.xsd",
        "http://www.w3.org/XML/1998/namespace",
        "http://www.w3.org/2005/05/xmlmime",
        "http://ws-i.org/profiles/basic/1.1/xsd",
    )
)

MAX_WSDL_BYTES = 5 * 1024 * 1024
WSDL_LIMITS = XmlLimits(max_bytes=MAX_WSDL_BYTES, max_depth=64, max_elements=100_000)

RULE_WRAPPED = "X-Road needs document/literal wrapped"
# What a soapAction cannot hold to be sent as the quoted-string of a SOAPAction header.
_UNSENDABLE_ACTION = re.compile(r'[\x00-\x1f\x7f"\\]')


class WsdlError(ValueError):
    """The WSDL cannot be registered; the message names the rule it breaks."""


@dataclass(frozen=True, slots=True)
class WsdlOperation:
    name: str  # the X-Road service code
    input_element: etree.QName  # request wrapper, named like the operation
    output_element: etree.QName  # response wrapper, named like the operation + "Response"
    soap_action: str
    version: str | None  # xrd:version of the binding operation; None: registration default
    title: str | None = None
    notes: str | None = None
    tech_notes: str | None = None


@dataclass(frozen=True, slots=True)
class WsdlInfo:
    source: str
    target_namespace: str
    endpoint: str | None  # soap:address of the port using the binding, if the WSDL has one
    binding: str  # local names: the SOAP 1.1 binding that was analysed, and its portType
    port_type: str
    service_name: str | None
    port_name: str | None
    operations: Mapping[str, WsdlOperation] = field(hash=False)
    # The binding already declares X-Road header fields: an X-Road-aware service (reached
    # through the pass-through adapter), not a legacy one to bridge.
    xroad_headers: bool = False

    def operation(self, name: str) -> WsdlOperation:
        try:
            return self.operations[name]
        except KeyError:
            raise WsdlError(f"{self.source}: the WSDL has no operation {name!r}") from None


# --- analysis ---------------------------------------------------------------------------


def load_wsdl(data: bytes, source: str) -> WsdlInfo:
    """Analyse a WSDL 1.1 document; WsdlError names the first rule it breaks."""
    try:
        root = parse_xml(data, WSDL_LIMITS)
    except XmlError as exc:
        raise WsdlError(f"{source}: not acceptable XML: {exc}") from exc
    return _Analysis(root, source).run()


def _w(local: str) -> str:
    return f"{{{WSDL_NS}}}{local}"


def _text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    text = " ".join("".join(element.itertext()).split())
    return text or None


class _Analysis:
    def __init__(self, root: etree._Element, source: str) -> None:
        self.root = root
        self.source = source
        self.tns = root.get("targetNamespace") or ""
        self.xroad_headers = False

    def fail(self, message: str) -> WsdlError:
        return WsdlError(f"{self.source}: {message}")

    def run(self) -> WsdlInfo:
        root = self.root
        if root.tag == f"{{{WSDL20_NS}}}description":
            raise self.fail("WSDL 2.0 is not supported; X-Road services are described in WSDL 1.1")
        if root.tag != _w("definitions"):
            raise self.fail("not a WSDL 1.1 document (the root must be wsdl:definitions)")
        if not self.tns:
            raise self.fail("the WSDL has no targetNamespace (wsdl:definitions/@targetNamespace)")
        self._self_contained()
        binding, port = self._choose_binding()
        port_type = self._component("portType", binding.get("type"), binding)
        soap_binding = binding.find(f"{{{SOAP11_NS}}}binding")
        assert soap_binding is not None
        transport = soap_binding.get("transport", "")
        if transport != SOAP_HTTP:
            raise self.fail(
                f"binding {binding.get('name')}: transport {transport!r} is not SOAP over HTTP "
                f"(WSDL rule: soap:binding transport={SOAP_HTTP})"
            )
        default_style = soap_binding.get("style", "document")
        operations: dict[str, WsdlOperation] = {}
        for op in binding.findall(_w("operation")):
            parsed = self._operation(op, port_type, default_style)
            if parsed.name in operations:
                raise self.fail(
                    f"operation {parsed.name} is overloaded; an X-Road service code must name "
                    "exactly one operation"
                )
            operations[parsed.name] = parsed
        if not operations:
            raise self.fail(f"binding {binding.get('name')} has no operations")
        endpoint = None
        service_name = port_name = None
        if port is not None:
            address = port.find(f"{{{SOAP11_NS}}}address")
            endpoint = address.get("location") if address is not None else None
            port_name = port.get("name")
            parent = port.getparent()
            service_name = parent.get("name") if parent is not None else None
        return WsdlInfo(
            source=self.source,
            target_namespace=self.tns,
            endpoint=endpoint,
            binding=binding.get("name", ""),
            port_type=port_type.get("name", ""),
            service_name=service_name,
            port_name=port_name,
            operations=operations,
            xroad_headers=self.xroad_headers,
        )

    def _self_contained(self) -> None:
        for imp in self.root.iter(_w("import")):
            raise self.fail(
                f"wsdl:import of {imp.get('location')!r} is refused: the WSDL must be "
                "self-contained (the node never loads other documents)"
            )
        for kind in ("import", "include", "redefine"):
            for el in self.root.iter(f"{{{XSD_NS}}}{kind}"):
                if kind == "import" and el.get("namespace") in KNOWN_IMPORTS:
                    continue  # never fetched: see KNOWN_IMPORTS
                if el.get("schemaLocation"):
                    raise self.fail(
                        f"xsd:{kind} of {el.get('schemaLocation')!r} is refused: the WSDL must "
                        "be self-contained (inline every schema in wsdl:types)"
                    )

    def _choose_binding(self) -> tuple[etree._Element, etree._Element | None]:
        bindings = self.root.findall(_w("binding"))
        soap11 = [b for b in bindings if b.find(f"{{{SOAP11_NS}}}binding") is not None]
        if not soap11:
            if any(b.find(f"{{{SOAP12_NS}}}binding") is not None for b in bindings):
                raise self.fail(
                    "only SOAP 1.2 bindings found; X-Road SOAP is SOAP 1.1 (WSDL rule: a "
                    f"soap:binding in namespace {SOAP11_NS})"
                )
            raise self.fail("no SOAP 1.1 binding (soap:binding) in the WSDL")
        by_name = {b.get("name"): b for b in soap11}
        for port in self.root.iterfind(f"{_w('service')}/{_w('port')}"):
            if port.find(f"{{{SOAP11_NS}}}address") is None:
                continue
            name = self._local(port.get("binding"), port, "binding")
            if name in by_name:
                return by_name[name], port
        return soap11[0], None

    def _local(self, value: str | None, context: etree._Element, what: str) -> str:
        """Local name of a reference to a WSDL component; all of them live in this document
        (imports are refused), so the namespace must be the target namespace."""
        if not value:
            raise self.fail(f"{context.tag.split('}')[-1]} {context.get('name')}: no {what}")
        qname = self._resolve(value, context)
        if qname.namespace not in (None, self.tns):
            raise self.fail(f"{what} {value!r} is not defined in this WSDL")
        return qname.localname

    def _resolve(self, value: str, context: etree._Element) -> etree.QName:
        prefix, _, local = value.strip().rpartition(":")
        ns = context.nsmap.get(prefix or None)
        if prefix and ns is None:
            raise self.fail(f"undeclared namespace prefix in {value!r}")
        return etree.QName(ns, local) if ns else etree.QName(local)

    def _component(self, kind: str, ref: str | None, context: etree._Element) -> etree._Element:
        name = self._local(ref, context, kind)
        for el in self.root.findall(_w(kind)):
            if el.get("name") == name:
                return el
        raise self.fail(f"wsdl:{kind} {name} is referenced but not defined")

    def _operation(
        self, op: etree._Element, port_type: etree._Element, default_style: str
    ) -> WsdlOperation:
        name = op.get("name") or ""
        if not valid_part(name):
            raise self.fail(
                f"operation name {name!r} cannot be an X-Road service code "
                "(allowed characters: A-Z a-z 0-9 ' ( ) + , - . = ?)"
            )
        soap_op = op.find(f"{{{SOAP11_NS}}}operation")
        style = default_style
        action = ""
        if soap_op is not None:
            style = soap_op.get("style", default_style)
            action = soap_op.get("soapAction", "")
        if _UNSENDABLE_ACTION.search(action):
            # Sent as the quoted SOAPAction header of every call: refused now, where the
            # operator can mend the WSDL, not as ServiceFailed at every call.
            raise self.fail(
                f"operation {name}: soapAction {action!r} cannot be sent as an HTTP header"
                " (control characters, quotes and backslashes are not allowed)"
            )
        if style != "document":
            raise self.fail(
                f"operation {name}: binding style is {style}; {RULE_WRAPPED} "
                "(WSDL rule: style=document)"
            )
        abstract = next(
            (o for o in port_type.findall(_w("operation")) if o.get("name") == name), None
        )
        if abstract is None:
            raise self.fail(f"operation {name} is in the binding but not in its portType")
        elements: list[etree.QName] = []
        for direction in ("input", "output"):
            if self._body(op.find(_w(direction)), name, direction):
                self.xroad_headers = True
            msg_ref = abstract.find(_w(direction))
            if msg_ref is None:
                raise self.fail(
                    f"operation {name} has no {direction}; X-Road services are request-response"
                )
            message = self._component("message", msg_ref.get("message"), msg_ref)
            elements.append(self._wrapper(message, name, direction))
        request, response = elements
        if request.localname != name:
            raise self.fail(
                f"operation {name}: the request wrapper element is {request.localname}; the "
                "request wrapper element must be named like the operation "
                "(X-Road: wrapper = serviceCode)"
            )
        if response.localname != name + "Response":
            raise self.fail(
                f"operation {name}: the response wrapper element is {response.localname}; "
                f"response wrapper must be named {name}Response"
            )
        version = _text(op.find(f"{{{XROAD_NS}}}version"))
        docs = [d for parent in (op, abstract) for d in parent.findall(_w("documentation"))]
        title = notes = tech = None
        for doc in docs:
            title = title or _text(doc.find(f"{{{XROAD_NS}}}title"))
            notes = notes or _text(doc.find(f"{{{XROAD_NS}}}notes"))
            tech = tech or _text(doc.find(f"{{{XROAD_NS}}}techNotes"))
        if notes is None:
            # Plain documentation (no xrd children) is what most legacy tools generate from
            # docstrings: it describes the operation, so it serves as the notes.
            plain = [d for d in docs if len(d) == 0]
            notes = _text(plain[0]) if plain else None
        return WsdlOperation(name, request, response, action, version, title, notes, tech)

    def _body(self, io_el: etree._Element | None, name: str, direction: str) -> bool:
        """Checks the binding's input or output; True if it declares X-Road headers."""
        if io_el is None:
            raise self.fail(f"operation {name}: the binding has no {direction}")
        xroad = False
        for header in io_el.findall(f"{{{SOAP11_NS}}}header"):
            message = self._component("message", header.get("message"), header)
            part = next(
                (p for p in message.findall(_w("part")) if p.get("name") == header.get("part")),
                None,
            )
            element = part.get("element") if part is not None else None
            # X-Road's header fields, and our own purpose fields (which the node reads).
            if element is None or self._resolve(element, part).namespace not in (XROAD_NS, HUB_NS):
                raise self.fail(
                    f"operation {name}: the {direction} declares a soap:header that is not an "
                    "X-Road header field; the bridge carries only the SOAP body"
                )
            xroad = True
        body = io_el.find(f"{{{SOAP11_NS}}}body")
        if body is None:
            raise self.fail(f"operation {name}: the binding {direction} has no soap:body")
        use = body.get("use", "literal")
        if use != "literal":
            raise self.fail(
                f"operation {name}: {direction} soap:body use is {use}; soap:body use must be "
                f"literal ({RULE_WRAPPED})"
            )
        return xroad

    def _wrapper(self, message: etree._Element, op: str, direction: str) -> etree.QName:
        parts = message.findall(_w("part"))
        if len(parts) != 1 or not parts[0].get("element"):
            raise self.fail(
                f"{direction} message of {op} must have exactly one part referencing an "
                f"element ({RULE_WRAPPED})"
            )
        qname = self._resolve(parts[0].get("element", ""), parts[0])
        decl = self._element_declaration(qname)
        if decl is None:
            raise self.fail(
                f"element {qname.text} ({direction} of {op}) is not declared in wsdl:types"
            )
        type_ref = decl.get("type")
        if type_ref and self._resolve(type_ref, decl).namespace == XSD_NS:
            raise self.fail(
                f"{direction} wrapper {qname.localname} of {op} has the simple type {type_ref}; "
                f"the wrapper must be a complex type ({RULE_WRAPPED})"
            )
        return qname

    def _element_declaration(self, qname: etree.QName) -> etree._Element | None:
        types = self.root.find(_w("types"))
        if types is None:
            return None
        for schema in types.findall(f"{{{XSD_NS}}}schema"):
            if (schema.get("targetNamespace") or None) != qname.namespace:
                continue
            for el in schema.findall(f"{{{XSD_NS}}}element"):
                if el.get("name") == qname.localname:
                    return el
        return None


# --- fetching ---------------------------------------------------------------------------


async def fetch_wsdl(
    location: str, *, timeout: float = 30.0, max_bytes: int = MAX_WSDL_BYTES
) -> bytes:
    """The WSDL at ``location``: an http(s) URL, a file: URL or a file path. Size-capped;
    redirects are not followed (register the final URL); failures raise WsdlError."""
    scheme = urlsplit(location).scheme.lower()
    if scheme in ("http", "https"):
        return await _fetch_http(location, timeout, max_bytes)
    if scheme == "file":
        path = Path(unquote(urlsplit(location).path))
    elif scheme and not re.fullmatch(r"[a-z]", scheme):  # a Windows drive letter is a path
        raise WsdlError(f"cannot fetch a WSDL over {scheme}: (use http, https or a file path)")
    else:
        path = Path(location)
    return await asyncio.to_thread(_read_file, path, max_bytes)


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise WsdlError(f"cannot read the WSDL file {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise WsdlError(f"the WSDL file {path} is larger than {max_bytes} bytes")
    return data


async def _fetch_http(url: str, timeout: float, max_bytes: int) -> bytes:
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.get(url, allow_redirects=False, headers={"Accept": "text/xml, */*"}) as resp,
        ):
            if resp.status != 200:
                where = resp.headers.get("Location")
                hint = f" (redirect to {where}; register the final URL)" if where else ""
                raise WsdlError(f"fetching the WSDL {url}: HTTP {resp.status}{hint}")
            return await read_capped(resp.content, max_bytes)
    except BodyTooLarge as exc:
        raise WsdlError(f"the WSDL at {url} is larger than {max_bytes} bytes") from exc
    except TimeoutError as exc:
        raise WsdlError(f"fetching the WSDL {url}: no answer within {timeout} s") from exc
    except aiohttp.ClientError as exc:
        raise WsdlError(f"fetching the WSDL {url}: {exc}") from exc


# --- zeep -------------------------------------------------------------------------------


class _NoLoading(zeep.transports.Transport):
    """zeep asks its transport for every document a WSDL refers to; this one refuses, so
    zeep never reaches the network or the file system while reading a WSDL."""

    def load(self, url: str) -> bytes:
        raise WsdlError(
            f"the WSDL refers to the external document {url!r}; it must be self-contained"
        )

    def _load_remote_data(self, url: str) -> bytes:
        return self.load(url)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this zeep client only (de)serialises; the adapter does the I/O")

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this zeep client only (de)serialises; the adapter does the I/O")


def _without_known_locations(data: bytes) -> bytes:
    """The WSDL with the schemaLocation of well-known imports removed: zeep would otherwise
    ask its transport for them (and fail); as namespace-only imports they cost nothing."""
    root = parse_xml(data, WSDL_LIMITS)
    found = False
    for el in root.iter(f"{{{XSD_NS}}}import"):
        if el.get("namespace") in KNOWN_IMPORTS and el.get("schemaLocation") is not None:
            del el.attrib["schemaLocation"]
            found = True
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True) if found else data


ZEEP_SETTINGS = zeep.Settings(
    strict=True,
    xml_huge_tree=False,
    forbid_dtd=True,
    forbid_entities=True,
    forbid_external=True,
)


def zeep_client(data: bytes, source: str = "WSDL") -> zeep.Client:
    """A zeep client built from WSDL bytes already fetched (and ideally already checked by
    load_wsdl). It can (de)serialise but never sends anything or loads other documents."""
    try:
        parse_xml(data, WSDL_LIMITS)  # the same refusal of DTDs and limits as everywhere else
    except XmlError as exc:
        raise WsdlError(f"{source}: not acceptable XML: {exc}") from exc
    data = _without_known_locations(data)
    try:
        return zeep.Client(io.BytesIO(data), transport=_NoLoading(), settings=ZEEP_SETTINGS)
    except WsdlError:
        raise
    except Exception as exc:  # zeep raises many types for a schema it cannot use
        raise WsdlError(f"{source}: zeep cannot use this WSDL: {exc}") from exc
