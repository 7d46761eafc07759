"""Global configuration end to end: expiry stops exchanges, a valid download restores them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from xroad_hub.dev.testing import TestFederationSpec, free_port
from xroad_hub.pki import generate_key
from xroad_hub.protocol.globalconf import GlobalConfError

from .conftest import Fed, start_federation

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
ECHO = "/r1/TH/GOV/DBD/registry/echo"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}


@pytest.fixture
async def short_lived(tmp_path, echo_backend: str) -> AsyncIterator[Fed]:
    f = await start_federation(
        tmp_path, TestFederationSpec(backend_url=echo_backend, validity=1.5, refresh=0.3)
    )
    yield f
    await f.federation.stop()


async def _status(http, fed: Fed) -> tuple[int, str | None]:
    async with http.get(fed.url(DGA) + ECHO, headers=DEV) as r:
        return r.status, r.headers.get("X-Road-Error")


async def _wait_for(http, fed: Fed, wanted: tuple[int, str | None], limit: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while (got := await _status(http, fed)) != wanted:
        assert loop.time() < deadline, f"still {got}, expected {wanted}"
        await asyncio.sleep(0.1)


async def test_expired_configuration_stops_and_recovers(
    short_lived: Fed, http, monkeypatch
) -> None:
    fed = short_lived
    assert await _status(http, fed) == (200, None)
    gc = fed.federation.nodes[DGA].globalconf
    good_url = gc.url
    monkeypatch.setattr(gc, "url", f"http://127.0.0.1:{free_port()}/globalconf")
    await _wait_for(http, fed, (500, "Server.ClientProxy.OutdatedGlobalConf"))
    monkeypatch.setattr(gc, "url", good_url)
    await _wait_for(http, fed, (200, None))


async def test_provider_with_expired_configuration_refuses(
    short_lived: Fed, http, monkeypatch
) -> None:
    fed = short_lived
    gc = fed.federation.nodes[DBD].globalconf
    monkeypatch.setattr(gc, "url", f"http://127.0.0.1:{free_port()}/globalconf")
    await _wait_for(http, fed, (500, "Server.ServerProxy.OutdatedGlobalConf"))


async def test_badly_signed_configuration_is_not_installed(fed: Fed) -> None:
    from xroad_hub.central.registry import Registry
    from xroad_hub.protocol.globalconf import sign_globalconf

    gc = fed.federation.nodes[DGA].globalconf
    before = gc.current()
    conf = Registry(fed.federation.fed, fed.pki).current()
    with pytest.raises(GlobalConfError, match="signature"):
        gc.install(sign_globalconf(conf, generate_key()))
    assert gc.current() is before
