"""HTTP interface of the case service (aiohttp): every workflow step is a route.

Access is denied by default: a handler serves only the roles it declares with ``@roles``, and
a handler that declares nothing is refused for everyone, so a forgotten declaration fails
closed. Only ``/health`` is public.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from .auth import Actor, AuthError, TokenVerifier, load_idp_key
from .config import ConfigError, Settings
from .hub import HubClient
from .service import (
    STATUSES,
    CaseService,
    Clock,
    Forbidden,
    Invalid,
    ServiceError,
    system_clock,
)
from .store import Store

__all__ = ["ACTOR", "SERVICE", "SETTINGS", "create_app", "roles"]

log = structlog.get_logger("case_service.http")

SERVICE = web.AppKey("case_service", CaseService)
SETTINGS = web.AppKey("settings", Settings)
VERIFIER = web.AppKey("verifier", TokenVerifier)
ACTOR = web.RequestKey("actor", Actor)
MAX_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ROLES_ATTR = "_case_service_roles"
_PUBLIC = "public"


def roles(*allowed: str) -> Callable[[Handler], Handler]:
    """Declare which roles may call a handler (``public`` for no authentication at all)."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, _ROLES_ATTR, frozenset(allowed))
        return handler

    return mark


def _error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> web.Response:
    body = {**(details or {}), "error": code, "message": message}
    return web.json_response(body, status=status, headers=headers)


