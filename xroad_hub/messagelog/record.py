"""One logged exchange, and its leaf: the canonical bytes a Merkle tree will commit to."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import overload

from xroad_hub.protocol.message import canonical

__all__ = ["LogRecord", "cert_sha256_hex", "sha256_hex"]


def sha256_hex(data: bytes | None) -> str | None:
    """Hex SHA-256 of ``data``, None for None: how the leaf and the tables name content."""
    return None if data is None else hashlib.sha256(data).hexdigest()


# A node signs and verifies with a handful of certificates, each named by its digest in
# every leaf and row it appears in (four times per exchange per node): hashed once each.
_CERT_DIGESTS: dict[bytes, str] = {}
_CERT_DIGESTS_MAX = 4096  # a bound for a log that somehow sees ever new certificates


@overload
def cert_sha256_hex(der: bytes) -> str: ...
@overload
def cert_sha256_hex(der: None) -> None: ...
def cert_sha256_hex(der: bytes | None) -> str | None:
    """``sha256_hex`` of a certificate, remembered."""
    if der is None:
        return None
    digest = _CERT_DIGESTS.get(der)
    if digest is None:
        if len(_CERT_DIGESTS) >= _CERT_DIGESTS_MAX:
            _CERT_DIGESTS.clear()
        digest = _CERT_DIGESTS[der] = hashlib.sha256(der).hexdigest()
    return digest


@dataclass(frozen=True, slots=True)
class LogRecord:
    """An exchange as one node saw it. ``role`` is "client" or "provider" (which side)."""

    message_id: str
    request_id: str
    role: str
    client: str
    service: str
    user_id: str | None
    issue: str | None
    represented_party: str | None
    method: str
    status: int
    error_type: str | None
    started_at: float
    finished_at: float
    request_meta: bytes
    request_signature: bytes
    request_body: bytes
    request_cert: bytes  # DER of the client member's signing certificate
    response_meta: bytes | None = None
    response_signature: bytes | None = None
    response_body: bytes | None = None
    response_cert: bytes | None = None
    subjects: tuple[str, ...] = ()  # data subjects the exchange concerns (provider side)

    def leaf(self) -> bytes:
        """Metadata plus digests only, so bodies can be purged without breaking the tree."""
        return canonical(
            {
                "v": 1,
                "message_id": self.message_id,
                "request_id": self.request_id,
                "role": self.role,
                "client": self.client,
                "service": self.service,
                "user_id": self.user_id,
                "issue": self.issue,
                "represented_party": self.represented_party,
                "method": self.method,
                "status": self.status,
                "error_type": self.error_type,
                "started_at": round(self.started_at, 6),
                "finished_at": round(self.finished_at, 6),
                "request_meta_sha256": sha256_hex(self.request_meta),
                "request_signature_sha256": sha256_hex(self.request_signature),
                "request_body_sha256": sha256_hex(self.request_body),
                "response_meta_sha256": sha256_hex(self.response_meta),
                "response_signature_sha256": sha256_hex(self.response_signature),
                "response_body_sha256": sha256_hex(self.response_body),
                "request_cert_sha256": cert_sha256_hex(self.request_cert),
                "response_cert_sha256": cert_sha256_hex(self.response_cert),
                "subjects": sorted(self.subjects),
            }
        )
