"""Offline verification of a node's message log, with nothing but the log file and the
federation root certificate.

For every entry, in order: the leaf index continues the sequence (a deleted or reordered row
shows up as a gap); the leaf rebuilt from its columns (``record.leaf_of``) has the leaf hash
stored when it was logged, so no column changed since; the bodies (unless purged by
retention) match their stored digests; the request is signed by the client's member and the
answer by the provider's, with certificates issued by the federation CA, and the signed
values are the logged ones. The stored leaf hashes then give the log's Merkle root (RFC
9162). Problems are reported by leaf index, first one first.

Every checkpoint stored in the log must be signed by the node's checkpoint key (certified
by the federation CA), be that node's, and name the root that the entries before it give
now: an entry changed, removed or reordered after a checkpoint breaks it.

What the log holds can all be rewritten by whoever holds the node (erase an entry, renumber
the rows after it, delete the checkpoints: nothing above notices). So the log must be
covered by checkpoints the registry's witness co-signed: a log with entries and no such
checkpoint fails, entries newer than the last one are counted (and fail once older than a
grace period), and the witness's own latest checkpoint of the node (fetched from the
registry or saved by the auditor) must be a prefix of the log with the same root.

The subject index (who each exchange concerns, read by the citizens' tracker and by
``search --subject``) is derived data outside the tree; it must name exactly the subjects
of each entry. A column holding a value of another type is a finding, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import multiprocessing
import multiprocessing.util
import os
import signal
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit
from urllib.request import urlopen

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from xroad_hub.errors import ProtocolError
from xroad_hub.messagelog.layout import COLUMNS
from xroad_hub.messagelog.reader import LogAddress, LogReader, LogReadError, Row, as_dict
from xroad_hub.messagelog.reader import short as _short
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.messagelog.search import SearchFilter
from xroad_hub.messagelog.source import LogSource, open_address, reading
from xroad_hub.protocol import merkle
from xroad_hub.protocol.checkpoint import Checkpoint, CheckpointError, NoteVerifier, open_note
from xroad_hub.protocol.globalconf import Revocation
from xroad_hub.protocol.identifiers import parse_client_id, parse_node_id, parse_service_id
from xroad_hub.protocol.message import body_digest
from xroad_hub.protocol.rest import request_hash
from xroad_hub.protocol.rfc3161 import TimestampError, verify_response
from xroad_hub.protocol.signing import (
    MAX_BATCH,
    SignatureError,
    SignatureVerifier,
    cert_fingerprints,
)

__all__ = [
    "AuditReport",
    "Finding",
    "WitnessCheckpoint",
    "check_signed_part",
    "cosigned",
    "fetch_witness_checkpoint",
    "iso_utc",
    "load_witness_checkpoint",
    "log_node",
    "revocation_problem",
    "search_log",
    "verify_log",
    "verify_node_checkpoint",
    "witness_name",
]

# Bodies and the columns holding their SHA-256 (which the leaf holds): a body may be purged.
_BODIES = (("request_body", "request_body_sha256"), ("response_body", "response_body_sha256"))
# What the tree-only check reads of each entry: all but the bodies. Its leaf is rebuilt
# from them and must give the stored hash, or any column of a covered entry (who asked,
# the subjects, the finish time) could be changed unseen.
_TREE_COLUMNS = tuple(c for c in COLUMNS if c not in ("request_body", "response_body"))
_CHANGED = (
    "its columns were changed since it was logged: they no longer give the leaf hash stored "
    "with them"
)


@dataclass(frozen=True, slots=True)
class Finding:
    leaf_index: int | None
    problem: str

    def __str__(self) -> str:
        where = f"entry {self.leaf_index}" if self.leaf_index is not None else "log"
        return f"{where}: {self.problem}"


@dataclass(frozen=True, slots=True)
class WitnessCheckpoint:
    """The latest checkpoint the instance's witness co-signed for a node, as the registry
    serves it (``GET /witness?origin=``) or as an auditor saved it: the co-signed note and
    the witness's certificate. ``source`` says where it came from, for the report."""

    note: str
    cert_der: bytes
    source: str


@dataclass
class AuditReport:
    entries: int = 0
    checkpoints: int = 0
    witnessed: int = 0
    timestamped: int = 0
    root: bytes = merkle.root([])
    findings: list[Finding] = field(default_factory=list)
    # How many leading entries a verified, witness-co-signed checkpoint commits to (in the
    # log or from the witness itself); the rest could still be changed or dropped unseen.
    covered: int = 0
    # Finish time (epoch s) of the first entry no witnessed checkpoint covers, if any.
    uncovered_since: float | None = None
    workers: int = 0  # worker processes that checked the entries (0: this one, alone)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def uncovered(self) -> int:
        return self.entries - self.covered


# Entries a live node logged since its last checkpoint are not witnessed yet; that is normal
# for a few checkpoint intervals (60 s by default, plus a witness that was briefly away).
# Older ones mean checkpointing stopped or checkpoints were deleted.
DEFAULT_GRACE = 3600.0


