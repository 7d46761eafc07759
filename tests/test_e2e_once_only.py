"""The Thai once-only story end to end: the demo federation and the real BMA case service.

One demo federation (every node in this process, fresh PKI, free loopback ports) and one case
service (its own process, mTLS to BMA's node) serve the whole module. Every check goes through
a public interface a real party has: the case service's HTTP API for citizens and officers,
the nodes' evidence and r1 APIs for clients, the auditors' search API, the citizens' data
tracker, and the message logs read as files (as an auditor's own tools would).

Tests that need a fact about "her" data gather it from every case of hers rather than from
one, so they hold whatever order the tests run in.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography import x509

from adapters.flatfile import FlatFileAdapter
from case_service.client import CaseServiceError
from xroad_hub.demo.harness import (
    BMA_NODE,
    CASE_SERVICE_CLIENT,
    Applicant,
    CaseServiceProcess,
    DemoFederation,
    demo_applicant,
    start_case_service,
    start_demo_federation,
)
from xroad_hub.demo.synthetic import companies, demo_people
from xroad_hub.messagelog.audit import check_signed_part, search_log
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.messagelog.search import SearchFilter
from xroad_hub.node import Node
from xroad_hub.pki import load_private_key
from xroad_hub.protocol.signing import SignatureVerifier

pytestmark = pytest.mark.slow

SEED = 2569
PURPOSE = "food-business-licence"
ACCEPTED = ("food-business-licence", "citizen-self-service")
DGA_NODE = "TH/GOV/DGA/hub1"
DOL_NODE = "TH/GOV/DOL/hub1"
DEVPORTAL = "TH/GOV/DGA/devportal"
OFFICER = "officer.malee"
EVIDENCE = ("identity", "house_registration", "company_registration", "title_deed", "tax_clearance")
# Evidence whose subject is the citizen (the rest are about her company): these, and only
# these, are reads of her personal data that her data tracker must show.
ABOUT_HER = {"identity", "house_registration", "title_deed"}
PROVIDER_OF = {
    "identity": "TH/GOV/DOPA/hub1",
    "house_registration": "TH/GOV/DOPA/hub1",
    "company_registration": "TH/GOV/DBD/hub1",
    "title_deed": DOL_NODE,
    "tax_clearance": "TH/GOV/RD/hub1",
}


@dataclass
class World:
    demo: DemoFederation
    cs: CaseServiceProcess
    http: aiohttp.ClientSession
    her: Applicant
    other: str  # her co-director: a second real person of the registries
    third: str  # someone else again, used only by the purpose-refusal test
    workdir: Path

    def citizen(self, citizen_id: str) -> str:
        return self.demo.citizen_token(citizen_id, CASE_SERVICE_CLIENT, ttl=3600)

    def officer(self) -> str:
        return self.demo.officer_token(OFFICER, CASE_SERVICE_CLIENT)


def _other_people(her: Applicant) -> tuple[str, str]:
    """Her co-director (so he can apply for the same company) and one more seeded person."""
    persons = demo_people(SEED, 200)
    company = next(c for c in companies(SEED, 200, persons) if c.juristic_id == her.juristic_id)
    other = next(d for d in company.directors if d != her.citizen_id)
    third = next(p.citizen_id for p in persons if p.citizen_id not in (her.citizen_id, other))
    return other, third


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    workdir = tmp_path_factory.mktemp("once-only")
    # Who is who first: it needs nothing running, so a failure here leaves nothing behind.
    her = await asyncio.to_thread(demo_applicant, SEED)
    other, third = await asyncio.to_thread(_other_people, her)
    demo = await start_demo_federation(workdir / "federation")
    try:
        cs = await start_case_service(demo, workdir / "case-service")
    except BaseException:
        await demo.stop()
        raise
    http = aiohttp.ClientSession()
    try:
        yield World(demo, cs, http, her, other, third, workdir)
    finally:
        await http.close()
        await cs.stop()
        await demo.stop()


# --- helpers ---------------------------------------------------------------------------------


def _auditor_token(demo: DemoFederation, node_id: str) -> str:
    # The auditors' API takes ES256 tokens of a listed auditor, addressed to one node.
    name = demo.fed.auditors[0]
    now = int(time.time())
    claims = {"iss": f"auditor:{name}", "aud": node_id, "iat": now, "exp": now + 120}
    key = load_private_key(demo.pki.auditor_jwt(name).key)
    return jwt.encode(claims, key, algorithm="ES256")


async def _audit_search(w: World, node_id: str, **query: str) -> list[dict[str, Any]]:
    url = f"{w.demo.node_url(node_id, 'audit')}/audit/search"
    headers = {"Authorization": f"Bearer {_auditor_token(w.demo, node_id)}"}
    async with w.http.get(url, params=query, headers=headers, ssl=w.demo.ssl_context()) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
    entries: list[dict[str, Any]] = body["entries"]
    return entries


def _logged(demo: DemoFederation, node_id: str, message_id: str) -> list[sqlite3.Row]:
    """The node's log rows for ``message_id``, read straight from the SQLite file (read-only):
    what an auditor's own tools see, independent of any API of the hub."""
    conn = sqlite3.connect(f"file:{demo.log_path(node_id)}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(
            "SELECT * FROM exchange WHERE message_id = ? ORDER BY leaf_index", (message_id,)
        ).fetchall()
    finally:
        conn.close()


