"""X-Road SOAP 4.0 end to end: client system -> client's node -> provider's node -> service.

Two services on the provider node: an X-Road-aware SOAP service whose messages pass through
unchanged (tests/xroad_soap_service.py), and a plain legacy SOAP service bridged to
X-Road SOAP and to REST by the node (tests/soap_legacy.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import uuid

import aiohttp
import orjson
import pytest
import zeep
from lxml import etree

from .conftest import SCHEMA_FETCHES, Fed
from .xroad_soap_service import RECEIVED

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XRD = "http://x-road.eu/xsd/xroad.xsd"
IDN = "http://x-road.eu/xsd/identifiers"
ECHO_NS = "http://test.xroad-hub.example/echo"
LEGACY_NS = "urn:example:dopa:population"
CLIENT = ("TH", "GOV", "DGA", "devportal")


def _client_xml(parts: tuple[str, ...] = CLIENT, object_type: str = "SUBSYSTEM") -> str:
    names = ("xRoadInstance", "memberClass", "memberCode", "subsystemCode")
    inner = "".join(f"<id:{n}>{v}</id:{n}>" for n, v in zip(names, parts, strict=False))
    return f'<xrd:client id:objectType="{object_type}">{inner}</xrd:client>'


def _service_xml(subsystem: str, code: str, version: str | None = None) -> str:
    inner = (
        "<id:xRoadInstance>TH</id:xRoadInstance><id:memberClass>GOV</id:memberClass>"
        f"<id:memberCode>DBD</id:memberCode><id:subsystemCode>{subsystem}</id:subsystemCode>"
        f"<id:serviceCode>{code}</id:serviceCode>"
        + (f"<id:serviceVersion>{version}</id:serviceVersion>" if version else "")
    )
    return f'<xrd:service id:objectType="SERVICE">{inner}</xrd:service>'


def envelope(
    body: str,
    *,
    subsystem: str = "xroadsoap",
    code: str = "echo",
    version: str | None = "v2",
    message_id: str | None = None,
    protocol: str = "4.0",
    client: str | None = None,
    extra_header: str = "",
) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV}" xmlns:xrd="{XRD}" xmlns:id="{IDN}">'
        "<SOAP-ENV:Header>"
        f"{client if client is not None else _client_xml()}"
        f"{_service_xml(subsystem, code, version)}"
        f"<xrd:id>{message_id or uuid.uuid4()}</xrd:id>"
        "<xrd:userId>TH-officer-7</xrd:userId><xrd:issue>CASE-42</xrd:issue>"
        f"<xrd:protocolVersion>{protocol}</xrd:protocolVersion>{extra_header}"
        f"</SOAP-ENV:Header><SOAP-ENV:Body>{body}</SOAP-ENV:Body></SOAP-ENV:Envelope>"
    ).encode()


def echo_body(text: str) -> str:
    return f'<e:echo xmlns:e="{ECHO_NS}"><e:text>{text}</e:text></e:echo>'


async def post(
    http: aiohttp.ClientSession,
    fed: Fed,
    data: bytes | io.BytesIO,
    content_type: str = "text/xml; charset=utf-8",
    **headers: str,
) -> tuple[int, str, bytes]:
    async with http.post(
        fed.url("TH/GOV/DGA/hub1") + "/",
        data=data,
        headers={"Content-Type": content_type, **headers},
    ) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


def parse(body: bytes) -> etree._Element:
    return etree.fromstring(body)


def fault_of(body: bytes) -> tuple[str, str, str]:
    fault = parse(body).find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    assert fault is not None, body
    return (
        fault.findtext("faultcode") or "",
        fault.findtext("faultstring") or "",
        fault.findtext("detail/faultDetail") or "",
    )


def header_fields(body: bytes) -> list[str]:
    header = parse(body).find(f"{{{SOAP_ENV}}}Header")
    return [etree.QName(el).localname for el in header]


# -- pass-through to an X-Road-aware service ----------------------------------------------


async def test_soap_round_trip_echoes_headers_in_order_with_request_hash(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    request = envelope(echo_body("สวัสดี"), message_id="soap-msg-1")
    status, ctype, body = await post(http, fed, request, SOAPAction='"echo"')
    assert status == 200, body
    assert ctype.startswith("text/xml")
    root = parse(body)
    assert root.findtext(f".//{{{ECHO_NS}}}text") == "สวัสดี"
    assert header_fields(body) == [
        "client",
        "service",
        "id",
        "userId",
        "issue",
        "protocolVersion",
        "requestHash",
    ]
    rh = root.find(f"{{{SOAP_ENV}}}Header/{{{XRD}}}requestHash")
    assert rh.get("algorithmId") == "http://www.w3.org/2001/04/xmlenc#sha512"
    assert rh.text == base64.b64encode(hashlib.sha512(request).digest()).decode()
    assert root.findtext(f"{{{SOAP_ENV}}}Header/{{{XRD}}}id") == "soap-msg-1"


async def test_attachments_pass_through_byte_exact(fed: Fed, http: aiohttp.ClientSession) -> None:
    attachment = bytes(range(256)) * 64 + b"\r\n--not-the-boundary\r\n"
    boundary = "MIME_boundary_7f3a"
    soap = envelope(echo_body("with attachment"))
    data = (
        f"--{boundary}\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-ID: <soap@x>\r\n\r\n"
    ).encode()
    data += soap + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n".encode()
    data += b"Content-Transfer-Encoding: binary\r\nContent-ID: <att1@x>\r\n\r\n"
    data += attachment + f"\r\n--{boundary}--\r\n".encode()
    ctype = f'multipart/related; type="text/xml"; start="<soap@x>"; boundary="{boundary}"'
    status, answer_type, body = await post(http, fed, data, ctype)
    assert status == 200, body
    assert answer_type == ctype
    # The SOAP part changed (answer wrapper, requestHash); the attachment is byte-identical.
    assert body.endswith(b"\r\n\r\n" + attachment + f"\r\n--{boundary}--\r\n".encode())
    soap_part = body.split(b"\r\n\r\n", 1)[1].split(f"\r\n--{boundary}".encode())[0]
    rh = parse(soap_part).findtext(f".//{{{XRD}}}requestHash")
    assert rh == base64.b64encode(hashlib.sha512(soap).digest()).decode()


async def test_mtom_message_passes_through(fed: Fed, http: aiohttp.ClientSession) -> None:
    boundary = "uuid:5b7c"
    payload = b"%PDF-1.4 binary \x00\xff payload"
    soap = envelope(echo_body("mtom"))
    data = (
        f"--{boundary}\r\nContent-Type: application/xop+xml; charset=UTF-8; "
        'type="text/xml"\r\nContent-ID: <root.message@x>\r\n\r\n'
    ).encode()
    data += soap + f"\r\n--{boundary}\r\nContent-Type: application/pdf\r\n".encode()
    data += b"Content-ID: <doc@x>\r\n\r\n" + payload + f"\r\n--{boundary}--\r\n".encode()
    ctype = (
        f'multipart/related; type="application/xop+xml"; start="<root.message@x>"; '
        f'start-info="text/xml"; boundary="{boundary}"'
    )
    status, _, body = await post(http, fed, data, ctype)
    assert status == 200, body
    assert payload + f"\r\n--{boundary}--\r\n".encode() in body


@pytest.mark.parametrize("text", ["fault", "fault-empty-header"])
async def test_service_fault_passes_through_as_its_own_answer(
    fed: Fed, http: aiohttp.ClientSession, text: str
) -> None:
    status, _, body = await post(http, fed, envelope(echo_body(text)))
    assert status == 500
    code, message, _ = fault_of(body)
    assert (code, message) == ("Server.EchoFailed", "the echo service failed on purpose")


async def test_each_service_is_called_with_its_own_protocol(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    """A pass-through service trusts the X-Road header it gets; a REST call must not be able
    to hand it a SOAP message naming another client than the one the node signed for."""
    spoof = envelope(
        echo_body("x"), client=_client_xml(("TH", "GOV", "BMA", "licensing"))
    )  # devportal sends a header claiming to be BMA's licensing service
    async with http.post(
        fed.url("TH/GOV/DGA/hub1") + "/r1/TH/GOV/DBD/xroadsoap/echo",
        data=spoof,
        headers={"X-Road-Client": "TH/GOV/DGA/devportal", "Content-Type": "text/xml"},
    ) as r:
        assert r.status == 400
        assert r.headers["X-Road-Error"] == "Client.InvalidRequest"
    rest = _service_xml("registry", "echo", "v1")
    data = envelope(echo_body("x")).replace(_service_xml("xroadsoap", "echo", "v2").encode(),
                                            rest.encode())  # fmt: skip
    data = data.replace(b"<e:echo ", b"<e:echo ")
    _, _, body = await post(http, fed, data)
    assert fault_of(body)[0] in ("Client.InvalidRequest", "Client.InvalidSoap")


async def test_answer_for_another_message_is_refused(fed: Fed, http: aiohttp.ClientSession) -> None:
    status, _, body = await post(http, fed, envelope(echo_body("forge-id")))
    assert status == 500
    code, _, detail = fault_of(body)
    assert code == "Server.ServerProxy.InconsistentResponse"
    uuid.UUID(detail)


# -- protocol errors: each a SOAP Fault with the X-Road code; the node serves on ----------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (envelope(echo_body("x"), protocol="3.1"), "Client.InvalidProtocolVersion"),
        (envelope(echo_body("x"), client=""), "Client.MissingHeaderField"),
        (
            envelope(echo_body("x"), extra_header="<xrd:id>again</xrd:id>"),
            "Client.DuplicateHeaderField",
        ),
        (envelope(f'<e:notEcho xmlns:e="{ECHO_NS}"/>'), "Client.InvalidSoap"),
        (envelope(echo_body("x"), client=_client_xml(object_type="MEMBER")), "Client.InvalidSoap"),
        (b"<not-soap/>", "Client.InvalidSoap"),
        (
            b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>',
            "Client.InvalidSoap",
        ),
    ],
)  # fmt: skip
async def test_bad_requests_get_client_faults(
    fed: Fed, http: aiohttp.ClientSession, data: bytes, code: str
) -> None:
    status, ctype, body = await post(http, fed, data)
    assert status == 500 and ctype.startswith("text/xml")
    got, message, detail = fault_of(body)
    assert got == code, message
    uuid.UUID(detail)


async def test_wrong_content_type_is_refused(fed: Fed, http: aiohttp.ClientSession) -> None:
    _, _, body = await post(http, fed, envelope(echo_body("x")), "application/soap+xml")
    assert fault_of(body)[0] == "Client.InvalidContentType"
    _, _, body = await post(http, fed, envelope(echo_body("x")), "text/xml; charset=latin-1")
    assert fault_of(body)[0] == "Client.InvalidContentType"


async def test_unauthenticated_client_is_refused(fed: Fed, http: aiohttp.ClientSession) -> None:
    # officeapp must use mTLS; plain HTTP from loopback is not enough.
    data = envelope(echo_body("x"), client=_client_xml(("TH", "GOV", "DGA", "officeapp")))
    _, _, body = await post(http, fed, data)
    assert fault_of(body)[0].startswith("Server.ClientProxy.")


async def test_access_rights_and_unknown_services_are_server_proxy_faults(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    data = envelope(echo_body("x"), client=_client_xml(("TH", "GOV", "DGA", "citizenportal")))
    # citizenportal authenticates with a JWT at the node's HTTPS listener.
    async with http.post(
        fed.url("TH/GOV/DGA/hub1", "client_tls") + "/",
        data=data,
        headers={"Content-Type": "text/xml", "Authorization": f"Bearer {fed.token()}"},
        ssl=fed.client_ssl(),
    ) as r:
        body = await r.read()
    assert fault_of(body)[0] == "Server.ServerProxy.AccessDenied"
    nothing = f'<e:nothing xmlns:e="{ECHO_NS}"/>'
    _, _, body = await post(http, fed, envelope(nothing, code="nothing", version=None))
    assert fault_of(body)[0] == "Server.ServerProxy.UnknownService"
    _, _, body = await post(http, fed, envelope(echo_body("x"), version="v9"))
    assert fault_of(body)[0] == "Server.ServerProxy.UnknownService"


HOSTILE = {
    # The node and a service must not read different things from one message.
    "utf7-declaration": envelope(echo_body("x")).replace(b'encoding="UTF-8"', b'encoding="UTF-7"'),
    "second-body": envelope(echo_body("x")).replace(
        b"</SOAP-ENV:Envelope>", b"<SOAP-ENV:Body/></SOAP-ENV:Envelope>"
    ),
    "namespace-bomb": envelope(
        echo_body("x").replace(
            "<e:echo ", "<e:echo " + " ".join(f'xmlns:n{i}="urn:n"' for i in range(5000)) + " "
        )
    ),
    "xxe": (
        b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + envelope(echo_body("&x;"))[38:]
    ),
    "billion-laughs": (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(9)
        )
        + b"]>"
        + envelope(echo_body("&j;"))[38:]
    ),
    "deep-nesting": envelope(echo_body("<a>" * 5000 + "</a>" * 5000)),
    # Above the 1 MiB body limit of the test federation: refused before parsing.
    "huge-text": envelope(echo_body("A" * 1_100_000)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_xml_is_refused_and_the_node_serves_on(
    fed: Fed, http: aiohttp.ClientSession, name: str
) -> None:
    _, _, body = await post(http, fed, io.BytesIO(HOSTILE[name]))
    code, message, _ = fault_of(body)
    assert code in ("Client.InvalidSoap", "Client.BadRequest", "Client.InvalidContentType"), message
    assert b"root:" not in body
    status, _, body = await post(http, fed, envelope(echo_body("still here")))
    assert status == 200 and b"still here" in body


# -- service metadata ----------------------------------------------------------------------


async def test_list_clients_xml_and_json(fed: Fed, http: aiohttp.ClientSession) -> None:
    url = fed.url("TH/GOV/DGA/hub1") + "/listClients"
    async with http.get(url) as r:
        root = parse(await r.read())
    assert etree.QName(root).localname == "clientList"
    codes = {"/".join(el.itertext()) for el in root.iterfind(f"{{{XRD}}}member/{{{XRD}}}id")}
    assert "TH/GOV/DGA/devportal" in codes and "TH/GOV/DBD/legacy" in codes
    async with http.get(url, headers={"Accept": "application/json"}) as r:
        doc = await r.json()
    ids = {(m["id"]["member_code"], m["id"].get("subsystem_code")) for m in doc["member"]}
    assert ("DBD", "xroadsoap") in ids and ("DGA", None) in ids


async def test_soap_list_and_allowed_methods(fed: Fed, http: aiohttp.ClientSession) -> None:
    body = '<xrd:listMethods xmlns:xrd="http://x-road.eu/xsd/xroad.xsd"/>'
    _, _, answer = await post(http, fed, envelope(body, subsystem="legacy", code="listMethods",
                                                  version=None))  # fmt: skip
    codes = {el.findtext(f"{{{IDN}}}serviceCode") for el in parse(answer).iter(f"{{{XRD}}}service")
             if el.getparent().tag != f"{{{SOAP_ENV}}}Header"}  # fmt: skip
    assert {"getPerson", "findPersons", "failAlways"} <= codes
    body = '<xrd:allowedMethods xmlns:xrd="http://x-road.eu/xsd/xroad.xsd"/>'
    data = envelope(
        body,
        subsystem="xroadsoap",
        code="allowedMethods",
        version=None,
        client=_client_xml(("TH", "GOV", "DGA", "devportal")),
    )
    _, _, answer = await post(http, fed, data)
    assert b"<id:serviceCode>echo</id:serviceCode>" in answer


async def test_rest_metaservices(fed: Fed, http: aiohttp.ClientSession) -> None:
    base = fed.url("TH/GOV/DGA/hub1") + "/r1/TH/GOV/DBD/legacy"
    headers = {"X-Road-Client": "TH/GOV/DGA/devportal"}
    async with http.get(base + "/listMethods", headers=headers) as r:
        services = (await r.json())["service"]
    assert {s["service_code"] for s in services} >= {"getPerson", "countChildren"}
    assert all(s["service_type"] == "WSDL" for s in services)
    async with http.get(base + "/getOpenAPI?serviceCode=getPerson", headers=headers) as r:
        assert r.status == 200, await r.text()
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    async with http.get(base + "/getOpenAPI?serviceCode=nope", headers=headers) as r:
        assert r.headers["X-Road-Error"] == "Server.ServerProxy.UnknownService"
    # A REST service registered with an OpenAPI file; one without has none to give.
    rest = fed.url("TH/GOV/DGA/hub1") + "/r1/TH/GOV/DBD/registry"
    async with http.get(rest + "/getOpenAPI?serviceCode=echo", headers=headers) as r:
        assert (await r.json())["info"]["version"] == "v1"
    async with http.get(rest + "/getOpenAPI?serviceCode=restricted", headers=headers) as r:
        assert "no OpenAPI description" in (await r.json())["message"]
    async with http.get(rest + "/listMethods", headers=headers) as r:
        listed = {s["service_code"]: s["service_type"] for s in (await r.json())["service"]}
    assert listed["echo"] == "REST" and "slow" in listed
    async with http.get(rest + "/allowedMethods", headers=headers) as r:
        allowed = {s["service_code"] for s in (await r.json())["service"]}
    # devportal may not call 'restricted', and 'closed' is disabled.
    assert "echo" in allowed and not {"restricted", "closed"} & allowed


# -- the legacy service, bridged -----------------------------------------------------------


def _wsdl_url(fed: Fed, code: str) -> str:
    return (
        fed.url("TH/GOV/DGA/hub1") + "/wsdl?xRoadInstance=TH&memberClass=GOV&memberCode=DBD"
        f"&subsystemCode=legacy&serviceCode={code}&version=v1"
    )


async def test_zeep_builds_its_proxy_from_the_node_and_calls_the_legacy_service(
    fed: Fed,
) -> None:
    """An existing X-Road SOAP client (zeep) works unchanged: WSDL from /wsdl, call through
    two nodes to a legacy service that knows nothing of X-Road."""

    def call() -> tuple[object, list[str]]:
        import requests

        session = requests.Session()
        session.headers["X-Road-Client"] = "TH/GOV/DGA/devportal"  # for GET /wsdl
        settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True)
        client = zeep.Client(
            _wsdl_url(fed, "getPerson"),
            transport=zeep.Transport(session=session),
            settings=settings,
        )
        header = [etree.fromstring(x) for x in _zeep_headers()]
        with client.settings(raw_response=True):
            raw = client.service.getPerson(citizenId="1101700203451", _soapheaders=header)
        result = client.service.getPerson(citizenId="1101700203451", _soapheaders=header)
        return result, header_fields(raw.content)

    result, fields = await asyncio.to_thread(call)
    # With X-Road header parts in the output, zeep returns the body and the headers.
    person = result.body.getPersonResult  # type: ignore[attr-defined]
    assert person.name == "Somchai Jaidee"
    assert str(person.birthDate) == "1985-04-12"
    assert result.header.id is not None  # type: ignore[attr-defined]
    assert fields[-1] == "requestHash"


def _zeep_headers() -> list[str]:
    ns = f'xmlns:xrd="{XRD}" xmlns:id="{IDN}"'
    return [
        _client_xml().replace("<xrd:client ", f"<xrd:client {ns} "),
        _service_xml("legacy", "getPerson", "v1").replace("<xrd:service ", f"<xrd:service {ns} "),
        f"<xrd:id {ns}>{uuid.uuid4()}</xrd:id>",
        f"<xrd:protocolVersion {ns}>4.0</xrd:protocolVersion>",
    ]


def _get_person(cid: str) -> str:
    return f'<p:getPerson xmlns:p="{LEGACY_NS}"><p:citizenId>{cid}</p:citizenId></p:getPerson>'


async def test_bridged_soap_call_and_legacy_fault(fed: Fed, http: aiohttp.ClientSession) -> None:
    body = _get_person("1101700203451")
    status, _, answer = await post(http, fed, envelope(body, subsystem="legacy", code="getPerson",
                                                       version="v1"))  # fmt: skip
    assert status == 200, answer
    root = parse(answer)
    assert etree.QName(root.find(f"{{{SOAP_ENV}}}Body")[0]).localname == "getPersonResponse"
    assert root.findtext(f".//{{{LEGACY_NS}}}name") == "Somchai Jaidee"
    body = _get_person("1000000000000")
    status, _, answer = await post(http, fed, envelope(body, subsystem="legacy", code="getPerson",
                                                       version="v1"))  # fmt: skip
    assert status == 500
    code, message, _ = fault_of(answer)
    assert code.endswith("Client.NotFound") and "1000000000000" in message


async def test_rest_json_is_bridged_to_the_legacy_soap_service(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    base = fed.url("TH/GOV/DGA/hub1") + "/r1/TH/GOV/DBD/legacy"
    headers = {"X-Road-Client": "TH/GOV/DGA/devportal"}
    async with http.get(base + "/getPerson?citizenId=1101700203451", headers=headers) as r:
        assert r.status == 200, await r.text()
        answer = await r.json()
    # The JSON is the answer wrapper's content, typed by the WSDL's schema.
    person = answer["getPersonResult"]
    assert person["name"] == "Somchai Jaidee" and person["birthDate"] == "1985-04-12"
    assert person["alive"] is True and person["income"] == "12345.67"
    async with http.post(
        base + "/findPersons",
        json={"citizenIds": {"Mandatorystring": ["1101700203451"]}},
        headers=headers,
    ) as r:
        assert r.status == 200, await r.text()
        found = await r.json()
    assert "Somchai Jaidee" in str(found)
    async with http.post(base + "/failAlways", json={"reason": "x"}, headers=headers) as r:
        # A legacy fault is the service's own answer (category 1), not an X-Road error.
        assert r.status == 500 and "X-Road-Error" not in r.headers
        assert "legacy failure" in await r.text()


async def test_purpose_travels_in_a_soap_header_of_our_own(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    body = _get_person("1101700203451")
    plain = envelope(body, subsystem="legacypurpose", code="getPerson", version="v1")
    _, _, answer = await post(http, fed, plain)
    code, message, _ = fault_of(answer)
    assert code == "Server.ServerProxy.AccessDenied" and "food-business-licence" in message
    purpose = (
        '<xh:purpose xmlns:xh="urn:xroad-hub:xsd:purpose:1">food-business-licence</xh:purpose>'
        '<xh:legalBasis xmlns:xh="urn:xroad-hub:xsd:purpose:1">Public Health Act s.38'
        "</xh:legalBasis>"
    )
    with_purpose = envelope(
        body, subsystem="legacypurpose", code="getPerson", version="v1", extra_header=purpose
    )
    status, _, answer = await post(http, fed, with_purpose)
    assert status == 200, answer
    # The purpose is echoed like every header field of the request.
    assert parse(answer).findtext(".//{urn:xroad-hub:xsd:purpose:1}purpose") == (
        "food-business-licence"
    )


def _with(
    message_id: str, text: str = "1552806801307", *, user: str = "TH-officer-7", extra: str = ""
) -> bytes:
    data = envelope(echo_body(text), message_id=message_id, extra_header=extra)
    return data.replace(b"<xrd:userId>TH-officer-7<", f"<xrd:userId>{user}<".encode())


XSI = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
# Each reads one way to the node (lxml, comments dropped, text joined) and another way to a
# service that takes an element's first text node, keeps comments, knows xsi:nil or matches
# header names without namespaces: the node would log one person and the service serve
# another. The node must refuse them, not forward them.
AMBIGUOUS = {
    "comment-in-subject": {"text": "155280680130<!-- -->70"},
    "comment-in-userId": {"user": "TH-officer-7<!---->-on-leave"},
    "comment-before-text": {"text": "<!-- x -->1552806801307"},
    "pi-in-subject": {"text": "155280680130<?x y?>70"},
    "cdata-split-subject": {"text": "155280680130<![CDATA[70]]>"},
    "mixed-content": {"text": "1552806801307<e:b/>0"},
    "nil-with-content": {"text": "1552806801307"},
    "blanks-around-userId": {"user": " TH-officer-7 "},
    "userId-in-other-namespace": {
        "extra": '<u:userId xmlns:u="urn:other">TH-officer-7-on-leave</u:userId>'
    },
}


@pytest.mark.parametrize("name", sorted(AMBIGUOUS))
async def test_what_readers_read_differently_never_reaches_the_service(
    fed: Fed, http: aiohttp.ClientSession, name: str
) -> None:
    mid = f"ambiguous-{name}-{uuid.uuid4()}"
    data = _with(mid, **AMBIGUOUS[name])
    if name == "nil-with-content":
        data = data.replace(b"<e:text>", f'<e:text {XSI} xsi:nil="true">'.encode())
    status, _, body = await post(http, fed, data)
    code, message, _ = fault_of(body)
    assert (status, code) == (500, "Client.InvalidSoap"), message
    assert mid not in RECEIVED
    assert await fed.federation.nodes["TH/GOV/DBD/hub1"].runtime.log.find(mid) == []


async def test_the_service_reads_what_the_node_checked_and_logged(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    # Comments between elements (SoapUI writes <!--Optional:-->) and a CDATA section that
    # is an element's whole text read alike everywhere: they pass, byte for byte.
    mid = f"same-reading-{uuid.uuid4()}"
    data = _with(mid, "<![CDATA[1552806801307]]>").replace(
        b"<xrd:userId>", b"<!--Optional:--><xrd:userId>"
    )
    status, _, body = await post(http, fed, data)
    assert status == 200, body
    rows = await fed.federation.nodes["TH/GOV/DBD/hub1"].runtime.log.find(mid)
    assert RECEIVED[mid]["userId"] == rows[0]["user_id"] == "TH-officer-7"
    assert [RECEIVED[mid]["text"]] == orjson.loads(rows[0]["subjects"]) == ["1552806801307"]


async def test_the_client_soap_action_never_reaches_the_service(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    """A SOAP stack that dispatches on SOAPAction would run the operation the client names;
    the service gets the one of the operation the node checked (from its WSDL)."""
    mid = f"action-{uuid.uuid4()}"
    status, _, body = await post(
        http, fed, _with(mid, "x"), SOAPAction='"urn:example:deleteEverything"'
    )
    assert status == 200, body
    assert RECEIVED[mid]["soapAction"] == '"echo"'
    # SOAP 1.1 (and X-Road) allow only a quoted URI reference, "" or nothing.
    mid = f"action-{uuid.uuid4()}"
    status, _, body = await post(http, fed, _with(mid, "x"), SOAPAction="deleteEverything")
    assert fault_of(body)[0] == "Client.InvalidSoapAction"
    assert mid not in RECEIVED


async def test_soap_part_must_not_be_transfer_encoded(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    boundary = "b64"
    soap = base64.b64encode(envelope(echo_body("x")))
    data = (
        (
            f"--{boundary}\r\nContent-Type: text/xml; charset=UTF-8\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + soap
        + f"\r\n--{boundary}--\r\n".encode()
    )
    ctype = f'multipart/related; type="text/xml"; boundary="{boundary}"'
    _, _, body = await post(http, fed, data, ctype)
    assert fault_of(body)[0] == "Client.InvalidSoap"
    # A decoy parameter named like the boundary does not fool the node's multipart parser.
    decoy = f'multipart/related; type="text/xml"; xboundary="nope"; boundary="{boundary}"'
    plain = (
        f"--{boundary}\r\nContent-Type: text/xml; charset=UTF-8\r\n\r\n".encode()
        + envelope(echo_body("decoy"))
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, body = await post(http, fed, plain, decoy)
    assert status == 200 and b"decoy" in body


async def test_xroad_example_wsdl_is_registered_and_served_without_fetching_its_imports(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    """A pass-through service described the way X-Road's specification shows it (xroad.xsd
    imported by URL): the node registered it at start, and nobody fetched a schema."""
    url = (
        fed.url("TH/GOV/DGA/hub1") + "/wsdl?xRoadInstance=TH&memberClass=GOV&memberCode=DBD"
        "&subsystemCode=xroadexample&serviceCode=exampleService&version=v1"
    )
    async with http.get(url, headers={"X-Road-Client": "TH/GOV/DGA/devportal"}) as r:
        assert r.status == 200, await r.text()
        served = parse(await r.read())
    imports = served.findall(".//{http://www.w3.org/2001/XMLSchema}import")
    assert {i.get("namespace") for i in imports} >= {XRD}
    body = (
        '<ns1:exampleService xmlns:ns1="http://producer.x-road.eu">'
        "<exampleInput>foo</exampleInput></ns1:exampleService>"
    )
    data = envelope(body, subsystem="xroadexample", code="exampleService", version="v1")
    status, _, answer = await post(http, fed, data)
    assert status == 200, answer
    assert parse(answer).find(f"{{{SOAP_ENV}}}Body")[0].tag == (
        "{http://producer.x-road.eu}exampleServiceResponse"
    )
    assert SCHEMA_FETCHES == []


def _wsdl_of(fed: Fed, subsystem: str, code: str, listener: str = "client") -> str:
    return (
        fed.url("TH/GOV/DGA/hub1", listener) + "/wsdl?xRoadInstance=TH&memberClass=GOV"
        f"&memberCode=DBD&subsystemCode={subsystem}&serviceCode={code}&version=v1"
    )


async def test_wsdl_needs_no_client_and_its_address_is_the_node_own(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    """SOAP tools fetch a WSDL by URL alone, and send their requests where its soap:address
    says: the node's configured address, whatever Host header a request carried."""
    address = "{http://schemas.xmlsoap.org/wsdl/soap/}address"
    async with http.get(
        _wsdl_of(fed, "legacy", "getPerson"), headers={"Host": "evil.example"}
    ) as r:
        assert r.status == 200, await r.text()
        served = parse(await r.read())
    assert served.find(f".//{address}").get("location") == fed.url("TH/GOV/DGA/hub1") + "/"
    # A pass-through service's WSDL never shows the service's internal address, not even to
    # the metaservice's own callers.
    rest = fed.url("TH/GOV/DGA/hub1") + "/r1/TH/GOV/DBD/xroadsoap/getWsdl?serviceCode=echo"
    async with http.get(rest, headers={"X-Road-Client": "TH/GOV/DGA/devportal"}) as r:
        assert r.status == 200
        raw = await r.read()
    assert b"127.0.0.1:1/echo" not in raw and b"<soap:address" in raw


