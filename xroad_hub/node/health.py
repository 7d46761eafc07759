"""Health checks of a node and of the central registry (X-Road's health-check port).

Served unauthenticated on a port of their own, and cheap: an answer is computed from state
held in memory (no exchange, no database query) and cached for ``CACHE_SECONDS``, so a
scrape storm costs a dictionary lookup per request.

    GET /health/live    200 while the process serves at all (restart it otherwise)
    GET /health/ready   200 when it may take traffic, else 503 with the reasons (JSON)
    GET /health         the same as /health/ready (X-Road's check answers on any path)

X-Road answers 500 with a text reason and caches OK for 2 s and failures for 30 s; here
unready is 503 (what load balancers and Kubernetes expect of readiness) with JSON reasons,
cached 1 s either way so that recovery shows at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiohttp import web
from cryptography import x509

__all__ = ["CACHE_SECONDS", "CertCheck", "Problem", "cert_problems", "health_app"]

CACHE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a node may not take traffic: ``check`` is a stable code, ``reason`` for people.

    The health port is unauthenticated, so ``reason`` is coarse and fixed by the code
    (what failed, never why in the words of an exception: those carry URLs, file names,
    database users). ``detail`` holds the rest for administrators (admin API /health)."""

    check: str
    reason: str
    detail: str | None = None

    def as_dict(self, *, detailed: bool = False) -> dict[str, str]:
        found = {"check": self.check, "reason": self.reason}
        if detailed and self.detail:
            found["detail"] = self.detail
        return found


@dataclass(frozen=True, slots=True)
class CertCheck:
    """A key and certificate the node needs: both files must exist, the certificate must
    be in date. ``not_after`` is read once, when the node loads it."""

    what: str  # e.g. "authentication certificate"
    cert: Path
    key: Path
    not_before: datetime
    not_after: datetime

    @classmethod
    def load(cls, what: str, cert: Path, key: Path) -> CertCheck:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
        return cls(what, cert, key, c.not_valid_before_utc, c.not_valid_after_utc)


def cert_problems(checks: list[CertCheck], now: float | None = None) -> list[Problem]:
    problems = []
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    for c in checks:
        missing = [p for p in (c.cert, c.key) if not p.exists()]
        if missing:
            problems.append(
                Problem(
                    "key_missing",
                    f"{c.what}: key or certificate file missing",
                    f"{', '.join(map(str, missing))} missing",
                )
            )
        elif moment > c.not_after:
            problems.append(
                Problem("certificate_expired", f"{c.what} expired at {c.not_after.isoformat()}")
            )
        elif moment < c.not_before:
            problems.append(
                Problem(
                    "certificate_not_yet_valid",
                    f"{c.what} is valid only from {c.not_before.isoformat()}",
                )
            )
    return problems


class _Cached:
    def __init__(self, evaluate: Callable[[], list[Problem]], now: Callable[[], float]) -> None:
        self._evaluate = evaluate
        self._now = now
        self._at = -1e18
        self._answer: tuple[int, bytes] = (200, b"")

    def answer(self) -> tuple[int, bytes]:
        now = self._now()
        if now - self._at >= CACHE_SECONDS:
            problems = self._evaluate()
            body = {
                "status": "unavailable" if problems else "ok",
                "problems": [p.as_dict() for p in problems],
            }
            self._answer = (503 if problems else 200, orjson.dumps(body))
            self._at = now
        return self._answer


def health_app(
    evaluate: Callable[[], list[Problem]], *, now: Callable[[], float] = time.monotonic
) -> web.Application:
    cached = _Cached(evaluate, now)

    async def ready(request: web.Request) -> web.Response:
        status, body = cached.answer()
        return web.Response(
            status=status,
            body=body,
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def live(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"alive"}', content_type="application/json")

    app = web.Application(client_max_size=1024)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health", ready)
    return app
