"""The client side of the framed node-to-node channel: one TLS connection to a peer node
carries many exchanges at once, each on its own stream (protocol/frames.py).

Requests made in one turn of the event loop leave in one write; a peer that does not read
(pause_writing) holds back new requests until it does. When the connection is lost, every
exchange in flight on it fails (ChannelLost), and the next one opens a new connection.
"""

from __future__ import annotations

import asyncio

from xroad_hub.protocol.frames import (
    REFUSED,
    REPLY,
    REPLY_OVERHEAD,
    REQUEST,
    Frame,
    FrameError,
    FrameHead,
    FrameReader,
    decode_reply,
    frame_head,
)

__all__ = ["IDLE_TIMEOUT", "ChannelLost", "FrameChannel", "ReplyTooLarge"]

# A connection with no exchange in flight is closed after this long (aiohttp's pool kept
# idle connections as long); the provider's own idle limit is longer (framelistener.py).
IDLE_TIMEOUT = 60.0
_LAST_STREAM = 0xFFFF_FFFF - 2

Reply = tuple[int, str, bytes]


class ChannelLost(Exception):
    """The connection ended before the exchange's answer came."""


class ReplyTooLarge(Exception):
    """The exchange's answer is longer than this node takes (it was skipped, unread)."""


class FrameChannel(asyncio.Protocol):
    def __init__(self, max_reply_bytes: int) -> None:
        self.reader = FrameReader(max_reply_bytes + REPLY_OVERHEAD)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._streams: dict[int, asyncio.Future[Reply]] = {}
        self._next = 1
        self._out: list[bytes] = []
        self._flushing = False
        self._writable: asyncio.Future[None] | None = None  # set while paused
        self._idle: asyncio.TimerHandle | None = None
        self._refusal: Reply | None = None
        self._received = 0  # reads of the connection, to tell a live peer from a dead one
        self._retired = False  # no new exchange: the peer stopped answering
        self.peer_sha256: str | None = None  # the certificate the peer presented

    @property
    def usable(self) -> bool:
        """Whether a new exchange may be started on this connection."""
        return not self.closed and not self._retired and self._next < _LAST_STREAM

    async def exchange(self, data: bytes) -> Reply:
        """Send one request and wait for its reply (the caller bounds the wait)."""
        if self._writable is not None:
            await asyncio.shield(self._writable)
        if self._refusal is not None:
            return self._refusal
        if self.closed or self.transport is None:
            raise ChannelLost("the connection is closed")
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        stream = self._next
        self._next += 2
        answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._streams[stream] = answer
        self._send(frame_head(len(data), stream, REQUEST), data)
        received = self._received
        try:
            return await answer
        except asyncio.CancelledError:
            # Given up (its timeout): a peer that sent nothing since, or stalls in the middle
            # of a frame (every reply behind it waits), is taken for dead. New exchanges go
            # over a new connection, as aiohttp's pool dropped a connection that timed out;
            # those in flight here may still be answered.
            if self._received == received or self.reader.partial:
                self._retired = True
            raise
        finally:
            self._streams.pop(stream, None)
            if not self._streams and not self.closed:
                if self._retired:
                    self.closed = True
                    assert self.transport is not None
                    self.transport.abort()  # no goodbye to a peer taken for dead
                else:
                    # Several exchanges answered in one read all find no stream left: one
                    # timer, or a leftover one would close the connection, busy or not.
                    if self._idle is not None:
                        self._idle.cancel()
                    self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.close)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._received += 1
        try:
            for event in self.reader.feed(data):
                if isinstance(event, FrameHead):
                    if event.kind == REQUEST:
                        raise FrameError("a provider node sent a request frame")
                    if event.kind == REPLY and event.length > self.reader.max_length:
                        self._too_large(event)
                    continue
                self._frame(event)
        except FrameError as exc:
            self._end(ChannelLost(f"the peer broke the framing: {exc}"))
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(ChannelLost(str(exc) if exc else "the peer closed the connection"))

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # --- frames ---

    def _frame(self, frame: Frame) -> None:
        head = frame.head
        if head.kind == REFUSED:
            # The provider serves no exchange of this connection: each gets its reason.
            self._refusal = decode_reply(frame.payload)
            for answer in self._streams.values():
                if not answer.done():
                    answer.set_result(self._refusal)
            self._streams.clear()
            self.close()
            return
        assert head.kind == REPLY
        answer = self._streams.pop(head.stream, None)
        if answer is None:
            if head.stream & 1 and head.stream < self._next:
                return  # the answer to an exchange that gave up waiting
            raise FrameError(f"a reply on stream {head.stream}, never opened")
        if not answer.done():
            answer.set_result(decode_reply(frame.payload))

    def _too_large(self, head: FrameHead) -> None:
        """An answer over the limit (a provider with a larger limit than ours): its exchange
        fails, as over HTTP, and the others on the connection go on."""
        answer = self._streams.pop(head.stream, None)
        if answer is None and not (head.stream & 1 and head.stream < self._next):
            raise FrameError(f"a reply on stream {head.stream}, never opened")
        self.reader.discard()
        if answer is not None and not answer.done():
            limit = self.reader.max_length - REPLY_OVERHEAD
            answer.set_exception(
                ReplyTooLarge(f"answer of about {head.length} bytes, over the limit {limit}")
            )

    def _end(self, exc: ChannelLost) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        streams, self._streams = self._streams, {}
        for answer in streams.values():
            if not answer.done():
                answer.set_exception(exc)
        self._out.clear()
        self.resume_writing()

    def _send(self, *parts: bytes) -> None:
        self._out.extend(parts)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self._out and not self.closed and self.transport is not None:
            out, self._out = self._out, []
            self.transport.writelines(out)
