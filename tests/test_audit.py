"""Offline log verification: a real node's log verifies; each kind of tampering is named."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from xroad_hub.messagelog.audit import (
    WitnessCheckpoint,
    iso_utc,
    load_witness_checkpoint,
    verify_log,
)
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.protocol import merkle

from .conftest import Fed
from .sqlite_db import sqlite_db

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}


@pytest.fixture
async def log_copy(fed: Fed, http, tmp_path: Path) -> Path:
    """A copy of the provider node's log after a few exchanges of each outcome."""
    for path in ("/echo/a", "/echo/status/404", "/restricted", "/nosuch"):
        service = path.split("/")[1]
        url = fed.url(DGA) + f"/r1/TH/GOV/DBD/registry/{service}" + path[len(service) + 1 :]
        async with http.post(url, data=b"body", headers={**DEV, "X-Road-Id": str(uuid.uuid4())}):
            pass
    await fed.federation.nodes[DBD].checkpointer.checkpoint()
    src = fed.federation.nodes[DBD].runtime.log.path
    dst = tmp_path / "copy.sqlite"
    with sqlite_db(src) as a, sqlite_db(dst) as b:
        a.backup(b)
    return dst


_CHANGED = (
    "its columns were changed since it was logged: they no longer give the leaf hash stored "
    "with them"
)
_UNCOVERED = "no checkpoint co-signed by the witness covers"
_WHY = (
    ": entries could have been erased, renumbered or rewritten unseen; compare the log with "
    "the witness's checkpoint of this node"
)


def _root(fed: Fed) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(fed.pki.root_ca.cert.read_bytes())]


def _tamper(path: Path, sql: str, *params: object) -> None:
    with sqlite_db(path) as conn:
        conn.execute(sql, params)


def _rows(conn: sqlite3.Connection, where: str = "1", *params: object) -> list[dict[str, Any]]:
    """The exchange rows ``where`` holds, by column name, in leaf order."""
    conn.row_factory = sqlite3.Row
    try:
        sql = f"SELECT * FROM exchange WHERE {where} ORDER BY leaf_index"
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.row_factory = None


def _forge(path: Path, index: int, sql: str, *params: object) -> None:
    """A consistent forgery: ``sql`` rewrites columns of entry ``index``, and the forger then
    stores the hash of the leaf the rewritten columns give, as the node would have."""
    with sqlite_db(path) as conn:
        conn.execute(sql, params)
        (row,) = _rows(conn, "leaf_index = ?", index)
        conn.execute(
            "UPDATE exchange SET leaf_hash = ? WHERE leaf_index = ?",
            (merkle.leaf_hash(leaf_of(row)), index),
        )


async def test_untouched_log_verifies_with_the_tree_root(fed: Fed, log_copy: Path) -> None:
    report = verify_log(log_copy, _root(fed))
    assert report.ok, [str(f) for f in report.findings]
    with sqlite_db(log_copy) as conn:
        rows = _rows(conn)
    # Each stored leaf hash is the hash of the leaf its columns give, and they give the root.
    hashes = [merkle.leaf_hash(leaf_of(row)) for row in rows]
    assert hashes == [row["leaf_hash"] for row in rows]
    assert report.entries == len(rows) >= 4
    assert report.root == merkle.root(hashes)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("UPDATE exchange SET user_id = 'TH0000000000000' WHERE leaf_index = 1", _CHANGED),
        (
            "UPDATE exchange SET service = REPLACE(service, 'registry', 'registrx')"
            " WHERE leaf_index = 1",
            _CHANGED,
        ),
        ("UPDATE exchange SET leaf_hash = zeroblob(32) WHERE leaf_index = 1", _CHANGED),
        (
            "UPDATE exchange SET response_body = X'00' WHERE leaf_index = 1",
            "response_body does not match",
        ),
        (
            "UPDATE exchange SET request_signature = X'00' WHERE leaf_index = 1",
            _CHANGED,
        ),
        (
            "UPDATE exchange SET request_meta = CAST(REPLACE(CAST(request_meta AS TEXT), 'request',"
            " 'requesx') AS BLOB) WHERE leaf_index = 1",
            _CHANGED,
        ),
        (
            "UPDATE exchange SET request_body_sha256 = zeroblob(32) WHERE leaf_index = 1",
            _CHANGED,
        ),
        ("DELETE FROM exchange WHERE leaf_index = 1", "entry 1 is missing"),
        (
            "UPDATE exchange SET leaf_index = leaf_index + 1000000 WHERE leaf_index = 0",
            "entry 0 is missing",
        ),
    ],
)
async def test_tampering_is_named_with_its_entry(
    fed: Fed, log_copy: Path, sql: str, expected: str
) -> None:
    _tamper(log_copy, sql)
    report = verify_log(log_copy, _root(fed))
    assert not report.ok
    assert expected in str(report.findings[0]), [str(f) for f in report.findings]
    assert report.findings[0].leaf_index in (0, 1)