def _signed_request_meta(demo: DemoFederation, node_id: str, message_id: str) -> dict[str, Any]:
    """The request metadata of the exchange as ``node_id`` logged it as provider, after
    checking the client's signature on it against the federation root: the fields read
    from it are the ones the client signed, not what a node wrote beside them."""
    rows = [r for r in _logged(demo, node_id, message_id) if r["role"] == "provider"]
    assert len(rows) == 1, f"{message_id} logged {len(rows)} times as provider on {node_id}"
    row = rows[0]
    conn = sqlite3.connect(f"file:{demo.log_path(node_id)}?mode=ro", uri=True)
    try:
        cert = conn.execute(
            "SELECT der FROM certificate WHERE sha256 = ?", (row["request_cert_sha256"],)
        ).fetchone()
    finally:
        conn.close()
    assert cert is not None, "the request's signing certificate is not in the log"
    root = x509.load_pem_x509_certificate(demo.pki.root_ca.cert.read_bytes())
    meta_bytes = bytes(row["request_meta"])
    body = None if row["request_body"] is None else bytes(row["request_body"])
    problem = check_signed_part(
        SignatureVerifier([root]), "request", orjson.loads(leaf_of(row)), meta_bytes,
        bytes(row["request_signature"]), bytes(cert[0]), body, (meta_bytes, body),
    )  # fmt: skip
    assert problem is None, problem
    meta: dict[str, Any] = orjson.loads(meta_bytes)
    return meta


async def _tracker(w: World, citizen_id: str) -> list[dict[str, Any]]:
    """Every node's /tracker/accesses for ``citizen_id``, merged, oldest first."""
    entries: list[dict[str, Any]] = []
    for node in w.demo.fed.nodes:
        if node.audit_listen is None:
            continue
        node_id = str(node.id)
        # A tracker accepts only tokens addressed to its own node.
        token = w.demo.citizen_token(citizen_id, node_id, ttl=120)
        after: int | None = -1
        while after is not None:
            async with w.http.get(
                f"{w.demo.node_url(node_id, 'audit')}/tracker/accesses",
                params={"limit": "1000", "after": str(after)},
                headers={"Authorization": f"Bearer {token}"},
                ssl=w.demo.ssl_context(),
            ) as resp:
                page = await resp.json(content_type=None)
                assert resp.status == 200, (node_id, page)
            assert page["node"] == node_id
            entries.extend(page["entries"])
            after = page["next_after"]
    entries.sort(key=lambda e: (e["at"], e["node"], e["leaf_index"]))
    return entries


