"""The node's admin API: one listener for administrators, with bearer API keys and roles.

Default deny: every request needs ``Authorization: Bearer KEY`` of a configured
administrator (only the key's SHA-256 is configured), and every route needs a role. Routes
come as sub-applications mounted with the roles allowed to use them (``AdminApi.mount``), so
later parts of the node's administration (service management, registration, the central
server's) add theirs without touching authentication. An unauthenticated request is refused
before routing, with no body read.

Every change an administrator makes is appended to the admin audit trail
(``AdminAudit``): a JSON-lines file, mode 0600, one line per change (who, when, what).
Each line carries its sequence number and the SHA-256 of the line before it, and is signed
with the node's checkpoint key (Ed25519, certified by the federation CA), so an edited,
reordered or deleted change breaks the chain and a forged one has no valid signature
(``AdminAudit.verify``, ``xroad-hub node trail``). Like any hash chain it cannot show that
its last lines were cut off by themselves; the head it reports is what to compare with a
copy kept elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
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

__all__ = [
    "ADMIN", "ADMIN_ROLES", "AdminApi", "AdminAudit", "AdminTrailBroken", "TrailReport",
    "key_digest",
]  # fmt: skip

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


class AdminTrailBroken(HubError):
    """The administration trail was changed after it was written (or is not this node's)."""


# Signed bytes are this prefix and the entry without its signature, keys sorted: the
# signature cannot be taken for one over a checkpoint or anything else the key signs.
_TRAIL_CONTEXT = b"xroad-hub admin trail v1\n"


def _signed_bytes(entry: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in entry.items() if k != "sig"}
    return _TRAIL_CONTEXT + orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class TrailReport:
    entries: int  # chained and signed
    unchained: int  # written before the trail was chained (older versions), not verifiable
    head: str  # SHA-256 of the last line: compare with a copy kept elsewhere


class AdminAudit:
    """Append-only, hash-chained, signed trail of administrators' changes (JSON lines, 0600,
    fsynced). ``signer``: the node's checkpoint key; without one (tests of the API alone)
    lines are chained but unsigned, and ``verify`` then needs no key."""

    def __init__(
        self, path: Path, node_id: str, signer: ed25519.Ed25519PrivateKey | None = None
    ) -> None:
        self.path = path
        self.node_id = node_id
        self._signer = signer
        self._lock = asyncio.Lock()
        self._head: tuple[int, str] | None = None  # seq and SHA-256 of the last line

    def _last(self) -> tuple[int, str]:
        """The last line's sequence number and hash (0 and the empty hash: no line yet)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0, hashlib.sha256(b"").hexdigest()
        lines = data.splitlines(keepends=True)
        if not lines:
            return 0, hashlib.sha256(b"").hexdigest()
        try:
            seq = int(orjson.loads(lines[-1]).get("seq", len(lines)))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            seq = len(lines)
        return seq, hashlib.sha256(lines[-1]).hexdigest()

    def _append(self, entry: dict[str, Any]) -> None:
        ensure_private(self.path)
        if self._head is None:  # this process's first change: continue the file's chain
            self._head = self._last()
        seq, prev = self._head
        entry = {**entry, "seq": seq + 1, "prev": prev}
        if self._signer is not None:
            signature = self._signer.sign(_signed_bytes(entry))
            entry["sig"] = base64.b64encode(signature).decode()
        line = orjson.dumps(entry) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._head = (seq + 1, hashlib.sha256(line).hexdigest())

    async def record(self, admin: str, action: str, **detail: Any) -> None:
        entry = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "node": self.node_id,
            "admin": admin,
            "action": action,
            **({"detail": detail} if detail else {}),
        }
        async with self._lock:
            await asyncio.to_thread(self._append, entry)
        log.info("admin.change", admin=admin, action=action)

    def entries(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [orjson.loads(line) for line in data.splitlines() if line]

    def verify(self, key: ed25519.Ed25519PublicKey | None = None) -> TrailReport:
        """Checks every line: valid JSON of this node, numbered one after the other, naming
        the hash of the line before it, and signed by ``key`` (default: the public half of
        the key this trail signs with). Lines without a chain may only precede the first
        chained one (a trail begun by an older version). Raises AdminTrailBroken."""
        if key is None and self._signer is not None:
            key = self._signer.public_key()
        try:
            lines = self.path.read_bytes().splitlines(keepends=True)
        except FileNotFoundError:
            lines = []
        prev, seq, unchained, chained = hashlib.sha256(b"").hexdigest(), 0, 0, 0
        for number, line in enumerate(lines, 1):
            where = f"{self.path} line {number}"
            try:
                entry = orjson.loads(line)
                if not isinstance(entry, dict):
                    raise TypeError
            except (orjson.JSONDecodeError, TypeError):
                raise AdminTrailBroken(
                    f"{where} is not a trail entry: the trail is broken"
                ) from None
            if "prev" not in entry and not chained:
                unchained += 1
            else:
                number_ok = isinstance(entry.get("seq"), int) and (
                    not chained or entry["seq"] == seq + 1  # the first continues older lines
                )
                if entry.get("prev") != prev or not number_ok:
                    raise AdminTrailBroken(
                        f"{where} does not follow the line before it: the trail is broken "
                        "(an entry was deleted, inserted, reordered or edited)"
                    )
                if entry.get("node") != self.node_id:
                    raise AdminTrailBroken(f"{where} is of node {entry.get('node')!r}")
                if key is not None:
                    try:
                        key.verify(
                            base64.b64decode(str(entry.get("sig", ""))), _signed_bytes(entry)
                        )
                    except (InvalidSignature, ValueError):
                        raise AdminTrailBroken(
                            f"{where} does not verify with the node's checkpoint key: "
                            "edited or forged"
                        ) from None
                seq, chained = int(entry["seq"]), chained + 1
            prev = hashlib.sha256(line).hexdigest()
        return TrailReport(chained, unchained, prev)


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
