"""Outbound connections from a node to other nodes: mutual TLS, peer pinned by fingerprint."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp.connector import Connection

from ..errors import XRoadError
from ..globalconf import NodeEntry
from ..message import CONTENT_TYPE
from ..streams import BodyTooLarge, read_capped
from .tls import peer_fingerprint

__all__ = ["PEER_PATH", "PeerReply", "PeerTransport"]

PEER_PATH = "/xroad-hub/v1/message"


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
    def __init__(self, ssl_context: ssl.SSLContext, max_reply_bytes: int) -> None:
        self._ssl = ssl_context
        self._max = max_reply_bytes
        self._session: aiohttp.ClientSession | None = None

    async def send(self, peer: NodeEntry, data: bytes, timeout: float) -> PeerReply:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0, keepalive_timeout=60),
                auto_decompress=False,
                response_class=_PinnedResponse,
            )
        url = f"https://{peer.address}{PEER_PATH}"
        try:
            async with self._session.post(
                url,
                data=data,
                headers={"Content-Type": CONTENT_TYPE},
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0)),
                skip_auto_headers=("User-Agent",),
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

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
