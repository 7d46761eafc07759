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

import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.protocol.rfc3161 import (
    QUERY_TYPE,
    REPLY_TYPE,
    issue_token,
    read_status,
)

__all__ = ["MAX_QUERY_BYTES", "QUERY_TYPE", "REPLY_TYPE", "TSA_POLICY", "SerialCounter", "tsa_app"]

log = structlog.get_logger("xroad_hub.central.tsa")

# The policy under which the federation's TSA issues tokens: a UUID-derived OID (ITU-T X.667,
# arc 2.25), unique without registration; a federation with its own policy uses its own.
TSA_POLICY = "2.25.83577886173988329252981031019638523"

# A SHA-512 request with a nonce is under 100 bytes; anything near the limit is not a request.
MAX_QUERY_BYTES = 64 * 1024


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
