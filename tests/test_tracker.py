"""The citizens' data tracker: she sees exactly the exchanges about her, never anyone
else's; identity tokens are checked strictly; the identity provider's key and tokens; the
``xroad-hub tracker`` command against real HTTPS trackers."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.testing import free_port
from xroad_hub.federation import load_federation
from xroad_hub.messagelog import LogRecord, SQLiteMessageLog
from xroad_hub.node.tls import client_facing_context
from xroad_hub.node.trackerapi import TrackerApi, citizen_accesses, mint_idp_token
from xroad_hub.pki import PkiLayout, generate_key, load_private_key, load_public_key
from xroad_hub.protocol.message import canonical
from xroad_hub.protocol.thaiid import with_check_digit

SOMSRI = "1101700203450"
MALEE = with_check_digit("310060012345")
NODE = "TH/GOV/DOPA/hub1"
NAMES = {"TH/GOV/BMA": "Bangkok Metropolitan Administration", "TH/GOV/DGA": "DGA"}
CLI = [sys.executable, "-m", "xroad_hub.cli", "--log-level", "warning"]
T0 = 1767225600.0  # 2026-01-01T00:00:00Z


def _meta(**signed: object) -> bytes:
    return canonical({"v": 1, "kind": "request", **signed})


def _rec(i: int, subjects: tuple[str, ...], **overrides: Any) -> LogRecord:
    fields: dict[str, Any] = {
        "message_id": f"msg-{i}",
        "request_id": f"req-{i}",
        "role": "provider",
        "client": "TH/GOV/BMA/licensing",
        "service": "TH/GOV/DOPA/population/getPerson",
        "user_id": "officer-wichai",
        "issue": "BMA-2568-0001",
        "represented_party": None,
        "method": "GET",
        "status": 200,
        "error_type": None,
        "started_at": T0 + i,
        "finished_at": T0 + i + 0.25,
        "request_meta": _meta(
            purpose="food-business licence",
            legal_basis="Public Health Act B.E. 2535 s.48",
            evidence_type="identity",
        ),
        "request_signature": b"sig",
        "request_body": b"",
        "request_cert": b"cert",
        "response_meta": b"{}",
        "response_signature": b"sig",
        "response_body": b"{}",
        "response_cert": b"cert2",
        "subjects": subjects,
    }
    fields.update(overrides)
    return LogRecord(**fields)


@pytest.fixture
async def log_path(tmp_path: Path) -> Path:
    """A real SQLite message log: what the two citizens' data went through."""
    path = tmp_path / "messagelog.sqlite"
    mlog = SQLiteMessageLog(path)
    await mlog.open()
    records = [
        _rec(0, (SOMSRI,)),
        _rec(
            1,
            (MALEE,),
            client="TH/GOV/DGA/citizenportal",
            user_id=MALEE,
            issue=None,
            request_meta=_meta(),
        ),
        # Refused by the provider's node: still an attempt she may see.
        _rec(
            2,
            (SOMSRI,),
            status=500,
            error_type="Server.ServerProxy.AccessDenied",
            client="TH/GOV/DGA/devportal",
            request_meta=_meta(),
        ),
        # The client side of an exchange: the provider's entry is what counts.
        _rec(3, (SOMSRI,), role="client"),
        # A household read: it concerns both of them.
        _rec(
            4,
            (MALEE, SOMSRI),
            service="TH/GOV/DOPA/population/getHouseRegistration",
            request_meta=_meta(purpose="p", legal_basis="lb", evidence_type="house_registration"),
        ),
        _rec(5, ()),
        _rec(6, ("not-a-citizen",), request_meta=b"not json"),
    ]
    for record in records:
        await mlog.append(record)
    await mlog.close()
    return path


@pytest.fixture(scope="module")
def idp_key() -> ec.EllipticCurvePrivateKey:
    return generate_key()


