"""Offline verification of a node's message log, with nothing but the log file and the
federation root certificate.

For every entry, in order: the leaf index continues the sequence (a deleted or reordered row
shows up as a gap); the stored leaf is canonical and agrees with every searchable column; the
digests in the leaf match the stored metadata, signatures, certificates and (unless purged by
retention) bodies; the request is signed by the client's member and the answer by the
provider's, with certificates issued by the federation CA. The leaves then give the log's
Merkle root (RFC 9162). Problems are reported by leaf index, first one first.

Every checkpoint stored in the log must be signed by the node's checkpoint key (certified
by the federation CA) and name the root that the entries before it give now: an entry
changed, removed or reordered after a checkpoint breaks it. Entries after the last
checkpoint, and a log replaced wholesale, need checkpoints published elsewhere (witnesses,
timestamps: issue 3) to be caught.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from . import merkle
from .checkpoint import Checkpoint, CheckpointError, NoteVerifier, open_note
from .errors import XRoadError
from .identifiers import parse_client_id, parse_node_id, parse_service_id
from .message import body_digest, canonical
from .messagelog.record import sha256_hex
from .messagelog.search import SearchFilter, search_sql
from .rest import request_hash
from .rfc3161 import TimestampError, verify_response
from .signing import SignatureError, SignatureVerifier

__all__ = [
    "AuditReport",
    "Finding",
    "check_signed_part",
    "cosigned",
    "search_log",
    "verify_log",
    "verify_node_checkpoint",
    "witness_name",
]

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
    checkpoints: int = 0
    witnessed: int = 0
    timestamped: int = 0
    root: bytes = merkle.root([])
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def _rows(conn: sqlite3.Connection, columns: str) -> Iterator[sqlite3.Row]:
    cur = conn.execute(f"SELECT {columns} FROM exchange ORDER BY leaf_index")  # fixed names
    while batch := cur.fetchmany(4096):
        yield from batch


def verify_log(
    path: Path,
    trusted_roots: list[x509.Certificate],
    *,
    progress: Callable[[int, int], None] | None = None,
    entries: bool = True,
) -> AuditReport:
    """Verify the log at ``path`` (opened read-only); never modifies it.

    ``entries=False`` checks only the sequence, the tree and the checkpoints (signatures,
    witnesses, timestamps): an order of magnitude faster, and enough to show that nothing
    covered by a checkpoint changed; the full check also proves every entry's content."""
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
        checkpoints = conn.execute("SELECT * FROM checkpoint ORDER BY size").fetchall()
        wanted = {int(c["size"]) for c in checkpoints}
        roots_at: dict[int, bytes] = {}
        tree = merkle.CompactRange()
        columns = "*" if entries else "leaf_index, leaf"
        for expected, row in enumerate(_rows(conn, columns)):
            index = row["leaf_index"]
            if index != expected:
                problem = (
                    f"entry {expected} is missing (next stored entry is {index})"
                    if index > expected
                    else f"entries are out of order ({index} after {expected - 1})"
                )
                report.findings.append(Finding(expected, problem))
                break  # every later index is off too; the first gap is what matters
            if entries:
                for problem in _check_entry(row, certs, verifier):
                    report.findings.append(Finding(index, problem))
            tree.append(merkle.leaf_hash(bytes(row["leaf"])))
            report.entries += 1
            if report.entries in wanted:
                roots_at[report.entries] = tree.root()
            if progress is not None and (report.entries % 10000 == 0 or report.entries == total):
                progress(report.entries, total)
        report.root = tree.root()
        for cp in checkpoints:
            for problem in _check_checkpoint(cp, certs, trusted_roots, roots_at):
                report.findings.append(Finding(None, f"checkpoint at size {cp['size']}: {problem}"))
        report.checkpoints = len(checkpoints)
        report.witnessed = sum(1 for cp in checkpoints if cp["witness_cert_sha256"])
        report.timestamped = sum(1 for cp in checkpoints if cp["timestamp_token"] is not None)
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
    try:
        if orjson.loads(row["subjects"]) != leaf.get("subjects"):
            yield "column subjects differs from the leaf"
    except (orjson.JSONDecodeError, TypeError):
        yield "column subjects is not a JSON list"
    for name in ("started_at", "finished_at"):
        if not isinstance(leaf.get(name), float | int) or abs(leaf[name] - row[name]) > 1e-5:
            yield f"column {name} differs from the leaf"
    for column, key in _DIGESTS:
        value = row[column]
        if sha256_hex(None if value is None else bytes(value)) != leaf.get(key):
            yield f"{column} does not match its digest in the leaf"
    for column, key in _BODIES:
        value = row[column]
        # A body purged by retention is NULL while its digest stays in the leaf.
        if value is not None and sha256_hex(bytes(value)) != leaf.get(key):
            yield f"{column} does not match its digest in the leaf"
    for column, key in _CERTS:
        if row[column] != leaf.get(key):
            yield f"{column} differs from the leaf"
    yield from _check_signatures(row, certs, verifier)


