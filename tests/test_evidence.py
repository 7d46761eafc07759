"""Evidence bundles: exported from a real node's log, verified with only the root cert."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from cryptography import x509

from xroad_hub.evidence import EvidenceError, export_bundle, verify_bundle
from xroad_hub.pki import make_root_ca

from .conftest import Fed
from .sqlite_db import sqlite_db

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}


@pytest.fixture
async def exchange(fed: Fed, http, tmp_path: Path) -> tuple[str, dict[str, Path]]:
    """One exchange, checkpointed on both nodes; copies of both logs."""
    mid = "evidence-" + uuid.uuid4().hex
    url = fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/deeds/1234"
    headers = {**DEV, "X-Road-Id": mid, "X-Road-UserId": "TH1101700203450",
               "X-Road-Issue": "BMA-FOOD-2569-0042"}  # fmt: skip
    async with http.post(url, data="ขอข้อมูล".encode(), headers=headers) as r:
        assert r.status == 200
    copies = {}
    for node in (DGA, DBD):
        n = fed.federation.nodes[node]
        await n.checkpointer.checkpoint()
        copies[node] = tmp_path / f"{node.replace('/', '_')}.sqlite"
        with sqlite_db(n.runtime.log.path) as a, sqlite_db(copies[node]) as b:
            a.backup(b)
    return mid, copies


def _roots(fed: Fed) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(fed.pki.root_ca.cert.read_bytes())]


async def test_bundles_of_both_nodes_verify(fed: Fed, exchange) -> None:
    mid, logs = exchange
    for node, role in ((DGA, "client"), (DBD, "provider")):
        leaf = verify_bundle(export_bundle(logs[node], mid), _roots(fed))
        assert (leaf["message_id"], leaf["role"]) == (mid, role)
        assert leaf["issue"] == "BMA-FOOD-2569-0042"


def _edit(bundle: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    doc = orjson.loads(bundle)
    change(doc)
    return orjson.dumps(doc)


def _flip(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[len(raw) // 2] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["response"].update(body=_flip(d["response"]["body"])), "response body"),
        (lambda d: d["request"].update(meta=_flip(d["request"]["meta"])), "request meta"),
        (lambda d: d.update(leaf=_flip(d["leaf"])), "malformed|canonical|tree|commits"),
        (lambda d: d.update(leaf_index=d["leaf_index"] + 1), "not in the tree"),
        (lambda d: d["inclusion"].update(tree_size=d["inclusion"]["tree_size"] + 1), "size"),
        (
            lambda d: d["checkpoint"].update(note=d["checkpoint"]["note"].replace("\n", "\n1", 1)),
            "checkpoint",
        ),
        (lambda d: d.update(response=None), "missing"),
    ],
)
async def test_tampered_bundles_fail(fed: Fed, exchange, change, message: str) -> None:
    mid, logs = exchange
    bundle = _edit(export_bundle(logs[DBD], mid), change)
    with pytest.raises(EvidenceError, match=message):
        verify_bundle(bundle, _roots(fed))


async def test_bundle_does_not_verify_under_another_root(fed: Fed, exchange) -> None:
    mid, logs = exchange
    with pytest.raises(EvidenceError, match="trusted CA"):
        verify_bundle(export_bundle(logs[DBD], mid), [make_root_ca("someone else")[1]])


async def test_purged_bodies_still_prove_the_exchange(fed: Fed, exchange) -> None:
    mid, logs = exchange
    with sqlite_db(logs[DBD]) as conn:
        conn.execute("UPDATE exchange SET request_body = NULL, response_body = NULL")
    bundle = export_bundle(logs[DBD], mid)
    assert orjson.loads(bundle)["response"]["body"] is None
    verify_bundle(bundle, _roots(fed))


def test_cli_export_and_verify(fed: Fed, exchange, tmp_path: Path) -> None:
    mid, logs = exchange
    out = tmp_path / "bundle.json"
    cli = [sys.executable, "-m", "xroad_hub.cli", "audit"]
    exported = subprocess.run(
        [*cli, "export", mid, str(logs[DBD]), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr
    assert out.stat().st_mode & 0o777 == 0o600  # the bundle names a citizen
    check = [*cli, "verify-bundle", str(out), "--root-ca", str(fed.pki.root_ca.cert)]
    ok = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("VERIFIED"), ok.stdout + ok.stderr
    out.write_bytes(out.read_bytes().replace(b'"leaf_index": ', b'"leaf_index": 1', 1))
    bad = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and bad.stdout.startswith("NOT VERIFIED")
    missing = subprocess.run(
        [*cli, "export", "no-such-id", str(logs[DBD])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "no exchange" in missing.stderr
