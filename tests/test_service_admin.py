"""Issue 13: an agency registers and manages its services on its own node, at run time,
through the node's admin API (role service-administrator): from an OpenAPI document, with
access rights and local groups, in force within a second, with no restart and no failed
request in flight; every change in the admin audit trail; conflicting changes refused."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import ssl
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xroad_hub.dev.testing import TEST_ADMIN_KEYS, TestFederationSpec, free_port
from xroad_hub.node.trackerapi import mint_idp_token
from xroad_hub.pki import generate_key, issue_cert, load_private_key, write_cert, write_key
from xroad_hub.protocol.thaiid import with_check_digit

from .conftest import Fed, start_federation

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}
PROVIDER = "TH/GOV/DBD/registry"
PORTAL = "TH/GOV/DGA/citizenportal"
RD_LAYOUT = Path(__file__).resolve().parents[1] / "schemas" / "rd-taxclearance.layout.toml"
OWNER = with_check_digit("110170020345")
DEEDS_OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Title deeds", "version": "1.0"},
    "paths": {
        "/deeds/{deedNo}": {
            "get": {
                "operationId": "getDeed",
                "parameters": [
                    {"name": "deedNo", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "the deed",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "deed_no": {"type": "string"},
                                        "owner": {
                                            "type": "object",
                                            "properties": {"citizen_id": {"type": "string"}},
                                        },
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/parcels": {
            "get": {"operationId": "listParcels", "responses": {"200": {"description": "ok"}}}
        },
    },
}


def bearer(name: str = "services") -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_ADMIN_KEYS[name][0]}"}


async def _deed(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "0")))
    return web.json_response({"deed_no": request.match_info["no"], "owner": {"citizen_id": OWNER}})


async def _parcels(request: web.Request) -> web.Response:
    return web.json_response({"parcels": []})


@pytest.fixture(scope="module")
async def deeds_backend() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/deeds/{no}", _deed)
    app.router.add_get("/parcels", _parcels)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def sfed(tmp_path: Path, echo_backend: str) -> AsyncIterator[Fed]:
    f = await start_federation(tmp_path / "fed", TestFederationSpec(backend_url=echo_backend))
    yield f
    await f.federation.stop()


async def _admin(
    http: aiohttp.ClientSession,
    fed: Fed,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str | None]:
    async with http.request(
        method,
        fed.url(DBD, "admin") + "/settings" + path,
        json=body,
        headers={**bearer(), **(headers or {})},
    ) as r:
        return r.status, await r.json(), r.headers.get("ETag")


async def _call(
    http: aiohttp.ClientSession, fed: Fed, path: str, client: str = "TH/GOV/DGA/devportal"
) -> tuple[int, Any, str]:
    mid = "svc-" + uuid.uuid4().hex
    headers = {"X-Road-Client": client, "X-Road-Id": mid}
    url, ssl = fed.url(DGA) + path, None
    if client == PORTAL:  # the citizens' portal authenticates with a JWT over TLS
        headers["Authorization"] = f"Bearer {fed.token()}"
        url, ssl = fed.url(DGA, "client_tls") + path, fed.client_ssl()
    async with http.get(url, headers=headers, ssl=ssl) as r:
        body = await r.read()
        try:
            return r.status, json.loads(body), mid
        except ValueError:
            return r.status, body.decode(errors="replace"), mid


def _denied(result: tuple[int, Any, str]) -> bool:
    return result[0] != 200 and "AccessDenied" in json.dumps(result[1])


def _register(backend: str, **extra: object) -> dict[str, object]:
    return {
        "provider": PROVIDER,
        "openapi": json.dumps(DEEDS_OPENAPI),
        "url": backend,
        "version": "v1",
        "answer_subject": ["json:owner.citizen_id"],
        **extra,
    }


async def _tracker(fed: Fed, http: aiohttp.ClientSession, citizen: str) -> list[str]:
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


async def test_register_from_openapi_grant_one_portal_and_call_within_a_second(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    # Nothing to call before registration.
    status, body, _ = await _call(http, sfed, f"/r1/{PROVIDER}/getDeed/deeds/D-1")
    assert status != 200 and "UnknownService" in json.dumps(body)
    status, answer, _ = await _admin(
        http, sfed, "POST", "/services",
        _register(deeds_backend, allow=["TH/GOV/DGA/devportal"]),
    )  # fmt: skip
    registered_at = time.monotonic()
    assert status == 201, answer
    shown = {s["service"]: s for s in answer["registered"]}
    assert set(shown) == {f"{PROVIDER}/getDeed", f"{PROVIDER}/listParcels"}
    deed = shown[f"{PROVIDER}/getDeed"]
    assert deed["endpoints"] == ["GET /deeds/{deedNo}"]
    assert deed["answer_subject"] == ["json:owner.citizen_id"]
    assert deed["call"] == [f"/r1/{PROVIDER}/getDeed/deeds/{{deedNo}}"]
    # The granted portal calls it at once; an ungranted client gets AccessDenied.
    status, body, mid = await _call(http, sfed, f"/r1/{PROVIDER}/getDeed/deeds/D-1")
    assert status == 200, body
    assert time.monotonic() - registered_at < 1.0
    assert body == {"deed_no": "D-1", "owner": {"citizen_id": OWNER}}
    status, body, _ = await _call(http, sfed, f"/r1/{PROVIDER}/getDeed/deeds/D-1", client=PORTAL)
    assert status != 200 and "AccessDenied" in json.dumps(body), body
    # The service code serves its operation only, not any path of the backend.
    status, body, _ = await _call(http, sfed, f"/r1/{PROVIDER}/getDeed/parcels")
    assert status != 200 and "AccessDenied" in json.dumps(body), body
    # getOpenAPI serves the registered document.
    status, body, _ = await _call(http, sfed, f"/r1/{PROVIDER}/getOpenAPI?serviceCode=getDeed")
    assert status == 200 and body["paths"].keys() == DEEDS_OPENAPI["paths"].keys()
    # Read by deed number, the owner's id is in the answer only: it lands in her tracker.
    _, _, mid = await _call(http, sfed, f"/r1/{PROVIDER}/getDeed/deeds/D-2")
    assert mid in await _tracker(sfed, http, OWNER)
    # Every change is in the node's admin audit trail, with who made it.
    admin = sfed.federation.nodes[DBD].admin
    assert admin is not None and admin.audit is not None
    entries = [e for e in admin.audit.entries() if e["action"] == "service.add"]
    assert entries and entries[-1]["admin"] == "services"
    assert entries[-1]["detail"]["services"] == sorted(shown)
    settings_db = sfed.root / "data" / "nodes" / "TH_GOV_DBD_hub1" / "node-settings.sqlite"
    found = list((sfed.root / "data").rglob("node-settings.sqlite"))
    assert found, settings_db
    assert stat.S_IMODE(os.stat(found[0]).st_mode) == 0o600


async def test_grants_to_groups_and_refusals(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    status, answer, _ = await _admin(http, sfed, "POST", "/services", _register(deeds_backend))
    assert status == 201, answer
    deed = f"{PROVIDER}/getDeed"
    path = f"/r1/{PROVIDER}/getDeed/deeds/D-9"
    assert _denied(await _call(http, sfed, path))  # registered, granted to nobody
    # Unknown subsystem, unknown group: refused with the reason, nothing changed.
    status, answer, _ = await _admin(
        http, sfed, "POST", "/access", {"service": deed, "to": "TH/GOV/NOPE/sub"}
    )
    assert status == 404 and "not a subsystem of the federation" in answer["error"]
    status, answer, _ = await _admin(
        http, sfed, "POST", "/access", {"service": deed, "to": "group:portals"}
    )
    assert status == 404 and "no local group" in answer["error"]
    # A local group with the portal, granted: the portal calls; removed from it: refused.
    assert (await _admin(http, sfed, "POST", "/groups", {"name": "portals"}))[0] == 201
    status, answer, _ = await _admin(
        http, sfed, "PATCH", "/groups/portals", {"add": ["TH/GOV/DGA/devportal"]}
    )
    assert status == 200, answer
    status, answer, _ = await _admin(
        http, sfed, "POST", "/access", {"service": deed, "to": "group:portals"}
    )
    assert status == 200 and answer["groups"] == ["portals"], answer
    assert (await _call(http, sfed, path))[0] == 200
    status, answer, _ = await _admin(
        http, sfed, "PATCH", "/groups/portals", {"remove": ["TH/GOV/DGA/devportal"]}
    )
    assert status == 200
    assert _denied(await _call(http, sfed, path))
    # A group holding rights is not removed from under them.
    status, answer, _ = await _admin(http, sfed, "DELETE", "/groups/portals")
    assert status == 409 and deed in answer["error"]
    # Direct grant and revoke.
    await _admin(http, sfed, "POST", "/access", {"service": deed, "to": "TH/GOV/DGA/devportal"})
    assert (await _call(http, sfed, path))[0] == 200
    status, answer, _ = await _admin(
        http, sfed, "POST", "/access/revoke", {"service": deed, "to": "TH/GOV/DGA/devportal"}
    )
    assert status == 200
    assert _denied(await _call(http, sfed, path))
    # A change leaving a REST service without its backend is refused; it still serves.
    await _admin(http, sfed, "POST", "/access", {"service": deed, "to": "TH/GOV/DGA/devportal"})
    status, answer, _ = await _admin(http, sfed, "PATCH", f"/services/{deed}", {"url": ""})
    assert status == 400 and "url of its backend" in answer["error"], answer
    assert (await _call(http, sfed, path))[0] == 200
    # Purposes and legal bases declared per service, checked per request.
    act = "Land Code B.E. 2497 s.72"
    status, answer, _ = await _admin(
        http, sfed, "PATCH", f"/services/{deed}",
        {"purposes": ["land-transfer"], "legal_bases": [act]},
    )  # fmt: skip
    assert status == 200 and answer["legal_bases"] == [act], answer
    assert _denied(await _call(http, sfed, path))
    headers = {**DEV, "X-Road-Purpose": "land-transfer", "X-Road-Legal-Basis": act}
    async with http.get(sfed.url(DGA) + path, headers=headers) as r:
        assert r.status == 200, await r.text()
    # Other roles may not manage services.
    async with http.get(sfed.url(DBD, "admin") + "/settings/services", headers=bearer("ops")) as r:
        assert r.status == 403


async def test_bad_openapi_registers_nothing(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    no_id = json.loads(json.dumps(DEEDS_OPENAPI))
    del no_id["paths"]["/parcels"]["get"]["operationId"]
    cases = [
        ({"openapi": "{not json"}, "not JSON"),
        ({"openapi": json.dumps({"swagger": "2.0", "paths": {}})}, "not an OpenAPI 3"),
        ({"openapi": json.dumps(no_id)}, "without operationId: GET /parcels"),
        # Its answers name persons the registration does not locate.
        ({"answer_subject": []}, "answer_subject does not locate"),
        # A WSDL that cannot be served gets today's refusal, with the rule it breaks.
        ({"openapi": None, "wsdl": "<definitions/>"}, "the WSDL cannot be served"),
        # A flat file with no export where it is said to be: no backend.
        (
            {"openapi": None, "layout": str(RD_LAYOUT), "file": "/nonexistent/rd.csv"},
            "no export at /nonexistent/rd.csv",
        ),
        # A provider the global configuration does not place on this node.
        ({"provider": "TH/GOV/DBD/elsewhere"}, "register it at the central server"),
    ]
    for change, reason in cases:
        status, answer, _ = await _admin(
            http, sfed, "POST", "/services", {**_register(deeds_backend), **change}
        )
        assert status in (400, 404) and reason in answer["error"], (change, answer)
    status, answer, _ = await _admin(http, sfed, "GET", "/services")
    assert not [s for s in answer["services"] if s["service"].endswith("getDeed")]


async def test_disable_enable_remove_under_load_fail_no_request_in_flight(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    status, answer, _ = await _admin(
        http, sfed, "POST", "/services",
        _register(deeds_backend, allow=["TH/GOV/DGA/devportal"]),
    )  # fmt: skip
    assert status == 201
    deed = f"{PROVIDER}/getDeed"
    outcomes: list[tuple[int, str, int]] = []  # status, body, which client
    stop = asyncio.Event()

    async def client(n: int) -> None:
        while not stop.is_set():
            # Each request stays in flight 0.2 s at the backend: changes happen meanwhile.
            status, body, _ = await _call(http, sfed, f"/r1/{PROVIDER}/getDeed/deeds/L?delay=0.2")
            outcomes.append((status, json.dumps(body), n))

    def kind(status: int, body: str, _client: int = 0) -> str:
        return (
            "ok" if status == 200
            else "disabled" if "ServiceDisabled" in body and "new database" in body
            else "unknown" if "UnknownService" in body
            else f"FAILED {status} {body}"
        )  # fmt: skip

    async def until(what: str, since: int, wanted: str) -> None:
        # Phases end on what the clients saw, not after fixed sleeps: a loaded CI machine
        # may not finish a single request in half a second.
        for _ in range(600):
            if wanted in [kind(*o) for o in outcomes[since:]]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {wanted!r} answer {what}: {outcomes[since:]}")

    clients = [asyncio.create_task(client(n)) for n in range(8)]
    await until("before the change", 0, "ok")
    status, answer, _ = await _admin(
        http, sfed, "PATCH", f"/services/{deed}",
        {"disabled": True, "disabled_notice": "moving to a new database until 14:00"},
    )  # fmt: skip
    assert status == 200, answer
    disabled_at = len(outcomes)
    await until("while disabled", disabled_at, "disabled")
    status, _, _ = await _admin(http, sfed, "PATCH", f"/services/{deed}", {"disabled": False})
    assert status == 200
    enabled_at = len(outcomes)
    # Requests sent before the enable may still answer "disabled"; after 8 more answers
    # (one per client) every later one was sent after it.
    await until("after enabling again", enabled_at + 8, "ok")
    status, _, _ = await _admin(http, sfed, "DELETE", f"/services/{deed}")
    assert status == 200
    removed_at = len(outcomes)
    await until("after the removal", removed_at, "unknown")
    stop.set()
    await asyncio.gather(*clients)
    kinds = [kind(*o) for o in outcomes]
    # No request failed: each was served, or refused as disabled or removed.
    assert not [k for k in kinds if k.startswith("FAILED")], kinds
    assert "ok" in kinds[:disabled_at]
    assert "disabled" in kinds[disabled_at:enabled_at]
    assert "ok" in kinds[enabled_at + 8 : removed_at]
    # After the removal each client's request then in flight may still be served; every
    # later one of that client is refused as unknown.
    for n in range(8):
        later = [kind(*o) for o in outcomes[removed_at:] if o[2] == n][1:]
        assert set(later) <= {"unknown"}, (n, later)
    assert "unknown" in kinds[removed_at:]


async def test_two_administrators_changing_one_service_cannot_lose_a_change(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    status, _, _ = await _admin(http, sfed, "POST", "/services", _register(deeds_backend))
    assert status == 201
    deed = f"{PROVIDER}/getDeed"
    _, _, etag = await _admin(http, sfed, "GET", f"/services/{deed}")
    assert etag
    # Both made their change from what they read: one is applied, the other refused.
    results = await asyncio.gather(
        _admin(http, sfed, "PATCH", f"/services/{deed}", {"timeout": 5}, {"If-Match": etag}),
        _admin(http, sfed, "PATCH", f"/services/{deed}", {"timeout": 9}, {"If-Match": etag}),
    )
    statuses = sorted(r[0] for r in results)
    assert statuses in ([200, 409], [200, 412]), results
    loser = next(r for r in results if r[0] != 200)
    assert "someone changed it" in loser[1]["error"]
    _, shown, _ = await _admin(http, sfed, "GET", f"/services/{deed}")
    winner = next(r for r in results if r[0] == 200)
    assert shown["timeout"] == winner[1]["timeout"]


async def test_registrations_persist_across_a_restart_and_export_import(
    tmp_path: Path, echo_backend: str, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    spec = TestFederationSpec(backend_url=echo_backend)
    fed = await start_federation(tmp_path / "fed", spec)
    try:
        status, _, _ = await _admin(
            http, fed, "POST", "/services", _register(deeds_backend, allow=["TH/GOV/DGA/devportal"])
        )
        assert status == 201
        # A file-declared service changed by an administrator keeps the change.
        await _admin(http, fed, "PATCH", f"/services/{PROVIDER}/restricted", {"disabled": True})
        status, exported, _ = await _admin(http, fed, "GET", "/export")
        assert status == 200 and exported["format"] == "xroad-hub-node-settings/1"
        assert "key" not in json.dumps(exported).lower().replace('key":', "")
    finally:
        await fed.federation.stop()
    fed = await start_federation(tmp_path / "fed", spec)
    try:
        assert (await _call(http, fed, f"/r1/{PROVIDER}/getDeed/deeds/R"))[0] == 200
        _, shown, _ = await _admin(http, fed, "GET", f"/services/{PROVIDER}/restricted")
        assert shown["disabled"] is True
        # A malformed export changes nothing.
        for broken in (
            {**exported, "settings": [{"kind": "service", "key": "x"}]},
            {**exported, "documents": {"ab": "not base64!"}},
            {**exported, "format": "something else"},
        ):
            status, answer, _ = await _admin(http, fed, "POST", "/import", broken)
            assert status == 400, answer
        assert (await _call(http, fed, f"/r1/{PROVIDER}/getDeed/deeds/R"))[0] == 200
        # Remove, then restore from the export.
        await _admin(http, fed, "DELETE", f"/services/{PROVIDER}/getDeed")
        assert (await _call(http, fed, f"/r1/{PROVIDER}/getDeed/deeds/R"))[0] != 200
        status, answer, _ = await _admin(http, fed, "POST", "/import", exported)
        assert status == 200, answer
        assert (await _call(http, fed, f"/r1/{PROVIDER}/getDeed/deeds/R"))[0] == 200
        _, status_doc, _ = await _admin(http, fed, "GET", "/status")
        assert status_doc["services"] >= 7 and f"{PROVIDER}/restricted" in status_doc["disabled"]
    finally:
        await fed.federation.stop()


async def _as(
    http: aiohttp.ClientSession,
    fed: Fed,
    client: str,
    *,
    cert: tuple[Path, Path] | None = None,
    token_key: Any = None,
) -> tuple[int, str]:
    """One call of the echo service by ``client`` over the DGA node's TLS port."""
    ctx = ssl.create_default_context(cafile=str(fed.pki.root_ca.cert))
    headers = {"X-Road-Client": client}
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if token_key is not None:
        now = int(time.time())
        claims = {"iss": client, "aud": DGA, "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
        headers["Authorization"] = f"Bearer {jwt.encode(claims, token_key, 'ES256')}"
    async with http.get(
        fed.url(DGA, "client_tls") + "/r1/TH/GOV/DBD/registry/restricted", headers=headers,
        ssl=ctx,
    ) as r:  # fmt: skip
        return r.status, await r.text()


async def _dga_admin(
    http: aiohttp.ClientSession, fed: Fed, method: str, path: str, body: object = None
) -> tuple[int, Any]:
    async with http.request(
        method, fed.url(DGA, "admin") + "/settings" + path, json=body, headers=bearer()
    ) as r:
        return r.status, await r.json()


async def test_hosted_clients_certificates_and_keys_change_at_run_time(
    sfed: Fed, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    office, portal = "TH/GOV/DGA/officeapp", PORTAL
    # The restricted service is granted to BMA's licensing only: AccessDenied proves the
    # client was authenticated by its node and reached the provider.
    old_cert = (sfed.pki.client_tls(office).cert, sfed.pki.client_tls(office).key)
    assert "AccessDenied" in (await _as(http, sfed, office, cert=old_cert))[1]
    status, listed = await _dga_admin(http, sfed, "GET", "/clients")
    assert {c["client"]: c["auth"] for c in listed["clients"]} == {
        "TH/GOV/DGA/citizenportal": "jwt", "TH/GOV/DGA/devportal": "http", office: "mtls",
    }  # fmt: skip
    # A new TLS certificate from the federation's CA replaces the old one at once.
    ca_key = load_private_key(sfed.pki.root_ca.key)
    ca_cert = x509.load_pem_x509_certificate(sfed.pki.root_ca.cert.read_bytes())
    new_key = generate_key()
    new_cert = issue_cert(ca_key, ca_cert, office, new_key, purpose="client-tls")
    new_paths = (tmp_path / "office.cert.pem", tmp_path / "office.key.pem")
    write_cert(new_paths[0], new_cert)
    write_key(new_paths[1], new_key)
    pem = new_cert.public_bytes(serialization.Encoding.PEM).decode()
    status, answer = await _dga_admin(http, sfed, "PATCH", f"/clients/{office}", {"cert": pem})
    assert status == 200, answer
    assert "AccessDenied" in (await _as(http, sfed, office, cert=new_paths))[1]
    status, text = await _as(http, sfed, office, cert=old_cert)
    assert "SslAuthenticationFailed" in text, text
    # A certificate of another CA is refused; nothing changes.
    self_key = generate_key()
    self_signed = issue_cert(self_key, new_cert, office, self_key, purpose="client-tls")
    bad = self_signed.public_bytes(serialization.Encoding.PEM).decode()
    status, answer = await _dga_admin(http, sfed, "PATCH", f"/clients/{office}", {"cert": bad})
    assert status == 400 and "federation's CA" in answer["error"], answer
    assert "AccessDenied" in (await _as(http, sfed, office, cert=new_paths))[1]
    # A new JWT key: tokens of the old key are refused from now on.
    old_jwt = load_private_key(sfed.pki.client_jwt(portal).key)
    assert "AccessDenied" in (await _as(http, sfed, portal, token_key=old_jwt))[1]
    jwt_key = generate_key()
    public = (
        jwt_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    status, answer = await _dga_admin(
        http, sfed, "PATCH", f"/clients/{portal}", {"jwt_key": public}
    )
    assert status == 200, answer
    assert "AccessDenied" in (await _as(http, sfed, portal, token_key=jwt_key))[1]
    assert "AuthenticationFailed" in (await _as(http, sfed, portal, token_key=old_jwt))[1]
    # Removed: the client is unknown to its node; the global configuration must list a
    # client before its node takes it.
    status, _ = await _dga_admin(http, sfed, "DELETE", f"/clients/{office}")
    assert status == 200
    assert "not registered at this node" in (await _as(http, sfed, office, cert=new_paths))[1]
    status, answer = await _dga_admin(
        http, sfed, "POST", "/clients", {"id": "TH/GOV/DGA/newapp", "auth": "http"}
    )
    assert status == 404 and "central server" in answer["error"], answer
    status, answer = await _dga_admin(
        http, sfed, "POST", "/clients", {"id": office, "auth": "mtls", "cert": pem}
    )
    assert status == 201, answer
    assert "AccessDenied" in (await _as(http, sfed, office, cert=new_paths))[1]
    admin = sfed.federation.nodes[DGA].admin
    assert admin is not None and admin.audit is not None
    actions = [e["action"] for e in admin.audit.entries()]
    assert actions.count("client.set") == 2 and "client.remove" in actions


async def test_refresh_from_a_changed_openapi_document(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    status, _, _ = await _admin(
        http, sfed, "POST", "/services", _register(deeds_backend, allow=[DEV["X-Road-Client"]])
    )
    assert status == 201
    await _admin(http, sfed, "PATCH", f"/services/{PROVIDER}/getDeed", {"timeout": 7})
    changed = json.loads(json.dumps(DEEDS_OPENAPI))
    del changed["paths"]["/parcels"]
    changed["paths"]["/deeds/{deedNo}/history"] = {
        "get": {"operationId": "getDeedHistory", "responses": {"200": {"description": "ok"}}}
    }
    status, answer, _ = await _admin(
        http, sfed, "POST", "/refresh",
        {"service": f"{PROVIDER}/getDeed", "document": json.dumps(changed)},
    )  # fmt: skip
    assert status == 200, answer
    _, listed, _ = await _admin(http, sfed, "GET", "/services")
    codes = {s["service"]: s for s in listed["services"]}
    assert f"{PROVIDER}/listParcels" not in codes  # gone from the document
    history = codes[f"{PROVIDER}/getDeedHistory"]  # new, with the registration's rights
    assert history["allow"] == [DEV["X-Road-Client"]]
    assert codes[f"{PROVIDER}/getDeed"]["timeout"] == 7  # the administrator's change stands
    status, body, _ = await _call(http, sfed, f"/r1/{PROVIDER}/getOpenAPI?serviceCode=getDeed")
    assert "/deeds/{deedNo}/history" in body["paths"]
    status, body, _ = await _call(http, sfed, f"/r1/{PROVIDER}/listParcels/parcels")
    assert "UnknownService" in json.dumps(body)
    # A changed document that breaks a rule refreshes nothing.
    broken = json.loads(json.dumps(changed))
    del broken["paths"]["/deeds/{deedNo}/history"]["get"]["operationId"]
    status, answer, _ = await _admin(
        http, sfed, "POST", "/refresh",
        {"service": f"{PROVIDER}/getDeed", "document": json.dumps(broken)},
    )  # fmt: skip
    assert status == 400 and "without operationId" in answer["error"]
    _, listed, _ = await _admin(http, sfed, "GET", "/services")
    assert f"{PROVIDER}/getDeedHistory" in {s["service"] for s in listed["services"]}


# --- hostile review (issue 13): rights the admin API says are gone or never given are not
# honoured, and refusals are on the trail.

DEED = f"{PROVIDER}/getDeed"
PATH = f"/r1/{PROVIDER}/getDeed/deeds/D-7"


async def test_a_local_groups_access_right_is_given_and_revoked(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    assert (await _admin(http, sfed, "POST", "/groups", {"name": "portals"}))[0] == 201
    status, answer, _ = await _admin(
        http, sfed, "PATCH", "/groups/portals", {"add": [DEV["X-Road-Client"]]}
    )
    assert status == 200, answer
    # Granted to the group at registration, it is a group's right, not a subsystem's.
    status, answer, _ = await _admin(
        http, sfed, "POST", "/services", _register(deeds_backend, allow=["group:portals"])
    )
    assert status == 201, answer
    shown = {s["service"]: s for s in answer["registered"]}[DEED]
    assert shown["groups"] == ["portals"] and shown["allow"] == [], shown
    assert (await _call(http, sfed, PATH))[0] == 200
    # Revoked, the group's members are refused, and the group can go.
    status, answer, _ = await _admin(
        http, sfed, "POST", "/access/revoke", {"service": DEED, "to": "group:portals"}
    )
    assert status == 200, answer
    assert answer["groups"] == []
    assert _denied(await _call(http, sfed, PATH))
    # Once no service grants it anything (the registration granted every operation), it goes.
    status, answer, _ = await _admin(
        http, sfed, "POST", "/access/revoke",
        {"service": f"{PROVIDER}/listParcels", "to": "group:portals"},
    )  # fmt: skip
    assert status == 200, answer
    assert (await _admin(http, sfed, "DELETE", "/groups/portals"))[0] == 200


async def test_an_import_cannot_serve_a_service_under_another_id_or_provider(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    status, answer, _ = await _admin(http, sfed, "POST", "/services", _register(deeds_backend))
    assert status == 201, answer
    assert _denied(await _call(http, sfed, PATH))  # granted to nobody
    _, exported, _ = await _admin(http, sfed, "GET", "/export")
    deed = next(s for s in exported["settings"] if s["key"] == DEED)
    # A row shown as an unrelated service, granting what the node would serve as getDeed.
    disguised = copy.deepcopy(deed)
    disguised["key"] = f"{PROVIDER}/harmless"
    disguised["data"]["allow"] = [DEV["X-Road-Client"]]
    # A service of a subsystem another node hosts.
    foreign = copy.deepcopy(deed)
    foreign["key"] = foreign["data"]["table"]["id"] = f"{DEV['X-Road-Client']}/getDeed"
    for crafted in (disguised, foreign):
        others = [s for s in exported["settings"] if s["key"] != DEED]
        status, answer, _ = await _admin(
            http, sfed, "POST", "/import", {**exported, "settings": [*others, crafted]}
        )
        assert status == 400, answer
        assert _denied(await _call(http, sfed, PATH))
        _, listed, _ = await _admin(http, sfed, "GET", "/services")
        assert DEED in {s["service"] for s in listed["services"]}


async def test_a_refused_change_is_on_the_audit_trail_with_who_asked(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    status, answer, _ = await _admin(http, sfed, "POST", "/services", _register(deeds_backend))
    assert status == 201, answer
    status, answer, _ = await _admin(
        http, sfed, "POST", "/access", {"service": DEED, "to": "TH/GOV/NOPE/sub"}
    )
    assert status == 404, answer
    admin = sfed.federation.nodes["TH/GOV/DBD/hub1"].admin
    assert admin is not None and admin.audit is not None
    refused = [e for e in admin.audit.entries() if e["action"] == "access.grant.refused"]
    assert refused and refused[-1]["admin"] == "services", admin.audit.entries()
    assert "not a subsystem" in json.dumps(refused[-1]["detail"])


async def test_a_flat_file_service_reads_none_of_the_nodes_own_files(
    sfed: Fed, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # A service administrator granting her own client a "flat file" of the node's key
    # directory or data directory would read what only the node may.
    node = sfed.federation.nodes[DBD]
    layout = tmp_path / "lines.layout.toml"
    layout.write_text(
        'name = "lines"\nformat = "csv"\nencoding = "utf-8"\nheader = false\nkeys = ["line"]\n\n'
        '[[field]]\nname = "line"\n'
    )
    for private in (node.keys.auth().key, node.data_dir / "admin-audit.jsonl"):
        status, answer, _ = await _admin(
            http, sfed, "POST", "/services",
            {"provider": PROVIDER, "layout": str(layout), "file": str(private),
             "code": "lines", "answer_subject": [], "allow": [DEV["X-Road-Client"]]},
        )  # fmt: skip
        assert status == 400 and "keeps its keys and data" in answer["error"], answer
    _, listed, _ = await _admin(http, sfed, "GET", "/services")
    assert f"{PROVIDER}/lines" not in {s["service"] for s in listed["services"]}
    # An export in a folder of its own is served.
    export = tmp_path / "lines.csv"
    export.write_text("a\nb\n")
    status, answer, _ = await _admin(
        http, sfed, "POST", "/services",
        {"provider": PROVIDER, "layout": str(layout), "file": str(export),
         "code": "lines", "answer_subject": []},
    )  # fmt: skip
    assert status == 201, answer


async def test_files_are_read_only_from_the_directories_the_nodes_owner_lists(
    tmp_path: Path, echo_backend: str, http: aiohttp.ClientSession
) -> None:
    """Default deny for files: an API key with the service-administrator role is no login
    on the machine, so the node reads exports, layouts and descriptions by path only from
    its owner's service_file_dirs (and the layouts shipped with xroad-hub), following
    symbolic links first: another program's secret on the same machine is never served."""
    exports = tmp_path / "exports"
    exports.mkdir()
    spec = TestFederationSpec(
        backend_url=echo_backend, node_settings={DBD: {"service_file_dirs": [str(exports)]}}
    )
    fed = await start_federation(tmp_path / "fed", spec)
    try:
        secret = tmp_path / "elsewhere" / "ca.key.pem"  # say, the central server's CA key
        write_key(secret, generate_key())  # made here: no key text in the repository
        (exports / "link.csv").symlink_to(secret)
        (exports / "lines.csv").write_text("a\nb\n")
        layout = exports / "lines.layout.toml"
        layout.write_text(
            'name = "lines"\nformat = "csv"\nencoding = "utf-8"\nheader = false\n'
            'keys = ["line"]\n\n[[field]]\nname = "line"\n'
        )
        outside_layout = secret.parent / "lines.layout.toml"
        outside_layout.write_text(layout.read_text())

        def body(layout: Path, file: Path) -> dict[str, object]:
            return {"provider": PROVIDER, "layout": str(layout), "file": str(file),
                    "code": "lines", "answer_subject": []}  # fmt: skip

        for refused in (
            body(layout, secret), body(layout, exports / "link.csv"), body(outside_layout,
            exports / "lines.csv"), {**_register(echo_backend), "openapi": None,
            "openapi_url": str(secret)},
        ):  # fmt: skip
            status, answer, _ = await _admin(http, fed, "POST", "/services", refused)
            assert status == 400 and "service_file_dirs" in answer["error"], (refused, answer)
            assert str(exports) in answer["error"]  # the folders to use, named
        _, listed, _ = await _admin(http, fed, "GET", "/services")
        assert f"{PROVIDER}/lines" not in {s["service"] for s in listed["services"]}
        status, answer, _ = await _admin(
            http, fed, "POST", "/services", body(layout, exports / "lines.csv")
        )
        assert status == 201, answer
        # The layouts shipped with xroad-hub are public and always readable.
        (exports / "rd.csv").write_text("x\n")
        status, answer, _ = await _admin(
            http, fed, "POST", "/services", body(RD_LAYOUT, exports / "rd.csv")
        )
        assert "service_file_dirs" not in json.dumps(answer), answer
    finally:
        await fed.federation.stop()


async def test_refreshing_one_registration_leaves_another_of_the_same_document(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    # One document registered twice (two service codes, e.g. for two kinds of clients).
    for code in ("deedsPublic", "deedsCourts"):
        status, answer, _ = await _admin(
            http, sfed, "POST", "/services",
            _register(deeds_backend, code=code, allow=[DEV["X-Road-Client"]]),
        )  # fmt: skip
        assert status == 201, answer
    changed = json.loads(json.dumps(DEEDS_OPENAPI))
    del changed["paths"]["/parcels"]
    status, answer, _ = await _admin(
        http, sfed, "POST", "/refresh",
        {"service": f"{PROVIDER}/deedsPublic", "document": json.dumps(changed)},
    )  # fmt: skip
    assert status == 200, answer
    assert [s["service"] for s in answer["refreshed"]] == [f"{PROVIDER}/deedsPublic"]
    _, listed, _ = await _admin(http, sfed, "GET", "/services")
    assert f"{PROVIDER}/deedsCourts" in {s["service"] for s in listed["services"]}
    status, body, _ = await _call(http, sfed, f"/r1/{PROVIDER}/deedsCourts/parcels")
    assert status == 200, body


async def test_an_administrator_without_the_role_is_refused_on_the_trail(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    url = sfed.url(DBD, "admin") + "/settings/services"
    for name in ("ops", "scraper", "officer"):
        async with http.post(url, json=_register(deeds_backend), headers=bearer(name)) as r:
            assert r.status == 403
    _, listed, _ = await _admin(http, sfed, "GET", "/services")
    assert f"{PROVIDER}/getDeed" not in {s["service"] for s in listed["services"]}
    admin = sfed.federation.nodes[DBD].admin
    assert admin is not None and admin.audit is not None
    refused = [e for e in admin.audit.entries() if e["action"] == "refused"]
    assert [e["admin"] for e in refused] == ["ops", "scraper", "officer"]
    assert refused[0]["detail"]["path"] == "/settings/services"


async def test_a_description_is_read_from_none_of_the_nodes_own_files(
    sfed: Fed, http: aiohttp.ClientSession, deeds_backend: str, tmp_path: Path
) -> None:
    # An OpenAPI or WSDL named by a local path is read by the node: not from its key or data
    # directory (an error quoting the "document" would show what only the node may read),
    # and the refusal is the same whether a file is there or not.
    node = sfed.federation.nodes[DBD]
    key = node.keys.auth().key
    private = [str(key), f"file://{key}", str(node.data_dir / "admin-audit.jsonl"),
               str(node.data_dir / "no-such-file.json")]  # fmt: skip
    for location in private:
        for kind in ("openapi", "wsdl"):
            body = {**_register(deeds_backend), f"{kind}_url": location}
            del body["openapi"]
            status, answer, _ = await _admin(http, sfed, "POST", "/services", body)
            assert status == 400 and "keeps its keys and data" in answer["error"], answer
            assert "No such file" not in answer["error"]
        # A sent document recording a private path as its source, read again on refresh.
        body = _register(deeds_backend, source=location)
        status, answer, _ = await _admin(http, sfed, "POST", "/services", body)
        assert status == 400 and "keeps its keys and data" in answer["error"], answer
    _, listed, _ = await _admin(http, sfed, "GET", "/services")
    assert DEED not in {s["service"] for s in listed["services"]}
    # An import whose service would be refreshed from the node's key.
    status, answer, _ = await _admin(http, sfed, "POST", "/services", _register(deeds_backend))
    assert status == 201, answer
    _, exported, _ = await _admin(http, sfed, "GET", "/export")
    crafted = copy.deepcopy(exported)
    for s in crafted["settings"]:
        if s["key"] == DEED:
            s["data"]["source"] = str(key)
    status, answer, _ = await _admin(http, sfed, "POST", "/import", crafted)
    assert status == 400 and "keeps its keys and data" in answer["error"], answer
    # A description in a folder of its own is read.
    own = tmp_path / "deeds.json"
    own.write_text(json.dumps(DEEDS_OPENAPI))
    body = {**_register(deeds_backend, code="deedsFile"), "openapi_url": str(own)}
    del body["openapi"]
    status, answer, _ = await _admin(http, sfed, "POST", "/services", body)
    assert status == 201, answer
