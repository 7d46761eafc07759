"""Member signatures on messages: signing, and verification against the federation's CAs.

Members sign with ECDSA P-256 keys (verification is about twice as fast as Ed25519 with this
OpenSSL, and every message is verified once per hop). A signing certificate names its member
in the subject CN (``TH/GOV/DBD``) and must be issued directly by a CA that the global
configuration trusts. Verified certificates are cached by their SHA-256 so that the chain is
checked once per certificate, not once per message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .errors import XRoadError
from .identifiers import MemberId, parse_member_id

__all__ = ["MessageSigner", "SignatureError", "SignatureVerifier", "cert_fingerprint"]

_ECDSA = ec.ECDSA(hashes.SHA256())


def cert_fingerprint(cert_der: bytes) -> str:
    """Hex SHA-256 of a DER certificate: how nodes and clients are pinned."""
    return hashlib.sha256(cert_der).hexdigest()


class SignatureError(ValueError):
    """The signature, or the certificate behind it, is not acceptable."""


@dataclass(frozen=True, slots=True)
class MessageSigner:
    member: MemberId
    key: ec.EllipticCurvePrivateKey
    cert_der: bytes

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, _ECDSA)


@dataclass(frozen=True, slots=True)
class _Verified:
    member: MemberId
    key: ec.EllipticCurvePublicKey
    not_before: datetime
    not_after: datetime


class SignatureVerifier:
    """Verifies member signatures against a set of trusted CA certificates."""

    def __init__(self, trusted_cas: list[x509.Certificate]) -> None:
        self._cas = trusted_cas
        self._cache: dict[bytes, _Verified] = {}

    def verify(
        self,
        data: bytes,
        signature: bytes,
        cert_der: bytes,
        expected: MemberId,
        now: datetime | None = None,
    ) -> None:
        checked = self._cache.get(cert_der) or self._check_cert(cert_der)
        now = now or datetime.now(UTC)
        if not checked.not_before <= now <= checked.not_after:
            raise SignatureError("signing certificate is expired or not yet valid")
        if checked.member != expected:
            raise SignatureError(
                f"message signed by {checked.member}, expected a signature of {expected}"
            )
        try:
            checked.key.verify(signature, data, _ECDSA)
        except InvalidSignature as exc:
            raise SignatureError("signature does not verify") from exc

    def _check_cert(self, cert_der: bytes) -> _Verified:
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError as exc:
            raise SignatureError("signing certificate is not valid DER") from exc
        for ca in self._cas:
            if ca.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (InvalidSignature, ValueError, TypeError):
                continue
            break
        else:
            raise SignatureError("signing certificate is not issued by a trusted CA")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SignatureError("signing key must be an EC key")
        try:
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            if basic.ca:
                raise SignatureError("a CA certificate cannot sign messages")
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound as exc:
            raise SignatureError("signing certificate lacks required extensions") from exc
        if not (usage.digital_signature or usage.content_commitment):
            raise SignatureError("certificate is not a signing certificate (key usage)")
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        try:
            member = parse_member_id(str(cns[0].value)) if cns else None
        except XRoadError:
            member = None
        if member is None:
            raise SignatureError("signing certificate does not name a member in its CN")
        verified = _Verified(member, key, cert.not_valid_before_utc, cert.not_valid_after_utc)
        if len(self._cache) > 4096:  # a federation has far fewer; bounds a flood of new certs
            self._cache.clear()
        self._cache[cert_der] = verified
        return verified
