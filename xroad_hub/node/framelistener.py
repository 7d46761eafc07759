"""The provider side of the framed node-to-node channel, on the peer port beside HTTP.

A connection whose client chose the frames protocol by ALPN (protocol/frames.py) is served
here, any other goes to aiohttp as before (``PeerSite``). The peer's certificate is read
once per connection, and a peer that is not a registered node gets no frame read: every
exchange it sent is answered by one REFUSED frame and the connection closed. Each frame is
checked again against the configuration in force (revocations take effect at once) and
admitted within the peer's share of the node, as on the HTTP path, before its payload is
read; a peer that breaks the framing, or stalls in the middle of a frame (no byte of it for
the body timeout while this node reads, or under MIN_RATE on average after that), is cut off.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import structlog
from aiohttp import web

from xroad_hub.errors import SERVER_PROXY, XRoadError
from xroad_hub.node.limits import TOO_MANY
from xroad_hub.node.metrics import NodeMetrics
from xroad_hub.node.provider import ServerProxy
from xroad_hub.node.runtime import refusal
from xroad_hub.node.tls import peer_fingerprint
from xroad_hub.protocol.frames import (
    ALPN,
    REFUSED,
    REPLY,
    REQUEST,
    Frame,
    FrameError,
    FrameHead,
    FrameReader,
    encode_reply,
)
from xroad_hub.protocol.globalconf import GlobalConf, NodeEntry
from xroad_hub.protocol.message import CONTENT_TYPE
from xroad_hub.protocol.rest import error_response

__all__ = ["FrameListener", "PeerSite"]

log = structlog.get_logger("xroad_hub.provider")

# A connection with nothing in flight is closed after this long. Longer than the client
# node's own idle time (channel.py), so that it is the client that closes, never while it
# sends a new exchange.
IDLE_TIMEOUT = 120.0
# Frames connections one peer node may hold open at once. A client node keeps one, plus
# those it retired (stalled) until their exchanges end; each costs this node TLS state and
# buffers, so a peer's further connections are refused (its exchanges still have its one).
MAX_PEER_CONNECTIONS = 16
# A frame admitted must arrive at this rate at least, on average, after the body timeout's
# grace (Apache's mod_reqtimeout has the same rule, at 500 bytes/s): without it a peer that
# sends one byte of a frame each body timeout never stalls and holds its share, and the
# connection, for as long as it likes. A link between nodes is far faster; a frame of
# max_body_bytes (10 MiB) may still take almost three hours.
MIN_RATE = 1024  # bytes/s
# The answers written at once, at most (but one answer, however large): a peer that does not
# read gets no more than this written past its transport's high-water mark.
_BATCH = 64 * 1024


class FrameListener:
    """The frame connections of one node's peer port, and how their exchanges are served."""

    def __init__(
        self,
        proxy: ServerProxy,
        exchange_context: Callable[[], AbstractContextManager[Any]],
        metrics: NodeMetrics | None,
    ) -> None:
        self.proxy = proxy
        self.exchange_context = exchange_context
        self.metrics = metrics
        self.connections: set[FrameConnection] = set()
        self.per_peer: dict[str | None, int] = {}  # open connections by peer certificate
        self.served = 0  # exchanges answered over frames (for tests and operators)
        self.closing = False

    def connection(self) -> FrameConnection:
        return FrameConnection(self)

    async def shutdown(self, timeout: float) -> None:
        """Stop reading, let the exchanges in flight finish within ``timeout`` (those that do
        not are cancelled: they are still logged), then close the connections."""
        self.closing = True
        conns = list(self.connections)
        for conn in conns:
            conn.pause()
        tasks = {t for conn in conns for t in conn.tasks}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for conn in conns:
            conn.close()


