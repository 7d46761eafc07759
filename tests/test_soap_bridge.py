"""The SOAP adapters against real servers: a legacy service (spyne's WSDL) bridged to REST
(JSON) and to X-Road SOAP clients, misbehaving services, and the byte-exact pass-through."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jsonschema
import pytest
import zeep
from aiohttp import web
from lxml import etree

from adapters.base import AdapterRequest, AdapterResponse
from adapters.soap import (
    SoapBridgeAdapter,
    SoapPassthroughAdapter,
    WsdlInfo,
    fetch_wsdl,
    load_wsdl,
    openapi_for,
    xroad_wsdl,
    zeep_client,
)
from adapters.soap.jsonmap import json_schema
from xroad_hub.dev.testing import free_port
from xroad_hub.errors import XRoadError
from xroad_hub.protocol.soap import check_echo, parse_soap

from .conftest import kinds_server
from .soap_legacy import LEGACY_NS, LegacyServer, legacy_server

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
JSON = (("Content-Type", "application/json"),)
CITIZEN = "1101700203451"


@pytest.fixture(scope="module")
def legacy() -> Iterator[LegacyServer]:
    with legacy_server() as server:
        yield server


@pytest.fixture(scope="module")
async def wsdl(legacy: LegacyServer) -> bytes:
    return await fetch_wsdl(legacy.wsdl_url, timeout=10)


@pytest.fixture(scope="module")
def info(wsdl: bytes, legacy: LegacyServer) -> WsdlInfo:
    return load_wsdl(wsdl, legacy.wsdl_url)


@pytest.fixture(scope="module")
def client(wsdl: bytes) -> zeep.Client:
    return zeep_client(wsdl)


@pytest.fixture(scope="module")
async def bridges(info: WsdlInfo, client: zeep.Client) -> AsyncIterator[dict[str, Any]]:
    # One adapter per operation, all sharing one parsed WSDL, as the node registers them.
    adapters = {name: SoapBridgeAdapter(info, client, operation=name) for name in info.operations}
    yield adapters
    for adapter in adapters.values():
        await adapter.close()


def rest(
    method: str = "POST",
    body: bytes = b"",
    query: str = "",
    headers: tuple[tuple[str, str], ...] = JSON,
    path: str = "",
) -> AdapterRequest:
    return AdapterRequest(method, path, query, headers, body)


def as_json(response: AdapterResponse) -> Any:
    assert dict(response.headers)["Content-Type"] == "application/json; charset=utf-8"
    return json.loads(response.body)


# --- REST: JSON -> SOAP -> JSON -------------------------------------------------------------


async def test_post_json_is_bridged_with_types(
    bridges: dict[str, SoapBridgeAdapter], legacy: LegacyServer, info: WsdlInfo, client: zeep.Client
) -> None:
    answer = await bridges["getPerson"].handle(
        rest(body=json.dumps({"citizenId": CITIZEN}).encode())
    )
    assert answer.status == 200
    person = as_json(answer)["getPersonResult"]
    assert person == {
        "citizenId": CITIZEN,
        "name": "Somchai Jaidee",
        "birthDate": "1985-04-12",
        "registered": "2001-01-02T03:04:05+00:00",
        "alive": True,
        "income": "12345.67",
        "address": {"street": "1 Ratchadamnoen", "province": "Bangkok"},
        "phones": {"string": ["+6621234567", "+66812345678"]},
    }
    headers, body = legacy.requests[-1]
    assert headers["SOAPACTION"] == '"getPerson"'
    assert headers["CONTENT_TYPE"] == "text/xml; charset=utf-8"
    sent = etree.fromstring(body)
    assert sent.find(f"{{{SOAP_ENV}}}Header") is None  # no X-Road header for the legacy side
    assert sent.find(f"{{{SOAP_ENV}}}Body")[0].tag == f"{{{LEGACY_NS}}}getPerson"

    # The answer fits the published description.
    doc = openapi_for(info, client, operations=["getPerson"])
    schema = doc["paths"]["/getPerson"]["post"]["responses"]["200"]["content"]
    jsonschema.validate(as_json(answer), json_schema(schema["application/json"]["schema"]))


async def test_get_query_is_typed_by_the_schema(
    bridges: dict[str, SoapBridgeAdapter], legacy: LegacyServer
) -> None:
    count = bridges["countChildren"]
    answer = await count.handle(rest("GET", query=f"citizenId={CITIZEN}&bornAfterYear=2011"))
    assert (answer.status, as_json(answer)) == (200, {"countChildrenResult": 1})
    sent = etree.fromstring(legacy.requests[-1][1])
    assert sent.findtext(f".//{{{LEGACY_NS}}}bornAfterYear") == "2011"
    answer = await count.handle(rest("GET", query=f"citizenId={CITIZEN}&asOf=1980-01-01"))
    assert as_json(answer) == {"countChildrenResult": 0}
    answer = await bridges["getPerson"].handle(rest("GET", query=f"citizenId={CITIZEN}"))
    assert as_json(answer)["getPersonResult"]["name"] == "Somchai Jaidee"


async def test_arrays_in_and_out(bridges: dict[str, SoapBridgeAdapter]) -> None:
    body = {"citizenIds": {"Mandatorystring": [CITIZEN, "999"]}}
    answer = await bridges["findPersons"].handle(rest(body=json.dumps(body).encode()))
    people = as_json(answer)["findPersonsResult"]["Person"]
    assert [p["citizenId"] for p in people] == [CITIZEN]
    answer = await bridges["findPersons"].handle(rest(body=b'{"citizenIds": null}'))
    assert as_json(answer) == {"findPersonsResult": None}


@pytest.mark.parametrize(
    ("operation", "request_", "message"),
    [
        ("getPerson", rest(body=b"{not json"), "not valid JSON"),
        ("getPerson", rest(body=b"[1, 2]"), "must be a JSON object"),
        ("getPerson", rest(body=b'{"citizenId": "1", "x": 1}'), "'x' was unexpected"),
        ("getPerson", rest(body=b'{"citizenId": 5}'), r"\$.citizenId: 5 is not of type 'string'"),
        ("getPerson", rest(body=b"{}"), "'citizenId' is a required property"),
        ("getPerson", rest(body=b'{"citizenId": "1", "citizenId": "2"}'), "duplicate key"),
        ("getPerson", rest(body=b'{"citizenId": NaN}'), "not valid JSON"),
        ("countChildren", rest(body=b'{"citizenId": "1", "bornAfterYear": 1.5}'), "integer"),
        (
            "countChildren",
            rest(body=b'{"citizenId": "1", "bornAfterYear": 2147483648}'),
            "2147483648",
        ),
        (
            "countChildren",
            rest(body=b'{"citizenId": "1", "asOf": "2024-13-01"}'),
            "not a valid date",
        ),
        ("countChildren", rest("GET", query="citizenId=1&bornAfterYear=x"), "expected an integer"),
        ("countChildren", rest("GET", query="citizenId=1&citizenId=2"), "more than once"),
        ("countChildren", rest("GET", query="citizenId=1&other=2"), "unknown query parameter"),
        ("countChildren", rest("GET", query="bornAfterYear=1"), "'citizenId' is a required"),
        ("getPerson", rest(body=b'{"citizenId": "1"}', query="a=b"), "not a query string"),
    ],
)
async def test_bad_input_is_refused_by_the_service_with_400(
    bridges: dict[str, SoapBridgeAdapter], operation: str, request_: AdapterRequest, message: str
) -> None:
    answer = await bridges[operation].handle(request_)
    assert answer.status == 400
    error = as_json(answer)["error"]
    assert re.search(message, error), error


async def test_methods_paths_and_media_types(bridges: dict[str, SoapBridgeAdapter]) -> None:
    answer = await bridges["findPersons"].handle(rest("GET", query="citizenIds=1"))
    assert answer.status == 405 and dict(answer.headers)["Allow"] == "POST"
    answer = await bridges["getPerson"].handle(rest("PUT", body=b"{}"))
    assert answer.status == 405 and dict(answer.headers)["Allow"] == "GET, POST"
    answer = await bridges["getPerson"].handle(rest(path="/sub"))
    assert answer.status == 404
    answer = await bridges["getPerson"].handle(
        rest(body=b"<x/>", headers=(("Content-Type", "text/xml"),))
    )
    assert answer.status == 415


async def test_legacy_fault_is_the_services_answer(bridges: dict[str, SoapBridgeAdapter]) -> None:
    answer = await bridges["getPerson"].handle(rest(body=b'{"citizenId": "0"}'))
    assert answer.status == 500
    assert as_json(answer) == {
        "faultcode": "Client.NotFound",
        "faultstring": "no citizen 0",
        "faultdetail": "<citizenId>0</citizenId>",
    }
    answer = await bridges["failAlways"].handle(rest(body=b'{"reason": "disk full"}'))
    assert as_json(answer) == {
        "faultcode": "Server.Broken",
        "faultstring": "legacy failure: disk full",
        "faultdetail": None,
    }


async def test_legacy_down_is_service_failed(info: WsdlInfo, client: zeep.Client) -> None:
    port = free_port()
    adapter = SoapBridgeAdapter(
        info, client, operation="getPerson", endpoint_url=f"http://127.0.0.1:{port}/"
    )
    try:
        with pytest.raises(XRoadError) as failure:
            await adapter.handle(rest(body=b'{"citizenId": "1"}'))
    finally:
        await adapter.close()
    assert failure.value.code == "Server.ServerProxy.ServiceFailed"
    assert str(port) not in failure.value.message  # internal addresses stay in the log
    assert "getPerson" in failure.value.message


def test_registration_errors(info: WsdlInfo, client: zeep.Client) -> None:
    with pytest.raises(ValueError, match="http"):
        SoapBridgeAdapter(info, client, operation="getPerson", endpoint_url="file:///etc/passwd")
    with pytest.raises(ValueError, match="no operation 'nope'"):
        SoapBridgeAdapter(info, client, operation="nope")


# --- misbehaving services -------------------------------------------------------------------


class Misbehaving:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.url = ""

    async def handler(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        await request.read()
        if kind == "html":
            return web.Response(text="<html><body>Bad gateway</body>", content_type="text/html")
        if kind == "plain":
            return web.Response(text="not xml at all", status=200)
        if kind == "redirect":
            raise web.HTTPFound("/elsewhere")
        if kind == "big":
            return web.Response(body=b"<x>" + b"a" * 200_000 + b"</x>", content_type="text/xml")
        if kind == "wrong":
            return web.Response(body=_envelope(f'<other xmlns="{LEGACY_NS}"/>'))
        if kind in ("baddecimal", "baddate"):
            income, born = ("twelve", "1985-04-12") if kind == "baddecimal" else ("1", CITIZEN)
            person = (
                f"<citizenId>{CITIZEN}</citizenId><name>n</name><birthDate>{born}</birthDate>"
                "<registered>2001-01-02T03:04:05Z</registered><alive>true</alive>"
                f"<income>{income}</income>"
            )
            return web.Response(
                body=_envelope(
                    f'<getPersonResponse xmlns="{LEGACY_NS}">'
                    f"<getPersonResult>{person}</getPersonResult></getPersonResponse>"
                ),
                content_type="text/xml",
            )
        if kind == "error500":
            return web.Response(
                status=500, body=_envelope(f'<getPersonResponse xmlns="{LEGACY_NS}"/>')
            )
        if kind == "multipart":
            return web.Response(body=b"--b\r\n\r\n--b--", content_type="multipart/related")
        if kind == "slow":
            await self.release.wait()
        return web.Response(status=204)


def _envelope(inner: str) -> bytes:
    return f'<e:Envelope xmlns:e="{SOAP_ENV}"><e:Body>{inner}</e:Body></e:Envelope>'.encode()


@pytest.fixture(scope="module")
async def misbehaving() -> AsyncIterator[Misbehaving]:
    server = Misbehaving()
    async with kinds_server(server.handler) as server.url:
        yield server
        server.release.set()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("html", "is not SOAP"),
        ("plain", "is not SOAP"),
        ("redirect", "redirect"),
        ("big", "exceeds 100000 bytes"),
        ("wrong", "answered other, not getPersonResponse"),
        # zeep raises decimal's InvalidOperation, which is no ValueError
        ("baddecimal", "does not match its WSDL"),
        ("error500", "HTTP 500 without a SOAP Fault"),
        ("multipart", "attachments"),
        ("slow", "did not answer in time"),
    ],
)
async def test_unusable_answers_are_service_failed(
    info: WsdlInfo, client: zeep.Client, misbehaving: Misbehaving, kind: str, reason: str
) -> None:
    adapter = SoapBridgeAdapter(
        info,
        client,
        operation="getPerson",
        endpoint_url=f"{misbehaving.url}/{kind}",
        timeout=0.3 if kind == "slow" else 30,
        max_response_bytes=100_000,
    )
    try:
        with pytest.raises(XRoadError) as failure:
            await adapter.handle(rest(body=b'{"citizenId": "1"}'))
    finally:
        await adapter.close()
    assert failure.value.code == "Server.ServerProxy.ServiceFailed"
    assert reason in failure.value.message


async def test_a_value_zeep_cannot_read_is_null_and_stays_out_of_the_log(
    info: WsdlInfo,
    client: zeep.Client,
    misbehaving: Misbehaving,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # zeep reads a date it cannot convert as null, and logged it with a traceback quoting
    # the value: here a citizen id, in the node's operational log.
    adapter = SoapBridgeAdapter(
        info, client, operation="getPerson", endpoint_url=f"{misbehaving.url}/baddate"
    )
    try:
        answer = await adapter.handle(rest(body=b'{"citizenId": "1"}'))
    finally:
        await adapter.close()
    assert as_json(answer)["getPersonResult"]["birthDate"] is None
    out, err = capfd.readouterr()
    assert CITIZEN not in out + err + caplog.text


# --- X-Road SOAP clients --------------------------------------------------------------------


def _xroad_request(xclient: zeep.Client, operation: str, **kwargs: Any) -> bytes:
    headers = {
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
            "serviceCode": operation,
        },
        "id": "c0ffee00-0000-4000-8000-000000000001",
        "userId": "TH1101700203451",
        "issue": "case-42",
        "protocolVersion": "4.0",
    }
    envelope = xclient.create_message(xclient.service, operation, _soapheaders=headers, **kwargs)
    return etree.tostring(envelope, encoding="UTF-8", xml_declaration=True)


@pytest.fixture(scope="module")
def xroad_client(info: WsdlInfo, wsdl: bytes) -> zeep.Client:
    return zeep_client(xroad_wsdl(info, wsdl, None, "v1"))


async def test_xroad_soap_client_through_the_bridge(
    bridges: dict[str, SoapBridgeAdapter], xroad_client: zeep.Client, legacy: LegacyServer
) -> None:
    raw = _xroad_request(xroad_client, "getPerson", citizenId=CITIZEN)
    message = parse_soap("text/xml; charset=utf-8", raw, kind="request")
    answer = await bridges["getPerson"].handle(
        AdapterRequest("POST", "", "", (("Content-Type", "text/xml"),), raw, soap=message)
    )
    assert answer.status == 200
    assert answer.headers == (("Content-Type", "text/xml; charset=utf-8"),)

    # The legacy service saw a plain SOAP request: no X-Road header, the client's body.
    legacy_request = etree.fromstring(legacy.requests[-1][1])
    assert legacy_request.find(f"{{{SOAP_ENV}}}Header") is None
    assert legacy_request.findtext(f".//{{{LEGACY_NS}}}citizenId") == CITIZEN

    response = parse_soap("text/xml", answer.body, kind="response")
    assert message.header is not None
    check_echo(message.header, response.header)  # header echoed in order
    binding = xroad_client.service._binding
    reply = binding.process_reply(
        xroad_client, binding.get("getPerson"), _HttpReply(answer.status, answer.body)
    )
    assert reply["body"]["getPersonResult"]["address"]["province"] == "Bangkok"
    assert reply["header"]["issue"] == "case-42"


async def test_xroad_soap_client_gets_the_legacy_fault(
    bridges: dict[str, SoapBridgeAdapter], xroad_client: zeep.Client
) -> None:
    raw = _xroad_request(xroad_client, "getPerson", citizenId="0")
    message = parse_soap("text/xml", raw, kind="request")
    answer = await bridges["getPerson"].handle(
        AdapterRequest("POST", "", "", (), raw, soap=message)
    )
    assert answer.status == 500
    response = parse_soap("text/xml", answer.body, kind="response")
    assert response.is_fault
    fault = response.body_element
    assert fault.findtext("faultstring") == "no citizen 0"
    assert fault.findtext("detail/citizenId") == "0"
    # The faultcode's prefix still resolves in the new envelope.
    code_el = fault.find("faultcode")
    prefix, _, local = code_el.text.partition(":")
    assert (code_el.nsmap[prefix], local) == (SOAP_ENV, "Client.NotFound")
    binding = xroad_client.service._binding
    with pytest.raises(zeep.exceptions.Fault, match="no citizen 0"):
        binding.process_reply(xroad_client, binding.get("getPerson"), _HttpReply(500, answer.body))


async def test_xroad_soap_body_of_another_namespace_is_refused(
    bridges: dict[str, SoapBridgeAdapter], xroad_client: zeep.Client
) -> None:
    raw = _xroad_request(xroad_client, "getPerson", citizenId="1").replace(
        LEGACY_NS.encode(), b"urn:someone:else"
    )
    message = parse_soap("text/xml", raw, kind="request")
    with pytest.raises(XRoadError) as refused:
        await bridges["getPerson"].handle(AdapterRequest("POST", "", "", (), raw, soap=message))
    assert refused.value.code == "Client.InvalidBody"


async def test_xroad_soap_attachments_are_refused_by_the_bridge(
    bridges: dict[str, SoapBridgeAdapter], xroad_client: zeep.Client
) -> None:
    soap = _xroad_request(xroad_client, "getPerson", citizenId="1")
    raw = (
        b"--b1\r\nContent-Type: text/xml; charset=UTF-8\r\n\r\n" + soap + b"\r\n"
        b"--b1\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4\r\n--b1--\r\n"
    )
    message = parse_soap('multipart/related; type="text/xml"; boundary=b1', raw, kind="request")
    with pytest.raises(XRoadError) as refused:
        await bridges["getPerson"].handle(AdapterRequest("POST", "", "", (), raw, soap=message))
    assert refused.value.code == "Client.InvalidSoap"


class _HttpReply:
    """What zeep's process_reply reads from an HTTP response."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self.content = body
        self.headers = {"Content-Type": "text/xml; charset=utf-8"}
        self.encoding = "utf-8"


