"""Retention: configured per node, applied by the checkpoint rounds; proofs stay valid."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.dev.testing import TestFederationSpec, write_federation
from xroad_hub.federation import load_federation
from xroad_hub.messagelog import SQLiteMessageLog
from xroad_hub.node.checkpointer import Checkpointer
from xroad_hub.protocol.checkpoint import NoteSigner

from .logrecords import record


async def test_rounds_purge_bodies_past_retention(tmp_path: Path) -> None:
    log = SQLiteMessageLog(tmp_path / "log.sqlite")
    await log.open()
    try:
        now = time.time()
        await log.append(record(0, now - 3 * 86400))  # three days old
        await log.append(record(1, now))
        head = log.tree_head()
        signer = NoteSigner("node", ed25519.Ed25519PrivateKey.generate())
        cp = Checkpointer("TH/GOV/DBD/hub1", log, signer, b"cert", 60, body_retention=86400)
        await cp._purge_old_bodies()
        old, new = (await log.find("m0"))[0], (await log.find("m1"))[0]
        assert (old["request_body"], old["response_body"]) == (None, None)
        assert (new["request_body"], new["response_body"]) == (b"q", b"a")
        assert log.tree_head() == head
    finally:
        await log.close()


def test_retention_is_configured_in_days(tmp_path: Path) -> None:
    path = write_federation(tmp_path / "f.toml", TestFederationSpec(backend_url="http://x"))
    text = path.read_text().replace(
        'id = "TH/GOV/DBD/hub1"', 'id = "TH/GOV/DBD/hub1"\nbody_retention_days = 30'
    )
    path.write_text(text)
    node = load_federation(path).node("TH/GOV/DBD/hub1")
    assert node.body_retention == 30 * 86400
    assert load_federation(path).node("TH/GOV/DGA/hub1").body_retention is None


async def test_restarted_checkpointer_continues_after_the_last_checkpoint(tmp_path: Path) -> None:
    log = SQLiteMessageLog(tmp_path / "log.sqlite")
    await log.open()
    try:
        await log.append(record(0, time.time()))
        signer = NoteSigner("TH/GOV/DBD/hub1", ed25519.Ed25519PrivateKey.generate())
        first = Checkpointer("TH/GOV/DBD/hub1", log, signer, b"cert", 60)
        await first.start()
        assert await first.checkpoint() is not None
        await first.stop()
        again = Checkpointer("TH/GOV/DBD/hub1", log, signer, b"cert", 60)
        await again.start()
        assert await again.checkpoint() is None  # nothing new: no duplicate, no error
        await again.stop()
    finally:
        await log.close()


async def test_concurrent_checkpoints_sign_and_stamp_each_size_once(tmp_path: Path) -> None:
    """The timer's checkpoint and one asked for meanwhile (an evidence export) overlap while
    the timestamp authority answers: each size is signed and stamped once, no round fails."""
    log = SQLiteMessageLog(tmp_path / "log.sqlite")
    await log.open()
    stamped: list[bytes] = []

    async def slow_tsa(data: bytes) -> bytes:
        await asyncio.sleep(0.05)
        stamped.append(data)
        return b"token"

    try:
        await log.append(record(0, time.time()))
        signer = NoteSigner("TH/GOV/DBD/hub1", ed25519.Ed25519PrivateKey.generate())
        cp = Checkpointer("TH/GOV/DBD/hub1", log, signer, b"cert", 60, timestamper=slow_tsa)
        results = await asyncio.gather(cp.checkpoint(), cp.checkpoint(), cp.checkpoint())
        assert sum(r is not None for r in results) == 1
        assert len(stamped) == 1 and cp.healthy()
    finally:
        await log.close()


async def test_stop_during_a_round_lets_it_finish_stamping(tmp_path: Path) -> None:
    """A node stopped while its timer's checkpoint waits for the timestamp authority: that
    checkpoint still gets its timestamp (a cancelled round left it signed but unstamped, and
    the final checkpoint then had nothing new to sign, so the last exchanges had no
    timestamped checkpoint and could not be exported)."""
    log = SQLiteMessageLog(tmp_path / "log.sqlite")
    await log.open()
    asked = asyncio.Event()

    async def slow_tsa(data: bytes) -> bytes:
        asked.set()
        await asyncio.sleep(0.2)
        return b"token"

    try:
        await log.append(record(0, time.time()))
        signer = NoteSigner("TH/GOV/DBD/hub1", ed25519.Ed25519PrivateKey.generate())
        cp = Checkpointer("TH/GOV/DBD/hub1", log, signer, b"cert", 0.01, timestamper=slow_tsa)
        await cp.start()
        await asyncio.wait_for(asked.wait(), 5)
        await cp.stop()
        assert await log.unstamped_checkpoints() == []
        assert cp.oldest_unstamped() is None
    finally:
        await log.close()
