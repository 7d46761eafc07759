"""Client proxy: the consumer path. Client systems call their own node with X-Road REST r1.

Order of checks (each failure answers with an X-Road error and nothing is sent on):
global configuration in force -> client authenticated as the subsystem it names and
admitted within its limits (client_authentication, a middleware: before any handler runs)
-> URI and X-Road headers -> body within limits -> provider's node found -> request signed
and sent -> answer's signature, body digest, ids and request hash verified -> exchange
logged durably -> answer returned.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from xroad_hub.errors import CLIENT, CLIENT_PROXY, ProtocolError, XRoadError, blame_on
from xroad_hub.messagelog import LogRecord
from xroad_hub.node.clientauth import Caller, ClientRegistration, Credentials
from xroad_hub.node.limits import body_reservation
from xroad_hub.node.metaservices import (
    client_json,
    client_list_xml,
    point_wsdl_at,
)
from xroad_hub.node.peer import PeerReply
from xroad_hub.node.runtime import Handler, NodeRuntime, read_body
from xroad_hub.node.tls import peer_fingerprint
from xroad_hub.protocol.access import (
    check_answer,
    check_not_revoked,
    check_own_node,
    node_serving,
    purpose_of,
)
from xroad_hub.protocol.exchange import AnswerMeta, RequestMeta, new_id
from xroad_hub.protocol.globalconf import GlobalConf
from xroad_hub.protocol.identifiers import (
    ClientId,
    NodeId,
    ServiceId,
    SubsystemId,
    parse_client_id,
    parse_node_id,
    valid_part,
)
from xroad_hub.protocol.message import (
    CONTENT_TYPE,
    Envelope,
    body_digest,
    decode_envelope,
    encode_envelope,
)
from xroad_hub.protocol.rest import (
    check_header_value,
    filter_request_headers,
    filter_response_headers,
    parse_r1_target,
    parse_represented_party,
    select_client,
)
from xroad_hub.protocol.signing import SignatureError
from xroad_hub.protocol.soap import SoapError, parse_soap, soap_request_hash
from xroad_hub.protocol.xmlsafe import XmlLimits

__all__ = [
    "CALLER",
    "Answer",
    "Authenticated",
    "Call",
    "ClientProxy",
    "client_authentication",
    "named_client",
]

log = structlog.get_logger("xroad_hub.consumer")
_DROP_TOKEN = frozenset({"authorization"})
_ERROR_CODE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")


@dataclass(frozen=True, slots=True)
class Call:
    """One request of an authenticated client system, ready to be signed and sent."""

    client: ClientId
    service: ServiceId
    method: str
    path: str  # raw, percent-encoded remainder after the service code ("" or "/...")
    query: str
    headers: list[tuple[str, str]]  # already filtered: what the service may see
    body: bytes
    message_id: str
    user_id: str | None = None
    issue: str | None = None
    represented_party: str | None = None
    # Why the data is asked for (evidence requests); signed, logged, shown to citizens.
    purpose: str | None = None
    legal_basis: str | None = None
    evidence_type: str | None = None
    security_server: NodeId | None = None
    protocol: str = "rest"  # "rest" (r1) or "soap" (SOAP 4.0: the body is the SOAP message)


@dataclass(frozen=True, slots=True)
class Answer:
    """The provider's verified answer; it has been logged before it is returned."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    message_id: str
    request_id: str
    request_hash: str
    service: str


