"""The node-to-node connection pool: bounded per peer, and many more exchanges than
connections still all get their own answer, in the order they came."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.testing import TestFederationSpec, free_port, write_federation
from xroad_hub.errors import ConfigError
from xroad_hub.federation import load_federation
from xroad_hub.node.peer import PEER_PATH, PeerTransport
from xroad_hub.node.tls import peer_client_context, peer_server_context
from xroad_hub.pki import PkiLayout, load_cert
from xroad_hub.protocol.globalconf import NodeEntry
from xroad_hub.protocol.identifiers import parse_node_id
from xroad_hub.protocol.signing import cert_fingerprint

CLIENT_NODE, PROVIDER_NODE = "TH/GOV/DGA/hub1", "TH/GOV/DBD/hub1"


class FakePeer:
    """A provider node's TLS endpoint that answers each message with its own bytes, a little
    later, and notes how many connections and messages it had at once."""

    def __init__(self) -> None:
        self.connections: set[object] = set()
        self.arrivals: list[bytes] = []
        self.in_flight = self.most_in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.connections.add(request.transport)
        body = await request.read()
        self.arrivals.append(body)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)  # long enough for the others to queue behind it
        finally:
            self.in_flight -= 1
        return web.Response(body=body, content_type="application/octet-stream")


@pytest.fixture
async def pki(tmp_path: Path) -> PkiLayout:
    fed = load_federation(
        write_federation(
            tmp_path / "federation.toml", TestFederationSpec(backend_url="http://127.0.0.1:9")
        )
    )
    ensure_pki(fed, tmp_path / "certs")
    return PkiLayout(tmp_path / "certs")


@pytest.fixture
async def peer(pki: PkiLayout) -> AsyncIterator[tuple[FakePeer, NodeEntry]]:
    fake = FakePeer()
    app = web.Application()
    app.router.add_post(PEER_PATH, fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    auth = pki.node_auth(PROVIDER_NODE)
    ctx = peer_server_context(auth.cert, auth.key, pki.root_ca.cert)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    der = load_cert(auth.cert).public_bytes(Encoding.DER)
    entry = NodeEntry(
        parse_node_id(PROVIDER_NODE), f"127.0.0.1:{port}", cert_fingerprint(der), frozenset(), der
    )
    try:
        yield fake, entry
    finally:
        await runner.cleanup()


async def test_many_more_exchanges_than_connections_all_get_their_own_answer_in_order(
    pki: PkiLayout, peer: tuple[FakePeer, NodeEntry]
) -> None:
    fake, entry = peer
    auth = pki.node_auth(CLIENT_NODE)
    transport = PeerTransport(
        functools.partial(peer_client_context, auth.cert, auth.key, pki.root_ca.cert),
        1 << 20,
        max_connections_per_peer=3,
    )
    messages = [f"message {i}".encode() for i in range(40)]
    try:
        replies = await asyncio.gather(*(transport.send(entry, m, 10.0) for m in messages))
    finally:
        await transport.close()
    assert [(r.status, r.body) for r in replies] == [(200, m) for m in messages]
    # The bound held, and was used: never more than 3 connections, 3 messages at once.
    assert len(fake.connections) <= 3
    assert fake.most_in_flight == 3
    # Waiting exchanges are served first come, first served: none overtakes an earlier one
    # by more than the connections that were busy when it came.
    for position, body in enumerate(fake.arrivals):
        assert abs(messages.index(body) - position) < 3


async def test_a_pool_of_no_connections_is_refused_at_load(tmp_path: Path) -> None:
    config = write_federation(
        tmp_path / "federation.toml",
        TestFederationSpec(
            backend_url="http://127.0.0.1:9",
            node_settings={CLIENT_NODE: {"peer_max_connections": 0}},
        ),
    )
    with pytest.raises(ConfigError, match="peer_max_connections: must be at least 1, got 0"):
        load_federation(config)
