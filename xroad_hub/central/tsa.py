"""The federation's RFC 3161 time-stamp authority over HTTP, and the client nodes use.

Transport is RFC 3161 section 3.4: ``POST`` a DER TimeStampReq with Content-Type
``application/timestamp-query``; the answer is a DER TimeStampResp with Content-Type
``application/timestamp-reply``, status 200 whether the request was granted or rejected (a
rejection is a protocol answer, carried in the response's PKIStatus). Only HTTP-level
problems get HTTP errors: 415 for another content type, 413 for a body over the limit.

All protocol logic lives in ``rfc3161``; this module only moves bytes and picks serials.

Serial numbers: RFC 3161 wants them unique per TSA, not consecutive. The TSA keeps no state
on disk: each serial is ``max(previous + 1, time in nanoseconds)``, so serials increase within
a process and stay unique across restarts as long as the clock does not go back past the
last serial issued (far fewer than 10^9 tokens a second are ever issued). A TSA that must
survive clock resets should persist the last serial; a federation's checkpoint TSA need not.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.protocol.rfc3161 import (
    TimestampError,
    TimestampInfo,
    issue_token,
    make_request,
    read_status,
    verify_response,
)

__all__ = [
    "MAX_QUERY_BYTES",
    "MAX_REPLY_BYTES",
    "QUERY_TYPE",
    "REPLY_TYPE",
    "SerialCounter",
    "fetch_timestamp",
    "tsa_app",
]

log = structlog.get_logger("xroad_hub.central.tsa")

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
# A SHA-512 request with a nonce is under 100 bytes; anything near the limit is not a request.
MAX_QUERY_BYTES = 64 * 1024
# A reply holds a token and, at most, a short certificate chain.
MAX_REPLY_BYTES = 256 * 1024


class SerialCounter:
    """Unique, increasing serial numbers seeded from the clock (see the module docstring)."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, self._clock())
        return self._last


def tsa_app(
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    policy_oid: str,
    *,
    max_body: int = MAX_QUERY_BYTES,
    serials: SerialCounter | None = None,
) -> web.Application:
    """An aiohttp application answering time-stamp queries on ``POST /``."""
    counter = serials or SerialCounter()

    async def stamp(request: web.Request) -> web.Response:
        if request.content_type != QUERY_TYPE:
            raise web.HTTPUnsupportedMediaType(text=f"send {QUERY_TYPE}\n")
        body = await request.read()  # over client_max_size: aiohttp answers 413
        serial = counter.next()
        reply = issue_token(
            body, key, cert, policy_oid=policy_oid, serial=serial, now=datetime.now(UTC)
        )
        status = read_status(reply)
        if status.granted:
            log.info("tsa.granted", serial=serial)
        else:
            log.warning("tsa.rejected", fail_info=sorted(status.fail_info), reason=status.text)
        return web.Response(body=reply, content_type=REPLY_TYPE)

    app = web.Application(client_max_size=max_body)
    app.router.add_post("/", stamp)
    return app


async def fetch_timestamp(
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    trusted_roots: list[x509.Certificate],
    timeout: float,
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
