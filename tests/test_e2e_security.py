"""Hostile and broken input end to end: each gets a clear X-Road error, the node keeps serving,
and nothing reaches the backend that should not."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import ssl
import time
from urllib.parse import urlsplit

import aiohttp
import jwt
import orjson
import pytest

from xroad_hub.central.registry import Registry
from xroad_hub.node.batching import BatchSigner
from xroad_hub.node.peer import PEER_PATH
from xroad_hub.pki import generate_key, issue_cert, load_private_key, make_root_ca
from xroad_hub.protocol.globalconf import NodeEntry, sign_globalconf
from xroad_hub.protocol.identifiers import parse_subsystem_id
from xroad_hub.protocol.message import decode_envelope, encode_envelope
from xroad_hub.protocol.signing import MessageSigner

from .conftest import Fed
from .rogue_node import signed_envelope

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
ECHO = "/r1/TH/GOV/DBD/registry/echo"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}
PORTAL = "TH/GOV/DGA/citizenportal"


async def raw_http(
    base: str,
    request_line: str,
    headers: dict[str, str],
    body: bytes = b"",
    *,
    declared_length: int | None = None,
    trickle: float = 0,
) -> tuple[int, dict, bytes]:
    """Send bytes exactly as given (no client-side URL normalisation)."""
    u = urlsplit(base)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    length = len(body) if declared_length is None else declared_length
    head = (
        f"{request_line}\r\nHost: {u.netloc}\r\nConnection: close\r\nContent-Length: {length}\r\n"
    )
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode() + (b"" if trickle else body))

    async def slowly() -> None:
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(trickle)

    sender = asyncio.create_task(slowly()) if trickle else None
    data = await reader.read()
    if sender is not None:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    writer.close()
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = dict(line.split(": ", 1) for line in lines[1:])
    return status, hdrs, payload


async def _still_serving(fed: Fed, http: aiohttp.ClientSession) -> None:
    async with http.get(fed.url(DGA) + ECHO, headers=DEV) as r:
        assert r.status == 200


def _code(payload: bytes) -> str:
    return orjson.loads(payload)["type"]


@pytest.mark.parametrize(
    ("target", "code"),
    [
        (ECHO + "/a/../../admin", "Client.BadRequest"),
        (ECHO + "/a/%2e%2e/admin", "Client.BadRequest"),
        (ECHO + "/a/%2E%2E/admin", "Client.BadRequest"),
        (ECHO + "/a%2Fb", "Client.BadRequest"),
        (ECHO + "/a%5c..", "Client.BadRequest"),
        (ECHO + "//evil.example/x", "Client.BadRequest"),
        ("/r1/TH/GOV/DBD/reg_istry/echo", "Client.BadRequest"),
        ("/r1/TH/GOV/DBD%2Fregistry/echo/x", "Client.BadRequest"),
        ("/r1/TH/GOV/DBD/registry", "Client.BadRequest"),
        ("/r2/TH/GOV/DBD/registry/echo", "Client.InvalidProtocolVersion"),
        (ECHO + "/" + "a" * 2100, "Client.BadRequest"),
    ],
)
async def test_bad_urls_are_refused_before_anything_is_sent(
    fed: Fed, http: aiohttp.ClientSession, target: str, code: str
) -> None:
    status, headers, payload = await raw_http(fed.url(DGA), f"GET {target} HTTP/1.1", DEV)
    assert status == 400
    assert headers["X-Road-Error"] == code
    assert _code(payload) == code
    await _still_serving(fed, http)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "Client.MissingHeader"),
        ({"X-Road-Client": "TH/GOV"}, "Client.BadRequest"),
        ({"X-Road-Client": "TH/GOV/DGA/dev portal"}, "Client.BadRequest"),
        ({"X-Road-Client": "TH/GOV/DGA/dev_portal"}, "Client.BadRequest"),
        (
            {"X-Road-Client": "TH/GOV/DGA/devportal", "X-Road-Represented-Party": "a/b/c"},
            "Client.BadRequest",
        ),
    ],
)
async def test_bad_x_road_headers(fed: Fed, http, headers: dict[str, str], code: str) -> None:
    status, h, payload = await raw_http(fed.url(DGA), f"GET {ECHO} HTTP/1.1", headers)
    assert (status, h["X-Road-Error"], _code(payload)) == (400, code, code)


async def test_oversized_body_is_refused(fed: Fed, http) -> None:
    big = io.BytesIO(b"x" * (1024 * 1024 + 1))
    async with http.post(fed.url(DGA) + ECHO, data=big, headers=DEV) as r:
        assert r.status == 400
        assert r.headers["X-Road-Error"] == "Client.BadRequest"
    await _still_serving(fed, http)


async def test_slow_body_is_cut_off(fed: Fed, http) -> None:
    status, _, payload = await raw_http(
        fed.url(DGA), f"POST {ECHO} HTTP/1.1", DEV, b"0123456789" * 10, trickle=0.1
    )
    assert status == 400
    assert "not received within" in orjson.loads(payload)["message"]
    await _still_serving(fed, http)


async def test_jwt_client_with_a_fresh_token(fed: Fed, http) -> None:
    url = fed.url(DGA, "client_tls") + ECHO
    headers = {"X-Road-Client": PORTAL, "Authorization": f"Bearer {fed.token()}"}
    async with http.get(url, headers=headers, ssl=fed.client_ssl()) as r:
        assert r.status == 200, await r.text()
        echo = await r.json()
    # The node's credential never travels on to the provider.
    assert "authorization" not in {k.lower() for k, _ in echo["headers"]}
    # The same token again is a replay.
    async with http.get(url, headers=headers, ssl=fed.client_ssl()) as r:
        assert r.status == 400
        assert "replay" in (await r.json())["message"]


def _alg_none_token() -> str:
    enc = lambda d: base64.urlsafe_b64encode(orjson.dumps(d)).rstrip(b"=").decode()  # noqa: E731
    now = int(time.time())
    return (
        enc({"alg": "none", "typ": "JWT"})
        + "."
        + enc({"iss": PORTAL, "aud": DGA, "iat": now, "exp": now + 60, "jti": "x"})
        + "."
    )


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda fed: fed.token(exp=int(time.time()) - 60, iat=int(time.time()) - 120),
            id="expired",
        ),
        pytest.param(lambda fed: fed.token(aud="TH/GOV/BMA/hub1"), id="wrong-audience"),
        pytest.param(lambda fed: fed.token(iss="TH/GOV/DGA/devportal"), id="wrong-issuer"),
        pytest.param(lambda fed: fed.token(exp=int(time.time()) + 3600), id="too-long-lived"),
        pytest.param(lambda fed: _alg_none_token(), id="alg-none"),
        pytest.param(
            lambda fed: jwt.encode(
                {
                    "iss": PORTAL,
                    "aud": DGA,
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 60,
                    "jti": "forged",
                },
                generate_key(),
                algorithm="ES256",
            ),
            id="forged-signature",
        ),
        pytest.param(lambda fed: "not-a-jwt", id="garbage"),
        pytest.param(lambda fed: "", id="missing"),
    ],
)
async def test_bad_tokens_are_refused(fed: Fed, http, make) -> None:
    token = make(fed)
    headers = {"X-Road-Client": PORTAL}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.get(
        fed.url(DGA, "client_tls") + ECHO, headers=headers, ssl=fed.client_ssl()
    ) as r:
        assert r.status == 400
        assert r.headers["X-Road-Error"] == "Client.AuthenticationFailed"
    await _still_serving(fed, http)


async def test_mtls_client_and_impersonation(fed: Fed, http) -> None:
    url = fed.url(DGA, "client_tls") + ECHO
    office = fed.client_ssl("TH/GOV/DGA/officeapp")
    async with http.get(url, headers={"X-Road-Client": "TH/GOV/DGA/officeapp"}, ssl=office) as r:
        assert r.status == 200
    # Without its certificate, or over plain HTTP, officeapp is refused.
    async with http.get(
        url, headers={"X-Road-Client": "TH/GOV/DGA/officeapp"}, ssl=fed.client_ssl()
    ) as r:
        assert r.headers["X-Road-Error"] == "Server.ClientProxy.SslAuthenticationFailed"
    async with http.get(
        fed.url(DGA) + ECHO, headers={"X-Road-Client": "TH/GOV/DGA/officeapp"}
    ) as r:
        assert r.headers["X-Road-Error"] == "Server.ClientProxy.SslAuthenticationFailed"
    # officeapp's certificate cannot act as the JWT client, nor as BMA's licensing (which
    # holds a certificate of the same CA but is registered at another node).
    async with http.get(url, headers={"X-Road-Client": PORTAL}, ssl=office) as r:
        assert r.headers["X-Road-Error"] == "Client.AuthenticationFailed"
    licensing = fed.client_ssl("TH/GOV/BMA/licensing")
    async with http.get(url, headers={"X-Road-Client": "TH/GOV/DGA/officeapp"}, ssl=licensing) as r:
        assert r.headers["X-Road-Error"] == "Server.ClientProxy.SslAuthenticationFailed"
    async with http.get(url, headers={"X-Road-Client": "TH/GOV/BMA/licensing"}, ssl=licensing) as r:
        assert r.headers["X-Road-Error"] == "Server.ClientProxy.UnknownMember"
    # ... while on its own node licensing works, and reaches a service only it may use.
    async with http.get(
        fed.url("TH/GOV/BMA/hub1", "client_tls") + "/r1/TH/GOV/DBD/registry/restricted",
        headers={"X-Road-Client": "TH/GOV/BMA/licensing"},
        ssl=licensing,
    ) as r:
        assert r.status == 200


async def test_client_certificate_from_another_ca_fails_the_handshake(
    fed: Fed, http, tmp_path
) -> None:
    ca_key, ca_cert = make_root_ca("rogue CA")
    key = generate_key()
    cert = issue_cert(ca_key, ca_cert, "TH/GOV/DGA/officeapp", key, purpose="tls")
    from xroad_hub.pki import write_cert, write_key

    write_key(tmp_path / "k.pem", key)
    write_cert(tmp_path / "c.pem", cert)
    ctx = fed.client_ssl()
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        async with http.get(
            fed.url(DGA, "client_tls") + ECHO,
            headers={"X-Road-Client": "TH/GOV/DGA/officeapp"},
            ssl=ctx,
        ) as r:
            await r.read()
    await _still_serving(fed, http)


async def test_unregistered_node_certificate_is_refused_by_provider(fed: Fed, http) -> None:
    """A certificate of the federation CA that is not a registered node's cannot deliver."""
    peer = fed.url(DBD, "peer") + PEER_PATH
    ctx = fed.client_ssl("TH/GOV/DGA/officeapp")
    ctx.check_hostname = False
    async with http.post(peer, data=b"XHM1", ssl=ctx) as r:
        assert r.status == 500
        assert r.headers["X-Road-Error"] == "Server.ServerProxy.SslAuthenticationFailed"


