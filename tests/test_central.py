"""The central server's decisions: registration requests that must be refused (forged,
unknown member, code taken, replayed, stale) change nothing; approval issues certificates
for the request's own keys and puts the node into the global configuration; anchors that do
not match their hash are refused; the admin API denies by default and by role; the
administration audit trail is hash-chained."""

from __future__ import annotations

import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import xroad_hub.central.server as server_module
from xroad_hub.central.server import CentralServer, init_central
from xroad_hub.central.store import StoreError, verify_audit
from xroad_hub.node.admin import key_digest
from xroad_hub.pki import generate_key
from xroad_hub.protocol.globalconf import verify_globalconf
from xroad_hub.protocol.identifiers import NodeId, parse_member_id, parse_node_id
from xroad_hub.protocol.registration import (
    RegistrationError,
    make_csr,
    new_request,
    parse_anchor,
    sign_request,
)
from xroad_hub.protocol.signing import cert_fingerprint

# central_db is imported where used: see tests/pg_stores.py (a plugin, loaded first).
pytest_plugins = ["tests.pg_stores"]

MOPH = "TH/GOV/MOPH"


@pytest.fixture
def central(tmp_path: Path, central_db_args: dict[str, str]) -> Iterator[CentralServer]:
    init_central(tmp_path / "central", "TH", "https://127.0.0.1:4001", **central_db_args)
    server = CentralServer(tmp_path / "central")
    server.store.add_member(MOPH, "Ministry of Public Health", "test")
    yield server
    server.close()


def _auth_reg(code: str = "hub1", member: str = MOPH, **over: object) -> tuple[bytes, dict]:
    auth, sign = generate_key(), generate_key()
    pem = serialization.Encoding.PEM
    request = new_request(
        "authCertReg", "TH", NodeId(parse_member_id(member), code),
        address="127.0.0.1:5600",
        auth_csr=make_csr(auth, "x").public_bytes(pem).decode(),
        sign_csr=make_csr(sign, "y").public_bytes(pem).decode(),
    )  # fmt: skip
    request.update({k: str(v) for k, v in over.items()})
    return sign_request(request, {"auth": auth, "sign": sign}), {"auth": auth, "sign": sign}


def _node_hosting(central: CentralServer, subsystem: str) -> None:
    """MOPH's node hub1 registered and approved, hosting ``subsystem`` (approved too)."""
    data, keys = _auth_reg()
    request_id, _ = central.file(data)
    central.approve(request_id, "officer")
    server = NodeId(parse_member_id(MOPH), "hub1")
    client_req = new_request("clientReg", "TH", server, client=subsystem)
    client_id, _ = central.file(sign_request(client_req, {"auth": keys["auth"]}))
    central.approve(client_id, "officer")


def _snapshot(server: CentralServer) -> tuple[object, ...]:
    from tests.pg_stores import central_db

    with central_db(server) as db:
        return tuple(
            db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("members", "nodes", "subsystems", "requests", "certificates", "nonces")
        )


def _refused(server: CentralServer, data: bytes, code: str) -> RegistrationError:
    before = _snapshot(server)
    with pytest.raises(RegistrationError) as err:
        server.file(data)
    assert err.value.code == code, err.value.message
    assert _snapshot(server) == before, "a refused request changed the database"
    return err.value


def test_init_keeps_keys_and_database_private(tmp_path: Path) -> None:
    d = init_central(tmp_path / "c", "TH", "https://127.0.0.1:4001")
    for path in (d.db, *(d.key(k) for k in ("ca", "signer", "tls", "tsa", "witness"))):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    with pytest.raises(FileExistsError):
        init_central(tmp_path / "c", "TH", "https://127.0.0.1:4001")
    with pytest.raises(StoreError, match="central init"):
        CentralServer(tmp_path / "nothing")


def test_approval_issues_certificates_for_the_requests_keys(central: CentralServer) -> None:
    data, keys = _auth_reg()
    request_id, state = central.file(data)
    assert state == "SUBMITTED"
    assert central.globalconf().nodes == ()  # not before approval
    central.approve(request_id, "officer")
    status = central.status(request_id)
    auth = x509.load_pem_x509_certificate(status["certificates"]["auth"].encode())
    sign = x509.load_pem_x509_certificate(status["certificates"]["sign"].encode())
    assert auth.public_key() == keys["auth"].public_key()
    assert sign.public_key() == keys["sign"].public_key()
    assert auth.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{MOPH}/hub1"
    signed = central.signed_globalconf()
    conf = verify_globalconf(signed, central.signer_cert)
    node = conf.node(parse_node_id(f"{MOPH}/hub1"))
    assert node is not None and node.address == "127.0.0.1:5600"
    assert node.auth_cert_sha256 == cert_fingerprint(auth.public_bytes(serialization.Encoding.DER))
    assert parse_member_id(MOPH) in conf.members


