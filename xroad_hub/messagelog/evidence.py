"""Evidence bundles: one exchange, provable with nothing but the bundle and the federation
root certificate.

A bundle (JSON, ``format: xroad-hub-evidence/2``, binary fields base64) holds the log leaf
and its index; the signed request and answer (metadata, signature, signing certificate and,
unless purged by retention, body); the audit path from the leaf to a checkpoint's root; that
checkpoint, co-signed by the instance's witness, with the node's checkpoint certificate, the
witness's certificate and the RFC 3161 timestamp of the checkpoint; and the signed global
configuration the node worked under when it logged the exchange, with the registry's
configuration-signing certificate.

A bundle is verified only if ALL of this holds (each missing or wrong piece is reported):
the request is signed by the client's member and, unless the leaf records a failed exchange,
the answer by the provider's member, and the leaf's digests are those of the signed messages;
the node signed the checkpoint and the witness co-signed it, both with certificates of the
federation CA; the timestamp authority stamped it; the leaf is in the tree it signs; and the
signed global configuration in force when the request was signed has the logging node hosting
the exchange's client (client-side entry) or provider (provider-side entry). A node's
checkpoint key alone can therefore prove nothing about an exchange it did not take part in.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from xroad_hub.errors import HubError, ProtocolError
from xroad_hub.messagelog.audit import (
    check_signed_part,
    revocation_problem,
    verify_node_checkpoint,
    witness_name,
)
from xroad_hub.messagelog.layout import TREE_BLOCK, TREE_BLOCK_HEIGHT
from xroad_hub.messagelog.reader import LogReader, LogReadError, Row
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.messagelog.source import LogSource, reading
from xroad_hub.protocol import merkle
from xroad_hub.protocol.checkpoint import Checkpoint, CheckpointError, NoteVerifier, open_note
from xroad_hub.protocol.globalconf import (
    GlobalConf,
    GlobalConfError,
    Revocation,
    signer_name,
    verify_globalconf,
)
from xroad_hub.protocol.identifiers import (
    ClientId,
    parse_client_id,
    parse_node_id,
    parse_service_id,
)
from xroad_hub.protocol.message import canonical
from xroad_hub.protocol.rfc3161 import TimestampError, verify_response
from xroad_hub.protocol.signing import SignatureVerifier, cert_fingerprints
from xroad_hub.protocol.subjects import signed_answer_values, signed_request_values

__all__ = [
    "CLOCK_SKEW",
    "FORMAT",
    "EvidenceError",
    "Proof",
    "export_bundle",
    "iso_utc",
    "load_revocations",
    "verify_bundle",
]

FORMAT = "xroad-hub-evidence/2"
# Tolerance between the clocks of the client's node (which dates the request), the registry
# (which dates global configurations) and the timestamp authority.
CLOCK_SKEW = timedelta(seconds=60)


class EvidenceError(HubError, ValueError):
    """The bundle cannot be made (export) or does not prove what it claims (verify);
    ``problems`` lists every reason, one per missing or wrong piece."""

    def __init__(self, message: str | list[str]) -> None:
        self.problems = [message] if isinstance(message, str) else list(message)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class Proof:
    """What a verified bundle proves."""

    leaf: dict[str, Any]  # the logged exchange
    node: str  # the node that logged it (and hosted its party then)
    witness: str  # who co-signed the checkpoint
    request_signed_at: datetime  # by the client's member
    timestamped_at: datetime  # the checkpoint, by the timestamp authority
    globalconf_serial: int
    globalconf_generated_at: datetime
    # Per subject the leaf names: whose signed message names it ("client": the request,
    # "provider": the answer), or None when the body that could was purged (then only the
    # node's word). Which value is THE subject is the provider node's configuration (its
    # locators), which nothing signed covers; a subject no signed message names fails.
    subjects_signed_by: dict[str, str | None]
    # Certificates that signed this exchange and were revoked later, after the exchange was
    # timestamped: what they signed before still stands (one line each, for people).
    revoked_later: tuple[str, ...] = ()


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(value: object) -> bytes | None:
    return None if value is None else base64.b64decode(str(value), validate=True)


def export_bundle(log: LogSource, message_id: str, leaf_index: int | None = None) -> bytes:
    """The evidence bundle of the exchange ``message_id`` in the log ``log`` (a file, a
    PostgreSQL DSN or an open reader)."""
    try:
        with reading(log) as reader:
            row = _exchange_row(reader, message_id, leaf_index)
            index = int(row["leaf_index"])
            try:
                leaf = leaf_of(row)
            except (TypeError, ValueError) as exc:  # orjson's errors are ones too
                raise EvidenceError(
                    f"entry {index} cannot be read as logged ({exc}): 'xroad-hub audit verify' "
                    "lists what is wrong with the log"
                ) from exc
            if merkle.leaf_hash(leaf) != row["leaf_hash"]:
                raise EvidenceError(
                    f"entry {index} was changed since it was logged (its columns no longer "
                    "give its leaf hash): 'xroad-hub audit verify' lists what is wrong with "
                    "the log"
                )
            cp = _proving_checkpoint(reader, index)
            size, root = _signed_head(cp)
            path = _inclusion_path(reader, index, merkle.leaf_hash(leaf), size, root)
            conf = _globalconf_row(reader, row)
            certs = {digest: bytes(der) for digest, der in reader.certificates()}
    except LogReadError as exc:
        raise EvidenceError(str(exc)) from exc

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
        "leaf": _b64(leaf),
        "request": part("request"),
        "response": part("response"),
        "inclusion": {
            "tree_size": size,
            "path": [_b64(h) for h in path],
        },
        "checkpoint": {
            "note": cp["note"],  # signed by the node, co-signed by the witness
            "cert": _b64(certs[cp["cert_sha256"]]),
            "witness_cert": _b64(certs[cp["witness_cert_sha256"]]),
            # RFC 3161 reply over the checkpoint text; checkable with openssl ts -verify.
            "timestamp": _b64(bytes(cp["timestamp_token"])),
        },
        "globalconf": {
            "signed": _b64(bytes(conf["signed"])),
            "signer_cert": _b64(certs[conf["signer_cert_sha256"]]),
        },
    }
    return orjson.dumps(bundle, option=orjson.OPT_INDENT_2)


def _exchange_row(reader: LogReader, message_id: str, leaf_index: int | None) -> Row:
    rows = reader.entries_of(message_id)
    if leaf_index is not None:
        rows = [r for r in rows if r["leaf_index"] == leaf_index]
    if not rows:
        raise EvidenceError(f"no exchange {message_id!r} in {reader.name}")
    if len(rows) > 1:
        found = ", ".join(str(r["leaf_index"]) for r in rows)
        raise EvidenceError(f"{message_id!r} is logged at entries {found}; pick one")
    return rows[0]


def _signed_head(cp: Row) -> tuple[int, bytes]:
    """The size and root the checkpoint's note signs (its columns only find the row)."""
    text = str(cp["note"]).partition("\n\n")[0] + "\n"
    try:
        head = Checkpoint.parse(text)
    except CheckpointError as exc:
        raise EvidenceError(f"checkpoint {cp['size']}'s note is not a checkpoint: {exc}") from exc
    if head.size != cp["size"] or head.root != cp["root"]:  # compared as stored, not converted
        raise EvidenceError(
            f"checkpoint {cp['size']}'s size and root columns are not what its signed note "
            "says: 'xroad-hub audit verify' lists what is wrong with the log"
        )
    return head.size, head.root


