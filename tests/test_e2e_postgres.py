"""A provider node that logs to PostgreSQL, end to end (fails, not skips, under CI)."""

from __future__ import annotations

import uuid

import asyncpg

from xroad_hub.dev.testing import TestFederationSpec

from .conftest import start_federation
from .messagelog_backends import PG_DSN, postgres_or_skip

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"


async def test_exchange_logged_in_postgres_with_checkpoint(tmp_path, echo_backend, http) -> None:
    await postgres_or_skip()
    fed = await start_federation(
        tmp_path, TestFederationSpec(backend_url=echo_backend, provider_log_dsn=PG_DSN)
    )
    node = fed.federation.nodes[DBD]
    schema = node.runtime.log.schema
    try:
        mid = "pg-" + uuid.uuid4().hex
        async with http.get(fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/1101700203450",
                            headers={"X-Road-Client": "TH/GOV/DGA/devportal",
                                     "X-Road-Id": mid}) as r:  # fmt: skip
            assert r.status == 200
        rows = await node.runtime.log.find(mid)
        assert [r["status"] for r in rows] == [200]
        assert await node.checkpointer.checkpoint() is not None
    finally:
        await fed.federation.stop()
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
