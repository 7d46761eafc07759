"""scripts/demo.sh's workflow (``python -m xroad_hub.demo.workflow``): the demo federation set
up the way agencies set one up (central server, each node enrolled in its own directory with
its own keys, requests approved), the central server and every node each a process of its
own; stopped with SIGTERM, everything stops and the logs verify; run again, it resumes
without enrolling anything twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest

from case_service.auth import load_idp_key
from case_service.config import load_settings
from case_service.hub import client_ssl_context
from xroad_hub.dev.testing import on_free_ports
from xroad_hub.packaged import demo_federation

from .separate_procs import die_with_the_tests, hub
from .test_case_service_config import example_paths

pytestmark = pytest.mark.slow

DGA, DBD, BMA = "TH/GOV/DGA/hub1", "TH/GOV/DBD/hub1", "TH/GOV/BMA/hub1"
RD = "TH/GOV/RD/hub1"  # a flat-file service: registered from the agency's export folder
REPO = Path(__file__).resolve().parent.parent


class Workflow:
    def __init__(self, config: Path, data: Path, log: Path) -> None:
        self.data, self.log = data, log
        self._out: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xroad_hub.demo.workflow", "--config", str(config),
             "--data-dir", str(data), "--nodes", f"{DGA},{DBD},{BMA},{RD}",
             "--refresh-interval", "5"],
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
            preexec_fn=die_with_the_tests,
        )  # fmt: skip

    def up(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:  # this run's endpoints, not a killed run's left behind
            try:
                endpoints = dict(json.loads((self.data / "endpoints.json").read_text()))
                if endpoints["processes"]["workflow"] == self.proc.pid:
                    return endpoints
            except (OSError, ValueError):
                pass
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the demo did not come up:\n" + self.log.read_text()
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=40)
        finally:
            if not self._out.closed:
                self._out.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _each_approved_once(requests: str) -> None:
    """Four nodes and their five subsystems approved once each, nothing pending, and the one
    mTLS client's certificate issued once (recorded as an approved clientCert request)."""
    kinds = [line.split("\t")[2] for line in requests.splitlines() if line.strip()]
    assert sorted(kinds) == sorted(["authCertReg"] * 4 + ["clientReg"] * 5 + ["clientCert"]), (
        requests
    )
    assert requests.count("\tAPPROVED\t") == len(kinds), requests