@pytest.fixture
async def tracker(
    log_path: Path, idp_key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[TestClient[Any, Any]]:
    api = TrackerApi(NODE, log_path, idp_key.public_key(), NAMES)
    async with TestClient(TestServer(api.app())) as client:
        yield client


def _token(key: ec.EllipticCurvePrivateKey, sub: str = SOMSRI, **kw: Any) -> str:
    kw.setdefault("role", "citizen")
    kw.setdefault("audience", NODE)
    return mint_idp_token(key, subject=sub, **kw)


async def _get(
    client: TestClient[Any, Any], token: str | None, query: str = ""
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with client.get(f"/tracker/accesses{query}", headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_she_sees_exactly_her_entries(
    tracker: TestClient[Any, Any], idp_key: ec.EllipticCurvePrivateKey
) -> None:
    status, _, doc = await _get(tracker, _token(idp_key, SOMSRI))
    assert status == 200
    assert doc["node"] == NODE and doc["next_after"] is None
    assert [e["message_id"] for e in doc["entries"]] == ["msg-0", "msg-2", "msg-4"]
    first = doc["entries"][0]
    assert first == {
        "at": "2026-01-01T00:00:00.000+00:00",
        "node": NODE,
        "agency": "Bangkok Metropolitan Administration",
        "member": "TH/GOV/BMA",
        "client": "TH/GOV/BMA/licensing",
        "official": "officer-wichai",
        "service": "TH/GOV/DOPA/population/getPerson",
        "evidence_type": "identity",
        "issue": "BMA-2568-0001",
        "purpose": "food-business licence",
        "legal_basis": "Public Health Act B.E. 2535 s.48",
        "purpose_source": "request",  # not the client's registered default
        "represented_party": None,
        "status": 200,
        "refusal": None,
        "message_id": "msg-0",
        "leaf_index": 0,
    }
    refused = doc["entries"][1]
    assert refused["refusal"] == "Server.ServerProxy.AccessDenied"
    assert refused["purpose"] is None and refused["agency"] == "DGA"
    assert refused["member"] == "TH/GOV/DGA"
    status, _, doc = await _get(tracker, _token(idp_key, MALEE))
    assert [e["message_id"] for e in doc["entries"]] == ["msg-1", "msg-4"]
    assert doc["entries"][1]["evidence_type"] == "house_registration"


async def test_nobody_else_is_ever_shown(
    tracker: TestClient[Any, Any], idp_key: ec.EllipticCurvePrivateKey
) -> None:
    nobody = with_check_digit("510060012345")
    status, _, doc = await _get(tracker, _token(idp_key, nobody))
    assert (status, doc["entries"]) == (200, [])
    # Whose entries is the token's business alone: no parameter can widen or redirect it.
    for query in (f"?subject={MALEE}", f"?sub={MALEE}", "?citizen=*", f"?limit=5&cid={MALEE}"):
        status, _, doc = await _get(tracker, _token(idp_key, SOMSRI), query)
        assert status == 400 and "unknown parameter" in doc["error"]


async def test_member_names_may_come_from_the_global_configuration(
    log_path: Path, idp_key: ec.EllipticCurvePrivateKey
) -> None:
    names = {"TH/GOV/BMA": "BMA, as the registry names it now"}
    api = TrackerApi(NODE, log_path, idp_key.public_key(), lambda: names)
    async with TestClient(TestServer(api.app())) as client:
        _, _, doc = await _get(client, _token(idp_key))
    assert doc["entries"][0]["agency"] == "BMA, as the registry names it now"


def test_the_query_is_by_subject_only(log_path: Path) -> None:
    def ids(subject: str) -> list[str]:
        rows, _ = citizen_accesses(log_path, subject, node=NODE, member_names={})
        return [r["message_id"] for r in rows]

    assert ids(SOMSRI) == ["msg-0", "msg-2", "msg-4"]
    for hostile in ("' OR '1'='1", f"{SOMSRI}' OR 1=1 --", "%", "_" * 13, f"{SOMSRI[:12]}%"):
        assert ids(hostile) == []
    # An entry whose signed metadata cannot be read still shows, without the signed fields.
    rows, _ = citizen_accesses(log_path, "not-a-citizen", node=NODE, member_names={})
    assert rows[0]["purpose"] is None and rows[0]["agency"] == "TH/GOV/BMA"


async def test_paging(tracker: TestClient[Any, Any], idp_key: ec.EllipticCurvePrivateKey) -> None:
    token = _token(idp_key)  # reusable within its lifetime, to page
    seen, after = [], -1
    while True:
        status, _, doc = await _get(tracker, token, f"?limit=1&after={after}")
        assert status == 200
        seen += [e["message_id"] for e in doc["entries"]]
        if doc["next_after"] is None:
            break
        after = doc["next_after"]
    assert seen == ["msg-0", "msg-2", "msg-4"]
    for query in ("?limit=0", "?limit=1001", "?after=x"):
        assert (await _get(tracker, token, query))[0] == 400


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"iss": "thaid", "sub": SOMSRI, "role": "citizen", "aud": NODE,
                                 "iat": now, "exp": now + 60, "jti": "j-1"}  # fmt: skip
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda k: None, 401),
        (lambda k: "", 401),
        (lambda k: "not.a.jwt", 401),
        (lambda k: _token(k, role="officer"), 403),
        (lambda k: _token(k, audience="TH/GOV/DOL/hub1"), 401),
        (lambda k: _token(k, now=int(time.time()) - 400, ttl=300), 401),  # expired
        (lambda k: _token(k, ttl=301), 401),  # lives too long for the tracker
        (lambda k: _token(generate_key()), 401),  # forged: not the identity provider's key
        (lambda k: jwt.encode(_claims(iss="evil-idp"), k, algorithm="ES256"), 401),
        (lambda k: jwt.encode(_claims(iss=None), k, algorithm="ES256"), 401),
        (lambda k: jwt.encode(_claims(exp=None), k, algorithm="ES256"), 401),
        (lambda k: jwt.encode(_claims(sub=None), k, algorithm="ES256"), 401),
        (lambda k: jwt.encode(_claims(role=None), k, algorithm="ES256"), 403),
        (lambda k: jwt.encode(_claims(sub="1101700203451"), k, algorithm="ES256"), 403),
        (lambda k: jwt.encode(_claims(), None, algorithm="none"), 401),
        (lambda k: jwt.encode(_claims(), "s" * 32, algorithm="HS256"), 401),
    ],
)
async def test_token_checks(
    tracker: TestClient[Any, Any], idp_key: ec.EllipticCurvePrivateKey, make: Any, status: int
) -> None:
    got, headers, doc = await _get(tracker, make(idp_key))
    assert got == status
    assert "entries" not in doc and doc["error"]
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_token_in_another_scheme_is_no_token(
    tracker: TestClient[Any, Any], idp_key: ec.EllipticCurvePrivateKey
) -> None:
    headers = {"Authorization": f"Basic {_token(idp_key)}"}
    async with tracker.get("/tracker/accesses", headers=headers) as resp:
        assert resp.status == 401


