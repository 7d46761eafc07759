"""The demo federation through the real workflow (``scripts/demo.sh``).

Every agency's node is set up the way an agency would set up its own, with the public
commands (``xroad-hub central ...``, ``xroad-hub node ...``) and then runs as a process of
its own (``xroad-hub node run --dir``); the central server runs as another
(``xroad-hub central run``). The federation file (``config/demo-federation.toml``) is only
this script's input, the demo's data: which members, nodes, clients, services and rights. No
node reads it.

    python -m xroad_hub.demo.workflow [--config FILE] [--data-dir var/demo] [--nodes ID,...]

What it does, each step skipped when already done (a re-run, also after a failure, resumes):

1. ``central init`` in DATA/central (its CA and every central key stay there), ``central
   member add`` for each member, ``central anchor`` to DATA/anchor.json; ``central run``.
2. Per node, in its own directory DATA/nodes/INSTANCE/CLASS/MEMBER/CODE: ``node init`` (the
   node's keys are made there), ``central approve``, ``node enroll fetch``, ``node client
   add`` for each subsystem it hosts or serves, ``central approve``.
3. Client systems, auditors and the demo identity provider make their keys in their own
   directories (DATA/clients/SUBSYSTEM, DATA/auditors/NAME, DATA/idp/thaid); an mTLS client's
   certificate is issued by the central CA from its CSR (``central client-cert``). The
   auditors' and the identity provider's public keys are placed in the directories of the
   nodes with an audit listener.
4. Each node's own settings (DATA/nodes/.../node.toml: its listeners and its administrator's
   key digest; the key is in DATA/admin, 0600) and its flat-file exports are written in its
   directory. No clients, services or access rights: the node reads none from a file.
5. The agencies' own systems (DBD's REST registry, DOPA's legacy SOAP service) start, then
   every node, each with ``node run``.
6. Each node's administrator registers its client systems (``node clients add``, with the
   client's certificate or public key), its services (``node service add`` from the
   OpenAPI document, the WSDL or the flat-file layout) and their access rights (``node
   access grant``) through the node's admin API.

DATA/endpoints.json then says where everything listens and which process is which.
SIGTERM or Ctrl-C stops the nodes (final checkpoints, witnessed by the still running central
server), then the central server, then the backends. A run killed outright leaves its
processes running; the next run stops them first (DATA/running.pids).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from xroad_hub.demo.legacy_exports import ensure_export
from xroad_hub.demo.runner import backend_app
from xroad_hub.errors import ConfigError, HubError
from xroad_hub.federation import FederationConfig, NodeConfig, load_federation
from xroad_hub.logs import configure_logging
from xroad_hub.node.admin import key_digest
from xroad_hub.packaged import demo_federation, packaged_path
from xroad_hub.pki import (
    PkiLayout,
    generate_key,
    load_private_key,
    write_key,
    write_public_key,
)
from xroad_hub.privatefile import write_private
from xroad_hub.protocol.registration import make_csr

__all__ = ["DemoLayout", "WorkflowError", "main"]

log = structlog.get_logger("xroad_hub.demo.workflow")

DEFAULT_CONFIG = Path("config/demo-federation.toml")
DEFAULT_DATA = Path("var/demo")
ADMIN_NAME = "demo-operator"
ADMIN_ROLES = ("system-administrator", "service-administrator", "security-officer", "monitor")
# What 'node init' writes before it saves its state: without the state file nothing was
# filed, so these are a stopped attempt's leftovers, not a registered node's keys.
_INIT_FILES = (
    "auth.key.pem",
    "auth.csr.pem",
    "sign.key.pem",
    "sign.csr.pem",
    "checkpoint.key.pem",
    "checkpoint.csr.pem",
    "anchor.json",
)
_START_TIMEOUT = 60.0


class WorkflowError(HubError, RuntimeError):
    """A step of the demo workflow failed; the message names the step and its output."""


@dataclass(frozen=True, slots=True)
class DemoLayout:
    """Where the demo keeps each party's directory."""

    root: Path

    @property
    def central(self) -> Path:
        return self.root / "central"

    @property
    def anchor(self) -> Path:
        return self.root / "anchor.json"

    def node(self, node_id: str) -> Path:
        return self.root / "nodes" / Path(*node_id.split("/"))

    def exports(self, node_id: str) -> Path:
        """Where the agency's legacy systems drop their exports: a folder of its own, not
        the node's directory (which holds its keys, so the node reads no file there), named
        in node.toml as the one directory services may be read from (service_file_dirs)."""
        return self.root / "exports" / Path(*node_id.split("/"))

    @property
    def parties(self) -> PkiLayout:
        """Client systems', auditors' and the identity provider's own keys (each in a
        directory of its own: clients/SUBSYSTEM, auditors/NAME, idp/thaid), and a copy of the
        federation CA certificate they trust (ca/root.cert.pem): the layout ``xroad-hub
        token`` and ``tracker`` read with ``--certs-dir DATA``."""
        return PkiLayout(self.root)

    def admin_key(self, node_id: str) -> Path:
        return self.root / "admin" / Path(*node_id.split("/")).with_suffix(".key")

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        """The processes this demo started and has not seen stop (one pid a line)."""
        return self.root / "running.pids"

    @property
    def endpoints(self) -> Path:
        return self.root / "endpoints.json"


