"""Item 4 of issue 10: every read of a citizen's data reaches her tracker.

A request body is read one way by the node and the service (UTF-8 JSON, unique keys), so a
request in another encoding is refused, never served without its subject; and the persons a
service's answer names (title-deed owners, company directors) are recorded from the answer
the provider's node signs and logs, where the registration says they are, which it must say.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from adapters.flatfile import FlatFileAdapter
from xroad_hub.dev.testing import TestFederationSpec, free_port, write_federation
from xroad_hub.federation import ConfigError, load_federation
from xroad_hub.node.node import _check_answer_subjects
from xroad_hub.node.runtime import HostedService
from xroad_hub.node.trackerapi import mint_idp_token
from xroad_hub.pki import load_private_key
from xroad_hub.protocol.thaiid import with_check_digit

from .conftest import EVERYONE, Fed, start_federation

ROOT = Path(__file__).resolve().parents[1]
DOL_LAYOUT = ROOT / "schemas" / "dol-titledeeds.layout.toml"
DBD_OPENAPI = ROOT / "schemas" / "dbd-registry.openapi.json"
DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}
DEEDS = "/r1/TH/GOV/DBD/registry/titledeeds"
COMPANIES = "/r1/TH/GOV/DBD/registry/companies"
LEGACY = "/r1/TH/GOV/DBD/legacy/getPerson"
SOMCHAI = "1101700203451"  # in the legacy population registry (soap_legacy.py)
DIRECTORS = [with_check_digit("310060012345"), with_check_digit("110170020345")]


async def _company(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "juristic_id": request.match_info["jid"],
            "name_th": "บริษัท ตัวอย่าง จำกัด",
            "directors": [{"citizen_id": c, "name_th": "กรรมการ"} for c in DIRECTORS],
        }
    )


@pytest.fixture(scope="module")
async def subj_fed(
    tmp_path_factory: pytest.TempPathFactory, echo_backend: str
) -> AsyncIterator[Fed]:
    app = web.Application()
    app.router.add_get("/companies/{jid}", _company)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    spec = TestFederationSpec(
        backend_url=echo_backend,
        extra_services=[
            {
                "id": "TH/GOV/DBD/registry/titledeeds",
                "adapter": "flatfile",
                "source": "exports/dol",
                "pattern": "titledeeds-*.txt",
                "layout": str(DOL_LAYOUT),
                "generate": "dol-titledeeds",
                "seed": 2569,
                "settle_seconds": 0,
                "allow": EVERYONE,
                "subject": ["query:owner_citizen_id"],
                "answer_subject": ["json:records[*].owner_citizen_id"],
            },
            {
                "id": "TH/GOV/DBD/registry/companies",
                "url": f"http://127.0.0.1:{port}/companies",
                "allow": EVERYONE,
                "subject": ["path:1"],
                "openapi": str(DBD_OPENAPI),
                "answer_subject": ["json:directors[*].citizen_id"],
            },
        ],
    )
    f = await start_federation(tmp_path_factory.mktemp("subjfed"), spec)
    yield f
    await f.federation.stop()
    await runner.cleanup()


async def _logged_subjects(fed: Fed, message_id: str) -> list[str]:
    rt = fed.federation.nodes[DBD].runtime
    assert rt is not None
    [row] = await rt.log.find(message_id)
    assert orjson.loads(row["leaf"])["subjects"] == orjson.loads(row["subjects"])
    return list(orjson.loads(row["subjects"]))


async def _tracker(fed: Fed, http: aiohttp.ClientSession, citizen: str) -> list[str]:
    """The message ids the citizen's own tracker shows her, over the node's HTTPS API."""
    idp = fed.pki.idp_jwt()
    token = mint_idp_token(load_private_key(idp.key), subject=citizen, role="citizen",
                           audience=DBD)  # fmt: skip
    ids: list[str] = []
    after: int | None = -1
    while after is not None:
        async with http.get(
            fed.url(DBD, "audit") + f"/tracker/accesses?after={after}",
            headers={"Authorization": f"Bearer {token}"},
            ssl=fed.client_ssl(),
        ) as r:
            assert r.status == 200, await r.text()
            page = await r.json()
        ids += [e["message_id"] for e in page["entries"]]
        after = page["next_after"]
    return ids


async def _read(fed: Fed, http: aiohttp.ClientSession, path: str) -> tuple[str, Any]:
    mid = "subj-" + uuid.uuid4().hex
    async with http.get(fed.url(DGA) + path, headers={**DEV, "X-Road-Id": mid}) as r:
        assert r.status == 200, await r.text()
        return mid, await r.json()


# --- answers name persons ------------------------------------------------------------------


async def test_a_deed_read_by_deed_number_is_in_its_owners_tracker(
    subj_fed: Fed, http: aiohttp.ClientSession
) -> None:
    _, first = await _read(subj_fed, http, DEEDS + "/records?land_office_code=1001&limit=1")
    record = first["records"][0]
    mid, doc = await _read(subj_fed, http, DEEDS + f"/records/{record['deed_no']}")
    owners = sorted({r["owner_citizen_id"] for r in doc["records"]})
    assert owners and await _logged_subjects(subj_fed, mid) == owners
    for owner in owners:
        assert mid in await _tracker(subj_fed, http, owner)


async def test_a_land_office_page_records_every_owner_on_it(
    subj_fed: Fed, http: aiohttp.ClientSession
) -> None:
    mid, doc = await _read(subj_fed, http, DEEDS + "/records?land_office_code=1001&limit=100")
    owners = sorted({r["owner_citizen_id"] for r in doc["records"]})
    assert len(owners) > 10  # a page of many owners, none asked about by id
    assert await _logged_subjects(subj_fed, mid) == owners
    for owner in (owners[0], owners[len(owners) // 2], owners[-1]):
        assert mid in await _tracker(subj_fed, http, owner)


async def test_a_company_answer_records_its_directors(
    subj_fed: Fed, http: aiohttp.ClientSession
) -> None:
    mid, doc = await _read(subj_fed, http, COMPANIES + "/0105536000012")
    assert [d["citizen_id"] for d in doc["directors"]] == DIRECTORS
    assert await _logged_subjects(subj_fed, mid) == sorted([*DIRECTORS, "0105536000012"])
    for director in DIRECTORS:
        assert mid in await _tracker(subj_fed, http, director)


async def test_a_bridged_soap_answer_records_the_person_it_names(fed: Fed, http) -> None:
    """xml:citizenId reads the JSON the bridge makes of the SOAP answer (this registration
    locates no subject in requests: only the answer names her)."""
    mid = "subj-" + uuid.uuid4().hex
    async with http.post(
        fed.url(DGA) + "/r1/TH/GOV/DBD/legacypurpose/getPerson",
        json={"citizenId": SOMCHAI},
        headers={**DEV, "X-Road-Id": mid, "X-Road-Purpose": "food-business-licence"},
    ) as r:
        assert r.status == 200, await r.text()
    assert await _logged_subjects(fed, mid) == [SOMCHAI]


async def test_a_bridged_soap_answer_in_xml_records_the_person_it_names(fed: Fed, http) -> None:
    """The same for an X-Road SOAP client: xml:citizenId reads the SOAP answer's body."""
    from .test_e2e_soap import _get_person, envelope, post

    mid = str(uuid.uuid4())
    purpose = (
        '<xh:purpose xmlns:xh="urn:xroad-hub:xsd:purpose:1">food-business-licence</xh:purpose>'
    )
    message = envelope(_get_person(SOMCHAI), subsystem="legacypurpose", code="getPerson",
                       version="v1", message_id=mid, extra_header=purpose)  # fmt: skip
    status, _, answer = await post(http, fed, message)
    assert status == 200, answer
    assert await _logged_subjects(fed, mid) == [SOMCHAI]