class ClientProxy:
    def __init__(
        self,
        runtime: NodeRuntime,
        *,
        purpose_defaults: Mapping[ClientId, tuple[str, str | None]] | None = None,
        public_urls: Mapping[str, str] | None = None,
    ) -> None:
        """``purpose_defaults``: per client subsystem, the purpose and legal basis its
        registration gives for requests that name none. ``public_urls``: the node's own
        client-facing URLs by listener ("client", "client_tls"), for addresses it hands out."""
        self.rt = runtime
        # The node's own mapping, changed in place when an administrator registers a client
        # (an empty one too: 'or {}' would swap it for a copy no change ever reaches).
        self.purpose_defaults = purpose_defaults if purpose_defaults is not None else {}
        self.public_urls = public_urls if public_urls is not None else {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """An r1 request of the client X-Road-Client names, authenticated and admitted by
        the listener's middleware (client_authentication); its errors are answered by the
        listener's middleware too (x_road_errors)."""
        raw_path, _, raw_query = request.raw_path.partition("?")
        target = parse_r1_target(raw_path, raw_query)
        h = request.headers
        message_id = check_header_value("X-Road-Id", h.get("X-Road-Id") or new_id())
        reg = named_client(request)
        client = reg.id
        represented = h.get("X-Road-Represented-Party")
        security_server = h.get("X-Road-Security-Server")
        body = await read_body(request, self.rt.max_body_bytes, self.rt.body_timeout, CLIENT)
        # Node authentication tokens are for this node only; never forward them.
        drop = _DROP_TOKEN if reg.auth == "jwt" else frozenset()
        headers = filter_request_headers(h.items(), drop=drop)
        if "Accept" not in h:
            headers.append(("Accept", "application/json"))
        answer = await self.send(
            Call(
                client=client,
                service=target.service,
                method=request.method,
                path=target.path,
                query=target.query,
                headers=headers,
                body=body,
                message_id=message_id,
                user_id=_opt(h, "X-Road-UserId"),
                issue=_opt(h, "X-Road-Issue"),
                represented_party=parse_represented_party(represented) if represented else None,
                purpose=_opt(h, "X-Road-Purpose"),
                legal_basis=_opt(h, "X-Road-Legal-Basis"),
                security_server=parse_node_id(security_server) if security_server else None,
            )
        )
        out = filter_response_headers(answer.headers)
        out += [
            ("X-Road-Client", str(client)),
            ("X-Road-Service", answer.service),
            ("X-Road-Id", message_id),
            ("X-Road-Request-Id", answer.request_id),
            ("X-Road-Request-Hash", answer.request_hash),
        ]
        resp = web.Response(status=answer.status, body=answer.body)
        for k, v in out:
            resp.headers.add(k, v)
        return resp

    async def send(self, call: Call) -> Answer:
        """Route, sign, send, verify and log one request; raises XRoadError.

        The caller has authenticated the client and checked the logging and the global
        configuration are in order (both are checked again here, cheaply)."""
        started = time.time()
        self.rt.check_logging(CLIENT_PROXY)
        conf = self.rt.conf_or_fail(CLIENT_PROXY)
        client = call.client
        with blame_on(CLIENT_PROXY):
            check_own_node(conf, self.rt.node_id)
            peer = node_serving(conf, call.service.provider, call.security_server)
        signer = self.rt.signer_for(client.member, CLIENT_PROXY)
        with blame_on(CLIENT_PROXY):
            check_not_revoked(conf, signer.cert_der, f"this node's signing certificate of "
                              f"{client.member}")  # fmt: skip
        purpose, legal_basis, by_default = purpose_of(
            call.purpose, call.legal_basis, self.purpose_defaults.get(client)
        )
        meta = RequestMeta(
            id=call.message_id,
            request_id=new_id(),
            client=client,
            service=call.service,
            target_node=peer.id,
            method=call.method,
            path=call.path,
            query=call.query,
            headers=tuple(call.headers),
            user_id=call.user_id,
            issue=call.issue,
            represented_party=call.represented_party,
            created=started,
            body_sha512=body_digest(call.body),
            purpose=purpose,
            legal_basis=legal_basis,
            evidence_type=call.evidence_type,
            # Signed and logged as such: the client did not say why, its registration did.
            purpose_default=by_default,
            protocol=call.protocol,
        )
        meta_bytes = meta.encode()
        signature = await signer.sign(meta_bytes)
        envelope = encode_envelope(meta_bytes, signature, signer.cert_der, call.body)
        record = dict(
            message_id=call.message_id,
            request_id=meta.request_id,
            role="client",
            client=str(client),
            service=str(call.service),
            user_id=call.user_id,
            issue=call.issue,
            represented_party=call.represented_party,
            method=call.method,
            started_at=started,
            request_meta=meta_bytes,
            request_signature=signature,
            request_cert=signer.cert_der,
            request_body=call.body,
        )
        try:
            reply = await self.rt.peers.send(peer, envelope, self.rt.provider_timeout)
            env, answer = self._verify_answer(reply, meta, meta_bytes, call.body, conf)
        except XRoadError as err:
            # The signed request left this node, and the provider's node may have served and
            # logged it: whatever came back (or did not), our side records it too.
            await self._log(
                LogRecord(**record, status=err.status, error_type=err.code, finished_at=time.time())
            )
            raise
        status = answer.status
        await self._log(
            LogRecord(
                **record,
                status=status,
                error_type=None,
                finished_at=time.time(),
                response_meta=env.meta_bytes,
                response_signature=env.signature,
                response_cert=env.cert_der,
                response_body=env.body,
            )
        )
        log.info(
            "exchange.completed",
            side="client",
            id=call.message_id,
            client=str(client),
            service=str(call.service),
            status=status,
            ms=round((time.time() - started) * 1000, 2),
        )
        return Answer(
            status=status,
            headers=list(answer.headers),
            body=env.body,
            message_id=call.message_id,
            request_id=meta.request_id,
            request_hash=answer.request_hash,
            service=str(answer.service),
        )

    async def handle_soap(self, request: web.Request) -> web.StreamResponse:
        """X-Road SOAP 4.0: its errors are SOAP Faults (the listener renders them so,
        SOAP_FAULTS). The message names its client inside the body, but the transport
        credential was checked first (client_authentication): a caller that proves no
        registered client gets its fault before a byte of its body is read or parsed."""
        caller = request[CALLER]
        content_type = request.headers.get("Content-Type", "")
        body = await read_body(request, self.rt.max_body_bytes, self.rt.body_timeout, CLIENT)
        limits = XmlLimits(max_bytes=self.rt.max_body_bytes)
        soap = await self.rt.parse(
            len(body), parse_soap, content_type, body, kind="request", limits=limits
        )
        h = soap.header
        assert h is not None and h.service is not None  # parse_soap checks requests
        # The client the message names must be one the credential proved.
        self.rt.authenticator.confirm(caller.proven, h.client, caller.credentials)
        # The client's SOAPAction is checked as X-Road checks it, but not sent on: SOAP stacks
        # dispatch on it, so a client could run another operation than the one the node
        # checked, logged and authorised. The provider's node sets it from the service's WSDL.
        check_soap_action(request.headers.getall("SOAPAction", []))
        headers = [("Content-Type", content_type)]
        answer = await self.send(
            Call(
                client=h.client,
                service=h.service,
                method="POST",
                path="",
                query="",
                headers=headers,
                body=body,
                message_id=h.id,
                user_id=h.user_id,
                issue=h.issue,
                purpose=h.purpose,
                legal_basis=h.legal_basis,
                protocol="soap",
                security_server=h.security_server,
            )
        )
        answer_type = next((v for k, v in answer.headers if k.lower() == "content-type"), "")
        try:
            response = await self.rt.parse(
                len(answer.body), parse_soap, answer_type, answer.body, kind="response",
                limits=limits,
            )  # fmt: skip
        except SoapError as exc:
            raise XRoadError.client_proxy(
                "InvalidSoap", f"the provider's node answered: {exc.message}"
            ) from exc
        if not response.is_fault and (
            response.header is None
            or response.header.request_hash != soap_request_hash(soap.soap_part)
        ):
            raise XRoadError.client_proxy(
                "InconsistentResponse", "the answer's requestHash is not the hash of the request"
            )
        return web.Response(
            status=answer.status, body=answer.body, headers={"Content-Type": answer_type}
        )

    async def list_clients(self, request: web.Request) -> web.StreamResponse:
        """GET /listClients: the federation's members and subsystems (public metadata)."""
        conf = self.rt.conf_or_fail(CLIENT_PROXY)
        clients: set[ClientId] = set(conf.members)
        for node in conf.nodes:
            clients.update(node.clients)
        ordered = sorted(clients, key=str)
        names = {c: conf.members.get(c.member, "") for c in ordered}
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response({"member": [client_json(c, names[c]) for c in ordered]})
        return web.Response(
            body=client_list_xml(ordered, names), content_type="text/xml", charset="utf-8"
        )

    async def wsdl(self, request: web.Request) -> web.StreamResponse:
        """GET /wsdl?xRoadInstance=..&memberClass=..&memberCode=..&subsystemCode=..
        &serviceCode=..&version=..: the service's WSDL, fetched from the provider's node with
        the getWsdl metaservice, its address pointing at this node (client tools build their
        proxies from it). The caller proves it is a client of this node; without X-Road-Client
        the node's owner member asks. Its errors are JSON (JSON_ERRORS)."""
        q = request.query
        try:
            provider = parse_client_id(
                "/".join(
                    q[k] for k in ("xRoadInstance", "memberClass", "memberCode", "subsystemCode")
                )
            )
            code = q["serviceCode"]
        except KeyError as exc:
            raise XRoadError.client("InvalidRequest", f"query parameter {exc} is missing") from exc
        if not isinstance(provider, SubsystemId) or not valid_part(code):
            raise XRoadError.client("InvalidRequest", "the service identifier is not valid")
        # As X-Road does, a tool that only knows the URL (zeep, SoapUI) gets the WSDL: the
        # node asks as its owner member. The caller has still proved it is one of the node's
        # clients (client_authentication), so that nobody else can make the node sign and log.
        named = request[CALLER].named
        client: ClientId = named.id if named is not None else self.rt.node_id.owner
        query = urlencode({"serviceCode": code, **({"version": q["version"]} if "version" in q
                                                   else {})})  # fmt: skip
        answer = await self.send(
            Call(
                client=client,
                service=ServiceId(provider, "getWsdl"),
                method="GET",
                path="",
                query=query,
                headers=[("Accept", "text/xml")],
                body=b"",
                message_id=new_id(),
            )
        )
        if answer.status != 200:
            raise XRoadError.client_proxy(
                "ServiceFailed", f"getWsdl of {provider} answered HTTP {answer.status}"
            )
        document = point_wsdl_at(answer.body, self._soap_address(request))
        return web.Response(body=document, content_type="text/xml", charset="utf-8")

    def _soap_address(self, request: web.Request) -> str:
        """Where SOAP clients of this WSDL send their requests: this node's own URL for the
        listener the WSDL was fetched from, as configured, never what a request's Host
        header claims (a forged Host would send the client's next messages elsewhere). A
        wildcard listener has no address to give: X-Road's placeholder, as X-Road gives."""
        url = self.public_urls.get("client_tls" if request.secure else "client")
        host = urlsplit(url).hostname if url else None
        if url is None or host in (None, "0.0.0.0", "::"):
            return "http://example.org/xroad-endpoint"
        return url + "/"

    def _verify_answer(
        self,
        reply: PeerReply,
        request: RequestMeta,
        request_bytes: bytes,
        body: bytes,
        conf: GlobalConf,
    ) -> tuple[Envelope, AnswerMeta]:
        """The answer is signed by the provider's member, with a certificate not revoked
        (by the configuration in force now, which may be newer than the request's), and
        belongs to this very request."""
        if reply.content_type.split(";")[0].strip() != CONTENT_TYPE:
            raise _provider_error(reply.status, reply.body)
        member = request.service.provider.member
        with blame_on(CLIENT_PROXY, context="answer of the provider's node"):
            env = decode_envelope(reply.body)
            now = self.rt.globalconf.current() or conf
            check_not_revoked(now, env.cert_der, "the answer's signing certificate")
            try:
                self.rt.globalconf.verifier.verify(
                    env.meta_bytes, env.signature, env.cert_der, member
                )
            except SignatureError as exc:
                raise ProtocolError("InvalidSignatureValue", str(exc)) from exc
            answer = AnswerMeta.parse(env.meta)
        with blame_on(CLIENT_PROXY):
            check_answer(request, request_bytes, body, answer)
        return env, answer

    async def _log(self, record: LogRecord) -> None:
        await self.rt.record(record, CLIENT_PROXY)


def check_soap_action(values: list[str]) -> None:
    """A SOAPAction as SOAP 1.1 allows it (X-Road's rule): absent, empty, or a quoted
    URI reference; raises Client.InvalidSoapAction."""
    if len(values) > 1:
        raise XRoadError.client("InvalidSoapAction", "the request has more than one SOAPAction")
    value = values[0] if values else ""
    if value in ("", '""'):
        return
    inner = value[1:-1] if len(value) > 2 and value[0] == value[-1] == '"' else None
    if inner is None or not _URI_REFERENCE.fullmatch(inner):
        raise XRoadError.client(
            "InvalidSoapAction",
            'SOAPAction must be empty, "" or a quoted URI reference (SOAP 1.1), e.g. "echo"',
        )


# Characters of an RFC 3986 URI reference (a check of form, not of meaning).
_URI_REFERENCE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


def _opt(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    return check_header_value(name, value) if value else None


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who is calling, proven from the request's head alone (nothing of its body)."""

    proven: Caller  # the client subsystems the credential proves (the named one, if named)
    credentials: Credentials
    named: ClientRegistration | None = None  # the client X-Road-Client names, authenticated


# The caller of a request of the client listener, set by client_authentication.
CALLER = web.RequestKey("xroad_hub_caller", Authenticated)


def client_authentication(rt: NodeRuntime, *, public: Collection[Handler] = ()) -> Middleware:
    """Default deny for an application's own routes (but ``public``): before its handler
    runs, and so before any body is read, the node is serving, the caller is authenticated
    from the transport and admitted within its limits (limits.py) until it is answered.

    The caller is the client X-Road-Client names, when sent; otherwise whichever clients the
    credential proves (SOAP names its client inside the body: confirmed once it is read).
    A sub-application's routes are left to the sub-application (it brings its own)."""
    open_to_all = frozenset(public)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info
        if route.apps[-1] is not request.app or route.handler in open_to_all:
            return await handler(request)  # a sub-application's route, or a public one
        rt.check_logging(CLIENT_PROXY)
        rt.conf_or_fail(CLIENT_PROXY)
        creds = _credentials(request)
        named_values = request.headers.getall("X-Road-Client", [])
        named = None
        if named_values:
            named = await rt.authenticator.authenticate(select_client(named_values), creds)
            caller = Caller(frozenset({named.id}))
        else:
            caller = await rt.authenticator.identify(creds)
        request[CALLER] = Authenticated(caller, creds, named)
        with rt.client_limits.admit(caller.key, body_reservation(request, rt.max_body_bytes)):
            return await handler(request)

    return authenticate


def named_client(request: web.Request) -> ClientRegistration:
    """The client X-Road-Client names, authenticated (r1 and evidence requests need one)."""
    named = request[CALLER].named
    if named is None:
        raise ProtocolError("MissingHeader", "X-Road-Client header is missing")
    return named


def _credentials(request: web.Request) -> Credentials:
    """What the transport tells of the caller (nothing of the body)."""
    return Credentials(
        remote_ip=request.remote or "",
        tls=request.secure,
        cert_sha256=peer_fingerprint(request.transport),
        bearer=_bearer(request.headers.get("Authorization")),
    )


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


def _provider_error(status: int, body: bytes) -> XRoadError:
    """An X-Road error answered by the provider's node, passed on with its code and detail."""
    try:
        doc = orjson.loads(body)
        code, message, detail = str(doc["type"]), str(doc["message"]), str(doc["detail"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return XRoadError.client_proxy(
            "InvalidMessage", f"the provider's node answered HTTP {status} without an X-Road error"
        )
    if not code or not set(code) <= _ERROR_CODE_CHARS or len(code) > 200:
        return XRoadError.client_proxy("InvalidMessage", "the provider's node sent a bad code")
    # The category decides the status, whatever status the other node sent with it.
    return XRoadError(code, message[:1000], detail=detail[:100])
