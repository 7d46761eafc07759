"""The message log benchmark runs on both backends and reports every figure.

Only that it works is checked, never how fast: timings on a shared test machine are noise.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

pytest_plugins = ["tests.messagelog_backends"]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_messagelog.py"


def test_bench_messagelog_help() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "--smoke" in proc.stdout
    assert "durable appends/s" in proc.stdout


@pytest.fixture
async def other_snapshot() -> AsyncIterator[None]:
    """Another session's open snapshot, as another test worker's transaction would hold.

    While it is open, row versions deleted or updated after it began are "recently dead":
    no VACUUM, FULL or not, may remove them, so a size measured after one must not count on it.
    """
    from tests.messagelog_backends import PG_DSN, postgres_or_skip

    await postgres_or_skip()  # under CI an unreachable server fails this test
    conn = await asyncpg.connect(PG_DSN)
    try:
        tx = conn.transaction(isolation="repeatable_read")
        await tx.start()
        await conn.fetchval("SELECT 1")  # the snapshot is taken by the first query
        held = await conn.fetchval(
            "SELECT backend_xmin FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        assert held is not None  # else this fixture would hold nothing back
        yield
        await tx.rollback()
    finally:
        await conn.close()


async def test_bench_messagelog_smoke_run(other_snapshot: None) -> None:
    # Imported here: pytest has loaded the module as a plugin by now (see that module).
    from tests.messagelog_backends import PG_DSN

    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--smoke", "--dsn", PG_DSN,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    output = f"stdout:\n{out.decode()[-3000:]}\nstderr:\n{err.decode()[-3000:]}"
    assert proc.returncode == 0, output
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["ok"] is True, output
    assert report["baseline_sqlite3_100_per_commit"]["rows_per_s"] > 0, output
    for backend in ("sqlite", "postgres"):
        figures = report[backend]
        assert figures["appends"] == 640, output
        assert figures["appends_per_s"] > 0, output
        assert figures["mean_batch"] > 1, output  # group commit happened
        assert 0 < figures["bytes_per_exchange"] <= figures["bytes_per_exchange_with_bodies"]
    assert set(report["postgres_insert_methods"]) == {
        f"{method}_{size}" for method in ("executemany", "unnest", "copy") for size in (4, 128)
    }, output
    assert report["postgres_server"]["fsync"] in ("on", "off"), output
