"""Server proxy: the provider path. Other nodes deliver signed requests over mutual TLS.

Order of checks: global configuration in force -> the TLS peer is a registered node ->
message well formed -> the client is hosted by that node -> the client member's signature
verifies -> (from here every outcome is logged) the service is ours, known, enabled and the
client holds an access right (default deny) -> the adapter is called -> the answer is signed
with the provider member's key and logged durably -> returned.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from urllib.parse import parse_qsl

import structlog
from aiohttp import web
from lxml import etree

from adapters import AdapterRequest, AdapterResponse
from xroad_hub.errors import CLIENT, SERVER_PROXY, ProtocolError, XRoadError, blame_on
from xroad_hub.federation import ServiceConfig
from xroad_hub.messagelog import LogRecord
from xroad_hub.node.limits import body_reservation
from xroad_hub.node.metaservices import METASERVICES, answer_metaservice
from xroad_hub.node.opmonitoring import timed
from xroad_hub.node.runtime import HostedService, NodeRuntime, read_body
from xroad_hub.node.tls import peer_fingerprint
from xroad_hub.protocol.access import (
    Access,
    check_addressed,
    check_endpoint,
    check_hosted,
    check_not_revoked,
    check_own_node,
    check_protocol,
    decide_access,
    signed_purpose_matches,
)
from xroad_hub.protocol.exchange import AnswerMeta, Headers, RequestMeta
from xroad_hub.protocol.globalconf import GlobalConf, NodeEntry
from xroad_hub.protocol.identifiers import ServiceId
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

Services = Mapping[ServiceId, HostedService]


def _fail(code: str, message: str) -> XRoadError:
    return XRoadError.server_proxy(code, message)


class ServerProxy:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """A signed request of another node over HTTP; errors are answered by the peer
        listener's middleware (x_road_errors, as JSON: the client node always reads them so)."""
        started = time.time()
        conf, peer = self.authenticate(peer_fingerprint(request.transport))
        # Only a registered node gets its body read, and no more at once than its share.
        limit = self.max_message_bytes
        with self.admit(peer, body_reservation(request, limit)):
            data = await read_body(request, limit, self.rt.body_timeout, SERVER_PROXY)
            answer = await self.serve(conf, peer, data, started)
        return web.Response(body=answer, content_type=CONTENT_TYPE)

    @property
    def max_message_bytes(self) -> int:
        return self.rt.max_body_bytes + MAX_OVERHEAD

    def registered_peer(self, conf: GlobalConf, fingerprint: str | None) -> NodeEntry:
        """The node whose authentication certificate has this fingerprint: registered in
        ``conf`` and not revoked."""
        revoked = conf.revoked(fingerprint) if fingerprint else None
        if revoked is not None:
            raise _fail(
                "SslAuthenticationFailed",
                f"the client's node may not connect: {revoked.describe()}",
            )
        peer = conf.node_by_cert(fingerprint) if fingerprint else None
        if peer is None:
            raise _fail(
                "SslAuthenticationFailed",
                "the TLS peer is not a node registered in the global configuration",
            )
        return peer

    def authenticate(self, fingerprint: str | None) -> tuple[GlobalConf, NodeEntry]:
        """Whether this node takes an exchange now, and from which node: the checks before
        any byte of a message is read, by the configuration in force now."""
        self.rt.check_logging(SERVER_PROXY)
        conf = self.rt.conf_or_fail(SERVER_PROXY)
        with blame_on(SERVER_PROXY):
            check_own_node(conf, self.rt.node_id)
        return conf, self.registered_peer(conf, fingerprint)

    def admit(self, peer: NodeEntry, reserve: int) -> AbstractContextManager[None]:
        """The peer's share of this node: ``reserve`` bytes of message, one exchange more."""
        return self.rt.peer_limits.admit(str(peer.id), reserve)

    async def serve(self, conf: GlobalConf, peer: NodeEntry, data: bytes, started: float) -> bytes:
        """The signed answer (envelope) to the message ``data`` of an authenticated and
        admitted peer, whichever transport carried it; refusals are raised."""
        try:
            # A small message is decoded here: the thread hop costs more than the digest
            # (median, interleaved on this 2-core machine: 1.7 KB 23 us here, 211 us through
            # the pool; 64 KiB 179 us vs 374 us); a large one's SHA-512 (~6 ms for 10 MiB)
            # must not hold up the other exchanges.
            if len(data) <= _INLINE_ENVELOPE:
                env = decode_envelope(data)
            else:
                env = await self.rt.off_loop(decode_envelope, data)
        except MessageError as exc:
            context = f"request from node {peer.id}"
            raise XRoadError.blame(SERVER_PROXY, exc, context=context) from exc
        with blame_on(SERVER_PROXY):
            meta = RequestMeta.parse(env.meta)
            check_addressed(meta, self.rt.node_id)
            check_hosted(meta.client, peer)
            check_not_revoked(conf, env.cert_der, "the request's signing certificate")
            # Nor is a request served whose answer this node could only sign with a revoked
            # certificate: the client's node would refuse the answer after the service ran.
            own = self.rt.signers.get(meta.service.provider.member)
            if own is not None:
                check_not_revoked(conf, own.cert_der, "the provider's node's signing certificate")
        try:
            self.rt.globalconf.verifier.verify(
                env.meta_bytes, env.signature, env.cert_der, meta.client.member
            )
        except SignatureError as exc:
            raise _fail("InvalidSignatureValue", f"request signature: {exc}") from exc

        # The request is authentic: whatever happens now is part of the record. It is served
        # by the set of services in force now, to its end, whatever an administrator changes
        # meanwhile (runtime.ServiceTable).
        with self.rt.services.lease() as services:
            try:
                with blame_on(SERVER_PROXY):
                    return await self._serve(env, meta, started, services)
            except XRoadError as err:
                await self._log(env, meta, started, services, status=err.status, error=err.code)
                raise
            except asyncio.CancelledError:
                # Shutdown or a dropped connection mid-exchange: the request is still recorded.
                failed = f"{SERVER_PROXY}.InternalError"
                await asyncio.shield(self._log(env, meta, started, services, 500, failed))
                raise
            except Exception as exc:
                err = _fail("InternalError", "internal error in the provider's node")
                log.exception("exchange.internal_error", side="provider", detail=err.detail)
                await self._log(env, meta, started, services, status=500, error=err.code)
                raise err from exc

    async def _serve(
        self, env: Envelope, meta: RequestMeta, started: float, services: Services
    ) -> bytes:
        """Serve an authentic request, in steps that each must hold (default deny)."""
        limits = _xml_limits(self.rt.max_body_bytes)
        # 1. A SOAP message says exactly what the signed metadata says.
        soap = None
        if meta.protocol == "soap":
            soap = await self.rt.parse(len(env.body), _soap_request, env, meta, limits)
        # 2. The service is ours, known and enabled, and the client holds an access right.
        hosted = services.get(meta.service.unversioned)
        opmon = self.rt.opmon
        # X-Road's monitoring services of this node's owner decide themselves who may read.
        monitoring = hosted is None and opmon is not None and opmon.addresses_me(meta.service)
        # Global groups as the configuration in force defines them (checked at the start).
        conf = self.rt.globalconf.current()
        groups = conf.groups if conf is not None else {}
        access = (
            Access(meta.service, None)
            if monitoring
            else decide_access(
                hosted.config if hosted else None,
                meta,
                # A hosted service's provider is served: the walk over every service (a
                # dataclass comparison each) is for requests of services it does not host.
                provider_served=hosted is not None
                or any(s.provider == meta.service.provider for s in services),
                metaservices=METASERVICES,
                groups=groups,
            )
        )
        answer_subj: tuple[str, ...] = ()
        if monitoring:
            assert opmon is not None
            # 3m. The node's operational data or health data.
            answer = await opmon.metaservice(meta.client, meta.service, soap)
            assert soap is not None  # the monitoring services refuse anything but SOAP
            answer = await self.rt.parse(len(answer.body), _soap_answer, soap, answer, limits)
        elif hosted is None:
            # 3a. A metaservice of this node answers.
            answer = answer_metaservice(
                services.values(), meta.client, meta.service, meta.query, soap, groups
            )
            if soap is not None:
                answer = await self.rt.parse(len(answer.body), _soap_answer, soap, answer, limits)
        else:
            cfg = hosted.config
            # 3b. The client system called the service in the protocol it speaks...
            with blame_on(CLIENT):
                check_protocol(cfg, meta)
            # ... and the service answers what this node has read as the service will.
            if soap is not None:
                headers = tuple(soap_request_headers(meta.headers))
                answer = await timed(hosted.adapter.handle(
                    AdapterRequest("POST", "", "", headers, env.body, soap=soap)
                ))  # fmt: skip
                answer = await self.rt.parse(len(answer.body), _soap_answer, soap, answer, limits)
            else:
                request = _adapter_request(meta, env.body)
                check_endpoint(cfg, request.method, request.path)
                _check_readable(cfg, request)
                answer = await timed(hosted.adapter.handle(request))
            # 4. The persons the answer names are read for the citizens' trackers.
            answer_subj = await _answer_subjects(cfg, answer)
        # 5. The answer is signed by the provider member, 6. logged durably, 7. returned.
        rmeta_bytes = AnswerMeta(
            id=meta.id,
            request_id=meta.request_id,
            service=access.service,
            status=answer.status,
            headers=tuple(
                filter_response_headers(answer.headers)
                if soap is None
                else [(k, v) for k, v in answer.headers if k.lower() == "content-type"]
            ),
            request_hash=request_hash(env.meta_bytes, env.body),
            created=time.time(),
            body_sha512=body_digest(answer.body),
        ).encode()
        signer = self.rt.signer_for(meta.service.provider.member, SERVER_PROXY)
        signature = await signer.sign(rmeta_bytes)
        await self._log(
            env,
            meta,
            started,
            services,
            status=answer.status,
            error=None,
            response=(rmeta_bytes, signature, answer.body, signer.cert_der),
            soap=soap,
            answer_subjects=answer_subj,
        )
        log.info(
            "exchange.served",
            side="provider",
            id=meta.id,
            client=str(meta.client),
            service=str(meta.service),
            status=answer.status,
        )
        return encode_envelope(rmeta_bytes, signature, signer.cert_der, answer.body)

    async def _log(
        self,
        env: Envelope,
        meta: RequestMeta,
        started: float,
        services: Services,
        status: int,
        error: str | None,
        response: tuple[bytes, bytes, bytes, bytes] | None = None,
        soap: SoapMessage | None = None,
        answer_subjects: tuple[str, ...] = (),
    ) -> None:
        rmeta, rsig, rbody, rcert = response if response else (None, None, None, None)
        hosted = services.get(meta.service.unversioned)
        locators = hosted.config.subjects if hosted else ()
        # A refused SOAP request may be parsed here for its subjects (off the loop if large).
        subjects = (
            await self.rt.parse(len(env.body), _subjects, env, meta, locators, soap)
            if locators
            else ()
        )
        record = LogRecord(
            message_id=meta.id,
            request_id=meta.request_id,
            role="provider",
            client=str(meta.client),
            service=str(meta.service),
            user_id=meta.user_id,
            issue=meta.issue,
            represented_party=meta.represented_party,
            method=meta.method,
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


def _adapter_request(meta: RequestMeta, body: bytes) -> AdapterRequest:
    """What the adapter gets: the client node's checks are run again, since that node belongs
    to another organisation, and the X-Road headers are set by this node alone."""
    try:
        check_method(meta.method)
        check_path(meta.path)
        check_query(meta.query)
        headers = filter_request_headers(check_headers(list(meta.headers)))
        own = [
            ("X-Road-Client", str(meta.client)),
            ("X-Road-Service", str(meta.service)),
            ("X-Road-Id", check_header_value("X-Road-Id", meta.id)),
            ("X-Road-Request-Id", check_header_value("X-Road-Request-Id", meta.request_id)),
        ]
        for name, value in (
            ("X-Road-UserId", meta.user_id),
            ("X-Road-Issue", meta.issue),
            ("X-Road-Purpose", meta.purpose),
            ("X-Road-Legal-Basis", meta.legal_basis),
        ):
            if value:
                own.append((name, check_header_value(name, value)))
        if meta.represented_party:
            own.append(
                ("X-Road-Represented-Party", parse_represented_party(meta.represented_party))
            )
    except ProtocolError as exc:
        raise XRoadError.blame(
            SERVER_PROXY, ProtocolError("InvalidMessage", exc.message),
            context="request from the client's node",
        ) from exc  # fmt: skip
    return AdapterRequest(meta.method, meta.path, meta.query, tuple(headers + own), body)


def _subjects(
    env: Envelope, meta: RequestMeta, locators: tuple[Locator, ...], soap: SoapMessage | None
) -> tuple[str, ...]:
    """The data subjects of a request, also of one that was refused (a citizen wants to know
    who tried); a request too malformed to read concerns nobody we can name."""
    if not locators:
        return ()
    try:
        fields = (
            _body_fields(env, meta, soap) if any(loc.kind == "body" for loc in locators) else None
        )
        return extract_subjects(locators, meta.path, meta.query, list(meta.headers), fields)
    except (TypeError, ValueError):
        return ()


def _body_fields(
    env: Envelope, meta: RequestMeta, soap: SoapMessage | None
) -> dict[str, list[str]]:
    """Named values of a request body for ``body:NAME`` subject locators: leaf elements of a
    SOAP body, or top-level scalar members of a JSON object."""
    fields: dict[str, list[str]] = {}
    if meta.protocol == "soap":
        # Parsed again only for a request refused before it was read (rare).
        soap = soap or parse_soap(_content_type(meta.headers), env.body, kind="request")
        for el in soap.body_element.iter():
            if isinstance(el.tag, str) and len(el) == 0 and el.text:
                fields.setdefault(etree.QName(el).localname, []).append(el.text)
        return fields
    media = _content_type(meta.headers).split(";", 1)[0].strip().lower()
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
# Request messages larger than this are decoded (body digest) off the event loop.
_INLINE_ENVELOPE = 64 * 1024


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


def _content_type(headers: Headers) -> str:
    for k, v in soap_request_headers(headers):
        if k.lower() == "content-type":
            return v
    return ""


def soap_request_headers(headers: Headers) -> list[tuple[str, str]]:
    """Only Content-Type passes from a SOAP client to the service. SOAPAction is the
    adapter's to set, from the service's WSDL: a client's choice (even one signed by a
    client node that still sends it) could make the service run another operation than
    the one this node checked against the access rights."""
    return [(k, v) for k, v in check_headers(list(headers)) if k.lower() == "content-type"]


@functools.lru_cache(maxsize=8)
def _xml_limits(max_bytes: int) -> XmlLimits:
    # Immutable, so one per body limit: made for every exchange, SOAP or not.
    return XmlLimits(max_bytes=max_bytes)


def _soap_request(env: Envelope, meta: RequestMeta, limits: XmlLimits) -> SoapMessage:
    """The SOAP message of a request, which must say exactly what the signed metadata says
    (the client's node signed both; a mismatch means that node is broken or lying)."""
    try:
        soap = parse_soap(_content_type(meta.headers), env.body, kind="request", limits=limits)
    except ProtocolError as exc:
        raise _fail("InvalidMessage", f"SOAP request from the client's node: {exc}") from exc
    h = soap.header
    assert h is not None  # requests always have one (parse_soap)
    if (
        h.client != meta.client
        or h.service != meta.service
        or h.id != meta.id
        or h.user_id != meta.user_id
        or h.issue != meta.issue
        or not signed_purpose_matches(meta, h.purpose, h.legal_basis)
    ):
        raise _fail("InvalidMessage", "the SOAP header differs from the signed metadata")
    return soap


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