# --- the public commands ---------------------------------------------------------------------


def hub(*argv: str | Path) -> str:
    """Run one ``xroad-hub`` command (in this process: the same parser and code as the
    program, without an interpreter start per command); its output, or WorkflowError."""
    from xroad_hub.cli import main as cli_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = cli_main(["--log-level", "warning", *map(str, argv)])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    _restore_logging()
    text = out.getvalue()
    if code != 0:
        raise WorkflowError(
            f"'xroad-hub {' '.join(map(str, argv))}' failed (exit {code}):\n{text.strip()}"
        )
    return text


_LOG_LEVEL = "info"


def _restore_logging() -> None:
    configure_logging(_LOG_LEVEL)


# --- step 1: the central server ----------------------------------------------------------------


def central_url(fed: FederationConfig) -> str:
    host, port = fed.registry.listen
    return f"https://{host or '127.0.0.1'}:{port}"


def setup_central(fed: FederationConfig, d: DemoLayout) -> None:
    if not (d.central / "central.sqlite").exists():
        # 'central init' writes its keys before its database: a directory without one is an
        # init that stopped half-way and registered nothing.
        shutil.rmtree(d.central, ignore_errors=True)
        d.root.mkdir(parents=True, exist_ok=True)
        hub(
            "central",
            "init",
            "--dir",
            d.central,
            "--instance",
            fed.instance,
            "--url",
            central_url(fed),
            "--validity",
            int(fed.registry.globalconf_validity),
        )
    admitted = {
        line.split("\t", 1)[0]
        for line in hub("central", "member", "list", "--dir", d.central).splitlines()
    }
    for member, name in fed.members.items():
        if str(member) not in admitted:
            hub("central", "member", "add", member, "--name", name, "--dir", d.central)
    hub("central", "anchor", "--dir", d.central, "-o", d.anchor)
    # The federation CA, for the client systems, auditors and citizens' tools (public).
    ca = d.parties.root_ca.cert
    ca.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(d.central / "ca.cert.pem", ca)


def approve_pending(d: DemoLayout, server: str) -> None:
    """The central operator approves every pending request of ``server``."""
    for line in hub("central", "requests", "--dir", d.central).splitlines():
        fields = line.split("\t")
        if len(fields) > 3 and fields[1] == "SUBMITTED" and fields[3] == server:
            hub("central", "approve", fields[0], "--dir", d.central)


# --- step 2: each node's enrollment ------------------------------------------------------------


def _state(ndir: Path) -> dict[str, Any]:
    return dict(json.loads((ndir / "enrollment.json").read_text()))