async def test_provider_node_with_unregistered_certificate_is_refused_by_client(
    fed: Fed, http
) -> None:
    """The client node pins the provider node's registered certificate in the handshake:
    the real DBD node is refused before any request byte reaches it."""
    node = fed.federation.nodes[DGA]
    registry = Registry(fed.federation.fed, fed.pki)
    conf = registry.current()
    other = next(n for n in conf.nodes if str(n.id) == "TH/GOV/BMA/hub1")
    # DBD's address, but BMA's (valid, same-CA) certificate registered for it.
    forged = tuple(
        dataclasses.replace(
            n, auth_cert_sha256=other.auth_cert_sha256, auth_cert_der=other.auth_cert_der
        )
        if str(n.id) == DBD
        else n
        for n in conf.nodes
    )
    conf = dataclasses.replace(conf, nodes=forged)
    key = load_private_key(fed.pki.globalconf_signer.key)
    node.globalconf.install(sign_globalconf(conf, key))
    try:
        async with http.get(fed.url(DGA) + ECHO, headers=DEV) as r:
            assert r.status == 500
            assert r.headers["X-Road-Error"] == "Server.ClientProxy.SslAuthenticationFailed"
    finally:
        node.globalconf.install(sign_globalconf(registry.current(), key))
    await _still_serving(fed, http)


