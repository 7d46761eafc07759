"""X-Road message protocol for SOAP, version 4.0, sans-I/O.

A SOAP 1.1 envelope whose header names the client, the service, the message id and the
protocol version (``xrd`` namespace), with identifiers in the ``id`` namespace. The body is
document/literal wrapped: the request's wrapper element is named like the service code, the
answer's like the service code plus ``Response``. Messages may carry attachments
(multipart/related: SOAP with attachments or MTOM); the SOAP part comes first and the
attachments pass through byte for byte.

Parsing goes through ``xmlsafe`` (no DTDs, bounded sizes). Errors are ``SoapError`` with the
X-Road code without its prefix; the caller knows whom to blame.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from dataclasses import dataclass
from email.message import Message

from lxml import etree

from xroad_hub.errors import ProtocolError
from xroad_hub.protocol.identifiers import (
    MEMBER_SERVICES,
    ClientId,
    MemberId,
    NodeId,
    ServiceId,
    SubsystemId,
    valid_part,
)
from xroad_hub.protocol.xmlsafe import XmlError, XmlLimits, parse_xml

__all__ = [
    "HUB_NS",
    "ID_NS",
    "SHA512_ALGORITHM",
    "SOAP_ENV_NS",
    "XRD_NS",
    "SoapError",
    "SoapHeader",
    "SoapMessage",
    "build_response",
    "check_echo",
    "client_identifier",
    "fault_xml",
    "identifier_element",
    "parse_soap",
    "soap_request_hash",
    "with_request_hash",
]

SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV_NS = "http://www.w3.org/2003/05/soap-envelope"
XRD_NS = "http://x-road.eu/xsd/xroad.xsd"
ID_NS = "http://x-road.eu/xsd/identifiers"
SHA512_ALGORITHM = "http://www.w3.org/2001/04/xmlenc#sha512"
# xroad-hub's own optional header fields (purpose and legal basis of a request), in a
# namespace of ours so as not to extend X-Road's: <xh:purpose>, <xh:legalBasis>.
HUB_NS = "urn:xroad-hub:xsd:purpose:1"
PROTOCOL_VERSION = "4.0"
NSMAP = {"SOAP-ENV": SOAP_ENV_NS, "xrd": XRD_NS, "id": ID_NS}

# Header fields in the order X-Road writes them (and echoes them back).
HEADER_FIELDS = ("client", "service", "id", "userId", "issue", "protocolVersion", "requestHash")
_MAX_FIELD = 255
# Header names a service might match without namespace: X-Road's and our own.
_FIELD_NAMES = frozenset(HEADER_FIELDS) | {"purpose", "legalBasis"}


class SoapError(ProtocolError):
    """A message that breaks the protocol; ``code`` is the X-Road code without prefix."""


@dataclass(frozen=True, slots=True)
class SoapHeader:
    client: ClientId
    service: ServiceId | None
    id: str
    user_id: str | None
    issue: str | None
    protocol_version: str
    request_hash: str | None = None
    purpose: str | None = None
    legal_basis: str | None = None
    # The node the client asks for (X-Road's securityServer header), e.g. for the node's
    # operational-monitoring services of its owner member.
    security_server: NodeId | None = None


@dataclass(frozen=True, slots=True)
class SoapMessage:
    content_type: str  # of the whole HTTP body
    body: bytes  # the whole HTTP body, as received
    soap_start: int  # the SOAP part is body[soap_start:soap_end]
    soap_end: int
    envelope: etree._Element
    header: SoapHeader | None  # None only for a fault without X-Road header
    body_element: etree._Element  # the wrapper element, or the Fault
    is_fault: bool

    @property
    def soap_part(self) -> bytes:
        return self.body[self.soap_start : self.soap_end]

    @property
    def multipart(self) -> bool:
        return self.soap_start > 0 or self.soap_end < len(self.body)

    def fault(self) -> tuple[str, str, str]:
        """faultcode, faultstring and detail text of a Fault body (empty strings if absent)."""
        el = self.body_element
        words = [w for d in el.findall("detail") for w in " ".join(d.itertext()).split()]
        detail = " ".join(words)
        return (
            (el.findtext("faultcode") or "").strip(),
            (el.findtext("faultstring") or "").strip(),
            detail,
        )


def soap_request_hash(soap_part: bytes) -> str:
    """What the provider's node puts in ``requestHash``: SHA-512 of the request's SOAP part."""
    return base64.b64encode(hashlib.sha512(soap_part).digest()).decode()


def parse_soap(
    content_type: str, body: bytes, *, kind: str, limits: XmlLimits | None = None
) -> SoapMessage:
    """Parse and check an X-Road SOAP request (``kind="request"``) or response."""
    start, end, soap_type = _soap_part(content_type, body)
    if soap_type not in ("text/xml", "application/xop+xml"):
        raise SoapError(
            "InvalidContentType",
            f"SOAP 1.1 messages are sent as text/xml, not {soap_type or 'no content type'}",
        )
    try:
        # The node forwards these bytes as they are: it must read them as every reader does.
        root = parse_xml(body[start:end], limits or XmlLimits(), plain_text=True)
    except XmlError as exc:
        raise SoapError("InvalidSoap", f"malformed SOAP message: {exc}") from exc
    if root.tag == f"{{{SOAP12_ENV_NS}}}Envelope":
        raise SoapError("InvalidSoap", "SOAP 1.2 envelopes are not X-Road 4.0; use SOAP 1.1")
    if root.tag != f"{{{SOAP_ENV_NS}}}Envelope":
        raise SoapError("InvalidSoap", "the message is not a SOAP 1.1 Envelope")
    declared = (root.getroottree().docinfo.encoding or "UTF-8").lower()
    if declared not in ("utf-8", "utf8"):
        raise SoapError("InvalidContentType", f"X-Road SOAP messages must be UTF-8, not {declared}")
    parts = [etree.QName(c).localname for c in root if isinstance(c.tag, str)]
    if parts not in (["Body"], ["Header", "Body"]) or any(
        etree.QName(c).namespace != SOAP_ENV_NS for c in root if isinstance(c.tag, str)
    ):
        raise SoapError("InvalidSoap", "a SOAP Envelope holds an optional Header, then a Body")
    header_el = root.find(f"{{{SOAP_ENV_NS}}}Header")
    body_el = root.find(f"{{{SOAP_ENV_NS}}}Body")
    assert body_el is not None
    children = [c for c in body_el if isinstance(c.tag, str)]
    if len(children) != 1:
        raise SoapError(
            "InvalidSoap", "the SOAP Body must hold exactly one element (document/literal wrapped)"
        )
    wrapper = children[0]
    is_fault = wrapper.tag == f"{{{SOAP_ENV_NS}}}Fault"
    if is_fault and kind == "request":
        raise SoapError("InvalidSoap", "a request cannot be a SOAP Fault")
    header = None
    # A service's Fault may come without X-Road header, or with an empty one (Java's SAAJ
    # adds it); when it has X-Road fields, they are checked like an answer's.
    has_fields = header_el is not None and header_el.find(f"{{{XRD_NS}}}*") is not None
    if not is_fault or has_fields:
        header = _header(header_el, kind)
    if header is not None and not is_fault:
        code = header.service.service_code if header.service else None
        expected = code if kind == "request" else f"{code}Response"
        if code is not None and etree.QName(wrapper).localname != expected:
            raise SoapError(
                "InvalidSoap" if kind == "request" else "InconsistentResponse",
                f"the body's wrapper element is {etree.QName(wrapper).localname!r}; "
                f"X-Road needs {expected!r} (the service code, document/literal wrapped)",
            )
    return SoapMessage(content_type, body, start, end, root, header, wrapper, is_fault)


def check_echo(request: SoapHeader, response: SoapHeader | None) -> None:
    """The service answered this very request: it echoed the request's header fields."""
    if response is None:
        raise SoapError("InconsistentResponse", "the answer has no X-Road header")
    for name in ("client", "service", "id", "user_id", "issue", "protocol_version"):
        if getattr(request, name) != getattr(response, name):
            raise SoapError(
                "InconsistentResponse",
                f"the answer's header field {name} differs from the request's",
            )