async def test_unmodified_zeep_client_is_served_with_its_registered_default_purpose(
    fed: Fed,
) -> None:
    """officeapp's registration gives a default purpose: a zeep client built from the served
    WSDL (fetched without X-Road-Client), calling a service that requires a purpose, sends
    none and is served; the signed, logged request says the purpose was the default."""
    message_id = str(uuid.uuid4())
    office = ("TH", "GOV", "DGA", "officeapp")

    def call() -> tuple[int, bytes, list[str]]:
        import requests

        session = requests.Session()
        tls = fed.pki.client_tls("TH/GOV/DGA/officeapp")
        session.cert = (str(tls.cert), str(tls.key))
        session.verify = str(fed.pki.root_ca.cert)
        session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True)
        client = zeep.Client(
            _wsdl_of(fed, "legacypurpose", "getPerson", "client_tls"),
            transport=zeep.Transport(session=session),
            settings=settings,
        )
        names = ("xRoadInstance", "memberClass", "memberCode", "subsystemCode")
        headers = {
            "client": {"objectType": "SUBSYSTEM", **dict(zip(names, office, strict=True))},
            "service": {
                "objectType": "SERVICE",
                **dict(zip(names, ("TH", "GOV", "DBD", "legacypurpose"), strict=True)),
                "serviceCode": "getPerson",
                "serviceVersion": "v1",
            },
            "id": message_id,
            "protocolVersion": "4.0",
        }
        with client.settings(raw_response=True):
            raw = client.service.getPerson(citizenId="1101700203451", _soapheaders=headers)
        session.close()  # no TLS connection left open to the node when it stops
        return raw.status_code, raw.content, header_fields(raw.content)

    status, body, fields = await asyncio.to_thread(call)
    assert status == 200, body
    assert b"Somchai Jaidee" in body and "purpose" not in fields
    rows = await fed.federation.nodes["TH/GOV/DBD/hub1"].runtime.log.find(message_id)
    signed = orjson.loads(rows[0]["request_meta"])
    assert signed["purpose"] == "food-business-licence"
    assert signed["legal_basis"] == "Public Health Act B.E. 2535 s.38"
    assert signed["purpose_default"] is True
    # A request that names its purpose is signed as it named it, without the flag.
    explicit = envelope(
        _get_person("1101700203451"),
        subsystem="legacypurpose",
        code="getPerson",
        version="v1",
        message_id=(mid := str(uuid.uuid4())),
        extra_header='<xh:purpose xmlns:xh="urn:xroad-hub:xsd:purpose:1">food-business-licence'
        "</xh:purpose>",
    )
    async with aiohttp.ClientSession() as http:
        status, _, answer = await post(http, fed, explicit)
    assert status == 200, answer
    rows = await fed.federation.nodes["TH/GOV/DBD/hub1"].runtime.log.find(mid)
    assert "purpose_default" not in orjson.loads(rows[0]["request_meta"])