async def test_tampered_request_signature_never_reaches_the_backend(
    own_fed: Fed, http, monkeypatch
) -> None:
    fed = own_fed
    """The client node signs with a key that is not the member's: the provider refuses."""
    rt = fed.federation.nodes[DGA].runtime
    member = next(m for m in rt.signers if str(m) == "TH/GOV/DGA")
    good = rt.signers[member]
    monkeypatch.setitem(
        rt.signers, member, BatchSigner(MessageSigner(member, generate_key(), good.cert_der))
    )
    calls_before = await fed.federation.nodes[DBD].runtime.log.count()
    async with http.post(fed.url(DGA) + ECHO, data=b"payload", headers=DEV) as r:
        assert r.status == 500
        assert r.headers["X-Road-Error"] == "Server.ServerProxy.InvalidSignatureValue"
    # Nothing was served or logged as an exchange by the provider.
    assert await fed.federation.nodes[DBD].runtime.log.count() == calls_before


# The provider decodes small messages on the event loop and large ones in its parsing pool:
# the signed digest must hold on both paths.
@pytest.mark.parametrize("size", [4, 200_000])
async def test_tampered_body_between_nodes_is_refused(
    fed: Fed, http, monkeypatch, size: int
) -> None:
    """A body changed after signing (man in the middle) fails the signed digest."""
    peers = fed.federation.nodes[DGA].runtime.peers
    original = peers.send

    async def tamper(peer: NodeEntry, data: bytes, timeout: float):  # type: ignore[no-untyped-def]
        env = decode_envelope(data)
        evil = b"e" * len(env.body)  # the same length: only the digest can tell
        return await original(
            peer, encode_envelope(env.meta_bytes, env.signature, env.cert_der, evil), timeout
        )

    monkeypatch.setattr(peers, "send", tamper)
    async with http.post(fed.url(DGA) + ECHO, data=b"g" * size, headers=DEV) as r:
        assert r.status == 500
        assert r.headers["X-Road-Error"] == "Server.ServerProxy.InvalidSignatureValue"