def enroll_node(cfg: NodeConfig, d: DemoLayout, subsystems: Iterable[str]) -> Path:
    node_id = str(cfg.id)
    ndir = d.node(node_id)
    member, code = str(cfg.id.owner), cfg.id.server_code
    host, port = cfg.peer_listen
    if (ndir / "enrollment.json").exists() and _state(ndir).get("state") == "DECLINED":
        hub("node", "enroll", "cancel", "--dir", ndir)
    if not (ndir / "enrollment.json").exists():
        for name in _INIT_FILES:
            (ndir / name).unlink(missing_ok=True)
        hub(
            "node",
            "init",
            "--anchor",
            d.anchor,
            "--member",
            member,
            "--code",
            code,
            "--dir",
            ndir,
            "--address",
            f"{host or '127.0.0.1'}:{port}",
        )
    if not (ndir / "auth.cert.pem").exists():
        if _state(ndir).get("state") == "UNSENT":
            hub("node", "enroll", "status", "--dir", ndir)  # files the request
        approve_pending(d, node_id)
        hub("node", "enroll", "fetch", "--dir", ndir)
    filed = set(_state(ndir).get("clients", {}))
    for sub in sorted(set(subsystems) - filed):
        hub("node", "client", "add", sub, "--dir", ndir)
    approve_pending(d, node_id)
    return ndir


def hosted_subsystems(cfg: NodeConfig) -> list[str]:
    subs = {str(c.id) for c in cfg.clients}
    subs |= {str(s.id.provider) for s in cfg.services}
    subs |= {str(s.provider) for s in cfg.soap_services}
    return sorted(subs)


# --- step 3: the parties' own keys ---------------------------------------------------------


def _place(public: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(public, target)


def client_credentials(cfg: NodeConfig, d: DemoLayout) -> None:
    """Each client system makes its key in its own directory; an mTLS client's certificate
    is issued by the central CA from its CSR. The node is told its certificate or public key
    through its admin API later (``node clients add``)."""
    own = d.parties
    for client in cfg.clients:
        sub = str(client.id)
        if client.auth == "mtls":
            paths = own.client_tls(sub)
            if not paths.key.exists():
                write_key(paths.key, generate_key())
            if not paths.cert.exists():
                csr = paths.key.with_name("tls.csr.pem")
                request = make_csr(load_private_key(paths.key), sub)
                csr.write_bytes(request.public_bytes(serialization.Encoding.PEM))
                hub(
                    "central",
                    "client-cert",
                    sub,
                    "--csr",
                    csr,
                    "-o",
                    paths.cert,
                    "--dir",
                    d.central,
                )
        elif client.auth == "jwt":
            paths = own.client_jwt(sub)
            _keypair(paths.key, paths.cert)


def _keypair(key: Path, public: Path) -> None:
    if key.exists() and public.exists():
        return
    key.unlink(missing_ok=True)
    private = generate_key()
    write_key(key, private)
    write_public_key(public, private)


def audit_credentials(fed: FederationConfig, cfg: NodeConfig, d: DemoLayout, ndir: Path) -> None:
    """A node with an audit listener accepts the federation's auditors and the citizens'
    identity provider: their public keys are placed in its directory."""
    if cfg.audit_listen is None:
        return
    own, node = d.parties, PkiLayout(ndir)
    for name in fed.auditors:
        paths = own.auditor_jwt(name)
        _keypair(paths.key, paths.cert)
        _place(paths.cert, node.auditor_jwt(name).cert)
    idp = own.idp_jwt()
    _keypair(idp.key, idp.cert)
    _place(idp.cert, node.idp_jwt().cert)


def admin_digest(d: DemoLayout, node_id: str) -> str:
    """The node administrator's API key (kept in DATA/admin, 0600); node.toml gets its hash."""
    path = d.admin_key(node_id)
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32).encode())
    return key_digest(path.read_text().strip())


# --- step 4: each node's own settings ----------------------------------------------------------


def raw_node_tables(config: Path) -> dict[str, dict[str, Any]]:
    """The federation file's [[node]] tables as written (paths unresolved), by id."""
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    return {str(t["id"]): dict(t) for t in data.get("node", [])}


