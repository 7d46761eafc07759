"""Configuration anchors and management (registration) requests: the sans-I/O core.

The anchor is what a node is started from: the central server's URL and its
configuration-signing certificate, with the certificate's SHA-256 in groups of four hex
digits, so that the node's operator can compare it with the central operator by phone.

A management request is canonical JSON signed by the keys it concerns (X-Road's
``authCertReg`` carries a signature of the auth key and of the owner's signing key):

    {"request": {"type": "authCertReg", "instance": ..., "server": ..., "address": ...,
                 "auth_csr": PEM, "sign_csr": PEM, "checkpoint_csr": PEM,
                 "nonce": hex, "created_at": iso},
     "signatures": {"auth": b64, "sign": b64}}

Each signature is ECDSA P-256/SHA-256 over ``DOMAIN + canonical(request)``. The node's
checkpoint key (Ed25519, for the C2SP notes over its message log) proves its possession by
its CSR's self-signature; the auth and signing signatures bind that CSR to the request. A request is
fresh for ``MAX_AGE`` seconds and its nonce is used once (the central server keeps the
nonces). Requests of a registered node (``clientReg``, ``cancel``) are signed by its auth key
only. A key rotation (``certRotation``, ``purpose`` auth or sign, ``csr`` the new key's CSR)
is signed by the node's current auth key, by the new key (possession), and by the current
signing key, when the node still has one that is not revoked: the central server learns it
comes from the holder of both keys, so a thief of one cannot take the node over. Nothing
here opens a socket or a file.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from xroad_hub.errors import HubError, ProtocolError
from xroad_hub.protocol.globalconf import signer_name
from xroad_hub.protocol.identifiers import (
    NodeId,
    SubsystemId,
    parse_node_id,
    parse_subsystem_id,
)
from xroad_hub.protocol.message import canonical

__all__ = [
    "ANCHOR_FORMAT",
    "MAX_AGE",
    "REQUEST_ID",
    "Anchor",
    "ParsedRequest",
    "RegistrationError",
    "address_host",
    "anchor_hash",
    "build_anchor",
    "make_csr",
    "parse_anchor",
    "parse_request",
    "request_fingerprint",
    "sign_request",
    "verify_request",
]

ANCHOR_FORMAT = "xroad-hub anchor v1"
DOMAIN = b"xroad-hub management request v1\n"
MAX_AGE = timedelta(minutes=5)
_ECDSA = ec.ECDSA(hashes.SHA256())
REQUEST_TYPES = ("authCertReg", "clientReg", "cancel", "certRotation")
_MAX_CSR = 8 * 1024
# A request id as the central server counts them: ASCII digits that fit SQLite's 64-bit
# INTEGER (str.isdigit() also takes other scripts' digits, int() any length).
REQUEST_ID = re.compile(r"[0-9]{1,18}")


class RegistrationError(HubError):
    """A refused anchor or management request. ``code`` names the reason for machines
    (``InvalidSignature``, ``Replay``, ``UnknownMember``, ``Duplicate``, ...); the message
    says it for people. ``status`` is the HTTP status the central server answers with."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def as_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


# --- the anchor ---------------------------------------------------------------------------


