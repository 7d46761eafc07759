"""Signed messages between nodes, sans-I/O.

A message is an envelope of four length-prefixed parts and the body:

    b"XHM1" | u32 len | meta | u32 len | signature | u32 len | signer cert (DER) | body

``meta`` is canonical JSON (sorted keys, no whitespace) describing the request or response,
including the SHA-512 of the body, so one signature over ``meta`` covers the whole message.
The signer's certificate travels with the message so that an auditor holding only the log and
the federation root certificate can verify it later.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from xroad_hub.errors import ProtocolError

__all__ = [
    "CONTENT_TYPE",
    "Envelope",
    "MessageError",
    "body_digest",
    "canonical",
    "decode_envelope",
    "encode_envelope",
]

MAGIC = b"XHM1"
CONTENT_TYPE = "application/x-xroad-hub-message"
_LEN = struct.Struct(">I")
MAX_META = 256 * 1024
MAX_SIGNATURE = 1024  # ECDSA (~72 bytes) plus an audit path of up to 28 hashes
MAX_CERT = 16 * 1024
# The most an envelope adds around its body: what a peer must accept beyond the body limit.
MAX_OVERHEAD = len(MAGIC) + 3 * 4 + MAX_META + MAX_SIGNATURE + MAX_CERT


def canonical(obj: dict[str, Any]) -> bytes:
    """Canonical JSON bytes: the exact bytes that are signed, logged and hashed."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def body_digest(body: bytes) -> str:
    return base64.b64encode(hashlib.sha512(body).digest()).decode()


@dataclass(frozen=True, slots=True)
class Envelope:
    meta_bytes: bytes
    meta: dict[str, Any]
    signature: bytes
    cert_der: bytes
    body: bytes


def encode_envelope(meta_bytes: bytes, signature: bytes, cert_der: bytes, body: bytes) -> bytes:
    return b"".join(
        (
            MAGIC,
            _LEN.pack(len(meta_bytes)),
            meta_bytes,
            _LEN.pack(len(signature)),
            signature,
            _LEN.pack(len(cert_der)),
            cert_der,
            body,
        )
    )


def decode_envelope(data: bytes) -> Envelope:
    """Split an envelope and check that the body matches the digest in its metadata.

    Raises MessageError without an X-Road prefix: the caller knows who is to blame (the
    provider node blames the client node, the client node blames the provider).
    """
    if not data.startswith(MAGIC):
        raise _malformed("not an xroad-hub message (bad magic)")
    pos = len(MAGIC)
    parts = []
    for limit, what in ((MAX_META, "metadata"), (MAX_SIGNATURE, "signature"), (MAX_CERT, "cert")):
        if pos + 4 > len(data):
            raise _malformed(f"truncated message before {what}")
        (n,) = _LEN.unpack_from(data, pos)
        pos += 4
        if n > limit or pos + n > len(data):
            raise _malformed(f"{what} length {n} out of bounds")
        parts.append(data[pos : pos + n])
        pos += n
    meta_bytes, signature, cert_der = parts
    try:
        meta = orjson.loads(meta_bytes)
    except orjson.JSONDecodeError as exc:
        raise _malformed("metadata is not JSON") from exc
    if not isinstance(meta, dict):
        raise _malformed("metadata is not a JSON object")
    body = data[pos:]
    if meta.get("body_sha512") != body_digest(body):
        raise MessageError("InvalidSignatureValue", "body does not match the signed digest")
    return Envelope(meta_bytes, meta, signature, cert_der, body)


class MessageError(ProtocolError):
    """A message that cannot be used; ``code`` is the X-Road fault code without prefix."""


def _malformed(message: str) -> MessageError:
    return MessageError("InvalidMessage", message)