def build_response(request: SoapMessage, body_child: etree._Element) -> bytes:
    """An X-Road response envelope: the request's header fields echoed in order, then
    ``body_child`` (a ``{serviceCode}Response`` element or a Fault) in the Body."""
    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap=NSMAP)
    header = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Header")
    old = request.envelope.find(f"{{{SOAP_ENV_NS}}}Header")
    for el in _header_elements(old):
        if etree.QName(el).localname != "requestHash":
            header.append(copy.deepcopy(el))
    body = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")
    body.append(copy.deepcopy(body_child))
    return etree.tostring(envelope, encoding="UTF-8", xml_declaration=True)


def with_request_hash(message: SoapMessage, request_hash: str) -> bytes:
    """The response's HTTP body with ``xrd:requestHash`` set by the provider's node (after
    protocolVersion); a hash the service put there itself is replaced. Attachments are
    kept byte for byte."""
    envelope = copy.deepcopy(message.envelope)
    header = envelope.find(f"{{{SOAP_ENV_NS}}}Header")
    if header is None:
        header = etree.Element(f"{{{SOAP_ENV_NS}}}Header")
        envelope.insert(0, header)
    for el in header.findall(f"{{{XRD_NS}}}requestHash"):
        header.remove(el)
    el = etree.Element(f"{{{XRD_NS}}}requestHash", nsmap={"xrd": XRD_NS})
    el.set("algorithmId", SHA512_ALGORITHM)
    el.text = request_hash
    version = header.find(f"{{{XRD_NS}}}protocolVersion")
    if version is not None:
        version.addnext(el)
    else:
        header.append(el)
    soap = etree.tostring(envelope, encoding="UTF-8", xml_declaration=True)
    return message.body[: message.soap_start] + soap + message.body[message.soap_end :]


