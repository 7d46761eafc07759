"""End to end over real TLS: client system -> its node -> provider's node -> REST backend."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid

import aiohttp
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xroad_hub.protocol.identifiers import parse_member_id
from xroad_hub.protocol.message import canonical, decode_envelope, encode_envelope
from xroad_hub.protocol.signing import SignatureError, SignatureVerifier

from .conftest import Fed

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
ECHO = "/r1/TH/GOV/DBD/registry/echo"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}


async def _get(http: aiohttp.ClientSession, fed: Fed, path: str, **kw: object) -> tuple:
    async with http.request(
        str(kw.pop("method", "GET")), fed.url(DGA) + path, allow_redirects=False, **kw
    ) as r:
        return r.status, r.headers, await r.read()


async def test_happy_path_passes_request_and_answer_unchanged(fed: Fed, http) -> None:
    body = bytes(range(256)) * 3  # binary, byte-exact
    status, headers, data = await _get(
        http,
        fed,
        ECHO + "/v1/pets/12%20b?a=1&a=2&q=%E0%B8%81",
        method="POST",
        data=body,
        skip_auto_headers=("Accept",),
        headers={
            **DEV,
            "X-Road-UserId": "TH1101700203450",
            "X-Road-Issue": "BMA-FOOD-2569-0001",
            "X-Road-Represented-Party": "COM/0105744622488",
            "Content-Type": "application/octet-stream",
            "X-Custom": "kept",
            "Cache-Control": "no-cache",
            "User-Agent": "secret-client/1.0",
        },
    )
    assert status == 200, data
    echo = orjson.loads(data)
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo/v1/pets/12%20b"
    assert echo["query"] == "a=1&a=2&q=%E0%B8%81"
    assert base64.b64decode(echo["body"]) == body
    got = {k.lower(): v for k, v in echo["headers"]}
    assert got["x-custom"] == "kept"
    assert got["cache-control"] == "no-cache"
    assert got["content-type"] == "application/octet-stream"
    assert got["accept"] == "application/json"  # the protocol's default
    assert got["x-road-client"] == "TH/GOV/DGA/devportal"
    assert got["x-road-service"] == "TH/GOV/DBD/registry/echo"
    assert got["x-road-userid"] == "TH1101700203450"
    assert got["x-road-issue"] == "BMA-FOOD-2569-0001"
    assert got["x-road-represented-party"] == "COM/0105744622488"
    assert "secret-client" not in got.get("user-agent", "")
    # Response side: provider headers pass, X-Road headers are the nodes' own.
    assert headers["X-Backend"] == "echo"
    assert "leaky" not in headers.get("Server", "")
    assert headers["X-Road-Client"] == "TH/GOV/DGA/devportal"
    assert headers["X-Road-Service"] == "TH/GOV/DBD/registry/echo/v1"
    assert headers["X-Road-Id"] != "forged-by-provider"
    # Generated when the client sent none: time-ordered UUIDs (see protocol.exchange.new_id).
    assert uuid.UUID(headers["X-Road-Id"]).version == 7
    assert uuid.UUID(headers["X-Road-Request-Id"]).version == 7
    assert len(base64.b64decode(headers["X-Road-Request-Hash"])) == 64
    assert "X-Road-Error" not in headers


async def test_query_string_passes_raw(fed: Fed, http) -> None:
    # yarl would re-encode; send an already encoded URL untouched.
    url = aiohttp.client.URL(fed.url(DGA) + ECHO + "/x?a=%20b&a=c%26d", encoded=True)
    async with http.get(url, headers=DEV) as r:
        echo = await r.json()
    assert r.status == 200
    assert echo["path"] == "/echo/x"
    assert echo["query"] == "a=%20b&a=c%26d"


async def test_client_message_id_and_accept_are_kept(fed: Fed, http) -> None:
    mid = "portal-" + uuid.uuid4().hex
    status, headers, data = await _get(
        http, fed, ECHO, headers={**DEV, "X-Road-Id": mid, "Accept": "application/xml"}
    )
    assert status == 200
    assert headers["X-Road-Id"] == mid
    got = {k.lower(): v for k, v in orjson.loads(data)["headers"]}
    assert got["accept"] == "application/xml"
    assert got["x-road-id"] == mid


async def test_last_x_road_client_header_counts(fed: Fed, http) -> None:
    headers = aiohttp.client.CIMultiDict(
        [("X-Road-Client", "TH/GOV/DGA/unknown"), ("X-Road-Client", "TH/GOV/DGA/devportal")]
    )
    status, h, _ = await _get(http, fed, ECHO, headers=headers)
    assert status == 200
    assert h["X-Road-Client"] == "TH/GOV/DGA/devportal"


async def test_redirects_are_passed_back_not_followed(fed: Fed, http) -> None:
    status, headers, _ = await _get(http, fed, ECHO + "/redirect", headers=DEV)
    assert status == 302
    assert headers["Location"] == "/elsewhere"


async def test_category1_provider_error_passes_unchanged(fed: Fed, http) -> None:
    status, headers, data = await _get(http, fed, ECHO + "/status/404", headers=DEV)
    assert status == 404
    assert orjson.loads(data) == {"problem": "provider says no"}
    assert "X-Road-Error" not in headers
    assert "X-Road-Request-Hash" in headers  # still a signed, logged exchange


async def test_category2_backend_unreachable_and_timeout(fed: Fed, http) -> None:
    for service in ("down", "slow"):
        status, headers, data = await _get(
            http, fed, f"/r1/TH/GOV/DBD/registry/{service}", headers=DEV
        )
        assert status == 500
        assert headers["X-Road-Error"] == "Server.ServerProxy.NetworkError"
        err = orjson.loads(data)
        assert err["type"] == "Server.ServerProxy.NetworkError"
        uuid.UUID(err["detail"])


async def test_provider_node_refusals(fed: Fed, http) -> None:
    cases = {
        "/r1/TH/GOV/DBD/registry/restricted": "Server.ServerProxy.AccessDenied",
        "/r1/TH/GOV/DBD/registry/closed": "Server.ServerProxy.ServiceDisabled",
        "/r1/TH/GOV/DBD/registry/nosuch": "Server.ServerProxy.UnknownService",
        "/r1/TH/GOV/DBD/nosub/echo": "Server.ClientProxy.UnknownMember",
    }
    for path, code in cases.items():
        status, headers, data = await _get(http, fed, path, headers=DEV)
        assert (status, headers.get("X-Road-Error")) == (500, code), data
        assert orjson.loads(data)["type"] == code


async def test_error_body_honours_accept_xml(fed: Fed, http) -> None:
    status, headers, data = await _get(
        http, fed, "/r1/TH/GOV/DBD/registry/restricted", headers={**DEV, "Accept": "text/xml"}
    )
    assert status == 500
    assert headers["Content-Type"].startswith("application/xml")
    assert b"<type>Server.ServerProxy.AccessDenied</type>" in data


async def test_both_nodes_log_the_exchange_with_verifiable_signatures(fed: Fed, http) -> None:
    mid = "log-" + uuid.uuid4().hex
    status, headers, _ = await _get(
        http, fed, ECHO, headers={**DEV, "X-Road-Id": mid, "X-Road-UserId": "TH3100600123459"}
    )
    assert status == 200
    for node, role in ((DGA, "client"), (DBD, "provider")):
        rows = await fed.federation.nodes[node].runtime.log.find(mid)
        assert len(rows) == 1
        row = rows[0]
        assert row["role"] == role
        assert row["status"] == 200
        assert row["client"] == "TH/GOV/DGA/devportal"
        assert row["service"] == "TH/GOV/DBD/registry/echo"
        assert row["user_id"] == "TH3100600123459"
        leaf = orjson.loads(row["leaf"])
        assert leaf["request_meta_sha256"] == hashlib.sha256(row["request_meta"]).hexdigest()
        # The logged request is signed by the client's member, the answer by the provider's;
        # the federation root certificate is all a verifier needs (certs travel with them).
        root = x509.load_pem_x509_certificate(fed.pki.root_ca.cert.read_bytes())
        verifier = SignatureVerifier([root])
        request_env = decode_envelope(
            encode_envelope(row["request_meta"], row["request_signature"], b"", row["request_body"])
        )
        assert request_env.meta["client"] == "TH/GOV/DGA/devportal"
        for meta_col, sig_col, member in (
            ("request_meta", "request_signature", "TH/GOV/DGA"),
            ("response_meta", "response_signature", "TH/GOV/DBD"),
        ):
            cert_der = x509.load_pem_x509_certificate(
                fed.pki.member_sign(member).cert.read_bytes()
            ).public_bytes(serialization.Encoding.DER)
            verifier.verify(row[meta_col], row[sig_col], cert_der, parse_member_id(member))
            with pytest.raises(SignatureError):
                verifier.verify(
                    row[meta_col] + b" ", row[sig_col], cert_der, parse_member_id(member)
                )
        response_meta = orjson.loads(row["response_meta"])
        assert response_meta["request_hash"] == headers["X-Road-Request-Hash"]
        assert canonical(orjson.loads(row["request_meta"])) == row["request_meta"]


async def test_refused_exchange_is_logged_by_provider(fed: Fed, http) -> None:
    mid = "denied-" + uuid.uuid4().hex
    status, _, _ = await _get(
        http, fed, "/r1/TH/GOV/DBD/registry/restricted", headers={**DEV, "X-Road-Id": mid}
    )
    assert status == 500
    rows = await fed.federation.nodes[DBD].runtime.log.find(mid)
    assert [r["error_type"] for r in rows] == ["Server.ServerProxy.AccessDenied"]
    client_rows = await fed.federation.nodes[DGA].runtime.log.find(mid)
    assert [r["error_type"] for r in client_rows] == ["Server.ServerProxy.AccessDenied"]


async def test_category4_log_failure_means_no_answer(fed: Fed, http, monkeypatch) -> None:
    from xroad_hub.messagelog.store import LogError

    async def broken(record: object) -> int:
        raise LogError("disk full")

    monkeypatch.setattr(fed.federation.nodes[DBD].runtime.log, "append", broken)
    status, headers, data = await _get(http, fed, ECHO, headers=DEV)
    assert status == 500
    assert headers["X-Road-Error"] == "Server.ServerProxy.LoggingFailed"
    assert b"registry" not in data  # the backend's answer is withheld
    monkeypatch.undo()
    status, _, _ = await _get(http, fed, ECHO, headers=DEV)
    assert status == 200


async def test_large_bodies_pass_both_ways_byte_exact(fed: Fed, http) -> None:
    """Bodies arrive in many TCP segments; every hop must read them to the end."""
    body = bytes(range(256)) * 2048  # 512 KiB; the echo answer is ~700 KiB of base64 JSON
    status, _, data = await _get(
        http, fed, ECHO + "/big", method="POST", data=io.BytesIO(body), headers=DEV
    )
    assert status == 200
    assert base64.b64decode(orjson.loads(data)["body"]) == body


async def test_failed_answer_verification_is_logged_by_client_node(own_fed: Fed, http, monkeypatch):
    fed = own_fed
    from xroad_hub.node.batching import BatchSigner
    from xroad_hub.pki import generate_key
    from xroad_hub.protocol.signing import MessageSigner

    rt = fed.federation.nodes[DBD].runtime
    member = next(m for m in rt.signers if str(m) == "TH/GOV/DBD")
    good = rt.signers[member]
    monkeypatch.setitem(
        rt.signers, member, BatchSigner(MessageSigner(member, generate_key(), good.cert_der))
    )
    mid = "badsig-" + uuid.uuid4().hex
    status, _, _ = await _get(http, fed, ECHO, headers={**DEV, "X-Road-Id": mid})
    assert status == 500
    rows = await fed.federation.nodes[DGA].runtime.log.find(mid)
    assert [r["error_type"] for r in rows] == ["Server.ClientProxy.InvalidSignatureValue"]


async def test_x_road_security_server_header_targets_a_node(fed: Fed, http) -> None:
    status, _, _ = await _get(http, fed, ECHO, headers={**DEV, "X-Road-Security-Server": DBD})
    assert status == 200
    # A node that does not serve the provider is refused before anything is sent.
    status, headers, _ = await _get(
        http, fed, ECHO, headers={**DEV, "X-Road-Security-Server": "TH/GOV/BMA/hub1"}
    )
    assert (status, headers["X-Road-Error"]) == (500, "Server.ClientProxy.UnknownMember")
