"""The client side of the framed channel closes a connection only once it has been idle."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from xroad_hub.node.channel import FrameChannel
from xroad_hub.protocol.frames import encode_reply


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def writelines(self, list_of_data: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        pass


async def test_the_idle_timer_never_closes_a_channel_with_an_exchange_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two exchanges answered in one read end in the same pass, each finding no other stream
    left: one idle timer, not one each (the first, orphaned, closed the connection a timeout
    later under whatever exchanges were in flight then)."""
    monkeypatch.setattr("xroad_hub.node.channel.IDLE_TIMEOUT", 0.2)
    channel = FrameChannel(1024)
    transport = _Transport()
    channel.connection_made(transport)
    first = asyncio.ensure_future(channel.exchange(b"one"))
    second = asyncio.ensure_future(channel.exchange(b"two"))
    await asyncio.sleep(0)
    replies = b"".join(b"".join(encode_reply(s, 200, "text/plain", b"ok")) for s in (1, 3))
    channel.data_received(replies)
    assert [r[0] for r in await asyncio.gather(first, second)] == [200, 200]
    third = asyncio.ensure_future(channel.exchange(b"three"))  # in flight past the timeout
    await asyncio.sleep(0.4)
    assert not transport.closed and not third.done()
    channel.data_received(b"".join(encode_reply(5, 200, "text/plain", b"ok")))
    assert (await third)[0] == 200
    await asyncio.sleep(0.1)
    assert not transport.closed  # idle for less than the timeout
    await asyncio.sleep(0.3)
    assert transport.closed  # and closed once idle for as long
