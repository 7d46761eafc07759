"""The auditors' HTTPS API of a node: an authenticated role, search, verify, evidence."""

from __future__ import annotations

import time
import uuid

import asyncpg
import jwt
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.dev.testing import TestFederationSpec
from xroad_hub.messagelog.evidence import verify_bundle
from xroad_hub.node.trackerapi import mint_idp_token
from xroad_hub.pki import generate_key, load_private_key

from .conftest import Fed, start_federation

# Loaded as a plugin (names imported inside tests): a module imported before pytest loads
# it cannot get its asserts rewritten, which is an error here.
pytest_plugins = ["tests.messagelog_backends"]

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"


def _token(fed: Fed, *, key=None, **claims: object) -> str:  # type: ignore[no-untyped-def]
    now = int(time.time())
    body: dict[str, object] = {"iss": "auditor:oag", "aud": DBD, "iat": now, "exp": now + 60}
    body.update(claims)
    key = key or load_private_key(fed.pki.auditor_jwt("oag").key)
    return jwt.encode(body, key, algorithm="ES256")


async def _get(fed: Fed, http, path: str, token: str | None):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(fed.url(DBD, "audit") + path, headers=headers,
                        ssl=fed.client_ssl()) as r:  # fmt: skip
        return r.status, await r.read()


async def test_auditor_searches_verifies_and_exports(fed: Fed, http) -> None:
    await _search_verify_export(fed, http)


async def test_the_same_on_a_postgresql_log(tmp_path, echo_backend, http) -> None:  # type: ignore[no-untyped-def]
    """A node logging to PostgreSQL serves the auditors' API and the citizens' tracker."""
    from tests.messagelog_backends import PG_DSN, postgres_or_skip

    await postgres_or_skip()
    fed = await start_federation(
        tmp_path, TestFederationSpec(backend_url=echo_backend, provider_log_dsn=PG_DSN)
    )
    schema = fed.federation.nodes[DBD].runtime.log.schema
    try:
        await _search_verify_export(fed, http)
        idp = load_private_key(fed.pki.idp_jwt().key)
        assert isinstance(idp, ec.EllipticCurvePrivateKey)
        token = mint_idp_token(idp, subject="1101700203450", role="citizen", audience=DBD)
        status, body = await _get(fed, http, "/tracker/accesses", token)
        assert status == 200, body
        assert [e["leaf_index"] for e in orjson.loads(body)["entries"]] == [0]
    finally:
        await fed.federation.stop()
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def _search_verify_export(fed: Fed, http) -> None:  # type: ignore[no-untyped-def]
    mid = "audit-api-" + uuid.uuid4().hex
    async with http.get(fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/1101700203450",
                        headers={"X-Road-Client": "TH/GOV/DGA/devportal",
                                 "X-Road-Id": mid}) as r:  # fmt: skip
        assert r.status == 200
    token = _token(fed)
    status, body = await _get(fed, http, f"/audit/search?message_id={mid}", token)
    assert status == 200
    entries = orjson.loads(body)["entries"]
    assert [e["subjects"] for e in entries] == [["1101700203450"]]
    status, body = await _get(fed, http, "/audit/search?subject=1101700203450&limit=1", token)
    assert status == 200 and orjson.loads(body)["next_after"] is not None
    # Checkpointed first: a log no witnessed checkpoint covers does not verify (this
    # passed alone only when other tests had checkpointed the shared federation before).
    await fed.federation.nodes[DBD].checkpointer.checkpoint()
    status, body = await _get(fed, http, "/audit/verify", token)
    assert status == 200 and orjson.loads(body)["ok"] is True, body
    status, bundle = await _get(fed, http, f"/audit/evidence/{mid}", token)
    assert status == 200
    root = x509.load_pem_x509_certificate(fed.pki.root_ca.cert.read_bytes())
    assert verify_bundle(bundle, [root]).leaf["message_id"] == mid
    status, _ = await _get(fed, http, "/audit/evidence/no-such-id", token)
    assert status == 404
    status, _ = await _get(fed, http, "/audit/search?limit=100000", token)
    assert status == 400


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda fed: None, id="no-token"),
        pytest.param(lambda fed: _token(fed, key=generate_key()), id="forged"),
        pytest.param(lambda fed: _token(fed, aud=DGA), id="other-node"),
        pytest.param(lambda fed: _token(fed, iss="auditor:nobody"), id="unknown-auditor"),
        pytest.param(lambda fed: _token(fed, exp=int(time.time()) - 30), id="expired"),
        pytest.param(lambda fed: _token(fed, exp=int(time.time()) + 3600), id="too-long"),
        pytest.param(lambda fed: fed.token(), id="a-client-token"),
    ],
)
async def test_only_auditors_get_in(fed: Fed, http, make) -> None:
    status, _ = await _get(fed, http, "/audit/search", make(fed))
    assert status == 401


async def test_each_api_of_the_audit_listener_has_its_own_authentication(fed: Fed, http) -> None:
    """The auditors' API (/audit) and the citizens' tracker (/tracker) are sub-applications:
    an auditor's token opens /audit only, a citizen's /tracker only, and nothing under /audit
    (an unknown route either) answers without an auditor's token."""
    auditor = _token(fed)
    idp = fed.pki.idp_jwt()
    citizen = mint_idp_token(
        load_private_key(idp.key), subject="1101700203450", role="citizen", audience=DBD
    )
    assert (await _get(fed, http, "/audit/search?limit=1", auditor))[0] == 200
    assert (await _get(fed, http, "/tracker/accesses", auditor))[0] == 401
    assert (await _get(fed, http, "/tracker/accesses", citizen))[0] == 200
    assert (await _get(fed, http, "/audit/search?limit=1", citizen))[0] == 401
    assert (await _get(fed, http, "/audit/no-such-route", None))[0] == 401
    assert (await _get(fed, http, "/tracker/no-such-route", citizen))[0] == 404