# --- one reading of a request body -----------------------------------------------------------

_DOC = {"citizenId": SOMCHAI}
_TEXT = json.dumps(_DOC)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b"\xef\xbb\xbf" + _TEXT.encode(), "application/json", id="utf-8-bom"),
        pytest.param(_TEXT.encode("utf-16"), "application/json", id="utf-16-bom"),
        pytest.param(_TEXT.encode("utf-16-le"), "application/json", id="utf-16-le"),
        pytest.param(_TEXT.encode("utf-16-be"), "application/json", id="utf-16-be"),
        pytest.param(_TEXT.encode("utf-32"), "application/json", id="utf-32-bom"),
        pytest.param(_TEXT.encode("utf-32-le"), "application/json", id="utf-32-le"),
        pytest.param(_TEXT.encode(), "application/json; charset=utf-16", id="charset-utf-16"),
        pytest.param(_TEXT.encode("utf-16"), "", id="utf-16-no-content-type"),
        pytest.param(
            b'{"citizenId": "1101700203450", "citizenId": "' + SOMCHAI.encode() + b'"}',
            "application/json",
            id="duplicate-key",
        ),
        pytest.param(b'{"citizenId": "\xe0\x80\xb1"}', "application/json", id="bad-utf-8"),
    ],
)
async def test_a_body_the_node_would_read_otherwise_is_refused(
    fed: Fed, http: aiohttp.ClientSession, body: bytes, content_type: str
) -> None:
    """Each of these the legacy bridge used to serve while the node logged no subject."""
    mid = "subj-" + uuid.uuid4().hex
    headers = {**DEV, "X-Road-Id": mid}
    if content_type:
        headers["Content-Type"] = content_type
    async with http.post(
        fed.url(DGA) + LEGACY,
        data=body,
        headers=headers,
        skip_auto_headers=() if content_type else ("Content-Type",),
    ) as r:
        payload = await r.json()
        assert (r.status, r.headers.get("X-Road-Error")) == (400, "Client.BadRequest"), payload
    assert "UTF-8" in payload["message"] or "duplicate" in payload["message"]
    # Refused before the service was called: the provider's node logged a refusal, no answer.
    rt = fed.federation.nodes[DBD].runtime
    assert rt is not None
    [row] = await rt.log.find(mid)
    assert row["response_body"] is None and row["error_type"] == "Client.BadRequest"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_TEXT.encode(), id="utf-8"),
        pytest.param(b'{"citizenId": 1101700203451}', id="number"),
        pytest.param(b'{"citizenId": " 1-1017-00203-45-1 "}', id="padded-dashed"),
    ],
)
async def test_a_body_read_alike_is_served_and_logged_with_its_subject(
    fed: Fed, http: aiohttp.ClientSession, body: bytes
) -> None:
    mid = "subj-" + uuid.uuid4().hex
    async with http.post(
        fed.url(DGA) + LEGACY,
        data=body,
        headers={**DEV, "X-Road-Id": mid, "Content-Type": "application/json"},
    ) as r:
        text = await r.text()
    rt = fed.federation.nodes[DBD].runtime
    assert rt is not None
    [row] = await rt.log.find(mid)
    # Served or refused by the service itself, the request is on her record either way.
    assert SOMCHAI in orjson.loads(row["subjects"]), text


