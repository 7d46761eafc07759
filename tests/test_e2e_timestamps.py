"""Checkpoint timestamps from the federation's TSA: checked by OpenSSL, and fail-closed."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from xroad_hub.dev.testing import TestFederationSpec, free_port
from xroad_hub.pki import load_cert
from xroad_hub.protocol.checkpoint import Checkpoint

from .conftest import Fed, start_federation
from .sqlite_db import sqlite_db

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
ECHO = "/r1/TH/GOV/DBD/registry/echo"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}


async def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=30, check=False
    )


async def test_openssl_verifies_a_real_checkpoint_timestamp(fed: Fed, http, tmp_path) -> None:
    async with http.get(fed.url(DGA) + ECHO, headers=DEV) as r:
        assert r.status == 200
    await fed.federation.nodes[DBD].checkpointer.checkpoint()
    with sqlite_db(fed.federation.nodes[DBD].runtime.log.path) as conn:
        size, root, token = conn.execute(
            "SELECT size, root, timestamp_token FROM checkpoint"
            " WHERE timestamp_token IS NOT NULL ORDER BY size DESC"
        ).fetchone()
    text = Checkpoint(f"xroad-hub/{DBD}", size, bytes(root)).text()
    (tmp_path / "checkpoint.txt").write_text(text)
    (tmp_path / "token.tsr").write_bytes(bytes(token))
    tsa = load_cert(fed.pki.tsa.cert).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "tsa.pem").write_bytes(tsa)
    root = str(fed.pki.root_ca.cert)
    cmd = ["openssl", "ts", "-verify", "-in", str(tmp_path / "token.tsr"),
           "-CAfile", root, "-untrusted", str(tmp_path / "tsa.pem")]  # fmt: skip
    ok = await _run([*cmd, "-data", str(tmp_path / "checkpoint.txt")])
    assert "Verification: OK" in ok.stdout, ok.stdout + ok.stderr
    (tmp_path / "forged.txt").write_text(text.replace(f"\n{size}\n", f"\n{size + 1}\n"))
    bad = await _run([*cmd, "-data", str(tmp_path / "forged.txt")])
    assert "Verification: OK" not in bad.stdout
    assert "message imprint mismatch" in (bad.stdout + bad.stderr)


@pytest.fixture
async def strict(tmp_path: Path, echo_backend: str) -> AsyncIterator[Fed]:
    spec = TestFederationSpec(
        backend_url=echo_backend, checkpoint_interval=0.2, timestamp_failure_limit=0.6
    )
    f = await start_federation(tmp_path, spec)
    yield f
    await f.federation.stop()


async def _status(http, fed: Fed) -> tuple[int, str | None]:  # type: ignore[no-untyped-def]
    async with http.get(fed.url(DGA) + ECHO, headers=DEV) as r:
        return r.status, r.headers.get("X-Road-Error")


async def _until(http, fed: Fed, wanted: tuple[int, str | None]) -> None:  # type: ignore[no-untyped-def]
    for _ in range(100):
        if await _status(http, fed) == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never got {wanted}; last {await _status(http, fed)}")


async def test_tsa_outage_fails_closed_and_recovers(strict: Fed, http, monkeypatch) -> None:
    fed = strict
    assert await _status(http, fed) == (200, None)
    node = fed.federation.nodes[DGA]
    good = node.tsa_url
    monkeypatch.setattr(node, "tsa_url", f"http://127.0.0.1:{free_port()}/")
    await _until(http, fed, (500, "Server.ClientProxy.LoggingFailed.TimestamperFailed"))
    # The refusal is the client node's own: nothing was exchanged.
    monkeypatch.setattr(node, "tsa_url", good)
    await _until(http, fed, (200, None))
    # The checkpoints queued during the outage were stamped once the TSA answered.
    for _ in range(50):
        if node.checkpointer.healthy() and not node.checkpointer._unstamped:
            break
        await asyncio.sleep(0.1)
    with sqlite_db(node.runtime.log.path) as conn:
        stamped, total = conn.execute(
            "SELECT COUNT(timestamp_token), COUNT(*) FROM checkpoint"
        ).fetchone()
    assert stamped >= total - 1 and stamped >= 2  # (one may be between signing and stamping)
