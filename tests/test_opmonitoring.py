"""Operational monitoring (X-Road's op-monitoring records and metaservices), SLO burn alerts.

An independent SOAP client (zeep, built from X-Road's own published op-monitoring WSDL in
tests/data/xroad-opmonitoring) asks a node for its records the way an X-Road monitoring
client does: through its own node, service of the owner member, securityServer header.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import requests
import zeep
import zeep.transports
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree
from requests_toolbelt.multipart.decoder import MultipartDecoder

from xroad_hub.dev.testing import TEST_ADMIN_KEYS, TestFederationSpec, free_port
from xroad_hub.messagelog import LogRecord
from xroad_hub.node.opmonitoring import FIELDS, OpMonitor, Query, opmonitoring_app
from xroad_hub.protocol.identifiers import parse_client_id, parse_node_id

from .conftest import EVERYONE, Fed, start_federation

DATA = Path(__file__).parent / "data" / "xroad-opmonitoring"
DEV = "TH/GOV/DGA/devportal"
MONITOR = "TH/GOV/DGA/officeapp"  # the federation's central monitoring client
LICENSING = "TH/GOV/BMA/licensing"
PROVIDER_NODE = "TH/GOV/DBD/hub1"
ECHO = "/r1/TH/GOV/DBD/registry/echo"
FLAKY = "/r1/TH/GOV/DBD/registry/flaky"
# WS-I's swaRef type, which X-Road's WSDL imports by URL: defined here (one line of XSD)
# so that the test never fetches anything.
SWAREF = b"""<?xml version="1.0"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
    targetNamespace="http://ws-i.org/profiles/basic/1.1/xsd">
  <xs:simpleType name="swaRef"><xs:restriction base="xs:anyURI"/></xs:simpleType>
</xs:schema>"""


# The XML namespace's xml:lang, which X-Road's WSDL uses without importing it (XML Schema
# knows that namespace implicitly; zeep must be given it).
XML_XSD = b"""<?xml version="1.0"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
    targetNamespace="http://www.w3.org/XML/1998/namespace">
  <xs:attribute name="lang" type="xs:language"/>
</xs:schema>"""
XS = "http://www.w3.org/2001/XMLSchema"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
OPMON = "http://x-road.eu/xsd/op-monitoring.xsd"


def _wsdl_for_zeep(target: Path) -> Path:
    """X-Road's WSDL as published, plus the one import of the XML namespace zeep needs."""
    root = etree.parse(str(DATA / "op-monitoring.wsdl")).getroot()
    for schema in root.iter(f"{{{XS}}}schema"):
        if schema.get("targetNamespace") == "http://x-road.eu/xsd/xroad.xsd":
            imp = etree.Element(f"{{{XS}}}import")
            imp.set("namespace", "http://www.w3.org/XML/1998/namespace")
            imp.set("schemaLocation", "http://www.w3.org/2001/xml.xsd")
            schema.insert(0, imp)
    etree.ElementTree(root).write(str(target))
    return target


class _Flaky:
    failing = False