async def test_consistent_forgery_fails_the_signature(fed: Fed, log_copy: Path) -> None:
    """Rewriting the meta and its leaf hash together still breaks the member signature."""
    _forge(
        log_copy, 0,
        "UPDATE exchange SET request_meta = CAST(REPLACE(CAST(request_meta AS TEXT),"
        " 'devportal', 'devportax') AS BLOB) WHERE leaf_index = 0",
    )  # fmt: skip
    report = verify_log(log_copy, _root(fed))
    findings = [str(f) for f in report.findings]
    assert findings[0] == "entry 0: request signature: signature does not verify", findings
    # The answer no longer carries the hash of the (rewritten) request, and the rewritten
    # leaf hash no longer gives the checkpoints' roots, so no witnessed checkpoint covers
    # the log.
    assert all(
        "history rewritten" in f or "hash of the logged request" in f or _UNCOVERED in f
        for f in findings[1:]
    ), findings


async def test_purged_bodies_still_verify(fed: Fed, log_copy: Path) -> None:
    _tamper(log_copy, "UPDATE exchange SET request_body = NULL, response_body = NULL")
    assert verify_log(log_copy, _root(fed)).ok


def test_cli_exit_codes(fed: Fed, log_copy: Path) -> None:
    cmd = [sys.executable, "-m", "xroad_hub.cli", "audit", "verify", str(log_copy),
           "--root-ca", str(fed.pki.root_ca.cert)]  # fmt: skip
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith(": OK")
    _tamper(log_copy, "DELETE FROM exchange WHERE leaf_index = 2")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert "BAD entry 2: entry 2 is missing" in bad.stdout


async def test_checkpoints_verify_and_catch_a_rewritten_history(fed: Fed, log_copy: Path) -> None:
    report = verify_log(log_copy, _root(fed))
    assert report.ok and report.checkpoints >= 1
    # Rewrite an entry consistently where nothing signed repeats it (the logged finish
    # time, and the leaf hash to match): only the signed checkpoint can tell.
    _forge(log_copy, 0, "UPDATE exchange SET finished_at = finished_at + 1 WHERE leaf_index = 0")
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    assert findings and all("history rewritten" in f or _UNCOVERED in f for f in findings)
    assert findings[-1] == f"log: {_UNCOVERED} any of the {report.entries} entries" + _WHY


async def test_truncated_log_fails_its_checkpoint(fed: Fed, log_copy: Path) -> None:
    _tamper(
        log_copy, "DELETE FROM exchange WHERE leaf_index = (SELECT MAX(leaf_index) FROM exchange)"
    )
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    assert any("truncated" in f for f in findings), findings


async def test_forged_checkpoint_signature_fails(fed: Fed, log_copy: Path) -> None:
    with sqlite_db(log_copy) as conn:
        note = conn.execute("SELECT note FROM checkpoint ORDER BY size DESC").fetchone()[0]
        lines = note.split("\n")
        lines[1] = str(int(lines[1]) - 1)
        conn.execute("UPDATE checkpoint SET note = ? WHERE note = ?", ("\n".join(lines), note))
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    assert any("does not verify" in f for f in findings), findings


