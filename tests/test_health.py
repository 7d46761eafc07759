"""Health checks, maintenance mode and the admin API (issue 14, item 1).

Health turns unready and back for each cause, on the node's own health port, with the
reason; maintenance is switched by an administrator through the admin API (and the CLI),
refuses new exchanges with an X-Road error and is recorded in the admin audit trail.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from xroad_hub.cli import main
from xroad_hub.dev.testing import TEST_ADMIN_KEYS, TestFederationSpec, free_port
from xroad_hub.node.health import CertCheck, cert_problems

from .conftest import Fed, start_federation

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
ECHO = "/r1/TH/GOV/DBD/registry/echo"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_ADMIN_KEYS[name][0]}"}


@pytest.fixture
async def quick(tmp_path: Path, echo_backend: str) -> AsyncIterator[Fed]:
    """Short limits, so every cause shows (and clears) within seconds."""
    spec = TestFederationSpec(
        backend_url=echo_backend,
        validity=3,
        refresh=1,
        checkpoint_interval=0.2,
        timestamp_failure_limit=0.6,
    )
    f = await start_federation(tmp_path, spec)
    for node in f.federation.nodes.values():
        node.log_failure_hold = 0.5
    yield f
    await f.federation.stop()


async def _ready(http: aiohttp.ClientSession, fed: Fed, node: str) -> tuple[int, dict[str, Any]]:
    async with http.get(fed.url(node, "health") + "/health/ready") as r:
        return r.status, await r.json()


async def _until_ready(
    http: aiohttp.ClientSession, fed: Fed, node: str, ready: bool, check: str | None = None
) -> dict[str, Any]:
    last: tuple[int, dict[str, Any]] = (0, {})
    for _ in range(150):
        last = await _ready(http, fed, node)
        checks = {p["check"] for p in last[1]["problems"]}
        if ready and last[0] == 200:
            return last[1]
        if not ready and last[0] == 503 and (check is None or check in checks):
            return last[1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"health never became {'ready' if ready else check}: {last}")


async def _exchange(http: aiohttp.ClientSession, fed: Fed) -> tuple[int, str | None]:
    async with http.get(fed.url(DGA) + ECHO, headers=DEV) as r:
        await r.read()
        return r.status, r.headers.get("X-Road-Error")


async def _admin_health(http: aiohttp.ClientSession, fed: Fed, node: str, check: str) -> str:
    """The detail of one problem as administrators see it (admin API /health)."""
    async with http.get(fed.url(node, "admin") + "/health", headers=bearer("scraper")) as r:
        assert r.status == 200
        body = await r.json()
    return str(next(p.get("detail") for p in body["problems"] if p["check"] == check))


async def test_liveness_and_readiness_are_separate(quick: Fed, http) -> None:
    base = quick.url(DGA, "health")
    async with http.get(base + "/health/live") as r:
        assert r.status == 200
    assert (await _ready(http, quick, DGA))[0] == 200
    # The node's own ports do not answer health: it is on its own port only.
    async with http.get(quick.url(DGA) + "/health/ready") as r:
        assert r.status != 200
    quick.federation.nodes[DGA].runtime.state.maintenance = "test"
    await _until_ready(http, quick, DGA, False, "maintenance")
    async with http.get(base + "/health/live") as r:
        assert r.status == 200  # unready is not dead: nobody should restart it


async def test_timestamp_authority_outage(quick: Fed, http, monkeypatch) -> None:
    node = quick.federation.nodes[DGA]
    assert await _exchange(http, quick) == (200, None)
    good = node.tsa_url
    monkeypatch.setattr(node, "tsa_url", f"http://127.0.0.1:{free_port()}/")
    # New log entries make checkpoints that now cannot be stamped.
    await _exchange(http, quick)
    body = await _until_ready(http, quick, DGA, False, "timestamping_failing")
    assert "timestamp" in body["problems"][0]["reason"]
    monkeypatch.setattr(node, "tsa_url", good)
    await _until_ready(http, quick, DGA, True)


async def test_global_configuration_expiry(quick: Fed, http, monkeypatch) -> None:
    conf = quick.federation.nodes[DGA].globalconf
    good = conf.url
    monkeypatch.setattr(conf, "url", f"http://127.0.0.1:{free_port()}/globalconf")
    body = await _until_ready(http, quick, DGA, False, "globalconf_invalid")
    reason = next(p["reason"] for p in body["problems"] if p["check"] == "globalconf_invalid")
    assert reason == "no valid global configuration"
    # The download's error names the configuration's URL: administrators only.
    assert "127.0.0.1" not in str(body) and "last download" not in str(body)
    detail = await _admin_health(http, quick, DGA, "globalconf_invalid")
    assert "last download" in detail
    assert (await _exchange(http, quick))[1] == "Server.ClientProxy.OutdatedGlobalConf"
    monkeypatch.setattr(conf, "url", good)
    await _until_ready(http, quick, DGA, True)
    assert await _exchange(http, quick) == (200, None)


async def test_message_log_not_writable(quick: Fed, http) -> None:
    log = quick.federation.nodes[DBD].runtime.log
    # SQLite itself refuses every write from now on (as with a read-only or full disk), on
    # the connection of the log's writer thread (its only writer).
    await log._run("PRAGMA query_only = ON")
    try:
        assert await _exchange(http, quick) == (500, "Server.ServerProxy.LoggingFailed")
        body = await _until_ready(http, quick, DBD, False, "messagelog_unwritable")
        # The database's own words (paths, users of a DSN) reach administrators only.
        assert "readonly" not in str(body)
        assert "readonly" in await _admin_health(http, quick, DBD, "messagelog_unwritable")
    finally:
        await log._run("PRAGMA query_only = OFF")
    await _until_ready(http, quick, DBD, True)
    assert await _exchange(http, quick) == (200, None)


async def test_missing_key_file(quick: Fed, http) -> None:
    key = quick.pki.node_auth(DGA).key
    moved = key.with_name(key.name + ".away")
    key.rename(moved)
    try:
        body = await _until_ready(http, quick, DGA, False, "key_missing")
        assert "authentication certificate" in body["problems"][0]["reason"]
        assert str(key.parent) not in str(body)  # no paths to unauthenticated callers
        assert key.name not in str(body)  # nor the names of key files
        assert key.name in await _admin_health(http, quick, DGA, "key_missing")
    finally:
        moved.rename(key)
    await _until_ready(http, quick, DGA, True)


def test_expired_certificate_is_a_problem(tmp_path: Path) -> None:
    from xroad_hub.dev.devpki import ensure_pki  # noqa: F401 - certificates come from fed

    cert = tmp_path / "c.pem"
    key = tmp_path / "k.pem"
    _self_signed(cert, key, days=1)
    check = CertCheck.load("signing certificate", cert, key)
    assert cert_problems([check], check.not_after.timestamp() - 10) == []
    [problem] = cert_problems([check], (check.not_after + timedelta(seconds=1)).timestamp())
    assert problem.check == "certificate_expired"
    assert "signing certificate expired" in problem.reason


def _self_signed(cert: Path, key: Path, days: int) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.UTC)
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(k, hashes.SHA256())
    )
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_registry_health(quick: Fed, http) -> None:
    url = quick.endpoints["registry_health"] + "/health/ready"
    async with http.get(url) as r:
        assert r.status == 200
    cert = quick.pki.globalconf_signer.cert
    moved = cert.with_name(cert.name + ".away")
    cert.rename(moved)
    try:
        await asyncio.sleep(1.1)  # answers are cached for a second
        async with http.get(url) as r:
            assert r.status == 503
            assert (await r.json())["problems"][0]["check"] == "key_missing"
    finally:
        moved.rename(cert)


async def _maintenance(http, fed: Fed, node: str, who: str, **body: Any) -> aiohttp.ClientResponse:
    async with http.post(
        fed.url(node, "admin") + "/maintenance", json=body, headers=bearer(who)
    ) as r:
        await r.read()
        return r


async def test_maintenance_mode_by_the_node_admin(quick: Fed, http) -> None:
    assert (await _maintenance(http, quick, DGA, "scraper", enabled=True)).status == 403
    async with http.post(quick.url(DGA, "admin") + "/maintenance", json={"enabled": True}) as r:
        assert r.status == 401
    assert (await _ready(http, quick, DGA))[0] == 200
    r = await _maintenance(http, quick, DGA, "ops", enabled=True, message="upgrade to 1.2")
    assert r.status == 200
    # New exchanges get an X-Road error naming the node that refused them.
    async with http.get(quick.url(DGA) + ECHO, headers=DEV) as resp:
        assert resp.status == 503
        assert resp.headers["X-Road-Error"] == "Server.ClientProxy.Maintenance"
        assert "upgrade to 1.2" in (await resp.json())["message"]
    body = await _until_ready(http, quick, DGA, False, "maintenance")
    assert "upgrade to 1.2" in body["problems"][0]["reason"]
    assert (await _maintenance(http, quick, DGA, "ops", enabled=False)).status == 200
    await _until_ready(http, quick, DGA, True)
    assert await _exchange(http, quick) == (200, None)
    # The provider's node in maintenance: the client learns it from the provider's side
    # (relayed by the client's node as 500, as every provider-side fault).
    assert (await _maintenance(http, quick, DBD, "ops", enabled=True)).status == 200
    assert await _exchange(http, quick) == (500, "Server.ServerProxy.Maintenance")
    assert (await _maintenance(http, quick, DBD, "ops", enabled=False)).status == 200
    assert await _exchange(http, quick) == (200, None)
    # Every change is in the node's admin audit trail: who, when, what; owner-only file.
    admin = quick.federation.nodes[DGA].admin
    assert admin is not None
    entries = admin.audit.entries()
    assert [(e["admin"], e["action"]) for e in entries] == [
        ("scraper", "refused"),  # the monitor's attempt, first
        ("ops", "maintenance.on"),
        ("ops", "maintenance.off"),
    ]
    assert entries[1]["detail"] == {"message": "upgrade to 1.2"} and entries[1]["at"]
    assert stat.S_IMODE(os.stat(admin.audit.path).st_mode) == 0o600


async def test_maintenance_from_the_cli(
    quick: Fed, http, tmp_path: Path, capsys, monkeypatch
) -> None:
    # A proxy in the environment is not used: it would see the key of a plain-HTTP call.
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    key = tmp_path / "ops.key"
    key.write_text(TEST_ADMIN_KEYS["ops"][0])
    url = quick.url(DGA, "admin")
    args = ["node", "maintenance", "on", "--admin", url, "--key-file", str(key)]
    assert await asyncio.to_thread(main, [*args, "--message", "disk swap"]) == 0
    assert "maintenance mode: on (disk swap)" in capsys.readouterr().out
    assert (await _exchange(http, quick))[1] == "Server.ClientProxy.Maintenance"
    args[2] = "off"
    assert await asyncio.to_thread(main, args) == 0
    assert await _exchange(http, quick) == (200, None)
    # A wrong key: a clear refusal, no traceback.
    key.write_text("not-a-key")
    assert await asyncio.to_thread(main, args) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "Traceback" not in err
    # The key never goes out in clear text, nor to the terminal.
    key.write_text(TEST_ADMIN_KEYS["ops"][0])
    for remote in ("http://10.1.2.3:9000", "http://node.example:9000", "ftp://127.0.0.1:1"):
        assert await asyncio.to_thread(main, [*args[:3], "--admin", remote,
                                              "--key-file", str(key)]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert "use https://" in err and TEST_ADMIN_KEYS["ops"][0] not in err
    key.write_text("test-admin-key\nwith-a-second-line-secret")
    assert await asyncio.to_thread(main, args) == 2
    err = capsys.readouterr().err
    assert "second-line-secret" not in err and "Traceback" not in err
    key.write_text("not-a-key")
    dead = ["node", "maintenance", "on", "--admin", f"http://127.0.0.1:{free_port()}"]
    assert await asyncio.to_thread(main, [*dead, "--key-file", str(key)]) == 2
    assert "admin_listen" in capsys.readouterr().err


async def test_admin_api_default_deny(fed: Fed, http) -> None:
    base = fed.url(DGA, "admin")
    async with http.get(base + "/metrics") as r:
        assert r.status == 401
        assert "WWW-Authenticate" in r.headers
    async with http.get(base + "/metrics", headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401
    # A security officer has no business with metrics; the monitor role does.
    async with http.get(base + "/metrics", headers=bearer("officer")) as r:
        assert r.status == 403
    async with http.get(base + "/metrics", headers=bearer("scraper")) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
    async with http.get(base + "/nothing-here", headers=bearer("ops")) as r:
        assert r.status == 404
    async with http.get(base + "/nothing-here") as r:
        assert r.status == 401  # unauthenticated callers do not even learn what exists


async def test_a_change_the_audit_trail_cannot_record_is_not_made(quick: Fed, http) -> None:
    admin = quick.federation.nodes[DGA].admin
    assert admin is not None
    good = admin.audit.path
    admin.audit.path = quick.root  # a directory: every append fails, as on a full disk
    try:
        r = await _maintenance(http, quick, DGA, "ops", enabled=True, message="unrecorded")
        assert r.status == 500
        assert quick.federation.nodes[DGA].runtime.state.maintenance is None
        assert await _exchange(http, quick) == (200, None)
    finally:
        admin.audit.path = good
    assert (await _maintenance(http, quick, DGA, "ops", enabled=True)).status == 200
    assert [e["action"] for e in admin.audit.entries()] == ["maintenance.on"]
