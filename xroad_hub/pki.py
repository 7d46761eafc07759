"""The development PKI of a federation: a root CA and everything it issues.

Layout under the certs directory (ids become nested folders; identifier parts cannot be
``.``/``..`` or contain ``/``, so an id never escapes the directory):

    ca/root.key.pem, ca/root.cert.pem                  federation root CA
    registry/globalconf.key.pem, .cert.pem             signs the global configuration
    nodes/<node id>/auth.key.pem, auth.cert.pem        node TLS authentication certificate
    members/<member id>/sign.key.pem, sign.cert.pem    member signing certificate
    clients/<subsystem id>/tls.key.pem, tls.cert.pem   client system TLS certificate (mtls)
    clients/<subsystem id>/jwt.key.pem, jwt.pub.pem    client system JWT key (jwt)
    auditors/<name>/jwt.key.pem, jwt.pub.pem           auditor's JWT key (audit API)
    idp/thaid/jwt.key.pem, jwt.pub.pem                 the demo's citizen identity provider
                                                       (a ThaID stand-in, ES256)

Material is generated only where missing and never overwritten: a re-run after a partial
run completes the set, and replacing a key is a deliberate act (delete the files first).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "IDP_MAX_LIFETIME",
    "IDP_NAME",
    "TRACKER_MAX_LIFETIME",
    "CertPaths",
    "PkiLayout",
    "generate_key",
    "issue_cert",
    "load_cert",
    "load_ed25519_key",
    "load_private_key",
    "load_public_key",
    "make_root_ca",
    "write_key",
]

PrivateKey = ec.EllipticCurvePrivateKey
# Checkpoints are C2SP signed notes, which use Ed25519; everything else uses P-256.
AnyPrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
# The identity provider that vouches for citizens and officers (the issuer of its tokens).
IDP_NAME = "thaid"
# Its tokens' lifetimes: a citizen's look at a data tracker is one short session (a longer
# token is a stolen-token risk); officers work a case for a while, up to an hour.
TRACKER_MAX_LIFETIME = 300
IDP_MAX_LIFETIME = 3600


@dataclass(frozen=True, slots=True)
class CertPaths:
    key: Path
    cert: Path

    def exist(self) -> bool:
        return self.key.exists() and self.cert.exists()


class PkiLayout:
    """Where each piece of key material of a federation lives."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _pair(self, sub: str, ident: str, name: str, cert_suffix: str = "cert") -> CertPaths:
        base = self.root / sub / Path(*str(ident).split("/")) if ident else self.root / sub
        return CertPaths(base / f"{name}.key.pem", base / f"{name}.{cert_suffix}.pem")

    @property
    def root_ca(self) -> CertPaths:
        return self._pair("ca", "", "root")

    @property
    def globalconf_signer(self) -> CertPaths:
        return self._pair("registry", "", "globalconf")

    @property
    def tsa(self) -> CertPaths:
        return self._pair("registry", "", "tsa")

    @property
    def registry_witness(self) -> CertPaths:
        return self._pair("registry", "", "witness")

    def node_auth(self, node_id: str) -> CertPaths:
        return self._pair("nodes", node_id, "auth")

    def node_checkpoint(self, node_id: str) -> CertPaths:
        return self._pair("nodes", node_id, "checkpoint")

    def member_sign(self, member_id: str) -> CertPaths:
        return self._pair("members", member_id, "sign")

    def client_tls(self, subsystem_id: str) -> CertPaths:
        return self._pair("clients", subsystem_id, "tls")

    def auditor_jwt(self, name: str) -> CertPaths:
        return self._pair("auditors", name, "jwt", cert_suffix="pub")

    def client_jwt(self, subsystem_id: str) -> CertPaths:
        return self._pair("clients", subsystem_id, "jwt", cert_suffix="pub")

    def idp_jwt(self, name: str = IDP_NAME) -> CertPaths:
        """The identity provider's token key; ``cert`` is its public key (PEM)."""
        return self._pair("idp", name, "jwt", cert_suffix="pub")


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_key(path: Path, key: AnyPrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_pem(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_pem(path, cert.public_bytes(serialization.Encoding.PEM))


def write_public_key(path: Path, key: PrivateKey) -> None:
    _write_pem(
        path,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def load_ed25519_key(path: Path) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path}: expected an Ed25519 private key")
    return key


def load_private_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an EC private key")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """An EC public key (PEM), e.g. a JWT verification key such as the identity provider's."""
    key = serialization.load_pem_public_key(path.read_bytes())
    # ES256 needs P-256; another curve would only fail later, on every token.
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: expected an EC P-256 public key (ES256)")
    return key


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _name(cn: str, org: str = "xroad-hub development federation") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(*allowed: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{u: u in allowed for u in _USAGES})


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_root_ca(cn: str, *, days: int = 3650) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage("key_cert_sign", "crl_sign"),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_cert(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    key: AnyPrivateKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    *,
    purpose: str,
    days: int = 825,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    hosts: tuple[str, ...] = (),
) -> x509.Certificate:
    """Issue a leaf certificate. ``purpose``: "tls" (node), "client-tls", "sign" (messages)
    or "checkpoint" (a node's Ed25519 checkpoint key). ``key`` may be a public key only (the
    central server issues from a node's CSR); ``hosts`` are further DNS names of a "tls"
    certificate."""
    now = dt.datetime.now(dt.UTC)
    public = (
        key
        if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
        else key.public_key()
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if purpose == "tls":
        builder = (
            builder.add_extension(
                _key_usage("digital_signature", "key_agreement"),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                # Nodes of the demo federation run on loopback; a real node adds its host name.
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        *(_san(h) for h in hosts if h not in ("localhost", "127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        )
    elif purpose == "client-tls":
        # A client system's certificate can only authenticate a client: it never passes
        # for a node (no serverAuth), whatever the handshake on the other side checks.
        builder = builder.add_extension(
            _key_usage("digital_signature", "key_agreement"), critical=True
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    elif purpose == "checkpoint":
        builder = builder.add_extension(_key_usage("digital_signature"), critical=True)
    elif purpose == "sign":
        builder = builder.add_extension(
            _key_usage("digital_signature", "content_commitment"),
            critical=True,
        )
    else:
        raise ValueError(f"unknown certificate purpose {purpose!r}")
    return builder.sign(ca_key, hashes.SHA256())