async def test_witness_cosignature_is_checked(fed: Fed, log_copy: Path) -> None:
    report = verify_log(log_copy, _root(fed))
    assert report.ok and report.witnessed >= 1
    with sqlite_db(log_copy) as conn:
        size, note = conn.execute(
            "SELECT size, note FROM checkpoint WHERE witness_cert_sha256 IS NOT NULL"
        ).fetchone()
        last = note.rstrip("\n").split("\n")[-1]
        broken = note.replace(
            last, last[:-6] + ("AAAAA=" if not last.endswith("AAAAA=") else "BBBBB=")
        )
        conn.execute("UPDATE checkpoint SET note = ? WHERE size = ?", (broken, size))
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    assert any("witness co-signature" in f for f in findings), findings


async def test_swapped_rows_break_the_checkpoint(fed: Fed, log_copy: Path) -> None:
    """Two entries swapped (indexes exchanged): each row is consistent on its own, but the
    tree no longer gives the signed root."""
    with sqlite_db(log_copy) as conn:
        conn.execute("UPDATE exchange SET leaf_index = -1 WHERE leaf_index = 0")
        conn.execute("UPDATE exchange SET leaf_index = 0 WHERE leaf_index = 1")
        conn.execute("UPDATE exchange SET leaf_index = 1 WHERE leaf_index = -1")
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    # The rows moved, their subject index rows did not: the index is wrong for both.
    assert findings and all(
        "history rewritten" in f or _UNCOVERED in f or "subject index" in f for f in findings
    ), findings
    assert any("history rewritten" in f for f in findings), findings


async def test_tree_only_mode_checks_tree_and_checkpoints(fed: Fed, log_copy: Path) -> None:
    assert verify_log(log_copy, _root(fed), entries=False).ok
    # A changed column no longer gives the entry's leaf hash, in either mode; a changed
    # leaf hash breaks the tree.
    _tamper(log_copy, "UPDATE exchange SET user_id = 'x' WHERE leaf_index = 0")
    for entries in (False, True):
        findings = [str(f) for f in verify_log(log_copy, _root(fed), entries=entries).findings]
        assert f"entry 0: {_CHANGED}" in findings
    _tamper(
        log_copy, "UPDATE exchange SET leaf_hash = ? WHERE leaf_index = 0", merkle.leaf_hash(b"{}")
    )
    findings = [str(f) for f in verify_log(log_copy, _root(fed), entries=False).findings]
    assert findings and all(
        "history rewritten" in f or _UNCOVERED in f or "subject index" in f or _CHANGED in f
        for f in findings
    ), findings
    assert any("history rewritten" in f for f in findings), findings


