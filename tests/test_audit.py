"""Offline log verification: a real node's log verifies; each kind of tampering is named."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from cryptography import x509

from xroad_hub import merkle
from xroad_hub.audit import verify_log
from xroad_hub.message import canonical

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


def _root(fed: Fed) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(fed.pki.root_ca.cert.read_bytes())]


def _tamper(path: Path, sql: str, *params: object) -> None:
    with sqlite_db(path) as conn:
        conn.execute(sql, params)


async def test_untouched_log_verifies_with_the_tree_root(fed: Fed, log_copy: Path) -> None:
    report = verify_log(log_copy, _root(fed))
    assert report.ok, [str(f) for f in report.findings]
    with sqlite_db(log_copy) as conn:
        leaves = [
            bytes(r[0]) for r in conn.execute("SELECT leaf FROM exchange ORDER BY leaf_index")
        ]
    assert report.entries == len(leaves) >= 4
    assert report.root == merkle.root([merkle.leaf_hash(leaf) for leaf in leaves])


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("UPDATE exchange SET user_id = 'TH0000000000000' WHERE leaf_index = 1", "column user_id"),
        (
            "UPDATE exchange SET leaf = CAST(REPLACE(CAST(leaf AS TEXT), 'registry', 'registrx')"
            " AS BLOB) WHERE leaf_index = 1",
            "differs from the leaf",
        ),
        (
            "UPDATE exchange SET response_body = X'00' WHERE leaf_index = 1",
            "response_body does not match",
        ),
        (
            "UPDATE exchange SET request_signature = X'00' WHERE leaf_index = 1",
            "request_signature does not match",
        ),
        (
            "UPDATE exchange SET request_meta = CAST(REPLACE(CAST(request_meta AS TEXT), 'request',"
            " 'requesx') AS BLOB) WHERE leaf_index = 1",
            "request_meta does not match",
        ),
        ("DELETE FROM exchange WHERE leaf_index = 1", "entry 1 is missing"),
        (
            "UPDATE exchange SET leaf_index = leaf_index + 100 WHERE leaf_index = 0",
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
    """Rewriting meta, leaf digest and columns together still breaks the member signature."""
    import hashlib

    import orjson

    from xroad_hub.message import canonical

    with sqlite_db(log_copy) as conn:
        meta, leaf = conn.execute(
            "SELECT request_meta, leaf FROM exchange WHERE leaf_index = 0"
        ).fetchone()
        forged = bytes(meta).replace(b"devportal", b"devportax")
        doc = orjson.loads(leaf)
        doc["request_meta_sha256"] = hashlib.sha256(forged).hexdigest()
        conn.execute(
            "UPDATE exchange SET request_meta = ?, leaf = ? WHERE leaf_index = 0",
            (forged, canonical(doc)),
        )
    report = verify_log(log_copy, _root(fed))
    findings = [str(f) for f in report.findings]
    assert findings[0] == "entry 0: request signature: signature does not verify"
    # The answer no longer carries the hash of the (rewritten) request, and the rewritten
    # leaf no longer gives the checkpoint's root.
    assert all(
        "history rewritten" in f or "hash of the logged request" in f for f in findings[1:]
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
    # time; leaf and column agree): only the signed checkpoint can tell.
    with sqlite_db(log_copy) as conn:
        leaf = bytes(conn.execute("SELECT leaf FROM exchange WHERE leaf_index = 0").fetchone()[0])
        doc = orjson.loads(leaf)
        doc["finished_at"] += 1
        conn.execute(
            "UPDATE exchange SET leaf = ?, finished_at = ? WHERE leaf_index = 0",
            (canonical(doc), doc["finished_at"]),
        )
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    assert findings and all("history rewritten" in f for f in findings), findings


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
    assert findings and all("history rewritten" in f for f in findings), findings


async def test_tree_only_mode_checks_tree_and_checkpoints(fed: Fed, log_copy: Path) -> None:
    assert verify_log(log_copy, _root(fed), entries=False).ok
    # A changed column is the full check's business; a changed leaf breaks the tree.
    _tamper(log_copy, "UPDATE exchange SET user_id = 'x' WHERE leaf_index = 0")
    assert verify_log(log_copy, _root(fed), entries=False).ok
    assert not verify_log(log_copy, _root(fed)).ok
    _tamper(log_copy, "UPDATE exchange SET leaf = CAST('{}' AS BLOB) WHERE leaf_index = 0")
    findings = [str(f) for f in verify_log(log_copy, _root(fed), entries=False).findings]
    assert findings and all("history rewritten" in f for f in findings), findings


def test_bench_audit_smoke() -> None:
    out = subprocess.run(
        [sys.executable, "scripts/bench_audit.py", "--smoke"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["ok"] and result["tree_only_ok"] and result["verify_entries_per_s"] > 0


async def test_leaf_must_repeat_the_signed_values(fed: Fed, log_copy: Path) -> None:
    """A genuine signature logged under another user, case or subsystem is caught, even when
    leaf and columns agree (only the checkpoint would otherwise tell)."""
    with sqlite_db(log_copy) as conn:
        leaf = bytes(conn.execute("SELECT leaf FROM exchange WHERE leaf_index = 0").fetchone()[0])
        doc = orjson.loads(leaf)
        doc["issue"] = "SOMEONE-ELSES-CASE"
        conn.execute(
            "UPDATE exchange SET leaf = ?, issue = ? WHERE leaf_index = 0",
            (canonical(doc), "SOMEONE-ELSES-CASE"),
        )
    findings = [str(f) for f in verify_log(log_copy, _root(fed)).findings]
    assert "entry 0: the leaf's issue is not the signed request's" in findings, findings


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