def test_minting_refuses_what_no_verifier_should_see(idp_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="citizen ID"):
        _token(idp_key, "1101700203451")
    with pytest.raises(ValueError, match="role"):
        _token(idp_key, role="auditor")
    with pytest.raises(ValueError, match="lifetime"):
        _token(idp_key, ttl=3601)


# --- the identity provider's key and the token command ----------------------------------


def _federation(tmp: Path, audit_ports: tuple[int, int]) -> Path:
    text = f"""
instance = "TH"
[registry]
listen = "127.0.0.1:{free_port()}"
[[auditor]]
name = "oag"
[[member]]
id = "TH/GOV/DOPA"
name = "Department of Provincial Administration"
[[member]]
id = "TH/GOV/DGA"
name = "Digital Government Development Agency"
[[member]]
id = "TH/GOV/BMA"
name = "Bangkok Metropolitan Administration"
[[node]]
id = "TH/GOV/DOPA/hub1"
peer_listen = "127.0.0.1:{free_port()}"
audit_listen = "127.0.0.1:{audit_ports[0]}"
[[node]]
id = "TH/GOV/DGA/hub1"
peer_listen = "127.0.0.1:{free_port()}"
audit_listen = "127.0.0.1:{audit_ports[1]}"
  [[node.client]]
  id = "TH/GOV/DGA/citizenportal"
  auth = "jwt"
[[node]]
id = "TH/GOV/BMA/hub1"
peer_listen = "127.0.0.1:{free_port()}"
"""
    path = tmp / "federation.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def demo_pki(tmp_path: Path) -> tuple[Path, Path]:
    config = _federation(tmp_path, (free_port(), free_port()))
    ensure_pki(load_federation(config), tmp_path / "certs")
    return config, tmp_path / "certs"


