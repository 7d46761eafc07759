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
from xroad_hub.node.opmonitoring import mark_request_out, mark_response_in
from xroad_hub.node.tls import peer_fingerprint
from xroad_hub.protocol.globalconf import NodeEntry
from xroad_hub.protocol.message import CONTENT_TYPE
from xroad_hub.streams import BodyTooLarge, read_capped

__all__ = ["PEER_PATH", "PEER_POOL_LIMIT", "PEER_POOL_PER_PEER", "PeerReply", "PeerTransport"]

PEER_PATH = "/xroad-hub/v1/message"

# The pool of TLS connections to other nodes is bounded per peer (the node's
# peer_max_connections) and in all: each connection holds asyncio's TLS read buffer and
# OpenSSL's state, and one connection per exchange in flight made a node 340-370 MB at 640
# concurrent exchanges. Peak of the client node at concurrency 640 (bench_exchange.py
# --against, 64 KiB TLS buffers): 161.7 MiB with 128 per peer, 139-147 MiB with 64,
# 136 MiB with 32, for the same CPU per exchange; 32 is the default, under 150 MB with
# room. On loopback 32 connections keep two cores busy; exchanges beyond them wait for a
# free one in the order they came (send() queues them on a fair semaphore), so none
# starves. A nested exchange (a provider's backend calling back over the same pair of
# nodes) could wait for a connection its outer exchange holds; its timeout ends that wait,
# where without the bound the provider's per-peer limit (4 x client_max_concurrent) would
# refuse it.
PEER_POOL_PER_PEER = 32  # the default of peer_max_connections (federation.py)
PEER_POOL_LIMIT = 256  # all peers together, unless one peer's bound is larger


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

    async def send(self, peer: NodeEntry, data: bytes, timeout: float) -> PeerReply:
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
        ssl_ctx = self._context_for(peer)
        # Waiting for a connection is part of the exchange's time; the waiters are served
        # strictly in the order they came (asyncio's semaphore is fair, aiohttp's pool lets
        # a newcomer take a connection released just before a woken waiter runs).
        slots = self._slots.get(peer.address)
        if slots is None:
            slots = self._slots[peer.address] = asyncio.Semaphore(self._per_peer)
        try:
            async with asyncio.timeout(timeout), slots:
                mark_request_out()
                async with self._session.post(
                    url,
                    # A file-like body is written in chunks (with its Content-Length): a large
                    # message as one bytes object would be copied into the transport at once.
                    data=io.BytesIO(data),
                    headers={"Content-Type": CONTENT_TYPE},
                    timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0)),
                    skip_auto_headers=("User-Agent",),
                    ssl=ssl_ctx,
                ) as resp:
                    assert isinstance(resp, _PinnedResponse)
                    if resp.peer_sha256 != peer.auth_cert_sha256:
                        raise XRoadError.client_proxy(
                            "SslAuthenticationFailed",
                            f"node {peer.id} presented a certificate that is not its registered"
                            " authentication certificate",
                        )
                    try:
                        body = await read_capped(resp.content, self._max)
                    except BodyTooLarge as exc:
                        raise XRoadError.client_proxy(
                            "NetworkError", f"answer of node {peer.id}: {exc}"
                        ) from exc
                    mark_response_in()
                    return PeerReply(resp.status, resp.headers.get("Content-Type", ""), body)
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
        except aiohttp.ClientError as exc:
            raise XRoadError.client_proxy(
                "NetworkError", f"cannot reach node {peer.id} at {peer.address}: {exc}"
            ) from exc

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
        if self._session is not None:
            await self._session.close()
