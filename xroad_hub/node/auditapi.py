"""The auditors' HTTP API of a node: search, verify and evidence over HTTPS.

Auditors are a role of their own, not client subsystems: each is listed in the federation
file and holds an ES256 key; a request carries ``Authorization: Bearer <token>`` with
issuer ``auditor:NAME``, audience the node id and a lifetime of at most five minutes. A
token may be reused within its lifetime (an auditor pages through results).

    GET /audit/search?client=&service=&user_id=&issue=&message_id=&status=&subject=
                      &since=&until=&limit=&after=      -> {"entries": [...], "next_after": n}
    GET /audit/verify                                    -> the audit report of the whole log
    GET /audit/evidence/{message_id}[?leaf_index=n]      -> the evidence bundle (JSON)

Everything reads the log (SQLite or PostgreSQL) through a read-only reader opened per
request in a worker thread, so the node's exchanges are not held up.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jwt
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.logs import path_shape
from xroad_hub.messagelog.audit import search_log, verify_log
from xroad_hub.messagelog.evidence import EvidenceError, export_bundle
from xroad_hub.messagelog.reader import LogReadError
from xroad_hub.messagelog.search import MAX_PAGE, SearchFilter
from xroad_hub.messagelog.source import LogOpener
from xroad_hub.node.clientauth import MAX_TOKEN_LIFETIME

__all__ = ["AuditApi", "Auditor"]

log = structlog.get_logger("xroad_hub.audit_api")


@dataclass(frozen=True, slots=True)
class Auditor:
    name: str
    key: ec.EllipticCurvePublicKey


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class AuditApi:
    def __init__(
        self,
        node_id: str,
        log: Path | LogOpener,
        auditors: list[Auditor],
        trusted_roots: list[x509.Certificate],
    ) -> None:
        """``log``: the log file, or a function opening a reader of the node's log (the
        message log's ``reader``)."""
        self._node_id = node_id
        self._log = log
        self._auditors = {f"auditor:{a.name}": a for a in auditors}
        self._roots = trusted_roots

    def subapp(self) -> web.Application:
        """The auditors' API as a sub-application, its routes relative to /audit; every one
        of them behind the auditors' authentication (and nothing else on the listener)."""
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get("/search", self._search)
        app.router.add_get("/verify", self._verify)
        app.router.add_get("/evidence/{message_id}", self._evidence)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss", "")
            auditor = self._auditors.get(str(issuer))
            if auditor is None:
                raise jwt.InvalidTokenError("unknown auditor")
            claims = jwt.decode(
                token, auditor.key, algorithms=["ES256"], audience=self._node_id,
                issuer=str(issuer), leeway=10,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )  # fmt: skip
            if int(claims["exp"]) - int(claims["iat"]) > MAX_TOKEN_LIFETIME:
                raise jwt.InvalidTokenError("token lifetime too long")
        except jwt.InvalidTokenError as exc:
            log.info("audit.refused", reason=str(exc), route=path_shape(request.path))
            return _problem(401, f"auditor authentication failed: {exc}")
        # What was searched for is in the auditor's own record, not here: the values name
        # citizens (subject, user_id). The log says who asked, the route and which filters.
        log.info("audit.request", auditor=auditor.name, route=path_shape(request.path),
                 filters=sorted(request.query.keys())[:20])  # fmt: skip
        return await handler(request)

    async def _search(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            query = SearchFilter(
                since=datetime.fromisoformat(q["since"]) if "since" in q else None,
                until=datetime.fromisoformat(q["until"]) if "until" in q else None,
                client=q.get("client"), service=q.get("service"), user_id=q.get("user_id"),
                issue=q.get("issue"), message_id=q.get("message_id"),
                status=int(q["status"]) if "status" in q else None, role=q.get("role"),
                error_type=q.get("error_type"), subject=q.get("subject"),
            )  # fmt: skip
            limit = int(q.get("limit", "100"))
            after = int(q.get("after", "-1"))
            if not 1 <= limit <= MAX_PAGE:
                raise ValueError(f"limit must be 1..{MAX_PAGE}")
        except ValueError as exc:
            return _problem(400, f"bad search: {exc}")
        try:
            rows, next_after = await asyncio.to_thread(
                search_log, self._log, query, limit=limit, after=after
            )
        except LogReadError as exc:
            return _problem(503, f"the message log cannot be searched: {exc}")
        return web.json_response({"entries": rows, "next_after": next_after})

    async def _verify(self, request: web.Request) -> web.Response:
        report = await asyncio.to_thread(verify_log, self._log, self._roots)
        return web.json_response(
            {
                "ok": report.ok,
                "entries": report.entries,
                "checkpoints": report.checkpoints,
                "witnessed": report.witnessed,
                "root": base64.b64encode(report.root).decode(),
                "findings": [
                    {"leaf_index": f.leaf_index, "problem": f.problem} for f in report.findings
                ],
            }
        )

    async def _evidence(self, request: web.Request) -> web.Response:
        index = request.query.get("leaf_index")
        try:
            bundle = await asyncio.to_thread(
                export_bundle,
                self._log,
                request.match_info["message_id"],
                int(index) if index is not None else None,
            )
        except (EvidenceError, ValueError) as exc:
            return _problem(404, str(exc))
        return web.Response(body=bundle, content_type="application/json")