def fault_xml(code: str, message: str, detail: str) -> bytes:
    """A SOAP 1.1 Fault as X-Road nodes send it: faultcode = the X-Road error type,
    faultstring = the message, detail/faultDetail = the id to find it in the node's log."""
    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={"SOAP-ENV": SOAP_ENV_NS})
    body = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP_ENV_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = code
    etree.SubElement(fault, "faultstring").text = message
    etree.SubElement(etree.SubElement(fault, "detail"), "faultDetail").text = detail
    return etree.tostring(envelope, encoding="UTF-8", xml_declaration=True)


def identifier_element(tag: str, ident: ClientId | ServiceId) -> etree._Element:
    """``<xrd:{tag} id:objectType=...>`` with the identifier's parts, in X-Road's order."""
    el = etree.Element(f"{{{XRD_NS}}}{tag}", nsmap={"xrd": XRD_NS, "id": ID_NS})
    provider = ident.provider if isinstance(ident, ServiceId) else ident
    el.set(f"{{{ID_NS}}}objectType", ident.object_type if not isinstance(ident, ServiceId)
           else "SERVICE")  # fmt: skip
    parts = [
        ("xRoadInstance", provider.instance),
        ("memberClass", provider.member_class),
        ("memberCode", provider.member_code),
    ]
    if isinstance(provider, SubsystemId):
        parts.append(("subsystemCode", provider.subsystem_code))
    if isinstance(ident, ServiceId):
        parts.append(("serviceCode", ident.service_code))
        if ident.service_version:
            parts.append(("serviceVersion", ident.service_version))
    for name, value in parts:
        etree.SubElement(el, f"{{{ID_NS}}}{name}").text = value
    return el


# -- internals ---------------------------------------------------------------------------


def _content_type(value: str) -> tuple[str, Message]:
    """Media type and parameters, parsed the way mail and HTTP libraries parse them, so the
    node and the service cannot read different boundaries or charsets from one header."""
    msg = Message()
    msg["Content-Type"] = value
    return msg.get_content_type(), msg


def _charset_ok(params: Message) -> bool:
    charset = params.get_param("charset")
    return charset is None or str(charset).strip().lower() in ("utf-8", "utf8")


