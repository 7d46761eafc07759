"""A new agency joins a running federation, every program its own process: the central server
(``xroad-hub central run``, also the timestamp authority and the witness) and each node
(``xroad-hub node run --dir``, started from nothing but its own directory). The provider's
node and the central server are never restarted: the provider learns the newcomer from its
next global-configuration refresh. Both logs then verify offline against the central CA,
with checkpoints co-signed by the central server's witness and timestamped by its TSA."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import pytest

from xroad_hub.dev.testing import free_port
from xroad_hub.node.admin import key_digest

pytestmark = pytest.mark.slow

DBD, MOPH = "TH/GOV/DBD", "TH/GOV/MOPH"
SERVICE = f"{DBD}/registry/companies"
HOSPITAL = f"{MOPH}/hospital"
REFRESH = "1"  # seconds between global-configuration downloads of the nodes


def hub(*args: str | Path, check: bool = True, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "xroad_hub.cli", *map(str, args)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"xroad-hub {args} failed: {done.stdout}{done.stderr}")
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout + done.stderr


class _Proc:
    """A long-running ``xroad-hub`` process whose output goes to a file (never a pipe that
    could fill up and stall it)."""

    def __init__(self, log: Path, *args: str | Path) -> None:
        self.log = log
        self._out: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xroad_hub.cli", *map(str, args)],
            stdout=self._out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self._out.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class _Backend(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"company": self.path.rsplit("/", 1)[-1], "status": "active"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _wait(what: str, ready: object, procs: list[_Proc], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        for p in procs:
            assert p.alive(), f"{p.log.name} exited while waiting for {what}:\n{p.text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _call(client_url: str) -> tuple[int, bytes, str]:
    """(status, body, X-Road-Id) of one r1 request of the hospital to A's service."""
    req = urllib.request.Request(
        f"{client_url}/r1/{SERVICE}/0105536000011", headers={"X-Road-Client": HOSPITAL}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers.get("X-Road-Id", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ""


def _refused(ndir: Path, *expected: str) -> None:
    """``node run`` refuses to start, with a message and a hint, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "xroad_hub.cli", "node", "run", "--dir", str(ndir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "hint:" in done.stderr, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


def _enroll(cdir: Path, anchor: Path, ndir: Path, member: str, subsystem: str,
            peer: int, *, check_refusals: bool = False) -> None:  # fmt: skip
    """``node init``, approval, ``enroll fetch``, ``node client add``, approval."""
    if check_refusals:
        _refused(ndir, "holds no enrollment", "xroad-hub node init")
    out = hub("node", "init", "--anchor", anchor, "--member", member, "--code", "hub1",
              "--dir", ndir, "--address", f"127.0.0.1:{peer}")  # fmt: skip
    request = out.split("registration request ", 1)[1].split()[0]
    if check_refusals:  # half-way: the node says which command completes the enrollment
        _refused(ndir, "no authentication certificate yet", "node enroll fetch --dir")
    hub("central", "approve", request, "--dir", cdir)
    hub("node", "enroll", "fetch", "--dir", ndir)
    if check_refusals:
        _refused(ndir, "node.toml is missing", "[node]")
        (ndir / "node.toml").write_text('[node]\nid = "TH/GOV/DBD/other"\n')
        _refused(ndir, "takes no id", f"{member}/hub1")
    out = hub("node", "client", "add", subsystem, "--dir", ndir)
    hub("central", "approve", out.split("request ", 1)[1].split()[0], "--dir", cdir)


def test_new_agency_joins_a_running_federation(tmp_path: Path, backend: str) -> None:
    cdir, anchor = tmp_path / "central", tmp_path / "anchor.json"
    central_url = f"https://127.0.0.1:{free_port()}"
    # Short validity and refresh: the provider must pick the newcomer up within seconds.
    hub("central", "init", "--dir", cdir, "--instance", "TH", "--url", central_url,
        "--validity", "30")  # fmt: skip
    hub("central", "member", "add", DBD, "--name", "Department of Business Development",
        "--dir", cdir)  # fmt: skip
    hub("central", "anchor", "--dir", cdir, "-o", anchor)
    for name in ("tsa", "witness"):
        assert stat.S_IMODE((cdir / f"{name}.key.pem").stat().st_mode) == 0o600
    procs: list[_Proc] = []
    try:
        central = _Proc(tmp_path / "central.log", "central", "run", "--dir", cdir)
        procs.append(central)

        # The running federation: provider node A, enrolled the same way, serving a REST
        # service whose access rights already name the newcomer's subsystem.
        adir, a_peer, a_health = tmp_path / "dbd-node", free_port(), free_port()
        _wait("the central server", lambda: _get_ok(f"{central_url}/globalconf"), procs)
        _enroll(cdir, anchor, adir, DBD, f"{DBD}/registry", a_peer, check_refusals=True)
        # Its admin API on all interfaces: HTTPS with its enrolled certificate.
        a_admin, admin_key = free_port(), "the-admin-key"
        (adir / "node.toml").write_text(
            f'[node]\nhealth_listen = "127.0.0.1:{a_health}"\ncheckpoint_interval = 1\n'
            f'admin_listen = "0.0.0.0:{a_admin}"\n'
            f'[[node.admin]]\nname = "ops"\nkey_sha256 = "{key_digest(admin_key)}"\n'
            'roles = ["system-administrator"]\n'
            f'[[node.service]]\nid = "{SERVICE}"\nurl = "{backend}/companies"\n'
            f'allow = ["{HOSPITAL}"]\nanswer_subject = []\n'
        )
        node_a = _Proc(tmp_path / "dbd-node.log", "node", "run", "--dir", adir,
                       "--refresh-interval", REFRESH)  # fmt: skip
        procs.append(node_a)
        _wait("node A", lambda: _healthy(f"http://127.0.0.1:{a_health}"), procs)
        a_pid = node_a.proc.pid
        # The admin CLI checks the host name of the node's certificate, not only its CA.
        key_file = tmp_path / "admin.key"
        key_file.write_text(admin_key)
        admin = ["node", "maintenance", "status", "--key-file", key_file,
                 "--root-ca", cdir / "ca.cert.pem", "--admin"]  # fmt: skip
        assert "maintenance mode: off" in hub(*admin, f"https://127.0.0.1:{a_admin}")
        wrong = subprocess.run(
            [sys.executable, "-m", "xroad_hub.cli", *map(str, admin),
             f"https://127.0.0.2:{a_admin}"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert wrong.returncode == 2 and "did not prove it is that host" in wrong.stderr

        # The newcomer joins: every command it takes, timed from 'node init'.
        bdir, b_peer, b_client = tmp_path / "moph-node", free_port(), free_port()
        hub("central", "member", "add", MOPH, "--name", "Ministry of Public Health",
            "--dir", cdir)  # fmt: skip
        started = time.monotonic()
        _enroll(cdir, anchor, bdir, MOPH, HOSPITAL, b_peer)
        for key in ("auth", "sign", "checkpoint"):
            assert stat.S_IMODE((bdir / f"{key}.key.pem").stat().st_mode) == 0o600
        (bdir / "node.toml").write_text(
            f'[node]\nclient_listen = "127.0.0.1:{b_client}"\ncheckpoint_interval = 1\n'
            f'[[node.client]]\nid = "{HOSPITAL}"\nauth = "http"\n'
        )
        node_b = _Proc(tmp_path / "moph-node.log", "node", "run", "--dir", bdir,
                       "--refresh-interval", REFRESH)  # fmt: skip
        procs.append(node_b)
        client_url = f"http://127.0.0.1:{b_client}"
        answers: list[tuple[int, bytes, str]] = []

        def exchanged() -> bool:
            try:
                answers.append(_call(client_url))
            except (urllib.error.URLError, OSError):
                return False
            return answers[-1][0] == 200

        _wait("the first exchange", exchanged, procs)
        elapsed = time.monotonic() - started
        _, body, message_id = answers[-1]
        assert json.loads(body) == {"company": "0105536000011", "status": "active"}
        print(f"\njoin of {MOPH}: node init -> first exchange in {elapsed:.1f} s "
              f"(7 commands: node init, approve, enroll fetch, client add, approve, node run, "
              f"first request; {len(answers)} request(s) until A refreshed)")  # fmt: skip
        # Nothing else was restarted.
        assert node_a.alive() and node_a.proc.pid == a_pid and central.alive()
        assert f"{MOPH}/hub1" in node_b.text() and f"{DBD}/hub1" in node_a.text()

        # Stopped with SIGTERM, both write a final checkpoint, witnessed and timestamped.
        for p in (node_b, node_a):
            assert p.stop() == 0, p.text()
        env = {**os.environ, "SSL_CERT_FILE": str(cdir / "ca.cert.pem")}
        for ndir in (adir, bdir):
            out = hub("audit", "verify", ndir / "data" / "messagelog.sqlite",
                      "--root-ca", cdir / "ca.cert.pem", "--witness", central_url,
                      env=env)  # fmt: skip
            assert out.rstrip().endswith(": OK"), out
            assert "compared with the witness checkpoint" in out, out
            summary = out.strip().splitlines()[-1]
            assert summary.startswith("1 entries"), summary
            assert " 0 witnessed" not in summary and " 0 timestamped" not in summary, summary
            # One exchange's evidence, with nothing but the central server's CA certificate.
            bundle = ndir / "evidence.json"
            hub("audit", "export", message_id, ndir / "data" / "messagelog.sqlite",
                "-o", bundle)  # fmt: skip
            out = hub("audit", "verify-bundle", bundle, "--root-ca", cdir / "ca.cert.pem")
            assert out.startswith("VERIFIED") and "co-signed by TH/registry" in out, out
    finally:
        for p in reversed(procs):
            p.stop()


def _get_ok(url: str) -> bool:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # only: is it up?
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