def test_forged_signature_is_refused(central: CentralServer) -> None:
    data, _ = _auth_reg()
    doc = orjson.loads(data)
    other = generate_key()  # signs the same request, but is not the signing CSR's key
    doc["signatures"]["sign"] = orjson.loads(sign_request(doc["request"], {"sign": other}))[
        "signatures"
    ]["sign"]
    err = _refused(central, orjson.dumps(doc), "InvalidSignature")
    assert err.status == 403
    doc = orjson.loads(data)
    doc["request"]["address"] = "10.0.0.1:5600"  # altered after signing
    _refused(central, orjson.dumps(doc), "InvalidSignature")
    doc = orjson.loads(data)
    del doc["signatures"]["sign"]  # one key only: possession of both is not shown
    _refused(central, orjson.dumps(doc), "Malformed")


def test_unknown_member_is_refused(central: CentralServer) -> None:
    data, _ = _auth_reg(member="TH/GOV/NOBODY")
    assert "central member add" in _refused(central, data, "UnknownMember").message


def test_node_code_taken_is_refused(central: CentralServer) -> None:
    first, _ = _auth_reg()
    request_id, _ = central.file(first)
    pending, _ = _auth_reg()
    _refused(central, pending, "Duplicate")  # a request for it is pending
    central.approve(request_id, "officer")
    again, _ = _auth_reg()
    assert "already registered" in _refused(central, again, "Duplicate").message


def test_node_and_subsystem_codes_differing_in_case_only_are_taken(
    central: CentralServer,
) -> None:
    first, keys = _auth_reg()
    request_id, _ = central.file(first)
    _refused(central, _auth_reg("HUB1")[0], "Duplicate")  # while "hub1" is pending
    central.approve(request_id, "officer")
    assert "(as TH/GOV/MOPH/hub1)" in _refused(central, _auth_reg("Hub1")[0], "Duplicate").message
    server = NodeId(parse_member_id(MOPH), "hub1")

    def client_reg(code: str) -> bytes:
        return sign_request(
            new_request("clientReg", "TH", server, client=f"{MOPH}/{code}"), {"auth": keys["auth"]}
        )

    central.file(client_reg("hospital"))
    _refused(central, client_reg("HOSPITAL"), "Duplicate")


def test_replayed_and_stale_requests_are_refused(central: CentralServer) -> None:
    data, _ = _auth_reg()
    request_id, _ = central.file(data)
    central.decline(request_id, "officer", "wrong address")
    # Even after a decline frees the node code, the same bytes are not accepted twice.
    _refused(central, data, "Replay")
    old = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    stale, _ = _auth_reg(created_at=old)
    _refused(central, stale, "Stale")


def test_declined_request_changes_nothing_but_its_state(central: CentralServer) -> None:
    data, _ = _auth_reg()
    request_id, _ = central.file(data)
    before = central.globalconf()
    central.decline(request_id, "officer", "unknown address")
    status = central.status(request_id)
    assert status["state"] == "DECLINED" and status["reason"] == "unknown address"
    assert "certificates" not in status
    assert central.globalconf().same_rules(before)
    with pytest.raises(RegistrationError, match="not pending"):
        central.approve(request_id, "officer")


def test_client_registration_needs_the_registered_auth_key(central: CentralServer) -> None:
    data, keys = _auth_reg()
    request_id, _ = central.file(data)
    server = NodeId(parse_member_id(MOPH), "hub1")
    client_req = new_request("clientReg", "TH", server, client=f"{MOPH}/hospital")
    early = sign_request(client_req, {"auth": keys["auth"]})
    _refused(central, early, "UnknownServer")  # not registered yet
    central.approve(request_id, "officer")
    forged = sign_request(
        new_request("clientReg", "TH", server, client=f"{MOPH}/hospital"),
        {"auth": generate_key()},
    )
    _refused(central, forged, "InvalidSignature")
    good = sign_request(
        new_request("clientReg", "TH", server, client=f"{MOPH}/hospital"), {"auth": keys["auth"]}
    )
    client_id, _ = central.file(good)
    central.approve(client_id, "officer")
    node = central.globalconf().node(server)
    assert node is not None and {str(c) for c in node.clients} == {f"{MOPH}/hospital"}


