"""Auditing a real node's log on either backend: verification, the tamper cases it must
catch, search, evidence export and the citizens' tracker read the log only through its
reader, so each test runs on a SQLite file and on a PostgreSQL schema holding the same rows.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509

from xroad_hub.messagelog.audit import log_node, search_log, verify_log
from xroad_hub.messagelog.evidence import EvidenceError, export_bundle, verify_bundle
from xroad_hub.messagelog.layout import COLUMNS
from xroad_hub.messagelog.reader import LogReadError
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.messagelog.search import SearchFilter
from xroad_hub.messagelog.source import open_reader
from xroad_hub.node.trackerapi import citizen_accesses
from xroad_hub.protocol import merkle

from .conftest import Fed
from .sqlite_db import sqlite_db

if TYPE_CHECKING:
    from .messagelog_backends import Backend

pytest_plugins = ["tests.messagelog_backends"]

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
CITIZEN = "1101700203450"
_CHANGED = (
    "its columns were changed since it was logged: they no longer give the leaf hash stored "
    "with them"
)


@pytest.fixture
async def node_log(fed: Fed, http, tmp_path: Path, backend: Backend) -> tuple[Backend, str]:
    """The provider node's log after exchanges of each outcome, checkpointed (witnessed and
    timestamped), copied onto the backend; and the issue of the exchanges made here."""
    case = "CASE-" + uuid.uuid4().hex[:8]
    for i, path in enumerate(("echo/a", "echo/status/404", "restricted", "nosuch",
                              f"echo/{CITIZEN}")):  # fmt: skip
        url = fed.url(DGA) + f"/r1/TH/GOV/DBD/registry/{path}"
        headers = {"X-Road-Client": "TH/GOV/DGA/devportal", "X-Road-Issue": case,
                   "X-Road-Id": f"{case}-{i}", "X-Road-UserId": "TH-officer"}  # fmt: skip
        async with http.post(url, data=b"body", headers=headers):
            pass
    await fed.federation.nodes[DBD].checkpointer.checkpoint()
    copy = tmp_path / "copy.sqlite"
    with sqlite_db(fed.federation.nodes[DBD].runtime.log.path) as a, sqlite_db(copy) as b:
        a.backup(b)
    await backend.load(copy)
    return backend, case


def _roots(fed: Fed) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(fed.pki.root_ca.cert.read_bytes())]


async def _rows(b: Backend, where: str = "TRUE", *args: object) -> list[dict[str, Any]]:
    """The exchange rows ``where`` holds, by column name, in leaf order."""
    sql = f"SELECT {', '.join(COLUMNS)} FROM {{exchange}} WHERE {where} ORDER BY leaf_index"
    return [dict(zip(COLUMNS, r, strict=True)) for r in await b.query(sql, *args)]


async def _verify(fed: Fed, b: Backend, **kw: object) -> list[str]:
    # Readers block: on the test's event loop they would refuse (PostgreSQL) or stall it.
    report = await asyncio.to_thread(functools.partial(verify_log, b.source(), _roots(fed), **kw))
    return [str(f) for f in report.findings]


async def test_untouched_log_verifies_with_the_tree_root(fed: Fed, node_log) -> None:
    b, _ = node_log
    report = await asyncio.to_thread(verify_log, b.source(), _roots(fed))
    assert report.ok, [str(f) for f in report.findings]
    rows = await _rows(b)
    # Each stored leaf hash is the hash of the leaf its columns give, and they give the root.
    hashes = [merkle.leaf_hash(leaf_of(row)) for row in rows]
    assert hashes == [bytes(row["leaf_hash"]) for row in rows]
    assert report.entries == len(rows) >= 5 and report.witnessed >= 1
    assert report.root == merkle.root(hashes)
    assert await asyncio.to_thread(log_node, b.source()) == DBD


@pytest.mark.parametrize(
    ("sql", "args", "expected"),
    [
        ("UPDATE {exchange} SET user_id = 'TH0000000000000' WHERE leaf_index = 1", (),
         f"entry 1: {_CHANGED}"),
        ("UPDATE {exchange} SET leaf_hash = ? WHERE leaf_index = 1", (bytes(32),),
         f"entry 1: {_CHANGED}"),
        ("UPDATE {exchange} SET response_body = ? WHERE leaf_index = 1", (b"\0",),
         "entry 1: response_body does not match"),
        ("UPDATE {exchange} SET request_signature = ? WHERE leaf_index = 1", (b"\0",),
         f"entry 1: {_CHANGED}"),
        ("DELETE FROM {exchange} WHERE leaf_index = 1", (), "entry 1: entry 1 is missing"),
        ("UPDATE {exchange} SET leaf_index = leaf_index + 1000000 WHERE leaf_index = 0", (),
         "entry 0: entry 0 is missing"),
        ("DELETE FROM {exchange_subject} WHERE subject = ?", (CITIZEN,),
         "the subject index lacks '1101700203450'"),
        ("DELETE FROM {checkpoint}", (), "no checkpoint co-signed by the witness covers"),
    ],
)  # fmt: skip
async def test_tampering_through_the_backend_is_named(
    fed: Fed, node_log, sql: str, args: tuple[object, ...], expected: str
) -> None:
    b, _ = node_log
    await b.tamper(sql, *args)
    findings = await _verify(fed, b)
    assert findings and expected in findings[0], findings


async def test_rewritten_history_fails_the_checkpoint(fed: Fed, node_log) -> None:
    """An entry rewritten consistently (the column, and the leaf hash to match) where nothing
    signed repeats it: only the signed checkpoint can tell."""
    b, _ = node_log
    await b.tamper("UPDATE {exchange} SET finished_at = finished_at + 1 WHERE leaf_index = 0")
    (row,) = await _rows(b, "leaf_index = 0")
    await b.tamper(
        "UPDATE {exchange} SET leaf_hash = ? WHERE leaf_index = 0", merkle.leaf_hash(leaf_of(row))
    )
    for entries in (False, True):
        findings = await _verify(fed, b, entries=entries)
        assert any("history rewritten" in f for f in findings), findings
        # The forgery is consistent: no entry's check tells.
        assert all(f.startswith("log: ") for f in findings), findings


async def test_truncated_log_fails_its_checkpoint(fed: Fed, node_log) -> None:
    b, _ = node_log
    ((last,),) = await b.query("SELECT MAX(leaf_index) FROM {exchange}")
    await b.tamper("DELETE FROM {exchange} WHERE leaf_index = ?", last)
    assert any("truncated" in f for f in await _verify(fed, b)), await _verify(fed, b)


async def test_search_filters_and_pages(node_log) -> None:
    b, case = node_log
    search = functools.partial(asyncio.to_thread, search_log, b.source())
    rows, _ = await search(SearchFilter(issue=case))
    assert [r["message_id"] for r in rows] == [f"{case}-{i}" for i in range(5)]
    assert "request_body" not in rows[0] and isinstance(rows[0]["subjects"], list)
    mine, _ = await search(SearchFilter(issue=case, subject=CITIZEN))
    assert [r["message_id"] for r in mine] == [f"{case}-4"]
    denied, _ = await search(SearchFilter(issue=case, error_type="Server.ServerProxy.AccessDenied"))
    assert [r["message_id"] for r in denied] == [f"{case}-2"]
    first, after = await search(SearchFilter(issue=case), limit=3)
    rest, more = await search(SearchFilter(issue=case), limit=3, after=after)
    assert [r["message_id"] for r in first + rest] == [f"{case}-{i}" for i in range(5)]
    assert more is None


async def test_evidence_exported_from_the_backend_verifies(fed: Fed, node_log) -> None:
    b, case = node_log
    bundle = await asyncio.to_thread(export_bundle, b.source(), f"{case}-4")
    proof = verify_bundle(bundle, _roots(fed))
    assert proof.leaf["message_id"] == f"{case}-4" and proof.node == DBD
    with pytest.raises(EvidenceError, match="no exchange 'no-such-id'"):
        await asyncio.to_thread(export_bundle, b.source(), "no-such-id")
    await b.tamper("UPDATE {checkpoint} SET timestamp_token = NULL")
    with pytest.raises(EvidenceError, match="timestamped"):
        await asyncio.to_thread(export_bundle, b.source(), f"{case}-4")


async def test_tracker_reads_the_subject_index(node_log) -> None:
    b, case = node_log
    entries, _ = await asyncio.to_thread(
        functools.partial(citizen_accesses, b.source(), CITIZEN, node=DBD, member_names={})
    )
    mine = [e for e in entries if e["issue"] == case]
    assert [e["message_id"] for e in mine] == [f"{case}-4"]
    assert mine[0]["official"] == "TH-officer" and mine[0]["node"] == DBD


def test_cli_verifies_searches_and_exports(fed: Fed, node_log, tmp_path: Path) -> None:
    b, case = node_log
    cli = [sys.executable, "-m", "xroad_hub.cli", "audit"]
    ok = subprocess.run([*cli, "verify", *b.cli_args(), "--root-ca", str(fed.pki.root_ca.cert)],
                        capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stdout + ok.stderr
    found = subprocess.run([*cli, "search", *b.cli_args(), "--issue", case, "--limit", "1"],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert json.loads(found.stdout)["message_id"] == f"{case}-0", found.stderr
    out = tmp_path / "bundle.json"
    export = subprocess.run([*cli, "export", f"{case}-4", *b.cli_args(), "-o", str(out)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert export.returncode == 0, export.stderr
    assert verify_bundle(out.read_bytes(), _roots(fed)).leaf["message_id"] == f"{case}-4"


async def test_pg_reader_refuses_to_block_an_event_loop(fed: Fed, node_log) -> None:
    b, _ = node_log
    if b.name != "postgres":
        pytest.skip("only the PostgreSQL reader drives a loop of its own")
    with pytest.raises(RuntimeError, match="worker thread"):
        verify_log(b.source(), _roots(fed))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_cli_names_what_to_pass_for_a_database(backend: Backend) -> None:
    """A DSN without a schema, or with one holding no log: an error and a hint."""
    from .messagelog_backends import PG_DSN

    cli = [sys.executable, "-m", "xroad_hub.cli", "audit", "search"]
    bad = subprocess.run([*cli, PG_DSN, "--schema", "no_such_schema"], capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "holds no message log" in bad.stderr
    with pytest.raises(LogReadError, match="holds no message log"):
        open_reader(PG_DSN, node="TH/GOV/XXX/none")