def _check_signatures(
    row: sqlite3.Row, certs: dict[str, bytes], verifier: SignatureVerifier
) -> Iterator[str]:
    try:
        leaf = orjson.loads(bytes(row["leaf"]))
    except orjson.JSONDecodeError:
        return  # reported by _check_entry already
    request_body = None if row["request_body"] is None else bytes(row["request_body"])
    request = (bytes(row["request_meta"]), request_body)
    sides = ["request"] + (["response"] if row["response_meta"] is not None else [])
    for side in sides:
        cert = certs.get(row[f"{side}_cert_sha256"] or "")
        if cert is None:
            yield f"the {side} signing certificate is not in the log"
            continue
        body = row[f"{side}_body"]
        problem = check_signed_part(
            verifier, side, leaf, bytes(row[f"{side}_meta"]), bytes(row[f"{side}_signature"]),
            cert, None if body is None else bytes(body), request,
        )  # fmt: skip
        if problem:
            yield problem


# Request metadata fields the leaf repeats: the signed values must be the logged ones.
_BOUND_REQUEST = (
    ("client", "client"), ("service", "service"), ("id", "message_id"),
    ("request_id", "request_id"), ("user_id", "user_id"), ("issue", "issue"),
    ("represented_party", "represented_party"), ("method", "method"),
)  # fmt: skip
_BOUND_RESPONSE = (("id", "message_id"), ("request_id", "request_id"), ("status", "status"))


