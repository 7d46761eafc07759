"""One-use client tokens stay spent when the node restarts (issue 10, item 8)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import aiohttp

from xroad_hub.demo.runner import Federation
from xroad_hub.dev.testing import TestFederationSpec
from xroad_hub.federation import load_federation

from .conftest import Fed, start_federation

DGA = "TH/GOV/DGA/hub1"
PORTAL = "TH/GOV/DGA/citizenportal"
ECHO = "/r1/TH/GOV/DBD/registry/echo"


async def _get(fed: Fed, token: str) -> tuple[int, str]:
    # A session of its own per call: no connection survives into the restarted node.
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            fed.url(DGA, "client_tls") + ECHO,
            headers={"X-Road-Client": PORTAL, "Authorization": f"Bearer {token}"},
            ssl=fed.client_ssl(),
        ) as r,
    ):
        return r.status, await r.text()


async def test_a_spent_token_is_refused_after_the_node_restarts(
    tmp_path: Path, echo_backend: str
) -> None:
    root = tmp_path / "fed"
    fed = await start_federation(root, TestFederationSpec(backend_url=echo_backend))
    token = fed.token()
    try:
        status, text = await _get(fed, token)
        assert status == 200, text
    finally:
        await fed.federation.stop()

    # The same node, a new process's worth of state: only what it keeps on disk.
    federation = Federation(
        load_federation(root / "federation.toml"), root / "certs", root / "data"
    )
    endpoints = await federation.start()
    again = Fed(root, federation, fed.pki, endpoints)
    try:
        status, text = await _get(again, token)
        assert status == 400 and "replay" in text, text
        status, text = await _get(again, again.token())
        assert status == 200, text
    finally:
        await federation.stop()
    state = next((root / "data").rglob("used-tokens.sqlite"))
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
