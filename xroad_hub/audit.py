"""Offline verification of a node's message log, with nothing but the log file and the
federation root certificate.

For every entry, in order: the leaf index continues the sequence (a deleted or reordered row
shows up as a gap); the stored leaf is canonical and agrees with every searchable column; the
digests in the leaf match the stored metadata, signatures, certificates and (unless purged by
retention) bodies; the request is signed by the client's member and the answer by the
provider's, with certificates issued by the federation CA. The leaves then give the log's
Merkle root (RFC 9162). Problems are reported by leaf index, first one first.

Checkpoints (signed, timestamped tree heads) are what make a wholesale rewrite of the file
detectable; until nodes publish them (issue 3), this check proves internal consistency only.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509

from . import merkle
from .errors import XRoadError
from .identifiers import parse_client_id, parse_service_id
from .message import body_digest, canonical
from .signing import SignatureError, SignatureVerifier

__all__ = ["AuditReport", "Finding", "verify_log"]

# Leaf fields that are also stored as columns (searchable); they must agree.
_COLUMN_FIELDS = (
    "message_id", "request_id", "role", "client", "service", "user_id", "issue",
    "represented_party", "method", "status", "error_type",
)  # fmt: skip
_DIGESTS = (
    ("request_meta", "request_meta_sha256"),
    ("request_signature", "request_signature_sha256"),
    ("response_meta", "response_meta_sha256"),
    ("response_signature", "response_signature_sha256"),
)
_BODIES = (("request_body", "request_body_sha256"), ("response_body", "response_body_sha256"))
_CERTS = (
    ("request_cert_sha256", "request_cert_sha256"),
    ("response_cert_sha256", "response_cert_sha256"),
)


@dataclass(frozen=True, slots=True)
class Finding:
    leaf_index: int | None
    problem: str

    def __str__(self) -> str:
        where = f"entry {self.leaf_index}" if self.leaf_index is not None else "log"
        return f"{where}: {self.problem}"


@dataclass
class AuditReport:
    entries: int = 0
    root: bytes = merkle.root([])
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def _sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _rows(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    cur = conn.execute("SELECT * FROM exchange ORDER BY leaf_index")
    while batch := cur.fetchmany(4096):
        yield from batch


def verify_log(
    path: Path,
    trusted_roots: list[x509.Certificate],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Verify the log at ``path`` (opened read-only); never modifies it."""
    report = AuditReport()
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        report.findings.append(Finding(None, f"cannot open {path}: {exc}"))
        return report
    conn.row_factory = sqlite3.Row
    try:
        total = conn.execute("SELECT COUNT(*) FROM exchange").fetchone()[0]
        certs = {r["sha256"]: bytes(r["der"]) for r in conn.execute("SELECT * FROM certificate")}
        verifier = SignatureVerifier(trusted_roots)
        tree = merkle.CompactRange()
        for expected, row in enumerate(_rows(conn)):
            index = row["leaf_index"]
            if index != expected:
                problem = (
                    f"entry {expected} is missing (next stored entry is {index})"
                    if index > expected
                    else f"entries are out of order ({index} after {expected - 1})"
                )
                report.findings.append(Finding(expected, problem))
                break  # every later index is off too; the first gap is what matters
            for problem in _check_entry(row, certs, verifier):
                report.findings.append(Finding(index, problem))
            tree.append(merkle.leaf_hash(bytes(row["leaf"])))
            report.entries += 1
            if progress is not None and (report.entries % 10000 == 0 or report.entries == total):
                progress(report.entries, total)
        report.root = tree.root()
    except sqlite3.Error as exc:
        report.findings.append(Finding(None, f"the log cannot be read: {exc}"))
    finally:
        conn.close()
    return report


def _check_entry(
    row: sqlite3.Row, certs: dict[str, bytes], verifier: SignatureVerifier
) -> Iterator[str]:
    raw = bytes(row["leaf"])
    try:
        leaf: dict[str, Any] = orjson.loads(raw)
    except orjson.JSONDecodeError:
        yield "the leaf is not JSON"
        return
    if canonical(leaf) != raw:
        yield "the leaf is not in canonical form"
    for name in _COLUMN_FIELDS:
        if leaf.get(name) != row[name]:
            yield f"column {name} ({row[name]!r}) differs from the leaf ({leaf.get(name)!r})"
    for name in ("started_at", "finished_at"):
        if not isinstance(leaf.get(name), float | int) or abs(leaf[name] - row[name]) > 1e-5:
            yield f"column {name} differs from the leaf"
    for column, key in _DIGESTS:
        value = row[column]
        if _sha256(None if value is None else bytes(value)) != leaf.get(key):
            yield f"{column} does not match its digest in the leaf"
    for column, key in _BODIES:
        value = row[column]
        # A body purged by retention is NULL while its digest stays in the leaf.
        if value is not None and _sha256(bytes(value)) != leaf.get(key):
            yield f"{column} does not match its digest in the leaf"
    for column, key in _CERTS:
        if row[column] != leaf.get(key):
            yield f"{column} differs from the leaf"
    yield from _check_signatures(row, certs, verifier)


def _check_signatures(
    row: sqlite3.Row, certs: dict[str, bytes], verifier: SignatureVerifier
) -> Iterator[str]:
    try:
        client = parse_client_id(row["client"])
        provider = parse_service_id(row["service"]).provider
    except XRoadError:
        yield "client or service is not a valid identifier"
        return
    # Certificates are judged at the time of the exchange, not of the audit.
    when = datetime.fromtimestamp(row["started_at"], UTC)
    parts = [("request", client.member)]
    if row["response_meta"] is not None:
        parts.append(("response", provider.member))
    for side, member in parts:
        meta = bytes(row[f"{side}_meta"])
        cert = certs.get(row[f"{side}_cert_sha256"] or "")
        if cert is None:
            yield f"the {side} signing certificate is not in the log"
            continue
        try:
            verifier.verify(meta, bytes(row[f"{side}_signature"]), cert, member, when)
        except SignatureError as exc:
            yield f"{side} signature: {exc}"
            continue
        body = row[f"{side}_body"]
        if body is not None:
            try:
                signed_digest = orjson.loads(meta).get("body_sha512")
            except orjson.JSONDecodeError:
                yield f"{side} metadata is not JSON"
                continue
            if signed_digest != body_digest(bytes(body)):
                yield f"{side} body is not the one that was signed"