class _SubjectIndex:
    """The subject index (what the citizens' tracker and ``search --subject`` read), walked
    beside the entries: each entry's rows must be exactly the subjects its ``subjects``
    column (part of its leaf) names. The index is derived data (a trigger fills it), so
    nothing signed covers it but the leaves."""

    def __init__(self, reader: LogReader) -> None:
        self._rows = reader.subject_index()
        self._next: tuple[Any, Any] | None = next(self._rows, None)

    def check(self, index: int, subjects: Any) -> Iterator[str]:
        """``subjects``: the entry's ``subjects`` column, parsed (None if it is not JSON)."""
        actual: set[Any] = set()
        while self._next is not None and self._next[0] == index:
            actual.add(self._next[1])
            self._next = next(self._rows, None)
        if not isinstance(subjects, list):
            yield "column subjects is not a JSON list"
            subjects = []
        # JSON lists and objects are no subjects (and cannot go into a set: they crashed
        # the audit); the rest is compared with the index as always.
        for subject in subjects:
            if isinstance(subject, list | dict):
                yield f"the entry names {_short(subject)} as a subject, which is not one"
        want = {s for s in subjects if not isinstance(s, list | dict)}
        for subject in sorted(want - actual, key=str):
            yield f"the subject index lacks {subject!r}: the citizen's tracker and searches miss it"
        for subject in sorted(actual - want, key=str):
            yield f"the subject index names {_short(subject)}, whom the entry does not concern"

    def take(self, start: int, end: int) -> list[tuple[Any, Any]] | None:
        """The rows for entries ``start`` to ``end - 1``, consumed, if they are exactly the
        rows `check` would consume for them (plain integer indexes, nothing out of order
        before or after); otherwise None, and nothing is consumed."""
        taken = []
        nxt = self._next
        while nxt is not None and type(nxt[0]) is int and start <= nxt[0] < end:
            taken.append(nxt)
            nxt = next(self._rows, None)
        if nxt is None or (type(nxt[0]) is int and nxt[0] >= end):
            self._next = nxt
            return taken
        if taken:  # put them back, in order
            self._rows = itertools.chain(taken[1:], [nxt], self._rows)
            self._next = taken[0]
        return None

    def put_back(self, taken: list[tuple[Any, Any]]) -> None:
        """Undo a `take` (its rows are read again, in order)."""
        if taken:
            rest = [self._next] if self._next is not None else []
            self._rows = itertools.chain(taken[1:], rest, self._rows)
            self._next = taken[0]

    def leftovers(self) -> Iterator[str]:
        """Rows for entries the log does not hold (once every leaf has been checked)."""
        rest = ([self._next] if self._next is not None else []) + list(self._rows)
        for leaf_index, subject in rest:
            yield (
                f"the subject index names {_short(subject)} for entry {_short(leaf_index)}, "
                "which the log does not hold"
            )


# What each column must hold, as the backend hands it over (SQLite's columns take any
# type): a value of another type is tampering, reported as such rather than crashing.
_NUMBER = (int, float)
_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "leaf_index": ((int,), False), "message_id": ((str,), False),
    "request_id": ((str,), False), "role": ((str,), False), "client": ((str,), False),
    "service": ((str,), False), "user_id": ((str,), True), "issue": ((str,), True),
    "represented_party": ((str,), True), "method": ((str,), False),
    "status": ((int,), False), "error_type": ((str,), True),
    "started_at": (_NUMBER, False), "finished_at": (_NUMBER, False),
    "leaf_hash": ((bytes,), False),
    "request_meta": ((bytes,), False), "request_signature": ((bytes,), False),
    "response_meta": ((bytes,), True), "response_signature": ((bytes,), True),
    "request_body": ((bytes,), True), "response_body": ((bytes,), True),
    "request_body_sha256": ((bytes,), False), "response_body_sha256": ((bytes,), True),
    "request_cert_sha256": ((str,), False), "response_cert_sha256": ((str,), True),
    "subjects": ((str,), False),
}  # fmt: skip
_CHECKPOINT_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "size": ((int,), False), "root": ((bytes,), False), "note": ((str,), False),
    "cert_sha256": ((str,), False), "created_at": (_NUMBER, False),
    "witness_cert_sha256": ((str,), True), "timestamp_token": ((bytes,), True),
}  # fmt: skip
_TYPE_NAMES = {int: "an integer", float: "a number", str: "text", bytes: "a blob"}


def _type_checks(
    names: list[str], types: dict[str, tuple[tuple[type, ...], bool]]
) -> list[tuple[int, frozenset[type]]]:
    """(position, exact types allowed) per column: the fast test every row passes through."""
    checks = []
    for i, name in enumerate(names):
        expected, nullable = types.get(name, ((object,), True))
        if expected != (object,):
            checks.append((i, frozenset(expected) | ({type(None)} if nullable else set())))
    return checks


def _wrong_types(row: Row, types: dict[str, tuple[tuple[type, ...], bool]]) -> Iterator[str]:
    for name in row.keys():  # noqa: SIM118 (rows are not mappings)
        expected, nullable = types.get(name, ((object,), True))
        value = row[name]
        if value is None and nullable:
            continue
        if not isinstance(value, expected) or isinstance(value, bool):
            held = "NULL" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)
            want = "a number" if expected == _NUMBER else _TYPE_NAMES[expected[0]]
            yield f"column {name} holds {held} ({_short(value)}), not {want}"