async def test_a_json_body_in_another_encoding_never_reaches_a_rest_service(
    fed: Fed, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/x",
        data=_TEXT.encode("utf-16"),
        headers={**DEV, "Content-Type": "application/json"},
    ) as r:
        assert (r.status, r.headers["X-Road-Error"]) == (400, "Client.BadRequest")


# --- a registration must say where its answers name persons ----------------------------------


def _federation(tmp_path: Path, service: dict[str, object]) -> Path:
    spec = TestFederationSpec(backend_url="http://127.0.0.1:1", extra_services=[service])
    return write_federation(tmp_path / "federation.toml", spec)


def test_a_registration_without_answer_subject_is_refused(tmp_path: Path) -> None:
    path = _federation(tmp_path, {"id": "TH/GOV/DBD/registry/people", "url": "http://x/"})
    with pytest.raises(ConfigError) as info:
        load_federation(path)
    message = str(info.value)
    assert "TH/GOV/DBD/registry/people" in message and "answer_subject" in message
    assert "answer_subject = []" in message  # says how to state "no person"


def _hosted(tmp_path: Path, service: dict[str, object]) -> HostedService:
    from xroad_hub.node.node import _openapi

    fed = load_federation(_federation(tmp_path, service))
    [cfg] = [s for s in fed.node("TH/GOV/DBD/hub1").services if str(s.id).endswith("/under")]
    if cfg.adapter == "flatfile":
        adapter: Any = FlatFileAdapter.from_options(cfg.options)
    else:
        adapter = None
    return HostedService(cfg, adapter, openapi=_openapi(cfg))