def test_pki_init_creates_the_identity_provider_key(tmp_path: Path) -> None:
    config = _federation(tmp_path, (free_port(), free_port()))
    fed = load_federation(config)
    created = ensure_pki(fed, tmp_path / "certs")
    idp = PkiLayout(tmp_path / "certs").idp_jwt()
    assert idp.key == tmp_path / "certs" / "idp" / "thaid" / "jwt.key.pem"
    assert idp.cert == tmp_path / "certs" / "idp" / "thaid" / "jwt.pub.pem"
    assert {idp.key, idp.cert} <= set(created)
    assert stat.S_IMODE(os.stat(idp.key).st_mode) == 0o600
    public = load_public_key(idp.cert)
    assert public.public_numbers() == load_private_key(idp.key).public_key().public_numbers()
    before = idp.key.read_bytes()
    assert ensure_pki(fed, tmp_path / "certs") == []  # never overwritten
    assert idp.key.read_bytes() == before
    idp.cert.unlink()
    with pytest.raises(FileExistsError, match="without its pair"):
        ensure_pki(fed, tmp_path / "certs")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def test_token_command_for_citizens_and_officers(demo_pki: tuple[Path, Path]) -> None:
    _, certs = demo_pki
    public = load_public_key(PkiLayout(certs).idp_jwt().cert)
    proc = _cli("token", "--citizen", SOMSRI, "--audience", NODE, "--certs-dir", str(certs))
    assert proc.returncode == 0, proc.stderr
    claims = jwt.decode(proc.stdout.strip(), public, algorithms=["ES256"], audience=NODE)
    assert set(claims) == {"iss", "sub", "role", "aud", "iat", "exp", "jti"}
    assert (claims["iss"], claims["sub"], claims["role"]) == ("thaid", SOMSRI, "citizen")
    assert claims["exp"] - claims["iat"] == 300
    proc = _cli("token", "--officer", "officer-wichai", "--audience", "TH/GOV/BMA/licensing",
                "--ttl", "3600", "--certs-dir", str(certs))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    claims = jwt.decode(proc.stdout.strip(), public, algorithms=["ES256"],
                        audience="TH/GOV/BMA/licensing")  # fmt: skip
    assert (claims["sub"], claims["role"], claims["exp"] - claims["iat"]) == (
        "officer-wichai", "officer", 3600,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--citizen", "1101700203451", "--audience", NODE], "not a valid citizen ID"),
        (["--citizen", SOMSRI], "--audience"),
        (["--citizen", SOMSRI, "--audience", NODE, "--ttl", "3601"], "--ttl must be 1..3600"),
        (["--officer", "officer wichai", "--audience", NODE], "officer name"),
        (["TH/GOV/DGA/citizenportal", "--citizen", SOMSRI, "--audience", NODE], "take no CLIENT"),
        (["--citizen", SOMSRI, "--officer", "x", "--audience", NODE], "not allowed with"),
    ],
)
def test_token_command_refusals(demo_pki: tuple[Path, Path], args: list[str], message: str) -> None:
    proc = _cli("token", *args, "--certs-dir", str(demo_pki[1]))
    assert proc.returncode == 2
    assert message in proc.stderr


