"""Witnessing: the registry co-signs a node's checkpoint only if it extends the last one."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.central.witness import Witness, WitnessConflict, WitnessError
from xroad_hub.messagelog import SQLiteMessageLog
from xroad_hub.node.checkpointer import Checkpointer
from xroad_hub.pki import issue_cert, load_ed25519_key, make_root_ca
from xroad_hub.protocol import merkle
from xroad_hub.protocol.checkpoint import Checkpoint, NoteSigner, open_note, sign_note

from .conftest import Fed
from .logrecords import record
from .sqlite_db import sqlite_db

NODE = "TH/GOV/DBD/hub1"
ORIGIN = f"xroad-hub/{NODE}"
LEAVES = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(10)]


@pytest.fixture(scope="module")
def pki():  # type: ignore[no-untyped-def]
    ca_key, ca_cert = make_root_ca("test root")
    node_key = ed25519.Ed25519PrivateKey.generate()
    node_cert = issue_cert(ca_key, ca_cert, NODE, node_key, purpose="checkpoint")
    der = node_cert.public_bytes(serialization.Encoding.DER)
    return ca_cert, NoteSigner(NODE, node_key), der


def _note(signer: NoteSigner, leaves: list[bytes]) -> str:
    return sign_note(Checkpoint(ORIGIN, len(leaves), merkle.root(leaves)).text(), signer)


def _witness(ca_cert, path=None) -> tuple[Witness, NoteSigner]:  # type: ignore[no-untyped-def]
    signer = NoteSigner("TH/registry", ed25519.Ed25519PrivateKey.generate())
    return Witness(signer, [ca_cert], path), signer


def test_cosigns_a_growing_log_and_refuses_rewrites(pki, tmp_path) -> None:
    ca_cert, node, der = pki
    witness, wsigner = _witness(ca_cert, tmp_path / "state.json")
    first = witness.submit(_note(node, LEAVES[:3]), der, 0, [])
    assert open_note(first, [node.verifier, wsigner.verifier])[1] == [NODE, "TH/registry"]
    proof = merkle.consistency_proof(LEAVES, 3, 7)
    witness.submit(_note(node, LEAVES[:7]), der, 3, proof)
    assert witness.latest(ORIGIN)[0] == 7
    # Truncated, rewritten, and wrongly proven histories are all refused.
    with pytest.raises(WitnessConflict, match="truncated"):
        witness.submit(_note(node, LEAVES[:5]), der, 7, [])
    rewritten = [*LEAVES[:2], merkle.leaf_hash(b"forged"), *LEAVES[3:9]]
    with pytest.raises(WitnessConflict, match="history rewritten"):
        witness.submit(_note(node, rewritten), der, 7, merkle.consistency_proof(rewritten, 7, 9))
    with pytest.raises(WitnessConflict, match="size 7"):
        witness.submit(_note(node, LEAVES[:9]), der, 3, merkle.consistency_proof(LEAVES, 3, 9))
    same_size_other_root = [*LEAVES[:6], merkle.leaf_hash(b"x")]
    with pytest.raises(WitnessConflict, match="changed its tree"):
        witness.submit(_note(node, same_size_other_root), der, 7, [])
    # A restarted witness remembers what it saw.
    again, _ = _witness(ca_cert, tmp_path / "state.json")
    assert again.latest(ORIGIN)[0] == 7


def test_refuses_notes_not_signed_by_a_node(pki) -> None:
    ca_cert, _, der = pki
    witness, _ = _witness(ca_cert)
    stranger = NoteSigner(NODE, ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(WitnessError, match="not a valid node checkpoint"):
        witness.submit(_note(stranger, LEAVES[:3]), der, 0, [])


async def test_nodes_get_checkpoints_witnessed_by_the_registry(fed: Fed, http) -> None:
    async with http.get(fed.url("TH/GOV/DGA/hub1") + "/r1/TH/GOV/DBD/registry/echo",
                        headers={"X-Road-Client": "TH/GOV/DGA/devportal"}) as r:  # fmt: skip
        assert r.status == 200
    node = fed.federation.nodes[NODE]
    note = await node.checkpointer.checkpoint()
    assert note is not None and note.count("\u2014 ") == 2  # the node's and the witness's
    registry_url = fed.endpoints["registry"]
    async with http.get(f"{registry_url}/witness", params={"origin": ORIGIN}) as r:
        assert (await r.json())["size"] == node.runtime.log.tree_head()[0]
    # A rewritten history submitted over HTTP is refused and reported (409).
    signer = NoteSigner(NODE, load_ed25519_key(fed.pki.node_checkpoint(NODE).key))
    size, _ = node.runtime.log.tree_head()
    forged = sign_note(Checkpoint(ORIGIN, size + 1, hashlib.sha256(b"x").digest()).text(), signer)
    cert_der = x509.load_pem_x509_certificate(
        fed.pki.node_checkpoint(NODE).cert.read_bytes()
    ).public_bytes(serialization.Encoding.DER)
    payload = {"note": forged, "cert": base64.b64encode(cert_der).decode(), "old_size": size,
               "proof": [base64.b64encode(b"\0" * 32).decode()]}  # fmt: skip
    async with http.post(f"{registry_url}/witness", json=payload) as r:
        assert r.status == 409
        assert "history rewritten" in (await r.json())["error"]


async def test_a_log_changed_on_disk_is_not_proven_to_the_witness(pki, tmp_path, oplog) -> None:
    """The witness saw 300 entries; since the node started, someone rewrote a row of the
    block holding entry 300. The node signs its checkpoint but sends no proof built on
    that row, and says why."""
    _, signer, der = pki
    posted: list[object] = []

    async def latest(request: web.Request) -> web.Response:
        return web.json_response({"size": 300})

    async def submit(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.json_response({"error": "not expected"}, status=500)

    app = web.Application()
    app.router.add_get("/witness", latest)
    app.router.add_post("/witness", submit)
    log = SQLiteMessageLog(tmp_path / "log.sqlite")
    await log.open()
    try:
        await asyncio.gather(*(log.append(record(i, 1700000000.0 + i)) for i in range(700)))
        with sqlite_db(tmp_path / "log.sqlite") as db:
            db.execute("UPDATE exchange SET leaf_hash = ? WHERE leaf_index = 260", (LEAVES[0],))
        async with TestServer(app) as server:
            witness = str(server.make_url("/witness"))
            cp = Checkpointer(NODE, log, signer, der, 60, witness_url=witness)
            try:
                note = await cp.checkpoint()
            finally:
                await cp.stop()
    finally:
        await log.close()
    assert note is not None and note.count("\u2014 ") == 1  # the node's signature only
    assert posted == []
    [failed] = [e for e in oplog if e["event"] == "checkpoint.proof_failed"]
    assert failed["size"] == 700 and "entries 256..511" in failed["error"]