def check_signed_part(
    verifier: SignatureVerifier,
    side: str,
    leaf: dict[str, Any],
    meta: bytes,
    signature: bytes,
    cert_der: bytes,
    body: bytes | None,
    request: tuple[bytes, bytes | None] | None = None,
) -> str | None:
    """Why the signed request or response of an exchange is not acceptable, or None.

    The request must be signed by the client's member, the answer by the provider's, with
    certificates valid when the message was made; every field the leaf repeats must be the
    signed value (a node cannot log a genuine signature under other ids, users or cases);
    an answer must carry the hash of its request (``request``: its metadata and body); a
    body (unless purged) must be the signed one."""
    try:
        member = (
            parse_client_id(str(leaf["client"])).member
            if side == "request"
            else parse_service_id(str(leaf["service"])).provider.member
        )
        signed: dict[str, Any] = orjson.loads(meta)
        when = datetime.fromtimestamp(float(signed.get("created", leaf["started_at"])), UTC)
    except (XRoadError, KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return f"{side} metadata or the leaf's identifiers are malformed"
    try:
        verifier.verify(meta, signature, cert_der, member, when)
    except SignatureError as exc:
        return f"{side} signature: {exc}"
    for signed_key, leaf_key in _BOUND_REQUEST if side == "request" else _BOUND_RESPONSE:
        if signed.get(signed_key) != leaf.get(leaf_key):
            return f"the leaf's {leaf_key} is not the signed {side}'s"
    if (
        side == "response"
        and request is not None
        and request[1] is not None
        and signed.get("request_hash") != request_hash(request[0], request[1])
    ):
        return "the answer does not carry the hash of the logged request"
    if body is not None and signed.get("body_sha512") != body_digest(body):
        return f"{side} body is not the one that was signed"
    return None


def verify_node_checkpoint(
    note: str, cert_der: bytes, trusted_roots: list[x509.Certificate]
) -> Checkpoint:
    """The checkpoint in ``note``, if a node's checkpoint certificate (issued by a trusted
    CA, Ed25519) signed it for that node's origin; CheckpointError otherwise."""
    cert = x509.load_der_x509_certificate(cert_der)
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise CheckpointError("the checkpoint certificate does not hold an Ed25519 key")
    if not any(_issued_by(cert, ca) for ca in trusted_roots):
        raise CheckpointError("the checkpoint certificate is not issued by a trusted CA")
    node = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    try:
        parse_node_id(node)  # a node's certificate, never the witness's ("TH/registry")
    except XRoadError as exc:
        raise CheckpointError(f"{node!r} is not a node: its checkpoints prove nothing") from exc
    text, _ = open_note(note, [NoteVerifier(node, key)])
    checkpoint = Checkpoint.parse(text)
    if checkpoint.origin != f"xroad-hub/{node}":
        raise CheckpointError(f"origin {checkpoint.origin!r} is not the node {node}")
    return checkpoint


def witness_name(origin: str) -> str:
    """The only witness whose co-signature counts for a node's checkpoints: the registry of
    the node's own instance (``xroad-hub/TH/GOV/DBD/hub1`` -> ``TH/registry``)."""
    return origin.removeprefix("xroad-hub/").split("/")[0] + "/registry"


def _check_checkpoint(
    cp: sqlite3.Row,
    certs: dict[str, bytes],
    trusted_roots: list[x509.Certificate],
    roots_at: dict[int, bytes],
) -> Iterator[str]:
    der = certs.get(cp["cert_sha256"])
    if der is None:
        yield "its certificate is not in the log"
        return
    try:
        checkpoint = verify_node_checkpoint(str(cp["note"]), der, trusted_roots)
    except CheckpointError as exc:
        yield str(exc)
        return
    witness_der = certs.get(cp["witness_cert_sha256"] or "")
    if cp["witness_cert_sha256"] and not cosigned(str(cp["note"]), witness_der, trusted_roots):
        yield "the witness co-signature does not verify"
    token = cp["timestamp_token"]
    if token is not None:
        try:
            verify_response(bytes(token), checkpoint.text().encode(), trusted_roots)
        except TimestampError as exc:
            yield f"its timestamp does not verify: {exc}"
    if (checkpoint.size, checkpoint.root) != (cp["size"], bytes(cp["root"])):
        yield "the signed note does not match the stored size and root"
    computed = roots_at.get(checkpoint.size)
    if computed is None:
        yield f"the log holds fewer than {checkpoint.size} entries (truncated)"
    elif computed != checkpoint.root:
        yield "the entries before it no longer give the signed root (history rewritten)"


def cosigned(note: str, witness_der: bytes | None, trusted_roots: list[x509.Certificate]) -> bool:
    """True if the instance's witness, whose certificate is ``witness_der``, co-signed the
    checkpoint in ``note``; a node's own (or another) certificate never counts."""
    if witness_der is None:
        return False
    try:
        origin = Checkpoint.parse(note.partition("\n\n")[0] + "\n").origin
    except CheckpointError:
        return False
    cert = x509.load_der_x509_certificate(witness_der)
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return False
    if not any(_issued_by(cert, ca) for ca in trusted_roots):
        return False
    name = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    if name != witness_name(origin):
        return False
    try:
        return name in open_note(note, [NoteVerifier(name, key)])[1]
    except CheckpointError:
        return False


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def search_log(
    path: Path, query: SearchFilter, *, limit: int = 100, after: int = -1
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of matching entries (without bodies) and the ``after`` of the next page."""
    sql, params = search_sql(query, limit=limit, after=after)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()
    for row in rows:
        row["subjects"] = orjson.loads(row["subjects"])
    return rows, (rows[-1]["leaf_index"] if len(rows) == limit else None)