def _exchange(endpoints: dict[str, Any]) -> dict[str, Any]:
    """One r1 request of DGA's dev portal, through DGA's node and DBD's, to DBD's registry."""
    with urllib.request.urlopen(
        f"{endpoints['backends']['dbd-registry']}/companies?limit=1", timeout=10
    ) as resp:
        jid = json.loads(resp.read())["juristic_ids"][0]
    req = urllib.request.Request(
        f"{endpoints['nodes'][DGA]['client']}/r1/TH/GOV/DBD/registry/companies/{jid}",
        headers={"X-Road-Client": "TH/GOV/DGA/devportal",
                 "X-Road-Purpose": "citizen-self-service"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        answer = dict(json.loads(resp.read()))
    assert answer["juristic_id"] == jid, answer
    return answer


def _licensing_client(root: Path, endpoints: dict[str, Any], jid: str) -> None:
    """BMA's licensing system, with the key it made and the certificate the central CA issued
    it (registered on BMA's node over its admin API), where the case service's example
    configuration names them, exchanges over mTLS."""
    (root / "case_service").mkdir()
    shutil.copy(REPO / "case_service" / "config.example.toml", root / "case_service")
    settings = load_settings(root / "case_service" / "config.example.toml")
    for key, (configured, _) in example_paths(settings, root / "var" / "demo").items():
        assert configured is not None and configured.is_file(), key
    load_idp_key(settings.idp_public_key)
    assert settings.tls_cert and settings.tls_key and settings.tls_ca
    ctx = client_ssl_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
    assert stat.S_IMODE(settings.tls_key.stat().st_mode) == 0o600
    req = urllib.request.Request(
        f"{endpoints['nodes'][BMA]['client_tls']}/r1/TH/GOV/DBD/registry/companies/{jid}",
        headers={"X-Road-Client": settings.client_id},  # its registered default purpose
    )
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
            assert json.loads(resp.read())["juristic_id"] == jid
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{exc.code} {exc.read()!r}") from None


def test_demo_runs_each_node_as_its_own_process_and_resumes(tmp_path: Path) -> None:
    config = on_free_ports(demo_federation(), tmp_path / "federation.toml")
    data = tmp_path / "var" / "demo"  # as in the repository, for the case service's example
    started = time.monotonic()
    run = Workflow(config, data, tmp_path / "first.log")
    try:
        endpoints = run.up()
        up_after = time.monotonic() - started
        procs = endpoints["processes"]
        pids = [procs["central"], procs[DGA], procs[DBD], procs[BMA], run.proc.pid]
        assert len(set(pids)) == 5, procs
        for node in (DGA, DBD, BMA):
            ndir = data / "nodes" / node
            cmdline = Path(f"/proc/{procs[node]}/cmdline").read_bytes().split(b"\0")
            assert [b"node", b"run", b"--dir", str(ndir).encode()] == cmdline[3:7], cmdline
            # The node's keys were made in its own directory, and only there.
            for key in ("auth", "sign", "checkpoint"):
                assert stat.S_IMODE((ndir / f"{key}.key.pem").stat().st_mode) == 0o600
            assert not (data / "central" / f"{node.replace('/', '_')}.key.pem").exists()
        assert not (tmp_path / "certs").exists()  # no development PKI anywhere
        # No node reads a client, service or access right from a file: its administrator
        # registered them over its admin API, where they are now.
        for node in (DGA, DBD, BMA):
            settings = tomllib.loads((data / "nodes" / node / "node.toml").read_text())
            assert not {"client", "service", "soap_service"} & set(settings["node"]), settings
        admin = ["--admin", endpoints["nodes"][DBD]["admin"], "--key-file",
                 data / "admin" / "TH" / "GOV" / "DBD" / "hub1.key", "--json"]  # fmt: skip
        (service,) = json.loads(hub("node", "service", "list", *admin))["services"]
        assert service["service"] == "TH/GOV/DBD/registry/companies"
        assert service["declared_by"] == "admin API"
        assert sorted(service["allow"]) == sorted(
            ["TH/GOV/DGA/citizenportal", "TH/GOV/DGA/devportal", "TH/GOV/BMA/licensing"]
        )
        answer = _exchange(endpoints)
        _licensing_client(tmp_path, endpoints, answer["juristic_id"])
        # The central operator approved each node and each subsystem it hosts, once.
        _each_approved_once(hub("central", "requests", "--all", "--dir", data / "central"))
    finally:
        code = run.stop()
    assert code == 0, (tmp_path / "first.log").read_text()
    assert not any(_alive(p) for p in pids[:4]), "a process outlived the demo"
    assert not (data / "endpoints.json").exists()
    # Stopped cleanly: DBD's node wrote a final checkpoint, witnessed and timestamped.
    out = hub("audit", "verify", data / "nodes" / DBD / "data" / "messagelog.sqlite",
              "--root-ca", data / "ca" / "root.cert.pem")  # fmt: skip
    summary = out.strip().splitlines()[-1]
    assert summary.endswith(": OK") and " 0 witnessed" not in summary, out

    # A run that stopped part-way (DGA's certificates not fetched, DBD's settings not written)
    # is resumed: nothing is enrolled twice, and the federation serves again.
    (data / "nodes" / DGA / "auth.cert.pem").unlink()
    (data / "nodes" / DBD / "node.toml").unlink()
    again = Workflow(config, data, tmp_path / "second.log")
    try:
        endpoints = again.up()
        assert endpoints["processes"][DGA] not in pids
        _exchange(endpoints)
        # Killed outright, the script cannot stop what it started: the next run does.
        again.proc.kill()
        again.stop()
        left = [p for n, p in endpoints["processes"].items() if n != "workflow"]
        assert all(_alive(p) for p in left)
        third = Workflow(config, data, tmp_path / "third.log")
        try:
            _exchange(third.up())
            assert not any(_alive(p) for p in left), "the killed run's processes still run"
        finally:
            code = third.stop()
    finally:
        again.stop()
    assert code == 0, (tmp_path / "third.log").read_text()
    _each_approved_once(hub("central", "requests", "--all", "--dir", data / "central"))
    print(f"\ndemo workflow (3 nodes) up in {up_after:.1f} s; whole test "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
