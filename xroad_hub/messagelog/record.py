"""One logged exchange, and its leaf: the canonical bytes a Merkle tree will commit to.

A log stores a record's columns (``LogRecord.stored``) and the hash of its leaf, not the
leaf: ``leaf_of`` rebuilds it from the columns, and is also how the record's own leaf is
made, so what is hashed when logging and what a reader rebuilds come from the same values
by the same code.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass
from typing import Any, overload

import orjson

from xroad_hub.messagelog.layout import STORED
from xroad_hub.messagelog.reader import Row
from xroad_hub.protocol import merkle
from xroad_hub.protocol.message import canonical

__all__ = ["LogRecord", "cert_sha256_hex", "leaf_of", "sha256_hex"]


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
        return leaf_of(self._columns())

    def stored(self) -> tuple[Any, ...]:
        """What a log stores of this record: the values of ``layout.STORED``, in order (the
        leaf hash among them)."""
        columns = self._columns()
        columns["leaf_hash"] = merkle.leaf_hash(leaf_of(columns))
        return _STORED_VALUES(columns)

    def _columns(self) -> dict[str, Any]:
        response_body = self.response_body
        return {
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
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "request_meta": self.request_meta,
            "request_signature": self.request_signature,
            "response_meta": self.response_meta,
            "response_signature": self.response_signature,
            "request_body": self.request_body,
            "response_body": response_body,
            "request_body_sha256": hashlib.sha256(self.request_body).digest(),
            "response_body_sha256": (
                None if response_body is None else hashlib.sha256(response_body).digest()
            ),
            "request_cert_sha256": cert_sha256_hex(self.request_cert),
            "response_cert_sha256": cert_sha256_hex(self.response_cert),
            "subjects": orjson.dumps(sorted(self.subjects)).decode(),
        }


_STORED_VALUES = operator.itemgetter(*STORED)


def _hex(digest: bytes | None) -> str | None:
    return None if digest is None else digest.hex()


def _time(value: float) -> float:
    """A time as the leaf holds it: a float (an int record time comes back from the REAL /
    double precision column as one), to the microsecond, never -0.0 (SQLite keeps none)."""
    return round(float(value), 6) + 0.0


def leaf_of(row: Row | dict[str, Any]) -> bytes:
    """The leaf of an entry, from its stored columns: byte for byte the leaf that was hashed
    into the tree when it was logged. Raises (TypeError, ValueError, orjson's error) on a
    column of the wrong type: callers that read untrusted rows check types first."""
    return canonical(
        {
            "v": 1,
            "message_id": row["message_id"],
            "request_id": row["request_id"],
            "role": row["role"],
            "client": row["client"],
            "service": row["service"],
            "user_id": row["user_id"],
            "issue": row["issue"],
            "represented_party": row["represented_party"],
            "method": row["method"],
            "status": row["status"],
            "error_type": row["error_type"],
            "started_at": _time(row["started_at"]),
            "finished_at": _time(row["finished_at"]),
            "request_meta_sha256": sha256_hex(row["request_meta"]),
            "request_signature_sha256": sha256_hex(row["request_signature"]),
            "request_body_sha256": _hex(row["request_body_sha256"]),
            "response_meta_sha256": sha256_hex(row["response_meta"]),
            "response_signature_sha256": sha256_hex(row["response_signature"]),
            "response_body_sha256": _hex(row["response_body_sha256"]),
            "request_cert_sha256": row["request_cert_sha256"],
            "response_cert_sha256": row["response_cert_sha256"],
            "subjects": orjson.loads(row["subjects"]),
        }
    )
