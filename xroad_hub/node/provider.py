"""Server proxy: the provider path. Other nodes deliver signed requests over mutual TLS.

Order of checks: global configuration in force -> the TLS peer is a registered node ->
message well formed -> the client is hosted by that node -> the client member's signature
verifies -> (from here every outcome is logged) the service is ours, known, enabled and the
client holds an access right (default deny) -> the adapter is called -> the answer is signed
with the provider member's key and logged durably -> returned.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web

from adapters import AdapterRequest

from ..errors import SERVER_PROXY, XRoadError
from ..identifiers import ClientId, ServiceId, parse_client_id, parse_service_id
from ..message import (
    CONTENT_TYPE,
    MAX_OVERHEAD,
    Envelope,
    MessageError,
    body_digest,
    canonical,
    decode_envelope,
    encode_envelope,
)
from ..messagelog import LogRecord
from ..rest import (
    check_header_value,
    check_headers,
    check_method,
    check_path,
    check_query,
    filter_request_headers,
    filter_response_headers,
    parse_represented_party,
    request_hash,
)
from ..signing import SignatureError
from ..subjects import Locator, extract_subjects
from .runtime import NodeRuntime, answer_errors, read_body
from .tls import peer_fingerprint

__all__ = ["ServerProxy"]

log = structlog.get_logger("xroad_hub.provider")


def _fail(code: str, message: str) -> XRoadError:
    return XRoadError.server_proxy(code, message)


class ServerProxy:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # The client node always reads X-Road errors as JSON.
        return await answer_errors(
            request,
            self._exchange,
            side="provider",
            prefix=SERVER_PROXY,
            accept="application/json",
        )

    async def _exchange(self, request: web.Request) -> web.StreamResponse:
        started = time.time()
        self.rt.check_logging(SERVER_PROXY)
        conf = self.rt.conf_or_fail(SERVER_PROXY)
        fingerprint = peer_fingerprint(request.transport)
        peer = conf.node_by_cert(fingerprint) if fingerprint else None
        if peer is None:
            raise _fail(
                "SslAuthenticationFailed",
                "the TLS peer is not a node registered in the global configuration",
            )
        data = await read_body(
            request,
            self.rt.max_body_bytes + MAX_OVERHEAD,
            self.rt.body_timeout,
            SERVER_PROXY,
        )
        try:
            env = decode_envelope(data)
        except MessageError as exc:
            raise _fail(exc.code, f"request from node {peer.id}: {exc}") from exc
        meta = env.meta
        client, service = _identify(meta)
        if meta.get("target_node") != str(self.rt.node_id):
            raise _fail("InvalidMessage", f"message is addressed to {meta.get('target_node')}")
        if client not in peer.clients:
            raise _fail(
                "SslAuthenticationFailed", f"node {peer.id} does not host the client {client}"
            )
        try:
            self.rt.globalconf.verifier.verify(
                env.meta_bytes, env.signature, env.cert_der, client.member
            )
        except SignatureError as exc:
            raise _fail("InvalidSignatureValue", f"request signature: {exc}") from exc

        # The request is authentic: whatever happens now is part of the record.
        try:
            return await self._serve(env, client, service, started)
        except XRoadError as err:
            await self._log(env, client, service, started, status=err.status, error=err.code)
            raise
        except asyncio.CancelledError:
            # Shutdown or a dropped connection mid-exchange: the request is still recorded.
            failed = f"{SERVER_PROXY}.InternalError"
            await asyncio.shield(self._log(env, client, service, started, 500, failed))
            raise
        except Exception as exc:
            err = _fail("InternalError", "internal error in the provider's node")
            log.exception("exchange.internal_error", side="provider", detail=err.detail)
            await self._log(env, client, service, started, status=500, error=err.code)
            raise err from exc

    async def _serve(
        self, env: Envelope, client: ClientId, service: ServiceId, started: float
    ) -> web.StreamResponse:
        meta = env.meta
        hosted = self.rt.services.get(service)
        if hosted is None:
            if not any(s.provider == service.provider for s in self.rt.services):
                raise _fail("UnknownMember", f"{service.provider} is not served by this node")
            raise _fail("UnknownService", f"unknown service {service}")
        cfg = hosted.config
        if cfg.disabled:
            raise _fail("ServiceDisabled", cfg.disabled_notice)
        if client not in cfg.allow:
            raise _fail("AccessDenied", f"{client} has no access right to {service}")

        answer = await hosted.adapter.handle(_adapter_request(env, client, service))
        full_service = ServiceId(service.provider, service.service_code, cfg.version)
        rmeta: dict[str, Any] = {
            "v": 1,
            "kind": "response",
            "id": meta.get("id"),
            "request_id": meta.get("request_id"),
            "service": str(full_service),
            "status": answer.status,
            "headers": filter_response_headers(answer.headers),
            "request_hash": request_hash(env.meta_bytes, env.body),
            "created": time.time(),
            "body_sha512": body_digest(answer.body),
        }
        rmeta_bytes = canonical(rmeta)
        signer = self.rt.signer_for(service.provider.member, SERVER_PROXY)
        signature = await signer.sign(rmeta_bytes)
        await self._log(
            env,
            client,
            service,
            started,
            status=answer.status,
            error=None,
            response=(rmeta_bytes, signature, answer.body, signer.cert_der),
        )
        log.info(
            "exchange.served",
            side="provider",
            id=meta.get("id"),
            client=str(client),
            service=str(service),
            status=answer.status,
        )
        return web.Response(
            body=encode_envelope(rmeta_bytes, signature, signer.cert_der, answer.body),
            content_type=CONTENT_TYPE,
        )

    async def _log(
        self,
        env: Envelope,
        client: ClientId,
        service: ServiceId,
        started: float,
        status: int,
        error: str | None,
        response: tuple[bytes, bytes, bytes, bytes] | None = None,
    ) -> None:
        meta = env.meta
        rmeta, rsig, rbody, rcert = response if response else (None, None, None, None)
        hosted = self.rt.services.get(service)
        record = LogRecord(
            message_id=str(meta.get("id")),
            request_id=str(meta.get("request_id")),
            role="provider",
            client=str(client),
            service=str(service),
            user_id=meta.get("user_id"),
            issue=meta.get("issue"),
            represented_party=meta.get("represented_party"),
            method=str(meta.get("method")),
            status=status,
            error_type=error,
            started_at=started,
            finished_at=time.time(),
            request_meta=env.meta_bytes,
            request_signature=env.signature,
            request_body=env.body,
            request_cert=env.cert_der,
            response_meta=rmeta,
            response_signature=rsig,
            response_body=rbody,
            response_cert=rcert,
            subjects=_subjects(env, hosted.config.subjects) if hosted else (),
        )
        await self.rt.record(record, SERVER_PROXY)


def _identify(meta: dict[str, Any]) -> tuple[ClientId, ServiceId]:
    if meta.get("kind") != "request" or meta.get("v") != 1:
        raise _fail("InvalidMessage", "not a version 1 request message")
    try:
        return parse_client_id(str(meta["client"])), parse_service_id(str(meta["service"]))
    except (KeyError, XRoadError) as exc:
        raise _fail("InvalidMessage", "request lacks a valid client or service") from exc


def _adapter_request(env: Envelope, client: ClientId, service: ServiceId) -> AdapterRequest:
    """What the adapter gets: the client node's checks are run again, since that node belongs
    to another organisation, and the X-Road headers are set by this node alone."""
    meta = env.meta
    try:
        method, path, query = str(meta["method"]), str(meta["path"]), str(meta["query"])
        check_method(method)
        check_path(path)
        check_query(query)
        headers = filter_request_headers(check_headers(meta.get("headers")))
        own = [
            ("X-Road-Client", str(client)),
            ("X-Road-Service", str(service)),
            ("X-Road-Id", check_header_value("X-Road-Id", str(meta["id"]))),
            ("X-Road-Request-Id", check_header_value("X-Road-Request-Id", str(meta["request_id"]))),
        ]
        for name, key in (("X-Road-UserId", "user_id"), ("X-Road-Issue", "issue")):
            if meta.get(key):
                own.append((name, check_header_value(name, str(meta[key]))))
        if meta.get("represented_party"):
            party = parse_represented_party(str(meta["represented_party"]))
            own.append(("X-Road-Represented-Party", party))
    except KeyError as exc:
        raise _fail("InvalidMessage", f"request lacks {exc}") from exc
    except XRoadError as exc:
        raise _fail("InvalidMessage", f"request from the client's node: {exc.message}") from exc
    return AdapterRequest(method, path, query, tuple(headers + own), env.body)


def _subjects(env: Envelope, locators: tuple[Locator, ...]) -> tuple[str, ...]:
    """The data subjects of a request, also of one that was refused (a citizen wants to know
    who tried); a request too malformed to read concerns nobody we can name."""
    if not locators:
        return ()
    meta = env.meta
    try:
        headers = [(str(k), str(v)) for k, v in meta.get("headers") or []]
        return extract_subjects(
            locators, str(meta.get("path") or ""), str(meta.get("query") or ""), headers
        )
    except (TypeError, ValueError):
        return ()
