"""Review of the framed node-to-node channel: a provider that stalls or goes silent does
not take a client node's exchanges with it, and a peer that does not read its answers
holds its share of the provider while they are unread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import orjson
import pytest

from xroad_hub.errors import XRoadError
from xroad_hub.node.framelistener import MAX_PEER_CONNECTIONS
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
    incoming_frames,
    new_connection,
    open_frames,
    provider_context,
    provider_entry,
    provider_frames,
    unread_connection,
    until_closed,
)
from .rogue_node import DBD, DGA, signed_envelope


@pytest.mark.parametrize("stall", ["half reply", "silent"])
async def test_a_provider_connection_that_stalls_is_replaced(
    fed: Fed,
    stall: str,
) -> None:
    """The first connection stops answering (mid-frame, or altogether, as a connection
    dropped silently on the way does): the exchange that waited on it fails, and the next
    exchange goes over a new connection instead of waiting on the dead one."""
    connections = 0
    stalled = asyncio.Event()

    async def provider(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            async for frame in incoming_frames(reader):
                if first:
                    if stall == "half reply":
                        writer.write(frame_head(100, frame.head.stream, REPLY) + b"x" * 10)
                    stalled.set()
                    continue
                writer.writelines(encode_reply(frame.head.stream, 200, "x/y", frame.payload))
        finally:
            writer.close()

    server = await asyncio.start_server(provider, "127.0.0.1", 0, ssl=provider_context(fed))
    port = server.sockets[0].getsockname()[1]
    peers = client_transport(fed)
    try:
        with pytest.raises(XRoadError, match="NetworkError"):
            await peers.send(provider_entry(fed, port), b"first", 1)
        assert stalled.is_set()
        reply = await peers.send(provider_entry(fed, port), b"second", 10)
        assert (reply.status, reply.body) == (200, b"second")
        assert connections == 2
    finally:
        await peers.close()
        server.close()


async def test_a_peer_that_does_not_read_its_answers_gets_no_more_of_them_buffered(
    fed: Fed,
) -> None:
    """A registered node sends many exchanges on one connection and reads none of the
    answers: once its connection's write buffer is full, the provider buffers no further
    answers for it in the transport (they wait, holding the peer's share, until it reads),
    instead of writing every answer of every exchange it had admitted."""
    provider = provider_frames(fed)
    dga = fingerprint(fed.pki.node_auth(DGA))
    known = set(provider.connections)
    reader, writer = await unread_connection(fed)
    try:
        conn = await new_connection(provider, known)
        assert conn.fingerprint == dga and conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        body = b"b" * 48_000
        for stream in range(1, 2 * 40, 2):
            envelope = await signed_envelope(fed, body)
            writer.write(frame_head(len(envelope), stream, REQUEST) + envelope)
        # The provider serves what it read, then has nothing more to do for this peer.
        async with asyncio.timeout(60):
            quiet = 0
            while quiet < 20:
                await asyncio.sleep(0.05)
                quiet = 0 if conn.tasks else quiet + 1
        _, high = conn.transport.get_write_buffer_limits()
        one_answer = 2 * len(envelope)
        assert conn.transport.get_write_buffer_size() <= high + one_answer
        # Once the peer reads, every exchange it sent is answered.
        frames = FrameReader(1 << 24)
        answered: dict[int, int] = {}
        async with asyncio.timeout(60):
            while len(answered) < 40:
                for event in frames.feed(await reader.read(1 << 16)):
                    if isinstance(event, Frame):
                        answered[event.head.stream] = decode_reply(event.payload)[0]
        assert set(answered.values()) == {200}
    finally:
        writer.transport.abort()


async def test_an_answer_over_the_limit_fails_only_its_own_exchange(
    fed: Fed,
) -> None:
    """A provider node whose limit is larger than this node's answers one exchange with
    more than this node takes: that exchange fails as over HTTP (its answer is skipped,
    never held), the other exchanges on the same connection are answered."""
    connections = 0

    async def provider(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            async for frame in incoming_frames(reader):
                body = b"z" * (2 << 20) if frame.payload == b"big" else frame.payload
                writer.writelines(encode_reply(frame.head.stream, 200, "x/y", body))
        finally:
            writer.close()

    server = await asyncio.start_server(provider, "127.0.0.1", 0, ssl=provider_context(fed))
    port = server.sockets[0].getsockname()[1]
    peers = client_transport(fed)  # takes answers of 1 MiB at most
    try:
        big, small = await asyncio.gather(
            peers.send(provider_entry(fed, port), b"big", 10),
            peers.send(provider_entry(fed, port), b"small", 10),
            return_exceptions=True,
        )
        assert isinstance(big, XRoadError) and big.code == "Server.ClientProxy.NetworkError"
        assert not isinstance(small, BaseException) and small.body == b"small"
        reply = await peers.send(provider_entry(fed, port), b"again", 10)
        assert reply.body == b"again"
        assert connections == 1
    finally:
        await peers.close()
        server.close()


async def test_a_request_over_the_providers_limit_fails_only_its_own_exchange(fed: Fed) -> None:
    """A client node whose limit is larger than this node's sends a message over this
    node's: it is refused as over HTTP (Server.ServerProxy.BadRequest), unread, and the
    connection goes on serving the node's other exchanges."""
    reader, writer = await open_frames(fed, fed.pki.node_auth(DGA))
    try:
        size = provider_frames(fed).proxy.max_message_bytes + 1
        writer.write(frame_head(size, 1, REQUEST))
        for _ in range(size // (1 << 20)):
            writer.write(b"x" * (1 << 20))
        writer.write(b"x" * (size % (1 << 20)))
        envelope = await signed_envelope(fed, b"fine")
        writer.write(frame_head(len(envelope), 3, REQUEST) + envelope)
        frames = FrameReader(1 << 24)
        answered: dict[int, tuple[int, str, bytes]] = {}
        async with asyncio.timeout(60):
            while len(answered) < 2:
                for event in frames.feed(await reader.read(1 << 16)):
                    if isinstance(event, Frame):
                        answered[event.head.stream] = decode_reply(event.payload)
    finally:
        writer.close()
    _, _, body = answered[1]
    assert orjson.loads(body)["type"] == "Server.ServerProxy.BadRequest"
    assert answered[3][0] == 200


async def test_a_node_revoked_while_connected_is_refused_its_connection(
    tmp_path, echo_backend: str
) -> None:
    """A node's authentication certificate is revoked while its connection is open (a
    stolen key): its next frame is answered by one REFUSED frame and the connection closed,
    as at connect, instead of each of its frames being answered (and logged) on its own."""
    from xroad_hub.dev.testing import TestFederationSpec

    from .conftest import start_federation
    from .test_e2e_revocation import _revoke, _until_known

    fed = await start_federation(
        tmp_path, TestFederationSpec(backend_url=echo_backend, validity=30, refresh=0.3)
    )
    try:
        reader, writer = await open_frames(fed, fed.pki.node_auth(DGA))
        try:
            await _until_known(fed, DBD, _revoke(fed, "auth", DGA))
            writer.write(b"".join(frame_head(0, s, REQUEST) for s in range(1, 2000, 2)))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            frames = []
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                async with asyncio.timeout(30):
                    data = await reader.read()  # until the provider closes
                frames = [f for f in FrameReader(1 << 24).feed(data) if isinstance(f, Frame)]
        finally:
            writer.close()
        assert [f.head.kind for f in frames] == [REFUSED]
        assert orjson.loads(decode_reply(frames[0].payload)[2])["type"] == (
            "Server.ServerProxy.SslAuthenticationFailed"
        )
    finally:
        await fed.federation.stop()


async def test_refusals_wait_for_a_peer_that_does_not_read_them(fed: Fed, monkeypatch) -> None:
    """A registered node at its share sends a stream of small frames and reads none of the
    answers: the provider refuses no more of them than its buffer holds (each refusal is
    an answer of hundreds of bytes and a log line for nine bytes read), and the rest once
    the peer reads."""
    provider = provider_frames(fed)
    refused = 0

    def full(peer, reserve):  # type: ignore[no-untyped-def]
        nonlocal refused
        refused += 1
        raise XRoadError("Server.ServerProxy.TooManyRequests", "at its share", status=429)

    monkeypatch.setattr(provider.proxy, "admit", full)
    known = set(provider.connections)
    reader, writer = await unread_connection(fed)
    sent = 20_000
    try:
        conn = await new_connection(provider, known)
        assert conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        writer.write(b"".join(frame_head(0, s, REQUEST) for s in range(1, 2 * sent, 2)))
        async with asyncio.timeout(30):
            quiet, last = 0, -1
            while quiet < 20:
                await asyncio.sleep(0.05)
                quiet, last = (quiet + 1 if refused == last else 0), refused
        assert refused < sent // 2
        frames = FrameReader(1 << 24)
        answered = 0
        async with asyncio.timeout(60):
            while answered < sent:
                for event in frames.feed(await reader.read(1 << 16)):
                    answered += isinstance(event, Frame)
        assert refused == sent
    finally:
        writer.transport.abort()


async def test_a_frame_held_back_while_its_peer_does_not_read_is_not_a_stall(fed: Fed) -> None:
    """The provider stops reading a peer whose answers pile up unread (its transport's
    flow control, played here by the test, as when the peer is busy); a frame it had
    begun then waits without the peer being to blame: once writing resumes, the frame is
    completed and served, however long the pause took, instead of the connection being cut
    with every exchange on it."""
    provider = provider_frames(fed)
    limit = fed.federation.nodes[DBD].config.body_timeout
    known = set(provider.connections)
    reader, writer = await open_frames(fed, fed.pki.node_auth(DGA))
    try:
        conn = await new_connection(provider, known)
        envelope = await signed_envelope(fed, b"b" * 1000)
        frame = frame_head(len(envelope), 1, REQUEST) + envelope
        writer.write(frame[: len(frame) // 2])
        async with asyncio.timeout(10):
            while not conn.reader.partial:  # noqa: ASYNC110 - the provider's state is the point
                await asyncio.sleep(0.01)
        conn.pause_writing()  # the peer reads nothing: neither does the provider
        writer.write(frame[len(frame) // 2 :])  # (in the socket, unread)
        await asyncio.sleep(2 * limit)
        assert not conn._closed
        conn.resume_writing()
        async with asyncio.timeout(30):
            head = await reader.readexactly(9)
            payload = await reader.readexactly(int.from_bytes(head[:4], "big"))
        assert head[8] == REPLY and decode_reply(payload)[0] == 200
    finally:
        writer.transport.abort()


async def test_a_peer_gets_a_bounded_number_of_connections(fed: Fed, http) -> None:
    """Each frames connection costs the provider TLS state and buffers: a registered node
    that opens more than MAX_PEER_CONNECTIONS has the further ones refused (429, read
    nothing), while its open connections and other exchanges go on."""
    provider = provider_frames(fed)
    opened = [
        await open_frames(fed, fed.pki.node_auth(DGA)) for _ in range(MAX_PEER_CONNECTIONS + 1)
    ]
    try:
        frames = await until_closed(opened[-1][0])
        assert [f.head.kind for f in frames] == [REFUSED]
        status, _, body = decode_reply(frames[0].payload)
        assert status == 429, body
        assert orjson.loads(body)["type"] == "Server.ServerProxy.TooManyRequests"
        # The first connection still carries an exchange.
        reader, writer = opened[0]
        envelope = await signed_envelope(fed)
        writer.write(frame_head(len(envelope), 1, REQUEST) + envelope)
        async with asyncio.timeout(30):
            head = await reader.readexactly(9)
            payload = await reader.readexactly(int.from_bytes(head[:4], "big"))
        assert head[8] == REPLY and decode_reply(payload)[0] == 200
    finally:
        for _, writer in opened:
            writer.transport.abort()
    dga = fingerprint(fed.pki.node_auth(DGA))
    async with asyncio.timeout(10):
        while provider.per_peer.get(dga, 0) > 1:  # noqa: ASYNC110 - (DGA's own channel)
            await asyncio.sleep(0.01)
    assert await echo(fed, http) == 200


async def test_a_frame_trickled_a_byte_at_a_time_is_cut_off(fed: Fed) -> None:
    """A registered node begins a frame (admitted: it holds part of its share) and then
    sends one byte of it at a time, each well within the body timeout: the frame never
    stalls by the rule of progress alone, and held the connection and the share for as long
    as the peer liked (over HTTP the whole body has the body timeout). A frame must also
    arrive at a minimum rate: this one is cut off, and its share released."""
    provider = provider_frames(fed)
    limits = provider.proxy.rt.peer_limits
    limit = fed.federation.nodes[DBD].config.body_timeout
    known = set(provider.connections)
    reader, writer = await open_frames(fed, fed.pki.node_auth(DGA))
    closed = asyncio.create_task(until_closed(reader))
    try:
        conn = await new_connection(provider, known)
        envelope = await signed_envelope(fed, b"t" * 3000)
        frame = frame_head(len(envelope), 1, REQUEST) + envelope
        writer.write(frame[:100])
        async with asyncio.timeout(10):
            while not conn._admitted:  # noqa: ASYNC110 - the provider's state is the point
                await asyncio.sleep(0.01)
        assert limits.in_flight(DGA)[0] >= 1
        sent = 100
        loop = asyncio.get_running_loop()
        until = loop.time() + 6 * limit
        while not closed.done() and loop.time() < until:
            writer.write(frame[sent : sent + 1])  # a byte, never silent for the body timeout
            sent += 1
            await asyncio.sleep(limit / 3)
        assert closed.done(), f"a frame trickled for {6 * limit:g} s is still being read"
        assert await closed == []
        assert conn._closed and not conn._admitted
        async with asyncio.timeout(10):
            while limits.in_flight(DGA)[0]:  # noqa: ASYNC110 - the share is released
                await asyncio.sleep(0.01)
    finally:
        closed.cancel()
        writer.transport.abort()


async def test_a_stopping_provider_answers_the_exchanges_it_serves_beside_a_partial_frame(
    own_fed: Fed, monkeypatch
) -> None:
    """The provider node stops while a client node's connection carries an exchange being
    served (longer than the body timeout) and a frame half sent: the node no longer reads,
    so the half frame makes no progress, which is not the peer's stall. The exchange served
    (and logged) is still answered before the connection is closed, as the exchanges in
    flight of a stopping node are, instead of the connection being cut as stalled."""
    fed = own_fed
    provider = provider_frames(fed)
    limit = fed.federation.nodes[DBD].config.body_timeout
    serve = provider.proxy.serve

    async def slow(*args):  # type: ignore[no-untyped-def]
        await asyncio.sleep(2 * limit)
        return await serve(*args)

    monkeypatch.setattr(provider.proxy, "serve", slow)
    known = set(provider.connections)
    reader, writer = await open_frames(fed, fed.pki.node_auth(DGA))
    stopping = None
    try:
        conn = await new_connection(provider, known)
        served = await signed_envelope(fed, b"served")
        half = await signed_envelope(fed, b"h" * 2000)
        writer.write(frame_head(len(served), 1, REQUEST) + served)
        writer.write((frame_head(len(half), 3, REQUEST) + half)[:500])
        async with asyncio.timeout(10):
            while not (conn.tasks and conn._admitted):  # noqa: ASYNC110 - the provider's state
                await asyncio.sleep(0.01)
        stopping = asyncio.create_task(fed.federation.nodes[DBD].stop())
        frames = await until_closed(reader)
        assert [(f.head.stream, f.head.kind) for f in frames] == [(1, REPLY)]
        assert decode_reply(frames[0].payload)[0] == 200
    finally:
        writer.transport.abort()
        if stopping is not None:
            await stopping