def test_bench_audit_smoke() -> None:
    out = subprocess.run(
        [sys.executable, "scripts/bench_audit.py", "--smoke"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["ok"] and result["tree_only_ok"] and result["verify_entries_per_s"] > 0


def test_bench_audit_against_another_tree_verifies_the_log_it_wrote() -> None:
    """--against: the other tree writes the log, both trees verify it (here the other tree
    is this one: the smoke run checks the children run and report)."""
    out = subprocess.run(
        [sys.executable, "scripts/bench_audit.py", "--smoke", "--against", "."],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["ok"] and result["entries"] == 500
    for mode in ("full", "tree_only"):
        assert result[mode]["this"]["median_cpu_entries_per_s"] > 0


async def test_leaf_must_repeat_the_signed_values(fed: Fed, log_copy: Path) -> None:
    """A genuine signature logged under another user, case or subsystem is caught, even when
    the leaf hash is recomputed to match (only the checkpoint would otherwise tell)."""
    _forge(log_copy, 0, "UPDATE exchange SET issue = 'SOMEONE-ELSES-CASE' WHERE leaf_index = 0")
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    assert "entry 0: the leaf's issue is not the signed request's" in findings, findings
    assert f"entry 0: {_CHANGED}" not in findings, findings  # the forgery is consistent


async def test_a_node_cannot_witness_itself(fed: Fed, log_copy: Path) -> None:
    """Review finding: a node naming its own checkpoint certificate as the witness (its own
    signature line would then count as the co-signature)."""
    _tamper(
        log_copy,
        "UPDATE checkpoint SET witness_cert_sha256 = cert_sha256"
        " WHERE witness_cert_sha256 IS NOT NULL",
    )
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    assert any("witness co-signature does not verify" in f for f in findings), findings


# --- issue 10: what only the witness and the leaves can tell ----------------------------------


async def _witness_answer(fed: Fed, http, node: str = DBD) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What the registry's witness serves about ``node``: its latest co-signed checkpoint."""
    url = f"{fed.endpoints['registry']}/witness"
    async with http.get(url, params={"origin": f"xroad-hub/{node}"}) as resp:
        assert resp.status == 200
        return await resp.json()


def _witness_file(tmp_path: Path, answer: dict[str, object]) -> WitnessCheckpoint:
    path = tmp_path / f"witness-{uuid.uuid4()}.json"
    path.write_text(json.dumps(answer))
    return load_witness_checkpoint(path)


def _erase_and_renumber(path: Path, erased: int = 1) -> None:
    """The review's attack: erase an entry, renumber every later row (and its subject index
    rows) so the sequence has no gap, and delete every checkpoint."""
    with sqlite_db(path) as conn:
        conn.execute("DELETE FROM exchange WHERE leaf_index = ?", (erased,))
        conn.execute("DELETE FROM exchange_subject WHERE leaf_index = ?", (erased,))
        conn.execute("UPDATE exchange SET leaf_index = leaf_index - 1 WHERE leaf_index > ?",
                     (erased,))  # fmt: skip
        conn.execute(
            "UPDATE exchange_subject SET leaf_index = leaf_index - 1 WHERE leaf_index > ?",
            (erased,),
        )
        conn.execute("DELETE FROM checkpoint")


async def test_erased_entry_with_renumbered_rows_and_no_checkpoints_fails(
    fed: Fed, http, log_copy: Path, tmp_path: Path
) -> None:
    _erase_and_renumber(log_copy)
    report = verify_log(log_copy, _root(fed))
    findings = [str(f) for f in report.findings]
    assert findings == [f"log: {_UNCOVERED} any of the {report.entries} entries" + _WHY]
    assert (report.covered, report.uncovered) == (0, report.entries)
    # Against the witness's own checkpoint, the log is short of what the node once signed.
    answer = await _witness_answer(fed, http)
    report = verify_log(log_copy, _root(fed), witnesses=[_witness_file(tmp_path, answer)])
    assert any(
        f"the witness co-signed {answer['size']} entries of xroad-hub/{DBD}, the log holds "
        f"only {report.entries}: entries were removed" in str(f)
        for f in report.findings
    ), [str(f) for f in report.findings]


async def test_log_diverging_from_the_witness_checkpoint_fails(
    fed: Fed, http, log_copy: Path, tmp_path: Path
) -> None:
    """An entry rewritten where nothing signed repeats it, and every stored checkpoint
    deleted: the log is consistent in itself; only the witness's checkpoint can tell."""
    answer = await _witness_answer(fed, http)
    witness = _witness_file(tmp_path, answer)
    assert verify_log(log_copy, _root(fed), witnesses=[witness]).ok
    _forge(log_copy, 0, "UPDATE exchange SET finished_at = finished_at + 1 WHERE leaf_index = 0")
    _tamper(log_copy, "DELETE FROM checkpoint")
    findings = [str(f) for f in verify_log(log_copy, _root(fed), witnesses=[witness]).findings]
    assert (
        f"log: the log's first {answer['size']} entries do not give the root the witness "
        f"co-signed for xroad-hub/{DBD}: entries were changed, erased, renumbered or reordered"
    ) in findings, findings


async def test_witness_checkpoint_must_be_cosigned_and_of_this_node(
    fed: Fed, http, log_copy: Path, tmp_path: Path
) -> None:
    answer = await _witness_answer(fed, http)
    note = str(answer["note"])
    # The node's own signature alone (the witness's line removed) proves nothing.
    own_only = {**answer, "note": note[: note.rindex("\u2014")]}
    findings = [
        str(f)
        for f in verify_log(
            log_copy, _root(fed), witnesses=[_witness_file(tmp_path, own_only)]
        ).findings
    ]
    assert any("not co-signed by the instance's witness" in f for f in findings), findings
    await fed.federation.nodes[DGA].checkpointer.checkpoint()  # DGA's client-side log
    other = await _witness_answer(fed, http, DGA)
    findings = [
        str(f)
        for f in verify_log(
            log_copy, _root(fed), witnesses=[_witness_file(tmp_path, other)], node=DBD
        ).findings
    ]
    assert any(f"is of xroad-hub/{DGA}, not of xroad-hub/{DBD}" in f for f in findings), findings


async def test_cli_compares_with_the_registry_witness(
    fed: Fed, http, log_copy: Path, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "xroad_hub.cli", "audit", "verify", str(log_copy),
           "--root-ca", str(fed.pki.root_ca.cert),
           "--witness", str(fed.endpoints["registry"])]  # fmt: skip

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    ok = await asyncio.to_thread(run)  # the registry answers from this test's event loop
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "compared with the witness checkpoint from http://" in ok.stdout
    _erase_and_renumber(log_copy)
    # With no checkpoint left, the log no longer says whose it is: the auditor does.
    bad = await asyncio.to_thread(run)
    assert bad.returncode == 2 and "--node" in bad.stderr and "Traceback" not in bad.stderr
    cmd += ["--node", DBD]
    bad = await asyncio.to_thread(run)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "entries were removed" in bad.stdout and "BAD log: no checkpoint" in bad.stdout


async def _log_with_uncovered_entries(fed: Fed, http, path: Path, uncovered: int) -> Path:  # type: ignore[no-untyped-def]
    """A copy at ``path`` of the provider's log: witnessed up to a fresh checkpoint (of at
    least one entry, whichever tests ran before), then ``uncovered`` more entries."""
    node = fed.federation.nodes[DBD]
    url = fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/late"
    for i in range(1 + uncovered):
        if i == 1:
            await node.checkpointer.checkpoint()
        async with http.post(url, data=b"x", headers={**DEV, "X-Road-Id": str(uuid.uuid4())}):
            pass
    with sqlite_db(node.runtime.log.path) as a, sqlite_db(path) as b:
        a.backup(b)
    return path


async def test_entries_after_the_last_witnessed_checkpoint_are_counted(
    fed: Fed, http, tmp_path: Path
) -> None:
    """Entries newer than the last checkpoint are normal in a live log (said, not failed);
    left uncovered longer than the grace period, they fail."""
    path = await _log_with_uncovered_entries(fed, http, tmp_path / "live.sqlite", 3)
    report = verify_log(path, _root(fed))
    assert report.ok, [str(f) for f in report.findings]
    assert report.uncovered == 3 and report.covered == report.entries - 3
    assert report.uncovered_since is not None
    later = report.uncovered_since + 7200
    findings = [str(f) for f in verify_log(path, _root(fed), now=later, grace=3600).findings]
    assert findings == [
        f"entry {report.covered}: 3 entries from {report.covered} on (the first finished "
        f"{iso_utc(report.uncovered_since)}, 2.0 h ago) are covered by no witnessed "
        "checkpoint, longer than the 3600 s allowed: checkpoints stopped or were deleted"
    ]


async def test_rewritten_finish_times_do_not_make_old_uncovered_entries_young(
    fed: Fed, http, tmp_path: Path
) -> None:
    """A node that rewrites the finish times of its uncovered entries to 'now' (no checkpoint
    covers them, so the tree does not object) is still dated by what the members signed."""
    path = await _log_with_uncovered_entries(fed, http, tmp_path / "rewritten.sqlite", 2)
    report = verify_log(path, _root(fed))
    later = time.time() + 7200
    for index in range(report.covered, report.entries):
        _forge(
            path, index, "UPDATE exchange SET finished_at = ? WHERE leaf_index = ?", later, index
        )
    findings = [str(f) for f in verify_log(path, _root(fed), now=later, grace=3600).findings]
    assert any("covered by no witnessed checkpoint, longer than" in f for f in findings), findings


async def test_subject_index_is_checked_against_the_leaves(fed: Fed, log_copy: Path) -> None:
    """The citizens' tracker and `audit search --subject` read the subject index: a deleted
    row hides a read from the citizen, an inserted one blames another."""
    with sqlite_db(log_copy) as conn:
        subject, index = conn.execute(
            "SELECT subject, leaf_index FROM exchange_subject ORDER BY leaf_index DESC LIMIT 1"
        ).fetchone()
        size = conn.execute("SELECT COUNT(*) FROM exchange").fetchone()[0]
    for mode in (True, False):
        assert verify_log(log_copy, _root(fed), entries=mode).ok
    _tamper(log_copy, "DELETE FROM exchange_subject WHERE leaf_index = ?", index)
    _tamper(log_copy, "INSERT INTO exchange_subject VALUES ('3100600123459', ?)", index)
    _tamper(log_copy, "INSERT INTO exchange_subject VALUES ('3100600123459', ?)", size + 5)
    for mode in (True, False):
        findings = [str(f) for f in verify_log(log_copy, _root(fed), entries=mode).findings]
        assert findings == [
            f"entry {index}: the subject index lacks {subject!r}: the citizen's tracker and "
            "searches miss it",
            f"entry {index}: the subject index names '3100600123459', whom the entry does not "
            "concern",
            f"log: the subject index names '3100600123459' for entry {size + 5}, which the log "
            "does not hold",
        ], findings


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "UPDATE exchange SET started_at = 'yesterday' WHERE leaf_index = 1",
            "entry 1: column started_at holds text ('yesterday'), not a number",
        ),
        (
            "UPDATE exchange SET leaf_hash = hex(leaf_hash) WHERE leaf_index = 1",
            "entry 1: column leaf_hash holds text",
        ),
        (
            "UPDATE exchange SET leaf_hash = X'00' WHERE leaf_index = 1",
            "entry 1: column leaf_hash is not a SHA-256 hash",
        ),
        (
            "UPDATE exchange SET response_body_sha256 = hex(response_body_sha256)"
            " WHERE leaf_index = 1",
            "entry 1: column response_body_sha256 holds text",
        ),
        (
            "UPDATE exchange SET status = '200 OK' WHERE leaf_index = 1",
            "entry 1: column status holds text ('200 OK'), not an integer",
        ),
        (
            "UPDATE checkpoint SET root = 'abc' WHERE size = (SELECT MAX(size) FROM checkpoint)",
            ": column root holds text ('abc'), not a blob",
        ),
        (
            "UPDATE certificate SET der = 'not DER'"
            " WHERE sha256 = (SELECT cert_sha256 FROM checkpoint LIMIT 1)",
            "log: certificate ",
        ),
        (
            "UPDATE certificate SET der = X'3000'"
            " WHERE sha256 = (SELECT cert_sha256 FROM checkpoint LIMIT 1)",
            ": cannot be checked: ValueError(",
        ),
    ],
)
async def test_a_column_of_another_type_is_a_finding(
    fed: Fed, log_copy: Path, sql: str, expected: str
) -> None:
    _tamper(log_copy, sql)
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    assert any(expected in f for f in findings), findings
    cmd = [sys.executable, "-m", "xroad_hub.cli", "audit", "verify", str(log_copy),
           "--root-ca", str(fed.pki.root_ca.cert)]  # fmt: skip
    out = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert any(line.startswith("BAD ") and expected in line for line in out.stdout.splitlines())


