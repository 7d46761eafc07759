"""Global groups (X-Road): subsystems grouped by the central server, published in the global
configuration, granted access rights by a provider's node; membership is read per request
from the configuration in force."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from xroad_hub.central.server import CentralServer
from xroad_hub.dev.testing import TestFederationSpec
from xroad_hub.protocol.globalconf import GlobalConf, verify_globalconf
from xroad_hub.protocol.identifiers import NodeId, parse_client_id, parse_member_id
from xroad_hub.protocol.registration import RegistrationError, new_request, sign_request

from .conftest import Fed, start_federation
from .test_central import MOPH, _auth_reg
from .test_central import central as central  # a fixture, shared
from .test_service_admin import DBD, DEV, PROVIDER, _admin, _call, _register
from .test_service_admin import deeds_backend as deeds_backend  # a fixture, shared


def test_the_central_server_publishes_its_global_groups(central: CentralServer) -> None:
    # Without groups, the configuration's document is as it was before groups existed.
    assert "groups" not in central.globalconf().to_dict()
    data, keys = _auth_reg()
    request_id, _ = central.file(data)
    central.approve(request_id, "officer")
    server = NodeId(parse_member_id(MOPH), "hub1")
    hospital = f"{MOPH}/hospital"
    client_id, _ = central.file(
        sign_request(
            new_request("clientReg", "TH", server, client=hospital), {"auth": keys["auth"]}
        )
    )
    central.approve(client_id, "officer")
    with pytest.raises(RegistrationError, match="not a subsystem registered here"):
        central.change_group("hospitals", "officer", add=(f"{MOPH}/unknown",))
    assert central.change_group("hospitals", "officer", add=(hospital,)) == {
        parse_client_id(hospital)
    }
    signed = central.signed_globalconf()
    conf = verify_globalconf(signed, central.signer_cert)
    assert conf.groups == {"hospitals": frozenset({parse_client_id(hospital)})}
    assert not conf.same_rules(GlobalConf.from_dict({**conf.to_dict(), "groups": []}))
    central.change_group("hospitals", "officer", remove=(hospital,))
    assert central.global_groups() == {"hospitals": frozenset()}
    central.change_group("hospitals", "officer", delete=True)
    assert central.global_groups() == {}
    actions = [e.action for e in central.store.audit_entries()]
    assert actions[-3:] == ["group.change", "group.change", "group.remove"]


@pytest.fixture
async def gfed(tmp_path: Path, echo_backend: str) -> AsyncIterator[Fed]:
    spec = TestFederationSpec(
        backend_url=echo_backend, global_groups={"portals": [DEV["X-Road-Client"]]}
    )
    f = await start_federation(tmp_path / "fed", spec)
    yield f
    await f.federation.stop()


async def test_a_grant_to_a_global_group_admits_its_members(
    gfed: Fed, http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    status, answer, _ = await _admin(http, gfed, "POST", "/services", _register(deeds_backend))
    assert status == 201, answer
    deed = f"{PROVIDER}/getDeed"
    path = f"/r1/{PROVIDER}/getDeed/deeds/G-1"
    assert "AccessDenied" in json.dumps((await _call(http, gfed, path))[1])
    status, answer, _ = await _admin(
        http, gfed, "POST", "/access", {"service": deed, "to": "global:nope"}
    )
    assert status == 404 and "no global group" in answer["error"], answer
    status, answer, _ = await _admin(
        http, gfed, "POST", "/access", {"service": deed, "to": "global:portals"}
    )
    assert status == 200 and answer["global_groups"] == ["portals"], answer
    assert (await _call(http, gfed, path))[0] == 200
    status, listed, _ = await _call(http, gfed, f"/r1/{PROVIDER}/allowedMethods")
    assert "getDeed" in json.dumps(listed)
    status, answer, _ = await _admin(
        http, gfed, "POST", "/access/revoke", {"service": deed, "to": "global:portals"}
    )
    assert status == 200
    assert "AccessDenied" in json.dumps((await _call(http, gfed, path))[1])
    assert DBD in gfed.endpoints["nodes"]  # type: ignore[operator]


def test_central_group_commands(central: CentralServer) -> None:
    cli = [sys.executable, "-m", "xroad_hub.cli", "central", "group"]
    where = ["--dir", str(central.dir.root)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args, *where], capture_output=True, text=True, check=False)

    out = run("add", "hospitals")
    assert out.returncode == 0 and "0 member(s)" in out.stdout, out.stderr
    out = run("add-member", "hospitals", f"{MOPH}/nowhere")
    assert out.returncode != 0 and "not a subsystem registered here" in out.stderr
    assert "Traceback" not in out.stderr
    out = run("list")
    assert out.returncode == 0 and "hospitals\t(no members)" in out.stdout
    assert central.globalconf().groups == {"hospitals": frozenset()}
