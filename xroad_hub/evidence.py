"""Evidence bundles: one exchange, provable with nothing but the bundle and the federation
root certificate.

A bundle (JSON, ``format: xroad-hub-evidence/1``, binary fields base64) holds the log leaf
and its index; the signed request and answer (metadata, signature, signing certificate and,
unless purged by retention, body); the audit path from the leaf to a checkpoint's root; and
that checkpoint with the node's checkpoint certificate. Verifying it shows that the node
signed a tree containing exactly this exchange, and that the client's and provider's members
signed what the leaf commits to.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509

from . import merkle
from .audit import check_signed_part, verify_node_checkpoint
from .checkpoint import CheckpointError
from .message import canonical
from .rfc3161 import TimestampError, verify_response
from .signing import SignatureVerifier

__all__ = ["FORMAT", "EvidenceError", "export_bundle", "verify_bundle"]

FORMAT = "xroad-hub-evidence/1"


class EvidenceError(ValueError):
    """The bundle cannot be made (export) or does not prove what it claims (verify)."""


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(value: object) -> bytes | None:
    return None if value is None else base64.b64decode(str(value), validate=True)


def export_bundle(log_path: Path, message_id: str, leaf_index: int | None = None) -> bytes:
    """The evidence bundle of the exchange ``message_id`` in the log at ``log_path``."""
    conn = sqlite3.connect(f"file:{log_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT * FROM exchange WHERE message_id = ? ORDER BY leaf_index", (message_id,)
        ).fetchall()
        if leaf_index is not None:
            rows = [r for r in rows if r["leaf_index"] == leaf_index]
        if not rows:
            raise EvidenceError(f"no exchange {message_id!r} in {log_path}")
        if len(rows) > 1:
            found = ", ".join(str(r["leaf_index"]) for r in rows)
            raise EvidenceError(f"{message_id!r} is logged at entries {found}; pick one")
        row = rows[0]
        index = int(row["leaf_index"])
        cp = conn.execute(
            "SELECT * FROM checkpoint WHERE size > ? ORDER BY size DESC LIMIT 1", (index,)
        ).fetchone()
        if cp is None:
            raise EvidenceError(
                f"no checkpoint covers entry {index} yet; wait for the node's next checkpoint"
            )
        size = int(cp["size"])
        leaves = [
            merkle.leaf_hash(bytes(r[0]))
            for r in conn.execute(
                "SELECT leaf FROM exchange WHERE leaf_index < ? ORDER BY leaf_index", (size,)
            )
        ]
        certs = {r["sha256"]: bytes(r["der"]) for r in conn.execute("SELECT * FROM certificate")}
    finally:
        conn.close()
    if len(leaves) != size:
        raise EvidenceError("the log holds fewer entries than its checkpoint (truncated)")

    def part(side: str) -> dict[str, Any] | None:
        if row[f"{side}_meta"] is None:
            return None
        return {
            "meta": _b64(bytes(row[f"{side}_meta"])),
            "signature": _b64(bytes(row[f"{side}_signature"])),
            "cert": _b64(certs.get(row[f"{side}_cert_sha256"] or "")),
            "body": _b64(None if row[f"{side}_body"] is None else bytes(row[f"{side}_body"])),
        }

    bundle = {
        "format": FORMAT,
        "leaf_index": index,
        "leaf": _b64(bytes(row["leaf"])),
        "request": part("request"),
        "response": part("response"),
        "inclusion": {
            "tree_size": size,
            "path": [_b64(h) for h in merkle.inclusion_proof(leaves, index)],
        },
        "checkpoint": {
            "note": cp["note"],
            "cert": _b64(certs[cp["cert_sha256"]]),
            # RFC 3161 reply over the checkpoint text; checkable with openssl ts -verify.
            "timestamp": _b64(
                None if cp["timestamp_token"] is None else bytes(cp["timestamp_token"])
            ),
        },
    }
    return orjson.dumps(bundle, option=orjson.OPT_INDENT_2)


def verify_bundle(data: bytes, trusted_roots: list[x509.Certificate]) -> dict[str, Any]:
    """Check a bundle; return the exchange's leaf (what is proven) or raise EvidenceError."""
    try:
        doc = orjson.loads(data)
        if doc.get("format") != FORMAT:
            raise EvidenceError(f"not an evidence bundle of format {FORMAT}")
        leaf_bytes = _unb64(doc["leaf"]) or b""
        index = int(doc["leaf_index"])
        size = int(doc["inclusion"]["tree_size"])
        path = [_unb64(h) or b"" for h in doc["inclusion"]["path"]]
        note = str(doc["checkpoint"]["note"])
        cp_cert = _unb64(doc["checkpoint"]["cert"]) or b""
        leaf: dict[str, Any] = orjson.loads(leaf_bytes)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, EvidenceError):
            raise
        raise EvidenceError(f"malformed bundle: {exc}") from exc
    if canonical(leaf) != leaf_bytes:
        raise EvidenceError("the leaf is not in canonical form")

    try:
        checkpoint = verify_node_checkpoint(note, cp_cert, trusted_roots)
    except (CheckpointError, ValueError) as exc:
        raise EvidenceError(f"checkpoint: {exc}") from exc
    stamp = doc["checkpoint"].get("timestamp")
    if stamp is not None:
        try:
            info = verify_response(_unb64(stamp) or b"", checkpoint.text().encode(), trusted_roots)
        except (TimestampError, ValueError) as exc:
            raise EvidenceError(f"checkpoint timestamp: {exc}") from exc
        leaf["_timestamped_at"] = info.gen_time.isoformat()
    if checkpoint.size != size:
        raise EvidenceError("the inclusion proof is for another tree size than the checkpoint")
    root = merkle.root_from_inclusion(merkle.leaf_hash(leaf_bytes), index, size, path)
    if root != checkpoint.root:
        raise EvidenceError("the leaf is not in the tree the checkpoint signs")

    verifier = SignatureVerifier(trusted_roots)
    request: tuple[bytes, bytes | None] | None = None
    for side in ("request", "response"):
        part = doc.get(side)
        if part is None:
            if leaf.get(f"{side}_meta_sha256") is not None:
                raise EvidenceError(f"the {side} is missing from the bundle")
            continue
        meta, sig, cert = (_unb64(part[k]) or b"" for k in ("meta", "signature", "cert"))
        body = _unb64(part.get("body"))
        for name, value in (("meta", meta), ("signature", sig), ("cert", cert), ("body", body)):
            expected = leaf.get(f"{side}_{name}_sha256")
            if value is not None and hashlib.sha256(value).hexdigest() != expected:
                raise EvidenceError(f"the {side} {name} is not the one the leaf commits to")
        problem = check_signed_part(verifier, side, leaf, meta, sig, cert, body, request)
        if problem:
            raise EvidenceError(problem)
        request = (meta, body)
    return leaf
