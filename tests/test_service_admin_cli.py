"""Issue 13 end to end with the command line: the registry and each node run in processes
of their own, the administrator uses ``xroad-hub node service|access|group|settings|
status`` (each a process of its own), and a portal calls what was registered: a REST service
from its OpenAPI document, a legacy SOAP service from its WSDL and a CSV export, within a
second of registration, while an ungranted client gets AccessDenied."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.testing import (
    TEST_ADMIN_KEYS,
    TestFederationSpec,
    free_port,
    write_federation,
)
from xroad_hub.federation import load_federation
from xroad_hub.node.admin import key_digest
from xroad_hub.pki import PkiLayout, load_private_key
from xroad_hub.protocol.thaiid import with_check_digit

from .separate_procs import Proc, backend_server, enroll, get_ok, healthy, hub, make_central, wait
from .soap_legacy import CITIZEN, LegacyServer
from .test_service_admin import DEEDS_OPENAPI, OWNER
from .test_service_admin import deeds_backend as deeds_backend  # a fixture, shared

CLI = [sys.executable, "-m", "xroad_hub.cli"]
DBD, DGA = "TH/GOV/DBD/hub1", "TH/GOV/DGA/hub1"
PROVIDER = "TH/GOV/DBD/registry"
DEV = "TH/GOV/DGA/devportal"
PORTAL = "TH/GOV/DGA/citizenportal"
BENEFICIARY = with_check_digit("310060012345")
LAYOUT = """
name = "welfare"
description = "Welfare-card holders, a monthly CSV export"
format = "csv"
encoding = "utf-8"
header = true
keys = ["citizen_id"]

[[field]]
name = "citizen_id"
type = "citizen_id"
required = true

[[field]]
name = "card_status"
"""


# One component of the federation in a process of its own (Federation's ``only``): the
# registry (with the TSA and witness), or one node; each with a data directory of its own.
_COMPONENT = """
import asyncio, signal, sys
from pathlib import Path
from xroad_hub.demo.runner import Federation
from xroad_hub.federation import load_federation
from xroad_hub.node.admin import key_digest
from xroad_hub.logs import configure_logging

