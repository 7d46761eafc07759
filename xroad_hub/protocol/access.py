"""The rules of an exchange as pure functions: who may ask what, and what an answer must be.

Each function takes what the node knows (the global configuration, a service's
registration, the signed metadata) and either returns its decision or raises a
ProtocolError with the X-Road code to answer (``AccessDenied``, ``UnknownService``...).
Whose fault a refusal is stays the node's to say (errors.py): the client node blames
``Server.ClientProxy``, the provider node ``Server.ServerProxy``, and ``check_protocol``'s
refusal is the client system's mistake. Default deny: a service is served to a client only
when every rule below holds.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from xroad_hub.errors import ProtocolError
from xroad_hub.logs import path_shape
from xroad_hub.protocol.exchange import AnswerMeta, RequestMeta
from xroad_hub.protocol.globalconf import GlobalConf, NodeEntry
from xroad_hub.protocol.identifiers import ClientId, NodeId, ServiceId
from xroad_hub.protocol.rest import request_hash

__all__ = [
    "Access",
    "ServiceRules",
    "check_addressed",
    "check_answer",
    "check_endpoint",
    "check_hosted",
    "check_not_revoked",
    "check_own_node",
    "check_protocol",
    "decide_access",
    "may_call",
    "node_serving",
    "parse_endpoint",
    "purpose_of",
    "signed_purpose_matches",
]


class ServiceRules(Protocol):
    """What a service's registration says about who may call it (federation.ServiceConfig)."""

    @property
    def id(self) -> ServiceId: ...
    @property
    def adapter(self) -> str: ...
    @property
    def allow(self) -> frozenset[ClientId]: ...
    @property
    def disabled(self) -> bool: ...
    @property
    def disabled_notice(self) -> str: ...
    @property
    def version(self) -> str | None: ...
    @property
    def purposes(self) -> tuple[str, ...]: ...
    @property
    def legal_bases(self) -> tuple[str, ...]: ...
    @property
    def options(self) -> dict[str, Any]: ...
    @property
    def endpoints(self) -> tuple[str, ...]: ...
    @property
    def global_groups(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class Access:
    """A request the provider's node serves: by a registered service (``rules``) or, when
    ``rules`` is None, by a metaservice of the node; ``service`` names the version served."""

    service: ServiceId
    rules: ServiceRules | None


# --- the client's node ---------------------------------------------------------------------


def purpose_of(
    purpose: str | None,
    legal_basis: str | None,
    default: tuple[str, str | None] | None,
) -> tuple[str | None, str | None, bool]:
    """(purpose, legal basis, whether the registered default was applied) of a request: a
    client that names no purpose gets its registration's ``default``, if it has one; a
    legal basis it names is kept."""
    if purpose is not None or default is None:
        return purpose, legal_basis, False
    return default[0], legal_basis or default[1], True


def node_serving(conf: GlobalConf, provider: ClientId, security_server: NodeId | None) -> NodeEntry:
    """The node a request for ``provider`` goes to: the one the client named
    (X-Road-Security-Server), which must serve the provider, or the one hosting it."""
    if security_server is not None:
        peer = conf.node(security_server)
        # A node's owner member provides the node's own monitoring services (X-Road).
        if peer is None or (provider not in peer.clients and provider != peer.id.owner):
            raise ProtocolError(
                "UnknownMember", f"node {security_server} does not serve {provider}"
            )
        return peer
    peer = conf.node_hosting(provider)
    if peer is None:
        raise ProtocolError(
            "UnknownMember", f"no node in the global configuration serves {provider}"
            + _revoked_nodes_of(conf, provider),
        )  # fmt: skip
    return peer


def _revoked_nodes_of(conf: GlobalConf, provider: ClientId) -> str:
    """Why a provider may have no node any more: its member's nodes revoked (a revoked node
    is out of the configuration, so which of them hosted ``provider`` is not known)."""
    owner = f"{provider.member}/"
    gone = [r for r in conf.revocations if r.kind == "auth" and r.subject.startswith(owner)]
    return "".join(f" ({r.describe()})" for r in gone[-3:])


def check_own_node(conf: GlobalConf, node: NodeId) -> None:
    """This node is not out of the configuration for a revoked auth certificate: it then
    neither sends nor serves (its peers refuse it anyway; it says why itself)."""
    if not conf.revocations or conf.node(node) is not None:
        return
    gone = [r for r in conf.revocations if r.kind == "auth" and r.subject == str(node)]
    if gone:
        raise ProtocolError("SslAuthenticationFailed", f"this node: {gone[-1].describe()}")


def check_not_revoked(conf: GlobalConf, cert_der: bytes, what: str) -> None:
    """A signature or connection by a revoked certificate is refused from the first
    configuration that lists the revocation on (CertValidation, X-Road's code for a
    certificate that is not good)."""
    revocation = conf.revocation_of(cert_der)
    if revocation is not None:
        raise ProtocolError("CertValidation", f"{what}: {revocation.describe()}")


def check_answer(
    request: RequestMeta, request_bytes: bytes, request_body: bytes, answer: AnswerMeta
) -> None:
    """The answer belongs to this very request: it echoes its ids and the hash of the signed
    request metadata and body (InconsistentResponse otherwise)."""
    if (
        answer.id != request.id
        or answer.request_id != request.request_id
        or answer.request_hash != request_hash(request_bytes, request_body)
    ):
        raise ProtocolError(
            "InconsistentResponse",
            "the provider's answer does not belong to this request (id or request hash)",
        )


# --- the provider's node -------------------------------------------------------------------


def check_addressed(request: RequestMeta, node: NodeId) -> None:
    """The request is addressed to this node (a signed request for another node is not
    replayed here)."""
    if request.target_node != node:
        raise ProtocolError("InvalidMessage", f"message is addressed to {request.target_node}")


def check_hosted(client: ClientId, peer: NodeEntry) -> None:
    """The node that delivered the request hosts its client; a node's owner member is a
    client of its node (X-Road), e.g. for GET /wsdl."""
    if client not in peer.clients and client != peer.id.owner:
        raise ProtocolError(
            "SslAuthenticationFailed", f"node {peer.id} does not host the client {client}"
        )


def decide_access(
    rules: ServiceRules | None,
    request: RequestMeta,
    *,
    provider_served: bool,
    metaservices: Collection[str],
    groups: Mapping[str, frozenset[ClientId]] | None = None,
) -> Access:
    """Whether the client may call the service, by these rules in this order:

    1. a service the node does not register is a metaservice when its code is one and the
       node serves its provider; else UnknownMember (provider not served here) or
       UnknownService;
    2. a version, when named, is the one served (UnknownService);
    3. the service is not disabled (ServiceDisabled, with the provider's notice);
    4. the client holds an access right, itself or as a member of a global group the
       service is granted to (``groups``: the global configuration's) (AccessDenied);
    5. a service served only for declared purposes gets one of them (AccessDenied);
    6. a service served only under declared legal bases gets one of them (AccessDenied).

    ``rules`` is the registration of the request's service code, ``provider_served`` whether
    the node serves any service of its provider."""
    client, service = request.client, request.service
    if rules is None:
        if service.service_code in metaservices and provider_served:
            return Access(service, None)
        if not provider_served:
            raise ProtocolError("UnknownMember", f"{service.provider} is not served by this node")
        raise ProtocolError("UnknownService", f"unknown service {service}")
    if service.service_version and service.service_version != rules.version:
        raise ProtocolError("UnknownService", f"{service} is served as version {rules.version}")
    if rules.disabled:
        raise ProtocolError("ServiceDisabled", rules.disabled_notice)
    if not may_call(rules, client, groups):
        raise ProtocolError("AccessDenied", f"{client} has no access right to {service}")
    if rules.purposes and request.purpose not in rules.purposes:
        given = request.purpose
        raise ProtocolError(
            "AccessDenied",
            f"{service} is only served for the purposes {', '.join(rules.purposes)}; "
            + (
                f"the request's purpose {given!r} is not one of them"
                if given
                else "the request names no purpose (send X-Road-Purpose, or"
                " xh:purpose in a SOAP header)"
            ),
        )
    if rules.legal_bases and request.legal_basis not in rules.legal_bases:
        raise ProtocolError(
            "AccessDenied",
            f"{service} is only served under the legal bases {'; '.join(rules.legal_bases)}; "
            + (
                "the request's legal basis is not one of them"
                if request.legal_basis
                else "the request names none (send X-Road-Legal-Basis)"
            ),
        )
    return Access(ServiceId(service.provider, service.service_code, rules.version), rules)


def may_call(
    rules: ServiceRules, client: ClientId, groups: Mapping[str, frozenset[ClientId]] | None
) -> bool:
    """The client holds an access right to the service: granted to it, or to a global group
    it is a member of (a group the global configuration does not name has no members)."""
    if client in rules.allow:
        return True
    return any(client in (groups or {}).get(code, ()) for code in rules.global_groups)


def check_protocol(rules: ServiceRules, request: RequestMeta) -> None:
    """A pass-through SOAP service reads the X-Road header itself, so it only ever gets SOAP
    messages the node has checked against the signed metadata; a REST service gets r1. A
    mismatch is the client system's mistake (InvalidRequest)."""
    soap = request.protocol == "soap"
    if rules.adapter == "soap" and rules.options.get("mode") == "passthrough" and not soap:
        raise ProtocolError(
            "InvalidRequest", f"{rules.id} is a SOAP service: call it with X-Road SOAP 4.0"
        )
    if rules.adapter != "soap" and soap:
        raise ProtocolError(
            "InvalidRequest", f"{rules.id} is a REST service: call it with X-Road REST (r1)"
        )


def signed_purpose_matches(
    request: RequestMeta, purpose: str | None, legal_basis: str | None
) -> bool:
    """A SOAP header names the signed purpose and legal basis, or none where the client's
    node applied its registered default (flagged in the signed metadata)."""
    if request.purpose_default:
        return purpose is None and legal_basis in (None, request.legal_basis)
    return purpose == request.purpose and legal_basis == request.legal_basis


_METHODS = frozenset(("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"))
_TEMPLATE_PART = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]*|\{[A-Za-z0-9_.-]+\}")


