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
from urllib.parse import parse_qsl

import structlog
from aiohttp import web
from lxml import etree

from adapters import AdapterRequest, AdapterResponse
from xroad_hub.errors import SERVER_PROXY, XRoadError
from xroad_hub.federation import ServiceConfig
from xroad_hub.messagelog import LogRecord
from xroad_hub.node.limits import body_reservation
from xroad_hub.node.metaservices import METASERVICES, answer_metaservice
from xroad_hub.node.opmonitoring import timed
from xroad_hub.node.runtime import NodeRuntime, answer_errors, read_body
from xroad_hub.node.tls import peer_fingerprint
from xroad_hub.protocol.globalconf import NodeEntry
from xroad_hub.protocol.identifiers import ClientId, ServiceId, parse_client_id, parse_service_id
from xroad_hub.protocol.jsonbody import (
    JsonBodyError,
    is_json_media,
    json_charset_error,
    loads_json,
    utf8_json_text,
)
from xroad_hub.protocol.message import (
    CONTENT_TYPE,
    MAX_OVERHEAD,
    Envelope,
    MessageError,
    body_digest,
    canonical,
    decode_envelope,
    encode_envelope,
)
from xroad_hub.protocol.rest import (
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
from xroad_hub.protocol.signing import SignatureError
from xroad_hub.protocol.soap import (
    SoapError,
    SoapMessage,
    check_echo,
    parse_soap,
    soap_request_hash,
    with_request_hash,
)
from xroad_hub.protocol.subjects import (
    Locator,
    SubjectError,
    answer_subjects,
    extract_subjects,
    json_body_fields,
)
from xroad_hub.protocol.xmlsafe import XmlLimits

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
        # Only a registered node gets its body read, and no more at once than its share.
        limit = self.rt.max_body_bytes + MAX_OVERHEAD
        with self.rt.peer_limits.admit(str(peer.id), body_reservation(request, limit)):
            return await self._authentic(request, peer, started)

    async def _authentic(
        self, request: web.Request, peer: NodeEntry, started: float
    ) -> web.StreamResponse:
        limit = self.rt.max_body_bytes + MAX_OVERHEAD
        data = await read_body(request, limit, self.rt.body_timeout, SERVER_PROXY)
        try:
            env = await self.rt.off_loop(decode_envelope, data)
        except MessageError as exc:
            raise _fail(exc.code, f"request from node {peer.id}: {exc}") from exc
        meta = env.meta
        client, service = _identify(meta)
        if meta.get("target_node") != str(self.rt.node_id):
            raise _fail("InvalidMessage", f"message is addressed to {meta.get('target_node')}")
        # A node's owner member is a client of its node (X-Road), e.g. for GET /wsdl.
        if client not in peer.clients and client != peer.id.owner:
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
        limits = XmlLimits(max_bytes=self.rt.max_body_bytes)
        soap = None
        if meta.get("protocol") == "soap":
            soap = await self.rt.off_loop(_soap_request, env, client, service, limits)
        hosted = self.rt.services.get(service.unversioned)
        version: str | None = service.service_version
        answer_subj: tuple[str, ...] = ()
        opmon = self.rt.opmon
        if hosted is None and opmon is not None and opmon.addresses_me(service):
            answer = await opmon.metaservice(client, service, soap)
            answer = await self.rt.off_loop(_soap_answer, soap, answer, limits)  # type: ignore[arg-type]
        elif hosted is None and self._metaservice(service):
            query = str(meta.get("query") or "")
            answer = answer_metaservice(self.rt.services.values(), client, service, query, soap)
            if soap is not None:
                answer = await self.rt.off_loop(_soap_answer, soap, answer, limits)
        else:
            if hosted is None:
                if not self._serves(service.provider):
                    raise _fail("UnknownMember", f"{service.provider} is not served by this node")
                raise _fail("UnknownService", f"unknown service {service}")
            cfg = hosted.config
            if service.service_version and service.service_version != cfg.version:
                raise _fail("UnknownService", f"{service} is served as version {cfg.version}")
            version = cfg.version
            if cfg.disabled:
                raise _fail("ServiceDisabled", cfg.disabled_notice)
            if client not in cfg.allow:
                raise _fail("AccessDenied", f"{client} has no access right to {service}")
            if cfg.purposes and meta.get("purpose") not in cfg.purposes:
                given = meta.get("purpose")
                raise _fail(
                    "AccessDenied",
                    f"{service} is only served for the purposes {', '.join(cfg.purposes)}; "
                    + (
                        f"the request's purpose {given!r} is not one of them"
                        if given
                        else "the request names no purpose (send X-Road-Purpose, or"
                        " xh:purpose in a SOAP header)"
                    ),
                )
            _check_protocol(cfg, soap)
            if soap is not None:
                headers = tuple((k, v) for k, v in soap_request_headers(meta.get("headers")))
                answer = await timed(hosted.adapter.handle(
                    AdapterRequest("POST", "", "", headers, env.body, soap=soap)
                ))  # fmt: skip
                answer = await self.rt.off_loop(_soap_answer, soap, answer, limits)
            else:
                request = _adapter_request(env, client, service)
                _check_readable(cfg, request)
                answer = await timed(hosted.adapter.handle(request))
            answer_subj = await _answer_subjects(cfg, answer)
        full_service = ServiceId(service.provider, service.service_code, version)
        rmeta: dict[str, Any] = {
            "v": 1,
            "kind": "response",
            "id": meta.get("id"),
            "request_id": meta.get("request_id"),
            "service": str(full_service),
            "status": answer.status,
            "headers": (
                filter_response_headers(answer.headers)
                if soap is None
                else [(k, v) for k, v in answer.headers if k.lower() == "content-type"]
            ),
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
            soap=soap,
            answer_subjects=answer_subj,
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

    def _serves(self, provider: ClientId) -> bool:
        return any(s.provider == provider for s in self.rt.services)

    def _metaservice(self, service: ServiceId) -> bool:
        return service.service_code in METASERVICES and self._serves(service.provider)

    async def _log(
        self,
        env: Envelope,
        client: ClientId,
        service: ServiceId,
        started: float,
        status: int,
        error: str | None,
        response: tuple[bytes, bytes, bytes, bytes] | None = None,
        soap: SoapMessage | None = None,
        answer_subjects: tuple[str, ...] = (),
    ) -> None:
        meta = env.meta
        rmeta, rsig, rbody, rcert = response if response else (None, None, None, None)
        hosted = self.rt.services.get(service.unversioned)
        locators = hosted.config.subjects if hosted else ()
        # A refused SOAP request may be parsed here for its subjects: off the event loop.
        subjects = await self.rt.off_loop(_subjects, env, locators, soap) if locators else ()
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
            subjects=tuple(sorted(set(subjects) | set(answer_subjects))),
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
        for name, key in (
            ("X-Road-UserId", "user_id"),
            ("X-Road-Issue", "issue"),
            ("X-Road-Purpose", "purpose"),
            ("X-Road-Legal-Basis", "legal_basis"),
        ):
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


def _subjects(
    env: Envelope, locators: tuple[Locator, ...], soap: SoapMessage | None
) -> tuple[str, ...]:
    """The data subjects of a request, also of one that was refused (a citizen wants to know
    who tried); a request too malformed to read concerns nobody we can name."""
    if not locators:
        return ()
    meta = env.meta
    try:
        headers = [(str(k), str(v)) for k, v in meta.get("headers") or []]
        fields = _body_fields(env, soap) if any(loc.kind == "body" for loc in locators) else None
        return extract_subjects(
            locators, str(meta.get("path") or ""), str(meta.get("query") or ""), headers, fields
        )
    except (TypeError, ValueError):
        return ()


def _body_fields(env: Envelope, soap: SoapMessage | None) -> dict[str, list[str]]:
    """Named values of a request body for ``body:NAME`` subject locators: leaf elements of a
    SOAP body, or top-level scalar members of a JSON object."""
    fields: dict[str, list[str]] = {}
    if env.meta.get("protocol") == "soap":
        # Parsed again only for a request refused before it was read (rare).
        soap = soap or parse_soap(_content_type(env.meta.get("headers")), env.body, kind="request")
        for el in soap.body_element.iter():
            if isinstance(el.tag, str) and len(el) == 0 and el.text:
                fields.setdefault(etree.QName(el).localname, []).append(el.text)
        return fields
    media = _content_type(env.meta.get("headers")).split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        for key, value in parse_qsl(env.body.decode("utf-8"), errors="strict"):
            fields.setdefault(key, []).append(value)
        return fields
    try:
        # The adapters' own reading (jsonbody.py): a body read otherwise was refused.
        return json_body_fields(loads_json(env.body)) if env.body.strip() else fields
    except JsonBodyError:
        return fields


def _check_readable(cfg: ServiceConfig, request: AdapterRequest) -> None:
    """A REST request is forwarded only when the node reads it as the service will: JSON is
    UTF-8 without a BOM, with unique member names (RFC 8259), whatever the service; and a
    service whose subject is in the body or query gets one the node can read for it."""
    types = [v for k, v in request.headers if k.lower() == "content-type"]
    if len(types) > 1:
        raise XRoadError.client("BadRequest", "the request has more than one Content-Type")
    content_type = types[0] if types else ""
    media = content_type.split(";", 1)[0].strip().lower()
    kinds = {loc.kind for loc in cfg.subjects}
    # The SOAP bridge reads a body without a Content-Type as JSON too.
    reads_body = "body" in kinds or cfg.adapter == "soap"
    try:
        if is_json_media(content_type):
            if why := json_charset_error(content_type):
                raise JsonBodyError(why)
            if request.body:
                if reads_body:
                    loads_json(request.body)
                else:
                    utf8_json_text(request.body)
        elif "body" in kinds and request.body.strip():
            if media == "application/x-www-form-urlencoded":
                parse_qsl(request.body.decode("utf-8"), errors="strict")
            elif not media:
                loads_json(request.body)
            else:
                raise JsonBodyError(
                    f"{cfg.id} reads whom a request concerns from its body: send "
                    f"application/json (UTF-8), not {media}"
                )
        if "query" in kinds and request.query:
            parse_qsl(request.query, errors="strict")
    except JsonBodyError as exc:
        raise XRoadError.client("BadRequest", str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise XRoadError.client(
            "BadRequest", "the query or form body is not percent-encoded UTF-8"
        ) from exc


# Answers larger than this are read for their persons off the event loop.
_INLINE_ANSWER = 256 * 1024


async def _answer_subjects(cfg: ServiceConfig, answer: AdapterResponse) -> tuple[str, ...]:
    """The persons the service's answer names (the bytes the node signs and logs); a
    successful answer the registration's locators cannot read is not served."""
    if not cfg.answer_subjects:
        return ()
    content_type = next((v for k, v in answer.headers if k.lower() == "content-type"), "")
    strict = 200 <= answer.status < 300
    args = (cfg.answer_subjects, content_type, answer.body)
    try:
        if len(answer.body) > _INLINE_ANSWER:
            return await asyncio.to_thread(answer_subjects, *args, strict=strict)
        return answer_subjects(*args, strict=strict)
    except SubjectError as exc:
        raise _fail("ServiceFailed", f"{cfg.id}: {exc}") from exc


def _content_type(headers: Any) -> str:
    for k, v in soap_request_headers(headers):
        if k.lower() == "content-type":
            return v
    return ""


def soap_request_headers(headers: Any) -> list[tuple[str, str]]:
    """Only Content-Type passes from a SOAP client to the service. SOAPAction is the
    adapter's to set, from the service's WSDL: a client's choice (even one signed by a
    client node that still sends it) could make the service run another operation than
    the one this node checked against the access rights."""
    return [(k, v) for k, v in check_headers(headers) if k.lower() == "content-type"]


def _check_protocol(cfg: ServiceConfig, soap: SoapMessage | None) -> None:
    """A pass-through SOAP service reads the X-Road header itself, so it only ever gets SOAP
    messages this node has checked against the signed metadata; a REST service gets r1."""
    if cfg.adapter == "soap" and cfg.options.get("mode") == "passthrough" and soap is None:
        raise XRoadError.client(
            "InvalidRequest", f"{cfg.id} is a SOAP service: call it with X-Road SOAP 4.0"
        )
    if cfg.adapter != "soap" and soap is not None:
        raise XRoadError.client(
            "InvalidRequest", f"{cfg.id} is a REST service: call it with X-Road REST (r1)"
        )


def _soap_request(
    env: Envelope, client: ClientId, service: ServiceId, limits: XmlLimits
) -> SoapMessage:
    """The SOAP message of a request, which must say exactly what the signed metadata says
    (the client's node signed both; a mismatch means that node is broken or lying)."""
    meta = env.meta
    try:
        soap = parse_soap(_content_type(meta.get("headers")), env.body, kind="request",
                          limits=limits)  # fmt: skip
    except (SoapError, XRoadError) as exc:
        raise _fail("InvalidMessage", f"SOAP request from the client's node: {exc}") from exc
    h = soap.header
    assert h is not None  # requests always have one (parse_soap)
    if (
        h.client != client
        or h.service != service
        or h.id != meta.get("id")
        or h.user_id != meta.get("user_id")
        or h.issue != meta.get("issue")
        or not _same_purpose(h.purpose, h.legal_basis, meta)
    ):
        raise _fail("InvalidMessage", "the SOAP header differs from the signed metadata")
    return soap


def _same_purpose(purpose: str | None, legal_basis: str | None, meta: dict[str, Any]) -> bool:
    """The SOAP header names the signed purpose and legal basis, or none where the client's
    node applied its registered default (flagged in the signed metadata)."""
    if meta.get("purpose_default") is True:
        return purpose is None and legal_basis in (None, meta.get("legal_basis"))
    return purpose == meta.get("purpose") and legal_basis == meta.get("legal_basis")


def _soap_answer(
    request: SoapMessage, answer: AdapterResponse, limits: XmlLimits
) -> AdapterResponse:
    """The service's SOAP answer, checked (it echoes this request's header) and given the
    request hash; a Fault of the service without X-Road header passes through as its own
    answer (with one, it is checked like any answer)."""
    content_type = next((v for k, v in answer.headers if k.lower() == "content-type"), "")
    try:
        response = parse_soap(content_type, answer.body, kind="response", limits=limits)
        if response.is_fault and response.header is None:
            return AdapterResponse(answer.status, (("Content-Type", content_type),), answer.body)
        assert request.header is not None
        check_echo(request.header, response.header)
    except SoapError as exc:
        raise _fail(
            "ServiceFailed" if exc.code != "InconsistentResponse" else exc.code,
            f"the service's SOAP answer: {exc.message}",
        ) from exc
    body = with_request_hash(response, soap_request_hash(request.soap_part))
    return AdapterResponse(answer.status, (("Content-Type", content_type),), body)