def _soap_part(content_type: str, body: bytes) -> tuple[int, int, str]:
    """Where the SOAP part is in ``body`` and its media type."""
    media, params = _content_type(content_type)
    if not content_type.strip():
        media = ""
    if media != "multipart/related":
        if not _charset_ok(params):
            raise SoapError("InvalidContentType", "X-Road SOAP messages must be UTF-8")
        return 0, len(body), media
    boundary = params.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 200:
        raise SoapError("InvalidContentType", "multipart/related without a valid boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    if body.startswith(delimiter):
        first = 0
    else:
        first = body.find(b"\r\n" + delimiter)
        if first < 0:
            raise SoapError("InvalidSoap", "multipart message without its first boundary")
        first += 2
    head_start = first + len(delimiter)
    if body[head_start : head_start + 2] != b"\r\n":
        raise SoapError("InvalidSoap", "malformed multipart boundary line")
    head_start += 2
    head_end = body.find(b"\r\n\r\n", head_start)
    if head_end < 0:
        raise SoapError("InvalidSoap", "the SOAP part of the multipart message has no headers end")
    part_headers = _part_headers(body[head_start:head_end])
    content_start = head_end + 4
    content_end = body.find(b"\r\n" + delimiter, content_start)
    if content_end < 0:
        raise SoapError("InvalidSoap", "the SOAP part of the multipart message is not closed")
    start = params.get_param("start")
    cid = part_headers.get("content-id", "")
    if isinstance(start, str) and start.strip("<>") != cid.strip("<>"):
        raise SoapError("InvalidSoap", "the SOAP part must be the first part of the message")
    encoding = part_headers.get("content-transfer-encoding", "binary").lower()
    if encoding not in ("binary", "8bit", "7bit"):
        # The node reads the part as it is; an encoded part would read differently to others.
        raise SoapError("InvalidSoap", f"the SOAP part must not be {encoding}-encoded")
    part_media, part_params = _content_type(part_headers.get("content-type", ""))
    if not _charset_ok(part_params):
        raise SoapError("InvalidContentType", "X-Road SOAP messages must be UTF-8")
    return content_start, content_end, part_media


def _part_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _header_elements(header_el: etree._Element | None) -> list[etree._Element]:
    if header_el is None:
        return []
    return [c for c in header_el if isinstance(c.tag, str)]


def _header(header_el: etree._Element | None, kind: str) -> SoapHeader:
    fields: dict[str, etree._Element] = {}
    hub: dict[str, etree._Element] = {}
    for el in _header_elements(header_el):
        q = etree.QName(el)
        if q.namespace == HUB_NS and q.localname in ("purpose", "legalBasis"):
            if q.localname in hub:
                raise SoapError("DuplicateHeaderField", f"header field {q.localname} appears twice")
            hub[q.localname] = el
            continue
        if q.namespace != XRD_NS:
            if q.localname in _FIELD_NAMES:
                # A reader that matches header names without their namespace (or by prefix)
                # would take this one for the X-Road field the node checked.
                raise SoapError(
                    "InvalidSoap",
                    f"header element {q.localname} in namespace {q.namespace!r} looks like "
                    "an X-Road header field; send X-Road fields in the X-Road namespace only",
                )
            continue  # other headers (e.g. WS-Security) are the services' business
        if q.localname in fields:
            raise SoapError("DuplicateHeaderField", f"header field {q.localname} appears twice")
        fields[q.localname] = el
    for name in ("client", "id", "protocolVersion") + (("service",) if kind == "request" else ()):
        if name not in fields:
            raise SoapError("MissingHeaderField", f"required header field {name} is missing")
    version = _exact(fields["protocolVersion"], "protocolVersion")
    if version != PROTOCOL_VERSION:
        raise SoapError(
            "InvalidProtocolVersion", f"protocolVersion is {version!r}; this node speaks 4.0"
        )
    client = _client(fields["client"])
    service = _service(fields["service"]) if "service" in fields else None
    request_hash = None
    if "requestHash" in fields:
        request_hash = (fields["requestHash"].text or "").strip()
    return SoapHeader(
        client=client,
        service=service,
        id=_text(fields["id"], "id", required=True),
        user_id=_text(fields.get("userId"), "userId"),
        issue=_text(fields.get("issue"), "issue"),
        protocol_version=version,
        request_hash=request_hash,
        purpose=_text(hub.get("purpose"), "purpose"),
        legal_basis=_text(hub.get("legalBasis"), "legalBasis"),
        security_server=(_server(fields["securityServer"]) if "securityServer" in fields else None),
    )


def _server(el: etree._Element) -> NodeId:
    object_type, parts = _parts(el, "securityServer")
    if object_type != "SERVER" or "serverCode" not in parts:
        raise SoapError(
            "InvalidSoap", "securityServer must have id:objectType SERVER and serverCode"
        )
    return NodeId(_member(parts, "securityServer"), parts["serverCode"])


def _exact(el: etree._Element, name: str) -> str:
    """An element's text exactly as a service reads it: the node does not trim what it then
    forwards untrimmed (``" TH-officer-7"`` is not who the node logged)."""
    value = el.text or ""
    if value != value.strip():
        raise SoapError(
            "InvalidSoap", f"header field {name} has blanks around its value; remove them"
        )
    return value


def _text(el: etree._Element | None, name: str, *, required: bool = False) -> str | None:
    value = _exact(el, name) if el is not None else ""
    if not value:
        if required:
            raise SoapError("MissingHeaderField", f"header field {name} is empty")
        return None
    if len(value) > _MAX_FIELD or not value.isprintable():
        raise SoapError("InvalidSoap", f"header field {name} must be printable, <= 255 characters")
    return value


def _parts(el: etree._Element, what: str) -> tuple[str, dict[str, str]]:
    object_type = el.get(f"{{{ID_NS}}}objectType", "")
    parts: dict[str, str] = {}
    for child in el:
        if not isinstance(child.tag, str):
            continue
        q = etree.QName(child)
        if q.namespace != ID_NS or q.localname in parts:
            raise SoapError("InvalidSoap", f"{what} identifier has an unexpected element {q.text}")
        value = _exact(child, f"{what} {q.localname}")
        if not valid_part(value):
            raise SoapError("InvalidSoap", f"{what} identifier part {q.localname} is not valid")
        parts[q.localname] = value
    return object_type, parts


def _member(parts: dict[str, str], what: str) -> MemberId:
    try:
        return MemberId(parts["xRoadInstance"], parts["memberClass"], parts["memberCode"])
    except KeyError as exc:
        raise SoapError("InvalidSoap", f"{what} identifier lacks {exc.args[0]}") from exc


def _client(el: etree._Element) -> ClientId:
    object_type, parts = _parts(el, "client")
    member = _member(parts, "client")
    if object_type == "MEMBER" and "subsystemCode" not in parts:
        return member
    if object_type == "SUBSYSTEM" and "subsystemCode" in parts:
        return SubsystemId(*(member.instance, member.member_class, member.member_code),
                           parts["subsystemCode"])  # fmt: skip
    raise SoapError(
        "InvalidSoap", "client must have id:objectType MEMBER or SUBSYSTEM matching its parts"
    )


def _service(el: etree._Element) -> ServiceId:
    object_type, parts = _parts(el, "service")
    if object_type != "SERVICE" or "serviceCode" not in parts:
        raise SoapError("InvalidSoap", "service must have id:objectType SERVICE and serviceCode")
    m = _member(parts, "service")
    if "subsystemCode" not in parts:
        if parts["serviceCode"] in MEMBER_SERVICES and "serviceVersion" not in parts:
            return ServiceId(m, parts["serviceCode"])  # the node owner's monitoring services
        # As in r1 (see rest.py): every service belongs to a subsystem in X-Road 7.
        raise SoapError("InvalidSoap", "service identifier lacks subsystemCode")
    provider = SubsystemId(m.instance, m.member_class, m.member_code, parts["subsystemCode"])
    return ServiceId(provider, parts["serviceCode"], parts.get("serviceVersion"))


def client_identifier(el: etree._Element) -> ClientId:
    """A client identifier element (any tag) of an X-Road message; raises SoapError."""
    return _client(el)
