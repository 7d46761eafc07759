"""The BMA licensing case service against a test double of the hub's evidence API.

The service runs as a real aiohttp server on loopback and is driven over HTTP (through its
own ``CaseServiceClient`` and, for raw status checks, plain aiohttp), as the demo will.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import structlog.testing
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from case_service.app import SERVICE, create_app
from case_service.client import CaseServiceClient, CaseServiceError
from case_service.config import ConfigError, Settings, load_settings
from case_service.devidp import generate_keypair, mint_token
from case_service.hub import MAX_IN_FLIGHT, HubClient, payload_digest
from case_service.service import CaseService
from case_service.store import Store
from case_service.thaiid import InvalidThaiId, check_digit, is_valid, validate
from xroad_hub.federation import NodeConfig

from .case_service_fakes import (
    CLIENT_ID,
    PAYLOAD_MARKERS,
    SERVICES,
    STRANGERS_COMPANY,
    Failure,
    FakeEvidenceHub,
    make_tls_material,
)

CITIZEN = "1101700203450"  # 110170020345 -> check digit 0 (worked in test_thai_id_known_values)
OTHER_CITIZEN = "1234567890121"
JURISTIC = "0105550123451"
OFFICER = "bma-officer-07"
AUDIENCE = "TH/GOV/BMA/licensing"
T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)  # 1 March 2026 = B.E. 2569
EVIDENCE_TYPES = [
    "identity",
    "house_registration",
    "company_registration",
    "tax_clearance",
    "title_deed",
]


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Idp:
    key: ec.EllipticCurvePrivateKey
    public_key: Path

    def token(self, sub: str, role: str | None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": "thaid",
            "aud": AUDIENCE,
            "sub": sub,
            "role": role,
            "iat": now,
            "exp": now + 600,
        }
        body.update(claims)
        return jwt.encode({k: v for k, v in body.items() if v is not None}, self.key, "ES256")


@dataclass
class Running:
    url: str
    client: CaseServiceClient
    http: aiohttp.ClientSession
    app: web.Application

    @property
    def service(self) -> CaseService:
        return self.app[SERVICE]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    key_path, pub_path = generate_keypair(tmp_path_factory.mktemp("idp"))
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Idp(key, pub_path)


@pytest.fixture
async def hub() -> AsyncIterator[FakeEvidenceHub]:
    fake = FakeEvidenceHub()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def settings(tmp_path: Path, hub: FakeEvidenceHub, idp: Idp) -> Settings:
    return Settings(
        node_url=hub.url,
        idp_public_key=idp.public_key,
        db_path=tmp_path / "cases.db",
        fetch_timeout=20,
    ).validated()


@contextlib.asynccontextmanager
async def running(settings: Settings, clock: FakeClock) -> AsyncIterator[Running]:
    app = create_app(settings, clock=clock)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:
            yield Running(url, CaseServiceClient(url, session=http), http, app)
    finally:
        await runner.cleanup()


@pytest.fixture
async def svc(settings: Settings, clock: FakeClock) -> AsyncIterator[Running]:
    async with running(settings, clock) as r:
        yield r


async def _apply(svc: Running, idp: Idp, citizen: str = CITIZEN) -> dict[str, Any]:
    return await svc.client.apply(
        idp.token(citizen, "citizen"), citizen_id=citizen, juristic_id=JURISTIC
    )


async def _raw(
    svc: Running, method: str, path: str, token: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with svc.http.request(method, svc.url + path, headers=headers, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


def _items(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["type"]: item for item in case["evidence"]}


# --- Thai id --------------------------------------------------------------------------------


def test_thai_id_known_values() -> None:
    # Weights 13..2 on d1..d12, by hand:
    # 1101700203450: 13+12+0+10+63+0+0+12+0+12+12+10 = 144; 144 mod 11 = 1; 11-1 = 10 -> 0
    assert check_digit("110170020345") == 0
    # 0105550123451: 0+12+0+50+45+40+0+6+10+12+12+10 = 197; 197 mod 11 = 10; 11-10 = 1
    assert check_digit("010555012345") == 1
    # 350010012345: 39+60+0+0+9+0+0+6+10+12+12+10 = 158; 158 mod 11 = 4; 11-4 = 7
    assert check_digit("350010012345") == 7
    # all zeros: sum 0; (11 - 0) mod 10 = 1
    assert check_digit("000000000000") == 1
    assert is_valid(CITIZEN) and is_valid(JURISTIC) and is_valid(OTHER_CITIZEN)
    assert not is_valid("1101700203451")
    assert not is_valid("110170020345")  # 12 digits
    assert not is_valid("๑๑๐๑๗๐๐๒๐๓๔๕๐")  # Thai digits are digits to str.isdigit, not to us
    with pytest.raises(InvalidThaiId, match="last digit should be 0"):
        validate("1101700203459", "citizen_id")


# --- apply, concurrency, headers, references --------------------------------------------------


async def test_apply_fetches_all_evidence_concurrently(
    svc: Running, hub: FakeEvidenceHub, idp: Idp
) -> None:
    # Each request is held until four are in flight: a service that fetched one after
    # another would see max_in_flight == 1 (and get its answers only after the gate timeout).
    # The four are her own evidence and the company registration; the tax clearance is
    # asked for only after the registration has named her as a director.
    hub.gate = len(EVIDENCE_TYPES) - 1
    case = await _apply(svc, idp)
    assert hub.max_in_flight == len(EVIDENCE_TYPES) - 1
    assert hub.events.index(("request", "tax_clearance")) > hub.events.index(
        ("answer", "company_registration")
    )
    assert case["case_no"] == "BMA-FOOD-2569-000001"
    assert case["status"] == "evidence-complete"
    assert [h["status"] for h in case["history"]] == ["submitted", "evidence-complete"]
    assert all(h["at"] for h in case["history"])
    items = _items(case)
    assert list(items) == EVIDENCE_TYPES
    for etype, item in items.items():
        assert item["status"] == "ok", item
        assert item["service"] == SERVICES[etype][0]
        assert item["data"] == hub.payload(etype, item["subject_id"])
        assert item["data_source"] == "cache"
        assert item["sha256"] == payload_digest(item["data"])
        assert item["title"]  # from the node's catalog
    second = await _apply(svc, idp)
    assert second["case_no"] == "BMA-FOOD-2569-000002"


async def test_requests_in_flight_stay_within_the_nodes_per_client_share(
    hub: FakeEvidenceHub,
) -> None:
    # A node refuses a client system's requests beyond its share (client_max_concurrent)
    # at once with 429, which would leave the case's evidence failed: with seven or more
    # applications at once (five fetches each) the case service must wait for a free
    # connection instead. Requests are held until one more than the share is in flight,
    # which a capped client never reaches (each then answers after gate_timeout).
    share = {f.name: f.default for f in dataclasses.fields(NodeConfig)}["client_max_concurrent"]
    assert share >= MAX_IN_FLIGHT
    hub.gate, hub.gate_timeout = MAX_IN_FLIGHT + 1, 0.3
    client = HubClient(hub.url, CLIENT_ID)

    async def fetch(i: int) -> Any:
        issue = f"BMA-FOOD-2569-{i:06d}"
        return await client.fetch(
            "identity", CITIZEN, user_id=f"TH{CITIZEN}", issue=issue,
            purpose="food-business-licence", legal_basis="test",
        )  # fmt: skip

    await client.start()
    try:
        answers = await asyncio.gather(*(fetch(i) for i in range(MAX_IN_FLIGHT + 8)))
    finally:
        await client.close()
    assert all(a.ok for a in answers), [a.error for a in answers if not a.ok][:1]
    assert hub.max_in_flight == MAX_IN_FLIGHT


async def test_concurrent_applications_get_distinct_numbers(svc: Running, idp: Idp) -> None:
    cases = await asyncio.gather(*(_apply(svc, idp, c) for c in [CITIZEN, OTHER_CITIZEN] * 3))
    numbers = sorted(c["case_no"] for c in cases)
    assert numbers == [f"BMA-FOOD-2569-{n:06d}" for n in range(1, 7)]
    assert {c["status"] for c in cases} == {"evidence-complete"}


async def test_evidence_types_route(svc: Running, idp: Idp) -> None:
    body = await svc.client.evidence_types(idp.token(OFFICER, "officer"))
    (food,) = body["case_types"]
    assert food["code"] == "food-business-licence" and food["sla_days"] == 30
    assert [(e["type"], e["subject"]) for e in food["evidence"]] == [
        (t, SERVICES[t][1]) for t in EVIDENCE_TYPES
    ]
    assert food["evidence"][0]["service"] == "TH/GOV/DOPA/population/getPerson"


async def test_exchange_headers_say_who_acts_and_why(
    svc: Running, hub: FakeEvidenceHub, idp: Idp
) -> None:
    case = await _apply(svc, idp)
    sent = hub.evidence_requests()
    assert sorted(r.evidence_type or "" for r in sent) == sorted(EVIDENCE_TYPES)
    for r in sent:
        h = r.headers
        assert h["X-Road-Client"] == "TH/GOV/BMA/licensing"
        assert h["X-Road-UserId"] == f"TH{CITIZEN}"  # the citizen acts for herself
        assert h["X-Road-Issue"] == case["case_no"]
        assert h["X-Road-Purpose"] == "food-business-licence"
        assert h["X-Road-Legal-Basis"] == (
            "Public Health Act B.E. 2535 s.38; Licensing Facilitation Act B.E. 2558"
        )
        assert h["X-Road-Id"]
        kind = SERVICES[r.evidence_type or ""][1]
        assert r.subject == (JURISTIC if kind == "juristic_id" else CITIZEN)
    # The reference is the exchange the hub logged: same message id.
    items = _items(case)
    assert {items[r.evidence_type or ""]["message_id"] for r in sent} == {
        r.headers["X-Road-Id"] for r in sent
    }


async def test_sqlite_holds_references_not_payloads(
    svc: Running, hub: FakeEvidenceHub, idp: Idp, settings: Settings
) -> None:
    case = await _apply(svc, idp)
    conn = sqlite3.connect(settings.db_path)
    try:
        rows = conn.execute(
            "SELECT type, subject_id, message_id, service, retrieved_at, sha256 FROM evidence"
            " WHERE case_no = ?",
            (case["case_no"],),
        ).fetchall()
        # Flush the WAL into the main file so the byte scan below sees everything.
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    finally:
        conn.close()
    assert len(rows) == len(EVIDENCE_TYPES)
    for etype, subject, message_id, service, retrieved_at, sha256 in rows:
        assert message_id and retrieved_at
        assert service == SERVICES[etype][0]
        assert sha256 == payload_digest(hub.payload(etype, subject))
    for path in settings.db_path.parent.glob(settings.db_path.name + "*"):
        raw = path.read_bytes()
        for marker in PAYLOAD_MARKERS:
            assert marker.encode() not in raw, f"payload text {marker!r} found in {path.name}"


async def test_case_database_is_readable_by_its_owner_only(
    tmp_path: Path, hub: FakeEvidenceHub, idp: Idp, clock: FakeClock
) -> None:
    """The database holds citizens' cases: 0600 for it and SQLite's side files, even under a
    permissive umask, and a file left too open by someone else is tightened on start."""
    fresh = Settings(
        node_url=hub.url, idp_public_key=idp.public_key, db_path=tmp_path / "new" / "cases.db"
    ).validated()
    old_umask = os.umask(0o000)  # the worst case: files would otherwise be 0666
    try:
        async with running(fresh, clock) as svc:
            await _apply(svc, idp)
            files = sorted(fresh.db_path.parent.iterdir())
            assert [f.name for f in files] == ["cases.db", "cases.db-shm", "cases.db-wal"]
            assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
                f.name: 0o600 for f in files
            }
            assert stat.S_IMODE(fresh.db_path.parent.stat().st_mode) == 0o700
    finally:
        os.umask(old_umask)

    # A database (and journal) that an older version or a copy left world-readable.
    for suffix in ("", "-journal"):
        fresh.db_path.with_name("cases.db" + suffix).touch()
        fresh.db_path.with_name("cases.db" + suffix).chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        async with running(fresh, clock):
            pass
    for f in fresh.db_path.parent.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    fixed = [e for e in logs if e["event"] == "case_db.permissions_fixed"]
    assert {Path(e["path"]).name for e in fixed} >= {"cases.db", "cases.db-journal"}
    assert {e["was"] for e in fixed} == {"0o644"}


# --- preview, restart, changed evidence ---------------------------------------------------


async def test_preview_refetches_after_restart_and_flags_changed_evidence(
    settings: Settings, clock: FakeClock, hub: FakeEvidenceHub, idp: Idp
) -> None:
    citizen = idp.token(CITIZEN, "citizen")
    async with running(settings, clock) as svc:
        case = await _apply(svc, idp)
        case_no = case["case_no"]
        before = len(hub.evidence_requests())
        again = await svc.client.get(citizen, case_no)
        assert len(hub.evidence_requests()) == before  # served from the cache
        assert {i["data_source"] for i in again["evidence"]} == {"cache"}

    # A restart empties the cache: the preview fetches again through the hub (new exchanges
    # on behalf of the viewer), and the digests still match.
    async with running(settings, clock) as svc:
        officer = idp.token(OFFICER, "officer")
        seen = await svc.client.get(officer, case_no)
        views = hub.evidence_requests()[before:]
        assert len(views) == len(EVIDENCE_TYPES)
        assert {r.headers["X-Road-UserId"] for r in views} == {OFFICER}
        assert {r.headers["X-Road-Issue"] for r in views} == {case_no}
        for item in seen["evidence"]:
            assert item["data_source"] == "hub"
            assert item["changed_since"] is False and item["notice"] is None
            assert item["data"] == hub.payload(item["type"], item["subject_id"])
        assert [x["reason"] for x in seen["exchanges"]].count("view") == len(EVIDENCE_TYPES)
        # payload=0 shows references only and makes no exchange.
        count = len(hub.requests)
        refs_only = await svc.client.get(citizen, case_no, payload=False)
        assert len(hub.requests) == count
        assert all(i["data"] is None and i["sha256"] for i in refs_only["evidence"])

    # The land office's record changes; the next restart's preview says so.
    changed = hub.payload("title_deed", CITIZEN) | {"area_sqw": 75}
    hub.overrides[("title_deed", CITIZEN)] = changed
    async with running(settings, clock) as svc:
        seen = await svc.client.get(citizen, case_no)
        items = _items(seen)
        assert items["title_deed"]["changed_since"] is True
        assert "evidence changed since" in items["title_deed"]["notice"]
        assert items["title_deed"]["data"] == changed
        # The case keeps the reference it was built on.
        assert items["title_deed"]["sha256"] == case["evidence"][4]["sha256"]
        assert not any(items[t]["changed_since"] for t in EVIDENCE_TYPES if t != "title_deed")


# --- workflow -----------------------------------------------------------------------------


async def test_confirm_then_decision_with_reason(svc: Running, idp: Idp) -> None:
    citizen, officer = idp.token(CITIZEN, "citizen"), idp.token(OFFICER, "officer")
    case_no = (await _apply(svc, idp))["case_no"]
    confirmed = await svc.client.confirm(citizen, case_no)
    assert confirmed["status"] == "in-review"

    in_review = await svc.client.officer_cases(officer, status="in-review")
    assert [c["case_no"] for c in in_review] == [case_no]

    with pytest.raises(CaseServiceError) as info:
        await svc.client.decide(officer, case_no, "reject")
    assert info.value.status == 400 and "reason" in info.value.message
    with pytest.raises(CaseServiceError) as info:
        await svc.client.decide(officer, case_no, "postpone")
    assert info.value.status == 400

    reason = "ร้านไม่ผ่านการตรวจสุขลักษณะ: no hand-washing sink in the kitchen"
    decided = await svc.client.decide(officer, case_no, "reject", reason)
    assert decided["status"] == "rejected"
    assert decided["decision"]["reason"] == reason
    assert decided["decision"]["by"] == OFFICER

    # The citizen sees the whole history with timestamps, the decision and its reason.
    mine = await svc.client.get(citizen, case_no, payload=False)
    assert [(h["status"], h["by"]) for h in mine["history"]] == [
        ("submitted", CITIZEN),
        ("evidence-complete", "case-service"),
        ("in-review", CITIZEN),
        ("rejected", OFFICER),
    ]
    assert mine["history"][-1]["note"] == reason
    assert mine["decision"]["decision"] == "rejected"


async def test_withdraw_before_decision(svc: Running, idp: Idp) -> None:
    citizen = idp.token(CITIZEN, "citizen")
    case_no = (await _apply(svc, idp))["case_no"]
    withdrawn = await svc.client.withdraw(citizen, case_no, "opening elsewhere")
    assert withdrawn["status"] == "withdrawn"
    assert withdrawn["history"][-1] == {
        "status": "withdrawn",
        "at": withdrawn["updated_at"],
        "by": CITIZEN,
        "note": "opening elsewhere",
    }
    # The documents of a withdrawn case are no longer held.
    assert all(k[0] != case_no for k in svc.service.cache._items)


async def test_illegal_transitions_are_409_with_a_reason(
    svc: Running, hub: FakeEvidenceHub, idp: Idp
) -> None:
    citizen, officer = idp.token(CITIZEN, "citizen"), idp.token(OFFICER, "officer")

    async def refused(call: Any, *args: Any) -> str:
        with pytest.raises(CaseServiceError) as info:
            await call(*args)
        assert info.value.status == 409, info.value
        assert info.value.error == "illegal-transition"
        return info.value.message

    hub.fail("tax_clearance", Failure("xroad"))
    missing = (await _apply(svc, idp))["case_no"]
    msg = await refused(svc.client.confirm, citizen, missing)
    assert "evidence is missing (tax_clearance)" in msg
    msg = await refused(svc.client.decide, officer, missing, "approve")
    assert "it is evidence-missing" in msg
    hub.recover()

    case_no = (await _apply(svc, idp))["case_no"]
    await refused(svc.client.decide, officer, case_no, "approve")  # not yet confirmed
    msg = await refused(svc.client.retry, citizen, case_no, "identity")  # nothing failed
    assert "only items of a case with missing evidence" in msg
    await svc.client.confirm(citizen, case_no)
    await refused(svc.client.confirm, citizen, case_no)
    await svc.client.decide(officer, case_no, "approve")
    await refused(svc.client.decide, officer, case_no, "reject", "second thoughts")
    msg = await refused(svc.client.withdraw, citizen, case_no)
    assert "approved" in msg

    await svc.client.withdraw(citizen, missing)
    await refused(svc.client.withdraw, citizen, missing)
    await refused(svc.client.retry, citizen, missing, "tax_clearance")

    # Role-bound steps: an officer cannot confirm for the citizen, a citizen cannot decide.
    with pytest.raises(CaseServiceError) as info:
        await svc.client.confirm(officer, case_no)
    assert info.value.status == 403
    with pytest.raises(CaseServiceError) as info:
        await svc.client.decide(citizen, case_no, "approve")
    assert info.value.status == 403


async def test_provider_down_then_retry(svc: Running, hub: FakeEvidenceHub, idp: Idp) -> None:
    citizen, officer = idp.token(CITIZEN, "citizen"), idp.token(OFFICER, "officer")
    hub.fail(
        "tax_clearance",
        Failure(
            "xroad", 500, "Server.ServerProxy.NetworkError", "RD's export service is unreachable"
        ),
    )
    hub.fail(
        "house_registration",
        Failure("provider", 503, body='{"problem": "DOPA registry under maintenance"}'),
    )
    case = await _apply(svc, idp)
    case_no = case["case_no"]
    assert case["status"] == "evidence-missing"
    items = _items(case)
    tax = items["tax_clearance"]
    assert tax["status"] == "failed"
    assert tax["error"]["source"] == "x-road"
    assert tax["error"]["status"] == 500
    assert tax["error"]["code"] == "Server.ServerProxy.NetworkError"
    assert tax["error"]["message"] == "RD's export service is unreachable"
    assert tax["error"]["detail"]
    house = items["house_registration"]
    assert house["error"]["source"] == "provider"
    assert house["error"]["status"] == 503
    assert house["error"]["code"] is None
    assert "DOPA registry under maintenance" in house["error"]["body_excerpt"]
    assert items["identity"]["status"] == "ok"  # one failure cancels nothing
    assert case["history"][-1]["note"] == "missing: house_registration, tax_clearance"

    # Still down: the retry fails again, visibly.
    again = await svc.client.retry(citizen, case_no, "tax_clearance")
    assert again["status"] == "evidence-missing"
    assert _items(again)["tax_clearance"]["attempts"] == 2

    hub.recover()
    one = await svc.client.retry(citizen, case_no, "tax_clearance")
    assert one["status"] == "evidence-missing"  # house registration still missing
    # An officer may retry too; the fetch then acts on the officer's behalf.
    done = await svc.client.retry(officer, case_no, "house_registration")
    assert done["status"] == "evidence-complete"
    assert _items(done)["house_registration"]["error"] is None
    assert hub.evidence_requests()[-1].headers["X-Road-UserId"] == OFFICER
    assert [h["status"] for h in done["history"]] == [
        "submitted",
        "evidence-missing",
        "evidence-complete",
    ]
    assert [x["reason"] for x in done["exchanges"]].count("retry") == 3
    assert (await svc.client.confirm(citizen, case_no))["status"] == "in-review"


async def test_company_registry_down_holds_back_the_company_evidence(
    svc: Running, hub: FakeEvidenceHub, idp: Idp
) -> None:
    """Without a registration naming her as a director, nothing else is asked about the
    company: the tax clearance waits, and goes out when the registration is retried."""
    citizen = idp.token(CITIZEN, "citizen")
    hub.fail(
        "company_registration",
        Failure("provider", 503, body='{"problem": "DBD registry under maintenance"}'),
    )
    case = await _apply(svc, idp)
    case_no = case["case_no"]
    assert case["status"] == "evidence-missing"
    items = _items(case)
    assert items["company_registration"]["error"]["source"] == "provider"
    tax = items["tax_clearance"]
    assert (tax["status"], tax["attempts"], tax["message_id"]) == ("failed", 0, None)
    assert tax["error"]["code"] == "DirectorshipNotEstablished"
    assert "retry company_registration" in tax["error"]["message"]
    assert {i["status"] for t, i in items.items() if SERVICES[t][1] == "citizen_id"} == {"ok"}
    assert "tax_clearance" not in {r.evidence_type for r in hub.evidence_requests()}
    assert "tax_clearance" not in {x["type"] for x in case["exchanges"]}

    # Retrying the tax clearance first is refused, still without asking RD anything.
    with pytest.raises(CaseServiceError) as info:
        await svc.client.retry(citizen, case_no, "tax_clearance")
    assert info.value.status == 409 and "retry company_registration first" in info.value.message
    assert "tax_clearance" not in {r.evidence_type for r in hub.evidence_requests()}

    hub.recover()
    done = await svc.client.retry(citizen, case_no, "company_registration")
    assert done["status"] == "evidence-complete"
    assert _items(done)["tax_clearance"]["attempts"] == 1
    assert hub.events[-4:] == [
        ("request", "company_registration"),
        ("answer", "company_registration"),
        ("request", "tax_clearance"),
        ("answer", "tax_clearance"),
    ]


async def test_node_unreachable_and_connection_dropped(
    settings: Settings, clock: FakeClock, hub: FakeEvidenceHub, idp: Idp
) -> None:
    hub.fail("identity", Failure("drop"))
    async with running(settings, clock) as svc:
        case = await _apply(svc, idp)
        assert case["status"] == "evidence-missing"
        assert _items(case)["identity"]["error"]["source"] == "network"
        assert _items(case)["house_registration"]["status"] == "ok"
        await hub.close()
        retried = await svc.client.retry(idp.token(CITIZEN, "citizen"), case["case_no"], "identity")
        error = _items(retried)["identity"]["error"]
        assert error["source"] == "network"
        assert "could not be reached" in error["message"]


async def test_interrupted_fetches_become_retryable_failures(
    settings: Settings, clock: FakeClock, idp: Idp
) -> None:
    # A process killed between creating a case and storing its evidence leaves it
    # 'submitted' with pending items; the next start turns that into a retryable state.
    store = Store(settings.db_path)
    await store.open()
    case_no = await store.create_case(
        agency="BMA",
        prefix="FOOD",
        year_be=2569,
        case_type="food-business-licence",
        citizen_id=CITIZEN,
        juristic_id=JURISTIC,
        submitted_at=T0,
        due_at=T0 + timedelta(days=30),
        sla_days=30,
        evidence=[("identity", "citizen_id", CITIZEN)],
        actor=CITIZEN,
    )
    await store.close()
    async with running(settings, clock) as svc:
        citizen = idp.token(CITIZEN, "citizen")
        case = await svc.client.get(citizen, case_no)
        assert case["status"] == "evidence-missing"
        assert "interrupted" in case["evidence"][0]["error"]["message"]
        fixed = await svc.client.retry(citizen, case_no, "identity")
        assert fixed["status"] == "evidence-complete"


# --- who sees what ------------------------------------------------------------------------


async def test_citizen_sees_only_her_own_cases(svc: Running, idp: Idp) -> None:
    mine = (await _apply(svc, idp))["case_no"]
    theirs = (await _apply(svc, idp, OTHER_CITIZEN))["case_no"]
    me = idp.token(CITIZEN, "citizen")
    for call in (
        svc.client.get(me, theirs),
        svc.client.confirm(me, theirs),
        svc.client.withdraw(me, theirs),
        svc.client.retry(me, theirs, "identity"),
        svc.client.get(me, "BMA-FOOD-2569-999999"),
    ):
        with pytest.raises(CaseServiceError) as info:
            await call
        assert info.value.status == 404  # same answer as for a case that does not exist
    assert [c["case_no"] for c in await svc.client.list_cases(me)] == [mine]
    officer = idp.token(OFFICER, "officer")
    assert {c["case_no"] for c in await svc.client.officer_cases(officer)} == {mine, theirs}
    assert (await svc.client.get(officer, theirs))["citizen_id"] == OTHER_CITIZEN

    # Applying under someone else's citizen id would read their registry records.
    status, body = await _raw(
        svc,
        "POST",
        "/cases",
        me,
        json={"citizen_id": OTHER_CITIZEN, "juristic_id": JURISTIC},
    )
    assert status == 403 and "your own" in body["message"]


async def test_officer_filters(svc: Running, hub: FakeEvidenceHub, idp: Idp) -> None:
    officer = idp.token(OFFICER, "officer")
    complete = (await _apply(svc, idp))["case_no"]
    hub.fail("title_deed", Failure("xroad"))
    missing = (await _apply(svc, idp))["case_no"]
    by_status = await svc.client.officer_cases(officer, status="evidence-missing")
    assert [c["case_no"] for c in by_status] == [missing]
    status, body = await _raw(
        svc, "GET", "/officer/cases?status=evidence-complete,evidence-missing", officer
    )
    assert status == 200 and [c["case_no"] for c in body["cases"]] == [complete, missing]
    status, body = await _raw(svc, "GET", "/officer/cases?status=lost", officer)
    assert status == 400 and "unknown status" in body["message"]


# --- tokens -------------------------------------------------------------------------------


async def test_token_checks(svc: Running, idp: Idp) -> None:
    case_no = (await _apply(svc, idp))["case_no"]
    now = int(time.time())
    intruder = ec.generate_private_key(ec.SECP256R1())
    bad_signature = mint_token(intruder, sub=CITIZEN, role="citizen")
    hs256 = jwt.encode(
        {"iss": "thaid", "aud": AUDIENCE, "sub": CITIZEN, "role": "citizen"}
        | {"iat": now, "exp": now + 60},
        "a-secret-shared-by-nobody-at-all-32b",
        "HS256",
    )
    path = f"/cases/{case_no}"
    unauthenticated = {
        "no token": None,
        "expired": idp.token(CITIZEN, "citizen", iat=now - 4000, exp=now - 400),
        "bad signature": bad_signature,
        "wrong audience": idp.token(CITIZEN, "citizen", aud="TH/GOV/DGA/citizenportal"),
        "wrong issuer": idp.token(CITIZEN, "citizen", iss="someone-else"),
        "lifetime over an hour": idp.token(CITIZEN, "citizen", exp=now + 7200),
        "no exp": idp.token(CITIZEN, "citizen", exp=None),
        "no iat": idp.token(CITIZEN, "citizen", iat=None),
        "no role": idp.token(CITIZEN, None),
        "unknown role": idp.token(CITIZEN, "admin"),
        "citizen sub not a citizen id": idp.token("1101700203451", "citizen"),
        "HS256": hs256,
        "garbage": "not.a.token",
    }
    for label, token in unauthenticated.items():
        status, body = await _raw(svc, "GET", path, token)
        assert status == 401, label
        assert body["error"] == "unauthenticated", label

    citizen, officer = idp.token(CITIZEN, "citizen"), idp.token(OFFICER, "officer")
    wrong_role = [
        ("POST", "/cases", officer),
        ("GET", "/officer/cases", citizen),
        ("GET", "/officer/overdue", citizen),
        ("GET", "/officer/stats", citizen),
        ("POST", f"{path}/decision", citizen),
        ("POST", f"{path}/confirm", officer),
        ("POST", f"{path}/withdraw", officer),
    ]
    for method, p, token in wrong_role:
        status, body = await _raw(svc, method, p, token, json={"decision": "approve"})
        assert status == 403, (method, p)

    assert (await _raw(svc, "GET", "/health"))[0] == 200  # the only public route
    assert (await _raw(svc, "GET", path, citizen))[0] == 200


async def test_invalid_ids_are_400_before_any_exchange(
    svc: Running, hub: FakeEvidenceHub, idp: Idp
) -> None:
    token = idp.token(CITIZEN, "citizen")
    bad = [
        ({"citizen_id": "1101700203451", "juristic_id": JURISTIC}, "check digit"),
        ({"citizen_id": CITIZEN, "juristic_id": "0105550123452"}, "juristic_id"),
        ({"citizen_id": "11017002034", "juristic_id": JURISTIC}, "13 digits"),
        ({"citizen_id": CITIZEN, "juristic_id": "01055501234x1"}, "13 digits"),
        ({"citizen_id": CITIZEN}, "juristic_id"),
        ({"citizen_id": CITIZEN, "juristic_id": JURISTIC, "case_type": "casino"}, "case_type"),
    ]
    for body, words in bad:
        status, answer = await _raw(svc, "POST", "/cases", token, json=body)
        assert status == 400, body
        assert words in answer["message"], answer
    status, answer = await _raw(svc, "POST", "/cases", token, data=b"{not json")
    assert status == 400
    assert hub.evidence_requests() == []


# --- SLA ----------------------------------------------------------------------------------


async def test_sla_due_dates_overdue_and_stats(svc: Running, clock: FakeClock, idp: Idp) -> None:
    citizen, officer = idp.token(CITIZEN, "citizen"), idp.token(OFFICER, "officer")
    fast, slow, stuck, dropped = [(await _apply(svc, idp))["case_no"] for _ in range(4)]
    case = await svc.client.get(citizen, fast, payload=False)
    assert case["sla_days"] == 30
    assert case["due_at"] == (T0 + timedelta(days=30)).isoformat(timespec="microseconds")
    for c in (fast, slow, stuck):
        await svc.client.confirm(citizen, c)
    await svc.client.withdraw(citizen, dropped)

    clock.advance(days=10)
    await svc.client.decide(officer, fast, "approve")
    assert await svc.client.overdue(officer) == []

    clock.advance(days=21)  # day 31: past due
    overdue = await svc.client.overdue(officer)
    assert [c["case_no"] for c in overdue] == [slow, stuck]  # withdrawn is not overdue
    assert overdue[0]["days_overdue"] == 1.0
    assert overdue[0]["overdue"] is True
    assert (await svc.client.get(citizen, fast, payload=False))["overdue"] is False

    clock.advance(days=9)  # day 40
    await svc.client.decide(officer, slow, "reject", "kitchen failed inspection")
    assert [c["case_no"] for c in await svc.client.overdue(officer)] == [stuck]

    stats = await svc.client.stats(officer)
    assert stats["decided"] == 2
    assert stats["approved"] == 1 and stats["rejected"] == 1
    assert stats["mean_days"] == 25.0
    assert stats["median_days"] == 25.0
    assert stats["p90_days"] == 40.0  # nearest rank: ceil(0.9 * 2) = 2nd of [10, 40]
    assert stats["within_sla"] == 1
    assert stats["within_sla_share"] == 0.5
    assert stats["open"] == 1 and stats["overdue"] == 1
    assert stats["by_status"]["withdrawn"] == 1


async def test_case_numbers_use_bangkok_buddhist_year(
    svc: Running, clock: FakeClock, idp: Idp
) -> None:
    clock.now = datetime(2026, 12, 31, 16, 59, tzinfo=UTC)  # 23:59 in Bangkok
    assert (await _apply(svc, idp))["case_no"] == "BMA-FOOD-2569-000001"
    clock.now = datetime(2026, 12, 31, 17, 1, tzinfo=UTC)  # 00:01 on 1 Jan 2027 in Bangkok
    assert (await _apply(svc, idp))["case_no"] == "BMA-FOOD-2570-000001"


async def test_sla_days_from_configuration(
    tmp_path: Path, hub: FakeEvidenceHub, idp: Idp, clock: FakeClock
) -> None:
    settings = load_settings(
        None,
        node_url=hub.url,
        idp_public_key=idp.public_key,
        db_path=tmp_path / "sla.db",
        sla_days=15,
    )
    async with running(settings, clock) as svc:
        case = await _apply(svc, idp)
        assert case["sla_days"] == 15
        assert case["due_at"] == (T0 + timedelta(days=15)).isoformat(timespec="microseconds")


# --- mutual TLS to the node ---------------------------------------------------------------


async def test_mutual_tls_to_the_node(tmp_path: Path, idp: Idp, clock: FakeClock) -> None:
    tls = make_tls_material(tmp_path / "pki")
    node = FakeEvidenceHub(ssl_context=tls.server_context())
    await node.start()
    try:
        with_cert = Settings(
            node_url=node.url,
            idp_public_key=idp.public_key,
            db_path=tmp_path / "mtls.db",
            tls_cert=tls.client_cert,
            tls_key=tls.client_key,
            tls_ca=tls.ca,
        ).validated()
        async with running(with_cert, clock) as svc:
            case = await _apply(svc, idp)
            assert case["status"] == "evidence-complete"
        assert {r.peer_cn for r in node.evidence_requests()} == {"TH/GOV/BMA/licensing"}

        # Without a client certificate the node refuses the handshake.
        without = Settings(
            node_url=node.url,
            idp_public_key=idp.public_key,
            db_path=tmp_path / "nocert.db",
            tls_ca=tls.ca,
        ).validated()
        count = len(node.evidence_requests())
        async with running(without, clock) as svc:
            case = await _apply(svc, idp)
            assert case["status"] == "evidence-missing"
            sources = {i["type"]: i["error"]["source"] for i in case["evidence"]}
            # The tax clearance is not even tried without the company registration.
            assert sources.pop("tax_clearance") == "case-service"
            assert set(sources.values()) == {"network"}
        assert len(node.evidence_requests()) == count
    finally:
        await node.close()


# --- configuration ------------------------------------------------------------------------


def test_toml_configuration(tmp_path: Path, idp: Idp) -> None:
    cfg = tmp_path / "case-service.toml"
    cfg.write_text(
        f"""