def test_existing_token_options_still_work(demo_pki: tuple[Path, Path]) -> None:
    config, certs = demo_pki
    common = ["--config", str(config), "--certs-dir", str(certs)]
    proc = _cli("token", "TH/GOV/DGA/citizenportal", *common)
    assert proc.returncode == 0, proc.stderr
    key = load_public_key(PkiLayout(certs).client_jwt("TH/GOV/DGA/citizenportal").cert)
    claims = jwt.decode(proc.stdout.strip(), key, algorithms=["ES256"], audience="TH/GOV/DGA/hub1")
    assert claims["iss"] == "TH/GOV/DGA/citizenportal" and claims["exp"] - claims["iat"] == 60
    proc = _cli("token", "oag", "--auditor", "--node", NODE, *common)
    assert proc.returncode == 0, proc.stderr
    key = load_public_key(PkiLayout(certs).auditor_jwt("oag").cert)
    assert jwt.decode(proc.stdout.strip(), key, algorithms=["ES256"], audience=NODE)["iss"] == (
        "auditor:oag"
    )
    proc = _cli("token", *common)
    assert proc.returncode == 2 and "--citizen/--officer" in proc.stderr
    proc = _cli("token", "TH/GOV/DGA/citizenportal", "--audience", NODE, *common)
    assert proc.returncode == 2


# --- the tracker command against HTTPS trackers -----------------------------------------


async def _serve_tracker(config: Path, certs: Path, node_id: str, log_path: Path) -> web.AppRunner:
    fed = load_federation(config)
    node = fed.node(node_id)
    pki = PkiLayout(certs)
    api = TrackerApi(node_id, log_path, load_public_key(pki.idp_jwt().cert),
                     {str(m): n for m, n in fed.members.items()})  # fmt: skip
    runner = web.AppRunner(api.app())
    await runner.setup()
    auth = pki.node_auth(node_id)
    ctx = client_facing_context(auth.cert, auth.key, pki.root_ca.cert)
    assert node.audit_listen is not None
    await web.TCPSite(runner, *node.audit_listen, ssl_context=ctx).start()
    return runner


async def _run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_tracker_command(demo_pki: tuple[Path, Path], log_path: Path) -> None:
    config, certs = demo_pki
    common = ["--config", str(config), "--certs-dir", str(certs)]
    # DOPA's node answers; DGA's node is down: what DOPA said is shown, and the exit says so.
    runner = await _serve_tracker(config, certs, NODE, log_path)
    try:
        code, out, err = await _run_cli("tracker", "--citizen", SOMSRI, "--json", *common)
        assert code == 1
        assert "TH/GOV/DGA/hub1 could not be asked" in err
        entries = json.loads(out)
        assert [e["message_id"] for e in entries] == ["msg-0", "msg-2", "msg-4"]
        assert entries[0]["agency"] == "Bangkok Metropolitan Administration"
        code, out, err = await _run_cli("tracker", "--citizen", SOMSRI, *common)
        assert code == 1
        assert "food-business licence" in out and "officer-wichai" in out
        assert "refused (Server.ServerProxy.AccessDenied)" in out
        assert "3 access(es) to data about 1101700203450, from 1 node(s)" in out
        assert MALEE not in out
        code, out, err = await _run_cli("tracker", "--citizen", "1101700203451", *common)
        assert code == 2 and "not a valid citizen ID" in err
    finally:
        await runner.cleanup()


async def test_tracker_command_checks_the_node_certificate(
    demo_pki: tuple[Path, Path], log_path: Path, tmp_path: Path
) -> None:
    config, certs = demo_pki
    # Another federation's CA: the trackers' certificates do not verify against it.
    other = tmp_path / "other"
    other.mkdir()
    ensure_pki(load_federation(_federation(other, (free_port(), free_port()))), other / "certs")
    runner = await _serve_tracker(config, certs, NODE, log_path)
    try:
        foreign_ca = other / "certs" / "ca"
        own_ca = certs / "ca"
        own_ca.rename(tmp_path / "own-ca")
        foreign_ca.rename(own_ca)
        code, out, err = await _run_cli(
            "tracker", "--citizen", SOMSRI, "--json", "--config", str(config),
            "--certs-dir", str(certs),
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert code == 1
    assert "CERTIFICATE_VERIFY_FAILED" in err
    assert json.loads(out) == []
