"""The central server's revocations and key rotations: a revocation is published in the
global configuration with what, whose and since when, recorded in the audit trail with who
and why, and final; a rotation request must come from the holder of the current keys and
of the new one, and forged, unknown or replayed ones change nothing."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from xroad_hub.central.server import CentralServer, init_central
from xroad_hub.central.store import verify_audit
from xroad_hub.errors import ProtocolError
from xroad_hub.node.admin import key_digest
from xroad_hub.pki import generate_key
from xroad_hub.protocol import merkle
from xroad_hub.protocol.access import check_not_revoked
from xroad_hub.protocol.checkpoint import Checkpoint, NoteSigner, sign_note
from xroad_hub.protocol.globalconf import GlobalConf, GlobalConfError
from xroad_hub.protocol.identifiers import parse_member_id, parse_node_id
from xroad_hub.protocol.registration import RegistrationError, make_csr, new_request, sign_request
from xroad_hub.protocol.signing import SignatureVerifier, cert_fingerprint

from .test_central import _auth_reg

# central_db is imported where used: see tests/pg_stores.py (a plugin, loaded first).
pytest_plugins = ["tests.pg_stores"]

MOPH = "TH/GOV/MOPH"
HUB1 = f"{MOPH}/hub1"
PEM = serialization.Encoding.PEM


@pytest.fixture
def cs(tmp_path: Path, central_db_args: dict[str, str]) -> Iterator[CentralServer]:
    init_central(tmp_path / "central", "TH", "https://127.0.0.1:4001", **central_db_args)
    server = CentralServer(tmp_path / "central")
    server.store.add_member(MOPH, "Ministry of Public Health", "test")
    yield server
    server.close()


def _enrolled(cs: CentralServer, code: str = "hub1") -> dict[str, ec.EllipticCurvePrivateKey]:
    data, keys = _auth_reg(code)
    request_id, _ = cs.file(data)
    cs.approve(request_id, "test")
    return keys


def _snapshot(cs: CentralServer) -> tuple[object, ...]:
    from tests.pg_stores import central_db

    with central_db(cs) as db:
        return tuple(
            db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("members", "nodes", "subsystems", "requests", "certificates", "nonces",
                      "revocations", "admin_audit")
        )  # fmt: skip


def _refused(cs: CentralServer, call, code: str) -> RegistrationError:  # type: ignore[no-untyped-def]
    before = _snapshot(cs)
    with pytest.raises(RegistrationError) as err:
        call()
    assert err.value.code == code, err.value.message
    assert _snapshot(cs) == before, "a refused request changed the database"
    return err.value


def _rotation(
    purpose: str, signers: dict[str, ec.EllipticCurvePrivateKey], node: str = HUB1,
    new: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:  # fmt: skip
    new = new or generate_key()
    request = new_request(
        "certRotation", "TH", parse_node_id(node), purpose=purpose,
        csr=make_csr(new, "x").public_bytes(PEM).decode(),
    )  # fmt: skip
    return sign_request(request, {**signers, "new": new}), new


def _auth_sha(conf: GlobalConf, node: str = HUB1) -> str | None:
    entry = conf.node(parse_node_id(node))
    return None if entry is None else entry.auth_cert_sha256


def _sha_of_key(cs: CentralServer, key: ec.EllipticCurvePrivateKey) -> str:
    for c in cs.store.certs():
        issued = next(i for i in cs.store.certificates(c.request_id) if i.serial == c.serial)
        if x509.load_pem_x509_certificate(issued.pem.encode()).public_key() == key.public_key():
            return c.sha256
    raise AssertionError("no certificate for this key")


# --- revocation -------------------------------------------------------------------------


def test_revoked_node_leaves_the_configuration_which_lists_the_revocation(
    cs: CentralServer,
) -> None:
    keys = _enrolled(cs)
    _enrolled(cs, "hub2")
    assert cs.globalconf().to_dict().get("revocations") is None  # old documents unchanged
    rows = cs.revoke("cli:officer", "key stolen", node=HUB1, what="auth")
    assert [(r.purpose, r.subject) for r in rows] == [("auth", HUB1)]
    conf = cs.globalconf()
    assert _auth_sha(conf) is None and _auth_sha(conf, f"{MOPH}/hub2") is not None
    (rev,) = conf.revocations
    assert (rev.kind, rev.subject, rev.cert_sha256) == ("auth", HUB1, _sha_of_key(cs, keys["auth"]))
    assert GlobalConf.from_dict(conf.to_dict()).revocations == conf.revocations
    assert not conf.same_rules(GlobalConf.from_dict({**conf.to_dict(), "revocations": []}))
    # Recorded: who, when, what, why.
    entry = cs.store.audit_entries()[-1]
    assert (entry.admin, entry.action, entry.detail["reason"]) == (
        "cli:officer", "certificate.revoke", "key stolen",
    )  # fmt: skip
    assert entry.detail["certificates"][0]["sha256"] == rev.cert_sha256 and entry.at
    verify_audit(cs.store.audit_entries())
    # A revoked node cannot file anything: it is not a registered node any more.
    data, _ = _rotation("auth", {"auth": keys["auth"]})
    _refused(cs, lambda: cs.file(data), "UnknownServer")


def test_rotation_filed_before_a_revocation_cannot_bring_the_node_back(
    cs: CentralServer,
) -> None:
    keys = _enrolled(cs)
    data, _ = _rotation("auth", {"auth": keys["auth"], "sign": keys["sign"]})
    request_id, _ = cs.file(data)
    cs.revoke("t", "stolen", node=HUB1)
    _refused(cs, lambda: cs.approve(request_id, "t"), "Revoked")
    assert _auth_sha(cs.globalconf()) is None
    cs.decline(request_id, "t", "node revoked")


def test_revocation_is_final(cs: CentralServer) -> None:
    _enrolled(cs)
    (row,) = cs.revoke("t", "compromised", node=HUB1, what="sign")
    _refused(cs, lambda: cs.revoke("t", "again", cert=row.sha256), "AlreadyRevoked")
    _refused(cs, lambda: cs.revoke("t", "", node=HUB1), "Malformed")
    _refused(cs, lambda: cs.revoke("t", "x", cert="00" * 32), "UnknownCertificate")
    _refused(cs, lambda: cs.revoke("t", "x", node=f"{MOPH}/nohub"), "UnknownServer")
    _refused(cs, lambda: cs.revoke("t", "x", node=HUB1, member=MOPH), "Malformed")
    # Not even the database's owner undoes it.
    from tests.pg_stores import central_db

    with central_db(cs) as db:
        for sql in ("DELETE FROM revocations", "UPDATE revocations SET revoked_at = 'x'"):
            with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError), match="final"):
                db.execute(sql)
    assert len(cs.globalconf().revocations) == 1
    # Everything of the member: the rest (its auth certificate) is revoked, once.
    rows = cs.revoke("t", "member left", member=MOPH)
    assert [r.purpose for r in rows] == ["auth"]
    assert {r.kind for r in cs.globalconf().revocations} == {"auth", "sign"}


async def test_admin_api_revokes_for_security_officers_only(cs: CentralServer) -> None:
    _enrolled(cs)
    cs.store.add_admin("rita", key_digest("rita-key"), ["registration-officer"], "t")
    cs.store.add_admin("sofia", key_digest("sofia-key"), ["security-officer"], "t")
    body = {"node": HUB1, "what": "auth", "reason": "decommissioned"}
    async with TestClient(TestServer(cs.app())) as client:
        before = _snapshot(cs)
        for headers in ({}, {"Authorization": "Bearer rita-key"}):
            r = await client.post("/admin/revocations", json=body, headers=headers)
            assert r.status in (401, 403)
        officer = {"Authorization": "Bearer sofia-key"}
        for bad in ({"node": "not an id", "reason": "x"}, {"node": HUB1}, [1],
                    {"node": HUB1, "reason": "x", "what": "everything"},
                    {"node": HUB1, "reason": "x", "extra": 1}):  # fmt: skip
            r = await client.post("/admin/revocations", json=bad, headers=officer)
            assert r.status == 400, await r.text()
        assert _snapshot(cs) == before
        r = await client.post("/admin/revocations", json=body, headers=officer)
        assert r.status == 201, await r.text()
        (row,) = await r.json()
        assert row["subject"] == HUB1 and row["revokedAt"] and row["reason"] == "decommissioned"
        r = await client.get("/admin/certificates", headers=officer)
        assert [c["purpose"] for c in await r.json() if "revokedAt" in c] == ["auth"]
        r = await client.post("/admin/revocations", json=body, headers=officer)
        assert r.status == 409 and (await r.json())["error"] == "AlreadyRevoked"
    assert cs.store.audit_entries()[-1].admin == "api:sofia"
    assert _auth_sha(cs.globalconf()) is None


# --- rotation ---------------------------------------------------------------------------


def test_auth_rotation_replaces_the_node_certificate(cs: CentralServer) -> None:
    keys = _enrolled(cs)
    old = _auth_sha(cs.globalconf())
    data, new = _rotation("auth", {"auth": keys["auth"], "sign": keys["sign"]})
    request_id, state = cs.file(data)
    assert state == "SUBMITTED" and _auth_sha(cs.globalconf()) == old
    cs.approve(request_id, "test")
    status = cs.status(request_id, cs.status_token(request_id))
    cert = x509.load_pem_x509_certificate(status["certificates"]["auth"].encode())
    assert cert.public_key() == new.public_key() and "sign" not in status["certificates"]
    assert _auth_sha(cs.globalconf()) == cert_fingerprint(
        cert.public_bytes(serialization.Encoding.DER)
    ) != old  # fmt: skip
    # From now on the node's requests are signed by the new key; the old one is refused.
    data, _ = _rotation("sign", {"auth": keys["auth"], "sign": keys["sign"]})
    _refused(cs, lambda: cs.file(data), "InvalidSignature")
    data, _ = _rotation("sign", {"auth": new, "sign": keys["sign"]})
    assert cs.file(data)[1] == "SUBMITTED"


def test_sign_rotation_needs_the_current_signing_key(cs: CentralServer) -> None:
    keys = _enrolled(cs)
    data, _ = _rotation("sign", {"auth": keys["auth"]})
    _refused(cs, lambda: cs.file(data), "Malformed")
    data, _ = _rotation("sign", {"auth": keys["auth"], "sign": generate_key()})
    _refused(cs, lambda: cs.file(data), "InvalidSignature")
    data, _ = _rotation("sign", {"auth": keys["auth"], "sign": keys["sign"]})
    request_id, _ = cs.file(data)
    cs.approve(request_id, "test")
    signs = [c for c in cs.store.certs() if c.purpose == "sign"]
    assert len(signs) == 2 and not any(c.revoked_at for c in signs)  # the old one is not revoked
    assert signs[-1].subject == MOPH
    # Once its signing certificate is revoked, the node rotates on its auth key's word.
    cs.revoke("t", "lost", cert=signs[-1].serial)
    data, _ = _rotation("sign", {"auth": keys["auth"]})
    assert cs.file(data)[1] == "SUBMITTED"


def test_a_thief_of_the_auth_key_alone_cannot_swap_in_a_key_of_theirs(cs: CentralServer) -> None:
    """Whoever holds only the node's auth key (stolen, not yet revoked) cannot have the
    central server certify a new auth key of theirs: the operator could not tell the thief's
    rotation from the node's, and the node's own would then be refused as a duplicate."""
    keys = _enrolled(cs)
    data, _ = _rotation("auth", {"auth": keys["auth"]})
    _refused(cs, lambda: cs.file(data), "Malformed")
    data, _ = _rotation("auth", {"auth": keys["auth"], "sign": generate_key()})
    _refused(cs, lambda: cs.file(data), "InvalidSignature")
    data, _ = _rotation("auth", {"auth": keys["auth"], "sign": keys["sign"]})
    assert cs.file(data)[1] == "SUBMITTED"


def test_forged_unknown_and_replayed_rotations_change_nothing(cs: CentralServer) -> None:
    keys = _enrolled(cs)
    stranger = generate_key()
    # Signed by someone else's key in the auth key's place.
    data, _ = _rotation("auth", {"auth": stranger, "sign": keys["sign"]})
    _refused(cs, lambda: cs.file(data), "InvalidSignature")
    # The new key's signature missing, or by another key: no proof of possession.
    request = new_request("certRotation", "TH", parse_node_id(HUB1), purpose="auth",
                          csr=make_csr(generate_key(), "x").public_bytes(PEM).decode())  # fmt: skip
    forged = sign_request(request, {"auth": keys["auth"], "sign": keys["sign"], "new": stranger})
    _refused(cs, lambda: cs.file(forged), "InvalidSignature")
    _refused(cs, lambda: cs.file(sign_request(request, {"auth": keys["auth"]})), "Malformed")
    # The "new" key is the current one.
    data, _ = _rotation("auth", {"auth": keys["auth"]}, new=keys["auth"])
    _refused(cs, lambda: cs.file(data), "Malformed")
    # A node that does not exist.
    data, _ = _rotation("auth", {"auth": keys["auth"]}, node=f"{MOPH}/nohub")
    _refused(cs, lambda: cs.file(data), "UnknownServer")
    # A replay of an accepted request, and a second pending rotation of the same key.
    both = {"auth": keys["auth"], "sign": keys["sign"]}
    data, _ = _rotation("auth", both)
    cs.file(data)
    _refused(cs, lambda: cs.file(data), "Replay")
    again, _ = _rotation("auth", both)
    _refused(cs, lambda: cs.file(again), "Duplicate")
    # Tampered after signing: another key's CSR put in (the signatures no longer verify).
    fresh, _ = _rotation("sign", {"auth": keys["auth"], "sign": keys["sign"]})
    other, _ = _rotation("sign", {"auth": keys["auth"], "sign": keys["sign"]})
    csr = orjson.loads(other)["request"]["csr"]
    doc = orjson.loads(fresh)
    doc["request"]["csr"] = csr
    _refused(cs, lambda: cs.file(orjson.dumps(doc)), "InvalidSignature")


# --- the configuration's revocations, as nodes read them ------------------------------------


def test_a_configuration_with_a_malformed_revocation_is_refused(cs: CentralServer) -> None:
    """A node refuses the whole document (and keeps the one it has) rather than read a
    revocation it cannot understand as none."""
    _enrolled(cs)
    cs.revoke("t", "x", node=HUB1, what="sign")
    good = cs.globalconf().to_dict()
    assert GlobalConf.from_dict(good).revocations
    wrong = [("kind", "tls"), ("cert_sha256", "AB" * 32), ("cert_sha256", "ab"),
             ("revoked_at", "2026-12-06T10:00:00"), ("revoked_at", "yesterday")]  # fmt: skip
    (entry,) = good["revocations"]  # type: ignore[misc]
    for field, value in wrong:
        doc = {**good, "revocations": [{**entry, field: value}]}
        with pytest.raises(GlobalConfError):
            GlobalConf.from_dict(doc)


# --- the witness -------------------------------------------------------------------------


async def test_witness_cosigns_no_checkpoint_of_a_revoked_checkpoint_key(
    cs: CentralServer,
) -> None:
    """A thief of a node's checkpoint key gets no co-signature once the key is revoked: the
    witness's word must not vouch for what a revoked key signs."""
    checkpoint_key = ed25519.Ed25519PrivateKey.generate()
    data, _ = _auth_reg(checkpoint_csr=make_csr(checkpoint_key, "x").public_bytes(PEM).decode())
    request_id, _ = cs.file(data)
    cs.approve(request_id, "test")
    (issued,) = [c for c in cs.store.certificates(request_id) if c.purpose == "checkpoint"]
    der = x509.load_pem_x509_certificate(issued.pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    leaves = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(4)]
    signer = NoteSigner(HUB1, checkpoint_key)

    def submission(size: int, old: int) -> dict[str, object]:
        note = sign_note(Checkpoint(f"xroad-hub/{HUB1}", size, merkle.root(leaves[:size])).text(),
                         signer)  # fmt: skip
        proof = merkle.consistency_proof(leaves[:size], old, size) if old else []
        return {"note": note, "cert": base64.b64encode(der).decode(), "old_size": old,
                "proof": [base64.b64encode(h).decode() for h in proof]}  # fmt: skip

    async with TestClient(TestServer(cs.app())) as client:
        r = await client.post("/witness", json=submission(2, 0))
        assert r.status == 200, await r.text()
        cs.revoke("t", "checkpoint key stolen", node=HUB1, what="checkpoint")
        r = await client.post("/witness", json=submission(4, 2))
        assert r.status == 400 and "revoked" in (await r.json())["error"]
        r = await client.get("/witness", params={"origin": f"xroad-hub/{HUB1}"})
        assert (await r.json())["size"] == 2  # the witness's state did not move


