"""Global configuration: what every node must agree on, signed by the central registry.

It lists members, the nodes with their addresses and authentication-certificate fingerprints,
which subsystems each node hosts, and the trusted CAs. It carries an expiry: a node whose copy
has expired, or whose download does not verify against the configuration anchor (the
registry's signing certificate, distributed out of band), refuses exchanges with
``OutdatedGlobalConf`` rather than trust stale routing and certificates.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.errors import HubError
from xroad_hub.protocol.identifiers import (
    ClientId,
    MemberId,
    NodeId,
    parse_client_id,
    parse_member_id,
    parse_node_id,
)
from xroad_hub.protocol.message import canonical
from xroad_hub.protocol.signing import cert_fingerprint, cert_fingerprints

__all__ = [
    "GlobalConf",
    "GlobalConfError",
    "NodeEntry",
    "Revocation",
    "sign_globalconf",
    "signer_name",
    "verify_globalconf",
]

_ECDSA = ec.ECDSA(hashes.SHA256())


def signer_name(instance: str) -> str:
    """The subject CN of the registry's configuration-signing certificate. Evidence checks
    it: other certificates of the CA (a member's signing key) must not pass for the registry."""
    return f"{instance} global configuration signer"


class GlobalConfError(HubError, ValueError):
    """A downloaded configuration that must not be used (bad signature, malformed, expired)."""


@dataclass(frozen=True, slots=True)
class NodeEntry:
    id: NodeId
    address: str  # host:port of the node's inter-node (mutual TLS) endpoint
    auth_cert_sha256: str
    clients: frozenset[ClientId]
    # The certificate itself lets a client node trust exactly this certificate during the
    # handshake, so not one byte of a request goes to anybody else.
    auth_cert_der: bytes = b""


# Kinds of revoked certificates, and how people call them in front of their subject.
_KINDS = {
    "auth": "authentication certificate of node",
    "sign": "signing certificate of member",
    "checkpoint": "checkpoint certificate of node",
    "client": "TLS client certificate of subsystem",
}


@dataclass(frozen=True, slots=True)
class Revocation:
    """A certificate the central server revoked: ``kind`` is ``auth`` (a node's TLS
    certificate, ``subject`` its node id), ``sign`` (a member's signing certificate,
    ``subject`` the member id), ``checkpoint`` (a node's checkpoint certificate) or ``client``
    (a client system's TLS certificate, ``subject`` its subsystem). What it
    signed before ``revoked_at`` still verifies; nothing signed or connected with it since
    does."""

    cert_sha256: str
    kind: str
    subject: str
    revoked_at: datetime

    def to_dict(self) -> dict[str, str]:
        return {"cert_sha256": self.cert_sha256, "kind": self.kind, "subject": self.subject,
                "revoked_at": self.revoked_at.isoformat()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Revocation:
        kind, sha = str(d["kind"]), str(d["cert_sha256"])
        if kind not in _KINDS:
            raise ValueError(f"revocation kind {kind!r} is not one of {', '.join(_KINDS)}")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"revoked certificate digest {sha!r} is not a SHA-256 in hex")
        return cls(sha, kind, str(d["subject"]), _instant(d, "revoked_at"))

    def describe(self) -> str:
        """For error messages: whose certificate, which one, since when."""
        what = _KINDS.get(self.kind, self.kind)
        when = self.revoked_at.astimezone(UTC).isoformat(timespec="seconds")
        return (f"the {what} {self.subject} (sha256 {self.cert_sha256[:16]}...) was revoked "
                f"at {when.replace('+00:00', 'Z')}")  # fmt: skip


def _instant(d: dict[str, object], key: str) -> datetime:
    """A time of the signed configuration: without a zone it would be read in each node's
    local time, and nodes in different zones would disagree on when it expires."""
    at = datetime.fromisoformat(str(d[key]))
    if at.tzinfo is None:
        raise ValueError(f"{key} {at.isoformat()} carries no time zone")
    return at


@dataclass(frozen=True)
class GlobalConf:
    instance: str
    serial: int
    generated_at: datetime
    expires_at: datetime
    members: dict[MemberId, str]
    nodes: tuple[NodeEntry, ...]
    trusted_cas_der: tuple[bytes, ...]
    # X-Road's monitoringClientId: the client that reads every node's monitoring records.
    monitoring_client: ClientId | None = None
    # Certificates the central server revoked, final: a later configuration never drops one.
    revocations: tuple[Revocation, ...] = ()
    # X-Road's global groups: subsystems grouped centrally (code -> members), to which a
    # provider's node may grant access rights.
    groups: Mapping[str, frozenset[ClientId]] = field(default_factory=dict)

    def same_rules(self, other: GlobalConf) -> bool:
        """True if ``other`` says the same (members, nodes, hosting, CAs, groups); only its
        serial and validity differ."""
        return (self.instance, self.members, self.nodes, self.trusted_cas_der,
                self.monitoring_client, self.revocations, dict(self.groups)) == (
            other.instance, other.members, other.nodes, other.trusted_cas_der,
            other.monitoring_client, other.revocations, dict(other.groups),
        )  # fmt: skip

    def expired(self, now: datetime | None = None) -> bool:
        if now is None:
            # Asked several times per exchange: a float compare, not a datetime per call.
            return time.time() >= self._expires_ts
        return now >= self.expires_at

    @cached_property
    def _expires_ts(self) -> float:
        return self.expires_at.timestamp()

    @cached_property
    def trusted_cas(self) -> list[x509.Certificate]:
        return [x509.load_der_x509_certificate(d) for d in self.trusted_cas_der]

    @cached_property
    def _by_client(self) -> dict[ClientId, NodeEntry]:
        return {c: n for n in self.nodes for c in n.clients}

    @cached_property
    def _by_cert(self) -> dict[str, NodeEntry]:
        return {n.auth_cert_sha256: n for n in self.nodes}

    @cached_property
    def _revoked(self) -> dict[str, Revocation]:
        return {r.cert_sha256: r for r in self.revocations}

    def revoked(self, cert_sha256: str) -> Revocation | None:
        """The revocation of the certificate of this SHA-256 (hex), if it is revoked."""
        return self._revoked.get(cert_sha256)

    def revocation_of(self, cert_der: bytes) -> Revocation | None:
        """The revocation of this certificate (DER), if it is revoked, in whichever of its
        encodings it comes (``cert_fingerprints``); hashes nothing when nothing is revoked
        (the common case, once per exchange)."""
        if not self.revocations:
            return None
        return next((r for fp in cert_fingerprints(cert_der) if (r := self._revoked.get(fp))), None)

    def node_hosting(self, client: ClientId) -> NodeEntry | None:
        return self._by_client.get(client)

    def node_by_cert(self, fingerprint: str) -> NodeEntry | None:
        return self._by_cert.get(fingerprint)

    def node(self, node_id: NodeId) -> NodeEntry | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def to_dict(self) -> dict[str, object]:
        d = self._to_dict()
        if self.monitoring_client is not None:  # only when set: older documents stay as they were
            d["monitoring_client"] = str(self.monitoring_client)
        if self.revocations:
            d["revocations"] = [r.to_dict() for r in self.revocations]
        if self.groups:  # likewise
            d["groups"] = [
                {"code": code, "members": sorted(str(m) for m in members)}
                for code, members in sorted(self.groups.items())
            ]
        return d

    def _to_dict(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "serial": self.serial,
            "generated_at": self.generated_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "members": [{"id": str(m), "name": n} for m, n in sorted(self.members.items())],
            "nodes": [
                {
                    "id": str(n.id),
                    "address": n.address,
                    "auth_cert_sha256": n.auth_cert_sha256,
                    "auth_cert": base64.b64encode(n.auth_cert_der).decode(),
                    "clients": sorted(str(c) for c in n.clients),
                }
                for n in self.nodes
            ],
            "trusted_cas": [base64.b64encode(d).decode() for d in self.trusted_cas_der],
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> GlobalConf:
        try:
            nodes = tuple(
                NodeEntry(
                    parse_node_id(n["id"]),
                    str(n["address"]),
                    str(n["auth_cert_sha256"]),
                    frozenset(parse_client_id(c) for c in n["clients"]),
                    base64.b64decode(n.get("auth_cert", "")),
                )
                for n in d["nodes"]  # type: ignore[attr-defined]
            )
            for n in nodes:
                if n.auth_cert_der and cert_fingerprint(n.auth_cert_der) != n.auth_cert_sha256:
                    raise ValueError(f"certificate of node {n.id} does not match its fingerprint")
            return cls(
                instance=str(d["instance"]),
                serial=int(d["serial"]),  # type: ignore[call-overload]
                generated_at=_instant(d, "generated_at"),
                expires_at=_instant(d, "expires_at"),
                members={
                    parse_member_id(m["id"]): str(m["name"])
                    for m in d["members"]  # type: ignore[attr-defined]
                },
                nodes=nodes,
                trusted_cas_der=tuple(
                    base64.b64decode(c)
                    for c in d["trusted_cas"]  # type: ignore[attr-defined]
                ),
                monitoring_client=(
                    parse_client_id(str(d["monitoring_client"]))
                    if d.get("monitoring_client")
                    else None
                ),
                revocations=tuple(
                    Revocation.from_dict(r)
                    for r in d.get("revocations") or ()  # type: ignore[attr-defined]
                ),
                groups={
                    str(g["code"]): frozenset(parse_client_id(m) for m in g["members"])
                    for g in d.get("groups") or ()  # type: ignore[attr-defined]
                },
            )
        except Exception as exc:  # any shape error means the document is unusable
            raise GlobalConfError(f"malformed global configuration: {exc}") from exc


def sign_globalconf(conf: GlobalConf, key: ec.EllipticCurvePrivateKey) -> bytes:
    payload = canonical(conf.to_dict())
    return orjson.dumps(
        {
            "alg": "ES256",
            "payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(key.sign(payload, _ECDSA)).decode(),
        }
    )


def verify_globalconf(
    data: bytes, anchor: x509.Certificate, now: datetime | None = None
) -> GlobalConf:
    """Verify a signed configuration against the anchor; refuse expired ones."""
    try:
        doc = orjson.loads(data)
        payload = base64.b64decode(doc["payload"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
        alg = doc["alg"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise GlobalConfError("global configuration is not a signed document") from exc
    if alg != "ES256":
        raise GlobalConfError(f"unsupported global configuration signature algorithm {alg!r}")
    key = anchor.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise GlobalConfError("configuration anchor must hold an EC key")
    try:
        key.verify(signature, payload, _ECDSA)
    except InvalidSignature as exc:
        raise GlobalConfError("global configuration signature does not verify") from exc
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise GlobalConfError("signed global configuration is not JSON") from exc
    conf = GlobalConf.from_dict(doc)
    if conf.expired(now):
        raise GlobalConfError(f"global configuration expired at {conf.expires_at.isoformat()}")
    return conf
