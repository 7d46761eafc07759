"""WSDL analysis and the metadata made from it: the rules X-Road needs, fetching, the X-Road
WSDL for SOAP clients (checked with zeep) and the OpenAPI description for REST clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from lxml import etree

from adapters.soap import (
    CLIENT_NODE_PLACEHOLDER,
    WsdlError,
    fetch_wsdl,
    load_wsdl,
    openapi_for,
    xroad_wsdl,
    zeep_client,
)
from adapters.soap.jsonmap import json_schema
from adapters.soap.wsdl import ID_NS, XROAD_NS
from xroad_hub.protocol.identifiers import MemberId, ServiceId, SubsystemId
from xroad_hub.protocol.soap import identifier_element

from .soap_legacy import LEGACY_NS, LegacyServer, legacy_server

DATA = Path(__file__).parent / "data" / "soap"
TAX = (DATA / "taxclearance.wsdl").read_bytes()
TAX_NS = "urn:example:rd:tax"
PROVIDER = SubsystemId("TH", "GOV", "DOPA", "population")


@pytest.fixture(scope="module")
def legacy() -> Iterator[LegacyServer]:
    with legacy_server() as server:
        yield server


@pytest.fixture(scope="module")
async def spyne_wsdl(legacy: LegacyServer) -> bytes:
    return await fetch_wsdl(legacy.wsdl_url, timeout=10)


# --- analysis -----------------------------------------------------------------------------


def test_spyne_wsdl_fetched_over_http_is_analysed(legacy: LegacyServer, spyne_wsdl: bytes) -> None:
    info = load_wsdl(spyne_wsdl, legacy.wsdl_url)
    assert info.target_namespace == LEGACY_NS
    assert info.endpoint == legacy.url
    assert info.service_name == "PopulationService"
    assert info.xroad_headers is False
    assert set(info.operations) == {"getPerson", "countChildren", "findPersons", "failAlways"}
    op = info.operation("getPerson")
    assert op.input_element == etree.QName(LEGACY_NS, "getPerson")
    assert op.output_element == etree.QName(LEGACY_NS, "getPersonResponse")
    assert op.soap_action == "getPerson"
    assert op.version is None  # the registration's default applies
    assert op.notes == "Population register entry of one citizen."  # plain documentation
    assert op.title is None


def test_handwritten_wsdl_versions_titles_and_actions() -> None:
    info = load_wsdl(TAX, "taxclearance.wsdl")
    assert info.endpoint == "http://legacy.rd.example/tax"
    check = info.operation("checkClearance")
    assert check.version == "v2"
    assert check.title == "Tax clearance of a taxpayer"
    assert check.notes == "Whether the taxpayer owes nothing."
    assert check.soap_action == "urn:example:rd:tax#checkClearance"
    filing = info.operation("fileReturn")
    assert (filing.version, filing.title, filing.soap_action) == (None, None, "")
    with pytest.raises(WsdlError, match="no operation 'nope'"):
        info.operation("nope")


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("bad-rpc.wsdl", "binding style is rpc; X-Road needs document/literal wrapped"),
        ("bad-encoded.wsdl", "soap:body use must be literal"),
        (
            "bad-wrapper-name.wsdl",
            "the request wrapper element must be named like the operation "
            r"\(X-Road: wrapper = serviceCode\)",
        ),
        ("bad-soap12.wsdl", "only SOAP 1.2 bindings found; X-Road SOAP is SOAP 1.1"),
        ("bad-xxe.wsdl", "DOCTYPE is refused"),
    ],
)
def test_bad_wsdl_files_are_refused_naming_the_rule(name: str, rule: str) -> None:
    with pytest.raises(WsdlError, match=rule) as info:
        load_wsdl((DATA / name).read_bytes(), name)
    assert str(info.value).startswith(f"{name}: ")


def _mutated(*replacements: tuple[str, str]) -> bytes:
    text = TAX.decode()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text.encode()


CHECK_IN = '<wsdl:part name="parameters" element="rd:checkClearance"/>'
CHECK_OUT = '<wsdl:part name="parameters" element="rd:checkClearanceResponse"/>'
TYPES_START = '<xsd:schema targetNamespace="urn:example:rd:tax" elementFormDefault="qualified">'
CHECK_BINDING_IN = '<wsdl:input><soap:body use="literal"/></wsdl:input>'


@pytest.mark.parametrize(
    ("replacements", "rule"),
    [
        (
            [(CHECK_IN, CHECK_IN + '<wsdl:part name="extra" element="rd:fileReturn"/>')],
            "input message of checkClearance must have exactly one part referencing an element",
        ),
        (
            [(CHECK_IN, '<wsdl:part name="taxId" type="xsd:string"/>')],
            "input message of checkClearance must have exactly one part referencing an element",
        ),
        (
            [
                ('<xsd:element name="checkClearanceResponse">', '<xsd:element name="clearance">'),
                (CHECK_OUT, '<wsdl:part name="parameters" element="rd:clearance"/>'),
            ],
            "response wrapper must be named checkClearanceResponse",
        ),
        (
            [(CHECK_OUT, '<wsdl:part name="parameters" element="rd:undeclared"/>')],
            "element {urn:example:rd:tax}undeclared .* is not declared in wsdl:types",
        ),
        (
            [
                ('<xsd:element name="checkClearanceResponse">', '<xsd:element name="unused">'),
                (
                    TYPES_START,
                    TYPES_START + '<xsd:element name="checkClearanceResponse" type="xsd:string"/>',
                ),
            ],
            "the wrapper must be a complex type",
        ),
        (
            [
                (
                    "<wsdl:types>",
                    '<wsdl:import namespace="urn:x" location="http://evil/x.wsdl"/><wsdl:types>',
                )
            ],
            "wsdl:import of 'http://evil/x.wsdl' is refused: the WSDL must be self-contained",
        ),
        (
            [(TYPES_START, TYPES_START + '<xsd:include schemaLocation="http://evil/x.xsd"/>')],
            "xsd:include of 'http://evil/x.xsd' is refused",
        ),
        (
            [
                (
                    CHECK_BINDING_IN,
                    '<wsdl:input><soap:body use="literal"/>'
                    '<soap:header message="rd:fileReturnIn" part="parameters" use="literal"/>'
                    "</wsdl:input>",
                )
            ],
            "declares a soap:header that is not an X-Road header field",
        ),
        (
            [('<wsdl:output message="rd:checkClearanceOut"/>', "")],
            "operation checkClearance has no output; X-Road services are request-response",
        ),
        (
            [(' targetNamespace="urn:example:rd:tax" name=', " name=")],
            "no targetNamespace",
        ),
        (
            [('<soap:operation soapAction=""/>', '<soap:operation style="rpc"/>')],
            "operation fileReturn: binding style is rpc",
        ),
        (
            [('<soap:operation soapAction=""/>', '<soap:operation soapAction="a&#10;X-Evil: 1"/>')],
            "operation fileReturn: soapAction 'a.nX-Evil: 1' cannot be sent as an HTTP header",
        ),
        (
            [('<soap:operation soapAction=""/>', "<soap:operation soapAction='a\"b'/>")],
            "cannot be sent as an HTTP header",
        ),
        (
            [("http://schemas.xmlsoap.org/soap/http", "http://schemas.xmlsoap.org/soap/smtp")],
            "is not SOAP over HTTP",
        ),
        (
            [
                (
                    '<wsdl:operation name="fileReturn">\n      <soap:',
                    '<wsdl:operation name="file_return">\n      <soap:',
                )
            ],
            "operation name 'file_return' cannot be an X-Road service code",
        ),
    ],
)
def test_rule_violations_are_refused(replacements: list[tuple[str, str]], rule: str) -> None:
    with pytest.raises(WsdlError, match=rule):
        load_wsdl(_mutated(*replacements), "mutated.wsdl")


def test_not_a_wsdl_1_1_document() -> None:
    with pytest.raises(WsdlError, match=r"WSDL 2\.0 is not supported"):
        load_wsdl(b'<description xmlns="http://www.w3.org/ns/wsdl"/>', "w2")
    with pytest.raises(WsdlError, match=r"not a WSDL 1\.1 document"):
        load_wsdl(b"<html/>", "page")
    with pytest.raises(WsdlError, match="not acceptable XML"):
        load_wsdl(b"<definitions", "broken")


def test_xroad_specification_example_wsdl_is_accepted() -> None:
    """PR-MESS Annex C imports xroad.xsd, swaref.xsd and xmlmime by URL: well-known
    namespaces, never fetched (load_wsdl does no I/O); other imports by URL stay refused."""
    data = (Path(__file__).parent / "data" / "xroad" / "pr-mess-example.wsdl").read_bytes()
    info = load_wsdl(data, "pr-mess")
    assert set(info.operations) == {"exampleService", "exampleServiceMtom"}
    assert info.xroad_headers and info.operation("exampleService").version == "v1"
    assert info.operation("exampleService").title == "Title of exampleService"
    other = data.replace(
        b'namespace="http://x-road.eu/xsd/xroad.xsd"', b'namespace="urn:not-x-road"', 1
    )
    with pytest.raises(WsdlError, match=r"xsd:import of 'http://x-road\.eu/xsd/xroad\.xsd'"):
        load_wsdl(other, "other")


def test_zeep_never_loads_what_a_wsdl_refers_to() -> None:
    # Even past load_wsdl, the zeep client's transport refuses to fetch anything.
    sneaky = _mutated(
        (TYPES_START, TYPES_START + '<xsd:import namespace="urn:e" schemaLocation="e.xsd"/>')
    )
    with pytest.raises(WsdlError, match="external document"):
        zeep_client(sneaky)
    with pytest.raises(WsdlError, match="DOCTYPE"):
        zeep_client((DATA / "bad-xxe.wsdl").read_bytes())


# --- fetching -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def wsdl_http() -> AsyncIterator[str]:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"<a>" + b" " * 4096 + b"</a>", content_type="text/xml")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/moved", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_fetch_wsdl_from_files(tmp_path: Path) -> None:
    path = tmp_path / "service.wsdl"
    path.write_bytes(TAX)
    assert await fetch_wsdl(str(path), timeout=5) == TAX
    assert await fetch_wsdl(path.as_uri(), timeout=5) == TAX
    with pytest.raises(WsdlError, match="cannot read the WSDL file"):
        await fetch_wsdl(str(tmp_path / "missing.wsdl"), timeout=5)
    with pytest.raises(WsdlError, match="larger than 100 bytes"):
        await fetch_wsdl(str(path), timeout=5, max_bytes=100)


async def test_fetch_wsdl_over_http_errors(wsdl_http: str) -> None:
    with pytest.raises(WsdlError, match="HTTP 404"):
        await fetch_wsdl(wsdl_http + "/nothing", timeout=5)
    with pytest.raises(WsdlError, match=r"HTTP 302 \(redirect to /elsewhere; register the final"):
        await fetch_wsdl(wsdl_http + "/moved", timeout=5)
    with pytest.raises(WsdlError, match="larger than 1000 bytes"):
        await fetch_wsdl(wsdl_http + "/big", timeout=5, max_bytes=1000)
    with pytest.raises(WsdlError, match="cannot fetch a WSDL over ftp"):
        await fetch_wsdl("ftp://example.org/x.wsdl", timeout=5)


# --- the X-Road WSDL ----------------------------------------------------------------------

XRD = f"{{{XROAD_NS}}}"
IDS = f"{{{ID_NS}}}"


def _header_dict(service_code: str) -> dict[str, Any]:
    return {
        "client": {
            "objectType": "SUBSYSTEM",
            "xRoadInstance": "TH",
            "memberClass": "GOV",
            "memberCode": "DGA",
            "subsystemCode": "portal",
        },
        "service": {
            "objectType": "SERVICE",
            "xRoadInstance": "TH",
            "memberClass": "GOV",
            "memberCode": "DOPA",
            "subsystemCode": "population",
            "serviceCode": service_code,
            "serviceVersion": "v1",
        },
        "id": "0f7e1e1c-7e2c-4c55-a4a3-3e2b1b6c7d10",
        "userId": "TH1101700203451",
        "protocolVersion": "4.0",
    }


def test_xroad_wsdl_of_spyne_service_declares_the_headers(spyne_wsdl: bytes) -> None:
    info = load_wsdl(spyne_wsdl, "spyne")
    published = xroad_wsdl(info, spyne_wsdl, PROVIDER, "v1")
    again = load_wsdl(published, "published")
    assert again.xroad_headers is True
    assert again.endpoint == CLIENT_NODE_PLACEHOLDER
    assert {op.version for op in again.operations.values()} == {"v1"}
    assert set(again.operations) == set(info.operations)

    root = etree.fromstring(published)
    for io in root.iter("{http://schemas.xmlsoap.org/wsdl/}input"):
        if io.getparent().getparent().tag.endswith("binding"):
            parts = [h.get("part") for h in io if h.tag.endswith("header")]
            assert parts == [
                "client",
                "service",
                "id",
                "userId",
                "issue",
                "protocolVersion",
                "purpose",  # xroad-hub's own, optional (urn:xroad-hub:xsd:purpose:1)
                "legalBasis",
            ]

    client = zeep_client(published)
    envelope = client.create_message(
        client.service,
        "getPerson",
        citizenId="1101700203451",
        _soapheaders=_header_dict("getPerson"),
    )
    header = envelope.find("{http://schemas.xmlsoap.org/soap/envelope/}Header")
    assert [etree.QName(el).localname for el in header] == [
        "client",
        "service",
        "id",
        "userId",
        "protocolVersion",
    ]
    assert all(etree.QName(el).namespace == XROAD_NS for el in header)
    service = header.find(f"{XRD}service")
    assert service.get(f"{IDS}objectType") == "SERVICE"
    assert [etree.QName(c).localname for c in service] == [
        "xRoadInstance",
        "memberClass",
        "memberCode",
        "subsystemCode",
        "serviceCode",
        "serviceVersion",
    ]
    assert all(etree.QName(c).namespace == ID_NS for c in service)
    assert header.findtext(f"{XRD}protocolVersion") == "4.0"
    body = envelope.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
    assert body[0].tag == f"{{{LEGACY_NS}}}getPerson"


def test_xroad_wsdl_headers_as_lxml_elements(spyne_wsdl: bytes) -> None:
    info = load_wsdl(spyne_wsdl, "spyne")
    client = zeep_client(xroad_wsdl(info, spyne_wsdl, PROVIDER, None))
    id_el = etree.Element(f"{XRD}id")
    id_el.text = "abc"
    headers = [
        identifier_element("client", MemberId("TH", "GOV", "DGA")),
        identifier_element("service", ServiceId(PROVIDER, "countChildren")),
        id_el,
    ]
    envelope = client.create_message(
        client.service, "countChildren", citizenId="1", _soapheaders=headers
    )
    header = envelope.find("{http://schemas.xmlsoap.org/soap/envelope/}Header")
    assert header.find(f"{XRD}client").get(f"{IDS}objectType") == "MEMBER"
    assert header.find(f"{XRD}service").findtext(f"{IDS}serviceCode") == "countChildren"
    assert header.findtext(f"{XRD}id") == "abc"


def test_xroad_wsdl_keeps_legacy_prefixes_and_versions() -> None:
    # taxclearance.wsdl binds xs, xrd and tns to unrelated namespaces: the additions must not
    # rely on those prefixes.
    info = load_wsdl(TAX, "tax")
    published = xroad_wsdl(info, TAX, PROVIDER, "v1", operations=["checkClearance"])
    again = load_wsdl(published, "published")
    assert list(again.operations) == ["checkClearance"]
    assert again.operation("checkClearance").version == "v2"  # the WSDL's own wins
    assert again.operation("checkClearance").title == "Tax clearance of a taxpayer"
    client = zeep_client(published)
    envelope = client.create_message(
        client.service, "checkClearance", taxId="0105551234567", _soapheaders=_header_dict("x")
    )
    assert envelope.find(f".//{XRD}client/{IDS}memberCode").text == "DGA"
    everything = xroad_wsdl(info, TAX, None, "v7")
    assert load_wsdl(everything, "all").operation("fileReturn").version == "v7"


def test_xroad_wsdl_refusals() -> None:
    info = load_wsdl(TAX, "tax")
    with pytest.raises(WsdlError, match="no operation"):
        xroad_wsdl(info, TAX, None, None, operations=["nope"])
    published = xroad_wsdl(info, TAX, None, None)
    aware = load_wsdl(published, "aware")
    with pytest.raises(WsdlError, match="already declares X-Road headers"):
        xroad_wsdl(aware, published, None, None)


# --- OpenAPI ------------------------------------------------------------------------------


def _validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    converted = json_schema(schema)
    jsonschema.Draft7Validator.check_schema(converted)
    return jsonschema.Draft7Validator(converted)


def test_openapi_of_spyne_service(spyne_wsdl: bytes) -> None:
    info = load_wsdl(spyne_wsdl, "spyne")
    doc = openapi_for(
        info,
        zeep_client(spyne_wsdl),
        version="v1",
        server_url="https://node.example/r1/TH/GOV/DOPA/population",
    )
    assert doc["openapi"].startswith("3.0")
    assert doc["servers"] == [{"url": "https://node.example/r1/TH/GOV/DOPA/population"}]
    assert set(doc["paths"]) == {"/getPerson", "/countChildren", "/findPersons", "/failAlways"}
    get_person = doc["paths"]["/getPerson"]
    assert get_person["post"]["description"] == "Population register entry of one citizen."
    assert [p["name"] for p in get_person["get"]["parameters"]] == ["citizenId"]
    assert "get" not in doc["paths"]["/findPersons"]  # its input is nested
    count = doc["paths"]["/countChildren"]["get"]["parameters"]
    assert {p["name"]: p["required"] for p in count} == {
        "citizenId": True,
        "bornAfterYear": False,
        "asOf": False,
    }

    request = _validator(get_person["post"]["requestBody"]["content"]["application/json"]["schema"])
    assert request.is_valid({"citizenId": "1101700203451"})
    assert not request.is_valid({})
    assert not request.is_valid({"citizenId": 1101700203451})
    assert not request.is_valid({"citizenId": "1", "extra": True})

    response = get_person["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    person = response["properties"]["getPersonResult"]
    assert person["nullable"] is True
    props = person["properties"]
    assert props["birthDate"]["format"] == "date"
    assert props["registered"]["format"] == "date-time"
    assert props["income"]["type"] == "string"  # decimals are answered as exact strings
    assert props["alive"]["type"] == "boolean"
    assert props["address"]["required"] == ["province"]
    assert props["phones"]["properties"]["string"]["type"] == "array"
    _validator(response)


def test_openapi_type_mapping_of_handwritten_wsdl() -> None:
    info = load_wsdl(TAX, "tax")
    doc = openapi_for(info, zeep_client(TAX), title="Tax clearance", operations=["checkClearance"])
    assert doc["info"]["title"] == "Tax clearance"
    assert list(doc["paths"]) == ["/checkClearance"]
    post = doc["paths"]["/checkClearance"]["post"]
    assert post["summary"] == "Tax clearance of a taxpayer"
    assert post["x-xroad-service-version"] == "v2"
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    props = schema["properties"]
    assert schema["required"] == ["taxId"]
    assert schema["additionalProperties"] is False
    assert props["year"]["type"] == "integer" and props["year"]["format"] == "int32"
    assert props["branch"]["type"] == "array" and props["branch"]["maxItems"] == 5
    assert props["branch"]["items"]["format"] == "int64"
    assert props["strict"]["type"] == "boolean"
    validator = _validator(schema)
    assert validator.is_valid({"taxId": "0105551234567", "year": 2024, "branch": [1, 2]})
    assert validator.is_valid({"taxId": "x", "asOf": "2024-06-30", "strict": None})
    assert not validator.is_valid({"taxId": "x", "year": 2**40})  # beyond xsd:int
    assert not validator.is_valid({"taxId": "x", "branch": [1, 2, 3, 4, 5, 6]})
    assert not validator.is_valid({"taxId": "x", "asOf": "30/06/2024"})
    assert not validator.is_valid({"taxId": "x", "strict": "yes"})
    get_params = {p["name"]: p for p in doc["paths"]["/checkClearance"]["get"]["parameters"]}
    assert get_params["branch"]["explode"] is True

    filing = openapi_for(info, zeep_client(TAX), operations=["fileReturn"])["paths"]
    body = filing["/fileReturn"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    period = body["properties"]["period"]
    assert period["type"] == "object" and period["required"] == ["from"]
    assert body["properties"]["attachment"]["format"] == "byte"
    amount = _validator(body["properties"]["amount"])
    assert amount.is_valid(12.5) and amount.is_valid("12.50")
    assert not amount.is_valid("12,50")
    assert "get" not in filing["/fileReturn"]