# Blocks whose leaf hashes are read at once when their roots are rebuilt (memory stays flat).
_ROOTS_PER_READ = 64


def _inclusion_path(
    reader: LogReader, index: int, leaf_hash: bytes, size: int, root: bytes
) -> list[bytes]:
    """RFC 9162 audit path of entry ``index`` (``leaf_hash``) in the signed tree of ``size``
    entries and ``root``, from the block roots the node stores and the leaf hashes of at
    most two blocks (the entry's, the last): a few thousandths of the log, not every leaf
    hash. Stored roots are derived data, trusted for nothing: if the path they give does
    not lead to the signed root, it is made again from the leaves alone (as for blocks with
    no stored root: a log older than that table, or blocks no checkpoint reached yet)."""
    stored = reader.block_roots(size // TREE_BLOCK)
    for roots in (stored, {}) if stored else ({},):
        path = _path(reader, index, size, roots)
        if path is not None and merkle.verify_inclusion(leaf_hash, index, size, path, root):
            return path
    raise EvidenceError(
        f"the log's leaves do not lead from entry {index} to the root its checkpoint of "
        f"{size} entries signed (rows were changed): 'xroad-hub audit verify' lists what is "
        "wrong with the log"
    )


def _path(reader: LogReader, index: int, size: int, stored: dict[int, bytes]) -> list[bytes] | None:
    """The audit path from these stored roots (the rest from the leaves), or None if the
    entry's block does not give its stored root."""
    complete = size // TREE_BLOCK
    roots: list[bytes] = []
    block = 0
    while block < complete:
        if block in stored:
            roots.append(stored[block])
            block += 1
            continue
        run = block  # consecutive blocks without a root, read a slice at a time
        while run < complete and run - block < _ROOTS_PER_READ and run not in stored:
            run += 1
        leaves = _leaf_hashes(reader, block * TREE_BLOCK, run * TREE_BLOCK)
        roots += (
            merkle.root(leaves[i : i + TREE_BLOCK]) for i in range(0, len(leaves), TREE_BLOCK)
        )
        block = run
    tree = merkle.BlockTree.from_blocks(
        roots, _leaf_hashes(reader, complete * TREE_BLOCK, size), block_height=TREE_BLOCK_HEIGHT
    )
    try:
        return merkle.inclusion_proof(tree, index)
    except merkle.LeavesNeeded as need:  # the entry's block
        try:
            tree.load(need.start, _leaf_hashes(reader, need.start, need.end))
        except ValueError:
            return None
    return merkle.inclusion_proof(tree, index)


def _leaf_hashes(reader: LogReader, start: int, end: int) -> list[bytes]:
    leaves = reader.leaf_hashes(end, start)
    if len(leaves) != end - start:
        raise EvidenceError(
            f"entries {start}..{end - 1} are not all in the log (rows were removed): "
            "'xroad-hub audit verify' lists what is wrong with the log"
        )
    return leaves


def _proving_checkpoint(reader: LogReader, index: int) -> Row:
    """The first checkpoint covering entry ``index`` that the witness co-signed and the
    timestamp authority stamped: the earliest gives the tightest bound on the time."""
    cp = reader.proving_checkpoint(index)
    if cp is not None:
        return cp
    covering, witnessed, stamped = reader.covering_checkpoints(index)
    if not covering:
        raise EvidenceError(
            f"no checkpoint covers entry {index} yet; wait for the node's next checkpoint"
        )
    raise EvidenceError(
        f"none of the {covering} checkpoint(s) covering entry {index} is both co-signed by the "
        f"witness ({witnessed} are) and timestamped ({stamped} are); check that the node "
        "reaches the registry's witness and the timestamp authority, and export after its "
        "next checkpoint"
    )


def _globalconf_row(reader: LogReader, row: Row) -> Row:
    """The signed global configuration the node kept that was in force when the exchange's
    request was signed (and issued before the node logged it)."""
    try:
        created = float(orjson.loads(bytes(row["request_meta"]))["created"])
        logged = float(row["finished_at"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise EvidenceError("the logged request is malformed (no signing time)") from None
    conf = reader.globalconf_in_force(logged, created)
    if conf is None:
        raise EvidenceError(
            f"the log holds no signed global configuration in force when entry "
            f"{row['leaf_index']} was made, so a bundle could not prove that this node hosted "
            "its client or provider (logs written before nodes kept their configurations "
            "cannot); use 'xroad-hub audit verify' on the whole log instead"
        )
    return conf


def load_revocations(
    signed: bytes, signer: x509.Certificate, trusted_roots: list[x509.Certificate]
) -> tuple[Revocation, ...]:
    """The revocations a signed global configuration lists (one downloaded after the
    exchanges to check; expired is fine, revocations are final), if ``signer`` is the
    federation's configuration signer and signed it."""
    if not _issued_by_any(signer, trusted_roots):
        raise EvidenceError("the configuration signer's certificate is not issued by the "
                            "federation root CA")  # fmt: skip
    try:
        conf = verify_globalconf(signed, signer, now=datetime.fromtimestamp(0, UTC))
    except GlobalConfError as exc:
        raise EvidenceError(f"the global configuration with the revocations: {exc}") from exc
    names = signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != signer_name(conf.instance):
        raise EvidenceError(f"the global configuration is not signed by the "
                            f"{signer_name(conf.instance)}")  # fmt: skip
    return conf.revocations


def verify_bundle(
    data: bytes,
    trusted_roots: list[x509.Certificate],
    revocations: tuple[Revocation, ...] = (),
) -> Proof:
    """Check a bundle; return what it proves, or raise EvidenceError naming every problem.
    ``revocations`` (``load_revocations``) are certificates revoked since: a signature by
    one counts only if the exchange was timestamped before its revocation."""
    try:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else None
            raise EvidenceError(
                f"not an evidence bundle of format {FORMAT} (found {found!r}); older formats "
                "did not prove the members' signatures, the witness and the hosting node: "
                "export the bundle again"
            )
        leaf_bytes = _unb64(doc["leaf"]) or b""
        leaf: dict[str, Any] = orjson.loads(leaf_bytes)
        if not isinstance(leaf, dict):
            raise ValueError("the leaf is not a JSON object")
    except EvidenceError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EvidenceError(f"malformed bundle: {exc}") from exc
    checker = _Checker(doc, leaf, trusted_roots, revocations)
    if canonical(leaf) != leaf_bytes:
        checker.problems.append("the leaf is not in canonical form")
    checker.run(leaf_bytes)
    if checker.problems:
        raise EvidenceError(checker.problems)
    assert checker.node and checker.stamped and checker.conf and checker.signed_at
    return Proof(
        leaf, checker.node, witness_name(checker.origin), checker.signed_at, checker.stamped,
        checker.conf.serial, checker.conf.generated_at, checker.subjects_signed_by,
        tuple(checker.revoked_later),
    )  # fmt: skip


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


class _Checker:
    """Checks every piece of a bundle, collecting a reason for each that fails; a piece that
    cannot be checked because another failed is not reported twice."""

    def __init__(
        self,
        doc: dict[str, Any],
        leaf: dict[str, Any],
        roots: list[x509.Certificate],
        revocations: tuple[Revocation, ...] = (),
    ) -> None:
        self.doc, self.leaf, self.roots = doc, leaf, roots
        self.revocations = revocations
        self.revoked_later: list[str] = []
        self.problems: list[str] = []
        self.node: str | None = None
        self.origin = ""
        self.stamped: datetime | None = None
        self.signed_at: datetime | None = None
        self.conf: GlobalConf | None = None
        # The verified request (metadata, body) and answer (metadata, body), if any.
        self.signed: dict[str, tuple[dict[str, Any], bytes | None]] = {}
        self.subjects_signed_by: dict[str, str | None] = {}

    def fail(self, problem: str) -> None:
        self.problems.append(problem)

    def run(self, leaf_bytes: bytes) -> None:
        checkpoint = self._checkpoint()
        if checkpoint is not None:
            self._witness(checkpoint)
            self._timestamp(checkpoint)
            self._inclusion(checkpoint, leaf_bytes)
        self._messages()
        self._subjects()
        self._hosting()
        self._revocations()

    def _revocations(self) -> None:
        """A signature by a certificate revoked (as given, or as the bundle's own
        configuration says) counts only if the checkpoint was timestamped before."""
        known = {
            r.cert_sha256: r
            for r in (*self.revocations, *(self.conf.revocations if self.conf else ()))
        }
        if not known:
            return

        def revocation_of(der: bytes) -> Revocation | None:  # in either encoding of it
            return next((known[fp] for fp in cert_fingerprints(der) if fp in known), None)

        if self.node is not None:  # the checkpoint verified: its certificate is there
            checkpoint_cert = _unb64(_section(self.doc, "checkpoint")["cert"])
            revocation = revocation_of(checkpoint_cert)
            problem = revocation_problem(revocation, "the checkpoint", self.stamped)
            if problem:
                self.fail(problem)
        for side, what in (("request", "the request"), ("response", "the answer")):
            if side not in self.signed:
                continue  # missing or failed: reported already
            revocation = revocation_of(_unb64(self.doc[side]["cert"]))
            problem = revocation_problem(revocation, what, self.stamped)
            if problem:
                self.fail(problem)
            elif revocation is not None:
                self.revoked_later.append(f"{what}: {revocation.describe()}, after the "
                                          "exchange was timestamped")  # fmt: skip

    def _checkpoint(self) -> Checkpoint | None:
        cp = _section(self.doc, "checkpoint")
        if cp.get("note") is None or cp.get("cert") is None:
            self.fail("checkpoint: the bundle lacks the node's checkpoint or its certificate")
            return None
        try:
            note, cert = str(cp["note"]), _unb64(cp["cert"]) or b""
            checkpoint = verify_node_checkpoint(note, cert, self.roots)
        except (CheckpointError, ValueError) as exc:
            self.fail(f"checkpoint: {exc}")
            return None
        self.origin = checkpoint.origin
        self.node = checkpoint.origin.removeprefix("xroad-hub/")
        return checkpoint

    def _witness(self, checkpoint: Checkpoint) -> None:
        expected = witness_name(checkpoint.origin)
        cp = _section(self.doc, "checkpoint")
        try:
            der = _unb64(cp.get("witness_cert"))
            cert = None if der is None else x509.load_der_x509_certificate(der)
        except ValueError:
            self.fail("the witness certificate in the bundle is not a certificate")
            return
        if cert is None:
            self.fail(
                f"no witness certificate in the bundle: the checkpoint must be co-signed by "
                f"the witness {expected}, and its certificate carried"
            )
            return
        key = cert.public_key()
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        if not _issued_by_any(cert, self.roots):
            self.fail("the witness certificate is not issued by the federation root CA")
        elif name != expected or not isinstance(key, ed25519.Ed25519PublicKey):
            self.fail(f"the witness certificate is {name!r}'s, not the witness {expected}'s")
        else:
            try:
                open_note(str(cp["note"]), [NoteVerifier(name, key)])
            except CheckpointError as exc:
                problem = "no co-signature" if "no known key" in str(exc) else str(exc)
                self.fail(f"the witness {expected} did not co-sign the checkpoint ({problem})")

    def _timestamp(self, checkpoint: Checkpoint) -> None:
        stamp = _section(self.doc, "checkpoint").get("timestamp")
        if stamp is None:
            self.fail(
                "no RFC 3161 timestamp of the checkpoint in the bundle: nothing proves "
                "when the node committed to the exchange"
            )
            return
        try:
            info = verify_response(_unb64(stamp) or b"", checkpoint.text().encode(), self.roots)
        except (TimestampError, ValueError) as exc:
            self.fail(f"checkpoint timestamp: {exc}")
            return
        self.stamped = info.gen_time.astimezone(UTC)

    def _inclusion(self, checkpoint: Checkpoint, leaf_bytes: bytes) -> None:
        try:
            inclusion = _section(self.doc, "inclusion")
            index, size = int(self.doc["leaf_index"]), int(inclusion["tree_size"])
            path = [_unb64(h) or b"" for h in inclusion["path"]]
        except (KeyError, TypeError, ValueError) as exc:
            self.fail(f"the inclusion proof is missing or malformed ({exc})")
            return
        if checkpoint.size != size:
            self.fail("the inclusion proof is for another tree size than the checkpoint")
            return
        try:
            root = merkle.root_from_inclusion(merkle.leaf_hash(leaf_bytes), index, size, path)
        except ValueError:
            root = None
        if root != checkpoint.root:
            self.fail("the leaf is not in the tree the checkpoint signs")

    def _messages(self) -> None:
        verifier = SignatureVerifier(self.roots)
        leaf = self.leaf
        # A leaf without an error claims the provider answered: the answer must be here.
        answered = leaf.get("error_type") is None or leaf.get("response_meta_sha256") is not None
        request: tuple[bytes, bytes | None] | None = None
        for side, who in (("request", "client"), ("response", "provider")):
            part = self.doc.get(side)
            if part is None:
                if side == "request":
                    self.fail(
                        f"the request signed by the client's member ({leaf.get('client')}) is "
                        "missing from the bundle"
                    )
                elif answered:
                    self.fail(
                        f"the leaf records an answer (status {leaf.get('status')}, no error) "
                        f"but the answer signed by the provider's member is missing"
                    )
                continue
            try:
                meta, sig, cert = (_unb64(part[k]) for k in ("meta", "signature", "cert"))
                body = _unb64(part.get("body"))
            except (KeyError, TypeError, ValueError) as exc:
                self.fail(f"the {side} in the bundle is malformed ({exc})")
                continue
            if meta is None or sig is None or cert is None:
                self.fail(f"the {side} lacks its metadata, signature or {who}'s certificate")
                continue
            pieces = {"meta": meta, "signature": sig, "cert": cert, "body": body}
            wrong = [
                name
                for name, value in pieces.items()
                # A body purged by retention is absent; everything else must be there.
                if (value is not None or name != "body")
                and _sha256(value) != leaf.get(f"{side}_{name}_sha256")
            ]
            if wrong:
                self.fail(
                    f"the {side} {', '.join(wrong)} is not what the leaf commits to "
                    f"(the leaf must hold the digests of the signed {side})"
                )
                continue
            problem = check_signed_part(verifier, side, leaf, meta, sig, cert, body, request)
            if problem:
                self.fail(problem)
                continue
            self.signed[side] = (orjson.loads(meta), body)
            if side == "request":
                request = (meta, body)
                created = orjson.loads(meta).get("created")
                if not isinstance(created, int | float):
                    self.fail("the signed request carries no signing time")
                    continue
                self.signed_at = datetime.fromtimestamp(created, UTC)
        if self.signed_at and self.stamped and self.signed_at > self.stamped + CLOCK_SKEW:
            self.fail(
                f"the request was signed ({iso_utc(self.signed_at)}) after its checkpoint was "
                f"timestamped ({iso_utc(self.stamped)})"
            )

    def _subjects(self) -> None:
        """Each subject the leaf names must be named by the signed request or answer: a node
        cannot put a citizen under a genuine exchange that never concerned her."""
        subjects = self.leaf.get("subjects")
        if not isinstance(subjects, list) or not all(isinstance(x, str) for x in subjects):
            self.fail("the leaf's subjects are not a list of ids")
            return
        if not subjects or "request" not in self.signed:
            return  # nothing claimed, or the request failed and is reported already
        meta, body = self.signed["request"]
        by_client = signed_request_values(meta, body)
        answer = self.signed.get("response")
        by_provider: set[str] = set()
        if answer is not None and answer[1] is not None:
            content_type = next(
                (str(v) for k, v in answer[0].get("headers") or []
                 if str(k).lower() == "content-type"), "",
            )  # fmt: skip
            by_provider = signed_answer_values(content_type, answer[1])
        purged = body is None or (answer is not None and answer[1] is None)
        for subject in subjects:
            if subject in by_client:
                self.subjects_signed_by[subject] = "client"
            elif subject in by_provider:
                self.subjects_signed_by[subject] = "provider"
            elif purged:
                self.subjects_signed_by[subject] = None
            else:
                self.fail(
                    f"the leaf names the subject {subject!r}, which neither the signed request "
                    "nor the signed answer contains: only the logging node says so"
                )

    def _hosting(self) -> None:
        section = _section(self.doc, "globalconf")
        if section.get("signed") is None or section.get("signer_cert") is None:
            self.fail(
                "no signed global configuration in the bundle: nothing shows that the logging "
                "node hosted the exchange's client or provider"
            )
            return
        try:
            signed = _unb64(section["signed"]) or b""
            signer = x509.load_der_x509_certificate(_unb64(section["signer_cert"]) or b"")
        except ValueError as exc:
            self.fail(f"the bundle's global configuration is malformed ({exc})")
            return
        # When the request was signed (by its member: not the node's word); a bundle that
        # fails to prove that still gets its hosting checked at the time the leaf gives.
        when = self.signed_at
        if when is None:
            try:
                when = datetime.fromtimestamp(float(self.leaf["started_at"]), UTC)
            except (KeyError, TypeError, ValueError):
                self.fail("the leaf has no time")
                return
        conf = self._globalconf(signed, signer, when)
        if conf is None or self.node is None:
            return  # reported already; without the node there is nothing to compare
        self.conf = conf
        try:
            node = parse_node_id(self.node)
            party: ClientId = (
                parse_client_id(str(self.leaf["client"]))
                if self.leaf.get("role") == "client"
                else parse_service_id(str(self.leaf["service"])).provider
            )
        except (ProtocolError, KeyError) as exc:
            self.fail(f"the leaf's client or service is malformed ({exc})")
            return
        if self.leaf.get("role") not in ("client", "provider"):
            self.fail(f"the leaf's role {self.leaf.get('role')!r} is neither client nor provider")
            return
        entry = conf.node(node)
        if conf.instance != node.owner.instance:
            self.fail(f"the global configuration is instance {conf.instance}'s, not {node}'s")
        elif entry is None:
            self.fail(f"{node} is not a node in the signed global configuration then")
        elif party not in entry.clients:
            host = conf.node_hosting(party)
            self.fail(
                f"{node} logged this exchange as its {self.leaf['role']}'s node, but the signed "
                f"global configuration (serial {conf.serial}, {iso_utc(conf.generated_at)}) has "
                f"{party} hosted by {host.id if host else 'no node'}"
            )

    def _globalconf(
        self, signed: bytes, signer: x509.Certificate, when: datetime
    ) -> GlobalConf | None:
        """The configuration, if the registry signed it and it was in force at some moment
        between the request's signing (``when``) and the checkpoint's timestamp."""
        names = signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        if not _issued_by_any(signer, self.roots):
            self.fail("global configuration: its signing certificate is not issued by the "
                      "federation root CA")  # fmt: skip
            return None
        try:
            # Expiry is judged below, at the exchange's time, not now: pass the epoch.
            conf = verify_globalconf(signed, signer, now=datetime.fromtimestamp(0, UTC))
        except GlobalConfError as exc:
            self.fail(f"global configuration: {exc}")
            return None
        problem = None
        if name != signer_name(conf.instance):
            problem = f"it is signed by {name!r}, not the {signer_name(conf.instance)}"
        elif not signer.not_valid_before_utc <= conf.generated_at <= signer.not_valid_after_utc:
            problem = "its signing certificate was not valid when it was signed"
        elif conf.expires_at <= when - CLOCK_SKEW:
            problem = (
                f"the one in the bundle (serial {conf.serial}) expired at "
                f"{iso_utc(conf.expires_at)}, before the request was signed ({iso_utc(when)})"
            )
        elif self.stamped and conf.generated_at > self.stamped + CLOCK_SKEW:
            problem = (
                f"the one in the bundle was issued ({iso_utc(conf.generated_at)}) after the "
                "checkpoint was timestamped: it was not in force when the node logged it"
            )
        if problem:
            self.fail(f"global configuration: {problem}")
            return None
        return conf


def _issued_by_any(cert: x509.Certificate, roots: list[x509.Certificate]) -> bool:
    for ca in roots:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _sha256(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def iso_utc(when: datetime) -> str:
    """Times for people: ISO 8601 in UTC, to the second (never epoch seconds)."""
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
