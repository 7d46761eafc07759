"""The citizens' data tracker of a node: who read my data, when, for which case and why.

Served on the node's HTTPS audit listener, next to the auditors' API, but with its own
authentication: a citizen proves who she is with a token of the identity provider (ThaID;
in the demo a stand-in whose ES256 key ``xroad-hub pki init`` creates), never with a node
or auditor credential. The token must have

    iss "thaid", role "citizen", sub her 13-digit citizen ID, aud this node's id,
    iat and exp with exp - iat <= 300 s (it may be reused within that time, to page)

    GET /tracker/accesses[?limit=N&after=LEAF]
        -> {"node", "entries": [...], "next_after": n | null}

Each entry is an exchange this node served as provider whose data-subject index names her
(``exchange_subject``): when, which agency's system asked, which official, for which case,
purpose and legal basis, which evidence, and whether it was answered or refused. Purpose,
legal basis and evidence type come from the signed request metadata, so the agency that
asked cannot deny them.

The index is queried strictly by the token's subject: nothing in the request can name
another person, and there is no way to widen the query.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import orjson
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.messagelog.reader import LogReadError
from xroad_hub.messagelog.source import LogOpener, LogSource, reading
from xroad_hub.pki import IDP_MAX_LIFETIME, IDP_NAME, TRACKER_MAX_LIFETIME
from xroad_hub.protocol.identifiers import parse_client_id
from xroad_hub.protocol.thaiid import is_valid

__all__ = [
    "IDP_ISSUER",
    "IDP_MAX_LIFETIME",
    "ROLES",
    "TRACKER_MAX_LIFETIME",
    "TokenRefused",
    "TrackerApi",
    "citizen_accesses",
    "mint_idp_token",
    "verify_idp_token",
]

log = structlog.get_logger("xroad_hub.tracker")

IDP_ISSUER = IDP_NAME
ROLES = ("citizen", "officer")
_LEEWAY = 10  # seconds of clock skew tolerated
MAX_PAGE = 1000
DEFAULT_PAGE = 200


class TokenRefused(Exception):
    """An identity token that is not acceptable: ``status`` 401 (who are you?) or 403 (you
    are known, but not allowed here)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def mint_idp_token(
    key: ec.EllipticCurvePrivateKey,
    *,
    subject: str,
    role: str,
    audience: str,
    ttl: int = TRACKER_MAX_LIFETIME,
    now: int | None = None,
) -> str:
    """An ES256 token of the identity provider for ``subject`` acting as ``role``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    if role == "citizen" and not is_valid(subject):
        raise ValueError(f"{subject!r} is not a valid citizen ID (13 digits, check digit)")
    if not 1 <= ttl <= IDP_MAX_LIFETIME:
        raise ValueError(f"lifetime must be 1..{IDP_MAX_LIFETIME} s")
    issued = int(time.time()) if now is None else now
    claims = {
        "iss": IDP_ISSUER,
        "sub": subject,
        "role": role,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm="ES256")


def verify_idp_token(
    token: str,
    key: ec.EllipticCurvePublicKey,
    *,
    audience: str,
    role: str,
    max_lifetime: int = TRACKER_MAX_LIFETIME,
) -> dict[str, Any]:
    """The claims of ``token`` if the identity provider issued it to ``role`` for
    ``audience`` and it is within its (bounded) lifetime; TokenRefused otherwise."""
    if not token:
        raise TokenRefused(401, "an identity provider token is required (Authorization: Bearer)")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=["ES256"], audience=audience, issuer=IDP_ISSUER,
            leeway=_LEEWAY, options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )  # fmt: skip
        lifetime = int(claims["exp"]) - int(claims["iat"])
    except (jwt.PyJWTError, TypeError, ValueError) as exc:
        raise TokenRefused(401, f"identity token refused: {exc}") from exc
    if lifetime > max_lifetime:
        raise TokenRefused(401, f"identity token lives longer than {max_lifetime} s")
    if claims.get("role") != role:
        raise TokenRefused(403, f"this API is for the role {role!r} only")
    if role == "citizen" and not (isinstance(claims["sub"], str) and is_valid(claims["sub"])):
        raise TokenRefused(403, "the token's subject is not a valid citizen ID")
    return claims


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _signed_fields(meta: bytes | None) -> dict[str, str | None]:
    """Purpose, legal basis and evidence type as the client signed them (None if absent)."""
    try:
        doc = orjson.loads(meta) if meta is not None else {}
    except orjson.JSONDecodeError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    out: dict[str, str | None] = {}
    for key in ("purpose", "legal_basis", "evidence_type"):
        value = doc.get(key)
        out[key] = value if isinstance(value, str) else None
    # The client named no purpose; its node applied the one registered for it.
    out["purpose_default"] = "registered default" if doc.get("purpose_default") is True else None
    return out


def _agency(client: str, member_names: Mapping[str, str]) -> tuple[str, str]:
    """(member id, its name) of a logged client identifier."""
    try:
        member = str(parse_client_id(client).member)
    except Exception:  # a log written by another version: show what is there
        return client, client
    return member, member_names.get(member, member)


def citizen_accesses(
    log: LogSource,
    subject: str,
    *,
    node: str,
    member_names: Mapping[str, str],
    limit: int = DEFAULT_PAGE,
    after: int = -1,
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of the provider-side exchanges about ``subject`` in the log (a file, a
    PostgreSQL DSN or an open reader), oldest first, and the ``after`` of the next page
    (None: no more). Blocking: the node calls it in a worker thread."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}")
    with reading(log) as reader:
        rows = reader.subject_accesses(subject, limit=limit, after=after)
    entries = []
    for r in rows:
        member, name = _agency(r["client"], member_names)
        meta = r["request_meta"]
        signed = _signed_fields(None if meta is None else bytes(meta))
        entries.append(
            {
                "at": _iso(float(r["started_at"])),
                "node": node,
                "agency": name,
                "member": member,
                "client": r["client"],
                "official": r["user_id"],
                "service": r["service"],
                "evidence_type": signed["evidence_type"],
                "issue": r["issue"],
                "purpose": signed["purpose"],
                "legal_basis": signed["legal_basis"],
                "purpose_source": signed["purpose_default"] or "request",
                "represented_party": r["represented_party"],
                "status": r["status"],
                "refusal": r["error_type"],
                "message_id": r["message_id"],
                "leaf_index": r["leaf_index"],
            }
        )
    return entries, (rows[-1]["leaf_index"] if len(rows) == limit else None)


def _refuse(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="tracker"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


class TrackerApi:
    """``GET /tracker/accesses`` for citizens, who authenticate with identity-provider
    tokens (not the auditors' ones): a sub-application of its own next to the auditors'."""

    def __init__(
        self,
        node_id: str,
        log: Path | LogOpener,
        idp_public_key: ec.EllipticCurvePublicKey,
        member_names: Mapping[str, str] | Callable[[], Mapping[str, str]],
    ) -> None:
        """``log``: the log file, or a function opening a reader of the node's log (the
        message log's ``reader``; called in a worker thread per request). ``member_names``:
        member id -> name, or a function giving them per request (the names of the global
        configuration in force, which the registry may update)."""
        self._node_id = node_id
        self._log = log
        self._key = idp_public_key
        self._names = member_names

    def subapp(self) -> web.Application:
        """The tracker as a sub-application, its routes relative to /tracker."""
        app = web.Application()
        app.router.add_get("/accesses", self._accesses)
        return app

    def app(self) -> web.Application:
        """A stand-alone application holding only the tracker (at /tracker)."""
        app = web.Application()
        app.add_subapp("/tracker", self.subapp())
        return app

    def _citizen(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        claims = verify_idp_token(token, self._key, audience=self._node_id, role="citizen")
        return str(claims["sub"])

    async def _accesses(self, request: web.Request) -> web.Response:
        try:
            citizen = self._citizen(request)
        except TokenRefused as exc:
            log.info("tracker.refused", status=exc.status, reason=exc.message)
            return _refuse(exc.status, exc.message)
        q = request.query
        unknown = set(q) - {"limit", "after"}
        if unknown:
            # Whose entries is decided by the token alone; say so rather than ignore a filter.
            return _refuse(400, f"unknown parameter(s) {sorted(unknown)}; use limit and after")
        try:
            limit = int(q.get("limit", str(DEFAULT_PAGE)))
            after = int(q.get("after", "-1"))
            if not 1 <= limit <= MAX_PAGE:
                raise ValueError(f"limit must be 1..{MAX_PAGE}")
        except ValueError as exc:
            return _refuse(400, f"bad paging: {exc}")
        names = self._names() if callable(self._names) else self._names
        try:
            # In a worker thread: the node's event loop never waits on the log.
            entries, next_after = await asyncio.to_thread(
                functools.partial(
                    citizen_accesses, self._log, citizen, node=self._node_id,
                    member_names=names, limit=limit, after=after,
                )
            )  # fmt: skip
        except LogReadError as exc:
            log.warning("tracker.log_unreadable", reason=str(exc))
            return _refuse(503, "the node's message log cannot be read now; try again later")
        # Operational logs never hold the citizen id: how many entries is enough to trace use.
        log.info("tracker.request", entries=len(entries), after=after)
        return web.json_response(
            {"node": self._node_id, "entries": entries, "next_after": next_after},
            dumps=lambda d: orjson.dumps(d).decode(),
        )