listen = "127.0.0.1:8700"
db = "data/cases.db"
node_url = "https://127.0.0.1:8444"
[tls]
cert = "tls/client.cert.pem"
key = "tls/client.key.pem"
ca = "tls/ca.pem"
[idp]
public_key = "{idp.public_key}"
[case_types.food-business-licence]
sla_days = 45
""",
        encoding="utf-8",
    )
    s = load_settings(cfg)
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 8700)
    assert s.db_path == tmp_path / "data" / "cases.db"
    assert s.tls_cert == tmp_path / "tls" / "client.cert.pem"
    assert s.case_types["food-business-licence"].sla_days == 45
    assert s.case_types["food-business-licence"].purpose == "food-business-licence"
    assert load_settings(cfg, sla_days=20).case_types["food-business-licence"].sla_days == 20

    # The documented example stays loadable.
    example = load_settings(Path(__file__).parent.parent / "case_service/config.example.toml")
    assert example.client_id == "TH/GOV/BMA/licensing"
    assert example.case_types["food-business-licence"].sla_days == 30

    cfg.write_text('node_url = "http://x"\n[tsl]\ncert = "a"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown configuration keys"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="public_key"):
        load_settings(None)
    # Company evidence without the registration that says who may ask for it is refused.
    cfg.write_text(
        f'[idp]\npublic_key = "{idp.public_key}"\n'
        "[case_types.food-business-licence]\n"
        'evidence = { identity = "citizen_id", tax_clearance = "juristic_id" }\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="company_registration"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="printable ASCII"):
        cfg.write_text(
            f'[idp]\npublic_key = "{idp.public_key}"\n'
            '[case_types.food-business-licence]\nlegal_basis = "พ.ร.บ. การสาธารณสุข"\n',
            encoding="utf-8",
        )
        load_settings(cfg)


async def test_a_company_she_does_not_direct_refuses_the_application(
    svc: Running, hub: FakeEvidenceHub, idp: Idp
) -> None:
    """Typing another company's juristic id gets her nothing of that company: the registration
    is checked first, is not shown to her, and no other evidence about it is fetched."""
    citizen = idp.token(CITIZEN, "citizen")
    with pytest.raises(CaseServiceError) as info:
        await svc.client.apply(citizen, citizen_id=CITIZEN, juristic_id=STRANGERS_COMPANY)
    assert info.value.status == 403 and info.value.error == "not-a-director"
    assert "not list you as a director of " + STRANGERS_COMPANY in info.value.message
    case_no = info.value.body["case_no"]

    # By that juristic id, the registration alone was asked for, never the tax clearance.
    about_company = [
        r.evidence_type for r in hub.evidence_requests() if r.subject == STRANGERS_COMPANY
    ]
    assert about_company == ["company_registration"]

    # The case stays on record, closed as refused, and shows nothing of the company.
    case = await svc.client.get(citizen, case_no)
    assert case["status"] == "refused"
    assert case["history"][-1]["note"] == (
        f"the applicant is not a registered director of {STRANGERS_COMPANY}"
    )
    company, tax = _items(case)["company_registration"], _items(case)["tax_clearance"]
    assert company["status"] == "failed" and company["data"] is None
    assert company["error"]["code"] == "NotADirector"
    assert (tax["status"], tax["attempts"], tax["data"]) == ("failed", 0, None)
    assert tax["error"]["code"] == "DirectorshipNotEstablished"
    assert "3100600123459" not in str(case)  # the real director's id
    # Closed: no documents are held for it, and none are read again to show it.
    assert [i["data"] for i in case["evidence"]] == [None] * len(EVIDENCE_TYPES)
    assert [c["status"] for c in await svc.client.list_cases(citizen)] == ["refused"]
    # A refused case is closed: nothing to retry, confirm or withdraw.
    for call in (
        svc.client.retry(citizen, case_no, "company_registration"),
        svc.client.confirm(citizen, case_no),
        svc.client.withdraw(citizen, case_no),
    ):
        with pytest.raises(CaseServiceError) as refused:
            await call
        assert refused.value.status == 409
    assert [r.subject for r in hub.evidence_requests()].count(STRANGERS_COMPANY) == 1


async def test_directors_are_matched_as_the_registry_writes_ids(
    svc: Running, hub: FakeEvidenceHub, idp: Idp
) -> None:
    """DBD may write a director's id grouped with dashes or padded; it is still her."""
    written = ["1-1017-00203-45-0", " 1101700203450\x00", "1 1017 00203 45 0"]
    for n, form in enumerate(written):
        registration = hub.payload("company_registration", JURISTIC)
        registration["directors"] = [{"citizen_id": form, "name_th": "สมหญิง ใจดี"}]
        hub.overrides[("company_registration", JURISTIC)] = registration
        case = await _apply(svc, idp)
        assert case["status"] == "evidence-complete", (form, case["evidence"])
        assert [r.evidence_type for r in hub.evidence_requests()].count("tax_clearance") == n + 1
    # A number that only contains hers is someone else.
    registration["directors"] = [{"citizen_id": "11101700203450"}, {"citizen_id": "๑๑๐๑๗๐๐๒๐๓๔๕๐"}]
    with pytest.raises(CaseServiceError) as info:
        await _apply(svc, idp)
    assert info.value.error == "not-a-director"