def node_settings(table: dict[str, Any], admin_sha256: str, exports: Path) -> dict[str, Any]:
    """The node's own [node] table: the federation file's listeners and limits, without id,
    its administrator, and the agency's export folder. Its clients, services and access
    rights are not in it: the administrator registers them through the node's admin API
    once it runs."""
    out = {k: v for k, v in table.items() if k not in ("id", *_ADMINISTERED)}
    out["service_file_dirs"] = [str(exports)]
    out["admin"] = [
        *table.get("admin", []),
        {"name": ADMIN_NAME, "key_sha256": admin_sha256, "roles": list(ADMIN_ROLES)},
    ]
    return out


_ADMINISTERED = ("client", "service", "soap_service")


def flat_file_exports(table: dict[str, Any], exports: Path) -> None:
    """The demo's seeded exports, generated in the agency's export folder when missing (an
    agency's nightly job would put them there)."""
    for s in table.get("service", []):
        kind, source = s.get("generate"), s.get("source")
        if s.get("adapter") == "flatfile" and kind and isinstance(source, str):
            seed = s.get("seed")
            ensure_export(str(kind), exports / source, *([] if seed is None else [int(seed)]))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {value!r} to node.toml")


def to_node_toml(table: dict[str, Any]) -> str:
    lines = ["# This node's own settings (xroad-hub node run --dir); written by the demo", "[node]"]
    arrays = {
        k: v
        for k, v in table.items()
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
    }
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k not in arrays]
    for name, items in arrays.items():
        for item in items:
            lines += ["", f"[[node.{name}]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def write_settings(ndir: Path, table: dict[str, Any]) -> None:
    text = to_node_toml(table)
    tomllib.loads(text)  # what 'node run' will read back
    (ndir / "node.toml").write_text(text, encoding="utf-8")


# --- step 6: clients, services and access rights, over each node's admin API ---------------


async def _admin(d: DemoLayout, node_id: str, url: str, *argv: str | Path) -> dict[str, Any]:
    """One of the administrator's commands (``xroad-hub node ...``) against a running node;
    its JSON answer. In a thread: the node may call a backend this process serves."""
    out = await asyncio.to_thread(
        hub, "node", *argv, "--admin", url, "--key-file", d.admin_key(node_id), "--json"
    )
    return dict(json.loads(out))


def _common_service_args(raw: dict[str, Any]) -> list[str]:
    args = []
    for option, key in (("--version", "version"), ("--timeout", "timeout")):
        if raw.get(key) is not None:
            args += [option, str(raw[key])]
    for option, key in (("--purpose", "purposes"), ("--subject", "subject")):
        for value in raw.get(key, []):
            args += [option, str(value)]
    answer = raw.get("answer_subject", [])
    for value in answer or ["none"]:
        args += ["--answer-subject", str(value)]
    return args


def _service_add_args(raw: dict[str, Any], exports: Path) -> list[str]:
    """``node service add`` for a [[node.service]] table of the demo's file."""
    provider, _, code = str(raw["id"]).rpartition("/")
    args = ["--provider", provider, "--code", code]
    if raw.get("adapter") == "flatfile":
        layout = packaged_path(str(raw["layout"]))
        args += ["--layout", layout, "--file", str(exports / raw["source"])]
        for key in (
            "pattern",
            "reload_interval",
            "max_bad_share",
            "format",
            "encoding",
            "delimiter",
        ):
            if key in raw:
                args += ["--option", f"{key}={raw[key]}"]
    else:
        if raw.get("openapi") is None:
            raise ConfigError(
                f"service {raw['id']}: the demo registers REST services from "
                "their OpenAPI document (openapi = ...)"
            )
        args += ["--openapi", packaged_path(str(raw["openapi"])), "--url", str(raw["url"])]
    return args + _common_service_args(raw)


async def administer(
    d: DemoLayout, node_id: str, url: str, table: dict[str, Any], known: set[str]
) -> list[str]:
    """The node's administrator registers its clients (``node clients add``), its services
    (``node service add``) and their access rights (``node access grant``) to the
    subsystems in ``known`` (those of the nodes this run sets up), each only if not there
    yet; the service codes the node serves."""
    own = d.parties
    have = {c["client"] for c in (await _admin(d, node_id, url, "clients", "list"))["clients"]}
    for raw in table.get("client", []):
        sub, auth = str(raw["id"]), str(raw["auth"])
        if sub in have:
            continue
        args: list[str | Path] = ["clients", "add", sub, "--auth", auth]
        if auth == "mtls":
            args += ["--cert", own.client_tls(sub).cert]
        elif auth == "jwt":
            args += ["--jwt-key", own.client_jwt(sub).cert]
        for option, key in (
            ("--default-purpose", "default_purpose"),
            ("--default-legal-basis", "default_legal_basis"),
        ):
            if raw.get(key):
                args += [option, str(raw[key])]
        await _admin(d, node_id, url, *args)

    async def services() -> dict[str, dict[str, Any]]:
        listed = (await _admin(d, node_id, url, "service", "list"))["services"]
        return {str(s["service"]): s for s in listed}

    registered = await services()
    wanted: list[tuple[list[str], list[str]]] = []  # (service codes, who may call them)
    for raw in table.get("service", []):
        key = str(raw["id"])
        if key not in registered:
            add = _service_add_args(raw, d.exports(node_id))
            await _admin(d, node_id, url, "service", "add", *add)
        wanted.append(([key], [str(a) for a in raw.get("allow", [])]))
    for raw in table.get("soap_service", []):
        provider = f"{raw['provider']}/"
        if not any(k.startswith(provider) for k in registered):
            wsdl = packaged_path(str(raw["wsdl"]))
            mode = str(raw.get("mode", "bridge"))
            args = ["--provider", str(raw["provider"]), "--wsdl", wsdl, "--mode", mode]
            args += _common_service_args(raw)
            await _admin(d, node_id, url, "service", "add", *args)
        registered = await services()
        codes = [k for k in registered if k.startswith(provider)]
        wanted.append((codes, [str(a) for a in raw.get("allow", [])]))
    registered = await services()
    for codes, allow in wanted:
        for code in codes:
            for to in allow:
                if to not in known:
                    log.info(
                        "demo.grant_skipped",
                        service=code,
                        client=to,
                        reason="its node is not part of this run (--nodes)",
                    )
                elif to not in registered[code]["allow"]:
                    await _admin(d, node_id, url, "access", "grant", code, to)
    return sorted(registered)


# --- step 5: the processes -------------------------------------------------------------------


class Proc:
    """A program of its own (``xroad-hub central run``, ``node run``), its output in a log
    file. In a session of its own, so that Ctrl-C reaches only this script, which stops the
    nodes before the central server that witnesses their final checkpoints."""

    def __init__(self, name: str, log_file: Path, *argv: str | Path) -> None:
        self.name = name
        self.log_file = log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._out: IO[bytes] = log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xroad_hub.cli", *map(str, argv)],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("demo.kill", process=self.name, after_seconds=timeout)
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._out.close()

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def remember(d: DemoLayout, p: Proc) -> None:
    with d.pids.open("a") as f:
        f.write(f"{p.pid}\n")


def stop_leftovers(d: DemoLayout, timeout: float = 30.0) -> None:
    """Processes an earlier run of this demo started and could not stop (it was killed):
    still holding their ports, they would fail this run. Stopped as Ctrl-C would have, newest
    first (nodes before the central server), if they are still the demo's own (their
    command line names this data directory)."""
    try:
        pids = [int(line) for line in d.pids.read_text().split()]
    except (OSError, ValueError):
        return
    for pid in reversed(pids):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone (or not Linux: nothing to check it with)
        if b"xroad_hub" not in cmdline or str(d.root).encode() not in cmdline:
            continue
        log.warning("demo.leftover_stopped", pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    d.pids.unlink(missing_ok=True)


def _exited(p: Proc) -> WorkflowError:
    return WorkflowError(
        f"{p.name} (pid {p.pid}) exited with {p.proc.returncode}; the end of {p.log_file}:\n"
        f"{p.tail()}\nhint: is a previous demo still running (its ports taken)? Stop it, then "
        "run scripts/demo.sh again: it resumes where it stopped"
    )


def wait_central(url: str, ca: Path, proc: Proc, timeout: float = _START_TIMEOUT) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/globalconf", timeout=5, context=ctx) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if not proc.alive():
            raise _exited(proc)
        if time.monotonic() > deadline:
            raise WorkflowError(f"the central server did not answer at {url} in {timeout} s")
        time.sleep(0.1)


async def _start_backends(fed: FederationConfig) -> tuple[list[web.AppRunner], dict[str, str]]:
    runners, urls = [], {}
    try:
        for b in fed.backends:
            runner = web.AppRunner(backend_app(b), access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            host, port = b.listen
            await web.TCPSite(runner, host, port).start()
            urls[b.kind] = f"http://{host}:{port}"
    except BaseException:
        for r in runners:
            await r.cleanup()
        raise
    return runners, urls


async def _wait_started(procs: dict[str, tuple[Proc, Path]], timeout: float) -> dict[str, Any]:
    """Each node's endpoints.json (written by 'node run' once it listens)."""
    deadline = time.monotonic() + timeout
    out: dict[str, Any] = {}
    while len(out) < len(procs):
        for node_id, (p, ndir) in procs.items():
            if node_id in out:
                continue
            if not p.alive():
                raise _exited(p)
            with contextlib.suppress(OSError, ValueError):
                out[node_id] = json.loads((ndir / "endpoints.json").read_text())
        if time.monotonic() > deadline:
            missing = sorted(set(procs) - set(out))
            raise WorkflowError(f"node(s) {', '.join(missing)} did not start in {timeout} s")
        await asyncio.sleep(0.1)
    return out


async def supervise(
    fed: FederationConfig,
    d: DemoLayout,
    nodes: list[NodeConfig],
    tables: dict[str, dict[str, Any]],
    central: Proc,
    refresh: float,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners, backends = await _start_backends(fed)
    procs: dict[str, tuple[Proc, Path]] = {}
    try:
        for cfg in nodes:
            ndir = d.node(str(cfg.id))
            (ndir / "endpoints.json").unlink(missing_ok=True)  # a killed run's
            p = Proc(
                str(cfg.id),
                d.logs / f"{str(cfg.id).replace('/', '_')}.log",
                "node",
                "run",
                "--dir",
                ndir,
                "--refresh-interval",
                refresh,
            )
            procs[str(cfg.id)] = (p, ndir)
            remember(d, p)
        started = await _wait_started(procs, _START_TIMEOUT)
        served = {}
        known = {sub for cfg in nodes for sub in hosted_subsystems(cfg)}
        for node_id, urls in started.items():
            if "admin" not in urls:
                raise ConfigError(
                    f"node {node_id} has no admin_listen: the demo administers "
                    "its clients and services through its admin API"
                )
            served[node_id] = await administer(d, node_id, urls["admin"], tables[node_id], known)
        endpoints = {
            "central": central_url(fed),
            "registry": central_url(fed),
            "tsa": f"{central_url(fed)}/tsa/",
            "processes": {
                "central": central.pid,
                "workflow": os.getpid(),
                **{n: p.pid for n, (p, _) in procs.items()},
            },
            "nodes": {
                str(cfg.id): {
                    **{k: v for k, v in started[str(cfg.id)].items() if k != "node"},
                    "dir": str(d.node(str(cfg.id))),
                    "pid": procs[str(cfg.id)][0].pid,
                    "clients": {str(c.id): c.auth for c in cfg.clients},
                    "services": served[str(cfg.id)],
                }
                for cfg in nodes
            },
            "backends": backends,
        }
        d.endpoints.write_text(json.dumps(endpoints, indent=2) + "\n")
        print(
            f"demo federation up: central server {central_url(fed)} (pid {central.pid}), "
            f"{len(procs)} nodes, each its own process (pids "
            f"{', '.join(str(p.pid) for p, _ in procs.values())}); endpoints in "
            f"{d.endpoints}; logs in {d.logs}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        while not stop.is_set():
            for p in [central, *(p for p, _ in procs.values())]:
                if not p.alive():
                    raise _exited(p)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        return 0
    finally:
        # Nodes first (in-flight exchanges finish, a final checkpoint is witnessed and
        # timestamped by the central server), then the central server, then the backends.
        d.endpoints.unlink(missing_ok=True)
        for p, _ in procs.values():
            p.terminate()
        codes = await asyncio.gather(*(asyncio.to_thread(p.wait) for p, _ in procs.values()))
        for (p, _), code in zip(procs.values(), codes, strict=True):
            if code not in (0, -signal.SIGTERM):
                log.warning("demo.node_exit", node=p.name, code=code, log=str(p.log_file))
        for r in runners:
            await r.cleanup()
        print("demo federation stopped", file=sys.stderr, flush=True)


# --- the whole ---------------------------------------------------------------------------------


def prepare(
    fed: FederationConfig, tables: dict[str, dict[str, Any]], d: DemoLayout, nodes: list[NodeConfig]
) -> None:
    """Steps 2-4, with the central server running."""
    for cfg in nodes:
        node_id = str(cfg.id)
        ndir = enroll_node(cfg, d, hosted_subsystems(cfg))
        client_credentials(cfg, d)
        audit_credentials(fed, cfg, d, ndir)
        exports = d.exports(node_id)
        flat_file_exports(tables[node_id], exports)
        write_settings(ndir, node_settings(tables[node_id], admin_digest(d, node_id), exports))
        log.info("demo.node_ready", node=node_id, dir=str(ndir))


def run(config: Path, data_dir: Path, only: list[str] | None, refresh: float | None) -> int:
    fed = load_federation(config)
    nodes = [n for n in fed.nodes if only is None or str(n.id) in only]
    if only is not None and len(nodes) != len(set(only)):
        known = ", ".join(str(n.id) for n in fed.nodes)
        raise ConfigError(f"--nodes names a node that is not in {config} (known: {known})")
    d = DemoLayout(data_dir.resolve())
    began = time.monotonic()
    stop_leftovers(d)
    d.endpoints.unlink(missing_ok=True)  # a killed run's: nothing listens there now
    setup_central(fed, d)
    central = Proc("central server", d.logs / "central.log", "central", "run", "--dir", d.central)
    remember(d, central)
    try:
        wait_central(central_url(fed), d.central / "ca.cert.pem", central)
        tables = raw_node_tables(config)
        prepare(fed, tables, d, nodes)
        log.info("demo.prepared", seconds=round(time.monotonic() - began, 1))
        interval = refresh if refresh is not None else float(fed.registry.refresh_interval)
        return asyncio.run(supervise(fed, d, nodes, tables, central, interval))
    finally:
        central.terminate()
        central.wait()
        d.pids.unlink(missing_ok=True)  # every process it started has stopped


def main(argv: list[str] | None = None) -> int:
    global _LOG_LEVEL
    parser = argparse.ArgumentParser(
        prog="python -m xroad_hub.demo.workflow",
        description="Set up the demo federation the way agencies would (central server, "
        "each node enrolled in its own directory with its own keys, registration requests "
        "approved) and run the central server and every node as processes of their own "
        "until Ctrl-C or SIGTERM. Re-running resumes: steps already done are skipped.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="the demo's data (default: "
        f"{DEFAULT_CONFIG} if there is one here, else the packaged one)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"where every party's directory is made (default {DEFAULT_DATA})",
    )
    parser.add_argument("--nodes", help="only these nodes (comma-separated ids)")
    parser.add_argument(
        "--refresh-interval",
        type=float,
        help="seconds between the nodes' global-configuration downloads "
        "(default: the federation file's)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)
    _LOG_LEVEL = args.log_level
    configure_logging(args.log_level)
    config = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else demo_federation())
    only = [s.strip() for s in args.nodes.split(",") if s.strip()] if args.nodes else None
    try:
        return run(config, args.data_dir, only, args.refresh_interval)
    except (HubError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        print(
            "hint: fix what is named above and run it again; steps already done are skipped",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
