"""The WSDL that X-Road SOAP clients get for a bridged legacy service.

The legacy service's own types, messages and operations stay as they are; the binding gains
what X-Road clients expect of any X-Road service: the X-Road header fields as soap:header
parts of every input and output, ``xrd:version`` per operation, and an address that the
client's node replaces with its own. The schema for the header elements is our own small
one (only what the header fields need), inlined so the WSDL stays self-contained.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from xroad_hub.protocol.identifiers import ClientId
from xroad_hub.protocol.soap import HUB_NS
from xroad_hub.protocol.xmlsafe import parse_xml

from .wsdl import (
    ID_NS,
    SOAP11_NS,
    WSDL_LIMITS,
    WSDL_NS,
    XROAD_NS,
    XSD_NS,
    WsdlError,
    WsdlInfo,
)

__all__ = ["CLIENT_NODE_PLACEHOLDER", "HEADER_PARTS", "hide_endpoint", "xroad_wsdl"]

CLIENT_NODE_PLACEHOLDER = "http://localhost/xroad-client-node"


def hide_endpoint(wsdl: bytes) -> bytes:
    """An X-Road-aware service's own WSDL as the metaservices give it to any client of the
    federation: its soap:address (the service's internal address, which only its node
    needs) replaced by the placeholder, as X-Road hides it too."""
    root = parse_xml(wsdl, WSDL_LIMITS)
    for address in root.iter(f"{{{SOAP11_NS}}}address"):
        address.set("location", CLIENT_NODE_PLACEHOLDER)
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True)


HEADER_PARTS = ("client", "service", "id", "userId", "issue", "protocolVersion")
# xroad-hub's own optional header fields: why the data is asked for. Declared so that SOAP
# tools can fill them; a client whose registration has a default purpose may leave them out.
PURPOSE_PARTS = ("purpose", "legalBasis")

_SCHEMAS = f"""<wsdl:types xmlns:wsdl="{WSDL_NS}" xmlns:xs="{XSD_NS}">
<xs:schema targetNamespace="{XROAD_NS}" elementFormDefault="qualified"
    xmlns:xs="{XSD_NS}" xmlns:xrd="{XROAD_NS}" xmlns:id="{ID_NS}">
  <xs:import namespace="{ID_NS}"/>
  <xs:element name="client" type="id:XRoadClientIdentifierType"/>
  <xs:element name="service" type="id:XRoadServiceIdentifierType"/>
  <xs:element name="id" type="xs:string"/>
  <xs:element name="userId" type="xs:string"/>
  <xs:element name="issue" type="xs:string"/>
  <xs:element name="protocolVersion" type="xs:string"/>
  <xs:element name="requestHash">
    <xs:complexType>
      <xs:simpleContent>
        <xs:extension base="xs:string">
          <xs:attribute name="algorithmId" type="xs:string"/>
        </xs:extension>
      </xs:simpleContent>
    </xs:complexType>
  </xs:element>
  <xs:element name="version" type="xs:string"/>
  <xs:element name="title" type="xs:string"/>
  <xs:element name="notes" type="xs:string"/>
  <xs:element name="techNotes" type="xs:string"/>
</xs:schema>
<xs:schema targetNamespace="{ID_NS}" elementFormDefault="qualified"
    xmlns:xs="{XSD_NS}" xmlns:id="{ID_NS}">
  <xs:simpleType name="XRoadObjectType">
    <xs:restriction base="xs:string">
      <xs:enumeration value="MEMBER"/>
      <xs:enumeration value="SUBSYSTEM"/>
      <xs:enumeration value="SERVICE"/>
    </xs:restriction>
  </xs:simpleType>
  <xs:attribute name="objectType" type="id:XRoadObjectType"/>
  <xs:complexType name="XRoadClientIdentifierType">
    <xs:sequence>
      <xs:element name="xRoadInstance" type="xs:string"/>
      <xs:element name="memberClass" type="xs:string"/>
      <xs:element name="memberCode" type="xs:string"/>
      <xs:element name="subsystemCode" type="xs:string" minOccurs="0"/>
    </xs:sequence>
    <xs:attribute ref="id:objectType" use="required"/>
  </xs:complexType>
  <xs:complexType name="XRoadServiceIdentifierType">
    <xs:sequence>
      <xs:element name="xRoadInstance" type="xs:string"/>
      <xs:element name="memberClass" type="xs:string"/>
      <xs:element name="memberCode" type="xs:string"/>
      <xs:element name="subsystemCode" type="xs:string" minOccurs="0"/>
      <xs:element name="serviceCode" type="xs:string"/>
      <xs:element name="serviceVersion" type="xs:string" minOccurs="0"/>
    </xs:sequence>
    <xs:attribute ref="id:objectType" use="required"/>
  </xs:complexType>
</xs:schema>
<xs:schema targetNamespace="{HUB_NS}" elementFormDefault="qualified" xmlns:xs="{XSD_NS}">
  <xs:element name="purpose" type="xs:string"/>
  <xs:element name="legalBasis" type="xs:string"/>