def test_anchor_must_match_its_hash(central: CentralServer) -> None:
    anchor = central.anchor()
    parsed = parse_anchor(anchor)
    assert len(parsed.hash.split()) == 16  # 16 groups of 4 hex digits, read over the phone
    parse_anchor(anchor, expected_hash=parsed.hash.replace(" ", "").lower())
    with pytest.raises(RegistrationError, match="not the one you were given"):
        parse_anchor(anchor, expected_hash="0000" * 16)
    doc = orjson.loads(anchor)
    doc["verification_cert_sha256"] = "ABCD " * 15 + "ABCD"
    with pytest.raises(RegistrationError, match="does not match its hash"):
        parse_anchor(orjson.dumps(doc))


def test_audit_trail_records_who_and_is_chained(central: CentralServer) -> None:
    data, _ = _auth_reg()
    request_id, _ = central.file(data)
    central.approve(request_id, "cli:alice")
    entries = central.store.audit_entries()
    assert [e.action for e in entries][-2:] == ["member.add", "request.approve"]
    assert entries[-1].admin == "cli:alice" and entries[-1].detail["request"] == request_id
    verify_audit(entries)
    from tests.pg_stores import central_db

    with central_db(central) as db:
        db.execute("UPDATE admin_audit SET admin = 'mallory' WHERE seq = ?", (entries[-1].seq,))
    with pytest.raises(StoreError, match="broken"):
        verify_audit(central.store.audit_entries())


async def test_admin_api_roles(central: CentralServer) -> None:
    central.store.add_admin("rita", key_digest("rita-key"), ["registration-officer"], "t")
    central.store.add_admin("sam", key_digest("sam-key"), ["system-administrator"], "t")
    data, _ = _auth_reg()
    request_id, _ = central.file(data)
    async with TestClient(TestServer(central.app())) as client:
        await _admin_calls(central, client, request_id)


async def _admin_calls(central: CentralServer, client: TestClient, request_id: int) -> None:
    r = await client.get("/admin/requests")
    assert r.status == 401
    r = await client.post(f"/admin/requests/{request_id}/approve",
                          headers={"Authorization": "Bearer sam-key"})  # fmt: skip
    assert r.status == 403  # a system administrator does not approve registrations
    r = await client.post("/admin/members", json={"id": "TH/GOV/DOPA", "name": "DOPA"},
                          headers={"Authorization": "Bearer rita-key"})  # fmt: skip
    assert r.status == 403
    r = await client.post(f"/admin/requests/{request_id}/decline", json={"reason": "no"},
                          headers={"Authorization": "Bearer rita-key"})  # fmt: skip
    assert r.status == 200 and (await r.json())["state"] == "DECLINED"
    r = await client.post("/admin/members", json={"id": "TH/GOV/DOPA", "name": "DOPA"},
                          headers={"Authorization": "Bearer sam-key"})  # fmt: skip
    assert r.status == 201
    assert central.store.audit_entries()[-1].admin == "api:sam"


async def test_admin_keys_take_effect_without_a_restart(central: CentralServer) -> None:
    """A key made while the server runs ('central admin-key' writes the database from
    another process) works at its next request; a key replaced for the same name stops."""
    async with TestClient(TestServer(central.app())) as client:
        headers = {"Authorization": "Bearer new-key"}
        assert (await client.get("/admin/members", headers=headers)).status == 401
        central.store.add_admin("nina", key_digest("new-key"), ["system-administrator"], "t")
        assert (await client.get("/admin/members", headers=headers)).status == 200
        central.store.add_admin("nina", key_digest("newer-key"), ["system-administrator"], "t")
        assert (await client.get("/admin/members", headers=headers)).status == 401