async def test_view_refetch_checks_directorship_again(
    settings: Settings, clock: FakeClock, hub: FakeEvidenceHub, idp: Idp
) -> None:
    """An open case viewed after a restart reads the registries again; if the registration
    no longer names her, the company's other evidence is not read again."""
    citizen = idp.token(CITIZEN, "citizen")
    async with running(settings, clock) as svc:
        case_no = (await _apply(svc, idp))["case_no"]
    registration = hub.payload("company_registration", JURISTIC)
    registration["directors"] = [{"citizen_id": "3100600123459", "name_th": "someone else"}]
    hub.overrides[("company_registration", JURISTIC)] = registration
    before = len(hub.evidence_requests())
    async with running(settings, clock) as svc:
        seen = _items(await svc.client.get(citizen, case_no))
    again = [r.evidence_type for r in hub.evidence_requests()[before:]]
    assert "tax_clearance" not in again and "company_registration" in again
    assert seen["company_registration"]["data"] is None
    assert seen["company_registration"]["view_error"]["code"] == "NotADirector"
    assert seen["tax_clearance"]["data"] is None
    assert seen["tax_clearance"]["view_error"]["code"] == "DirectorshipNotEstablished"
    assert seen["identity"]["data_source"] == "hub"
    assert "3100600123459" not in str(seen)


async def test_title_deeds_of_other_owners_are_not_shown(
    svc: Running, hub: FakeEvidenceHub, idp: Idp
) -> None:
    deeds = {"records": [{"deed_no": "1", "owner_citizen_id": "1-1017-00203-45-0"}]}
    hub.overrides[("title_deed", CITIZEN)] = deeds
    assert _items(await _apply(svc, idp))["title_deed"]["status"] == "ok"
    deeds["records"].append({"deed_no": "2", "owner_citizen_id": "3100600123459"})
    case = await _apply(svc, idp)
    deed = _items(case)["title_deed"]
    assert (deed["status"], deed["data"]) == ("failed", None)
    assert deed["error"]["code"] == "NotTheApplicants"
    assert "3100600123459" not in str(case)
