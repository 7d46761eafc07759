"""A node never goes back to an older global configuration, not even after a restart: whoever
sits between it and the central server could otherwise replay a still validly signed one from
before a revocation, and the node would believe it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from xroad_hub.demo.runner import Federation
from xroad_hub.dev.testing import TestFederationSpec
from xroad_hub.federation import load_federation
from xroad_hub.node.globalconf_client import GlobalConfClient
from xroad_hub.pki import load_cert, load_private_key
from xroad_hub.protocol.globalconf import GlobalConfError, sign_globalconf

from .conftest import start_federation

DGA = "TH/GOV/DGA/hub1"
ECHO = "/r1/TH/GOV/DBD/registry/echo"
STATE = Path("nodes/TH/GOV/DGA/hub1/globalconf-accepted.json")


async def _until(check, limit: float = 10) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_a_restarted_node_refuses_an_older_configuration(
    tmp_path: Path, echo_backend: str
) -> None:
    root = tmp_path / "fed"
    fed = await start_federation(root, TestFederationSpec(backend_url=echo_backend, refresh=0.2))
    signer = load_private_key(fed.pki.globalconf_signer.key)
    try:
        registry = fed.federation.registry
        assert registry is not None
        # Signed now, still valid for minutes: what a replaying attacker keeps.
        old_conf = registry.current()
        old = sign_globalconf(old_conf, signer)
        gc = fed.federation.nodes[DGA].globalconf
        await _until(lambda: (c := gc.current()) is not None and c.serial > old_conf.serial)
        newest = gc.current()
        assert newest is not None
    finally:
        await fed.federation.stop()
    state = root / "data" / STATE
    assert json.loads(state.read_text())["serial"] >= newest.serial
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600

    # The node restarts; on the registry's address, someone serves the older document.
    served = {"body": old}

    async def globalconf(_: web.Request) -> web.Response:
        return web.Response(body=served["body"], content_type="application/json")

    app = web.Application()
    app.router.add_get("/globalconf", globalconf)
    runner = web.AppRunner(app)
    await runner.setup()
    host, port = fed.federation.fed.registry.listen
    await web.TCPSite(runner, host, port).start()
    federation = Federation(
        load_federation(root / "federation.toml"),
        root / "certs",
        root / "data",
        only=frozenset({DGA}),
    )
    try:
        await federation.start()
        gc = federation.nodes[DGA].globalconf
        await _until(lambda: gc.refresh_failures > 0)
        assert gc.current() is None, "the replayed older configuration was installed"
        assert gc.last_error is not None and "older than serial" in gc.last_error
        # The node says why it cannot serve, and does not serve.
        url = federation.endpoints["nodes"][DGA]["client"]  # type: ignore[index]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}{ECHO}", headers={"X-Road-Client": "TH/GOV/DGA/devportal"}) as r,
        ):
            assert r.headers.get("X-Road-Error") == "Server.ClientProxy.OutdatedGlobalConf"
        # The genuine, newer configuration is accepted again as soon as it is served.
        fresh = registry.current()
        served["body"] = sign_globalconf(fresh, signer)
        await _until(lambda: (c := gc.current()) is not None and c.serial == fresh.serial)
    finally:
        await federation.stop()
        await runner.cleanup()


async def test_within_one_process_an_older_serial_is_refused(tmp_path: Path) -> None:
    fed_root = tmp_path / "fed"
    fed = await start_federation(fed_root, TestFederationSpec(backend_url="http://127.0.0.1:1"))
    try:
        registry = fed.federation.registry
        assert registry is not None
        signer = load_private_key(fed.pki.globalconf_signer.key)
        anchor = load_cert(fed.pki.globalconf_signer.cert)
        first = sign_globalconf(registry.current(), signer)
        second = sign_globalconf(registry.current(), signer)
    finally:
        await fed.federation.stop()
    state = tmp_path / "accepted.json"
    gc = GlobalConfClient("http://127.0.0.1:1/globalconf", anchor, 1.0, state_path=state)
    held = gc.install(second)
    with pytest.raises(GlobalConfError, match="older"):
        gc.install(first)
    assert gc.current() is held
    # A corrupted memory is not taken for "nothing accepted yet".
    state.write_text("{")
    with pytest.raises(GlobalConfError, match="unreadable"):
        GlobalConfClient("http://127.0.0.1:1/globalconf", anchor, 1.0, state_path=state)
