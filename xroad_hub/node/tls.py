"""TLS contexts of a node, and reading the peer's certificate off a connection."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
from pathlib import Path

from xroad_hub.protocol.signing import cert_fingerprint

__all__ = [
    "TLS_READ_BUFFER",
    "admin_context",
    "bound_tls_read_buffers",
    "client_facing_context",
    "peer_client_context",
    "peer_fingerprint",
    "peer_server_context",
]

# asyncio's TLS layer gives each connection a read buffer of SSLProtocol.max_size (256 KiB)
# that stays resident: 128 pooled peer connections held 32 MiB of it, and a node with many
# TLS clients 256 KiB per client. 64 KiB still takes four full TLS records per read; at
# concurrency 640 it saved 15 MiB on each node (the client node 148 -> 133 MiB), as much as
# 32 KiB did.
TLS_READ_BUFFER = 64 * 1024


def bound_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Make the TLS connections opened from now on in this process read into ``size`` bytes.

    A class attribute of asyncio's (it has no per-connection option; uvloop has its own
    TLS layer and ignores it). Only lowered, never raised, so that calling it twice or from
    two nodes of one process is harmless."""
    proto = asyncio.sslproto.SSLProtocol
    if proto.max_size > size:
        proto.max_size = size


def _server(cert: Path, key: Path, ca: Path, verify: ssl.VerifyMode) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = verify
    return ctx


def peer_server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """Inter-node endpoint: the peer must present a certificate of the federation CA; which
    node it is, is then decided by its fingerprint in the global configuration."""
    return _server(cert, key, ca, ssl.CERT_REQUIRED)


def client_facing_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """HTTPS for client systems: a certificate is optional at the TLS level (JWT clients send
    none) and required per subsystem by the client authenticator."""
    return _server(cert, key, ca, ssl.CERT_OPTIONAL)


def peer_client_context(
    cert: Path, key: Path, ca: Path, pinned_der: bytes | None = None
) -> ssl.SSLContext:
    """Outbound to another node. With ``pinned_der`` the handshake succeeds only if the peer
    presents exactly that certificate (its registered one); without, any of the CA's."""
    if pinned_der:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pinned_der)
        # Trust the leaf itself as the anchor; validity dates are still checked.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    # The peer is pinned by its registered certificate, which is stronger than a host name.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def peer_fingerprint(transport: asyncio.BaseTransport | None) -> str | None:
    """SHA-256 of the certificate the other end of ``transport`` presented, if any."""
    if transport is None:
        return None
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    return cert_fingerprint(der) if der else None


def admin_context(cert: Path, key: Path) -> ssl.SSLContext:
    """HTTPS of the admin API: the node's certificate; administrators authenticate with
    their API keys, not client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