@pytest.mark.parametrize(
    ("service", "field"),
    [
        (
            {
                "adapter": "flatfile",
                "source": "x",
                "layout": str(DOL_LAYOUT),
                "answer_subject": [],
            },
            "json:records[*].owner_citizen_id",
        ),
        (
            {  # a locator elsewhere does not cover the owner field
                "adapter": "flatfile",
                "source": "x",
                "layout": str(DOL_LAYOUT),
                "answer_subject": ["json:records[*].deed_no"],
            },
            "json:records[*].owner_citizen_id",
        ),
        (
            {"url": "http://x/", "openapi": str(DBD_OPENAPI), "answer_subject": []},
            "json:directors[*].citizen_id",
        ),
    ],
)
def test_a_registration_that_misses_a_declared_person_id_is_refused(
    tmp_path: Path, service: dict[str, object], field: str
) -> None:
    hosted = _hosted(tmp_path, {"id": "TH/GOV/DBD/registry/under", **service})
    with pytest.raises(ConfigError) as info:
        _check_answer_subjects(hosted)
    assert field in str(info.value)


async def test_a_bridged_soap_registration_must_locate_the_persons_its_wsdl_names(
    tmp_path: Path, legacy_soap: Any
) -> None:
    spec = TestFederationSpec(
        backend_url="http://127.0.0.1:1",
        soap_services=[
            {
                "provider": "TH/GOV/DBD/legacy",
                "wsdl": legacy_soap.wsdl_url,
                "mode": "bridge",
                "allow": EVERYONE,
                "answer_subject": [],
            }
        ],
    )
    with pytest.raises(ConfigError) as info:
        f = await start_federation(tmp_path / "fed", spec)
        await f.federation.stop()
    assert "citizenId" in str(info.value) and "answer_subject" in str(info.value)


# --- evidence bundles attribute answer-side persons to the provider's signature ----------------


async def test_genuine_answer_subjects_are_proved_by_the_providers_signature(
    subj_fed: Fed, http, tmp_path: Path
) -> None:
    """A deed read by its number: its owners are named only by the answer, which the
    provider's member signed; the verified bundle says so."""
    _, first = await _read(subj_fed, http, DEEDS + "/records?land_office_code=1001&limit=1")
    deed = first["records"][0]["deed_no"]
    mid, doc = await _read(subj_fed, http, DEEDS + f"/records/{deed}")
    owners = {r["owner_citizen_id"] for r in doc["records"]}
    from xroad_hub.messagelog.evidence import verify_bundle

    from .test_evidence import _roots
    from .test_evidence_forgery import _bundle_of

    proof = verify_bundle(await _bundle_of(subj_fed, DBD, mid, tmp_path), _roots(subj_fed))
    assert proof.subjects_signed_by == dict.fromkeys(sorted(owners), "provider")
