"""Client of the hub's evidence API on BMA's own node, over its public HTTP protocol only.

The node does the X-Road work (signing, logging, access rights, routing to DOPA, DBD, DOL and
RD); this module only asks ``GET {node}/evidence/{type}/{subject}`` with the X-Road headers
that say who acts and why, and turns every outcome, including a dead network, into a value
the case can store and show. Nothing here raises for a failed fetch: one missing document
must not cancel the others.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

__all__ = ["EvidenceAnswer", "FetchError", "HubClient", "payload_digest"]

log = structlog.get_logger("case_service.hub")

# Larger answers are refused rather than buffered: evidence documents are small JSON records.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
EXCERPT_CHARS = 500


def payload_digest(data: Any) -> str:
    """SHA-256 (hex) of the payload in a canonical JSON form.

    The answer's envelope carries a fresh message id every time, so hashing the raw body would
    make every re-fetch look changed; sorted keys, no whitespace and UTF-8 make the digest
    depend on the document alone.
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FetchError:
    """Why a fetch failed, in a form the citizen and the officer can read.

    ``source`` says who failed: ``x-road`` (a node answered with an X-Road error),
    ``provider`` (the agency's own system answered non-2xx, passed through by the nodes),
    ``network`` (the node itself could not be reached) or ``answer`` (a 2xx answer that is not
    the documented JSON).
    """

    source: str
    message: str
    status: int | None = None
    code: str | None = None
    detail: str | None = None
    body_excerpt: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "detail": self.detail,
            "body_excerpt": self.body_excerpt,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FetchError:
        return cls(
            source=str(raw.get("source", "unknown")),
            message=str(raw.get("message", "")),
            status=raw.get("status"),
            code=raw.get("code"),
            detail=raw.get("detail"),
            body_excerpt=raw.get("body_excerpt"),
        )


@dataclass(frozen=True)
class EvidenceAnswer:
    """The outcome of one fetch: ``data`` and its digest on success, ``error`` otherwise."""

    type: str
    message_id: str
    service: str | None = None
    data: Any = None
    sha256: str | None = None
    error: FetchError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# Requests in flight to the node at most (one per connection). The node admits at most
# client_max_concurrent requests from one client system at once (32 unless its operator
# changed it) and refuses the rest at once with 429 TooManyRequests. With a larger pool,
# seven or more applications at once (up to five fetches each) left cases with failed
# evidence, where a short wait here for a free connection is all a busy hour needs.
MAX_IN_FLIGHT = 32


def client_ssl_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """TLS towards the node: verify the node against ``ca``; present our certificate."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


class HubClient:
    """Talks to one node as one client subsystem. Open with ``start``, close with ``close``."""

    def __init__(
        self,
        node_url: str,
        client_id: str,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_ca: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._base = node_url.rstrip("/")
        self._client_id = client_id
        self._tls = (tls_cert, tls_key, tls_ca)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        ssl_ctx: ssl.SSLContext | bool = True
        if self._base.startswith("https://"):
            ssl_ctx = client_ssl_context(*self._tls)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=MAX_IN_FLIGHT),
            timeout=self._timeout,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("HubClient.start() was not called")
        return self._session

    async def catalog(self) -> list[dict[str, Any]]:
        """The node's evidence catalog (``GET /evidence``); raises on any failure."""
        session = self._require_session()
        async with session.get(
            f"{self._base}/evidence",
            headers={"X-Road-Client": self._client_id, "Accept": "application/json"},
            allow_redirects=False,
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"evidence catalog: HTTP {resp.status}")
            body = await resp.json(content_type=None)
        types = body.get("types") if isinstance(body, dict) else None
        if not isinstance(types, list):
            raise RuntimeError("evidence catalog: no 'types' list")
        return [t for t in types if isinstance(t, dict) and isinstance(t.get("type"), str)]

    async def fetch(
        self,
        evidence_type: str,
        subject_id: str,
        *,
        user_id: str,
        issue: str,
        purpose: str,
        legal_basis: str,
    ) -> EvidenceAnswer:
        """One evidence document through the node; never raises for a failed exchange."""
        # Our own message id: the reference exists (and can be searched in the hub's log)
        # even when the answer never arrives.
        message_id = str(uuid.uuid4())
        headers = {
            "X-Road-Client": self._client_id,
            "X-Road-Id": message_id,
            "X-Road-UserId": user_id,
            "X-Road-Issue": issue,
            "X-Road-Purpose": purpose,
            "X-Road-Legal-Basis": legal_basis,
            "Accept": "application/json",
        }
        url = f"{self._base}/evidence/{quote(evidence_type, safe='')}/{quote(subject_id, safe='')}"
        session = self._require_session()
        try:
            # No redirects: an answer must come from our node, never from where it points.
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                body = await _read_limited(resp)
                answer_id = resp.headers.get("X-Road-Id") or message_id
                xroad_error = resp.headers.get("X-Road-Error")
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            # TimeoutError has an empty str(); name the class so the citizen sees something.
            reason = str(exc) or type(exc).__name__
            error = FetchError("network", f"the hub node could not be reached: {reason}")
            return EvidenceAnswer(evidence_type, message_id, error=error)
        except _TooLarge:
            error = FetchError("answer", f"answer larger than {MAX_ANSWER_BYTES} bytes")
            return EvidenceAnswer(evidence_type, message_id, error=error)
        if xroad_error:
            return EvidenceAnswer(evidence_type, answer_id, error=_xroad_error(status, body))
        if not 200 <= status < 300:
            text = body.decode("utf-8", "replace")
            error = FetchError(
                "provider",
                f"the provider's system answered HTTP {status}",
                status=status,
                body_excerpt=text[:EXCERPT_CHARS],
            )
            return EvidenceAnswer(evidence_type, answer_id, error=error)
        return _success(evidence_type, answer_id, status, body)


class _TooLarge(Exception):
    pass


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _xroad_error(status: int, body: bytes) -> FetchError:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return FetchError(
            "x-road",
            str(parsed.get("message") or "X-Road error"),
            status=status,
            code=str(parsed.get("type")) if parsed.get("type") else None,
            detail=str(parsed.get("detail")) if parsed.get("detail") else None,
        )
    return FetchError(
        "x-road",
        "X-Road error without a JSON body",
        status=status,
        body_excerpt=body.decode("utf-8", "replace")[:EXCERPT_CHARS],
    )


def _success(evidence_type: str, message_id: str, status: int, body: bytes) -> EvidenceAnswer:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or "data" not in parsed:
        error = FetchError(
            "answer",
            "the node's answer is not an evidence document (JSON with 'data')",
            status=status,
            body_excerpt=body.decode("utf-8", "replace")[:EXCERPT_CHARS],
        )
        return EvidenceAnswer(evidence_type, message_id, error=error)
    if isinstance(parsed.get("type"), str) and parsed["type"] != evidence_type:
        error = FetchError(
            "answer", f"asked for {evidence_type!r}, got {parsed['type']!r}", status=status
        )
        return EvidenceAnswer(evidence_type, message_id, error=error)
    mid = parsed.get("message_id")
    service = parsed.get("service")
    data = parsed["data"]
    return EvidenceAnswer(
        evidence_type,
        mid if isinstance(mid, str) and mid else message_id,
        service=service if isinstance(service, str) else None,
        data=data,
        sha256=payload_digest(data),
    )
