"""Helpers for tests that run the central server and nodes as separate processes
(``xroad-hub central run``, ``xroad-hub node run --dir``), the way agencies run them."""

from __future__ import annotations

import ctypes
import json
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

from xroad_hub.dev.testing import free_port

__all__ = [
    "Proc", "add_client", "backend_server", "die_with_the_tests", "enroll", "get_ok", "healthy",
    "hub", "init_node", "make_central", "wait",
]  # fmt: skip


def _no_orphans() -> Callable[[], None] | None:
    """Started processes get SIGTERM when the test run dies, even by SIGKILL or a CI
    timeout, so that no central server or node outlives it holding ports and files (Linux:
    PR_SET_PDEATHSIG; elsewhere only the tests' own clean-up stops them)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child

    def set_parent_death_signal() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return set_parent_death_signal


die_with_the_tests = _no_orphans()


def hub(*args: str | Path, check: bool = True, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "xroad_hub.cli", *map(str, args)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"xroad-hub {args} failed: {done.stdout}{done.stderr}")
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout + done.stderr


class Proc:
    """A long-running ``xroad-hub`` process whose output goes to a file (never a pipe that
    could fill up and stall it)."""

    def __init__(self, log: Path, *args: str | Path) -> None:
        self.log = log
        self._out: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xroad_hub.cli", *map(str, args)],
            stdout=self._out, stderr=subprocess.STDOUT, preexec_fn=die_with_the_tests,
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


@contextmanager
def backend_server() -> Iterator[str]:
    """A small REST backend: GET .../ID answers {"company": ID, "status": "active"}."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def wait(what: str, ready: Callable[[], bool], procs: list[Proc], timeout: float = 60) -> None:
    """Until ``ready()``; fails early, with its output, if one of ``procs`` exited."""
    deadline = time.monotonic() + timeout
    while not ready():
        for p in procs:
            assert p.alive(), f"{p.log.name} exited while waiting for {what}:\n{p.text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def get_ok(url: str) -> bool:
    """Whether ``url`` answers 200 (TLS unchecked: only whether a server is up)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def make_central(
    root: Path, members: dict[str, str], validity: int = 30, init: tuple[str, ...] = ()
) -> tuple[Path, str, Path]:
    """``central init`` (short configuration validity, for tests that wait for refreshes),
    ``central member add`` for each of ``members`` (id: name) and ``central anchor``:
    (central directory, its URL, the anchor file); ``init``: more ``central init`` options
    (``--db DSN``). Start it with ``Proc(..., "central",
    "run", "--dir", cdir)``."""
    cdir, anchor = root / "central", root / "anchor.json"
    url = f"https://127.0.0.1:{free_port()}"
    hub("central", "init", "--dir", cdir, "--instance", "TH", "--url", url,
        "--validity", str(validity), *init)  # fmt: skip
    for member, name in members.items():
        hub("central", "member", "add", member, "--name", name, "--dir", cdir)
    hub("central", "anchor", "--dir", cdir, "-o", anchor)
    return cdir, url, anchor


def init_node(anchor: Path, ndir: Path, member: str, peer: int, code: str = "hub1") -> str:
    """``node init``; the registration request's id."""
    out = hub("node", "init", "--anchor", anchor, "--member", member, "--code", code,
              "--dir", ndir, "--address", f"127.0.0.1:{peer}")  # fmt: skip
    return out.split("registration request ", 1)[1].split()[0]


def add_client(cdir: Path, ndir: Path, subsystem: str) -> None:
    """``node client add`` and the central operator's approval."""
    out = hub("node", "client", "add", subsystem, "--dir", ndir)
    hub("central", "approve", out.split("request ", 1)[1].split()[0], "--dir", cdir)


def enroll(
    cdir: Path, anchor: Path, ndir: Path, member: str, subsystem: str, peer: int,
    code: str = "hub1",
) -> None:  # fmt: skip
    """``node init``, approval, ``enroll fetch``, ``node client add``, approval."""
    hub("central", "approve", init_node(anchor, ndir, member, peer, code), "--dir", cdir)
    hub("node", "enroll", "fetch", "--dir", ndir)
    add_client(cdir, ndir, subsystem)


def r1_get(client_url: str, service: str, client: str) -> tuple[int, bytes, str]:
    """(status, body, X-Road-Id) of one r1 GET of ``client`` to record 0105536000011 of
    ``service``."""
    req = urllib.request.Request(
        f"{client_url}/r1/{service}/0105536000011", headers={"X-Road-Client": client}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers.get("X-Road-Id", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ""


def provider_and_client_nodes(
    tmp_path: Path, cdir: Path, anchor: Path, backend: str, *, provider: str, client: str,
    service: str,
) -> tuple[Path, Path, int, int]:  # fmt: skip
    """Two enrolled node directories: the provider's, serving ``service`` from ``backend``
    to ``client`` only, and the client's, where ``client`` connects over loopback HTTP.
    Returns (provider dir, client dir, provider's health port, client's r1 port)."""
    adir, bdir = tmp_path / "provider-node", tmp_path / "client-node"
    a_health, b_client = free_port(), free_port()
    enroll(cdir, anchor, adir, provider, service.rsplit("/", 1)[0], free_port())
    enroll(cdir, anchor, bdir, client.rsplit("/", 1)[0], client, free_port())
    (adir / "node.toml").write_text(
        f'[node]\nhealth_listen = "127.0.0.1:{a_health}"\ncheckpoint_interval = 1\n'
        f'[[node.service]]\nid = "{service}"\nurl = "{backend}/companies"\n'
        f'allow = ["{client}"]\nanswer_subject = []\n'
    )
    (bdir / "node.toml").write_text(
        f'[node]\nclient_listen = "127.0.0.1:{b_client}"\ncheckpoint_interval = 1\n'
        f'[[node.client]]\nid = "{client}"\nauth = "http"\n'
    )
    return adir, bdir, a_health, b_client
