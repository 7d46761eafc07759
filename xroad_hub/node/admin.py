"""The node's admin API: one listener for administrators, with bearer API keys and roles.

Default deny: every request needs ``Authorization: Bearer KEY`` of a configured
administrator (only the key's SHA-256 is configured), and every route needs a role. Routes
come as sub-applications mounted with the roles allowed to use them (``AdminApi.mount``), so
later parts of the node's administration (service management, registration, the central
server's) add theirs without touching authentication. An unauthenticated request is refused
before routing, with no body read.

Every change an administrator makes is appended to the admin audit trail
(``AdminAudit``): a JSON-lines file, mode 0600, one line per change (who, when, what).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from xroad_hub.errors import Unavailable
from xroad_hub.federation import ADMIN_ROLES, AdminConfig
from xroad_hub.privatefile import ensure_private

__all__ = ["ADMIN", "ADMIN_ROLES", "AdminApi", "AdminAudit", "key_digest"]

log = structlog.get_logger("xroad_hub.node.admin")

# The authenticated administrator of a request.
ADMIN = web.RequestKey("xroad_hub_admin", AdminConfig)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Finds the administrator holding a key, by the key's SHA-256 (None: nobody).
AdminLookup = Callable[[str], Awaitable[AdminConfig | None]]


def key_digest(key: str) -> str:
    """What the configuration holds of an API key. Keys are 256-bit random values
    (``xroad-hub node admin-key``), so a plain SHA-256 cannot be reversed by guessing."""
    return hashlib.sha256(key.encode()).hexdigest()


def _problem(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class AdminAudit:
    """Append-only trail of administrators' changes (JSON lines, 0600, fsynced)."""

    def __init__(self, path: Path, node_id: str) -> None:
        self.path = path
        self.node_id = node_id
        self._lock = asyncio.Lock()

    def _append(self, line: bytes) -> None:
        ensure_private(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def record(self, admin: str, action: str, **detail: Any) -> None:
        entry = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "node": self.node_id,
            "admin": admin,
            "action": action,
            **({"detail": detail} if detail else {}),
        }
        async with self._lock:
            await asyncio.to_thread(self._append, orjson.dumps(entry) + b"\n")
        log.info("admin.change", admin=admin, action=action)

    def entries(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [orjson.loads(line) for line in data.splitlines() if line]


class AdminApi:
    def __init__(
        self,
        node_id: str,
        admins: Iterable[AdminConfig],
        audit: AdminAudit | None = None,
        *,
        lookup: AdminLookup | None = None,
        max_body: int = 64 * 1024,
    ) -> None:
        """``audit``: the trail the app's own routes write (None where the owner keeps its
        trail elsewhere, as the central server does in its database). ``lookup``: find
        administrators per request instead of in ``admins`` (the central server reads its
        database, so a key added or replaced takes effect without a restart). ``max_body``:
        the largest request body (only ever read once the administrator is authenticated)."""
        self.node_id = node_id
        self._by_digest = {a.key_sha256: a for a in admins}
        self._lookup = lookup
        self.audit = audit
        self.app = web.Application(middlewares=[self._authenticate], client_max_size=max_body)
        self._roles: dict[web.Application, frozenset[str]] = {}
        self._route_roles: dict[web.AbstractRoute, frozenset[str]] = {}

    def mount(self, prefix: str, subapp: web.Application, roles: Iterable[str]) -> None:
        """Serve ``subapp`` under ``prefix`` (e.g. "/services") to administrators holding
        any of ``roles``."""
        self._roles[subapp] = _roles(prefix, roles)
        self.app.add_subapp(prefix, subapp)

    def route(self, method: str, path: str, handler: _Handler, roles: Iterable[str]) -> None:
        """One route of the admin app itself, open to administrators holding any of
        ``roles``."""
        self._route_roles[self.app.router.add_route(method, path, handler)] = _roles(path, roles)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await self._serve(request, handler)
        except Unavailable as exc:
            # The database failed, not the administrator: a retryable 503 with what to do,
            # and no traceback in the log (the message says it all, the password redacted).
            log.warning("admin.store_unavailable", node=self.node_id, error=str(exc))
            return _problem(503, str(exc), **{"Retry-After": "5"})

    async def _serve(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        admin = None
        if scheme == "Bearer":
            digest = key_digest(key.strip())
            admin = await self._lookup(digest) if self._lookup else self._by_digest.get(digest)
        if admin is None:
            return _problem(
                401,
                "an administrator's API key is required (Authorization: Bearer KEY)",
                **{"WWW-Authenticate": 'Bearer realm="xroad-hub admin"'},
            )
        info = request.match_info
        if info.http_exception is not None:
            return _problem(info.http_exception.status, info.http_exception.reason)
        # The route's roles, or those of the innermost mounted app serving it; none: denied.
        allowed = self._route_roles.get(info.route) or next(
            (self._roles[a] for a in reversed(info.apps) if a in self._roles), frozenset()
        )
        if not allowed & admin.roles:
            if self.audit is not None:
                # An administrator trying what her roles do not allow is on the trail too
                # (a trail that cannot be written does not turn the refusal into an error).
                try:
                    await self.audit.record(
                        admin.name, "refused", method=request.method, path=request.path,
                        reason="lacks the role",
                    )  # fmt: skip
                except OSError:
                    log.exception("admin.refusal_unrecorded", admin=admin.name)
            return _problem(
                403,
                f"administrator {admin.name} lacks a role for this: one of "
                + ", ".join(sorted(allowed) or ["(none: route not open to any role)"]),
            )
        request[ADMIN] = admin
        return await handler(request)


def _roles(where: str, roles: Iterable[str]) -> frozenset[str]:
    allowed = frozenset(roles)
    if not allowed or allowed - ADMIN_ROLES:
        raise ValueError(f"{where}: roles must be some of {sorted(ADMIN_ROLES)}")
    return allowed