def anchor_hash(cert_der: bytes) -> str:
    """SHA-256 of the certificate, as 16 groups of 4 upper-case hex digits: read aloud."""
    digest = hashlib.sha256(cert_der).hexdigest().upper()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def request_fingerprint(*csr_pems: str | None) -> str:
    """What the operators of a node and of the central server compare by phone before a
    registration or key rotation is approved: the SHA-256 of the public keys the request's
    CSRs carry (in the order given; None: none), as 16 groups of 4 hex digits. The request's
    signatures only prove it comes from the holder of these keys; that the holder is the
    member it names, only the member's word about these keys can tell."""
    digest = hashlib.sha256()
    for pem in csr_pems:
        if pem is None:
            continue
        key = x509.load_pem_x509_csr(pem.encode()).public_key()
        digest.update(
            key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    text = digest.hexdigest().upper()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def _normal_hash(text: str) -> str:
    return "".join(c for c in text.upper() if c in "0123456789ABCDEF")


@dataclass(frozen=True, slots=True)
class Anchor:
    instance: str
    central_url: str  # https://host:port of the central server
    cert: x509.Certificate  # the configuration-signing certificate
    hash: str  # anchor_hash of cert

    @property
    def globalconf_url(self) -> str:
        return self.central_url.rstrip("/") + "/globalconf"


def build_anchor(instance: str, central_url: str, cert: x509.Certificate) -> bytes:
    der = cert.public_bytes(serialization.Encoding.DER)
    doc = {
        "format": ANCHOR_FORMAT,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "instance": instance,
        "central_url": central_url.rstrip("/"),
        "verification_cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "verification_cert_sha256": anchor_hash(der),
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def parse_anchor(data: bytes, expected_hash: str | None = None) -> Anchor:
    """Read an anchor; refuse it if its certificate does not match the hash it carries, or
    (when given) the hash the operator was told by phone."""
    try:
        doc = orjson.loads(data)
        if doc.get("format") != ANCHOR_FORMAT:
            raise ValueError(f"format is not {ANCHOR_FORMAT!r}")
        instance, url = str(doc["instance"]), str(doc["central_url"])
        cert = x509.load_pem_x509_certificate(str(doc["verification_cert"]).encode())
        stated = str(doc["verification_cert_sha256"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RegistrationError("BadAnchor", f"not a configuration anchor: {exc}") from exc
    if not url.startswith("https://"):
        raise RegistrationError("BadAnchor", f"the anchor's central URL {url!r} is not https")
    actual = anchor_hash(cert.public_bytes(serialization.Encoding.DER))
    if _normal_hash(stated) != _normal_hash(actual):
        raise RegistrationError(
            "BadAnchor",
            "the anchor's certificate does not match its hash (the file was altered or "
            "corrupted); ask the central operator for a new anchor",
        )
    if expected_hash is not None and _normal_hash(expected_hash) != _normal_hash(actual):
        raise RegistrationError(
            "BadAnchor",
            f"the anchor's hash is {actual}, not the one you were given; do not use this file",
        )
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or cns[0].value != signer_name(instance):
        raise RegistrationError(
            "BadAnchor", f"the anchor's certificate is not the {instance} configuration signer"
        )
    return Anchor(instance, url.rstrip("/"), cert, actual)


# --- requests -----------------------------------------------------------------------------


def make_csr(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, cn: str
) -> x509.CertificateSigningRequest:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    # Ed25519 signs the message itself: no separate hash algorithm.
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algorithm)


def new_request(kind: str, instance: str, server: NodeId, **fields: str) -> dict[str, str]:
    return {
        "type": kind,
        "instance": instance,
        "server": str(server),
        "nonce": secrets.token_hex(16),
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        **fields,
    }


def sign_request(request: dict[str, str], keys: dict[str, ec.EllipticCurvePrivateKey]) -> bytes:
    payload = DOMAIN + canonical(request)
    sigs = {role: base64.b64encode(k.sign(payload, _ECDSA)).decode() for role, k in keys.items()}
    return orjson.dumps({"request": request, "signatures": sigs})


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A management request whose form, freshness and signatures have been checked (what it
    asks for is the central server's to decide against its database)."""

    type: str
    instance: str
    server: NodeId
    nonce: str
    created_at: datetime
    address: str = ""
    auth_csr: x509.CertificateSigningRequest | None = None
    sign_csr: x509.CertificateSigningRequest | None = None
    checkpoint_csr: x509.CertificateSigningRequest | None = None
    client: SubsystemId | None = None
    request_id: int | None = None
    auth_key_sha256: str = ""  # of the auth key that signed (SubjectPublicKeyInfo DER)


def _field(req: dict[str, Any], name: str, limit: int = 256) -> str:
    value = req.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise RegistrationError("Malformed", f"field {name!r} is missing or not a short string")
    return value


def key_sha256(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _is_host(host: str) -> bool:
    """A DNS host name (letters, digits, hyphens; no wildcard) or an IP address."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in host.split("."))


def address_host(address: str) -> str:
    """The host of a node's HOST:PORT address as certificates and comparisons take it."""
    return address.rpartition(":")[0].lower()


def _p256(csr: x509.CertificateSigningRequest, what: str) -> ec.EllipticCurvePublicKey:
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise RegistrationError("Malformed", f"the {what} key must be ECDSA P-256")
    if not csr.is_signature_valid:
        raise RegistrationError("InvalidSignature", f"the {what} CSR's self-signature is invalid")
    return key


def _verify(payload: bytes, signature: object, key: ec.EllipticCurvePublicKey, what: str) -> None:
    try:
        raw = base64.b64decode(str(signature), validate=True)
        key.verify(raw, payload, _ECDSA)
    except (InvalidSignature, ValueError) as exc:
        raise RegistrationError(
            "InvalidSignature", f"the request's {what} signature does not verify", 403
        ) from exc


def parse_request(data: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """The request, its signatures and the signed bytes; form only, nothing verified."""
    try:
        doc = orjson.loads(data)
        request, sigs = doc["request"], doc["signatures"]
        if not isinstance(request, dict) or not isinstance(sigs, dict):
            raise TypeError("request and signatures must be objects")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise RegistrationError("Malformed", f"not a signed management request: {exc}") from exc
    if request.get("type") not in REQUEST_TYPES:
        raise RegistrationError("Malformed", f"request type must be one of {REQUEST_TYPES}")
    return request, sigs, DOMAIN + canonical(request)


def verify_request(
    data: bytes,
    instance: str,
    auth_key: ec.EllipticCurvePublicKey | None = None,
    now: datetime | None = None,
    sign_key: ec.EllipticCurvePublicKey | None = None,
) -> ParsedRequest:
    """Check form, freshness and signatures. ``authCertReg`` must be signed by the keys of
    both CSRs it carries; other types by ``auth_key``, the registered auth key of the node
    named in ``server`` (the caller looks it up: pass None if it has none); a
    ``certRotation`` also by ``sign_key``, the node's current signing key, if it has one."""
    request, sigs, payload = parse_request(data)
    kind = request["type"]
    if _field(request, "instance") != instance:
        raise RegistrationError("Malformed", f"this central server serves instance {instance}")
    try:
        server = parse_node_id(_field(request, "server"))
    except ProtocolError as exc:
        raise RegistrationError("Malformed", f"server: {exc.message}") from exc
    if server.owner.instance != instance:
        raise RegistrationError("Malformed", f"server {server} is not of instance {instance}")
    nonce = _field(request, "nonce", 64)
    try:
        created = datetime.fromisoformat(_field(request, "created_at"))
    except ValueError as exc:
        raise RegistrationError("Malformed", "created_at is not an ISO 8601 time") from exc
    if created.tzinfo is None:
        raise RegistrationError("Malformed", "created_at must carry a time zone")
    now = now or datetime.now(UTC)
    if abs(now - created) > MAX_AGE:
        raise RegistrationError(
            "Stale",
            f"the request was made at {created.isoformat()}, more than "
            f"{int(MAX_AGE.total_seconds())} s from the central server's clock; check the "
            "clocks and send a new request",
        )
    if kind == "authCertReg":
        return _verify_auth_cert_reg(request, sigs, payload, server, nonce, created)
    if auth_key is None:
        raise RegistrationError(
            "UnknownServer", f"{server} is not a registered node; enroll it first", 403
        )
    if kind == "certRotation":
        return _verify_rotation(request, sigs, payload, server, nonce, created, auth_key, sign_key)
    if set(sigs) != {"auth"}:
        raise RegistrationError("Malformed", "this request is signed by the node's auth key only")
    _verify(payload, sigs["auth"], auth_key, "auth-key")
    if kind == "clientReg":
        try:
            client = parse_subsystem_id(_field(request, "client"))
        except ProtocolError as exc:
            raise RegistrationError("Malformed", f"client: {exc.message}") from exc
        return ParsedRequest(kind, instance, server, nonce, created, client=client)
    request_id = _field(request, "request_id", 18)
    if not REQUEST_ID.fullmatch(request_id):
        raise RegistrationError("Malformed", "request_id must be a number of up to 18 digits")
    return ParsedRequest(kind, instance, server, nonce, created, request_id=int(request_id))


def _verify_auth_cert_reg(
    request: dict[str, Any],
    sigs: dict[str, Any],
    payload: bytes,
    server: NodeId,
    nonce: str,
    created: datetime,
) -> ParsedRequest:
    if set(sigs) != {"auth", "sign"}:
        raise RegistrationError(
            "Malformed", "authCertReg must carry exactly the auth-key and signing-key signatures"
        )
    address = _field(request, "address")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RegistrationError("Malformed", f"address {address!r} is not HOST:PORT")
    if not _is_host(host):
        # The host goes into the node's TLS certificate: a wildcard or a name that is not a
        # host would make the federation's CA vouch for hosts that are not the node.
        raise RegistrationError("Malformed", f"{host!r} is not a host name or IP address")
    csrs = []
    for what in ("auth", "sign"):
        try:
            csrs.append(x509.load_pem_x509_csr(_field(request, f"{what}_csr", _MAX_CSR).encode()))
        except ValueError as exc:
            raise RegistrationError("Malformed", f"{what}_csr is not a PEM CSR") from exc
    auth_csr, sign_csr = csrs
    auth_key, sign_key = _p256(auth_csr, "authentication"), _p256(sign_csr, "signing")
    checkpoint_csr = None
    if "checkpoint_csr" in request:  # optional: requests of nodes from before it was enrolled
        try:
            checkpoint_csr = x509.load_pem_x509_csr(
                _field(request, "checkpoint_csr", _MAX_CSR).encode()
            )
        except ValueError as exc:
            raise RegistrationError("Malformed", "checkpoint_csr is not a PEM CSR") from exc
        if not isinstance(checkpoint_csr.public_key(), ed25519.Ed25519PublicKey):
            raise RegistrationError("Malformed", "the checkpoint key must be Ed25519")
        if not checkpoint_csr.is_signature_valid:
            raise RegistrationError(
                "InvalidSignature", "the checkpoint CSR's self-signature is invalid"
            )
    if auth_key.public_numbers() == sign_key.public_numbers():
        raise RegistrationError("Malformed", "the auth and signing keys must differ")
    _verify(payload, sigs["auth"], auth_key, "auth-key")
    _verify(payload, sigs["sign"], sign_key, "signing-key")
    return ParsedRequest(
        "authCertReg",
        server.owner.instance,
        server,
        nonce,
        created,
        address=address,
        auth_csr=auth_csr,
        sign_csr=sign_csr,
        checkpoint_csr=checkpoint_csr,
        auth_key_sha256=key_sha256(auth_key),
    )


def _verify_rotation(
    request: dict[str, Any],
    sigs: dict[str, Any],
    payload: bytes,
    server: NodeId,
    nonce: str,
    created: datetime,
    auth_key: ec.EllipticCurvePublicKey,
    sign_key: ec.EllipticCurvePublicKey | None,
) -> ParsedRequest:
    purpose = request.get("purpose")
    if purpose not in ("auth", "sign"):
        raise RegistrationError("Malformed", "purpose must be 'auth' or 'sign'")
    # Both current keys sign, whichever is rolled (X-Road's authCertReg is signed by the auth
    # key and the owner's signing key too): a thief of one key cannot swap the node's other
    # certificate, or its own, for a key of theirs. A revoked signing certificate is not
    # trusted, so then the auth key's word is all there is.
    expected = {"auth", "new"} | ({"sign"} if sign_key else set())
    if set(sigs) != expected:
        raise RegistrationError(
            "Malformed", f"a {purpose} key rotation must be signed by exactly "
            f"{', '.join(sorted(expected))} (current and new keys)",
        )  # fmt: skip
    try:
        csr = x509.load_pem_x509_csr(_field(request, "csr", _MAX_CSR).encode())
    except ValueError as exc:
        raise RegistrationError("Malformed", "csr is not a PEM CSR") from exc
    new_key = _p256(csr, f"new {purpose}")
    olds = [k for k in (auth_key, sign_key) if k is not None]
    if any(new_key.public_numbers() == k.public_numbers() for k in olds):
        raise RegistrationError("Malformed", "the new key must differ from the node's keys")
    _verify(payload, sigs["auth"], auth_key, "current auth-key")  # the old key, for auth
    if "sign" in sigs:
        assert sign_key is not None
        _verify(payload, sigs["sign"], sign_key, "current signing-key")
    _verify(payload, sigs["new"], new_key, f"new {purpose}-key")
    return ParsedRequest(
        "certRotation",
        server.owner.instance,
        server,
        nonce,
        created,
        auth_csr=csr if purpose == "auth" else None,
        sign_csr=csr if purpose == "sign" else None,
        auth_key_sha256=key_sha256(new_key) if purpose == "auth" else "",
    )
