"""Review of the framed node-to-node channel: a provider that stalls or goes silent does
not take a client node's exchanges with it, and a peer that does not read its answers
holds its share of the provider while they are unread."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import pytest

from xroad_hub.errors import XRoadError
from xroad_hub.protocol.frames import REPLY, FrameReader, encode_reply, frame_head

from .conftest import Fed
from .test_peer_channel import _entry, _transport, provider_tls  # noqa: F401


@pytest.mark.parametrize("stall", ["half reply", "silent"])
async def test_a_provider_connection_that_stalls_is_replaced(
    fed: Fed,
    provider_tls: Callable[[], ssl.SSLContext],  # noqa: F811
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
        frames = FrameReader(1 << 20)
        try:
            while data := await reader.read(65536):
                for event in frames.feed(data):
                    if not hasattr(event, "payload"):
                        continue
                    if first:
                        if stall == "half reply":
                            writer.write(frame_head(100, event.head.stream, REPLY) + b"x" * 10)
                        stalled.set()
                        continue
                    writer.writelines(encode_reply(event.head.stream, 200, "x/y", event.payload))
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(provider, "127.0.0.1", 0, ssl=provider_tls())
    port = server.sockets[0].getsockname()[1]
    peers = _transport(fed)
    try:
        with pytest.raises(XRoadError, match="NetworkError"):
            await peers.send(_entry(fed, port), b"first", 1)
        assert stalled.is_set()
        reply = await peers.send(_entry(fed, port), b"second", 10)
        assert (reply.status, reply.body) == (200, b"second")
        assert connections == 2
    finally:
        await peers.close()
        server.close()