# The order of P-256, the curve of the federation CA's key.
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    return bytes((tag, n)) + value if n < 128 else bytes((tag, 0x82)) + n.to_bytes(2, "big") + value


def _twin(der: bytes, ca: x509.Certificate) -> bytes:
    """The certificate re-encoded with the other valid half of its CA's ECDSA signature,
    (r, n - s): what a thief of a revoked key can make without any key."""
    cert = x509.load_der_x509_certificate(der)
    r, s = decode_dss_signature(cert.signature)
    tbs, bits = cert.tbs_certificate_bytes, _tlv(0x03, b"\x00" + cert.signature)
    body = der[4:]  # after 30 82 LL LL: a certificate is over 255 bytes
    algorithm = body[len(tbs) : len(body) - len(bits)]
    twin = _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\x00" + encode_dss_signature(r, _P256_N - s)))
    assert cert_fingerprint(twin) != cert_fingerprint(der)
    x509.load_der_x509_certificate(twin).verify_directly_issued_by(ca)  # the CA's, still
    return twin


async def test_a_revoked_certificate_re_encoded_by_its_thief_is_still_revoked(
    cs: CentralServer,
) -> None:
    """ECDSA is malleable: from a revoked certificate anyone makes another encoding, with
    another SHA-256, that the CA's signature still covers. Revocations are listed by digest;
    nodes, the witness and the verifiers must see through it."""
    ca = x509.load_pem_x509_certificate(cs.dir.cert("ca").read_bytes())
    checkpoint_key = ed25519.Ed25519PrivateKey.generate()
    data, _ = _auth_reg(checkpoint_csr=make_csr(checkpoint_key, "x").public_bytes(PEM).decode())
    request_id, _ = cs.file(data)
    cs.approve(request_id, "test")
    ders = {
        c.purpose: x509.load_pem_x509_certificate(c.pem.encode()).public_bytes(
            serialization.Encoding.DER
        )
        for c in cs.store.certificates(request_id)
    }
    cs.revoke("t", "signing key stolen", node=HUB1, what="sign")
    cs.revoke("t", "checkpoint key stolen", node=HUB1, what="checkpoint")
    conf = cs.globalconf()
    sign_twin = _twin(ders["sign"], ca)
    assert SignatureVerifier([ca])._check_cert(sign_twin).member == parse_member_id(MOPH)
    with pytest.raises(ProtocolError) as err:  # what provider and client nodes check
        check_not_revoked(conf, sign_twin, "the request's signing certificate")
    assert err.value.code == "CertValidation"
    note = sign_note(Checkpoint(f"xroad-hub/{HUB1}", 1, merkle.leaf_hash(b"x")).text(),
                     NoteSigner(HUB1, checkpoint_key))  # fmt: skip
    body = {"note": note, "cert": base64.b64encode(_twin(ders["checkpoint"], ca)).decode(),
            "old_size": 0, "proof": []}  # fmt: skip
    async with TestClient(TestServer(cs.app())) as client:
        r = await client.post("/witness", json=body)
        assert r.status == 400 and "revoked" in (await r.json())["error"]
