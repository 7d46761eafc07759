"""Outbound connections from a node to other nodes: mutual TLS, peer pinned by fingerprint."""

from __future__ import annotations

import asyncio
import io
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp.connector import Connection

from xroad_hub.errors import XRoadError
from xroad_hub.node.channel import ChannelLost, FrameChannel, ReplyTooLarge
from xroad_hub.node.opmonitoring import mark_request_out, mark_response_in
from xroad_hub.node.tls import peer_fingerprint
from xroad_hub.protocol.frames import ALPN
from xroad_hub.protocol.globalconf import NodeEntry
from xroad_hub.protocol.message import CONTENT_TYPE
from xroad_hub.streams import BodyTooLarge, read_capped

__all__ = ["PEER_PATH", "PEER_POOL_LIMIT", "PEER_POOL_PER_PEER", "PeerReply", "PeerTransport"]

PEER_PATH = "/xroad-hub/v1/message"

# Over the framed channel (channel.py) a peer gets one connection, and peer_max_connections
# bounds the exchanges in flight on it, as many as the HTTP path below could carry (the
# provider's per-peer limit is 4 x client_max_concurrent). Over HTTP, with a peer that does
# not choose the frames, the pool of TLS connections is bounded per peer by it and in all:
# each connection holds asyncio's TLS read buffer and OpenSSL's state, and one connection
# per exchange in flight made a node 340-370 MB at 640 concurrent exchanges. Peak of the
# client node at concurrency 640 (bench_exchange.py --against, 64 KiB TLS buffers): 161.7
# MiB with 128 per peer, 139-147 MiB with 64, 136 MiB with 32, for the same CPU per
# exchange; 32 is the default, under 150 MB with room. On loopback 32 connections keep two
# cores busy; exchanges beyond them wait for a free one in the order they came (send()
# queues them on a fair semaphore), so none starves. A nested exchange (a provider's backend
# calling back over the same pair of nodes) could wait for a connection its outer exchange
# holds; its timeout ends that wait, where without the bound the provider's per-peer limit
# (4 x client_max_concurrent) would refuse it.
PEER_POOL_PER_PEER = 32  # the default of peer_max_connections (federation.py)
PEER_POOL_LIMIT = 256  # all peers together, unless one peer's bound is larger

# A peer that did not choose the frames protocol (a node of an older version) is asked again
# after this long; meanwhile its exchanges go over HTTP at once.
HTTP_ONLY_RECHECK = 300.0
_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class PeerReply:
    status: int
    content_type: str
    body: bytes


class _PinnedResponse(aiohttp.ClientResponse):
    """Notes the peer's certificate while the connection is certainly still attached (a
    small answer releases it back to the pool before the caller could look)."""

    peer_sha256: str | None = None

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        self.peer_sha256 = peer_fingerprint(connection.transport)
        return await super().start(connection)