async def main(config, only, data):
    configure_logging("warning", json=True)
    config = Path(config)
    fed = Federation(load_federation(config), config.parent / "certs", Path(data),
                     only=frozenset([only]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await fed.start()
        print("ready", flush=True)
        await stop.wait()
    finally:
        await fed.stop()

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture
async def running(tmp_path: Path, echo_backend: str) -> AsyncIterator[tuple[dict[str, Any], Path]]:
    """The federation as separate processes: the registry, and each node in its own."""
    cfg = write_federation(tmp_path / "federation.toml", TestFederationSpec(echo_backend))
    ensure_pki(load_federation(cfg), tmp_path / "certs")
    procs: list[asyncio.subprocess.Process] = []
    nodes: dict[str, Any] = {}
    try:
        for component in ("registry", DGA, "TH/GOV/BMA/hub1", DBD):
            data = tmp_path / f"data-{component.replace('/', '_')}"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _COMPONENT, str(cfg), component, str(data),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                _, err = await proc.communicate()
                raise AssertionError(f"{component} did not start: {err.decode()[-2000:]}")
            nodes.update(json.loads((data / "endpoints.json").read_text())["nodes"])
        yield {"nodes": nodes}, tmp_path
    finally:
        for proc in reversed(procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()[-2000:]


def _cli(admin: str, *args: str, key: str = "services") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XROAD_HUB_ADMIN_KEY": TEST_ADMIN_KEYS[key][0]}
    command = [*CLI, "node", *args[:2], "--admin", admin, *args[2:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


async def _call(
    http: aiohttp.ClientSession, client_url: str, path: str, client: str = DEV, **kw: Any
) -> tuple[int, str]:
    method = "POST" if "json" in kw else "GET"
    kw.setdefault("headers", {"X-Road-Client": client})
    async with http.request(method, client_url + path, **kw) as r:
        return r.status, await r.text()


async def test_an_agency_registers_rest_soap_and_csv_services_by_cli(
    running: tuple[dict[str, Any], Path],
    legacy_soap: LegacyServer,
    http: aiohttp.ClientSession,
    deeds_backend: str,
) -> None:
    endpoints, tmp = running
    admin = endpoints["nodes"][DBD]["admin"]
    client = endpoints["nodes"][DGA]["client"]
    openapi = tmp / "deeds.openapi.json"
    openapi.write_text(json.dumps(DEEDS_OPENAPI))
    layout = tmp / "welfare.layout.toml"
    layout.write_text(LAYOUT)
    export = tmp / "welfare.csv"
    export.write_text(f"citizen_id,card_status\n{BENEFICIARY},active\n")

    out = _cli(admin, "service", "add", "--provider", PROVIDER, "--openapi", str(openapi),
               "--url", deeds_backend, "--answer-subject", "json:owner.citizen_id",
               "--allow", DEV, "--version", "v1")  # fmt: skip
    t_rest = time.monotonic()
    assert out.returncode == 0, out.stderr
    # What was registered, and what clients call.
    assert f"{PROVIDER}/getDeed  version v1" in out.stdout
    assert "answer subject: json:owner.citizen_id" in out.stdout
    assert f"clients call: <their node>/r1/{PROVIDER}/getDeed/deeds/{{deedNo}}" in out.stdout
    status, text = await _call(http, client, f"/r1/{PROVIDER}/getDeed/deeds/D-7")
    assert status == 200 and OWNER in text, text
    assert time.monotonic() - t_rest < 1.0 + 0.5  # the CLI's own exit included

    out = _cli(admin, "service", "add", "--provider", PROVIDER, "--wsdl", legacy_soap.wsdl_url,
               "--mode", "bridge", "--answer-subject", "xml:citizenId", "--allow", DEV)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"{PROVIDER}/getPerson" in out.stdout
    status, text = await _call(
        http, client, f"/r1/{PROVIDER}/getPerson", json={"citizenId": CITIZEN}
    )
    assert status == 200 and CITIZEN in text, text

    out = _cli(admin, "service", "add", "--provider", PROVIDER, "--layout", str(layout),
               "--file", str(export), "--answer-subject", "json:records[*].citizen_id",
               "--allow", DEV)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"{PROVIDER}/records" in out.stdout
    status, text = await _call(http, client, f"/r1/{PROVIDER}/records/records/{BENEFICIARY}")
    assert status == 200 and "active" in text, text
    # The export's generated OpenAPI description (getOpenAPI answered 500 before).
    status, text = await _call(http, client, f"/r1/{PROVIDER}/getOpenAPI?serviceCode=records")
    assert status == 200, text
    described = json.loads(text)
    assert described["openapi"].startswith("3.")
    record = described["components"]["schemas"]["Record"]["properties"]
    assert record["citizen_id"]["format"] == "citizen-id"

    # A client without an access right is refused, each kind of service: the citizens'
    # portal (a JWT over TLS, to the same node).
    pki = PkiLayout(tmp / "certs")
    now = int(time.time())
    for path, kw in (
        (f"/r1/{PROVIDER}/getDeed/deeds/D-7", {}),
        (f"/r1/{PROVIDER}/getPerson", {"json": {"citizenId": CITIZEN}}),
        (f"/r1/{PROVIDER}/records/records/{BENEFICIARY}", {}),
    ):
        claims = {"iss": PORTAL, "aud": DGA, "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
        token = jwt.encode(claims, load_private_key(pki.client_jwt(PORTAL).key), "ES256")
        ctx = ssl.create_default_context(cafile=str(pki.root_ca.cert))
        async with http.request(
            "POST" if kw else "GET",
            endpoints["nodes"][DGA]["client_tls"] + path,
            headers={"X-Road-Client": PORTAL, "Authorization": f"Bearer {token}"},
            ssl=ctx,
            **kw,
        ) as r:
            text = await r.text()
            assert r.status != 200 and "AccessDenied" in text, (path, text)
    out = _cli(admin, "access", "revoke", f"{PROVIDER}/getDeed", DEV)
    assert out.returncode == 0, out.stderr
    status, text = await _call(http, client, f"/r1/{PROVIDER}/getDeed/deeds/D-7")
    assert status != 200 and "AccessDenied" in text, text

    # Disable with a message: clients are told it.
    out = _cli(admin, "service", "disable", f"{PROVIDER}/getPerson", "--message", "upgrade")
    assert out.returncode == 0, out.stderr
    status, text = await _call(
        http, client, f"/r1/{PROVIDER}/getPerson", json={"citizenId": CITIZEN}
    )
    assert "ServiceDisabled" in text and "upgrade" in text, text

    # Purposes declared afterwards: a request naming none is refused, naming them.
    out = _cli(admin, "service", "set", f"{PROVIDER}/records", "--purpose", "welfare-check")
    assert out.returncode == 0 and "purposes: welfare-check" in out.stdout, out.stderr
    status, text = await _call(http, client, f"/r1/{PROVIDER}/records/records/{BENEFICIARY}")
    assert "AccessDenied" in text and "welfare-check" in text, text
    status, text = await _call(
        http, client, f"/r1/{PROVIDER}/records/records/{BENEFICIARY}",
        headers={"X-Road-Client": DEV, "X-Road-Purpose": "welfare-check"},
    )  # fmt: skip
    assert status == 200, text

    # Refusals are messages with a hint, never tracebacks.
    out = _cli(admin, "access", "grant", f"{PROVIDER}/records", "TH/GOV/NOPE/x")
    assert out.returncode == 2 and "not a subsystem of the federation" in out.stderr
    assert "Traceback" not in out.stderr
    out = _cli(admin, "service", "list", key="ops")
    assert out.returncode == 2 and "lacks a role" in out.stderr

    out = _cli(endpoints["nodes"][DGA]["admin"], "clients", "list")
    assert out.returncode == 0 and f"{PORTAL}  jwt" in out.stdout, out.stderr
    out = _cli(admin, "status", "--json")
    assert out.returncode == 0, out.stderr
    status_doc = json.loads(out.stdout)
    assert f"{PROVIDER}/getPerson" in status_doc["disabled"]
    out = _cli(admin, "status")
    assert out.returncode == 0 and f"{PROVIDER}/getPerson" in out.stdout, out.stdout
    assert "4 soap" in out.stdout and "1 flatfile" in out.stdout, out.stdout
    backup = tmp / "backup.json"
    out = _cli(admin, "settings", "export", "--out", str(backup))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert json.loads(backup.read_text())["format"] == "xroad-hub-node-settings/1"
    # Restored: a service removed since comes back, as exported (disabled getPerson too).
    assert _cli(admin, "service", "remove", f"{PROVIDER}/records").returncode == 0
    out = _cli(admin, "settings", "import", str(backup))
    assert out.returncode == 0, out.stderr
    status, text = await _call(
        http, client, f"/r1/{PROVIDER}/records/records/{BENEFICIARY}",
        headers={"X-Road-Client": DEV, "X-Road-Purpose": "welfare-check"},
    )  # fmt: skip
    assert status == 200, text


async def test_disable_enable_remove_under_load_across_processes(
    running: tuple[dict[str, Any], Path], http: aiohttp.ClientSession, deeds_backend: str
) -> None:
    endpoints, _ = running
    admin = endpoints["nodes"][DBD]["admin"] + "/settings"
    client = endpoints["nodes"][DGA]["client"]
    headers = {"Authorization": f"Bearer {TEST_ADMIN_KEYS['services'][0]}"}
    body = {"provider": PROVIDER, "openapi": json.dumps(DEEDS_OPENAPI), "url": deeds_backend,
            "answer_subject": ["json:owner.citizen_id"], "allow": [DEV]}  # fmt: skip
    async with http.post(admin + "/services", json=body, headers=headers) as r:
        assert r.status == 201, await r.text()
    deed = f"{PROVIDER}/getDeed"
    outcomes: list[tuple[float, float, int, str]] = []  # sent, answered, status, body
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            # 0.2 s at the backend each: changes land while requests are in flight.
            sent = time.monotonic()
            status, text = await _call(http, client, f"/r1/{PROVIDER}/getDeed/deeds/L?delay=0.2")
            outcomes.append((sent, time.monotonic(), status, text))

    async def admin_call(method: str, path: str, change: object = None) -> float:
        async with http.request(method, admin + path, json=change, headers=headers) as r:
            assert r.status == 200, await r.text()
        return time.monotonic()

    async def answered_after(at: float) -> None:
        # Phases end once a few requests sent after ``at`` came back, not after fixed
        # sleeps: on a loaded machine a request may take longer than a phase.
        for _ in range(600):
            if sum(1 for sent, *_ in outcomes if sent > at) >= 5:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no answers to requests sent after {at}: {outcomes[-5:]}")

    clients = [asyncio.create_task(load()) for _ in range(8)]
    await answered_after(time.monotonic())
    disabled = await admin_call(
        "PATCH", f"/services/{deed}", {"disabled": True, "disabled_notice": "migration"}
    )
    await answered_after(disabled + 1)
    enabled = await admin_call("PATCH", f"/services/{deed}", {"disabled": False})
    await answered_after(enabled + 1)
    removed = await admin_call("DELETE", f"/services/{deed}")
    await answered_after(removed + 1)
    stop.set()
    await asyncio.gather(*clients)

    def kind(status: int, text: str) -> str:
        if status == 200:
            return "ok"
        if "ServiceDisabled" in text and "migration" in text:
            return "disabled"
        return "unknown" if "UnknownService" in text else f"FAILED {status} {text[:200]}"

    kinds = [(sent, done, kind(status, text)) for sent, done, status, text in outcomes]
    assert not [k for *_, k in kinds if k.startswith("FAILED")], kinds
    # Each change in force within a second: every request sent a second after it and
    # answered before the next change saw it.
    assert {k for sent, done, k in kinds if disabled + 1 < sent and done < enabled} == {"disabled"}
    assert {k for sent, done, k in kinds if enabled + 1 < sent and done < removed} == {"ok"}
    assert {k for sent, _, k in kinds if removed + 1 < sent} == {"unknown"}


@pytest.mark.slow
def test_an_agency_registers_a_service_on_its_node_run_node(tmp_path: Path) -> None:
    """The way agencies run it: the central server and each node (``node run --dir``) in
    processes of their own; the provider's node starts with no service at all, and its
    service administrator registers one from an OpenAPI document."""
    dbd, moph = "TH/GOV/DBD", "TH/GOV/MOPH"
    hospital = f"{moph}/hospital"
    members = {dbd: "Department of Business Development", moph: "Ministry of Public Health"}
    cdir, central_url, anchor = make_central(tmp_path, members)
    procs: list[Proc] = []
    document = tmp_path / "companies.openapi.json"
    document.write_text(json.dumps({
        "openapi": "3.0.3", "info": {"title": "Companies", "version": "1"},
        "paths": {"/companies/{id}": {"get": {"operationId": "getCompany",
                                              "responses": {"200": {"description": "ok"}}}}},
    }))  # fmt: skip
    key_file = tmp_path / "services.key"
    key_file.write_text(TEST_ADMIN_KEYS["services"][0])
    with backend_server() as backend:
        try:
            procs.append(Proc(tmp_path / "central.log", "central", "run", "--dir", cdir))
            wait("the central server", lambda: get_ok(f"{central_url}/globalconf"), procs)
            adir, bdir = tmp_path / "dbd-node", tmp_path / "moph-node"
            a_admin, a_health, b_client = free_port(), free_port(), free_port()
            enroll(cdir, anchor, adir, dbd, f"{dbd}/registry", free_port())
            enroll(cdir, anchor, bdir, moph, hospital, free_port())
            digest = key_digest(TEST_ADMIN_KEYS["services"][0])
            (adir / "node.toml").write_text(
                f'[node]\nhealth_listen = "127.0.0.1:{a_health}"\n'
                f'admin_listen = "127.0.0.1:{a_admin}"\n'
                f'[[node.admin]]\nname = "svc"\nkey_sha256 = "{digest}"\n'
                'roles = ["service-administrator"]\n'
            )
            (bdir / "node.toml").write_text(
                f'[node]\nclient_listen = "127.0.0.1:{b_client}"\n'
                f'[[node.client]]\nid = "{hospital}"\nauth = "http"\n'
            )
            for name, ndir in (("dbd-node", adir), ("moph-node", bdir)):
                procs.append(Proc(tmp_path / f"{name}.log", "node", "run", "--dir", ndir,
                                  "--refresh-interval", "1"))  # fmt: skip
            wait("node A", lambda: healthy(f"http://127.0.0.1:{a_health}"), procs)
            admin = ["node", "service", "add", "--admin", f"http://127.0.0.1:{a_admin}",
                     "--key-file", key_file]  # fmt: skip
            out = hub(*admin, "--provider", f"{dbd}/registry", "--openapi", document, "--url",
                      backend, "--answer-subject", "none", "--allow", hospital)  # fmt: skip
            added = time.monotonic()
            assert f"{dbd}/registry/getCompany" in out, out
            path = f"/r1/{dbd}/registry/getCompany/companies/0105536000011"
            answers: list[int] = []

            def served() -> bool:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{b_client}{path}", headers={"X-Road-Client": hospital}
                )
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        answers.append(resp.status)
                except urllib.error.HTTPError as exc:
                    answers.append(exc.code)
                except (urllib.error.URLError, OSError):
                    return False
                return answers[-1] == 200

            wait("the hospital's first answer", served, procs)
            # In force at once: the node B only needed to be up (it was, or nearly).
            took = time.monotonic() - added
            print(f"\nregistered by CLI -> first answer through the client's node: {took:.2f} s"
                  f" ({len(answers)} request(s))")  # fmt: skip
            assert took < 5, answers
            assert settings_db_private(adir)
            # The registration is on the node's signed administration trail; an edit of it
            # is caught by the node's operator as by an auditor.
            trail = hub("node", "trail", "--dir", adir)
            assert "\tservice.add\t" in trail and "signatures intact" in trail, trail
            kept = adir / "data" / "admin-audit.jsonl"
            kept.write_bytes(kept.read_bytes().replace(b'"service.add"', b'"service.remove"'))
            out = hub("node", "trail", "--dir", adir, check=False)
            assert "does not verify with the node's checkpoint key" in out, out
        finally:
            for p in reversed(procs):
                p.stop()


def settings_db_private(ndir: Path) -> bool:
    found = list(ndir.rglob("node-settings.sqlite"))
    return bool(found) and stat.S_IMODE(found[0].stat().st_mode) == 0o600


def test_a_der_certificate_given_for_a_client_is_a_message_not_a_traceback(
    tmp_path: Path,
) -> None:
    der = tmp_path / "portal.cer"
    der.write_bytes(b"\x30\x82\x01\xff" + bytes(range(256)))  # what a .cer file holds
    out = _cli("http://127.0.0.1:9", "clients", "add", "TH/GOV/DGA/portal", "--auth", "mtls",
               "--cert", str(der))  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "is not a PEM file" in out.stderr and "openssl x509 -inform der" in out.stderr
