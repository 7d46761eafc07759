"""A node's client of an RFC 3161 time-stamping authority (its checkpoints are stamped)."""

from __future__ import annotations

import secrets
import ssl

import aiohttp
from cryptography import x509

from xroad_hub.protocol.rfc3161 import (
    QUERY_TYPE,
    REPLY_TYPE,
    TimestampError,
    TimestampInfo,
    make_request,
    verify_response,
)

__all__ = ["MAX_REPLY_BYTES", "fetch_timestamp"]

# A reply holds a token and, at most, a short certificate chain.
MAX_REPLY_BYTES = 256 * 1024


async def fetch_timestamp(
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    trusted_roots: list[x509.Certificate],
    timeout: float,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[bytes, TimestampInfo]:
    """Time-stamp ``data`` at the RFC 3161 TSA ``url``; return the verified DER response.

    The request carries a fresh random nonce, so a replayed old reply is refused. Raises
    TimestampError for an unusable reply (HTTP error, wrong type, too large, not valid) and
    aiohttp.ClientError or TimeoutError when the TSA cannot be reached in ``timeout`` s.
    """
    nonce = secrets.randbits(64)
    query = make_request(data, nonce=nonce, cert_req=True)
    async with session.post(
        url,
        data=query,
        headers={"Content-Type": QUERY_TYPE, "Accept": REPLY_TYPE},
        timeout=aiohttp.ClientTimeout(total=timeout),
        ssl=ssl_context or True,
    ) as resp:
        if resp.status != 200:
            raise TimestampError(f"TSA {url} answered HTTP {resp.status}")
        if resp.content_type != REPLY_TYPE:
            raise TimestampError(f"TSA {url} answered {resp.content_type}, not {REPLY_TYPE}")
        reply = await resp.content.read(MAX_REPLY_BYTES + 1)
        while len(reply) <= MAX_REPLY_BYTES and not resp.content.at_eof():
            reply += await resp.content.read(MAX_REPLY_BYTES + 1 - len(reply))
        if len(reply) > MAX_REPLY_BYTES:
            raise TimestampError(f"TSA {url} sent a reply over {MAX_REPLY_BYTES} bytes")
    return reply, verify_response(reply, data, trusted_roots, nonce=nonce)