def parse_endpoint(text: str) -> tuple[str, tuple[str, ...]]:
    """``"GET /deeds/{id}"``: the method and the path's segments (``{...}``: any one
    segment), as an OpenAPI operation names them."""
    method, sep, path = text.partition(" ")
    segments = tuple(path.split("/")[1:])
    if (
        not sep
        or method not in _METHODS
        or not path.startswith("/")
        or not all(_TEMPLATE_PART.fullmatch(s) for s in segments)
    ):
        raise ValueError(f"endpoint {text!r} must be METHOD /path, e.g. GET /deeds/{{id}}")
    return method, segments


def check_endpoint(rules: ServiceRules, method: str, path: str) -> None:
    """A service code registered for some operations serves only those (X-Road: access
    rights per endpoint); AccessDenied for any other method or path."""
    if not rules.endpoints:
        return
    asked = path.split("?", 1)[0].split("/")[1:]
    for endpoint in rules.endpoints:
        want_method, segments = parse_endpoint(endpoint)
        if want_method != method or len(segments) != len(asked):
            continue
        if all(
            (s.startswith("{") and a != "") or s == a for s, a in zip(segments, asked, strict=True)
        ):
            return
    # The path's shape, not the path: its segments often name the person asked about,
    # and refusals are logged (the client knows which path it sent).
    raise ProtocolError(
        "AccessDenied",
        f"{rules.id} serves only {', '.join(rules.endpoints)}, not {method} {path_shape(path)}",
    )
