"""Member signatures on messages: signing, and verification against the federation's CAs.

Members sign with ECDSA P-256 keys (verification is about twice as fast as Ed25519 with this
OpenSSL, and every message is verified once per hop).

Signatures are batched through a hash tree, as X-Road does under load: the messages signed
together are the leaves of an RFC 9162 Merkle tree, one ECDSA signature covers the tree's
root and size, and each message carries its leaf index and audit path. A batch of one is an
ordinary signature over a one-leaf tree. The verifier recomputes the root from the message
and its path, and remembers roots it has verified, so a batch costs one ECDSA verification at
the receiving node however many of its messages arrive. A signing certificate names its member
in the subject CN (``TH/GOV/DBD``) and must be issued directly by a CA that the global
configuration trusts. Verified certificates are cached by their SHA-256 so that the chain is
checked once per certificate, not once per message.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from xroad_hub.errors import HubError, ProtocolError
from xroad_hub.protocol import merkle
from xroad_hub.protocol.identifiers import MemberId, parse_member_id

__all__ = [
    "BatchSignature",
    "MessageSigner",
    "SignatureError",
    "SignatureVerifier",
    "cert_fingerprint",
]

_ECDSA = ec.ECDSA(hashes.SHA256())


_BATCH_DOMAIN = b"xroad-hub batch signature v1\n"
_BATCH_HEAD = struct.Struct(">IIB")  # leaf index, tree size, path length
MAX_BATCH = 1024


def cert_fingerprint(cert_der: bytes) -> str:
    """Hex SHA-256 of a DER certificate: how nodes and clients are pinned."""
    return hashlib.sha256(cert_der).hexdigest()


class SignatureError(HubError, ValueError):
    """The signature, or the certificate behind it, is not acceptable."""


def _batch_message(root: bytes, size: int) -> bytes:
    """What the ECDSA signature covers: the tree's root and size (a root alone does not fix
    the size an audit path is checked against)."""
    return _BATCH_DOMAIN + size.to_bytes(8, "big") + root


@dataclass(frozen=True, slots=True)
class BatchSignature:
    index: int
    size: int
    path: tuple[bytes, ...]
    signature: bytes

    def encode(self) -> bytes:
        head = _BATCH_HEAD.pack(self.index, self.size, len(self.path))
        return head + b"".join(self.path) + self.signature

    @classmethod
    def decode(cls, data: bytes) -> BatchSignature:
        if len(data) < _BATCH_HEAD.size:
            raise SignatureError("signature is truncated")
        index, size, n = _BATCH_HEAD.unpack_from(data)
        end = _BATCH_HEAD.size + 32 * n
        if size > MAX_BATCH or len(data) <= end:
            raise SignatureError("signature is malformed")
        path = tuple(data[i : i + 32] for i in range(_BATCH_HEAD.size, end, 32))
        return cls(index, size, path, data[end:])


@dataclass(frozen=True, slots=True)
class MessageSigner:
    member: MemberId
    key: ec.EllipticCurvePrivateKey
    cert_der: bytes

    def sign(self, data: bytes) -> bytes:
        """A signature of one message (a batch of one)."""
        return self.sign_batch([data])[0]

    def sign_batch(self, items: list[bytes]) -> list[bytes]:
        """One ECDSA signature for all ``items``; returns each item's encoded signature."""
        if not 0 < len(items) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} messages")
        tree = merkle.MemoryTree(merkle.leaf_hash(item) for item in items)
        size = len(items)
        signature = self.key.sign(_batch_message(tree.root(), size), _ECDSA)
        return [
            BatchSignature(i, size, tuple(merkle.inclusion_proof(tree, i)), signature).encode()
            for i in range(size)
        ]


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
        # Batch roots already verified: (certificate, signed root message, signature).
        self._roots: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()

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
        batch = BatchSignature.decode(signature)
        root = merkle.root_from_inclusion(
            merkle.leaf_hash(data), batch.index, batch.size, batch.path
        )
        if root is None:
            raise SignatureError("signature does not verify (audit path)")
        signed = _batch_message(root, batch.size)
        key = (cert_der, signed, batch.signature)
        if key in self._roots:
            self._roots.move_to_end(key)
            return
        try:
            checked.key.verify(batch.signature, signed, _ECDSA)
        except InvalidSignature as exc:
            raise SignatureError("signature does not verify") from exc
        self._roots[key] = None
        if len(self._roots) > 8192:
            self._roots.popitem(last=False)

    def signer(self, cert_der: bytes) -> tuple[MemberId, float, float]:
        """The member a signing certificate names and its validity (epoch seconds), once its
        issuer and extensions are checked (cached); SignatureError if it cannot sign."""
        checked = self._cache.get(cert_der) or self._check_cert(cert_der)
        return checked.member, checked.not_before.timestamp(), checked.not_after.timestamp()

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
        except ProtocolError:
            member = None
        if member is None:
            raise SignatureError("signing certificate does not name a member in its CN")
        verified = _Verified(member, key, cert.not_valid_before_utc, cert.not_valid_after_utc)
        if len(self._cache) > 4096:  # a federation has far fewer; bounds a flood of new certs
            self._cache.clear()
        self._cache[cert_der] = verified
        return verified