def test_checkpoint_key_is_certified_for_the_node(central: CentralServer) -> None:
    """The Ed25519 checkpoint key's CSR rides in the signed registration request; approval
    issues a certificate the audit and the witness accept for exactly that node."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from xroad_hub.messagelog.audit import verify_node_checkpoint
    from xroad_hub.protocol.checkpoint import Checkpoint, NoteSigner, sign_note

    checkpoint = ed25519.Ed25519PrivateKey.generate()
    pem = serialization.Encoding.PEM
    csr = make_csr(checkpoint, "anything").public_bytes(pem).decode()
    # A P-256 key is no checkpoint key, and a CSR not self-signed proves no possession.
    _refused(central, _auth_reg(checkpoint_csr=make_csr(generate_key(), "x").public_bytes(
        pem).decode())[0], "Malformed")  # fmt: skip
    data, _ = _auth_reg(checkpoint_csr=csr)
    request_id, _ = central.file(data)
    central.approve(request_id, "officer")
    cert = x509.load_pem_x509_certificate(
        central.status(request_id)["certificates"]["checkpoint"].encode()
    )
    assert cert.public_key() == checkpoint.public_key()
    node = f"{MOPH}/hub1"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node
    note = sign_note(
        Checkpoint(f"xroad-hub/{node}", 0, bytes(32)).text(), NoteSigner(node, checkpoint)
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    assert verify_node_checkpoint(note, der, [central._ca_cert]).size == 0


async def test_request_status_is_read_with_the_filers_token_only(central: CentralServer) -> None:
    async with TestClient(TestServer(central.app())) as client:
        filed = []
        for code in ("hub1", "hub2"):
            r = await client.post("/management/requests", data=_auth_reg(code)[0])
            assert r.status == 202
            filed.append(await r.json())
        mine, other = filed
        central.decline(other["requestId"], "officer", "unknown agency contact: Somchai")
        url = f"/management/requests/{other['requestId']}"
        # Ids count up from 1: without its token nobody learns a request exists, whose node
        # it names or why it was declined (answered as an unknown id, no oracle).
        for headers in ({}, {"Authorization": f"Bearer {mine['statusToken']}"},
                        {"Authorization": "Bearer "}, {"Authorization": "Basic x"}):  # fmt: skip
            r = await client.get(url, headers=headers)
            assert r.status == 404, headers
            assert "hub2" not in await r.text() and "Somchai" not in await r.text()
        r = await client.get("/management/requests/999", headers={"Authorization": "Bearer x"})
        assert r.status == 404
        r = await client.get(url, headers={"Authorization": f"Bearer {other['statusToken']}"})
        assert r.status == 200 and (await r.json())["state"] == "DECLINED"
    # The token survives a restart of the central server (its key is in the database).
    again = CentralServer(central.dir.root)
    try:
        assert again.status_token(other["requestId"]) == other["statusToken"]
    finally:
        again.close()


async def test_cancel_with_an_oversized_or_foreign_digit_id_is_malformed(
    central: CentralServer,
) -> None:
    server = NodeId(parse_member_id(MOPH), "hub1")
    async with TestClient(TestServer(central.app())) as client:
        # 20 digits overflowed SQLite's INTEGER: a 500 and a traceback for an unsigned request.
        for rid in ("9" * 20, "9" * 200, "\u0661\u0662"):  # the last: Arabic-Indic digits
            data = sign_request(
                new_request("cancel", "TH", server, request_id=rid), {"auth": generate_key()}
            )
            before = _snapshot(central)
            r = await client.post("/management/requests", data=data)
            assert r.status == 400, rid
            assert (await r.json())["error"] == "Malformed"
            assert _snapshot(central) == before


def test_a_csr_asking_for_a_ca_or_other_names_gets_only_the_central_servers_profile(
    central: CentralServer,
) -> None:
    """Regression guard: the CA issues its own names and usages, never the CSR's."""

    def greedy(key: object) -> str:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TH/GOV/DOPA")]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("central.example")]), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    auth, sign = generate_key(), generate_key()
    request = new_request(
        "authCertReg", "TH", NodeId(parse_member_id(MOPH), "hub1"), address="127.0.0.1:5600",
        auth_csr=greedy(auth), sign_csr=greedy(sign),
    )  # fmt: skip
    request_id, _ = central.file(sign_request(request, {"auth": auth, "sign": sign}))
    central.approve(request_id, "officer")
    for purpose, cn in (("auth", f"{MOPH}/hub1"), ("sign", MOPH)):
        pem = central.status(request_id)["certificates"][purpose]
        cert = x509.load_pem_x509_certificate(pem.encode())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
        values = [e.value for e in cert.extensions]
        assert not any(v.ca for v in values if isinstance(v, x509.BasicConstraints))
        assert "central.example" not in str(list(cert.extensions))
        assert ExtendedKeyUsageOID.CODE_SIGNING.dotted_string not in str(list(cert.extensions))