</xs:schema>
</wsdl:types>"""


def _w(local: str) -> str:
    return f"{{{WSDL_NS}}}{local}"


def _sub(
    parent: etree._Element, tag: str, attrib: dict[str, str], declare: dict[str, str]
) -> etree._Element:
    """A new child at its final place, declaring ``declare`` on itself unless already in
    scope. New elements are only ever created in place, never moved: lxml drops a moved
    element's declarations when an ancestor binds the same namespace under another prefix,
    which would break prefixes used inside attribute values (type="xs:string")."""
    scope = parent.nsmap
    needed = {p: ns for p, ns in declare.items() if scope.get(p) != ns}
    return etree.SubElement(parent, tag, attrib, nsmap=needed or None)


def _prefix(parent: etree._Element, href: str, wanted: str) -> tuple[str, dict[str, str]]:
    """A prefix for ``href`` below ``parent``: one already in scope, else ``wanted`` with the
    declaration to make."""
    for prefix, ns in parent.nsmap.items():
        if prefix is not None and ns == href:
            return prefix, {}
    return wanted, {wanted: href}


def _graft(parent: etree._Element, source: etree._Element, declare: dict[str, str]) -> None:
    el = _sub(parent, source.tag, dict(source.attrib), declare)
    el.text, el.tail = source.text, source.tail
    for child in source:
        if isinstance(child.tag, str):
            _graft(el, child, {})


def _free_name(existing: set[str], wanted: str) -> str:
    name, n = wanted, 0
    while name in existing:
        n += 1
        name = f"{wanted}{n}"
    return name


def xroad_wsdl(
    info: WsdlInfo,
    original: bytes,
    provider_subsystem_id: ClientId | None,
    version_default: str | None,
    *,
    operations: Iterable[str] | None = None,
) -> bytes:
    """The bridged service's WSDL for X-Road SOAP clients. ``original`` is the WSDL that
    ``info`` was loaded from; ``operations`` limits it to the registered ones."""
    root = parse_xml(original, WSDL_LIMITS)
    tns = info.target_namespace
    keep = set(info.operations) if operations is None else set(operations)
    unknown = keep - set(info.operations)
    if unknown:
        raise WsdlError(f"{info.source}: no operation(s) {', '.join(sorted(unknown))}")
    if info.xroad_headers:
        raise WsdlError(
            f"{info.source}: the WSDL already declares X-Road headers; an X-Road-aware service "
            "is registered as a pass-through, not bridged"
        )

    # The legacy document is edited in place, so its own declarations stay where they are.
    for kind, name in (("portType", info.port_type), ("binding", info.binding)):
        for el in root.findall(_w(kind)):
            if el.get("name") != name:
                root.remove(el)
            else:
                for op in el.findall(_w("operation")):
                    if op.get("name") not in keep:
                        el.remove(op)
    for el in root.findall(_w("service")):
        root.remove(el)

    if root.find(_w("documentation")) is None and provider_subsystem_id is not None:
        doc = root.makeelement(_w("documentation"))
        doc.text = (
            f"Legacy SOAP service {info.service_name or info.port_type}, published by "
            f"{provider_subsystem_id} through an xroad-hub SOAP bridge."
        )
        root.insert(0, doc)

    types = root.find(_w("types"))
    if types is None:
        types = root.makeelement(_w("types"))
        first = next((c for c in root if c.tag != _w("documentation")), None)
        if first is not None:
            first.addprevious(types)
        else:
            root.append(types)
    for schema in parse_xml(_SCHEMAS.encode()):
        _graft(types, schema, {"xs": XSD_NS, "xrd": XROAD_NS, "id": ID_NS})
    xh, hub_declare = _prefix(root, HUB_NS, "xh")

    names = {m.get("name", "") for m in root.findall(_w("message"))}
    header_message = _free_name(names, "requestheader")
    xrd, declare = _prefix(root, XROAD_NS, "xrd")
    msg = _sub(root, _w("message"), {"name": header_message}, {**declare, **hub_declare})
    for part in HEADER_PARTS:
        _sub(msg, _w("part"), {"name": part, "element": f"{xrd}:{part}"}, {})
    for part in PURPOSE_PARTS:
        _sub(msg, _w("part"), {"name": part, "element": f"{xh}:{part}"}, {})

    for binding in root.findall(_w("binding")):
        for op in binding.findall(_w("operation")):
            _decorate(op, info, version_default, tns, header_message)

    tns_prefix, declare = _prefix(root, tns, "tns")
    service_name = info.service_name or f"{info.port_type}Service"
    service = _sub(root, _w("service"), {"name": service_name}, declare)
    port = _sub(
        service,
        _w("port"),
        {"name": info.port_name or info.binding, "binding": f"{tns_prefix}:{info.binding}"},
        {},
    )
    _sub(port, f"{{{SOAP11_NS}}}address", {"location": CLIENT_NODE_PLACEHOLDER}, {})
    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True)


def _decorate(
    op: etree._Element, info: WsdlInfo, version_default: str | None, tns: str, message: str
) -> None:
    name = op.get("name", "")
    for old in op.findall(f"{{{XROAD_NS}}}version"):
        op.remove(old)
    version = info.operations[name].version or version_default
    if version:
        # No prefixes inside its value, so this element may be moved into place.
        el = op.makeelement(f"{{{XROAD_NS}}}version", nsmap={"xrd": XROAD_NS})
        el.text = version
        soap_op = op.find(f"{{{SOAP11_NS}}}operation")
        if soap_op is not None:
            soap_op.addnext(el)
        else:
            op.append(el)
    for direction in ("input", "output"):
        io = op.find(_w(direction))
        if io is None:
            continue
        prefix, declare = _prefix(io, tns, "tns")
        for part in HEADER_PARTS + PURPOSE_PARTS:
            _sub(
                io,
                f"{{{SOAP11_NS}}}header",
                {"message": f"{prefix}:{message}", "part": part, "use": "literal"},
                declare,
            )