async def _apply(w: World, who: str, juristic_id: str) -> dict[str, Any]:
    view: dict[str, Any] = await w.cs.client.apply(
        w.citizen(who), citizen_id=who, juristic_id=juristic_id
    )
    return view


async def _evidence_request(
    w: World, evidence_type: str, subject: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    """GET /evidence/{type}/{subject} on BMA's node, as the licensing system (mutual TLS)."""
    url = f"{w.demo.node_url(BMA_NODE, 'client_tls')}/evidence/{evidence_type}/{subject}"
    ssl_ctx = w.demo.ssl_context(client=CASE_SERVICE_CLIENT)
    async with w.http.get(url, headers=headers, ssl=ssl_ctx) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def _portal_request(
    w: World, path: str, message_id: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    """An r1 request of DGA's developer portal (a loopback client with auth = http)."""
    url = f"{w.demo.node_url(DGA_NODE)}/r1/{path}"
    sent = {"X-Road-Client": DEVPORTAL, "X-Road-Id": message_id, **headers}
    async with w.http.get(url, headers=sent) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


def _items(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["type"]: e for e in view["evidence"]}


# --- 1. the whole story ----------------------------------------------------------------------


async def test_the_once_only_story_through_the_case_service(world: World) -> None:
    w, her = world, world.her
    token = w.citizen(her.citizen_id)

    # She applies, typing two ids and uploading nothing; the case service gathers the rest.
    applied = await _apply(w, her.citizen_id, her.juristic_id)
    case_no = applied["case_no"]
    assert applied["status"] == "evidence-complete", applied["evidence"]
    items = _items(applied)
    assert set(items) == set(EVIDENCE)
    for etype, item in items.items():
        assert item["status"] == "ok" and item["attempts"] == 1, item
        assert item["error"] is None and item["message_id"] and item["sha256"]
        member = PROVIDER_OF[etype].rsplit("/", 1)[0]
        assert item["service"].startswith(member + "/"), item["service"]
    assert {(x["type"], x["reason"], x["ok"]) for x in applied["exchanges"]} == {
        (t, "apply", True) for t in EVIDENCE
    }
    assert {x["message_id"] for x in applied["exchanges"]} == {
        i["message_id"] for i in items.values()
    }

    # The preview shows what the agencies hold, in Thai and English, not a copy she uploaded.
    preview = _items(await w.cs.client.get(token, case_no))
    person = preview["identity"]["data"]["person"]
    assert person["citizenId"] == her.citizen_id
    name_th = f"{person['nameTh']['givenName']} {person['nameTh']['familyName']}"
    name_en = f"{person['nameEn']['givenName']} {person['nameEn']['familyName']}"
    assert (name_th, name_en) == (her.name_th, her.name_en)
    assert any("\u0e00" <= ch <= "\u0e7f" for ch in name_th)  # Thai script from DOPA
    house = preview["house_registration"]["data"]["houseRegistration"]
    assert house["citizenId"] == her.citizen_id and house["addressTh"]["province"]
    company = preview["company_registration"]["data"]
    assert company["juristic_id"] == her.juristic_id and company["name_th"] == her.company_th
    assert her.citizen_id in {d["citizen_id"] for d in company["directors"]}
    deeds = preview["title_deed"]["data"]["records"]
    assert deeds and all(d["owner_citizen_id"] == her.citizen_id for d in deeds)
    clearances = preview["tax_clearance"]["data"]["records"]
    assert clearances and all(r["juristic_id"] == her.juristic_id for r in clearances)
    # Decoded from TIS-620 / cp874 legacy files into real Thai text.
    assert any("\u0e00" <= ch <= "\u0e7f" for ch in deeds[0]["address_th"])
    assert any("\u0e00" <= ch <= "\u0e7f" for ch in clearances[0]["status_th"])

    confirmed = await w.cs.client.confirm(token, case_no)
    assert confirmed["status"] == "in-review"

    officer = w.officer()
    waiting = await w.cs.client.officer_cases(officer, status="in-review")
    assert case_no in {c["case_no"] for c in waiting}
    reason = "Identity, company, premises deed and tax clearance verified from registry evidence."
    decided = await w.cs.client.decide(officer, case_no, "approve", reason)
    assert decided["status"] == "approved"
    assert decided["decision"] == {
        "decision": "approved", "reason": reason, "by": OFFICER, "at": decided["decision"]["at"]
    }  # fmt: skip

    # She sees the status change, with every step in order.
    final = await w.cs.client.get(token, case_no, payload=False)
    assert final["status"] == "approved"
    history = final["history"]
    assert [h["status"] for h in history] == [
        "submitted", "evidence-complete", "in-review", "approved"
    ]  # fmt: skip
    assert [h["by"] for h in history] == [her.citizen_id, "case-service", her.citizen_id, OFFICER]
    times = [datetime.fromisoformat(h["at"]) for h in history]
    assert times == sorted(times)
    assert times[0] == datetime.fromisoformat(final["submitted_at"])

    # The case service kept references only; each one is an exchange in the provider's log,
    # with the case, the acting citizen and the purpose the client signed.
    for x in final["exchanges"]:
        node_id = PROVIDER_OF[x["type"]]
        found = await _audit_search(w, node_id, message_id=x["message_id"], role="provider")
        assert len(found) == 1, (x, found)
        entry = found[0]
        assert entry["client"] == CASE_SERVICE_CLIENT
        assert entry["issue"] == case_no
        assert entry["user_id"] == f"TH{her.citizen_id}" == x["user_id"]
        assert entry["status"] == 200 and entry["error_type"] is None
        subject = her.citizen_id if x["type"] in ABOUT_HER else her.juristic_id
        assert subject in entry["subjects"]
        meta = _signed_request_meta(w.demo, node_id, x["message_id"])
        assert meta["purpose"] == PURPOSE
        assert meta["evidence_type"] == x["type"]
        assert meta["issue"] == case_no and meta["user_id"] == f"TH{her.citizen_id}"
        assert "Public Health Act" in meta["legal_basis"]
        # The same exchange, as the consumer side logged it on BMA's node.
        consumer, _ = search_log(
            w.demo.log_path(BMA_NODE), SearchFilter(message_id=x["message_id"])
        )
        assert [(r["role"], r["issue"]) for r in consumer] == [("client", case_no)]


# --- 2. purpose limitation -------------------------------------------------------------------


async def test_a_purpose_the_provider_does_not_declare_is_refused_and_logged(world: World) -> None:
    w = world
    message_id = str(uuid.uuid4())
    status, headers, body = await _evidence_request(
        w,
        "identity",
        w.third,
        {
            "X-Road-Client": CASE_SERVICE_CLIENT,
            "X-Road-Id": message_id,
            "X-Road-UserId": "officer.malee",
            "X-Road-Issue": "BMA-FOOD-TEST",
            "X-Road-Purpose": "marketing",
            "X-Road-Legal-Basis": "none at all",
        },
    )
    assert headers.get("X-Road-Error") == "Server.ServerProxy.AccessDenied", (status, body)
    assert status >= 400
    message = body["message"]
    assert "'marketing' is not one of them" in message
    assert all(p in message for p in ACCEPTED), message
    # The refusal is an exchange of its own, on the provider's log and on the client's.
    (refused,) = await _audit_search(w, PROVIDER_OF["identity"], message_id=message_id)
    assert refused["role"] == "provider"
    assert refused["error_type"] == "Server.ServerProxy.AccessDenied"
    assert w.third in refused["subjects"]
    meta = _signed_request_meta(w.demo, PROVIDER_OF["identity"], message_id)
    assert meta["purpose"] == "marketing"
    consumer, _ = search_log(w.demo.log_path(BMA_NODE), SearchFilter(message_id=message_id))
    assert [r["error_type"] for r in consumer] == ["Server.ServerProxy.AccessDenied"]


async def test_a_request_without_purpose_is_refused_and_logged(world: World) -> None:
    w = world
    # r1, straight to DOL's title-deed service, stating no purpose.
    message_id = str(uuid.uuid4())
    status, headers, body = await _portal_request(
        w,
        f"TH/GOV/DOL/landoffice/titledeeds/records?owner_citizen_id={w.third}",
        message_id,
        {"X-Road-UserId": "dev.tester"},
    )
    assert headers.get("X-Road-Error") == "Server.ServerProxy.AccessDenied", (status, body)
    assert "names no purpose (send X-Road-Purpose" in body["message"]
    assert all(p in body["message"] for p in ACCEPTED)
    (refused,) = await _audit_search(w, DOL_NODE, message_id=message_id)
    assert (refused["role"], refused["client"]) == ("provider", DEVPORTAL)
    assert refused["error_type"] == "Server.ServerProxy.AccessDenied"
    assert w.third in refused["subjects"]
    meta = _signed_request_meta(w.demo, DOL_NODE, message_id)
    assert meta.get("purpose") is None
    consumer, _ = search_log(w.demo.log_path(DGA_NODE), SearchFilter(message_id=message_id))
    assert [(r["role"], r["error_type"]) for r in consumer] == [
        ("client", "Server.ServerProxy.AccessDenied")
    ]

    # The evidence API does not even send a request that states no purpose: BMA's node
    # refuses it itself, and the provider never sees it.
    local_id = str(uuid.uuid4())
    status, headers, body = await _evidence_request(
        w,
        "identity",
        w.third,
        {"X-Road-Client": CASE_SERVICE_CLIENT, "X-Road-Id": local_id, "X-Road-Issue": "X-1"},
    )
    assert status == 400 and "MissingPurpose" in headers.get("X-Road-Error", ""), (status, body)
    assert "X-Road-Purpose" in body["message"]
    assert await _audit_search(w, PROVIDER_OF["identity"], message_id=local_id) == []

    # Refused reads are still reads attempted about him: his tracker shows them as refusals.
    theirs = {e["message_id"]: e for e in await _tracker(w, w.third)}
    assert theirs[message_id]["refusal"] == "Server.ServerProxy.AccessDenied"
    assert theirs[message_id]["purpose"] is None and theirs[message_id]["client"] == DEVPORTAL
    assert local_id not in theirs


# --- 3. the citizens' data tracker -----------------------------------------------------------


async def _reads_by_case_service(w: World, citizen_id: str) -> dict[str, tuple[str, str]]:
    """message id -> (case number, evidence type) of every exchange the case service made
    about ``citizen_id`` personally that reached a provider, over all of that citizen's
    cases. An exchange refused before it left BMA's node (Server.ClientProxy.*, e.g. a
    provider node that was down) never reached a provider, so no provider logged it."""
    token = w.citizen(citizen_id)
    reads: dict[str, tuple[str, str]] = {}
    for case in await w.cs.client.list_cases(token):
        view = await w.cs.client.get(token, case["case_no"], payload=False)
        for x in view["exchanges"]:
            local = (x["error_code"] or "").startswith("Server.ClientProxy.")
            if x["type"] in ABOUT_HER and not local:
                reads[x["message_id"]] = (case["case_no"], x["type"])
    return reads


# Evidence whose answers name persons besides the one asked about (answer_subject).
NAMES_PERSONS = {"company_registration", "house_registration"}


async def _exchange_types(w: World, citizen_id: str) -> dict[str, str]:
    """Every exchange of the citizen's cases that reached a provider, by message id."""
    token = w.citizen(citizen_id)
    types: dict[str, str] = {}
    for case in await w.cs.client.list_cases(token):
        view = await w.cs.client.get(token, case["case_no"], payload=False)
        for x in view["exchanges"]:
            if not (x["error_code"] or "").startswith("Server.ClientProxy."):
                types[x["message_id"]] = x["type"]
    return types


async def test_the_data_tracker_shows_her_all_reads_of_her_data_and_nothing_else(
    world: World,
) -> None:
    w, her = world, world.her
    mine_case = (await _apply(w, her.citizen_id, her.juristic_id))["case_no"]
    # Her co-director applies for the same company: reads of *his* data, and of the company.
    his_view = await _apply(w, w.other, her.juristic_id)
    # And the developer portal reads his population record outright, for another purpose.
    portal_id = str(uuid.uuid4())
    status, _, body = await _portal_request(
        w,
        f"TH/GOV/DOPA/population/getPerson?citizenId={w.other}",
        portal_id,
        {"X-Road-UserId": "dev.tester", "X-Road-Purpose": "citizen-self-service"},
    )
    assert status == 200, body

    mine = await _tracker(w, her.citizen_id)
    expected = await _reads_by_case_service(w, her.citizen_id)
    assert mine_case in {case for case, _ in expected.values()}
    # Reads whose answers name persons (answer_subject): the company registry's answer names
    # its directors, both of them, whoever's case asked.
    types = await _exchange_types(w, her.citizen_id) | await _exchange_types(w, w.other)
    company_reads = {m for m, t in types.items() if t == "company_registration"}
    assert len(company_reads) >= 2  # her case and his (earlier tests add more)
    mine_ids = {e["message_id"] for e in mine}
    # Every case-service read of her data, every answer naming her; nothing else.
    assert set(expected) | company_reads <= mine_ids
    assert all(types.get(m) in NAMES_PERSONS for m in mine_ids - set(expected))
    for e in mine:
        if e["message_id"] not in expected:
            continue
        case_no, etype = expected[e["message_id"]]
        assert e["node"] == PROVIDER_OF[etype]
        assert (e["member"], e["agency"]) == ("TH/GOV/BMA", "Bangkok Metropolitan Administration")
        assert e["client"] == CASE_SERVICE_CLIENT
        assert e["official"] == f"TH{her.citizen_id}"
        assert (e["issue"], e["evidence_type"], e["purpose"]) == (case_no, etype, PURPOSE)
        assert e["legal_basis"] and e["status"] == 200 and e["refusal"] is None
        # An auditor confirms from the provider's log that the entry is about her.
        (logged,) = await _audit_search(w, e["node"], message_id=e["message_id"])
        assert her.citizen_id in logged["subjects"]
        assert w.other not in logged["subjects"]
    his_reads = {x["message_id"] for x in his_view["exchanges"]}
    assert all(types.get(m) in NAMES_PERSONS for m in his_reads & mine_ids)
    assert portal_id not in mine_ids

    # His view holds his reads, the portal's among them, the answers naming him, none of hers.
    his = {e["message_id"]: e for e in await _tracker(w, w.other)}
    about_him = set(await _reads_by_case_service(w, w.other)) | {portal_id}
    assert about_him | company_reads <= set(his)
    assert all(types.get(m) in NAMES_PERSONS for m in set(his) - about_him)
    assert all(types.get(m) in NAMES_PERSONS for m in set(his) & set(expected))
    portal = his[portal_id]
    assert (portal["client"], portal["official"], portal["purpose"]) == (
        DEVPORTAL, "dev.tester", "citizen-self-service"
    )  # fmt: skip
    assert portal["agency"] == "Digital Government Development Agency"
    assert all(
        e["official"] == f"TH{w.other}" and e["issue"] == his_view["case_no"]
        for m, e in his.items()
        if e["client"] == CASE_SERVICE_CLIENT and m in about_him
    )


# --- 4. a provider that is down --------------------------------------------------------------


async def _restart_node(demo: DemoFederation, node_id: str) -> Node:
    """Start ``node_id`` again on the same addresses, with the same keys and log.

    A Node object cannot be started a second time (its global-configuration client keeps
    the HTTP session it closed at stop), so a new Node is built from the stopped one's
    settings, exactly as runner.Federation built it, and takes its place in the federation
    so that demo.stop() stops it.
    """
    old = demo.federation.nodes[node_id]
    new = Node(
        old.config,
        old.pki,
        old.globalconf.url,
        old.data_dir,
        refresh_interval=demo.fed.registry.refresh_interval,
        witness_url=old.witness_url,
        auditors=old.auditors,
        tsa_url=old.tsa_url,
    )
    await new.start()
    demo.federation.nodes[node_id] = new
    # Flat-file services answer 503 until their export is loaded; wait for that, bounded.
    assert new.runtime is not None
    adapters = [
        s.adapter for s in new.runtime.services.values() if isinstance(s.adapter, FlatFileAdapter)
    ]
    deadline = time.monotonic() + 30
    while any(a.current is None for a in adapters):
        assert time.monotonic() < deadline, "the restarted node did not load its export"
        await asyncio.sleep(0.2)
        for a in adapters:
            await a.refresh()
    return new


async def test_a_provider_down_while_the_case_is_filled_then_back(world: World) -> None:
    # Method: the Department of Lands' node itself goes down (Node.stop: it stops listening,
    # finishes what is in flight and writes its final checkpoint), as a real outage of one
    # agency's security server would look to everyone else. It comes back as a new process
    # of that node would: same addresses, keys, configuration and message log.
    w, her = world, world.her
    token = w.citizen(her.citizen_id)
    await w.demo.federation.nodes[DOL_NODE].stop()
    restarted = False
    try:
        view = await _apply(w, her.citizen_id, her.juristic_id)
        case_no = view["case_no"]
        assert view["status"] == "evidence-missing"
        items = _items(view)
        assert {t for t, i in items.items() if i["status"] == "ok"} == set(EVIDENCE) - {
            "title_deed"
        }
        deed = items["title_deed"]
        assert deed["status"] == "failed" and deed["data"] is None
        error = deed["error"]
        assert error["source"] == "x-road"
        assert error["code"] == "Server.ClientProxy.NetworkError"
        assert DOL_NODE in error["message"]
        assert view["history"][-1]["note"] == "missing: title_deed"
        # She cannot send an incomplete case for review; she is told what is missing.
        with pytest.raises(CaseServiceError) as refused:
            await w.cs.client.confirm(token, case_no)
        assert refused.value.status == 409 and "title_deed" in refused.value.message
        # Nothing that worked is retried: only a failed item can be.
        with pytest.raises(CaseServiceError) as nothing:
            await w.cs.client.retry(token, case_no, "identity")
        assert nothing.value.status == 409

        await _restart_node(w.demo, DOL_NODE)
        restarted = True
        retried = await w.cs.client.retry(token, case_no, "title_deed")
    finally:
        if not restarted:
            # Later tests (and the final checkpoints) need the node back in any case.
            await _restart_node(w.demo, DOL_NODE)
    assert retried["status"] == "evidence-complete"
    deed = _items(retried)["title_deed"]
    assert (deed["status"], deed["attempts"], deed["error"]) == ("ok", 2, None)
    assert deed["data"]["records"][0]["owner_citizen_id"] == her.citizen_id
    assert [h["status"] for h in retried["history"]] == [
        "submitted", "evidence-missing", "evidence-complete"
    ]  # fmt: skip
    attempts = [x for x in retried["exchanges"] if x["type"] == "title_deed"]
    assert [(x["reason"], x["ok"]) for x in attempts] == [("apply", False), ("retry", True)]
    # The failed attempt never reached DOL; the retry is in DOL's log under the same case.
    assert await _audit_search(w, DOL_NODE, message_id=attempts[0]["message_id"]) == []
    (logged,) = await _audit_search(w, DOL_NODE, message_id=attempts[1]["message_id"])
    assert logged["issue"] == case_no and logged["status"] == 200
    confirmed = await w.cs.client.confirm(token, case_no)
    assert confirmed["status"] == "in-review"


# --- 5. SLA ----------------------------------------------------------------------------------


async def test_sla_of_a_fresh_case_service(world: World) -> None:
    # A case service of its own (fresh database, same federation): its statistics then count
    # this test's case alone, whatever the other tests did.
    w, her = world, world.her
    cs = await start_case_service(w.demo, w.workdir / "sla-case-service", sla_days=30)
    try:
        token, officer = w.citizen(her.citizen_id), w.officer()
        view = await cs.client.apply(token, citizen_id=her.citizen_id, juristic_id=her.juristic_id)
        case_no = view["case_no"]
        assert view["status"] == "evidence-complete"
        assert view["sla_days"] == 30 and view["overdue"] is False
        due = datetime.fromisoformat(view["due_at"]) - datetime.fromisoformat(view["submitted_at"])
        assert due.days == 30 and due.seconds == 0
        assert await cs.client.overdue(officer) == []
        before = await cs.client.stats(officer)
        assert (before["decided"], before["open"], before["overdue"]) == (0, 1, 0)
        assert before["within_sla_share"] is None

        await cs.client.confirm(token, case_no)
        await cs.client.decide(officer, case_no, "approve", "complete and verified")
        stats = await cs.client.stats(officer)
        assert (stats["decided"], stats["approved"], stats["rejected"]) == (1, 1, 0)
        assert (stats["within_sla"], stats["within_sla_share"]) == (1, 1.0)
        assert (stats["open"], stats["overdue"]) == (0, 0)
        assert stats["by_status"]["approved"] == 1
        assert 0 <= stats["median_days"] <= 30 and stats["p90_days"] == stats["median_days"]
        assert await cs.client.overdue(officer) == []
        decided = await cs.client.get(token, case_no, payload=False)
        assert decided["overdue"] is False and decided["decision"]["by"] == OFFICER
    finally:
        await cs.stop()


# --- 6. directorship before any company evidence ------------------------------------------------


def _not_a_director_of(juristic_id: str) -> str:
    persons = demo_people(SEED, 200)
    company = next(c for c in companies(SEED, 200, persons) if c.juristic_id == juristic_id)
    return next(p.citizen_id for p in persons if p.citizen_id not in company.directors)


async def test_a_citizen_who_is_not_a_director_is_refused_before_any_company_evidence(
    world: World,
) -> None:
    # Someone who typed her company's juristic id: the real registries, the real case
    # service, and the nodes' own logs say what was read.
    w, her = world, world.her
    stranger = await asyncio.to_thread(_not_a_director_of, her.juristic_id)
    with pytest.raises(CaseServiceError) as refused:
        await _apply(w, stranger, her.juristic_id)
    assert refused.value.status == 403 and refused.value.error == "not-a-director"
    assert "does not list you as a director" in refused.value.message
    case_no = refused.value.body["case_no"]

    # RD never saw a request for this case: no tax-clearance exchange in its log.
    assert await _audit_search(w, PROVIDER_OF["tax_clearance"], issue=case_no) == []
    # By the juristic id, BMA's node sent the company registration alone.
    consumer, _ = search_log(w.demo.log_path(BMA_NODE), SearchFilter(issue=case_no))
    services = sorted(r["service"] for r in consumer)
    assert not [s for s in services if s.startswith("TH/GOV/RD/")], services
    assert [s for s in services if s.startswith("TH/GOV/DBD/")] == [
        "TH/GOV/DBD/registry/companies"
    ], services
    (dbd,) = await _audit_search(w, PROVIDER_OF["company_registration"], issue=case_no)
    assert dbd["user_id"] == f"TH{stranger}" and dbd["status"] == 200

    # Her company's registration (its directors, her among them) is not shown to him.
    view = await w.cs.client.get(w.citizen(stranger), case_no)
    assert view["status"] == "refused"
    items = _items(view)
    assert items["company_registration"]["data"] is None
    assert items["company_registration"]["error"]["code"] == "NotADirector"
    assert items["tax_clearance"]["attempts"] == 0 and items["tax_clearance"]["data"] is None
    assert her.citizen_id not in str(view)
    assert "tax_clearance" not in {x["type"] for x in view["exchanges"]}
