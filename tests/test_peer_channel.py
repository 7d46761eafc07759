"""The framed node-to-node channel: exchanges between nodes go over one TLS connection per
peer, chosen by ALPN; a peer that breaks the framing is cut off while honest exchanges go
on; a peer that is not a registered node gets nothing read; nodes that speak only HTTP are
still served, both ways."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from xroad_hub.errors import XRoadError
from xroad_hub.node.peer import PEER_PATH
from xroad_hub.node.tls import peer_server_context
from xroad_hub.protocol.frames import (
    REFUSED,
    REPLY,
    REQUEST,
    Frame,
    FrameReader,
    decode_reply,
    encode_reply,
    frame_head,
)

from .conftest import Fed
from .framespeer import (
    client_transport,
    echo,
    fingerprint,
    open_frames,
    provider_context,
    provider_entry,
    provider_frames,
    until_closed,
)
from .rogue_node import DBD, DGA, signed_envelope


def test_frames_are_read_whole_however_the_bytes_arrive() -> None:
    """TLS hands over bytes in any pieces: a frame split anywhere is read the same, and a
    payload discarded at its head is skipped without being kept."""
    data = (
        frame_head(5, 1, REQUEST) + b"hello"
        + frame_head(0, 3, REQUEST)
        + frame_head(4, 5, REQUEST) + b"skip"
        + b"".join(encode_reply(7, 429, "application/json", b"{}"))
    )  # fmt: skip
    for size in (1, 2, 7, len(data)):
        reader = FrameReader(64)
        frames = []
        for i in range(0, len(data), size):
            for event in reader.feed(data[i : i + size]):
                if isinstance(event, Frame):
                    frames.append(event)
                elif event.stream == 5:
                    reader.discard()
        assert [(f.head.stream, f.payload) for f in frames[:2]] == [(1, b"hello"), (3, b"")]
        assert len(frames) == 3 and not reader.partial
        assert decode_reply(frames[2].payload) == (429, "application/json", b"{}")


async def test_exchanges_between_nodes_go_over_the_framed_channel(fed: Fed, http) -> None:
    provider = provider_frames(fed)
    peers = fed.federation.nodes[DGA].runtime.peers
    served, sent = provider.served, peers.frame_exchanges
    assert await echo(fed, http, b"over frames") == 200
    assert provider.served == served + 1
    assert peers.frame_exchanges == sent + 1


async def test_many_exchanges_at_once_share_one_connection(fed: Fed, http) -> None:
    provider = provider_frames(fed)
    served = provider.served
    # As many as one client system may have in flight at once (client_max_concurrent).
    statuses = await asyncio.gather(*(echo(fed, http, b"x" * i) for i in range(32)))
    assert statuses == [200] * 32
    assert provider.served == served + 32
    dga = fingerprint(fed.pki.node_auth(DGA))
    assert sum(c.fingerprint == dga for c in provider.connections) == 1


async def test_frames_leave_without_waiting_for_acknowledgements(fed: Fed, http) -> None:
    """TCP_NODELAY on both ends of the channel (aiohttp set it on the HTTP path's
    connections; the frames' listening socket did not get it from asyncio): without it, an
    answer written while an earlier one was unacknowledged waited ~40 ms for the peer's
    delayed ACK, and the once-only case's five concurrent evidence fetches took 50 ms
    instead of 21 (scripts/bench_case.py)."""
    assert await echo(fed, http) == 200
    provider = provider_frames(fed)
    rt = fed.federation.nodes[DGA].runtime
    assert rt is not None
    sockets = [c.transport.get_extra_info("socket") for c in provider.connections if c.transport]
    sockets += [
        c.transport.get_extra_info("socket") for c in rt.peers._channels.values() if c.transport
    ]
    assert len(sockets) >= 2
    assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)


def _hostile(fed: Fed) -> dict[str, bytes]:
    return {
        "garbage": b"\xde\xad\xbe\xef" * 8,
        "unknown kind": frame_head(4, 1, 9) + b"abcd",
        "reply from the client": frame_head(0, 1, REPLY),
        "even stream id": frame_head(0, 2, REQUEST),
        # Two requests on stream 1 in one write: the first is still in flight.
        "duplicate stream": (frame_head(3, 1, REQUEST) + b"bad") * 2,
        # A frame begun and never finished: cut off after the body timeout.
        "half frame": frame_head(1000, 1, REQUEST) + b"x" * 10,
    }


@pytest.mark.parametrize(
    "case",
    ["garbage", "unknown kind", "reply from the client", "even stream id", "duplicate stream",
     "half frame"],
)  # fmt: skip
async def test_a_registered_node_that_breaks_the_framing_is_cut_off(
    fed: Fed, http, case: str
) -> None:
    """With a registered node's own certificate: its connection is closed unanswered (but
    for the stream it had completed), and an honest exchange at the same time succeeds."""
    reader, writer = await open_frames(fed, fed.pki.node_auth(DGA))
    try:
        writer.write(_hostile(fed)[case])
        await writer.drain()
        frames, status = await asyncio.gather(until_closed(reader), echo(fed, http))
    finally:
        writer.close()
    assert status == 200
    assert all(f.head.stream == 1 for f in frames)
    assert len(frames) <= (case == "duplicate stream")
    assert await echo(fed, http) == 200


async def test_a_frame_that_keeps_arriving_is_served_however_long_it_takes(fed: Fed, http) -> None:
    """The body timeout (1.5 s here) is for a peer that stalls mid-frame, not for a frame
    that takes long on a slow or busy link: cutting it would take every other exchange of
    the connection with it."""
    limit = fed.federation.nodes[DBD].config.body_timeout
    reader, writer = await open_frames(fed, fed.pki.node_auth(DGA))
    try:
        envelope = await signed_envelope(fed, b"s" * 3000)
        data = frame_head(len(envelope), 1, REQUEST) + envelope
        pieces = 6
        step = -(-len(data) // pieces)
        for i in range(pieces):  # the whole frame over ~2x the body timeout, never silent
            writer.write(data[i * step : (i + 1) * step])
            await writer.drain()
            if i < pieces - 1:
                await asyncio.sleep(limit * 2 / (pieces - 1))
        async with asyncio.timeout(30):
            head = await reader.readexactly(9)
            payload = await reader.readexactly(int.from_bytes(head[:4], "big"))
    finally:
        writer.close()
    assert head[4:9] == (1).to_bytes(4, "big") + bytes([REPLY])
    assert decode_reply(payload)[0] == 200
    assert await echo(fed, http) == 200


async def test_a_request_for_a_client_its_node_does_not_host_is_refused(fed: Fed, http) -> None:
    reader, writer = await open_frames(fed, fed.pki.node_auth(DGA))
    try:
        envelope = await signed_envelope(fed, client="TH/GOV/DBD/registry")
        writer.write(frame_head(len(envelope), 1, REQUEST) + envelope)
        head = await reader.readexactly(9)
        payload = await reader.readexactly(int.from_bytes(head[:4], "big"))
    finally:
        writer.close()
    assert head[4:9] == (1).to_bytes(4, "big") + bytes([REPLY])
    status, content_type, body = decode_reply(payload)
    assert status == 500 and content_type.startswith("application/json")
    assert orjson.loads(body)["type"] == "Server.ServerProxy.SslAuthenticationFailed"
    assert "does not host" in orjson.loads(body)["message"]
    assert await echo(fed, http) == 200


async def test_a_tls_peer_that_is_not_a_registered_node_gets_no_frame_read(fed: Fed) -> None:
    """A certificate of the federation CA, of a client system: its request is never read,
    it is told why, and the connection is closed."""
    served = provider_frames(fed).served
    reader, writer = await open_frames(fed, fed.pki.client_tls("TH/GOV/DGA/officeapp"))
    try:
        envelope = await signed_envelope(fed)
        writer.write(frame_head(len(envelope), 1, REQUEST) + envelope)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        frames = await until_closed(reader)
    finally:
        writer.close()
    assert [f.head.kind for f in frames] == [REFUSED]
    status, _, body = decode_reply(frames[0].payload)
    assert status == 500
    assert orjson.loads(body)["type"] == "Server.ServerProxy.SslAuthenticationFailed"
    assert provider_frames(fed).served == served


async def test_a_client_node_without_frames_is_served_over_http(
    fed: Fed, http, monkeypatch
) -> None:
    """A node of an older version offers no ALPN: the provider serves it over HTTP."""
    peers = fed.federation.nodes[DGA].runtime.peers
    monkeypatch.setattr(peers, "_frames", False)
    served = provider_frames(fed).served
    assert await echo(fed, http, b"over http") == 200
    assert provider_frames(fed).served == served


# --- a client node's transport against peers of its own making ---


@contextlib.asynccontextmanager
async def _http_only_peer(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_post(PEER_PATH, echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_a_provider_without_frames_is_reached_over_http(fed: Fed) -> None:
    auth = fed.pki.node_auth(DBD)
    old = peer_server_context(auth.cert, auth.key, fed.pki.root_ca.cert)  # offers no ALPN
    peers = client_transport(fed)
    try:
        async with _http_only_peer(old) as port:
            for _ in range(2):
                reply = await peers.send(provider_entry(fed, port), b"hello", 10)
                assert (reply.status, reply.body) == (200, b"hello")
    finally:
        await peers.close()
    assert peers.frame_exchanges == 0


async def test_exchanges_waiting_for_a_connection_fail_as_network_errors_when_the_node_stops(
    fed: Fed,
) -> None:
    """A peer that accepts TCP and never answers the TLS handshake: the exchanges waiting
    for the connection end with an X-Road error when the node stops, not a cancellation
    that no error boundary renders, and the attempt itself is over when close() returns."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peers = client_transport(fed)
    try:
        sends = [
            asyncio.create_task(peers.send(provider_entry(fed, port), b"m", 30)) for _ in range(3)
        ]
        async with asyncio.timeout(10):
            while not accepted:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await peers.close()
        results = await asyncio.gather(*sends, return_exceptions=True)
        assert all(isinstance(r, XRoadError) for r in results), results
        assert all("stopping" in str(r) for r in results), results
        assert not peers._connecting
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


