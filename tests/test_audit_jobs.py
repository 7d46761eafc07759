"""`audit verify` with worker processes (``jobs``): pages of the log checked by other
processes give the report the check in one process gives, on both backends, and they read
the log as the auditor's reader sees it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization

from xroad_hub.dev.signedlog import build_signed_log
from xroad_hub.messagelog import SQLiteMessageLog, audit
from xroad_hub.messagelog.audit import AuditReport, verify_log
from xroad_hub.messagelog.reader import as_dict
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.messagelog.source import open_reader, reading
from xroad_hub.protocol import merkle
from xroad_hub.protocol.globalconf import Revocation

if TYPE_CHECKING:
    from tests.messagelog_backends import Backend, PostgresBackend

pytest_plugins = ["tests.messagelog_backends"]


def _report(r: AuditReport) -> tuple[object, ...]:
    return (r.entries, r.root, r.checkpoints, r.witnessed, r.covered, r.uncovered_since,
            [str(f) for f in r.findings])  # fmt: skip


async def _verify(source: object, roots: list, **kw: object) -> AuditReport:  # type: ignore[type-arg]
    return await asyncio.to_thread(verify_log, source, roots, **kw)  # type: ignore[arg-type]


@pytest.mark.usefixtures("small_pages")
@pytest.mark.parametrize(
    ("checkpoints_at", "end_checkpoint"), [((13, 40), True), ((13, 40), False), ((5,), False)]
)
async def test_honest_log_same_report_in_processes(
    backend: Backend, checkpoints_at: tuple[int, ...], end_checkpoint: bool
) -> None:
    # Checkpoints inside pages: their roots come from the workers' leaf hashes. Without one
    # at the end, the entries after the last are uncovered since the time a worker hands
    # back (at 5: the second such time of its page, after entry 0's).
    roots = await build_signed_log(
        backend.make(), 60, checkpoints_at=checkpoints_at, end_checkpoint=end_checkpoint
    )
    for entries in (True, False):
        alone = await _verify(backend.source(), roots, entries=entries)
        shared = await _verify(backend.source(), roots, entries=entries, jobs=2)
        assert alone.ok, alone.findings
        assert alone.checkpoints == len(checkpoints_at) + end_checkpoint
        assert (alone.uncovered_since is None) == end_checkpoint
        assert (alone.workers, shared.workers >= 1) == (0, True)
        assert _report(shared) == _report(alone)


@pytest.mark.usefixtures("small_pages")
async def test_entry_forged_with_its_leaf_hash_breaks_the_checkpoints_in_processes(
    backend: Backend,
) -> None:
    """Whoever holds the node can change a column nothing signs (the finish time) and store
    the hash of the leaf that gives: every entry then passes its own checks, and only the
    tree shows it. The workers pass every page; the checkpoints must still fail."""
    roots = await build_signed_log(backend.make(), 40, checkpoints_at=(13,))

    def entry(index: int) -> dict[str, object]:
        with reading(backend.source()) as reader:
            return as_dict(next(r for r in reader.entries() if r["leaf_index"] == index))

    row = await asyncio.to_thread(entry, 5)
    row["finished_at"] += 3600
    await backend.tamper(
        "UPDATE {exchange} SET finished_at = ?, leaf_hash = ? WHERE leaf_index = 5",
        row["finished_at"], merkle.leaf_hash(leaf_of(row)),
    )  # fmt: skip
    alone = await _verify(backend.source(), roots)
    shared = await _verify(backend.source(), roots, jobs=2)
    assert shared.workers >= 1
    broken = {f.problem.split(":")[0] for f in alone.findings if "no longer give" in f.problem}
    assert broken == {"checkpoint at size 13", "checkpoint at size 40"}, alone.findings
    assert _report(shared) == _report(alone)


@pytest.mark.usefixtures("small_pages")
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE {exchange} SET user_id = 'TH0000000000000' WHERE leaf_index = 30",
        "DELETE FROM {exchange} WHERE leaf_index = 17",
        "DELETE FROM {exchange_subject} WHERE leaf_index = 33",
        "INSERT INTO {exchange_subject} VALUES ('3100600123459', 99)",
        # The last entry moved past the end, its subject row gone: a short last page.
        "UPDATE {exchange} SET leaf_index = 1000 WHERE leaf_index = 39"
        "; DELETE FROM {exchange_subject} WHERE leaf_index = 39",
    ],
)
async def test_tampered_log_same_findings_in_processes(backend: Backend, sql: str) -> None:
    roots = await build_signed_log(backend.make(), 40)
    for statement in sql.split("; "):
        await backend.tamper(statement)
    for entries in (True, False):
        alone = await _verify(backend.source(), roots, entries=entries)
        shared = await _verify(backend.source(), roots, entries=entries, jobs=2)
        assert alone.findings, sql
        assert _report(shared) == _report(alone)


@pytest.mark.usefixtures("small_pages")
async def test_revoked_signing_certificate_found_in_processes(backend: Backend) -> None:
    """Workers pass the pages of a log signed with a certificate revoked since; what they
    hand back must still name each such signature, judged with the checkpoints."""
    roots = await build_signed_log(backend.make(), 20)
    digest = (await backend.query("SELECT DISTINCT request_cert_sha256 FROM {exchange}"))[0][0]
    revoked = Revocation(digest, "sign", "TH/GOV/DGA", datetime.now(UTC))
    alone = await _verify(backend.source(), roots, revocations=[revoked])
    shared = await _verify(backend.source(), roots, revocations=[revoked], jobs=2)
    assert sorted({f.leaf_index for f in alone.findings}) == list(range(20))
    assert shared.workers >= 1
    assert _report(shared) == _report(alone)


@pytest.mark.usefixtures("small_pages")
async def test_workers_read_the_auditors_postgresql_snapshot(pg_backend: PostgresBackend) -> None:
    """A reader sees one snapshot of the log from open to close; its workers must read that
    one too (an exported snapshot), not the rows as they are when each one starts."""
    roots = await build_signed_log(pg_backend.make(), 40)

    def audit_while_changed() -> AuditReport:
        with open_reader(pg_backend.dsn, schema=pg_backend.schema) as reader:
            assert reader.count() == 40  # the snapshot is taken
            asyncio.run(pg_backend.tamper(
                "UPDATE {exchange} SET user_id = 'TH0000000000000' WHERE leaf_index = 30"
            ))  # fmt: skip
            return verify_log(reader, roots, jobs=2)

    report = await asyncio.to_thread(audit_while_changed)
    assert report.ok and report.workers >= 1, [str(f) for f in report.findings]
    after = await _verify(pg_backend.source(), roots, jobs=2)
    assert {f.leaf_index for f in after.findings} == {30}


async def test_cli_checks_a_large_log_in_processes(tmp_path: Path) -> None:
    """The command as auditors run it, with its own process as the workers' parent: a log
    large enough for processes (no patched sizes here) verifies with the same root."""
    entries = audit._PARALLEL_MIN
    log = tmp_path / "messagelog.sqlite"
    roots = await build_signed_log(SQLiteMessageLog(log), entries)
    ca = tmp_path / "root.pem"
    ca.write_bytes(roots[0].public_bytes(serialization.Encoding.PEM))
    outputs = []
    for jobs in ("1", "2"):
        cmd = [sys.executable, "-m", "xroad_hub.cli", "audit", "verify", str(log),
               "--root-ca", str(ca), "--jobs", jobs]  # fmt: skip
        done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout.splitlines()[-1])
    assert outputs[0].startswith(f"{entries} entries, 1 checkpoints"), outputs
    suffix = r" \(checked by [12] worker process(es)?\)"  # as pages came to them
    assert re.fullmatch(re.escape(outputs[0]) + suffix, outputs[1]), outputs