# --- pass-through ---------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[list[tuple[str, str]], bytes]] = []
        self.url = ""

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((list(request.headers.items()), body))
        status = int(request.query.get("status", "200"))
        return web.Response(
            status=status,
            body=body,
            headers={
                "Content-Type": request.headers.get("Content-Type", "text/xml"),
                "X-Internal": "secret",
            },
        )

    async def moved(self, request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/echo")


@pytest.fixture(scope="module")
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application()
    app.router.add_post("/echo", rec.echo)
    app.router.add_post("/moved", rec.moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}"
    yield rec
    await runner.cleanup()


MULTIPART_TYPE = 'multipart/related; type="text/xml"; start="<soap@x>"; boundary="MIME_boundary_7"'


def _multipart() -> bytes:
    soap = _envelope(f'<getPerson xmlns="{LEGACY_NS}"><citizenId>1</citizenId></getPerson>')
    attachment = bytes(range(256)) * 4 + b"\r\n--MIME_boundary_ no match\r\n\xff\xfe"
    return (
        b"--MIME_boundary_7\r\n"
        b"Content-Type: text/xml; charset=UTF-8\r\n"
        b"Content-ID: <soap@x>\r\n\r\n" + soap + b"\r\n"
        b"--MIME_boundary_7\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n"
        b"Content-ID: <file@x>\r\n\r\n" + attachment + b"\r\n"
        b"--MIME_boundary_7--\r\n"
    )


async def test_passthrough_is_byte_exact_with_attachments(recorder: Recorder) -> None:
    adapter = SoapPassthroughAdapter(recorder.url + "/echo", soap_action="getPerson", timeout=5)
    body = _multipart()
    request = AdapterRequest(
        "POST",
        "",
        "",
        (
            ("Content-Type", MULTIPART_TYPE),
            ("SOAPAction", '"urn:another-operation"'),  # the client's: never forwarded
            ("X-Road-Client", "TH/GOV/DGA/portal"),
            ("Authorization", "Bearer not-for-the-service"),
        ),
        body,
    )
    try:
        answer = await adapter.handle(request)
        failing = await adapter.handle(
            AdapterRequest("POST", "", "", (("Content-Type", "text/xml"),), b"<fault/>")
        )
    finally:
        await adapter.close()
    assert answer.status == 200
    assert answer.body == body
    assert answer.headers == (("Content-Type", MULTIPART_TYPE),)  # nothing else comes back
    sent_headers, sent_body = recorder.seen[0]
    assert sent_body == body
    names = {k.lower() for k, _ in sent_headers}
    assert names <= {"content-type", "soapaction", "host", "content-length"}
    assert dict((k.lower(), v) for k, v in sent_headers)["soapaction"] == '"getPerson"'
    assert failing.status == 200 and failing.body == b"<fault/>"


async def test_passthrough_status_and_failures(recorder: Recorder) -> None:
    adapter = SoapPassthroughAdapter(recorder.url + "/echo?status=500", timeout=5)
    try:
        answer = await adapter.handle(
            AdapterRequest("POST", "", "", (("Content-Type", "text/xml"),), b"<x/>")
        )
    finally:
        await adapter.close()
    assert (answer.status, answer.body) == (500, b"<x/>")

    for url, reason in (
        (recorder.url + "/moved", "redirect"),
        (f"http://127.0.0.1:{free_port()}/", "cannot reach"),
    ):
        adapter = SoapPassthroughAdapter(url, timeout=5)
        try:
            with pytest.raises(XRoadError) as failure:
                await adapter.handle(AdapterRequest("POST", "", "", (), b"<x/>"))
        finally:
            await adapter.close()
        assert failure.value.code == "Server.ServerProxy.ServiceFailed"
        assert reason in failure.value.message
    with pytest.raises(ValueError, match="http"):
        SoapPassthroughAdapter("ftp://x/")