async def test_exchanges_in_flight_fail_when_the_connection_is_lost(fed: Fed) -> None:
    """A provider that drops the connection: every exchange in flight on it fails as a
    network error, and the next exchange opens a new connection."""
    connections = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(1)  # the first request has begun to arrive
        await asyncio.sleep(0.05)
        writer.transport.abort()

    server = await asyncio.start_server(drop, "127.0.0.1", 0, ssl=provider_context(fed))
    port = server.sockets[0].getsockname()[1]
    peers = client_transport(fed)
    try:
        results = await asyncio.gather(
            *(peers.send(provider_entry(fed, port), b"m%d" % i, 10) for i in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, XRoadError) for r in results)
        assert {r.code for r in results} == {"Server.ClientProxy.NetworkError"}  # type: ignore[union-attr]
        assert connections == 1
        with pytest.raises(XRoadError, match="NetworkError"):
            await peers.send(provider_entry(fed, port), b"again", 10)
        assert connections == 2
    finally:
        await peers.close()
        server.close()
        await server.wait_closed()


async def test_an_exchange_whose_connection_drops_is_still_logged(fed: Fed) -> None:
    """The client node goes away right after sending: the provider serves and logs the
    exchange all the same (its answer has nowhere to go)."""
    log = fed.federation.nodes[DBD].runtime.log
    before = await log.count()
    _, writer = await open_frames(fed, fed.pki.node_auth(DGA))
    envelope = await signed_envelope(fed)
    writer.write(frame_head(len(envelope), 1, REQUEST) + envelope)
    await writer.drain()
    writer.close()  # gone before the answer, which has nowhere to go
    async with asyncio.timeout(20):
        while await log.count() == before:  # noqa: ASYNC110 - polling the node's log
            await asyncio.sleep(0.05)
    assert await log.count() == before + 1