class PeerTransport:
    def __init__(
        self,
        make_context: Callable[[bytes | None], ssl.SSLContext],
        max_reply_bytes: int,
        max_connections_per_peer: int = PEER_POOL_PER_PEER,
        *,
        frames: bool = True,
    ) -> None:
        if max_connections_per_peer < 1:
            raise ValueError("a node needs at least one connection per peer")
        self._per_peer = max_connections_per_peer
        self._make_context = make_context
        self._ssl = make_context(None)
        self._pinned: dict[str, ssl.SSLContext] = {}
        self._max = max_reply_bytes
        self._session: aiohttp.ClientSession | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}  # per peer address
        # The framed channel (one connection per peer, exchanges multiplexed on it), and
        # the peers found to speak HTTP only, until when (loop time).
        self._frames = frames
        self._pinned_frames: dict[str, ssl.SSLContext] = {}
        self._channels: dict[str, FrameChannel] = {}
        self._connecting: dict[str, asyncio.Task[FrameChannel | None]] = {}
        self._http_only: dict[str, float] = {}
        self.frame_exchanges = 0  # exchanges sent over the framed channel

    async def send(self, peer: NodeEntry, data: bytes, timeout: float) -> PeerReply:
        # Waiting for a connection (or a stream) is part of the exchange's time; the
        # waiters are served strictly in the order they came (asyncio's semaphore is fair,
        # aiohttp's pool lets a newcomer take a connection released just before a woken
        # waiter runs). On the framed channel the same bound holds the exchanges in flight
        # to one peer to as many as the HTTP path would have.
        slots = self._slots.get(peer.address)
        if slots is None:
            slots = self._slots[peer.address] = asyncio.Semaphore(self._per_peer)
        try:
            async with asyncio.timeout(timeout), slots:
                mark_request_out()
                reply = None
                if self._frames and self._may_frame(peer.address):
                    reply = await self._send_frames(peer, data)
                if reply is None:
                    reply = await self._send_http(peer, data, timeout)
                mark_response_in()
                return reply
        except XRoadError:
            raise
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise XRoadError.client_proxy(
                "SslAuthenticationFailed", f"TLS with node {peer.id} failed: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise XRoadError.client_proxy(
                "NetworkError", f"node {peer.id} did not answer within {timeout:g} s"
            ) from exc
        except ReplyTooLarge as exc:
            raise XRoadError.client_proxy(
                "NetworkError", f"answer of node {peer.id}: {exc}"
            ) from exc
        except ChannelLost as exc:
            raise XRoadError.client_proxy(
                "NetworkError", f"connection to node {peer.id} at {peer.address} lost: {exc}"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise XRoadError.client_proxy(
                "NetworkError", f"cannot reach node {peer.id} at {peer.address}: {exc}"
            ) from exc

    async def _send_http(self, peer: NodeEntry, data: bytes, timeout: float) -> PeerReply:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self._ssl,
                    limit=max(PEER_POOL_LIMIT, self._per_peer),
                    limit_per_host=self._per_peer,
                    keepalive_timeout=60,
                ),
                auto_decompress=False,
                response_class=_PinnedResponse,
            )
        url = f"https://{peer.address}{PEER_PATH}"
        async with self._session.post(
            url,
            # A file-like body is written in chunks (with its Content-Length): a large
            # message as one bytes object would be copied into the transport at once.
            data=io.BytesIO(data),
            headers={"Content-Type": CONTENT_TYPE},
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0)),
            skip_auto_headers=("User-Agent",),
            ssl=self._context_for(peer),
        ) as resp:
            assert isinstance(resp, _PinnedResponse)
            _check_pinned(peer, resp.peer_sha256)
            try:
                body = await read_capped(resp.content, self._max)
            except BodyTooLarge as exc:
                raise XRoadError.client_proxy(
                    "NetworkError", f"answer of node {peer.id}: {exc}"
                ) from exc
            return PeerReply(resp.status, resp.headers.get("Content-Type", ""), body)

    # --- the framed channel ---

    def _may_frame(self, address: str) -> bool:
        until = self._http_only.get(address)
        if until is None:
            return True
        if asyncio.get_running_loop().time() < until:
            return False
        del self._http_only[address]
        return True

    async def _send_frames(self, peer: NodeEntry, data: bytes) -> PeerReply | None:
        """The exchange over the peer's framed channel; None when the peer speaks HTTP only."""
        channel = self._channels.get(peer.address)
        if channel is None or not channel.usable or channel.peer_sha256 != peer.auth_cert_sha256:
            channel = await self._open_channel(peer)
            if channel is None:
                return None
        self.frame_exchanges += 1
        status, content_type, body = await channel.exchange(data)
        return PeerReply(status, content_type, body)

    async def _open_channel(self, peer: NodeEntry) -> FrameChannel | None:
        # One connection per peer: exchanges that find none wait for the one being opened.
        task = self._connecting.get(peer.address)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect(peer))
            self._connecting[peer.address] = task
            task.add_done_callback(lambda t: self._connected(peer.address, t))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and me is not None and not me.cancelling():
                # The attempt was cancelled (this node stops), not the exchange waiting on it.
                raise ChannelLost("this node is stopping") from None
            raise

    def _connected(self, address: str, task: asyncio.Task[FrameChannel | None]) -> None:
        self._connecting.pop(address, None)
        if not task.cancelled() and task.exception() is None:
            channel = task.result()
            if channel is not None:
                self._channels[address] = channel

    async def _connect(self, peer: NodeEntry) -> FrameChannel | None:
        host, _, port = peer.address.rpartition(":")
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            transport, channel = await loop.create_connection(
                lambda: FrameChannel(self._max),
                host,
                int(port),
                ssl=self._frames_context_for(peer),
                server_hostname=host,
                ssl_handshake_timeout=_CONNECT_TIMEOUT,
            )
        fingerprint = peer_fingerprint(transport)
        try:
            _check_pinned(peer, fingerprint)
        except XRoadError:
            transport.abort()
            raise
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None or sslobj.selected_alpn_protocol() != ALPN:
            transport.close()
            self._http_only[peer.address] = loop.time() + HTTP_ONLY_RECHECK
            return None
        channel.peer_sha256 = fingerprint
        return channel

    def _frames_context_for(self, peer: NodeEntry) -> ssl.SSLContext:
        """As ``_context_for``, offering the frames protocol (and HTTP/1.1) by ALPN."""
        key = peer.auth_cert_sha256 if peer.auth_cert_der else ""
        ctx = self._pinned_frames.get(key)
        if ctx is None:
            ctx = self._make_context(peer.auth_cert_der or None)
            ctx.set_alpn_protocols([ALPN, "http/1.1"])
            if len(self._pinned_frames) > 1024:
                self._pinned_frames.clear()
            self._pinned_frames[key] = ctx
        return ctx

    def _context_for(self, peer: NodeEntry) -> ssl.SSLContext:
        """A context that trusts only the peer's registered certificate (checked in the
        handshake, before any request byte is sent); our own client certificate as usual."""
        if not peer.auth_cert_der:
            return self._ssl  # CA check in the handshake, fingerprint checked on the answer
        ctx = self._pinned.get(peer.auth_cert_sha256)
        if ctx is None:
            ctx = self._make_context(peer.auth_cert_der)
            if len(self._pinned) > 1024:
                self._pinned.clear()
            self._pinned[peer.auth_cert_sha256] = ctx
        return ctx

    async def close(self) -> None:
        connecting = list(self._connecting.values())
        for task in connecting:
            task.cancel()
        # Awaited, so that no connection attempt outlives the node (its socket would leak).
        await asyncio.gather(*connecting, return_exceptions=True)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self._session is not None:
            await self._session.close()


def _check_pinned(peer: NodeEntry, fingerprint: str | None) -> None:
    if fingerprint != peer.auth_cert_sha256:
        raise XRoadError.client_proxy(
            "SslAuthenticationFailed",
            f"node {peer.id} presented a certificate that is not its registered"
            " authentication certificate",
        )
