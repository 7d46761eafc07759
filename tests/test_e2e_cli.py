"""The command line as an operator uses it: pki init, up (with endpoints.json and a clean
stop on SIGTERM), token."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from xroad_hub.dev.testing import on_free_ports

from .sqlite_db import sqlite_db

CLI = [sys.executable, "-m", "xroad_hub.cli"]


def _demo_config(tmp: Path) -> Path:
    """The demo federation file with every port replaced by a free one."""
    return on_free_ports(Path("config/demo-federation.toml"), tmp / "federation.toml")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def test_pki_init_is_idempotent_and_refuses_half_pairs(tmp_path: Path) -> None:
    cfg = _demo_config(tmp_path)
    certs = tmp_path / "certs"
    first = _run("pki", "init", "--config", str(cfg), "--certs-dir", str(certs))
    assert first.returncode == 0, first.stderr
    root_key = certs / "ca" / "root.key.pem"
    assert root_key.stat().st_mode & 0o077 == 0  # private keys are private
    before = root_key.read_bytes()
    again = _run("pki", "init", "--config", str(cfg), "--certs-dir", str(certs))
    assert again.returncode == 0 and "nothing created" in again.stdout
    assert root_key.read_bytes() == before
    (certs / "members" / "TH" / "GOV" / "DBD" / "sign.cert.pem").unlink()
    broken = _run("pki", "init", "--config", str(cfg), "--certs-dir", str(certs))
    assert broken.returncode == 2
    assert "without its pair" in broken.stderr


def test_help_explains_commands() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for word in ("pki", "up", "token"):
        assert word in out.stdout


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    out = _run("up", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2
    assert "cannot read federation file" in out.stderr


@pytest.mark.slow
async def test_up_serves_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    cfg = _demo_config(tmp_path)
    certs, data = tmp_path / "certs", tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "up",
        "--config",
        str(cfg),
        "--certs-dir",
        str(certs),
        "--data-dir",
        str(data),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        endpoints_file = data / "endpoints.json"
        # Generous: on a busy machine (the suite runs two workers) the demo's start-up, its
        # keys and data included, has taken more than 10 s.
        async with asyncio.timeout(90):
            while not endpoints_file.exists():
                assert proc.returncode is None, "xroad-hub up exited before it was serving"
                await asyncio.sleep(0.05)
        endpoints = json.loads(endpoints_file.read_text())
        dga = endpoints["nodes"]["TH/GOV/DGA/hub1"]
        assert dga["clients"] == {"TH/GOV/DGA/citizenportal": "jwt", "TH/GOV/DGA/devportal": "http"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{endpoints['backends']['dbd-registry']}/companies?limit=1") as r:
                jid = (await r.json())["juristic_ids"][0]
            path = f"/r1/TH/GOV/DBD/registry/companies/{jid}"
            devportal = {"X-Road-Client": "TH/GOV/DGA/devportal"}
            async with http.get(dga["client"] + path, headers=devportal) as r:
                # The registry declares the purposes it serves: none given, none served.
                assert r.status == 500
                problem = await r.json()
            assert problem["type"] == "Server.ServerProxy.AccessDenied"
            assert "X-Road-Purpose" in problem["message"]
            purpose = {"X-Road-Purpose": "citizen-self-service"}
            async with http.get(dga["client"] + path, headers={**devportal, **purpose}) as r:
                assert r.status == 200
                company = await r.json()
            assert company["juristic_id"] == jid
            assert company["name_th"].startswith("บริษัท")
            token = _run(
                "token", "TH/GOV/DGA/citizenportal", "--config", str(cfg), "--certs-dir", str(certs)
            )
            assert token.returncode == 0, token.stderr
            ctx = ssl.create_default_context(cafile=str(certs / "ca" / "root.cert.pem"))
            async with http.get(
                dga["client_tls"] + path,
                ssl=ctx,
                headers={
                    "X-Road-Client": "TH/GOV/DGA/citizenportal",
                    "Authorization": f"Bearer {token.stdout.strip()}",
                    **purpose,
                },
            ) as r:
                assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    events = [
        json.loads(line)["event"] for line in err.decode().splitlines() if line.startswith("{")
    ]
    assert "federation.stopped" in events
    # All three exchanges, the refused one too, are in the provider's log after the stop.
    db = data / "nodes" / "TH" / "GOV" / "DBD" / "hub1" / "messagelog.sqlite"
    with sqlite_db(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM exchange WHERE status = 200").fetchone()[0] == 2
        assert conn.execute("SELECT MAX(size) FROM checkpoint").fetchone()[0] == 3
    # The final checkpoint written at the stop covers the whole log, and it verifies.
    audit = _run("audit", "verify", str(db), "--root-ca", str(certs / "ca" / "root.cert.pem"))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "3 entries, 1 checkpoints (1 witnessed, 1 timestamped)" in audit.stdout