_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, authorise by declared roles, map errors to JSON, log the outcome."""
    actor: Actor | None = None
    refused: str | None = None
    response: web.StreamResponse
    try:
        if request.match_info.http_exception is not None:
            raise request.match_info.http_exception
        allowed: frozenset[str] = getattr(request.match_info.handler, _ROLES_ATTR, frozenset())
        if _PUBLIC not in allowed:
            actor = request.app[VERIFIER].actor(request.headers.get("Authorization"))
            if actor.role not in allowed:
                raise Forbidden(f"not allowed for role {actor.role}")
            request[ACTOR] = actor
        response = await handler(request)
    except AuthError as exc:
        refused = exc.reason
        response = _error(401, "unauthenticated", exc.reason, headers=_CHALLENGE)
    except ServiceError as exc:
        if isinstance(exc, Forbidden):
            refused = exc.message
        response = _error(exc.status, exc.code, exc.message, details=exc.details)
    except web.HTTPException as exc:
        response = _error(exc.status, "http", exc.reason)
    except Exception:
        log.exception("http.failed", method=request.method, path=request.path)
        response = _error(500, "internal", "internal error; it has been logged")
    # Data as events; never the Authorization header or bodies (tokens, personal data).
    log.info(
        "http.request",
        method=request.method,
        path=request.path,
        status=response.status,
        role=actor.role if actor else None,
        by=actor.loggable if actor else None,
        refused=refused,
    )
    return response


async def _json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise Invalid("a JSON object body is required")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise Invalid(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object")
    return body


def _int_param(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise Invalid(f"{name} must be a non-negative integer")
    return int(value)


def _statuses(request: web.Request) -> list[str]:
    # Both ?status=a&status=b and ?status=a,b: forms and scripts write either.
    values = [p for v in request.query.getall("status", []) for p in v.split(",") if p]
    if unknown := [s for s in values if s not in STATUSES]:
        raise Invalid(f"unknown status {unknown[0]!r}; known: {', '.join(STATUSES)}")
    return values


def _svc(request: web.Request) -> CaseService:
    return request.app[SERVICE]


def _actor(request: web.Request) -> Actor:
    return request[ACTOR]


@roles(_PUBLIC)
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@roles("citizen", "officer")
async def evidence_types(request: web.Request) -> web.Response:
    svc = _svc(request)
    catalog = await svc.catalog_titles()
    settings = request.app[SETTINGS]
    return web.json_response(
        {
            "case_types": [
                {
                    "code": ct.code,
                    "title": ct.title,
                    "sla_days": ct.sla_days,
                    "purpose": ct.purpose,
                    "legal_basis": ct.legal_basis,
                    "evidence": [
                        {
                            "type": n.type,
                            "subject": n.subject,
                            "title": catalog.get(n.type, {}).get("title"),
                            "service": catalog.get(n.type, {}).get("service"),
                        }
                        for n in ct.evidence
                    ],
                }
                for ct in settings.case_types.values()
            ]
        }
    )


@roles("citizen")
async def apply(request: web.Request) -> web.Response:
    body = await _json_body(request)
    view = await _svc(request).apply(
        _actor(request),
        citizen_id=body.get("citizen_id"),
        juristic_id=body.get("juristic_id"),
        case_type=body.get("case_type"),
    )
    return web.json_response(
        view, status=201, headers={"Location": f"/cases/{view['case_no']}"}, dumps=_dumps
    )


@roles("citizen", "officer")
async def list_cases(request: web.Request) -> web.Response:
    cases = await _svc(request).list_cases(
        _actor(request),
        statuses=_statuses(request),
        case_type=request.query.get("case_type"),
        limit=_int_param(request, "limit", 100),
        offset=_int_param(request, "offset", 0),
    )
    return web.json_response({"cases": cases}, dumps=_dumps)


@roles("officer")
async def officer_cases(request: web.Request) -> web.Response:
    return await list_cases(request)


@roles("citizen", "officer")
async def get_case(request: web.Request) -> web.Response:
    payload = request.query.get("payload", "1") not in ("0", "false", "no")
    view = await _svc(request).get(_actor(request), request.match_info["case_no"], payload=payload)
    return web.json_response(view, dumps=_dumps)


@roles("citizen")
async def confirm(request: web.Request) -> web.Response:
    view = await _svc(request).confirm(_actor(request), request.match_info["case_no"])
    return web.json_response(view, dumps=_dumps)


@roles("citizen")
async def withdraw(request: web.Request) -> web.Response:
    body = await _json_body(request, optional=True)
    view = await _svc(request).withdraw(
        _actor(request), request.match_info["case_no"], body.get("reason")
    )
    return web.json_response(view, dumps=_dumps)


@roles("citizen", "officer")
async def retry(request: web.Request) -> web.Response:
    view = await _svc(request).retry(
        _actor(request), request.match_info["case_no"], request.match_info["evidence_type"]
    )
    return web.json_response(view, dumps=_dumps)


@roles("officer")
async def decision(request: web.Request) -> web.Response:
    body = await _json_body(request)
    view = await _svc(request).decide(
        _actor(request),
        request.match_info["case_no"],
        decision=body.get("decision"),
        reason=body.get("reason"),
    )
    return web.json_response(view, dumps=_dumps)


@roles("officer")
async def overdue(request: web.Request) -> web.Response:
    svc = _svc(request)
    cases = await svc.overdue(_actor(request))
    return web.json_response({"cases": cases}, dumps=_dumps)


@roles("officer")
async def stats(request: web.Request) -> web.Response:
    result = await _svc(request).stats(_actor(request), request.query.get("case_type"))
    return web.json_response(result, dumps=_dumps)


def _dumps(value: Any) -> str:
    # Thai names and addresses stay readable in the body (UTF-8), not \\u-escaped.
    return json.dumps(value, ensure_ascii=False)


def create_app(
    settings: Settings,
    *,
    clock: Clock = system_clock,
    hub: HubClient | None = None,
) -> web.Application:
    """The application; storage and the hub connection open on startup, close on cleanup.

    ``hub`` replaces the client built from ``settings`` (tests point it elsewhere).
    """
    if settings.idp_public_key is None:
        raise ConfigError("idp.public_key is required: without it no user can be trusted")
    verifier = TokenVerifier(
        load_idp_key(settings.idp_public_key),
        issuer=settings.idp_issuer,
        audience=settings.audience,
        max_lifetime=settings.max_token_lifetime,
    )
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    app[VERIFIER] = verifier
    app[SETTINGS] = settings

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = Store(settings.db_path)
        await store.open()
        client = hub or HubClient(
            settings.node_url,
            settings.client_id,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            tls_ca=settings.tls_ca,
            timeout=settings.fetch_timeout,
        )
        await client.start()
        service = CaseService(settings, store, client, clock=clock)
        app[SERVICE] = service
        try:
            await service.recover()
            log.info("case_service.ready", node_url=settings.node_url, db=str(settings.db_path))
            yield
        finally:
            service.cache.clear()
            await client.close()
            await store.close()

    app.cleanup_ctx.append(lifecycle)
    case = "/cases/{case_no:[A-Z0-9][A-Z0-9-]{0,39}}"
    app.router.add_get("/health", health)
    app.router.add_get("/evidence-types", evidence_types)
    app.router.add_post("/cases", apply)
    app.router.add_get("/cases", list_cases)
    app.router.add_get(case, get_case)
    app.router.add_post(f"{case}/confirm", confirm)
    app.router.add_post(f"{case}/withdraw", withdraw)
    app.router.add_post(f"{case}/evidence/{{evidence_type:[a-z0-9_-]{{1,63}}}}/retry", retry)
    app.router.add_post(f"{case}/decision", decision)
    app.router.add_get("/officer/cases", officer_cases)
    app.router.add_get("/officer/overdue", overdue)
    app.router.add_get("/officer/stats", stats)
    return app