WEBHOOK: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
async def monitored(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fed]:
    """A federation of its own (exact record counts), a backend the test can make fail,
    a webhook receiver, the provider node with an SLO on the flaky service."""
    backend = web.Application()

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "path": request.path})

    async def flaky(request: web.Request) -> web.Response:
        if _Flaky.failing:
            return web.json_response({"problem": "database down"}, status=503)
        return web.json_response({"ok": True})

    async def hook(request: web.Request) -> web.Response:
        WEBHOOK.append(await request.json())
        return web.Response(status=204)

    backend.router.add_route("*", "/echo{tail:.*}", echo)
    backend.router.add_route("*", "/flaky{tail:.*}", flaky)
    backend.router.add_post("/hook", hook)
    server = TestServer(backend, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    spec = TestFederationSpec(
        backend_url=url,
        extra_services=[
            {
                "id": "TH/GOV/DBD/registry/flaky",
                "url": f"{url}/flaky",
                "allow": EVERYONE,
                "answer_subject": [],
                "slo": {"availability": 0.95, "latency_ms": 2000, "window_days": 30},
            }
        ],
        registry_settings={"monitoring_client": MONITOR},
        node_settings={PROVIDER_NODE: {"alert_webhook": f"{url}/hook", "slo_check_interval": 0.3}},
    )
    fed = await start_federation(tmp_path_factory.mktemp("opmon"), spec)
    yield fed
    await fed.federation.stop()
    await server.close()


def _store(fed: Fed, node: str = PROVIDER_NODE) -> OpMonitor:
    store = fed.federation.nodes[node].opmonitor
    assert store is not None
    return store


async def _rest(
    http: aiohttp.ClientSession, fed: Fed, path: str, client: str = DEV
) -> tuple[int, str]:
    message_id = str(uuid.uuid4())
    if client == LICENSING:
        url, ssl_ctx = fed.url("TH/GOV/BMA/hub1", "client_tls"), fed.client_ssl(LICENSING)
    else:
        url, ssl_ctx = fed.url("TH/GOV/DGA/hub1"), None
    async with http.get(
        url + path, headers={"X-Road-Client": client, "X-Road-Id": message_id}, ssl=ssl_ctx
    ) as resp:
        await resp.read()
        return resp.status, message_id


class _LocalOnly(zeep.transports.Transport):
    """zeep's transport, but schemas come from here: nothing is fetched from the web."""

    def load(self, url: str) -> bytes:
        if url == "http://ws-i.org/profiles/basic/1.1/swaref.xsd":
            return SWAREF
        if url == "http://www.w3.org/2001/xml.xsd":
            return XML_XSD
        if url.startswith(("http://", "https://")):
            raise AssertionError(f"the test must not fetch {url}")
        return super().load(url)


def _ident(text: str, object_type: str) -> dict[str, str]:
    names = ("xRoadInstance", "memberClass", "memberCode", "subsystemCode")
    return {"objectType": object_type, **dict(zip(names, text.split("/"), strict=False))}


def _zeep_query(
    fed: Fed, client: str, body: dict[str, Any], operation: str = "getSecurityServerOperationalData"
) -> Any:
    """One query with zeep from X-Road's WSDL, sent to the client's own node."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would win over session.verify
    if client == MONITOR:  # mTLS client
        paths = fed.pki.client_tls(client)
        session.cert = (str(paths.cert), str(paths.key))
        session.verify = str(fed.pki.root_ca.cert)
        address = fed.url("TH/GOV/DGA/hub1", "client_tls") + "/"
    else:
        address = fed.url("TH/GOV/DGA/hub1") + "/"
    wsdl = _wsdl_for_zeep(fed.root / "op-monitoring-for-zeep.wsdl")
    soap = zeep.Client(str(wsdl), transport=_LocalOnly(session=session))
    service = soap.create_service("{http://op-monitor.x-road.eu/}opmSoap11Binding", address)
    owner, server_code = PROVIDER_NODE.rsplit("/", 1)
    headers = {
        "client": _ident(client, "SUBSYSTEM"),
        "service": {**_ident(owner, "SERVICE"), "serviceCode": operation},
        "securityServer": {**_ident(owner, "SERVER"), "serverCode": server_code},
        "id": str(uuid.uuid4()),
        "protocolVersion": "4.0",
    }
    try:
        if operation != "getSecurityServerOperationalData":
            return getattr(service, operation)(**body, _soapheaders=headers)
        # zeep builds the request from X-Road's WSDL and raises its SOAP faults, but cannot
        # read a soap:body inside the WSDL's mime:multipartRelated output: the MIME parts are
        # split by requests-toolbelt, the SOAP part is read with zeep's X-Road schema types.
        with soap.settings(raw_response=True):
            raw = getattr(service, operation)(**body, _soapheaders=headers)
        if raw.status_code != 200:
            with soap.settings(raw_response=False):
                return getattr(service, operation)(**body, _soapheaders=headers)
        parts = MultipartDecoder(raw.content, raw.headers["Content-Type"]).parts
        envelope = etree.fromstring(parts[0].content)
        wrapper = envelope.find(f"{{{SOAP_ENV}}}Body")[0]
        element = soap.get_element(f"{{{OPMON}}}getSecurityServerOperationalDataResponse")
        answer = element.parse(wrapper, soap.wsdl.types)
        cid = parts[1].headers[b"Content-ID"].decode().strip("<>")
        return answer, cid, parts[1].content
    finally:
        session.close()


def _records(reply: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The SOAP answer and the records of its gzip JSON attachment (swaRef cid:)."""
    root, cid, content = reply
    assert root.records == f"cid:{cid}"
    return root, orjson.loads(gzip.decompress(content))["records"]


async def _wait_written(fed: Fed, *nodes: str) -> None:
    for node in nodes or (PROVIDER_NODE,):
        await asyncio.to_thread(_store(fed, node).flush)
    await asyncio.sleep(max(0.0, int(time.time()) + 1.05 - time.time()))  # second complete


async def test_operational_data_answers_xroad_clients_with_exact_records(
    monitored: Fed, http: aiohttp.ClientSession
) -> None:
    start = int(time.time())
    mine = [await _rest(http, monitored, f"{ECHO}/items/{n}?cid=1234567890123") for n in range(3)]
    theirs = [await _rest(http, monitored, ECHO, client=LICENSING) for _ in range(2)]
    assert {s for s, _ in mine + theirs} == {200}
    await _wait_written(monitored)
    criteria = {"searchCriteria": {"recordsFrom": start, "recordsTo": int(time.time()) + 3600}}

    # The monitoring client sees every record, with every field X-Road defines.
    root, records = _records(await asyncio.to_thread(_zeep_query, monitored, MONITOR, criteria))
    by_id = {r["messageId"]: r for r in records}
    assert {m for _, m in mine + theirs} <= set(by_id)
    assert root.recordsCount == len(records)
    assert root.nextRecordsFrom is not None  # recordsTo was in the future: cut, as X-Road
    assert set().union(*records) <= set(FIELDS)
    for (_, message_id), n in zip(mine, range(3), strict=True):
        r = by_id[message_id]
        assert r["securityServerType"] == "Producer"
        assert (r["clientXRoadInstance"], r["clientMemberClass"], r["clientMemberCode"],
                r["clientSubsystemCode"]) == ("TH", "GOV", "DGA", "devportal")  # fmt: skip
        assert (r["serviceMemberCode"], r["serviceSubsystemCode"], r["serviceCode"]) == (
            "DBD", "registry", "echo",
        )  # fmt: skip
        assert r["succeeded"] is True and r["statusCode"] == 200
        assert r["restMethod"] == "GET" and r["restPath"] == "/items/{id}", n
        assert r["serviceType"] == "OPENAPI3" and r["messageProtocolVersion"] == "1"
        assert r["requestInTs"] <= r["requestOutTs"] <= r["responseInTs"] <= r["responseOutTs"]
        assert r["requestSize"] == 0 and r["responseSize"] > 0
        assert r["securityServerInternalIp"] == "127.0.0.1"
        assert r["serviceSecurityServerAddress"] != r["clientSecurityServerAddress"]
        assert r["xRequestId"] and "faultCode" not in r
        assert "1234567890123" not in orjson.dumps(r).decode()  # no citizen id from the path

    # A client subsystem sees only the exchanges it took part in, never the node's address.
    root, own = _records(await asyncio.to_thread(_zeep_query, monitored, DEV, criteria))
    assert {r["messageId"] for r in own} >= {m for _, m in mine}
    assert not {r["messageId"] for r in own} & {m for _, m in theirs}
    assert all(
        "devportal" in (r.get("clientSubsystemCode"), r.get("serviceSubsystemCode")) for r in own
    )
    assert all("securityServerInternalIp" not in r for r in own)

    # outputSpec: only the fields asked for (and monitoringDataTs), as X-Road.
    spec = {**criteria, "outputSpec": {"outputField": ["messageId", "succeeded"]}}
    _, few = _records(await asyncio.to_thread(_zeep_query, monitored, DEV, spec))
    assert few and all(set(r) == {"messageId", "succeeded", "monitoringDataTs"} for r in few)


async def test_a_citizen_id_typed_as_a_service_code_stays_out_of_the_records(
    monitored: Fed, http: aiohttp.ClientSession
) -> None:
    start = int(time.time())
    status, message_id = await _rest(http, monitored, "/r1/TH/GOV/DBD/registry/1234567890121")
    assert status == 500  # no such service
    await _wait_written(monitored, PROVIDER_NODE, "TH/GOV/DGA/hub1")
    for node in (PROVIDER_NODE, "TH/GOV/DGA/hub1"):
        store = _store(monitored, node)
        records, _ = store.query(Query(start, int(time.time()) - 1))
        [record] = [r for r in records if r["messageId"] == message_id]
        assert record["faultCode"].endswith("UnknownService")
        assert record["serviceCode"] == "{number}", node
        assert "1234567890121" not in orjson.dumps(records).decode(), node
        # Nor in the health data's per-service statistics (any client may read those).
        assert "1234567890121" not in orjson.dumps(store.health(None)).decode(), node


async def test_operational_data_refuses_bad_queries_as_xroad_faults(monitored: Fed) -> None:
    now = int(time.time())
    cases = [
        {"searchCriteria": {"recordsFrom": now, "recordsTo": now - 10}},
        {"searchCriteria": {"recordsFrom": now + 100, "recordsTo": now + 200}},
        {"searchCriteria": {"recordsFrom": 0, "recordsTo": now},
         "outputSpec": {"outputField": ["passwordHash"]}},
    ]  # fmt: skip
    for body in cases:
        with pytest.raises(zeep.exceptions.Fault) as caught:
            await asyncio.to_thread(_zeep_query, monitored, DEV, body)
        assert caught.value.code == "Client.InvalidRequest"


async def test_health_data_counts_each_service_since_start(
    monitored: Fed, http: aiohttp.ClientSession
) -> None:
    before = await asyncio.to_thread(_store(monitored).health)
    counts = {s["service"]: s for s in before["services"]}
    echo = "TH/GOV/DBD/registry/echo"
    ok_before = (
        counts.get(echo, {}).get("lastPeriodStatistics", {}).get("successfulRequestCount", 0)
    )
    for _ in range(2):
        assert (await _rest(http, monitored, ECHO))[0] == 200
    await _wait_written(monitored)
    reply = await asyncio.to_thread(_zeep_query, monitored, DEV, {}, "getSecurityServerHealthData")
    reply = reply.body  # zeep answers the SOAP header and body
    assert reply.statisticsPeriodSeconds == 600
    assert reply.monitoringStartupTimestamp <= time.time() * 1000
    events = {
        (e.service.memberCode, e.service.subsystemCode, e.service.serviceCode): e
        for e in reply.servicesEvents.serviceEvents
    }
    stats = events[("DBD", "registry", "echo")].lastPeriodStatistics
    assert stats.successfulRequestCount == ok_before + 2
    assert stats.requestMinDuration <= stats.requestMaxDuration


async def test_backend_outage_shows_in_records_within_a_minute(
    monitored: Fed, http: aiohttp.ClientSession
) -> None:
    """The admin API's JSON view (the sub-app the admin listener mounts) shows the failed
    exchange with X-Road's fault code, well within a minute."""
    app = opmonitoring_app(_store(monitored))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        began = time.monotonic()
        status, message_id = await _rest(http, monitored, "/r1/TH/GOV/DBD/registry/down")
        assert status == 500
        found: dict[str, Any] | None = None
        while found is None and time.monotonic() - began < 60:
            await asyncio.sleep(0.2)
            async with http.get(server.make_url("/opmonitoring/records")) as resp:
                assert resp.status == 200
                data = await resp.json()
            found = next((r for r in data["records"] if r["messageId"] == message_id
                          and r["securityServerType"] == "Producer"), None)  # fmt: skip
        assert found is not None, "the outage is not in the records after a minute"
        assert found["succeeded"] is False
        assert found["faultCode"] == "Server.ServerProxy.NetworkError"
        assert found["faultString"]
        async with http.get(server.make_url("/opmonitoring/records?limit=100000")) as resp:
            assert resp.status == 400  # bounded: at most 10000 records per answer
    finally:
        await server.close()


async def test_slo_burn_fires_the_webhook_and_resolves_by_itself(
    monitored: Fed, http: aiohttp.ClientSession
) -> None:
    _Flaky.failing = True
    try:
        for _ in range(10):
            status, _ = await _rest(http, monitored, f"{FLAKY}/x?cid=1234567890123")
            assert status == 503
        fired = await _wait_for(lambda b: b["alert"] == "slo_availability_burn"
                                and b["status"] == "firing")  # fmt: skip
    finally:
        _Flaky.failing = False
    assert fired["service"] == "TH/GOV/DBD/registry/flaky"
    assert fired["node"] == PROVIDER_NODE
    assert fired["burn_rate"] >= 14.4 and fired["since"]
    assert "1234567890123" not in orjson.dumps(WEBHOOK).decode()
    status_now = await asyncio.to_thread(monitored.federation.nodes[PROVIDER_NODE].slo_watch.status)  # type: ignore[union-attr]
    assert any(a["alert"] == "slo_availability_burn" for a in status_now["alerts"])
    for _ in range(8):
        assert (await _rest(http, monitored, f"{FLAKY}/x"))[0] == 200
    resolved = await _wait_for(lambda b: b["alert"] == "slo_availability_burn"
                               and b["status"] == "resolved")  # fmt: skip
    assert resolved["service"] == fired["service"] and resolved["since"] == fired["since"]


async def _wait_for(match: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = next((b for b in WEBHOOK if match(b)), None)
        if hit is not None:
            return hit
        await asyncio.sleep(0.1)
    raise AssertionError(f"no such webhook call within {timeout} s; got {WEBHOOK}")


async def test_a_full_queue_drops_records_never_exchanges(
    monitored: Fed, http: aiohttp.ClientSession
) -> None:
    store = _store(monitored)
    dropped, limit = store.dropped, store.max_queue
    store.max_queue = 0
    try:
        for _ in range(3):
            assert (await _rest(http, monitored, ECHO))[0] == 200
    finally:
        store.max_queue = limit
    assert store.dropped == dropped + 3


# -- the store on its own ------------------------------------------------------------------


def _log_record(n: int, client: str = DEV, service: str = "TH/GOV/DBD/registry/echo") -> LogRecord:
    meta = orjson.dumps({"path": f"/items/{n}", "target_node": PROVIDER_NODE})
    now = time.time()
    return LogRecord(
        message_id=f"m{n}", request_id=f"r{n}", role="provider", client=client,
        service=service, user_id=None, issue=None, represented_party=None, method="GET",
        status=200, error_type=None, started_at=now - 0.01, finished_at=now,
        request_meta=meta, request_signature=b"", request_body=b"", request_cert=b"",
        response_body=b"{}",
    )  # fmt: skip


def _store_at(tmp_path: Path, **kw: Any) -> OpMonitor:
    return OpMonitor(tmp_path / "opmon.sqlite", parse_node_id(PROVIDER_NODE), **kw)


def test_store_file_is_private_and_bounded_in_records_and_size(tmp_path: Path) -> None:
    store = _store_at(tmp_path, max_records=200, flush_interval=0.01)
    store.start()
    try:
        sizes = []
        wal = store.path.with_name(store.path.name + "-wal")
        for round_ in range(12):
            for n in range(500):
                store.observe(_log_record(round_ * 500 + n))
            store.flush()
            sizes.append(store.path.stat().st_size + wal.stat().st_size)
        assert store.written == 6000 and store.dropped == 0
        q = Query(0, int(time.time()) + 10, limit=10_000)
        records, _ = store.query(q, now=time.time() + 5)
        assert len(records) == 200
        assert records[-1]["messageId"] == "m5999"  # the newest are kept
        # The files stop growing: freed pages are reused (the bound holds on disk too).
        assert sizes[-1] <= sizes[5] * 1.1, sizes
        assert os.stat(store.path).st_mode & 0o777 == 0o600
    finally:
        store.stop()


def test_full_queue_counts_drops_and_never_raises(tmp_path: Path) -> None:
    store = _store_at(tmp_path, max_queue=10)  # not started: nothing drains the queue
    for n in range(25):
        store.observe(_log_record(n))
    assert store.dropped == 15


def test_queries_are_bounded_and_paged_by_whole_seconds(tmp_path: Path) -> None:
    store = _store_at(tmp_path)
    store.start()
    store.stop()  # the writer is not needed: rows are written at chosen seconds below
    import sqlite3

    from xroad_hub.node.opmonitoring import _Seen

    def seen(n: int, client: str) -> _Seen:
        r = _log_record(n, client)
        return _Seen(r.role, r.message_id, r.request_id, r.client, r.service, None, None,
                     None, "GET", 200, None, None, r.started_at, 0.0, 0.0, r.finished_at,
                     0, 2, r.request_meta)  # fmt: skip

    rows = [store._row(seen(n, DEV if n % 2 else LICENSING), 1000 + n // 3) for n in range(12)]
    db = sqlite3.connect(store.path)
    try:
        with db:
            db.executemany(
                "INSERT INTO records (ts, client, provider, service, producer, finished_ms,"
                " duration_ms, bad, data) VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )
    finally:
        db.close()
    # Four seconds of three records each. A limit of 4 cuts inside the second second: that
    # second is given whole, and the next page starts after it.
    page, next_from = store.query(Query(1000, 1003, limit=4), now=5000)
    assert [r["messageId"] for r in page] == [f"m{n}" for n in range(6)]
    assert next_from == 1002
    page, next_from = store.query(Query(next_from, 1003, limit=4), now=5000)
    assert [r["messageId"] for r in page] == [f"m{n}" for n in range(6, 12)]
    assert next_from is None
    # A client subsystem's view: only its own records.
    own, _ = store.query(Query(1000, 1003, viewer=parse_client_id(DEV)), now=5000)
    assert [r["messageId"] for r in own] == [f"m{n}" for n in range(1, 12, 2)]
    with pytest.raises(Exception, match="limit"):
        store.query(Query(1000, 1003, limit=10_001), now=5000)


async def test_node_slo_cli_prints_burn_per_service(
    monitored: Fed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from xroad_hub.cli import main

    # Through the node's own admin listener, with a monitor's key; a wrong key is refused.
    url = monitored.url(PROVIDER_NODE, "admin")
    key = tmp_path / "key"
    key.write_text(TEST_ADMIN_KEYS["scraper"][0])
    slo = ["node", "slo", "--admin", url, "--key-file", str(key)]
    code = await asyncio.to_thread(main, slo)
    out = capsys.readouterr().out
    assert code in (0, 1)  # 1 while an alert still fires
    assert "TH/GOV/DBD/registry/flaky" in out and "burn 1h" in out
    code = await asyncio.to_thread(main, [*slo, "--json"])
    data = orjson.loads(capsys.readouterr().out)
    assert [s["service"] for s in data["services"]] == ["TH/GOV/DBD/registry/flaky"]
    key.write_text("not-a-key")
    code = await asyncio.to_thread(main, slo)
    assert code == 2 and "Traceback" not in capsys.readouterr().err
    slo[3] = f"http://127.0.0.1:{free_port()}"
    code = await asyncio.to_thread(main, slo)
    captured = capsys.readouterr()
    assert code == 2 and "cannot ask" in captured.err and "Traceback" not in captured.err


def test_stored_records_read_as_written_and_keep_no_ids_of_paths(tmp_path: Path) -> None:
    """The writer keeps values, the X-Road record is built when read: it is the same record,
    records stored whole by earlier versions still read, and no id of a path is on disk."""
    from .sqlite_db import sqlite_db

    store = _store_at(tmp_path, flush_interval=0.01, internal_ip="10.1.2.3")
    store.start()
    try:
        record = _log_record(7)
        meta = {"path": "/items/1234567890123", "target_node": PROVIDER_NODE}
        record = dataclasses.replace(record, request_meta=orjson.dumps(meta))
        store.observe(record)
        store.flush()
        assert store.written == 1
        now = time.time() + 5
        (got,), _ = store.query(Query(0, int(now) - 1), now=now)
        expected = {
            "securityServerType": "Producer", "securityServerInternalIp": "10.1.2.3",
            "requestInTs": int(record.started_at * 1000),
            "responseOutTs": int(record.finished_at * 1000),
            "clientXRoadInstance": "TH", "clientMemberClass": "GOV", "clientMemberCode": "DGA",
            "clientSubsystemCode": "devportal", "serviceXRoadInstance": "TH",
            "serviceMemberClass": "GOV", "serviceMemberCode": "DBD",
            "serviceSubsystemCode": "registry", "serviceCode": "echo", "messageId": "m7",
            "messageProtocolVersion": "1", "requestSize": 0, "responseSize": 2,
            "succeeded": True, "restMethod": "GET", "restPath": "/items/{id}",
            "statusCode": 200, "serviceType": "REST", "xRoadVersion": "xroad-hub/1",
            "xRequestId": "r7",
        }  # fmt: skip
        assert {k: v for k, v in got.items() if k != "monitoringDataTs"} == expected
        old = {**expected, "monitoringDataTs": 1000, "messageId": "old"}
        with sqlite_db(store.path) as db, db:
            db.execute(
                "INSERT INTO records (ts, client, provider, service, producer, finished_ms,"
                " duration_ms, bad, data) VALUES (1000, ?, ?, ?, 1, 1, 0, 0, ?)",
                (DEV, "TH/GOV/DBD/registry", "TH/GOV/DBD/registry/echo", orjson.dumps(old)),
            )
        records, _ = store.query(Query(0, int(now) - 1), now=now)
        assert records[0] == old and records[1] == got
    finally:
        store.stop()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("opmon.sqlite*"))
    assert b"m7" in on_disk and b"1234567890123" not in on_disk
