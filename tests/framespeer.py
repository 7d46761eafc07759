"""Peers of the framed node-to-node channel, as the channel's tests play them: DGA's node
connecting to DBD's peer port with its own certificate (a rogue or broken client node),
or a stand-in provider node with DBD's certificate."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.serialization import Encoding

from xroad_hub.node.framelistener import FrameConnection, FrameListener
from xroad_hub.node.peer import PeerTransport
from xroad_hub.node.tls import peer_client_context, peer_server_context
from xroad_hub.pki import CertPaths, load_cert
from xroad_hub.protocol.frames import ALPN, Frame, FrameReader
from xroad_hub.protocol.globalconf import NodeEntry
from xroad_hub.protocol.identifiers import parse_node_id
from xroad_hub.protocol.signing import cert_fingerprint

from .conftest import Fed
from .rogue_node import DBD, DGA

ECHO = "/r1/TH/GOV/DBD/registry/echo"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}

__all__ = [
    "client_transport",
    "echo",
    "fingerprint",
    "incoming_frames",
    "new_connection",
    "open_frames",
    "provider_context",
    "provider_entry",
    "provider_frames",
    "unread_connection",
    "until_closed",
]


def provider_frames(fed: Fed) -> FrameListener:
    """DBD's frames listener: its connections, as the provider node holds them."""
    frames = fed.federation.nodes[DBD].frames
    assert frames is not None
    return frames


def fingerprint(paths: CertPaths) -> str:
    """The SHA-256 a node's certificate is registered under."""
    return cert_fingerprint(load_cert(paths.cert).public_bytes(Encoding.DER))


async def open_frames(
    fed: Fed, paths: CertPaths
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to DBD's peer port with ``paths``' certificate, frames chosen."""
    ctx = ssl.create_default_context(cafile=str(fed.pki.root_ca.cert))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    ctx.set_alpn_protocols([ALPN])
    u = urlsplit(fed.url(DBD, "peer"))
    reader, writer = await asyncio.open_connection(u.hostname, u.port, ssl=ctx)
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == ALPN
    return reader, writer


async def new_connection(provider: FrameListener, known: set[FrameConnection]) -> FrameConnection:
    """The provider's side of the connection a test just opened (one not in ``known``)."""
    async with asyncio.timeout(10):
        while not (new := [c for c in provider.connections if c not in known]):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return new[0]


def provider_context(fed: Fed) -> ssl.SSLContext:
    """A TLS server context with DBD's peer certificate, offering the frames: a stand-in
    provider node."""
    auth = fed.pki.node_auth(DBD)
    ctx = peer_server_context(auth.cert, auth.key, fed.pki.root_ca.cert)
    ctx.set_alpn_protocols([ALPN])
    return ctx


def client_transport(fed: Fed) -> PeerTransport:
    """DGA's node's side of the channel, on its own (to reach stand-in providers)."""
    auth = fed.pki.node_auth(DGA)
    make = lambda der: peer_client_context(auth.cert, auth.key, fed.pki.root_ca.cert, der)  # noqa: E731
    return PeerTransport(make, 1 << 20)


def provider_entry(fed: Fed, port: int) -> NodeEntry:
    """DBD's node as the configuration lists it, but at ``port``."""
    der = load_cert(fed.pki.node_auth(DBD).cert).public_bytes(Encoding.DER)
    return NodeEntry(
        parse_node_id(DBD), f"127.0.0.1:{port}", cert_fingerprint(der), frozenset(), der
    )


async def unread_connection(
    fed: Fed,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A frames connection of DGA's node to DBD's whose socket buffers little of what it is
    sent (the test reads when it chooses)."""
    ctx = ssl.create_default_context(cafile=str(fed.pki.root_ca.cert))
    ctx.check_hostname = False
    auth = fed.pki.node_auth(DGA)
    ctx.load_cert_chain(str(auth.cert), str(auth.key))
    ctx.set_alpn_protocols([ALPN])
    u = urlsplit(fed.url(DBD, "peer"))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little
    assert u.hostname is not None and u.port is not None
    sock.connect((u.hostname, u.port))
    sock.setblocking(False)
    return await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="x")


async def echo(fed: Fed, http: aiohttp.ClientSession, body: bytes = b"") -> int:
    """DGA's devportal calls DBD's echo service through both nodes: the HTTP status."""
    async with http.post(fed.url(DGA) + ECHO, data=body, headers=DEV) as r:
        await r.read()
        return r.status


async def incoming_frames(reader: asyncio.StreamReader) -> AsyncIterator[Frame]:
    """The frames a stand-in provider receives, until its client goes (or breaks TLS)."""
    frames = FrameReader(1 << 20)
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            for event in frames.feed(data):
                if isinstance(event, Frame):
                    yield event


async def until_closed(reader: asyncio.StreamReader) -> list[Frame]:
    """The frames the provider sent until it closed the connection."""
    data = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        async with asyncio.timeout(30):
            data = await reader.read()
    return [f for f in FrameReader(1 << 24).feed(data) if isinstance(f, Frame)]