class FrameConnection(asyncio.Protocol):
    def __init__(self, listener: FrameListener) -> None:
        self.listener = listener
        self.proxy = listener.proxy
        self.transport: asyncio.Transport | None = None
        self.fingerprint: str | None = None
        self.reader = FrameReader(self.proxy.max_message_bytes)
        self.tasks: set[asyncio.Task[None]] = set()
        self.streams: set[int] = set()  # stream ids being received or served
        # Streams admitted whose payload is still arriving: (conf, peer, admission, started).
        self._admitted: dict[
            int, tuple[GlobalConf, NodeEntry, AbstractContextManager[None], float]
        ] = {}
        # Answers not yet written, each with its exchange's share of the node: while the
        # peer does not read (pause_writing) they wait here and keep holding it.
        self._out: list[tuple[list[bytes], AbstractContextManager[None] | None]] = []
        self._out_bytes = 0
        self._paused = False
        self._flushing = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._stall_timer = False  # whether _timer watches a frame begun (else: idleness)
        self._progress = 0.0  # (loop time) the last bytes read, or reading resumed
        self._paused_since = 0.0
        self._due = 0.0  # (loop time) the frame admitted is late after this, plus its bytes' credit
        self._counted = False  # in the listener's per_peer

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.listener.closing:
            transport.abort()
            return
        self.listener.connections.add(self)
        _no_delay(transport)
        self.fingerprint = fp = peer_fingerprint(transport)
        if not self._still_registered():
            return
        held = self.listener.per_peer.get(fp, 0)
        self.listener.per_peer[fp] = held + 1
        self._counted = True
        if held >= MAX_PEER_CONNECTIONS:
            self._refuse_connection(
                XRoadError(
                    f"{SERVER_PROXY}.{TOO_MANY}",
                    f"this peer has {held} connections open to this node already, at most"
                    f" {MAX_PEER_CONNECTIONS}; one carries all its exchanges",
                    status=429,
                )
            )
        else:
            self._watch()

    def _still_registered(self) -> bool:
        """Whether the peer is a registered node, by the configuration in force now; if not
        (never was, or revoked since: a stolen key), the connection is refused whole.
        Without a configuration in force, every frame is refused on its own (the peer
        learns why: OutdatedGlobalConf)."""
        conf = self.proxy.rt.globalconf.current()
        if conf is not None:
            try:
                self.proxy.registered_peer(conf, self.fingerprint)
            except XRoadError as exc:
                self._refuse_connection(exc)
                return False
        return True

    def data_received(self, data: bytes) -> None:
        if self._closed or self.listener.closing:
            return  # (the node stops: no new exchange is read, even one already received)
        if data:
            self._progress = asyncio.get_running_loop().time()
        try:
            for event in self.reader.feed(data):
                if isinstance(event, FrameHead):
                    self._head(event)
                    if self._closed:
                        return  # refused whole: nothing more is read
                else:
                    self._frame(event)
                if self._paused:
                    # The peer does not read its answers (refusals among them): the rest of
                    # what it sent waits in the reader until it does (resume_writing).
                    break
        except FrameError as exc:
            self._cut(str(exc))
            return
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        # Exchanges in flight are served to their end (and logged); their answers are dropped.
        self._closed = True
        self.listener.connections.discard(self)
        if self._counted:
            self._counted = False
            left = self.listener.per_peer[self.fingerprint] - 1
            if left > 0:
                self.listener.per_peer[self.fingerprint] = left
            else:
                del self.listener.per_peer[self.fingerprint]
        self._stop_timer()
        self._release()

    def _release(self) -> None:
        """The shares of the node held by frames that will never be complete, and by
        answers that will never be written."""
        admitted, self._admitted = self._admitted, {}
        out, self._out, self._out_bytes = self._out, [], 0
        for admission in [a for _, _, a, _ in admitted.values()] + [a for _, a in out if a]:
            admission.__exit__(None, None, None)

    def pause_writing(self) -> None:
        # The peer does not read its answers: no more of them are written, and no more of
        # its requests are read.
        self._paused = True
        self._paused_since = asyncio.get_running_loop().time()
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        # The peer could send nothing while this node did not read: its clock starts again,
        # and the frame it was sending is given the time it was held back.
        now = self._progress = asyncio.get_running_loop().time()
        if self._admitted:
            self._due += now - self._paused_since
        if self.transport is not None and not self._closed:
            if self._out and not self._flushing:
                # Not from inside the transport's own call: in the next turn.
                self._flushing = True
                asyncio.get_running_loop().call_soon(self._flush)
            if not self.listener.closing:
                self.transport.resume_reading()
                asyncio.get_running_loop().call_soon(self.data_received, b"")

    # --- frames ---

    def _head(self, head: FrameHead) -> None:
        if head.kind != REQUEST:
            raise FrameError(f"a client node sent a frame of kind {head.kind}")
        if head.stream in self.streams or not head.stream & 1:
            raise FrameError(f"stream {head.stream} is in use or not a client's")
        if not self._still_registered():
            return
        try:
            conf, peer = self.proxy.authenticate(self.fingerprint)
            limit = self.proxy.max_message_bytes
            if head.length > limit:
                # A client node with a larger limit than ours: this exchange is refused as
                # over HTTP, the others on the connection go on.
                raise XRoadError(
                    f"{SERVER_PROXY}.BadRequest", f"request body exceeds the limit of {limit} bytes"
                )
            admission = self.proxy.admit(peer, head.length)
            admission.__enter__()
        except XRoadError as exc:
            # Refused before its payload is read: skipped, not held.
            self.reader.discard()
            self._answer_error(head.stream, exc)
            return
        self.streams.add(head.stream)
        self._admitted[head.stream] = (conf, peer, admission, time.time())
        self._due = asyncio.get_running_loop().time() + self.proxy.rt.body_timeout

    def _frame(self, frame: Frame) -> None:
        admitted = self._admitted.pop(frame.head.stream)
        # Each exchange in a task (and context) of its own, as aiohttp serves a request.
        task = asyncio.get_running_loop().create_task(
            self._serve(frame.head.stream, frame.payload, *admitted)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(
        self,
        stream: int,
        data: bytes,
        conf: GlobalConf,
        peer: NodeEntry,
        admission: AbstractContextManager[None],
        started: float,
    ) -> None:
        held: AbstractContextManager[None] | None = admission
        try:
            with self.listener.exchange_context():
                try:
                    answer = await self.proxy.serve(conf, peer, data, started)
                except Exception as exc:
                    self._answer_error(stream, exc, admission=admission)
                    held = None  # released once its answer is written
                else:
                    self.listener.served += 1
                    self._send(encode_reply(stream, 200, CONTENT_TYPE, answer), admission)
                    held = None
        finally:
            if held is not None:
                held.__exit__(None, None, None)
            self.streams.discard(stream)
            self._watch()

    def _answer_error(
        self,
        stream: int,
        exc: Exception,
        kind: int = REPLY,
        admission: AbstractContextManager[None] | None = None,
    ) -> None:
        """The X-Road error (JSON) the HTTP path answers, as the stream's reply."""
        with self.listener.exchange_context():  # its log line names the node
            err = refusal(exc, "provider", SERVER_PROXY, self.listener.metrics, route="frames")
        status, headers, body = error_response(err, "application/json")
        parts = encode_reply(stream, status, headers.get("Content-Type", ""), body, kind)
        self._send(parts, admission)

    def _refuse_connection(self, exc: XRoadError) -> None:
        """Answers every exchange the peer sent (or sends) with ``exc``, reads nothing."""
        self._answer_error(0, exc, REFUSED)
        self._flush(force=True)
        self._stop_timer()
        self._closed = True
        assert self.transport is not None
        self.transport.pause_reading()
        self.transport.close()
        self.listener.connections.discard(self)

    # --- writing: the frames of one turn of the event loop in one write ---

    def _send(
        self, parts: list[bytes], admission: AbstractContextManager[None] | None = None
    ) -> None:
        if self._closed:
            if admission is not None:
                admission.__exit__(None, None, None)
            return
        self._out.append((parts, admission))
        self._out_bytes += sum(len(p) for p in parts)
        if self._out_bytes >= _BATCH and not self._paused:
            self._flush()  # now: a full transport (pause_writing) stops the reading at once
        elif not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self, force: bool = False) -> None:
        """Writes the answers waiting, in batches of about _BATCH bytes, until the
        transport is full (pause_writing): what is written is no longer the peer's share."""
        self._flushing = False
        while self._out and (force or not self._paused):
            if self._closed or self.transport is None:
                return
            n, size = 0, 0
            while n < len(self._out) and (n == 0 or size < _BATCH):
                size += sum(len(p) for p in self._out[n][0])
                n += 1
            batch, self._out = self._out[:n], self._out[n:]
            self._out_bytes -= size
            self.transport.writelines([p for parts, _ in batch for p in parts])
            for _, admission in batch:
                if admission is not None:
                    admission.__exit__(None, None, None)

    # --- the connection's clock ---

    def _watch(self) -> None:
        """A frame begun must go on arriving: a peer that sends none of its bytes for the
        body timeout (while this node reads) stalls, and is cut off. The clock is on
        progress, not on the whole frame: every exchange of the connection goes with it,
        and a large frame on a slow or busy link is no fault of the peer's (but one slower
        than MIN_RATE is). A connection with nothing in flight is closed after IDLE_TIMEOUT."""
        if self._closed:
            return
        if self.reader.partial:
            if not (self._stall_timer and self._timer is not None):
                self._stop_timer()
                self._stall_timer = True
                self._arm(self.proxy.rt.body_timeout)
        elif not self.streams:
            self._stop_timer()
            self._stall_timer = False
            self._timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.close)
        else:
            self._stop_timer()

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._stalled)

    def _stalled(self) -> None:
        """The stall timer: the frame's bytes are checked, not re-timed, on every read."""
        self._timer = None
        if self.listener.closing:
            # This node stopped reading (it stops): no peer's stall. The exchanges in flight
            # are answered, then shutdown closes the connection.
            return
        if self._closed or not self.reader.partial:
            self._watch()
            return
        now, limit = asyncio.get_running_loop().time(), self.proxy.rt.body_timeout
        if self._paused:
            # This node reads nothing while the peer does not read its answers: not the
            # peer's stall, unless it reads none of them for as long as an idle connection.
            if now - self._paused_since >= IDLE_TIMEOUT:
                self._cut(f"the peer read none of its answers for {IDLE_TIMEOUT:g} s")
            else:
                self._arm(min(limit, IDLE_TIMEOUT - (now - self._paused_since)))
            return
        quiet = now - self._progress
        if quiet >= limit:
            self._cut(f"a frame stalled: no byte of it for {limit:g} s")
            return
        wait = limit - quiet
        if self._admitted:
            # (One frame at a time is admitted and arriving: its payload so far is what the
            # reader holds.)
            late = self._due + self.reader.buffered / MIN_RATE - now
            if late <= 0:
                self._cut(f"a frame arrived slower than {MIN_RATE} bytes/s")
                return
            wait = min(wait, late)
        self._arm(wait)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cut(self, reason: str) -> None:
        with self.listener.exchange_context():
            log.warning("peer.frames.cut_off", reason=reason, peer_sha256=self.fingerprint)
        self._closed = True
        self._stop_timer()
        self._release()
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def close(self) -> None:
        self._stop_timer()
        if self.transport is not None and not self._closed:
            self._flush(force=True)
            self._closed = True
            self.transport.close()


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Small frames leave at once. asyncio sets TCP_NODELAY only on sockets it made itself
    (or accepted from one whose protocol number says TCP), and a listening socket of
    ``socket.create_server`` says 0; aiohttp sets it on its own connections. Without it,
    an answer written while an earlier one was unacknowledged waited for the peer's
    delayed ACK: ~40 ms per exchange when several were in flight on a connection."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _AlpnSwitch(asyncio.Protocol):
    """Hands a connection, once its TLS handshake is done, to the frames or to aiohttp."""

    def __init__(
        self, http: Callable[[], asyncio.Protocol], frames: Callable[[], asyncio.Protocol]
    ) -> None:
        self._http, self._frames = http, frames

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sslobj = transport.get_extra_info("ssl_object")
        chosen = sslobj.selected_alpn_protocol() if sslobj is not None else None
        protocol = self._frames() if chosen == ALPN else self._http()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class PeerSite(web.SockSite):
    """aiohttp's site on a bound socket, whose TLS connections that chose the frames
    protocol are served by ``frames`` instead."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: Any,
        *,
        ssl_context: ssl.SSLContext,
        frames: FrameListener,
        **kw: Any,
    ) -> None:
        # Offered here, where they are served: a client node that offers the frames gets
        # them (the first of ours it offers), any other speaks HTTP/1.1 as before.
        ssl_context.set_alpn_protocols([ALPN, "http/1.1"])
        super().__init__(runner, sock, ssl_context=ssl_context, **kw)
        self._frames = frames

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        http = server
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _AlpnSwitch(http, self._frames.connection),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
        )