async def test_endpoints_list_the_soap_operations_registered_from_a_wsdl(fed: Fed) -> None:
    written = orjson.loads((fed.root / "data" / "endpoints.json").read_bytes())
    services = written["nodes"]["TH/GOV/DBD/hub1"]["services"]
    assert {"TH/GOV/DBD/legacy/getPerson", "TH/GOV/DBD/xroadsoap/echo"} <= set(services)
    assert "TH/GOV/DBD/registry/echo" in services


async def test_the_evidence_api_is_no_soap_endpoint(fed: Fed, http: aiohttp.ClientSession) -> None:
    """SOAP clients may POST to any path of the client listener but /r1/ and /evidence: the
    evidence API (a sub-application, GET only) answers a POST with 405, naming GET."""
    node = fed.url("TH/GOV/DGA/hub1")
    request = envelope(echo_body("not evidence"))
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    for path in ("/evidence", "/evidence/echo_query/3101700123457"):
        async with http.post(node + path, data=request, headers=headers) as r:
            assert r.status == 405, await r.read()
            assert "GET" in r.headers["Allow"].split(",")
    # Beside it, the SOAP endpoint is where it was.
    async with http.post(node + "/evidence-not", data=request, headers=headers) as r:
        assert r.status == 200 and b"not evidence" in await r.read()