def test_cli_search_says_when_nothing_matched_and_prints_iso_times(
    fed: Fed, log_copy: Path
) -> None:
    base = [sys.executable, "-m", "xroad_hub.cli", "audit", "search", str(log_copy)]
    none = subprocess.run([*base, "--issue", "NO-SUCH-CASE"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert none.returncode == 0 and none.stdout == "", none.stdout + none.stderr
    assert none.stderr.strip() == "no entry matched"
    found = subprocess.run([*base, "--limit", "1"], capture_output=True, text=True, timeout=60,
                           check=False)  # fmt: skip
    row = json.loads(found.stdout.splitlines()[0])
    started = datetime.fromisoformat(row["started_at"])
    assert started.utcoffset() == timedelta(0) and row["started_at"].endswith("+00:00")
    # The printed time is the logged one, and --since takes it back.
    again = subprocess.run([*base, "--since", row["started_at"], "--limit", "1"],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert json.loads(again.stdout.splitlines()[0])["leaf_index"] >= row["leaf_index"]
    broken = log_copy.with_name("not-a-log.sqlite")
    broken.write_bytes(b"this is not SQLite")
    bad = subprocess.run([*base[:-1], str(broken)], capture_output=True, text=True, timeout=60,
                         check=False)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "cannot be searched" in bad.stderr


def test_cli_verify_errors_say_what_to_do(fed: Fed, log_copy: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "xroad_hub.cli", "audit", "verify", str(log_copy)]
    cases = [
        (["--root-ca", str(tmp_path / "nowhere.pem")], "--root-ca PATH"),
        (["--root-ca", str(log_copy)], "--root-ca PATH"),  # not a certificate
        (
            ["--root-ca", str(fed.pki.root_ca.cert), "--witness", "http://127.0.0.1:1"],
            "check --witness",
        ),
        (
            ["--root-ca", str(fed.pki.root_ca.cert), "--witness-checkpoint", str(log_copy)],
            "is not a witness answer",
        ),
    ]
    for extra, hint in cases:
        out = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60,
                             check=False)  # fmt: skip
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("xroad-hub: ") and hint in out.stderr, out.stderr


_TAMPERINGS = [
    "UPDATE exchange SET user_id = 'TH0000000000000' WHERE leaf_index = 2",
    "UPDATE exchange SET response_body = X'00' WHERE leaf_index = 3",
    "UPDATE exchange SET request_signature = X'00' WHERE leaf_index = 2",
    "UPDATE exchange SET started_at = started_at + 1 WHERE leaf_index = 3",
    "UPDATE exchange SET subjects = '[\"x\"]' WHERE leaf_index = 2",
    "UPDATE exchange SET status = '200 OK' WHERE leaf_index = 3",
    "DELETE FROM exchange WHERE leaf_index = 3",
    "DELETE FROM exchange_subject"
    " WHERE leaf_index = (SELECT MIN(leaf_index) FROM exchange_subject)",
    "INSERT INTO exchange_subject VALUES ('3100600123459', 2)",
    "INSERT INTO exchange_subject VALUES ('3100600123459', -1)",
    "INSERT INTO exchange_subject VALUES ('3100600123459', 2.0)",
    "UPDATE exchange SET leaf_index = 1000 WHERE leaf_index = 2",
]


@pytest.mark.parametrize("sql", _TAMPERINGS)
async def test_batched_check_finds_what_the_entry_by_entry_check_finds(
    fed: Fed, log_copy: Path, sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`audit verify` checks pages of entries at once and falls back to the entry-by-entry
    check for a page it does not pass: the findings must be exactly that check's, whichever
    page the tampered entry is in, and whether pages are checked in worker processes."""
    from xroad_hub.messagelog import audit

    _tamper(log_copy, sql)
    for mode in (True, False):
        monkeypatch.setattr(audit._FastPage, "subjects", lambda *a: None)
        slow = [str(f) for f in verify_log(log_copy, _root(fed), entries=mode).findings]
        monkeypatch.undo()
        assert slow or not mode, "the full check must find the tampering"
        for page, jobs in ((1, 1), (2, 1), (3, 1), (4096, 1), (2, 2)):
            monkeypatch.setattr(audit, "_PAGE", page)
            monkeypatch.setattr(audit, "_PARALLEL_MIN", 0)
            report = verify_log(log_copy, _root(fed), entries=mode, jobs=jobs)
            assert [str(f) for f in report.findings] == slow, (page, mode, jobs)


async def test_batched_check_passes_an_untouched_log_without_the_slow_check(
    fed: Fed, log_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes `audit verify` fast: an untouched log never needs the entry-by-entry check."""
    from xroad_hub.messagelog import audit

    def slow(*args: object) -> None:
        raise AssertionError("the entry-by-entry check ran")

    monkeypatch.setattr(audit, "_check_entry", slow)
    monkeypatch.setattr(audit._SubjectIndex, "check", slow)
    monkeypatch.setattr(audit, "_PAGE", 2)
    report = verify_log(log_copy, _root(fed))
    assert report.ok and report.entries >= 4, [str(f) for f in report.findings]
    # ... nor in worker processes, which then check every page (the entries too).
    monkeypatch.setattr(audit, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(audit, "_walk", slow)
    in_processes = verify_log(log_copy, _root(fed), jobs=2)
    assert in_processes.ok and in_processes.workers >= 1, in_processes.findings
    assert (in_processes.entries, in_processes.root) == (report.entries, report.root)


_NO_LEAF = ["not JSON", "", "[" * 1010 + "]" * 1010]  # columns that give no leaf to hash
_ODD_SUBJECTS = [
    '{"subjects":["1"]}',  # an object holding a list, not a list
    '"1"',
    "null",
    "[null]",
    "[1]",  # a number where the index holds text
    '["1","1"]',
    '["1","2"] ',
    '[["1"]]',
    '[{"id":1}]',
]


@pytest.mark.parametrize(
    ("subjects", "consistent"),
    [(s, False) for s in _ODD_SUBJECTS + _NO_LEAF] + [(s, True) for s in _ODD_SUBJECTS],
)
async def test_odd_subjects_column_gives_the_findings_of_the_entry_by_entry_check(
    fed: Fed, log_copy: Path, subjects: str, consistent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subjects column is text anyone with the file can write: whatever JSON (or not) it
    holds, the batched check and the tree-only pass, which parse it themselves, must find
    exactly what the entry-by-entry check finds, and that must name the entry's subjects
    (also when the forger stored the hash of the leaf the new column gives)."""
    from xroad_hub.messagelog import audit

    sql = "UPDATE exchange SET subjects = ? WHERE leaf_index = 2"
    if consistent:
        _forge(log_copy, 2, sql, subjects)
    else:
        _tamper(log_copy, sql, subjects)
    for mode in (True, False):
        monkeypatch.setattr(audit._FastPage, "subjects", lambda *a: None)
        slow = verify_log(log_copy, _root(fed), entries=mode).findings
        monkeypatch.undo()
        assert any(f.leaf_index == 2 and "subject" in f.problem for f in slow), (mode, slow)
        if consistent:
            assert all(_CHANGED not in f.problem for f in slow), (mode, slow)
        for page in (1, 2, 3, 4096):
            monkeypatch.setattr(audit, "_PAGE", page)
            fast = verify_log(log_copy, _root(fed), entries=mode).findings
            assert [str(f) for f in fast] == [str(f) for f in slow], (page, mode)


@pytest.mark.parametrize("nested", ['[["1101700203450"]]', '[{"id":1}]', "[" * 1010 + "]" * 1010])
async def test_a_leaf_naming_no_subject_is_a_finding_not_a_crash(
    fed: Fed, log_copy: Path, nested: str
) -> None:
    """The subjects column (part of the leaf) is JSON anyone with the file can write: lists
    or objects where subjects go, or nesting deeper than Python's repr goes, are findings of
    the entry, never a crash."""
    _tamper(log_copy, "UPDATE exchange SET subjects = ? WHERE leaf_index = 2", nested)
    for entries in (True, False):
        report = verify_log(log_copy, _root(fed), entries=entries)
        assert not report.ok
        assert any(f.leaf_index == 2 and "subject" in f.problem for f in report.findings)


def test_a_malformed_database_address_is_a_message_not_a_traceback() -> None:
    # asyncpg's own reading of the address raised a ValueError no error boundary rendered.
    dsn = "postgresql://u:s3cretpw@127.0.0.1:notaport/test"
    run = subprocess.run(
        [sys.executable, "-m", "xroad_hub.cli", "audit", "search", dsn],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "the database address is not valid" in run.stderr
    assert "Traceback" not in run.stderr and "s3cretpw" not in run.stderr + run.stdout
