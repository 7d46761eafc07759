"""Evidence bundles forged by a node that holds its own keys (checkpoint key, its members'
signing keys) and gets its own log witnessed as any node does: what it may not prove."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from xroad_hub.messagelog.evidence import EvidenceError, export_bundle, verify_bundle
from xroad_hub.pki import load_private_key
from xroad_hub.protocol.identifiers import parse_member_id
from xroad_hub.protocol.message import body_digest, canonical
from xroad_hub.protocol.signing import MessageSigner

from .conftest import Fed
from .sqlite_db import sqlite_db
from .test_evidence import _der, _edit_leaf, _reseal, _roots
from .test_subjects_e2e import SOMCHAI

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
CITIZEN = "1101700203450"
OTHER = "3100500012346"


async def _exchange(
    fed: Fed, http, tmp_path: Path, body: bytes, ctype: str, path: str = "x"
) -> tuple[str, dict]:
    mid = "forgery-" + uuid.uuid4().hex
    url = fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/" + path
    headers = {"X-Road-Client": "TH/GOV/DGA/devportal", "X-Road-Id": mid,
               "X-Road-UserId": "TH-officer-1", "X-Road-Issue": "CASE-1",
               "Content-Type": ctype}  # fmt: skip
    async with http.post(url, data=body, headers=headers) as r:
        assert r.status == 200, await r.text()
    copies = {}
    for node in (DGA, DBD):
        n = fed.federation.nodes[node]
        await n.checkpointer.checkpoint()
        copies[node] = tmp_path / f"{node.replace('/', '_')}.sqlite"
        with sqlite_db(n.runtime.log.path) as a, sqlite_db(copies[node]) as b:
            a.backup(b)
    return mid, copies


def _leaf(doc: dict) -> dict:
    return orjson.loads(base64.b64decode(doc["leaf"]))


async def test_a_subject_no_signed_message_names_is_not_proved(fed: Fed, http, tmp_path) -> None:
    """The provider's node logs a genuine request under a citizen it does not name (and gets
    the entry witnessed, as any append is): the leaf's subjects are the node's word only."""
    mid, logs = await _exchange(fed, http, tmp_path, b"{}", "application/json", CITIZEN)
    doc = orjson.loads(export_bundle(logs[DBD], mid))
    assert _leaf(doc)["subjects"] == [CITIZEN]
    proof = verify_bundle(orjson.dumps(doc), _roots(fed))
    assert proof.subjects_signed_by == {CITIZEN: "client"}
    _edit_leaf(doc, subjects=sorted([CITIZEN, OTHER]))
    _reseal(fed, doc)
    with pytest.raises(EvidenceError, match=f"'{OTHER}'.*neither the signed request nor"):
        verify_bundle(orjson.dumps(doc), _roots(fed))


async def test_subjects_only_a_purged_body_could_name_are_said_to_be_unproved(
    fed: Fed, http, tmp_path
) -> None:
    """With the bodies purged by retention nothing can show whom they named: a verified
    bundle says which subjects rest on the node's word alone, and the CLI prints it."""
    mid, logs = await _exchange(fed, http, tmp_path, b"{}", "application/json", CITIZEN)
    with sqlite_db(logs[DBD]) as conn:
        conn.execute("UPDATE exchange SET request_body = NULL, response_body = NULL")
    doc = orjson.loads(export_bundle(logs[DBD], mid))
    _edit_leaf(doc, subjects=sorted([CITIZEN, OTHER]))
    _reseal(fed, doc)
    proof = verify_bundle(orjson.dumps(doc), _roots(fed))
    assert proof.subjects_signed_by == {CITIZEN: "client", OTHER: None}
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(orjson.dumps(doc))
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "xroad_hub.cli", "audit", "verify-bundle", str(bundle),
         "--root-ca", str(fed.pki.root_ca.cert)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"subject {CITIZEN}: named in the request signed by the client" in run.stdout
    assert f"subject {OTHER}: NOT PROVED" in run.stdout


async def test_a_request_rewritten_by_the_clients_node_does_not_keep_the_answer(
    fed: Fed, http, tmp_path
) -> None:
    """The client's node holds its member's key: it signs another request under the same ids
    (another user, case and path), leaves its body out as if purged, and keeps the provider's
    genuine answer. The answer's hash of the request must still bind it."""
    mid, logs = await _exchange(fed, http, tmp_path, b"hello", "text/plain")
    doc = orjson.loads(export_bundle(logs[DGA], mid))
    meta = orjson.loads(base64.b64decode(doc["request"]["meta"]))
    meta.update(user_id="TH-officer-9", issue="CASE-FORGED", path="/" + CITIZEN,
                body_sha512=body_digest(b""))  # fmt: skip
    meta_bytes = canonical(meta)
    paths = fed.pki.member_sign("TH/GOV/DGA")
    signer = MessageSigner(
        parse_member_id("TH/GOV/DGA"), load_private_key(paths.key), _der(paths.cert)
    )
    signature = signer.sign(meta_bytes)
    doc["request"] = {"meta": base64.b64encode(meta_bytes).decode(),
                      "signature": base64.b64encode(signature).decode(),
                      "cert": doc["request"]["cert"], "body": None}  # fmt: skip
    _edit_leaf(doc, user_id="TH-officer-9", issue="CASE-FORGED",
               request_meta_sha256=hashlib.sha256(meta_bytes).hexdigest(),
               request_signature_sha256=hashlib.sha256(signature).hexdigest(),
               request_body_sha256=hashlib.sha256(b"").hexdigest())  # fmt: skip
    _reseal(fed, doc)
    with pytest.raises(EvidenceError, match="hash of the logged request"):
        verify_bundle(orjson.dumps(doc), _roots(fed))


async def _bundle_of(fed: Fed, node: str, mid: str, tmp_path: Path) -> bytes:
    n = fed.federation.nodes[node]
    await n.checkpointer.checkpoint()
    copy = tmp_path / "log.sqlite"
    with sqlite_db(n.runtime.log.path) as a, sqlite_db(copy) as b:
        a.backup(b)
    return export_bundle(copy, mid)


async def test_genuine_soap_answer_subjects_verify(fed: Fed, http, tmp_path: Path) -> None:
    from .test_e2e_soap import _get_person, envelope, post

    mid = str(uuid.uuid4())
    purpose = (
        '<xh:purpose xmlns:xh="urn:xroad-hub:xsd:purpose:1">food-business-licence</xh:purpose>'
    )
    message = envelope(_get_person(SOMCHAI), subsystem="legacypurpose", code="getPerson",
                       version="v1", message_id=mid, extra_header=purpose)  # fmt: skip
    status, _, answer = await post(http, fed, message)
    assert status == 200, answer
    proof = verify_bundle(await _bundle_of(fed, DBD, mid, tmp_path), _roots(fed))
    assert proof.subjects_signed_by == {SOMCHAI: "client"}