async def test_tampered_response_signature_is_refused_by_client_node(
    own_fed: Fed, http, monkeypatch
) -> None:
    fed = own_fed
    rt = fed.federation.nodes[DBD].runtime
    member = next(m for m in rt.signers if str(m) == "TH/GOV/DBD")
    good = rt.signers[member]
    monkeypatch.setitem(
        rt.signers, member, BatchSigner(MessageSigner(member, generate_key(), good.cert_der))
    )
    async with http.get(fed.url(DGA) + ECHO, headers=DEV) as r:
        assert r.status == 500
        assert r.headers["X-Road-Error"] == "Server.ClientProxy.InvalidSignatureValue"
        assert "X-Road-Request-Hash" not in r.headers


async def _signed_from_client_node(fed: Fed, **changes: object):  # type: ignore[no-untyped-def]
    """Deliver a correctly signed request as a (rogue) client node would craft it."""
    envelope = await signed_envelope(fed, **changes)
    rt = fed.federation.nodes[DGA].runtime
    peer = rt.globalconf.current().node_hosting(parse_subsystem_id("TH/GOV/DBD/registry"))
    return await rt.peers.send(peer, envelope, 10)


@pytest.mark.parametrize(
    "changes",
    [
        {"path": "@127.0.0.1:1/steal"},
        {"path": "/../../admin"},
        {"path": "/a%2fb"},
        {"query": "a=1 HTTP/1.1\r\nX: y"},
        {"method": "GET /x"},
        {"headers": [["X-Evil", "a\r\nInjected: yes"]]},
        {"headers": [["Bad Name", "x"]]},
        {"user_id": "x" * 300},
    ],
)
async def test_provider_node_rechecks_what_the_client_node_signed(fed: Fed, changes) -> None:
    reply = await _signed_from_client_node(fed, **changes)
    assert reply.status == 500
    assert orjson.loads(reply.body)["type"] == "Server.ServerProxy.InvalidMessage"