def iso_utc(epoch: float) -> str:
    """A logged time (epoch seconds) as people and ``--since`` read it: ISO 8601, UTC."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def verify_log(
    log: LogSource,
    trusted_roots: list[x509.Certificate],
    *,
    progress: Callable[[int, int], None] | None = None,
    entries: bool = True,
    witnesses: Sequence[WitnessCheckpoint] = (),
    node: str | None = None,
    grace: float = DEFAULT_GRACE,
    now: float | None = None,
    revocations: Sequence[Revocation] = (),
    jobs: int = 1,
) -> AuditReport:
    """Verify the log ``log`` (a file, a PostgreSQL DSN or an open reader); never modifies
    it.

    ``entries=False`` checks only the sequence, each entry's leaf (rebuilt from its columns)
    against its stored hash, the tree, the subject index and the checkpoints (signatures,
    witnesses, timestamps): much faster, and enough to show that nothing covered by a
    checkpoint changed; the full check also proves the bodies and signatures.

    ``witnesses`` are the witness's own latest checkpoints for the node (fetched from the
    registry or saved by the auditor): the log must hold at least as many entries and give
    the same root at that size, which is what catches a log rewritten together with its
    stored checkpoints. ``node`` is the node whose log this is, if the auditor knows it.
    A log with entries but no witnessed checkpoint fails, and so do entries no witnessed
    checkpoint covers that finished more than ``grace`` seconds before ``now``.
    ``revocations`` are certificates revoked since (a later global configuration's): an
    entry signed with one stands only if a timestamped checkpoint covering it is older
    than the revocation.

    ``jobs`` > 1 checks the entries of a large log in that many worker processes (the
    findings are the same: a log they do not pass is checked again in this one; see
    reader.py for what they see of a SQLite log that changes meanwhile). They are forked
    from a single-threaded program, else spawned: a program calling this from a second
    thread then needs the ``if __name__ == "__main__":`` guard multiprocessing asks for."""
    report = AuditReport()
    try:
        with reading(log) as reader:
            try:
                _verify(reader, report, trusted_roots, progress, entries, witnesses, node,
                        grace, now, revocations, jobs)  # fmt: skip
            except LogReadError as exc:
                report.findings.append(Finding(None, f"the log cannot be read: {exc}"))
    except LogReadError as exc:  # opening it
        report.findings.append(Finding(None, str(exc)))
    return report


def _verify(
    reader: LogReader,
    report: AuditReport,
    trusted_roots: list[x509.Certificate],
    progress: Callable[[int, int], None] | None,
    entries: bool,
    witnesses: Sequence[WitnessCheckpoint],
    node: str | None,
    grace: float,
    now: float | None,
    revocations: Sequence[Revocation] = (),
    jobs: int = 1,
) -> None:
    total = reader.count()
    by_digest = {r.cert_sha256: r for r in revocations}
    certs: dict[str, bytes] = {}
    for digest, der in reader.certificates():
        if isinstance(digest, str) and isinstance(der, bytes):
            certs[digest] = der
        else:
            report.findings.append(
                Finding(None, f"certificate {_short(digest)}: not a digest and DER bytes")
            )
    # The log's certificates (by their stored digest) that are revoked, in whichever
    # encoding the log holds them (cert_fingerprints: an ECDSA-signed one has a twin).
    revoked = by_digest | {
        digest: hit
        for digest, der in certs.items()
        for fp in cert_fingerprints(der)
        if (hit := by_digest.get(fp)) is not None
    }
    verifier = SignatureVerifier(trusted_roots)
    checkpoints = []
    for cp in reader.checkpoints():
        wrong = list(_wrong_types(cp, _CHECKPOINT_TYPES))
        for problem in wrong:
            report.findings.append(Finding(None, f"checkpoint at size {cp['size']!r}: {problem}"))
        if not wrong:
            checkpoints.append(cp)
    trusted = _trusted_witness_checkpoints(witnesses, trusted_roots, node, report)
    # Whose log this is: the auditor's word, else the witness's checkpoint, else the first
    # valid checkpoint in the log; every checkpoint must then be that node's.
    origin = f"xroad-hub/{node}" if node else (trusted[0].origin if trusted else None)
    wanted = {int(c["size"]) for c in checkpoints} | {cp.size for cp in trusted}
    marks = frozenset({0, *wanted})
    jobs = min(jobs, -(-total // _PAGE)) if total >= _PARALLEL_MIN else 1
    walk = _Walk()
    if progress is not None:
        progress = _forward_only(progress)
    if jobs > 1 and (
        workers := _walk_in_processes(
            reader, jobs, total, walk, certs, trusted_roots, entries, marks, revoked, progress
        )
    ):
        report.workers = workers
    else:
        # In this process, from the start: a page the workers did not pass may be anywhere,
        # and the walk has counted everything before it.
        walk = _Walk()
        _walk(reader, report, walk, total, certs, verifier, entries, marks, revoked, progress)
    report.entries = walk.entries
    tree, roots_at, complete = walk.tree, walk.roots_at, walk.complete
    report.root = tree.root()
    stamped_at: dict[int, datetime] = {}  # size of a sound checkpoint -> its timestamp
    for cp in checkpoints:
        try:
            problems = list(_check_checkpoint(cp, certs, trusted_roots, roots_at, stamped_at))
        except Exception as exc:  # a crafted row must not stop the audit
            problems = [f"cannot be checked: {exc!r}"]
        revocation = revoked.get(str(cp["cert_sha256"]))
        if revocation is not None and not problems:
            late = revocation_problem(revocation, "it", stamped_at.get(int(cp["size"])))
            problems += [late] if late else []
        signed_origin = _origin(str(cp["note"]))
        if not problems and origin is None:
            origin = signed_origin
        elif not problems and signed_origin != origin:
            problems = [f"it is a checkpoint of {signed_origin}, this is the log of {origin}"]
        for problem in problems:
            report.findings.append(Finding(None, f"checkpoint at size {cp['size']}: {problem}"))
        if problems:
            stamped_at.pop(int(cp["size"]), None)
        witnessed = cp["witness_cert_sha256"] is not None
        if witnessed and not problems:
            report.covered = max(report.covered, int(cp["size"]))
    for cp in trusted:
        problem = _compare_with_witness(cp, report.entries, roots_at, complete)
        if problem:
            report.findings.append(Finding(None, problem))
        else:
            report.covered = max(report.covered, cp.size)
    for index, side, revocation in walk.revoked_uses:
        # The earliest sound timestamp of a checkpoint covering the entry: the log had
        # committed to it by then.
        proven = min((t for size, t in stamped_at.items() if size > index), default=None)
        what = "the request" if side == "request" else "the answer"
        problem = revocation_problem(revocation, what, proven)
        if problem:
            report.findings.append(Finding(index, problem))
    report.checkpoints = len(checkpoints)
    report.witnessed = sum(1 for cp in checkpoints if cp["witness_cert_sha256"])
    report.timestamped = sum(1 for cp in checkpoints if cp["timestamp_token"] is not None)
    report.covered = min(report.covered, report.entries)
    _check_coverage(report, walk.finished, grace, time.time() if now is None else now)


@dataclass
class _Walk:
    """What the pass over the entries leaves for the checks after it."""

    tree: merkle.CompactRange = field(default_factory=merkle.CompactRange)
    entries: int = 0
    complete: bool = True  # False after a gap: the tree beyond it means nothing
    roots_at: dict[int, bytes] = field(default_factory=dict)  # at the sizes wanted
    # Finish time of the first entry and of those right after each checkpoint: where the
    # part no witnessed checkpoint covers may start.
    finished: dict[int, float] = field(default_factory=dict)
    # Entries signed with a certificate revoked since: (index, side, revocation), judged
    # once the timestamps of the checkpoints covering them are known.
    revoked_uses: list[tuple[int, str, Revocation]] = field(default_factory=list)

    def add(
        self,
        hashes: list[bytes],
        wanted: frozenset[int],
        total: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """Add the leaf hashes of a page that passed, in runs that end where a root is
        wanted (a checkpoint's size) or progress is told."""
        start = self.entries
        end = start + len(hashes)
        stops = sorted(
            {n for n in wanted if start < n <= end}
            | set(range((start // 10000 + 1) * 10000, end + 1, 10000))
            | {end}
        )
        for stop in stops:
            self.tree.extend(hashes[self.entries - start : stop - start])
            self.entries = stop
            if stop in wanted:
                self.roots_at[stop] = self.tree.root()
            if progress is not None and (stop % 10000 == 0 or stop == total):
                progress(stop, total)


_SIDES = ("request", "response")


def _page_facts(
    page: list[Row], start: int, marks: frozenset[int], revoked: Collection[str], entries: bool
) -> tuple[list[tuple[int, float]], list[tuple[int, str, str]]]:
    """Of a page that passed: the earliest time of the entries at ``marks`` (the first, and
    those right after checkpoints), and (index, side, certificate digest) of its signatures
    by certificates in ``revoked``."""
    end = start + len(page)
    times = [
        (i, _earliest_time(page[i - start]["finished_at"], page[i - start] if entries else None))
        for i in sorted(m for m in marks if start <= m < end)
    ]
    hits = [
        (i, side, digest)
        for i, row in enumerate(page, start)
        for side in _SIDES
        if (digest := row[f"{side}_cert_sha256"]) in revoked
    ] if revoked and entries else []  # fmt: skip
    return times, hits


def _walk(
    reader: LogReader,
    report: AuditReport,
    walk: _Walk,
    total: int,
    certs: dict[str, bytes],
    verifier: SignatureVerifier,
    entries: bool,
    marks: frozenset[int],
    revoked: dict[str, Revocation],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Check every entry in this process, adding the findings to ``report``."""
    wanted = marks - {0}
    subject_index = _SubjectIndex(reader)
    checks: list[tuple[int, frozenset[type]]] | None = None
    fast: _FastPage | None = None
    columns = None if entries else _TREE_COLUMNS

    def note_revoked(index: int, row: Row) -> None:
        """Remember the entry's signatures by certificates revoked since (judged later)."""
        if revoked and entries:
            for side in _SIDES:
                hit = revoked.get(row[f"{side}_cert_sha256"])
                if hit is not None:
                    walk.revoked_uses.append((index, side, hit))

    def one(expected: int, row: Row) -> bool:
        """Check one entry and add it to the tree; False at a gap (nothing after it counts)."""
        nonlocal checks
        index = row["leaf_index"]
        if not isinstance(index, int) or index != expected:
            problem = (
                f"entry {expected} is missing (next stored entry is {index})"
                if isinstance(index, int) and index > expected
                else f"entries are out of order ({_short(index)} after {expected - 1})"
            )
            report.findings.append(Finding(expected, problem))
            return False
        if checks is None:
            checks = _type_checks(list(row.keys()), _TYPES)
        wrong = [] if all(type(row[i]) in ok for i, ok in checks) else [*_wrong_types(row, _TYPES)]
        for problem in wrong:
            report.findings.append(Finding(index, problem))
        if entries and not wrong:
            try:
                for problem in _check_entry(row, certs, verifier):
                    report.findings.append(Finding(index, problem))
            except Exception as exc:  # a crafted row must not stop the audit
                report.findings.append(Finding(index, f"cannot be checked: {exc!r}"))
        elif not wrong:
            try:
                if _leaf_changed(as_dict(row)):
                    report.findings.append(Finding(index, _CHANGED))
            except Exception as exc:  # a crafted row must not stop the audit
                report.findings.append(Finding(index, f"cannot be checked: {exc!r}"))
        if not wrong:
            note_revoked(index, row)
        for problem in subject_index.check(index, _json(row["subjects"])):
            report.findings.append(Finding(index, problem))
        if index in marks:
            walk.finished[index] = _earliest_time(row["finished_at"], row if entries else None)
        leaf_hash = row["leaf_hash"]
        if not (isinstance(leaf_hash, bytes) and len(leaf_hash) == 32):
            if isinstance(leaf_hash, bytes):  # another type is reported above
                report.findings.append(Finding(index, "column leaf_hash is not a SHA-256 hash"))
            # The tree takes something in its place, so that later entries keep their
            # indexes; the checkpoints covering it then fail, as they must.
            leaf_hash = merkle.leaf_hash(repr(leaf_hash).encode())
        walk.tree.append(leaf_hash)
        walk.entries += 1
        if walk.entries in wanted:
            walk.roots_at[walk.entries] = walk.tree.root()
        if progress is not None and (walk.entries % 10000 == 0 or walk.entries == total):
            progress(walk.entries, total)
        return True

    # Pages of entries go through a batched check that only says "all of it is fine"; a page
    # it does not pass (any finding, anything unusual) is checked again entry by entry, so
    # the findings are those of the entry-by-entry check, and so is what it accepts.
    rows = iter(reader.entries(columns))
    while walk.complete and (page := list(itertools.islice(rows, _PAGE))):
        start = walk.entries
        if fast is None:
            fast = _FastPage(list(page[0].keys()), certs, verifier, entries)
        if not _subjects_match(fast.subjects(page, start), start, subject_index):
            walk.complete = all(one(start + i, row) for i, row in enumerate(page))
            continue
        times, hits = _page_facts(page, start, marks, revoked, entries)
        walk.finished.update(times)
        walk.revoked_uses += [(i, side, revoked[digest]) for i, side, digest in hits]
        walk.add(fast.leaf_hashes(page), wanted, total, progress)
    if walk.complete:  # after a gap, the index of the entries beyond it means nothing
        for problem in subject_index.leftovers():
            report.findings.append(Finding(None, problem))


# Entries per batched check (and per fallback to the entry-by-entry one, and per task
# of a worker process).
_PAGE = 2048
# Worker processes (``jobs``) check pages the way `_walk` checks them first, each reading
# its pages through a reader of its own (at the auditor's snapshot where the backend shares
# one) and answering only what the walk needs of a page that passed. A page they do not
# pass, or any failure of theirs, sends the whole log through `_walk` in one process, so
# the findings are always its findings.
# Fewer entries are checked in one process: spawned workers take a second or so to start.
_PARALLEL_MIN = 8 * _PAGE


def _forward_only(progress: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """``progress``, told nothing below what it was told already (a walk the workers did
    not finish starts over in this process)."""
    told = 0

    def tell(done: int, total: int) -> None:
        nonlocal told
        if done > told or done == total:
            told = done
            progress(done, total)

    return tell


def _walk_in_processes(
    reader: LogReader,
    jobs: int,
    total: int,
    walk: _Walk,
    certs: dict[str, bytes],
    trusted_roots: list[x509.Certificate],
    entries: bool,
    marks: frozenset[int],
    revoked: dict[str, Revocation],
    progress: Callable[[int, int], None] | None,
) -> int:
    """Walk the entries with ``jobs`` worker processes; the number of them that checked
    pages if every page passed (the walk is then complete), 0 as soon as one did not or
    anything failed, starting them included."""
    wanted = marks - {0}
    subject_index = _SubjectIndex(reader)
    roots = [c.public_bytes(serialization.Encoding.DER) for c in trusted_roots]
    pages = iter(range(0, total, _PAGE))
    pids: set[int] = set()
    pool = None
    try:
        address = reader.address()
        if address is None:  # the reader cannot be opened again elsewhere
            return 0
        pool = ProcessPoolExecutor(
            jobs,
            mp_context=multiprocessing.get_context(_start_method()),
            initializer=_worker_start,
            initargs=(address, certs, roots, entries, marks, frozenset(revoked)),
        )
        with _sigint_ignored():  # the workers start now, and never see Ctrl-C
            pending = deque(
                pool.submit(_worker_page, start, min(start + _PAGE, total))
                for start in itertools.islice(pages, 2 * jobs)
            )
        while pending:
            result = pending.popleft().result()
            for start in itertools.islice(pages, 1):
                pending.append(pool.submit(_worker_page, start, min(start + _PAGE, total)))
            if result is None:
                return 0
            pid, subject_lists, hashes, times, hits = result
            if not _subjects_match(subject_lists, walk.entries, subject_index):
                return 0
            pids.add(pid)
            walk.finished.update(times)
            walk.revoked_uses += [(i, side, revoked[digest]) for i, side, digest in hits]
            walk.add(hashes, wanted, total, progress)
        return len(pids) if next(subject_index.leftovers(), None) is None else 0
    except Exception:  # a worker's failure: `_walk` reads the log and says what is wrong
        return 0
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C ignored in this process while it starts workers, which keep it so (a spawned
    Python installs no KeyboardInterrupt handler when it starts with SIGINT ignored): the
    terminal sends it to them too, and it is this process's to handle, by stopping them.
    Only the main thread may set handlers; from another one the workers ignore it once
    started (`_worker_start`)."""
    previous = signal.getsignal(signal.SIGINT)
    # None: a handler Python did not install, which it could not put back.
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_method() -> str:
    """How to start the workers: forked from a single-threaded process (the CLI), which
    costs milliseconds; else spawned, since a fork copies locks other threads may hold. A
    spawned worker imports the program's main module again (the CLI's takes ~1 s)."""
    try:
        threads = len(os.listdir("/proc/self/task"))  # the OS's count, C threads included
    except OSError:
        threads = 2  # cannot tell: do not fork
    return "fork" if sys.platform == "linux" and threads == 1 else "spawn"


_WORKER: dict[str, Any] = {}  # a worker process's reader and checker


def _worker_start(
    address: LogAddress,
    certs: dict[str, bytes],
    roots: list[bytes],
    entries: bool,
    marks: frozenset[int],
    revoked: frozenset[str],
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # see _sigint_ignored
    try:
        reader = open_address(address)
    except Exception:  # e.g. no connection left: pages are not checked here (see below)
        return  # and a pool prints a traceback for an initializer that raises
    multiprocessing.util.Finalize(reader, reader.close, exitpriority=10)
    verifier = SignatureVerifier([x509.load_der_x509_certificate(der) for der in roots])
    _WORKER.update(
        reader=reader, certs=certs, verifier=verifier, entries=entries, marks=marks,
        revoked=revoked, fast=None,
    )  # fmt: skip


_PageResult = tuple[
    int, list[Any], list[bytes], list[tuple[int, float]], list[tuple[int, str, str]]
]


def _worker_page(start: int, stop: int) -> _PageResult | None:
    """The batched check of entries ``start`` to ``stop - 1``: what the walk needs of them
    if they pass (this worker's pid, their subjects, leaf hashes, times and revoked
    signatures), else None."""
    w = _WORKER
    if not w:  # the log could not be opened here: the auditor's process checks it alone
        return None
    columns = None if w["entries"] else _TREE_COLUMNS
    page = list(w["reader"].entries(columns, between=(start, stop)))
    if len(page) != stop - start:
        return None
    if w["fast"] is None:
        w["fast"] = _FastPage(list(page[0].keys()), w["certs"], w["verifier"], w["entries"])
    fast: _FastPage = w["fast"]
    subject_lists = fast.subjects(page, start)
    if subject_lists is None:
        return None
    times, hits = _page_facts(page, start, w["marks"], w["revoked"], w["entries"])
    return os.getpid(), subject_lists, fast.leaf_hashes(page), times, hits


def fetch_witness_checkpoint(
    registry: str, node: str, *, timeout: float = 10.0
) -> WitnessCheckpoint | None:
    """The witness's latest co-signed checkpoint of ``node``, from the registry at
    ``registry`` (its base URL or its ``/witness`` endpoint); None if the witness never saw
    one. Plain HTTP is enough: what counts is verified (co-signature, certificate, CA).
    Raises OSError or ValueError, with the reason, when it cannot be fetched."""
    base = registry.rstrip("/")
    url = (
        (base if base.endswith("/witness") else base + "/witness")
        + "?"
        + urlencode({"origin": f"xroad-hub/{node}"})
    )
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{registry!r} is not an http(s) URL of the registry")
    with urlopen(url, timeout=timeout) as resp:  # the scheme is checked above
        data = resp.read(1024 * 1024)
    return _witness_document(data, url)


def load_witness_checkpoint(path: Path) -> WitnessCheckpoint:
    """A witness checkpoint an auditor saved: the registry's answer to
    ``GET /witness?origin=xroad-hub/NODE`` (JSON with the co-signed ``note`` and the
    witness's ``cert``). Raises OSError or ValueError."""
    checkpoint = _witness_document(path.read_bytes(), str(path))
    if checkpoint is None:
        raise ValueError(f"{path} holds no checkpoint (the witness had seen none)")
    return checkpoint


def _witness_document(data: bytes, source: str) -> WitnessCheckpoint | None:
    try:
        doc = orjson.loads(data)
        if doc.get("note") is None:
            return None
        return WitnessCheckpoint(
            str(doc["note"]), base64.b64decode(str(doc["cert"]), validate=True), source
        )
    except (orjson.JSONDecodeError, AttributeError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{source} is not a witness answer (JSON with the co-signed note and the "
            f"witness certificate): {exc}"
        ) from exc


def log_node(log: LogSource) -> str | None:
    """The node whose checkpoints the log holds, if they name exactly one: what to ask the
    witness about when the auditor does not say (verification then checks that every
    checkpoint is that node's)."""
    try:
        with reading(log) as reader:
            notes = [cp["note"] for cp in reader.checkpoints()]
    except LogReadError:
        return None
    origins = {_origin(n) if isinstance(n, str) else None for n in notes}
    if len(origins) != 1 or None in origins:
        return None
    return str(origins.pop()).removeprefix("xroad-hub/")


def _origin(note: str) -> str | None:
    try:
        return Checkpoint.parse(note.partition("\n\n")[0] + "\n").origin
    except CheckpointError:
        return None


def _json(text: object) -> Any:
    """A JSON column's value, None if it is not JSON text (a finding for the caller)."""
    try:
        return orjson.loads(text)  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        return None


def _earliest_time(finished_at: object, row: Row | None) -> float:
    """When an entry happened, as early as anything in it says: the node's own finish time,
    or the times the members signed into the request and the answer. A node that rewrites
    its finish times to make old uncovered entries look new cannot rewrite those."""
    times = [finished_at]
    if row is not None:
        for column in ("request_meta", "response_meta"):
            try:
                meta = orjson.loads(row[column]) if row[column] else None
            except (orjson.JSONDecodeError, TypeError):
                meta = None  # reported by the entry's own checks
            times.append(meta.get("created") if isinstance(meta, dict) else None)
    found = [float(t) for t in times if isinstance(t, int | float) and not isinstance(t, bool)]
    return min(found, default=0.0)


def _check_coverage(
    report: AuditReport, finished: dict[int, float], grace: float, now: float
) -> None:
    """Entries no witnessed checkpoint covers: the node alone could still change or drop them
    (an erased entry, later rows renumbered, checkpoints deleted leaves no other trace)."""
    if report.uncovered <= 0:
        return
    since = finished[report.covered]
    report.uncovered_since = since
    if report.covered == 0:
        report.findings.append(Finding(None, (
            f"no checkpoint co-signed by the witness covers any of the {report.entries} "
            "entries: entries could have been erased, renumbered or rewritten unseen; "
            "compare the log with the witness's checkpoint of this node"
        )))  # fmt: skip
        return
    age = now - since
    if age > grace:
        report.findings.append(Finding(report.covered, (
            f"{report.uncovered} entries from {report.covered} on (the first finished "
            f"{iso_utc(since)}, {age / 3600:.1f} h ago) are covered by no witnessed checkpoint, "
            f"longer than the {grace:.0f} s allowed: checkpoints stopped or were deleted"
        )))  # fmt: skip


def _trusted_witness_checkpoints(
    witnesses: Sequence[WitnessCheckpoint],
    trusted_roots: list[x509.Certificate],
    node: str | None,
    report: AuditReport,
) -> list[Checkpoint]:
    """The witness checkpoints that the instance's witness really co-signed for this node."""
    out = []
    for w in witnesses:
        try:
            cp = Checkpoint.parse(w.note.partition("\n\n")[0] + "\n")
        except CheckpointError as exc:
            report.findings.append(Finding(None, f"witness checkpoint from {w.source}: {exc}"))
            continue
        if not cosigned(w.note, w.cert_der, trusted_roots):
            report.findings.append(Finding(None, (
                f"witness checkpoint from {w.source}: not co-signed by the instance's witness "
                "(certificate issued by the federation CA); it proves nothing"
            )))  # fmt: skip
            continue
        expected = f"xroad-hub/{node}" if node else (out[0].origin if out else cp.origin)
        if cp.origin != expected:
            report.findings.append(Finding(None, (
                f"witness checkpoint from {w.source} is of {cp.origin}, not of {expected}"
            )))  # fmt: skip
            continue
        out.append(cp)
    return out


def _compare_with_witness(
    cp: Checkpoint, entries: int, roots_at: dict[int, bytes], complete: bool
) -> str | None:
    """Why the log is not the one the witness co-signed (the log's first ``cp.size`` entries
    must give the witnessed root, so nothing was erased, renumbered or rewritten), or None."""
    if not complete:
        return None  # the gap is reported; the tree after it means nothing
    if cp.size > entries:
        return (
            f"the witness co-signed {cp.size} entries of {cp.origin}, the log holds only "
            f"{entries}: entries were removed (or this copy is older than that checkpoint: "
            "compare it with the witness checkpoint saved with the copy)"
        )
    if cp.size and roots_at.get(cp.size) != cp.root:
        return (
            f"the log's first {cp.size} entries do not give the root the witness co-signed "
            f"for {cp.origin}: entries were changed, erased, renumbered or reordered"
        )
    return None


_sha256 = hashlib.sha256
_sha512 = hashlib.sha512


def _b64(digest: bytes) -> str:
    """base64 as `body_digest` and `request_hash` write it (b64encode), without its wrapper."""
    return binascii.b2a_base64(digest, newline=False).decode()


_MARGIN = 0.001  # s: the batched check leaves times this close to a validity bound to the other


def _subjects_match(
    subject_lists: list[Any] | None, start: int, subject_index: _SubjectIndex
) -> bool:
    """Whether a page passed (``subject_lists``: its entries' subjects, None if not) and the
    subject index names exactly their subjects (its rows for the page are then consumed)."""
    if subject_lists is None:
        return False
    want = set()
    for index, subjects in enumerate(subject_lists, start):
        if type(subjects) is not list:
            return False
        try:
            want.update((index, s) for s in subjects)
        except TypeError:  # unhashable
            return False
    taken = subject_index.take(start, start + len(subject_lists))
    if taken is None:
        return False
    if set(taken) != want:
        subject_index.put_back(taken)
        return False
    return True


class _FastPage:
    """The checks of `_verify` and `_check_entry` over a page of entries at once, without a
    finding's wording: ``subjects`` answers only "every entry of the page passes", and anything
    it is not sure of (a value of an unusual type, a first signature of a batch, any
    mismatch) makes it say no, so that the entry-by-entry check runs and reports. What it
    saves: per-entry calls (types checked once per combination, identifiers and certificates
    looked up once, a batch's ECDSA signature verified once for all its messages)."""

    def __init__(
        self, names: list[str], certs: dict[str, bytes], verifier: SignatureVerifier, full: bool
    ) -> None:
        self._full = full
        self._pos = {name: i for i, name in enumerate(names)}
        self._checks = _type_checks(names, _TYPES)
        self._good_types: set[tuple[type, ...]] = set()
        self._names = names
        self._hash = self._pos["leaf_hash"]
        self._certs = certs
        self._verifier = verifier
        self._signers: dict[tuple[str, Any, bytes], tuple[Any, float, float] | None] = {}
        self._roots: set[tuple[bytes, int, bytes, bytes]] = set()
        self._nodes: dict[tuple[bytes, bytes], bytes] = {}

    def leaf_hashes(self, page: list[Row]) -> list[bytes]:
        i = self._hash
        return [r[i] for r in page]

    def subjects(self, page: list[Row], start: int) -> list[Any] | None:
        """Each entry's subjects if the whole page passes, else None."""
        try:
            return self._page(page, start)
        except Exception:  # anything odd: the entry-by-entry check says what
            return None

    def _page(self, page: list[Row], start: int) -> list[Any] | None:
        """Each entry's subjects if nothing in the page is amiss, else None."""
        first = self._pos["leaf_index"]
        if [r[first] for r in page] != list(range(start, start + len(page))):
            return None
        good = self._good_types
        for r in page:
            types = tuple(map(type, r))
            if types not in good:
                if not all(types[i] in ok for i, ok in self._checks):
                    return None
                good.add(types)
        h = self._hash
        if not all(len(r[h]) == 32 for r in page):
            return None
        loads = orjson.loads
        subjects = self._pos["subjects"]
        names = self._names
        entry = self._entry if self._full else self._leaf
        for r in page:
            if not entry(dict(zip(names, r, strict=True))):
                return None
        return [loads(r[subjects]) for r in page]

    @staticmethod
    def _leaf(fields: dict[str, Any]) -> bool:
        """The leaf rebuilt from the columns has the stored hash (the tree-only check)."""
        return _sha256(b"\0" + leaf_of(fields)).digest() == fields["leaf_hash"]

    def _entry(self, fields: dict[str, Any]) -> bool:
        """`_check_entry` finds nothing (True), or might (False)."""
        if not self._leaf(fields):
            return False
        for column, digest in _BODIES:
            value = fields[column]
            if value is not None and _sha256(value).digest() != fields[digest]:
                return False
        request_meta = fields["request_meta"]
        request_body = fields["request_body"]
        if not self._signed(
            "request", fields, request_meta, fields["request_signature"],
            fields["request_cert_sha256"], request_body, None,
        ):  # fmt: skip
            return False
        response_meta = fields["response_meta"]
        return response_meta is None or self._signed(
            "response", fields, response_meta, fields["response_signature"],
            fields["response_cert_sha256"], fields["response_body"], (request_meta, request_body),
        )  # fmt: skip

    def _root(self, leaf: bytes, index: int, size: int, signature: bytes, end: int) -> bytes | None:
        """`merkle.root_from_inclusion` over the path in ``signature``, with interior nodes
        remembered: the messages of one batch share all but their lowest ones."""
        if not 0 <= index < size:
            return None
        nodes = self._nodes
        if len(nodes) > 1 << 16:
            nodes.clear()
        fn, sn, result = index, size - 1, leaf
        for at in range(9, end, 32):
            if sn == 0:
                return None
            sibling = signature[at : at + 32]
            pair = (sibling, result) if fn & 1 or fn == sn else (result, sibling)
            node = nodes.get(pair)
            if node is None:
                node = nodes[pair] = _sha256(b"\1" + pair[0] + pair[1]).digest()
            result = node
            if fn & 1 or fn == sn:
                while fn and not fn & 1:  # climb to where this subtree is a right child
                    fn >>= 1
                    sn >>= 1
            fn >>= 1
            sn >>= 1
        return result if sn == 0 else None

    def _signer(self, side: str, name: object, cert: bytes) -> tuple[Any, float, float] | None:
        try:
            member = (
                parse_client_id(str(name)).member
                if side == "request"
                else parse_service_id(str(name)).provider.member
            )
            signer = self._verifier.signer(cert)
        except (ProtocolError, SignatureError):
            return None
        return signer if signer[0] == member else None

    def _signed(
        self,
        side: str,
        leaf: dict[str, Any],
        meta: bytes,
        signature: bytes,
        cert_sha256: str | None,
        body: bytes | None,
        request: tuple[bytes, bytes | None] | None,
    ) -> bool:
        """`check_signed_part` finds nothing (True), or might (False)."""
        cert = self._certs.get(cert_sha256 or "")
        if cert is None or type(signature) is not bytes:
            return False
        name = leaf["client"] if side == "request" else leaf["service"]
        # (member, validity) of the certificate if it may sign for the leaf's client or
        # provider; None if not. Few certificates and names: each pair is judged once.
        signer = self._signers.get((side, name, cert), False)
        if signer is False:
            signer = self._signer(side, name, cert)
            self._signers[(side, name, cert)] = signer
        if signer is None:
            return False
        signed = orjson.loads(meta)
        if type(signed) is not dict:
            return False
        created = signed.get("created", leaf["started_at"])
        if type(created) not in (float, int):
            return False
        if not signer[1] + _MARGIN < created < signer[2] - _MARGIN:
            return False
        for signed_key, leaf_key in _BOUND_REQUEST if side == "request" else _BOUND_RESPONSE:
            if signed.get(signed_key) != leaf.get(leaf_key):
                return False
        if request is not None and signed.get("request_hash") != (
            _request_hash(*request)
            if not request[1]
            else _b64(_sha512(_sha512(request[0]).digest() + _sha512(request[1]).digest()).digest())
        ):  # as rest.request_hash computes it
            return False
        if body is not None and signed.get("body_sha512") != _b64(_sha512(body).digest()):
            return False
        # The batch signature: this message's audit path must lead to a root whose ECDSA
        # signature was verified (once per batch, by the verifier itself).
        if len(signature) < 9:
            return False
        index, size, n = _BATCH_HEAD.unpack_from(signature)
        end = 9 + 32 * n
        if size > MAX_BATCH or len(signature) <= end:
            return False
        root = self._root(_sha256(b"\0" + meta).digest(), index, size, signature, end)
        if root is None:
            return False
        key = (cert, size, root, signature[end:])
        if key not in self._roots:
            when = datetime.fromtimestamp(float(created), UTC)
            try:
                self._verifier.verify(meta, signature, cert, signer[0], when)
            except SignatureError:
                return False
            self._roots.add(key)
        return True


def _leaf_changed(fields: dict[str, Any]) -> bool | None:
    """Whether the leaf rebuilt from an entry's columns (of the right types) lacks the
    stored leaf hash; None if it cannot be rebuilt (the subjects column is not JSON:
    reported with the subject index)."""
    try:
        leaf = leaf_of(fields)
    except (TypeError, ValueError):  # orjson's errors are ones too
        return None
    return merkle.leaf_hash(leaf) != fields["leaf_hash"]


def _check_entry(row: Row, certs: dict[str, bytes], verifier: SignatureVerifier) -> Iterator[str]:
    """What is wrong with one entry whose columns hold values of the right types."""
    fields = as_dict(row)
    if _leaf_changed(fields):  # None (no leaf: subjects not JSON) is reported elsewhere
        yield _CHANGED
    for column, digest in _BODIES:
        value = fields[column]
        # A body purged by retention is NULL while its digest stays.
        if value is not None and _sha256(value).digest() != fields[digest]:
            yield f"{column} does not match its digest"
    request_body = fields["request_body"]
    request = (fields["request_meta"], request_body)
    sides = ["request"] + (["response"] if fields["response_meta"] is not None else [])
    for side in sides:
        cert = certs.get(fields[f"{side}_cert_sha256"] or "")
        if cert is None:
            yield f"the {side} signing certificate is not in the log"
            continue
        problem = check_signed_part(
            verifier, side, fields, fields[f"{side}_meta"], fields[f"{side}_signature"],
            cert, fields[f"{side}_body"], request,
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
_BATCH_HEAD = struct.Struct(">IIB")  # as signing.BatchSignature encodes it


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
    except (ProtocolError, KeyError, TypeError, ValueError, orjson.JSONDecodeError):
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
        and signed.get("request_hash") != _request_hash(request[0], request[1])
    ):
        return "the answer does not carry the hash of the logged request"
    if body is not None and signed.get("body_sha512") != body_digest(body):
        return f"{side} body is not the one that was signed"
    return None


def _request_hash(meta: bytes, body: bytes | None) -> str | None:
    """The hash an answer must carry of its request. A purged request body is stood in for
    by the digest its signed metadata holds: without it, whoever holds the client's signing
    key could pair the provider's genuine answer with another request under the same ids."""
    if body is not None:
        return request_hash(meta, body)
    try:
        digest = base64.b64decode(str(orjson.loads(meta)["body_sha512"]), validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    head = hashlib.sha512(meta).digest()
    if digest == hashlib.sha512(b"").digest():
        return base64.b64encode(head).decode()  # as request_hash() has it for no body
    return base64.b64encode(hashlib.sha512(head + digest).digest()).decode()


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
    except ProtocolError as exc:
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


def revocation_problem(
    revocation: Revocation | None, what: str, proven_at: datetime | None
) -> str | None:
    """Why a signature by a revoked certificate proves nothing, or None when it does: it
    stands only if a timestamp (``proven_at``, when the log had committed to it) shows it
    was made before the revocation."""
    if revocation is None:
        return None
    if proven_at is None:
        return (f"{what} is signed with a revoked certificate ({revocation.describe()}) and "
                "no timestamp shows it was signed before")  # fmt: skip
    # A timestamp's genTime is to the second (rfc3161.py): the stamp was made within the
    # second after it, so only a genTime a full second before the revocation proves "before".
    if proven_at + timedelta(seconds=1) > revocation.revoked_at:
        return (f"{what} is signed with a revoked certificate ({revocation.describe()}); it "
                f"was timestamped only at {_iso(proven_at)}, after the revocation")  # fmt: skip
    return None


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_checkpoint(
    cp: Row,
    certs: dict[str, bytes],
    trusted_roots: list[x509.Certificate],
    roots_at: dict[int, bytes],
    stamped_at: dict[int, datetime] | None = None,
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
            info = verify_response(bytes(token), checkpoint.text().encode(), trusted_roots)
        except TimestampError as exc:
            yield f"its timestamp does not verify: {exc}"
        else:
            if stamped_at is not None:
                stamped_at[checkpoint.size] = info.gen_time.astimezone(UTC)
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
    log: LogSource, query: SearchFilter, *, limit: int = 100, after: int = -1
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of matching entries (without bodies) and the ``after`` of the next page.
    Raises ValueError for a bad page size, LogReadError if the log cannot be read."""
    with reading(log) as reader:
        rows = [as_dict(r) for r in reader.search(query, limit=limit, after=after)]
    for row in rows:
        row["subjects"] = orjson.loads(row["subjects"])
    return rows, (rows[-1]["leaf_index"] if len(rows) == limit else None)
