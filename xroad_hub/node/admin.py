"""The node's admin API: one listener for administrators, with bearer API keys and roles.

Default deny: every request needs ``Authorization: Bearer KEY`` of a configured
administrator (only the key's SHA-256 is configured), and every route needs a role. Routes
come as sub-applications mounted with the roles allowed to use them (``AdminApi.mount``), so
later parts of the node's administration (service management, registration, the central
server's) add theirs without touching authentication. An unauthenticated request is refused
before routing, with no body read.

Every change an administrator makes is appended to the admin audit trail
(``AdminAudit``): a JSON-lines file, mode 0600, one line per change (who, when, what),
hash-chained and signed with the node's checkpoint key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.errors import HubError, Unavailable
from xroad_hub.federation import ADMIN_ROLES, AdminConfig
from xroad_hub.privatefile import ensure_private

__all__ = ["ADMIN", "ADMIN_ROLES", "AdminApi", "AdminAudit", "AuditTrailBroken", "key_digest"]

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


class AuditTrailBroken(HubError):
    """The administration trail does not verify: an entry was deleted, edited or added
    by someone without the node's key."""


class AdminAudit:
    """Append-only trail of administrators' changes (JSON lines, 0600, fsynced). Each entry
    names the hash of the one before (``prev``) and its own (``hash``, over the entry
    without ``hash`` and ``sig``), and is signed with the node's checkpoint key (``sig``,
    Ed25519): an entry deleted or edited breaks the chain, and one rewritten with a new
    chain lacks the node's signature (``verify``)."""

    def __init__(
        self, path: Path, node_id: str, key: ed25519.Ed25519PrivateKey | None = None
    ) -> None:
        self.path = path
        self.node_id = node_id
        self._key = key
        self._last: str | None = None  # the last entry's hash, read at the first append
        self._lock = asyncio.Lock()

    def _append(self, entry: dict[str, Any]) -> None:
        ensure_private(self.path)
        if self._last is None:
            lines = [line for line in self.path.read_bytes().splitlines() if line.strip()]
            self._last = str(orjson.loads(lines[-1]).get("hash", "")) if lines else ""
        entry["prev"] = self._last
        body = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
        entry["hash"] = hashlib.sha256(body).hexdigest()
        if self._key is not None:
            entry["sig"] = base64.b64encode(self._key.sign(body)).decode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        try:
            os.write(fd, orjson.dumps(entry) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._last = entry["hash"]

    async def record(self, admin: str, action: str, **detail: Any) -> None:
        async with self._lock:
            entry = {
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "node": self.node_id,
                "admin": admin,
                "action": action,
                **({"detail": detail} if detail else {}),
            }
            await asyncio.to_thread(self._append, entry)
        log.info("admin.change", admin=admin, action=action)

    def entries(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [orjson.loads(line) for line in data.splitlines() if line]

    def verify(self, public_key: ed25519.Ed25519PublicKey | None = None) -> int:
        """The number of entries, once each is chained onto the one before and signed by
        the node's key (``public_key``; default: that of the key the trail is written
        with); AuditTrailBroken at the first that is not."""
        key = public_key or (self._key.public_key() if self._key is not None else None)
        prev = ""
        entries = self.entries()
        for number, entry in enumerate(entries, 1):
            claimed, sig = entry.pop("hash", None), entry.pop("sig", None)
            body = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
            if entry.get("prev") != prev or claimed != hashlib.sha256(body).hexdigest():
                raise AuditTrailBroken(
                    f"{self.path}: the trail is broken at entry {number} (an entry before it "
                    "was deleted, or this one edited)"
                )
            if key is not None:
                try:
                    key.verify(base64.b64decode(str(sig), validate=True), body)
                except (InvalidSignature, ValueError) as exc:
                    raise AuditTrailBroken(
                        f"{self.path}: entry {number} does not verify with the node's key"
                    ) from exc
            prev = str(claimed)
        return len(entries)


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