async def test_client_node_cannot_inject_node_headers(fed: Fed) -> None:
    reply = await _signed_from_client_node(
        fed,
        headers=[
            ["X-Road-Client", "TH/GOV/BMA/licensing"],
            ["Host", "evil.example"],
            ["Transfer-Encoding", "chunked"],
            ["X-Fine", "yes"],
        ],
    )
    assert reply.status == 200
    env = decode_envelope(reply.body)
    seen = orjson.loads(env.body)["headers"]
    assert [v for k, v in seen if k.lower() == "x-road-client"] == ["TH/GOV/DGA/devportal"]
    assert "evil.example" not in {v for k, v in seen if k.lower() == "host"}
    assert "chunked" not in {v for k, v in seen if k.lower() == "transfer-encoding"}
    assert ["X-Fine", "yes"] in seen


async def test_client_certificate_cannot_serve_as_a_node(fed: Fed, tmp_path) -> None:
    """A client system's certificate (clientAuth only) fails a node's server check, even with
    only the CA trusted (no pinning), so it can never pose as a provider node."""
    from aiohttp import web

    from xroad_hub.dev.testing import free_port
    from xroad_hub.node.tls import peer_client_context, peer_server_context

    licensing = fed.pki.client_tls("TH/GOV/BMA/licensing")
    app = web.Application()

    async def steal(request: web.Request) -> web.Response:
        return web.Response(text="stolen")

    app.router.add_post(PEER_PATH, steal)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    ctx = peer_server_context(licensing.cert, licensing.key, fed.pki.root_ca.cert)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    try:
        node_auth = fed.pki.node_auth(DGA)
        client_ctx = peer_client_context(node_auth.cert, node_auth.key, fed.pki.root_ca.cert)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.post(f"https://127.0.0.1:{port}{PEER_PATH}", ssl=client_ctx)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/r1/TH/GOV/DBD/registry/echo", {}),
        ("GET", "/r1/TH/GOV/DBD/../registry/echo", {}),  # a bad URL tells it nothing either
        ("GET", ECHO, {"X-Road-Id": "i" * 2000, "X-Road-Represented-Party": "a/b/c"}),
        ("POST", "/", {"Content-Type": "text/xml; charset=utf-8"}),  # SOAP
        ("GET", "/wsdl?xRoadInstance=TH", {}),
        ("GET", "/evidence/echo_query/3101700123457", {"X-Road-Purpose": "x"}),
        ("DELETE", "/anything/else", {}),
    ],
)
async def test_an_unauthenticated_caller_gets_its_refusal_first(
    fed: Fed, http: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str]
) -> None:
    """Every route of the client listener authenticates before its handler runs (default
    deny, client_authentication): a caller proving no client learns nothing of its URL,
    headers or body, only that it is not authenticated."""
    office = {"X-Road-Client": "TH/GOV/DGA/officeapp", **headers}  # mTLS only: not over HTTP
    async with http.request(method, fed.url(DGA) + path, headers=office, data=b"<x/>") as r:
        assert r.headers["X-Road-Error"] == "Server.ClientProxy.SslAuthenticationFailed"
    # The catalog of evidence types and the list of clients are public.
    for public in ("/listClients", "/evidence"):
        async with http.get(fed.url(DGA) + public) as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("service", "code"),
    [
        ("TH/GOV/DGA/devportal/echo", "UnknownMember"),  # DGA's subsystem, not DBD's node's
        ("TH/GOV/DBD/other/echo", "UnknownMember"),  # DBD's member, not this subsystem
        ("TH/GOV/DBD/registry/nosuchservice", "UnknownService"),  # served, not this service
    ],
)
async def test_provider_node_names_what_it_does_not_serve(
    fed: Fed, service: str, code: str
) -> None:
    """X-Road's two refusals: a provider the node serves no service of, and a service a
    provider it serves does not have."""
    reply = await _signed_from_client_node(fed, service=service)
    assert reply.status == 500
    assert orjson.loads(reply.body)["type"] == f"Server.ServerProxy.{code}"
