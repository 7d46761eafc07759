"""Evidence bundles: exported from a real node's log, verified with only the root cert."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.demo.runner import TSA_POLICY
from xroad_hub.messagelog.evidence import FORMAT, EvidenceError, export_bundle, verify_bundle
from xroad_hub.pki import (
    CertPaths,
    load_cert,
    load_ed25519_key,
    load_private_key,
    make_root_ca,
)
from xroad_hub.protocol import merkle
from xroad_hub.protocol.checkpoint import Checkpoint, NoteSigner, sign_note
from xroad_hub.protocol.message import canonical
from xroad_hub.protocol.rfc3161 import issue_token, make_request

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
        proof = verify_bundle(export_bundle(logs[node], mid), _roots(fed))
        leaf = proof.leaf
        assert (leaf["message_id"], leaf["role"]) == (mid, role)
        assert leaf["issue"] == "BMA-FOOD-2569-0042"
        assert (proof.node, proof.witness) == (node, "TH/registry")
        # genTime is to the second: the stamp may read up to 1 s before the signing.
        assert proof.request_signed_at <= proof.timestamped_at + timedelta(seconds=1)


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
        (lambda d: d.update(response=None), "answer signed by the provider's member is missing"),
        (lambda d: d.update(request=None), "request signed by the client's member"),
        (lambda d: d.pop("checkpoint"), "lacks the node's checkpoint"),
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


# --- Forgeries: what a node's own checkpoint key can and cannot prove ---------------------


def _der(path: Path) -> bytes:
    return load_cert(path).public_bytes(serialization.Encoding.DER)


def _reseal(
    fed: Fed, doc: dict, *, node: str | None = None, witness: bool = True, stamp: bool = True
) -> None:
    """Sign the (edited) leaf into a checkpoint again, as the node whose checkpoint key we
    hold would. To show that one check stands on its own, the witness and the timestamp
    authority collude too (their keys are in the test PKI), unless told otherwise."""
    leaf = orjson.loads(base64.b64decode(doc["leaf"]))
    leaf_bytes = canonical(leaf)
    doc["leaf"] = base64.b64encode(leaf_bytes).decode()
    index, size = doc["leaf_index"], doc["inclusion"]["tree_size"]
    path = [base64.b64decode(h) for h in doc["inclusion"]["path"]]
    root = merkle.root_from_inclusion(merkle.leaf_hash(leaf_bytes), index, size, path)
    assert root is not None
    if node is None:
        node = doc["checkpoint"]["note"].split("\n")[0].removeprefix("xroad-hub/")
    text = Checkpoint(f"xroad-hub/{node}", size, root).text()
    signers = [NoteSigner(node, load_ed25519_key(fed.pki.node_checkpoint(node).key))]
    if witness:
        signers.append(NoteSigner("TH/registry", load_ed25519_key(fed.pki.registry_witness.key)))
    doc["checkpoint"]["note"] = sign_note(text, *signers)
    doc["checkpoint"]["cert"] = base64.b64encode(_der(fed.pki.node_checkpoint(node).cert)).decode()
    token = issue_token(
        make_request(text.encode()), load_private_key(fed.pki.tsa.key), load_cert(fed.pki.tsa.cert),
        policy_oid=TSA_POLICY, serial=uuid.uuid4().int >> 64, now=datetime.now(UTC),
    )  # fmt: skip
    doc["checkpoint"]["timestamp"] = base64.b64encode(token).decode() if stamp else None


def _edit_leaf(doc: dict, **changes: object) -> None:
    leaf = orjson.loads(base64.b64decode(doc["leaf"]))
    leaf.update(changes)
    doc["leaf"] = base64.b64encode(canonical(leaf)).decode()


_NO_REQUEST = {f"request_{k}_sha256": None for k in ("meta", "signature", "body", "cert")}
_NO_ANSWER = {f"response_{k}_sha256": None for k in ("meta", "signature", "body", "cert")}


def _drop_request(fed: Fed, doc: dict) -> None:
    doc["request"] = None
    _edit_leaf(doc, **_NO_REQUEST)
    _reseal(fed, doc)


def _drop_answer(fed: Fed, doc: dict) -> None:
    doc["response"] = None
    _edit_leaf(doc, **_NO_ANSWER)
    _reseal(fed, doc)


def _global_conf(doc: dict) -> dict:
    signed = orjson.loads(base64.b64decode(doc["globalconf"]["signed"]))
    return orjson.loads(base64.b64decode(signed["payload"]))


def _resign_globalconf(doc: dict, conf: dict, key_paths: CertPaths) -> None:
    payload = canonical(conf)
    signature = load_private_key(key_paths.key).sign(payload, ec.ECDSA(hashes.SHA256()))
    doc["globalconf"] = {
        "signed": base64.b64encode(
            orjson.dumps(
                {
                    "alg": "ES256",
                    "payload": base64.b64encode(payload).decode(),
                    "signature": base64.b64encode(signature).decode(),
                }
            )
        ).decode(),
        "signer_cert": base64.b64encode(_der(key_paths.cert)).decode(),
    }


def _expired_globalconf(fed: Fed, doc: dict) -> None:
    """A genuine registry signature on a configuration that expired before the request."""
    conf = _global_conf(doc)
    # Within the signing certificate's life (it starts 5 minutes before the federation).
    old = datetime.now(UTC) - timedelta(minutes=4)
    conf.update(generated_at=old.isoformat(), expires_at=(old + timedelta(minutes=1)).isoformat())
    _resign_globalconf(doc, conf, fed.pki.globalconf_signer)


def _hosting_rewritten(fed: Fed, doc: dict) -> None:
    """The configuration edited to have DBD's node host nothing, still under the registry's
    signature (which then no longer verifies)."""
    conf = _global_conf(doc)
    for node in conf["nodes"]:
        node["clients"] = []
    signed = orjson.loads(base64.b64decode(doc["globalconf"]["signed"]))
    signed["payload"] = base64.b64encode(canonical(conf)).decode()
    doc["globalconf"]["signed"] = base64.b64encode(orjson.dumps(signed)).decode()


@pytest.mark.parametrize(
    ("forge", "problem"),
    [
        pytest.param(_drop_request, r"request signed by the client's member "
                     r"\(TH/GOV/DGA/devportal\) is missing", id="request-signature"),
        pytest.param(_drop_answer, "answer signed by the provider's member is missing",
                     id="answer-signature"),
        pytest.param(lambda fed, d: _reseal(fed, d, witness=False),
                     "witness TH/registry did not co-sign", id="witness-cosignature"),
        pytest.param(lambda fed, d: d["checkpoint"].pop("witness_cert", None),
                     "no witness certificate", id="witness-cert"),
        pytest.param(lambda fed, d: _reseal(fed, d, stamp=False), "no RFC 3161 timestamp",
                     id="timestamp"),
        pytest.param(lambda fed, d: d.pop("globalconf", None),
                     "no signed global configuration", id="globalconf"),
        pytest.param(lambda fed, d: _resign_globalconf(d, _global_conf(d),
                                                       fed.pki.member_sign("TH/GOV/DBD")),
                     "signed by 'TH/GOV/DBD', not the TH global configuration signer",
                     id="globalconf-signed-by-a-member"),
        pytest.param(_hosting_rewritten, "global configuration signature does not verify",
                     id="globalconf-edited"),
        pytest.param(_expired_globalconf, r"expired at .* before the request was signed",
                     id="globalconf-of-another-time"),
        pytest.param(lambda fed, d: _reseal(fed, d, node="TH/GOV/BMA/hub1"),
                     "TH/GOV/BMA/hub1 logged this exchange as its provider's node, but the "
                     "signed global configuration .* has TH/GOV/DBD/registry hosted by "
                     "TH/GOV/DBD/hub1", id="hosting-neither-party"),
        pytest.param(lambda fed, d: _reseal(fed, d, node="TH/GOV/DGA/hub1"),
                     "TH/GOV/DGA/hub1 logged this exchange as its provider's node",
                     id="hosting-the-other-party"),
    ],
)  # fmt: skip
async def test_each_missing_piece_alone_fails(fed: Fed, exchange, forge, problem: str) -> None:
    """Everything else genuine (or re-signed by colluding parties): this one piece missing or
    wrong is enough, and it is the one reason given."""
    mid, logs = exchange
    doc = orjson.loads(export_bundle(logs[DBD], mid))
    forge(fed, doc)
    with pytest.raises(EvidenceError) as caught:
        verify_bundle(orjson.dumps(doc), _roots(fed))
    assert len(caught.value.problems) == 1, caught.value.problems
    assert re.search(problem, caught.value.problems[0]), caught.value.problems


async def test_reseal_alone_keeps_a_bundle_valid(fed: Fed, exchange) -> None:
    """The forgeries above differ from a valid bundle only by what each one changes."""
    mid, logs = exchange
    doc = orjson.loads(export_bundle(logs[DBD], mid))
    _reseal(fed, doc)
    assert verify_bundle(orjson.dumps(doc), _roots(fed)).node == DBD


def _review_forgery(fed: Fed) -> bytes:
    """The bundle of the review: one node's checkpoint key, nothing else. DGA's node claims
    that BMA's licensing system read a citizen's record at DBD (it hosts neither)."""
    now = time.time()
    leaf = {
        "v": 1, "message_id": "forged-" + uuid.uuid4().hex, "request_id": str(uuid.uuid4()),
        "role": "provider", "client": "TH/GOV/BMA/licensing",
        "service": "TH/GOV/DBD/registry/echo/v1", "user_id": "TH-officer-7",
        "issue": "BMA-FOOD-2569-0042", "represented_party": None, "method": "GET",
        "status": 200, "error_type": None, "started_at": now, "finished_at": now,
        **_NO_REQUEST, **_NO_ANSWER, "subjects": ["1101700203450"],
    }  # fmt: skip
    leaf_bytes = canonical(leaf)
    key = load_ed25519_key(fed.pki.node_checkpoint(DGA).key)
    text = Checkpoint(f"xroad-hub/{DGA}", 1, merkle.root([merkle.leaf_hash(leaf_bytes)])).text()
    bundle = {
        "format": FORMAT,
        "leaf_index": 0,
        "leaf": base64.b64encode(leaf_bytes).decode(),
        "request": None,
        "response": None,
        "inclusion": {"tree_size": 1, "path": []},
        "checkpoint": {
            "note": sign_note(text, NoteSigner(DGA, key)),
            "cert": base64.b64encode(_der(fed.pki.node_checkpoint(DGA).cert)).decode(),
            "timestamp": None,
        },
    }
    return orjson.dumps(bundle)


def test_the_reviews_forged_bundle_is_not_verified(fed: Fed, tmp_path: Path) -> None:
    forged = tmp_path / "forged.json"
    forged.write_bytes(_review_forgery(fed))
    cli = [sys.executable, "-m", "xroad_hub.cli", "audit", "verify-bundle", str(forged)]
    run = subprocess.run(
        [*cli, "--root-ca", str(fed.pki.root_ca.cert)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("NOT VERIFIED:")
    for reason in (
        "request signed by the client's member (TH/GOV/BMA/licensing) is missing",
        "answer signed by the provider's member is missing",
        "no witness certificate",
        "no RFC 3161 timestamp",
        "no signed global configuration",
    ):
        assert reason in run.stdout, run.stdout
    assert "Traceback" not in run.stderr


def test_cli_prints_iso_times_and_needs_no_traceback_for_the_root(
    fed: Fed, exchange, tmp_path: Path
) -> None:
    mid, logs = exchange
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(export_bundle(logs[DGA], mid))
    cli = [sys.executable, "-m", "xroad_hub.cli", "audit", "verify-bundle", str(bundle)]
    ok = subprocess.run(
        [*cli, "--root-ca", str(fed.pki.root_ca.cert)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"VERIFIED: {DGA} (client side)")
    assert re.search(r"timestamped \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ok.stdout), ok.stdout
    assert not re.search(r"\d{10}\.\d", ok.stdout), ok.stdout  # no epoch seconds
    # From a directory without certs/: the default root path does not exist there.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        cli, capture_output=True, text=True, timeout=60, check=False, cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "certs/ca/root.cert.pem" in run.stderr and "hint: pass --root-ca" in run.stderr
    # Its sibling, the whole log's verification, says the same.
    run = subprocess.run(
        [sys.executable, "-m", "xroad_hub.cli", "audit", "verify", str(logs[DGA])],
        capture_output=True, text=True, timeout=60, check=False, cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "hint: pass --root-ca" in run.stderr


async def test_nodes_keep_the_signed_globalconf_once_not_per_exchange(fed: Fed, http) -> None:
    path = fed.federation.nodes[DBD].runtime.log.path

    def kept() -> int:
        with sqlite_db(path) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM globalconf").fetchone()[0])

    async with http.get(fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/1", headers=DEV) as r:
        assert r.status == 200
    before = kept()
    assert before >= 1
    for _ in range(3):
        async with http.get(fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/1", headers=DEV) as r:
            assert r.status == 200
    assert kept() == before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("DROP TABLE globalconf", "no signed global configuration in force"),
        ("DELETE FROM globalconf", "no signed global configuration in force"),
        ("UPDATE checkpoint SET witness_cert_sha256 = NULL", "co-signed by the witness"),
        ("UPDATE checkpoint SET timestamp_token = NULL", "timestamped"),
    ],
)
async def test_export_says_what_the_log_lacks(
    fed: Fed, exchange, damage: str, message: str
) -> None:
    mid, logs = exchange
    with sqlite_db(logs[DBD]) as conn:
        conn.execute(damage)
    with pytest.raises(EvidenceError, match=message):
        export_bundle(logs[DBD], mid)


async def test_export_proves_from_stored_block_roots(fed: Fed, http, tmp_path: Path) -> None:
    """Past 256 entries a node stores its tree's block roots with each checkpoint, and a
    bundle's path comes from them and the entry's own block instead of every leaf hash:
    the same bundle as from the leaves alone. Wrong roots are not proven from (the leaves
    are); changed or removed rows are refused, as a checkpoint whose columns are not what
    its note signs."""
    url = fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/deeds/1234"

    async def one(i: int) -> None:
        async with http.get(url, headers={**DEV, "X-Road-Id": f"blocks-{i}"}) as r:
            assert r.status == 200

    node = fed.federation.nodes[DBD]
    before = node.runtime.log.tree_head()[0]
    for start in range(0, 300, 10):  # within a client's share of the node
        await asyncio.gather(*(one(i) for i in range(start, start + 10)))
    if node.runtime.log.tree_head()[0] % 256 == 0:  # keep an incomplete last block
        await one(300)
    await node.checkpointer.checkpoint()
    log = tmp_path / "provider.sqlite"
    with sqlite_db(node.runtime.log.path) as a, sqlite_db(log) as b:
        a.backup(b)
    with sqlite_db(log) as conn:
        size = conn.execute("SELECT MAX(size) FROM checkpoint").fetchone()[0]
        blocks = conn.execute("SELECT COUNT(*) FROM tree_block").fetchone()[0]
        # The last entry of the last complete block (whatever checkpoint proves it, its
        # block is complete in that tree), and the last entry, in the incomplete block.
        last_complete = size // 256 * 256 - 1
        entries = [
            conn.execute(
                "SELECT message_id, leaf_index FROM exchange WHERE leaf_index = ?", (i,)
            ).fetchone()
            for i in (last_complete, size - 1)
        ]
    assert size >= before + 300 and blocks == size // 256 >= 1 and size % 256
    bundles = [export_bundle(log, mid, index) for mid, index in entries]
    for bundle in bundles:
        verify_bundle(bundle, _roots(fed))

    def damaged(name: str, *sql: str) -> Path:
        copy = tmp_path / f"{name}.sqlite"
        with sqlite_db(log) as a, sqlite_db(copy) as b:
            a.backup(b)
            for statement in sql:
                b.execute(statement)
        return copy

    for name, *sql in (
        ("no-roots", "DELETE FROM tree_block"),  # a log from before they were stored
        ("wrong-roots", "UPDATE tree_block SET root = zeroblob(32)"),
        ("odd-roots", "UPDATE tree_block SET root = 'abc' WHERE block % 2 = 0",
         "UPDATE tree_block SET root = 10000000000000 WHERE block % 2 = 1"),
    ):  # fmt: skip
        copy = damaged(name, *sql)
        assert [export_bundle(copy, mid, index) for mid, index in entries] == bundles, name

    # A row of the first entry's block changed or removed: that block's entries cannot be
    # proven; the others still can (their paths need only the block's stored root), and
    # 'audit verify' is what finds the row.
    row = last_complete - 1
    for name, sql, problem in (
        ("changed-row", f"UPDATE exchange SET leaf_hash = zeroblob(32) WHERE leaf_index = {row}",
         "do not lead from entry"),
        ("removed-row", f"DELETE FROM exchange WHERE leaf_index = {row}",
         "are not all in the log"),
    ):  # fmt: skip
        copy = damaged(name, sql)
        with pytest.raises(EvidenceError, match=problem):
            export_bundle(copy, *entries[0])
        assert export_bundle(copy, *entries[1]) == bundles[1]
    copy = damaged("column", "UPDATE checkpoint SET root = zeroblob(32)")
    for mid, index in entries:
        with pytest.raises(EvidenceError, match="not what its signed note says"):
            export_bundle(copy, mid, index)


class _LeavesAndRoots:
    """The two reads `_inclusion_path` makes of a log, over given leaves and stored roots;
    counts the leaf hashes it hands out."""

    def __init__(self, leaves: list[bytes], roots: dict[int, bytes]) -> None:
        self.leaves, self.roots, self.read = leaves, roots, 0

    def block_roots(self, count: int) -> dict[int, bytes]:
        return {b: r for b, r in self.roots.items() if b < count}

    def leaf_hashes(self, size: int, start: int = 0) -> list[bytes]:
        self.read += size - start
        return self.leaves[start:size]


@pytest.mark.parametrize("stored", ["all", "none", "odd blocks", "one wrong", "all wrong", "gap"])
def test_inclusion_paths_over_many_blocks(stored: str) -> None:
    """Any mix of stored, missing and wrong block roots gives the path over the leaves
    themselves; with every root stored, a path reads at most two blocks of leaves."""
    from xroad_hub.messagelog.evidence import _inclusion_path

    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(20_000)]  # 78 blocks
    size = len(leaves)
    tree = merkle.MemoryTree(leaves)
    right = {b: merkle.root(leaves[b * 256 : (b + 1) * 256]) for b in range(size // 256)}
    roots = {
        "all": right,
        "none": {},
        "odd blocks": {b: r for b, r in right.items() if b % 2},
        "one wrong": {**right, 40: b"\0" * 32},
        "all wrong": dict.fromkeys(right, b"\0" * 32),
        "gap": {b: r for b, r in right.items() if not 3 <= b < 72},  # longer than one read
    }[stored]
    for index in (0, 255, 256, 10_240, 19_967, 19_968, size - 1):
        reader = _LeavesAndRoots(leaves, roots)
        path = _inclusion_path(reader, index, leaves[index], size, tree.root())  # type: ignore[arg-type]
        assert path == merkle.inclusion_proof(tree, index)
        if stored == "all":
            assert reader.read <= 2 * 256
