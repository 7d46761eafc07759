"""Client proxy: the consumer path. Client systems call their own node with X-Road REST r1.

Order of checks (each failure answers with an X-Road error and nothing is sent on):
URI and X-Road headers -> global configuration in force -> client authenticated as the
subsystem it names -> body within limits -> provider's node found -> request signed and sent
-> answer's signature, body digest, ids and request hash verified -> exchange logged durably
-> answer returned.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import structlog
from aiohttp import web

from ..clientauth import Credentials
from ..errors import CLIENT, CLIENT_PROXY, XRoadError
from ..identifiers import MemberId, parse_node_id
from ..message import (
    CONTENT_TYPE,
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
    filter_request_headers,
    filter_response_headers,
    parse_r1_target,
    parse_represented_party,
    request_hash,
    select_client,
)
from ..signing import SignatureError
from .peer import PeerReply
from .runtime import NodeRuntime, answer_errors, read_body
from .tls import peer_fingerprint

__all__ = ["ClientProxy"]

log = structlog.get_logger("xroad_hub.consumer")
_ERROR_CODE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")


class ClientProxy:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await answer_errors(
            request,
            self._exchange,
            side="client",
            prefix=CLIENT_PROXY,
            accept=request.headers.get("Accept"),
        )

    async def _exchange(self, request: web.Request) -> web.StreamResponse:
        started = time.time()
        raw_path, _, raw_query = request.raw_path.partition("?")
        target = parse_r1_target(raw_path, raw_query)
        client = select_client(request.headers.getall("X-Road-Client", []))
        h = request.headers
        message_id = check_header_value("X-Road-Id", h.get("X-Road-Id") or str(uuid.uuid4()))
        user_id = _opt(h, "X-Road-UserId")
        issue = _opt(h, "X-Road-Issue")
        represented = h.get("X-Road-Represented-Party")
        represented = parse_represented_party(represented) if represented else None

        self.rt.check_logging(CLIENT_PROXY)
        conf = self.rt.conf_or_fail(CLIENT_PROXY)
        reg = self.rt.authenticator.authenticate(
            client,
            Credentials(
                remote_ip=request.remote or "",
                tls=request.secure,
                cert_sha256=peer_fingerprint(request.transport),
                bearer=_bearer(h.get("Authorization")),
            ),
        )
        body = await read_body(request, self.rt.max_body_bytes, self.rt.body_timeout, CLIENT)

        provider = target.service.provider
        peer = conf.node_hosting(provider)
        if "X-Road-Security-Server" in h:
            wanted = parse_node_id(h["X-Road-Security-Server"])
            peer = conf.node(wanted)
            if peer is None or provider not in peer.clients:
                raise XRoadError.client_proxy(
                    "UnknownMember", f"node {wanted} does not serve {provider}"
                )
        if peer is None:
            raise XRoadError.client_proxy(
                "UnknownMember", f"no node in the global configuration serves {provider}"
            )
        signer = self.rt.signer_for(client.member, CLIENT_PROXY)

        # Node authentication tokens are for this node only; never forward them.
        drop = frozenset({"authorization"}) if reg.auth == "jwt" else frozenset()
        headers = filter_request_headers(h.items(), drop=drop)
        if "Accept" not in h:
            headers.append(("Accept", "application/json"))
        meta: dict[str, Any] = {
            "v": 1,
            "kind": "request",
            "id": message_id,
            "request_id": str(uuid.uuid4()),
            "client": str(client),
            "service": str(target.service),
            "target_node": str(peer.id),
            "method": request.method,
            "path": target.path,
            "query": target.query,
            "headers": headers,
            "user_id": user_id,
            "issue": issue,
            "represented_party": represented,
            "created": started,
            "body_sha512": body_digest(body),
        }
        meta_bytes = canonical(meta)
        signature = await signer.sign(meta_bytes)
        envelope = encode_envelope(meta_bytes, signature, signer.cert_der, body)
        record = dict(
            message_id=message_id,
            request_id=meta["request_id"],
            role="client",
            client=str(client),
            service=str(target.service),
            user_id=user_id,
            issue=issue,
            represented_party=represented,
            method=request.method,
            started_at=started,
            request_meta=meta_bytes,
            request_signature=signature,
            request_cert=signer.cert_der,
            request_body=body,
        )
        try:
            reply = await self.rt.peers.send(peer, envelope, self.rt.provider_timeout)
            env = self._verify_answer(reply, provider.member, meta, meta_bytes, body)
        except XRoadError as err:
            # The signed request left this node, and the provider's node may have served and
            # logged it: whatever came back (or did not), our side records it too.
            await self._log(
                LogRecord(**record, status=err.status, error_type=err.code, finished_at=time.time())
            )
            raise
        rmeta = env.meta
        expected_hash = rmeta["request_hash"]
        status = int(rmeta["status"])
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
        out = filter_response_headers((k, v) for k, v in rmeta["headers"])
        out += [
            ("X-Road-Client", str(client)),
            ("X-Road-Service", str(rmeta.get("service") or target.service)),
            ("X-Road-Id", message_id),
            ("X-Road-Request-Id", meta["request_id"]),
            ("X-Road-Request-Hash", expected_hash),
        ]
        log.info(
            "exchange.completed",
            side="client",
            id=message_id,
            client=str(client),
            service=str(target.service),
            status=status,
            ms=round((time.time() - started) * 1000, 2),
        )
        resp = web.Response(status=status, body=env.body)
        for k, v in out:
            resp.headers.add(k, v)
        return resp

    def _verify_answer(
        self,
        reply: PeerReply,
        member: MemberId,
        meta: dict[str, Any],
        meta_bytes: bytes,
        body: bytes,
    ) -> Envelope:
        """The answer is signed by the provider's member and belongs to this very request."""
        if reply.content_type.split(";")[0].strip() != CONTENT_TYPE:
            raise _provider_error(reply.status, reply.body)
        try:
            env = decode_envelope(reply.body)
            self.rt.globalconf.verifier.verify(env.meta_bytes, env.signature, env.cert_der, member)
        except (MessageError, SignatureError) as exc:
            code = exc.code if isinstance(exc, MessageError) else "InvalidSignatureValue"
            raise XRoadError.client_proxy(code, f"answer of the provider's node: {exc}") from exc
        rmeta = env.meta
        if (
            rmeta.get("kind") != "response"
            or rmeta.get("id") != meta["id"]
            or rmeta.get("request_id") != meta["request_id"]
            or rmeta.get("request_hash") != request_hash(meta_bytes, body)
            or not isinstance(rmeta.get("status"), int)
            or not isinstance(rmeta.get("headers"), list)
        ):
            raise XRoadError.client_proxy(
                "InconsistentResponse",
                "the provider's answer does not belong to this request (id or request hash)",
            )
        return env

    async def _log(self, record: LogRecord) -> None:
        await self.rt.record(record, CLIENT_PROXY)


def _opt(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    return check_header_value(name, value) if value else None


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
