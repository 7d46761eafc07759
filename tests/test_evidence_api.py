"""The evidence API on a running federation: evidence by type and subject goes out as an
ordinary signed, logged exchange carrying purpose and legal basis, answers are checked
against the catalog's schema, the provider's refusals pass through, and the citizen's data
tracker on the provider's node shows the read.

The API is served here over the consumer node's own runtime and client proxy, the way the
node mounts it on its client listeners."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from xroad_hub.node.consumer import ClientProxy
from xroad_hub.node.evidenceapi import EvidenceApi
from xroad_hub.node.trackerapi import TrackerApi, mint_idp_token
from xroad_hub.pki import load_private_key, load_public_key
from xroad_hub.protocol.catalog import load_catalog

from .conftest import Fed

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
CITIZEN = "1101700203450"
ECHO = "TH/GOV/DBD/registry/echo"

_SCHEMA = "https://json-schema.org/draft/2020-12/schema"
_ECHO_SCHEMA = {
    "$schema": _SCHEMA,
    "type": "object",
    "required": ["method", "path", "query", "headers", "body"],
    "properties": {"method": {"const": "GET"}, "path": {"type": "string"}},
}
_TYPES: dict[str, dict[str, object]] = {
    "echo_person": {"service": ECHO, "path": "/{subject}", "subject_in": "path:1"},
    "echo_query": {
        "service": ECHO,
        "path": "",
        "query": "cid={subject}",
        "subject_in": "query:cid",
    },
    "strict": {
        "service": ECHO,
        "path": "/{subject}",
        "subject_in": "path:1",
        "schema": "strict.schema.json",
    },
    "refusing": {"service": ECHO, "path": "/status/404/{subject}", "subject_in": "path:3"},
    "restricted": {
        "service": "TH/GOV/DBD/registry/restricted",
        "path": "/{subject}",
        "subject_in": "path:1",
    },
}


def _write_catalog(tmp: Path) -> Path:
    lines = []
    for name, entry in _TYPES.items():
        full = {"title": name.replace("_", " "), "subject": "citizen_id", "query": "",
                "schema": "echo.schema.json", **entry}  # fmt: skip
        lines += [f"[evidence.{name}]", *(f"{k} = {json.dumps(v)}" for k, v in full.items())]
    (tmp / "echo.schema.json").write_text(json.dumps(_ECHO_SCHEMA), encoding="utf-8")
    strict = {**_ECHO_SCHEMA, "required": ["certificate_no"]}
    (tmp / "strict.schema.json").write_text(json.dumps(strict), encoding="utf-8")
    path = tmp / "catalog.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
async def evidence(
    fed: Fed, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TestClient[Any, Any]]:
    catalog = load_catalog(_write_catalog(tmp_path_factory.mktemp("catalog")))
    rt = fed.federation.nodes[DGA].runtime
    assert rt is not None
    app = web.Application()
    EvidenceApi(rt, ClientProxy(rt), catalog).add_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def _headers(**overrides: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "X-Road-Client": "TH/GOV/DGA/devportal",
        "X-Road-UserId": "officer-wichai",
        "X-Road-Issue": "BMA-2568-" + uuid.uuid4().hex[:6],
        "X-Road-Purpose": "food-business licence",
        "X-Road-Legal-Basis": "Public Health Act B.E. 2535 s.48",
        "X-Road-Id": "ev-" + uuid.uuid4().hex,
    }
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v is not None}


async def _get(
    client: TestClient[Any, Any], path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    async with client.get(path, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def _logged(fed: Fed, node: str, message_id: str) -> list[dict[str, Any]]:
    rt = fed.federation.nodes[node].runtime
    assert rt is not None
    conn = sqlite3.connect(f"file:{rt.log.path}?mode=ro", uri=True)  # type: ignore[attr-defined]
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT role, status, error_type, subjects, request_meta FROM exchange "
            "WHERE message_id = ?",
            (message_id,),
        ).fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]


async def test_the_catalog_is_listed(evidence: TestClient[Any, Any]) -> None:
    status, _, body = await _get(evidence, "/evidence", {})
    assert status == 200
    types = orjson.loads(body)["types"]
    assert types[0] == {"type": "echo_person", "title": "echo person", "subject": "citizen_id",
                        "service": ECHO, "purposes": []}  # fmt: skip
    assert [t["type"] for t in types] == list(_TYPES)


async def test_evidence_is_a_signed_logged_exchange(
    fed: Fed, evidence: TestClient[Any, Any]
) -> None:
    headers = _headers(**{"X-Internal-Secret": "stays-here"})
    status, resp_headers, body = await _get(evidence, f"/evidence/echo_person/{CITIZEN}", headers)
    assert status == 200, body
    doc = orjson.loads(body)
    assert set(doc) == {"type", "subject", "service", "message_id", "data"}
    assert (doc["type"], doc["subject"]) == ("echo_person", CITIZEN)
    assert doc["service"] == resp_headers["X-Road-Service"] == f"{ECHO}/v1"  # as answered
    assert doc["message_id"] == headers["X-Road-Id"] == resp_headers["X-Road-Id"]
    assert doc["data"]["path"].endswith(f"/{CITIZEN}")
    sent = {k.lower() for k, _ in doc["data"]["headers"]}
    assert "x-internal-secret" not in sent  # only what the catalog asks for leaves the node
    assert "X-Road-Error" not in resp_headers
    for node, role in ((DGA, "client"), (DBD, "provider")):
        [row] = _logged(fed, node, headers["X-Road-Id"])
        assert (row["role"], row["status"]) == (role, 200)
        meta = orjson.loads(row["request_meta"])
        assert meta["purpose"] == "food-business licence"
        assert meta["legal_basis"] == "Public Health Act B.E. 2535 s.48"
        assert meta["evidence_type"] == "echo_person"
        assert meta["issue"] == headers["X-Road-Issue"]
        assert meta["user_id"] == "officer-wichai"
    [provider] = _logged(fed, DBD, headers["X-Road-Id"])
    assert orjson.loads(provider["subjects"]) == [CITIZEN]


async def test_the_citizen_sees_the_read_in_the_tracker(
    fed: Fed, evidence: TestClient[Any, Any]
) -> None:
    headers = _headers()
    status, _, _ = await _get(evidence, f"/evidence/echo_query/{CITIZEN}", headers)
    assert status == 200
    rt = fed.federation.nodes[DBD].runtime
    assert rt is not None
    idp = fed.pki.idp_jwt()
    tracker = TrackerApi(DBD, rt.log.path, load_public_key(idp.cert), {"TH/GOV/DGA": "DGA"})  # type: ignore[attr-defined]
    token = mint_idp_token(load_private_key(idp.key), subject=CITIZEN, role="citizen", audience=DBD)
    async with TestClient(TestServer(tracker.app())) as client:
        entries, after = [], -1
        while after is not None:
            async with client.get(
                f"/tracker/accesses?after={after}", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert resp.status == 200
                page = await resp.json()
            entries += page["entries"]
            after = page["next_after"]
    [mine] = [e for e in entries if e["message_id"] == headers["X-Road-Id"]]
    assert mine["agency"] == "DGA" and mine["client"] == "TH/GOV/DGA/devportal"
    assert (mine["evidence_type"], mine["purpose"]) == ("echo_query", "food-business licence")
    assert mine["issue"] == headers["X-Road-Issue"] and mine["official"] == "officer-wichai"


def _error(status: int, headers: dict[str, str], body: bytes, code: str) -> str:
    assert headers.get("X-Road-Error") == code, body
    doc = orjson.loads(body)
    assert doc["type"] == code and doc["detail"]
    assert status == (400 if code.startswith("Client.") else 500)
    return str(doc["message"])


@pytest.mark.parametrize("missing", ["X-Road-Purpose", "X-Road-Legal-Basis"])
async def test_purpose_and_legal_basis_are_required(
    fed: Fed, evidence: TestClient[Any, Any], missing: str
) -> None:
    headers = _headers(**{missing: None})
    got = await _get(evidence, f"/evidence/echo_person/{CITIZEN}", headers)
    assert missing in _error(*got, "Client.MissingPurpose")
    assert _logged(fed, DBD, headers["X-Road-Id"]) == []  # nothing was sent
    blank = _headers(**{missing: "  "})
    assert (await _get(evidence, f"/evidence/echo_person/{CITIZEN}", blank))[0] == 400


@pytest.mark.parametrize("missing", ["X-Road-UserId", "X-Road-Issue"])
async def test_the_official_and_the_case_are_required(
    fed: Fed, evidence: TestClient[Any, Any], missing: str
) -> None:
    """The data subject is shown who read her data and for which case: both must be named."""
    headers = _headers(**{missing: None})
    got = await _get(evidence, f"/evidence/echo_person/{CITIZEN}", headers)
    assert missing in _error(*got, "Client.MissingHeader")
    assert _logged(fed, DBD, headers["X-Road-Id"]) == []  # nothing was sent


async def test_requests_refused_before_anything_is_sent(evidence: TestClient[Any, Any]) -> None:
    got = await _get(evidence, "/evidence/echo_person/1101700203451", _headers())
    assert "check digit" in _error(*got, "Client.InvalidSubject")
    got = await _get(evidence, f"/evidence/passport/{CITIZEN}", _headers())
    assert "echo_person" in _error(*got, "Client.UnknownEvidenceType")
    got = await _get(evidence, f"/evidence/echo_person/{CITIZEN}",
                     _headers(**{"X-Road-Client": None}))  # fmt: skip
    _error(*got, "Client.MissingHeader")
    # A JWT client without its token is not authenticated, whatever it names.
    got = await _get(evidence, f"/evidence/echo_person/{CITIZEN}",
                     _headers(**{"X-Road-Client": "TH/GOV/DGA/citizenportal"}))  # fmt: skip
    _error(*got, "Client.AuthenticationFailed")
    # A subsystem this node does not host.
    got = await _get(evidence, f"/evidence/echo_person/{CITIZEN}",
                     _headers(**{"X-Road-Client": "TH/GOV/BMA/licensing"}))  # fmt: skip
    assert "not registered at this node" in _error(*got, "Server.ClientProxy.UnknownMember")


async def test_an_answer_off_the_schema_is_not_handed_on(
    fed: Fed, evidence: TestClient[Any, Any]
) -> None:
    headers = _headers()
    got = await _get(evidence, f"/evidence/strict/{CITIZEN}", headers)
    message = _error(*got, "Server.ClientProxy.InvalidEvidence")
    assert "strict.schema.json at $:" in message and "certificate_no" in message
    # The exchange happened and is on record on both sides; only the hand-over was refused.
    assert [r["status"] for r in _logged(fed, DBD, headers["X-Road-Id"])] == [200]


async def test_the_providers_refusal_passes_through(evidence: TestClient[Any, Any]) -> None:
    headers = _headers()
    status, resp_headers, body = await _get(evidence, f"/evidence/refusing/{CITIZEN}", headers)
    assert status == 404
    assert orjson.loads(body) == {"problem": "provider says no"}
    assert "X-Road-Error" not in resp_headers
    assert resp_headers["X-Road-Id"] == headers["X-Road-Id"]


async def test_access_rights_still_apply(evidence: TestClient[Any, Any]) -> None:
    got = await _get(evidence, f"/evidence/restricted/{CITIZEN}", _headers())
    _error(*got, "Server.ServerProxy.AccessDenied")


def test_refusals_are_logged_without_the_subject() -> None:
    """Operational logs get the route, not whom it was about."""
    from xroad_hub.logs import path_shape

    assert path_shape(f"/evidence/identity/{CITIZEN}") == "/evidence/identity/{id}"