def test_an_address_cannot_buy_a_certificate_for_other_hosts(tmp_path: Path) -> None:
    """The address's host goes into the node's TLS certificate, which the admin CLI and
    nodes (for the central server) check host names against: a node may not get a wildcard,
    a name that is not a host, the central server's own host, or another member's node's
    host. Loopback is in every node's certificate already; an owner's nodes may share a host."""
    init_central(tmp_path / "c", "TH", "https://central.example.org:4001")
    central = CentralServer(tmp_path / "c")
    try:
        for member in (MOPH, "TH/GOV/DBD"):
            central.store.add_member(member, member, "test")
        first, _ = _auth_reg(address="hub1.moph.example:5500")
        central.approve(central.file(first)[0], "officer")
        for address in ("*.example:5500", "*:5500", "hub 2.example:5500", "a..b:5500",
                        "-x.example:5500"):  # fmt: skip
            data, _ = _auth_reg("hub2", address=address)
            assert "not a host name" in _refused(central, data, "Malformed").message
        for address in ("central.example.org:5500", "CENTRAL.example.org:5500"):
            data, _ = _auth_reg("hub2", address=address)
            assert "central server" in _refused(central, data, "Duplicate").message
        data, _ = _auth_reg("hub9", "TH/GOV/DBD", address="HUB1.moph.example:5600")
        assert "hub1.moph.example" in _refused(central, data, "Duplicate").message
        for code, address in (("hub2", "hub1.moph.example:5600"), ("hub3", "127.0.0.1:5601"),
                              ("hub4", "10.0.0.7:5500"), ("hub5", "n-1.example:1")):  # fmt: skip
            data, _ = _auth_reg(code, address=address)
            assert central.file(data)[1] == "SUBMITTED"
        data, _ = _auth_reg("hub9", "TH/GOV/DBD", address="127.0.0.1:5602")
        assert central.file(data)[1] == "SUBMITTED"
    finally:
        central.close()


async def test_a_storm_of_globalconf_downloads_signs_once_and_changes_show_at_once(
    central: CentralServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed: list[object] = []
    real = server_module.sign_globalconf

    def counting(conf: object, key: object) -> bytes:
        signed.append(conf)
        return real(conf, key)  # type: ignore[arg-type]

    monkeypatch.setattr(server_module, "sign_globalconf", counting)
    async with TestClient(TestServer(central.app())) as client:
        bodies = set()
        for _ in range(50):  # unauthenticated: each may cost a read, not a signature
            r = await client.get("/globalconf")
            assert r.status == 200
            bodies.add(await r.read())
        assert len(signed) <= 2 and len(bodies) == len(signed)
        # A change made elsewhere (the CLI's process) is in the very next download.
        central.store.add_member("TH/GOV/DOPA", "DOPA", "cli:test")
        r = await client.get("/globalconf")
        conf = verify_globalconf(await r.read(), central.signer_cert)
        assert parse_member_id("TH/GOV/DOPA") in conf.members


def test_client_tls_certificate_only_for_a_registered_subsystem_from_its_own_csr(
    central: CentralServer,
) -> None:
    """An mTLS client system's certificate: issued from its CSR (its key stays with it) for
    a subsystem a registered node hosts, clientAuth only, recorded in the audit trail."""
    hospital = f"{MOPH}/hospital"
    key = generate_key()
    csr = make_csr(key, "whatever the client asks").public_bytes(serialization.Encoding.PEM)
    with pytest.raises(RegistrationError) as err:
        central.issue_client_cert(hospital, csr, "officer")
    assert err.value.code == "UnknownSubsystem"
    _node_hosting(central, hospital)
    with pytest.raises(RegistrationError) as err:
        central.issue_client_cert(hospital, b"-----BEGIN CERTIFICATE REQUEST-----\nxx", "officer")
    assert err.value.code == "Malformed"
    audited = len(central.store.audit_entries())
    cert = central.issue_client_cert(hospital, csr, "officer")
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == hospital
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    entries = central.store.audit_entries()
    assert len(entries) == audited + 1 and entries[-1].action == "client_cert.issue"
    assert entries[-1].admin == "officer"


def test_racing_writers_pass_each_check_once_and_keep_one_audit_chain(
    central: CentralServer,
) -> None:
    """Six processes' worth of connections (the CLI, a server's workers) at once: a nonce is
    used once, a node code requested once, and the audit trail stays one chain."""
    stores = [central.dir.open_store() for _ in range(6)]
    barrier = threading.Barrier(len(stores))

    def race(call: Callable[[int], object]) -> list[str]:
        def one(i: int) -> str:
            barrier.wait()
            try:
                call(i)
            except RegistrationError as exc:
                return exc.code
            return "ok"

        with ThreadPoolExecutor(len(stores)) as pool:
            return sorted(pool.map(one, range(len(stores))))

    def file(i: int, code: str, nonce: str) -> object:
        return stores[i].file_request(
            "authCertReg", f"{MOPH}/{code}", nonce, b"{}", address="127.0.0.1:5600",
            auth_csr="csr", sign_csr="csr", auth_key_sha256=f"{code}-{nonce}",
        )  # fmt: skip

    try:
        assert race(lambda i: file(i, f"hub{i}", "one-nonce")) == ["Replay"] * 5 + ["ok"]
        assert race(lambda i: file(i, "hubx", f"nonce-{i}")) == ["Duplicate"] * 5 + ["ok"]
        before = len(central.store.audit_entries())

        def audit(i: int) -> None:
            for j in range(10):
                stores[i].audit(f"admin{i}", "test.race", n=j)

        assert race(audit) == ["ok"] * 6
        entries = central.store.audit_entries()
        assert len(entries) == before + 60
        verify_audit(entries)
    finally:
        for s in stores:
            s.close()  # type: ignore[attr-defined]


def test_a_postgresql_schema_holds_one_central_server_and_passwords_never_show(
    tmp_path: Path, pg_schema: str
) -> None:
    from tests.pg_stores import drop_schema, pg_dsn
    from xroad_hub.central.pgstore import PostgresCentralStore
    from xroad_hub.errors import HubError

    url = "https://127.0.0.1:4001"
    init_central(tmp_path / "a", "TH", url, db=pg_dsn(), db_schema=pg_schema)
    assert not (tmp_path / "a" / "central.sqlite").exists()
    # A second central server on the same schema is refused before it makes any key.
    with pytest.raises(FileExistsError, match="already holds"):
        init_central(tmp_path / "b", "TH", url, db=pg_dsn(), db_schema=pg_schema)
    assert not (tmp_path / "b").exists()
    other = pg_schema + "_c"
    try:
        init_central(tmp_path / "c", "XX", url, db=pg_dsn(), db_schema=other)
        a, c = CentralServer(tmp_path / "a"), CentralServer(tmp_path / "c")
        try:
            a.store.add_member(MOPH, "Ministry of Public Health", "test")
            assert (a.instance, c.instance) == ("TH", "XX")
            assert c.store.members() == {}
        finally:
            a.close()
            c.close()
    finally:
        drop_schema(other)
    with pytest.raises(HubError) as err:
        PostgresCentralStore("postgresql://u:s3cret@127.0.0.1:1/x", pg_schema)
    assert "s3cret" not in str(err.value) and "u:***@" in str(err.value)


def test_a_client_tls_certificate_is_listed_revoked_and_published(
    central: CentralServer,
) -> None:
    """'central client-cert' certificates are in the certificates table: 'central certs'
    lists them, 'central revoke' (by certificate or by the subsystem's member) revokes them
    and the global configuration carries the revocation for the client's node to refuse."""
    hospital = f"{MOPH}/hospital"
    _node_hosting(central, hospital)
    pem = serialization.Encoding.PEM
    first, second = (
        central.issue_client_cert(
            hospital, make_csr(generate_key(), "x").public_bytes(pem), "officer"
        )
        for _ in range(2)
    )
    listed = {c.serial: c for c in central.store.certs() if c.purpose == "client"}
    serials = [format(c.serial_number, "x") for c in (first, second)]
    assert sorted(listed) == sorted(serials)
    assert {c.subject for c in listed.values()} == {hospital}
    assert central.store.audit_entries()[-1].action == "client_cert.issue"
    # By certificate (its SHA-256, as 'central certs' shows it).
    [row] = central.revoke("officer", "key lost", cert=listed[serials[0]].sha256)
    assert row.serial == serials[0] and row.purpose == "client"
    conf = central.globalconf()
    revoked = conf.revoked(listed[serials[0]].sha256)
    assert revoked is not None and revoked.kind == "client" and revoked.subject == hospital
    assert conf.revoked(listed[serials[1]].sha256) is None
    # By member: only its client certificates, when asked for those.
    rows = central.revoke("officer", "system retired", member=MOPH, what="client")
    assert [r.serial for r in rows] == [serials[1]]
    # The node's own certificates stay.
    assert all(c.revoked_at is None for c in central.store.certs() if c.purpose != "client")
    # The published document parses on the nodes (the kind is known to them).
    signed = verify_globalconf(
        server_module.sign_globalconf(central.globalconf(), central._signer_key),
        central.signer_cert,
    )
    assert {r.kind for r in signed.revocations} == {"client"}
