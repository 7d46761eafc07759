"""The demo federation and the BMA case service, started on free loopback ports.

One harness for ``xroad-hub demo``, the end-to-end tests and the benchmarks, so that all of
them exercise the same federation file (``config/demo-federation.toml``), the same PKI layout
and the same case-service process a deployment would run. The API below is stable: other
code builds on it.

    demo = await start_demo_federation(workdir, config=DEFAULT_CONFIG)
        returns once every node answers and every flat-file export is loaded;
        also an async context manager: ``async with await start_demo_federation(w) as demo``
    demo.config_path      Path              the federation file actually used (free ports)
    demo.fed              FederationConfig  parsed from it (relative file paths made absolute)
    demo.pki              PkiLayout         workdir/certs, created by ensure_pki
    demo.endpoints        dict              Federation.start()'s endpoints (endpoints.json)
    demo.data_dir         Path              workdir/data: node logs, flat-file exports
    demo.federation       Federation        the in-process federation itself
    demo.node_url(node_id, role="client")   "client" | "client_tls" | "peer" | "audit" URL
    demo.log_path(node_id)                  the node's messagelog.sqlite
    demo.citizen_token(citizen_id, audience, ttl=300)   identity-provider token (ES256)
    demo.officer_token(name, audience, ttl=3600)        identity-provider token (ES256)
    demo.ssl_context(client=None)           trusts the federation root; optional client cert
    await demo.stop()                       nodes flush and write their final checkpoints

    cs = await start_case_service(demo, workdir, *, sla_days=30, startup_timeout=30.0,
                                  log_level="info")
        runs ``python -m case_service`` as TH/GOV/BMA/licensing over mTLS to BMA's node;
        returns once GET /health answers, else raises HarnessError with its output's tail
    cs.url       str                 http://127.0.0.1:PORT of the case service
    cs.client    CaseServiceClient   its HTTP client (closed by stop())
    cs.config_path, cs.log_path, cs.process
    await cs.stop()                  SIGTERM, wait, SIGKILL after ``timeout``

    demo_applicant(seed=2569) -> Applicant    a citizen and her company for whom every
        evidence type exists in the seeded data (citizen_id, juristic_id, name_th, name_en,
        company_th, company_en); seed 2569: Mrs. Somsri, 1552806801307 / 0105744622488

    Constants: BMA_NODE ("TH/GOV/BMA/hub1"), CASE_SERVICE_CLIENT ("TH/GOV/BMA/licensing",
    also the audience of case-service tokens), DEFAULT_CONFIG, REPO_ROOT.

Everything is written under ``workdir``; nothing outside it is touched, and nothing listens
anywhere but 127.0.0.1. Only free loopback ports are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from adapters.flatfile import FlatFileAdapter
from case_service.client import CaseServiceClient
from xroad_hub.demo.runner import Federation, with_packaged_paths
from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.testing import free_port, on_free_ports
from xroad_hub.errors import HubError
from xroad_hub.federation import FederationConfig, load_federation
from xroad_hub.node.trackerapi import mint_idp_token
from xroad_hub.packaged import demo_federation, schema_file
from xroad_hub.pki import IDP_MAX_LIFETIME, TRACKER_MAX_LIFETIME, PkiLayout, load_private_key

__all__ = [
    "BMA_NODE",
    "CASE_SERVICE_CLIENT",
    "DEFAULT_CONFIG",
    "REPO_ROOT",
    "Applicant",
    "CaseServiceProcess",
    "DemoFederation",
    "HarnessError",
    "demo_applicant",
    "start_case_service",
    "start_demo_federation",
    "write_case_service_config",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = demo_federation()  # config/demo-federation.toml, shipped with the package
BMA_NODE = "TH/GOV/BMA/hub1"
CASE_SERVICE_CLIENT = "TH/GOV/BMA/licensing"
SEED = 2569
FLATFILE_TIMEOUT = 30.0  # seconds for the seeded exports to be loaded at start


class HarnessError(HubError, RuntimeError):
    """Something the harness started did not come up; the message says what and why."""


@dataclass
class DemoFederation:
    """A running demo federation; see the module docstring for the API."""

    workdir: Path
    config_path: Path
    fed: FederationConfig
    pki: PkiLayout
    federation: Federation
    endpoints: dict[str, Any]
    data_dir: Path
    _stopped: bool = field(default=False, repr=False)

    async def __aenter__(self) -> DemoFederation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def node_url(self, node_id: str, role: str = "client") -> str:
        """Base URL of one of the node's listeners (no trailing slash)."""
        nodes: dict[str, dict[str, Any]] = self.endpoints["nodes"]
        if node_id not in nodes:
            raise KeyError(f"no node {node_id!r}; nodes: {sorted(nodes)}")
        urls = nodes[node_id]
        if role not in urls or not isinstance(urls[role], str):
            have = sorted(k for k, v in urls.items() if isinstance(v, str))
            raise KeyError(f"node {node_id} has no {role!r} listener; it has {have}")
        return str(urls[role])

    def log_path(self, node_id: str) -> Path:
        """The node's SQLite message log (where runner.Federation puts it)."""
        self.fed.node(node_id)  # unknown ids fail here, not as a missing file later
        return self.data_dir / "nodes" / Path(*node_id.split("/")) / "messagelog.sqlite"

    @cached_property
    def _idp_key(self) -> Any:
        return load_private_key(self.pki.idp_jwt().key)

    def citizen_token(self, citizen_id: str, audience: str, ttl: int = TRACKER_MAX_LIFETIME) -> str:
        """A token of the demo identity provider for a citizen. A node's data tracker takes
        at most 300 s (the default); the case service (audience TH/GOV/BMA/licensing) up to
        an hour."""
        return mint_idp_token(
            self._idp_key, subject=citizen_id, role="citizen", audience=audience, ttl=ttl
        )

    def officer_token(self, name: str, audience: str, ttl: int = IDP_MAX_LIFETIME) -> str:
        """A token of the demo identity provider for an officer (staff name as subject)."""
        return mint_idp_token(
            self._idp_key, subject=name, role="officer", audience=audience, ttl=ttl
        )

    def ssl_context(self, client: str | None = None) -> ssl.SSLContext:
        """TLS that trusts only the federation root; with ``client``, presents that client
        subsystem's mTLS certificate (e.g. TH/GOV/BMA/licensing)."""
        ctx = ssl.create_default_context(cafile=str(self.pki.root_ca.cert))
        if client is not None:
            paths = self.pki.client_tls(client)
            ctx.load_cert_chain(str(paths.cert), str(paths.key))
        return ctx

    async def stop(self) -> None:
        """Stop every component; nodes finish in-flight exchanges and write their final
        checkpoint, so the logs can be verified afterwards. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        await self.federation.stop()


async def start_demo_federation(workdir: Path, config: Path = DEFAULT_CONFIG) -> DemoFederation:
    """Copy ``config`` onto free loopback ports, create its PKI in ``workdir/certs`` and start
    the whole federation (backends, registry, TSA, every node) in this process, with its data
    in ``workdir/data``. Running it twice in one ``workdir`` reuses keys and logs."""
    workdir = await asyncio.to_thread(workdir.resolve)
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    config_path = await asyncio.to_thread(on_free_ports, config, workdir / "federation.toml")
    fed = with_packaged_paths(await asyncio.to_thread(load_federation, config_path))
    certs, data = workdir / "certs", workdir / "data"
    await asyncio.to_thread(ensure_pki, fed, certs)
    federation = Federation(fed, certs, data)
    try:
        endpoints = await federation.start()
        await _flat_files_loaded(federation, FLATFILE_TIMEOUT)
    except BaseException:
        # Whatever did start (backends, some nodes) must not keep its ports.
        await federation.stop()
        raise
    return DemoFederation(
        workdir=workdir,
        config_path=config_path,
        fed=fed,
        pki=PkiLayout(certs),
        federation=federation,
        endpoints=endpoints,
        data_dir=data,
    )


async def _flat_files_loaded(federation: Federation, timeout: float) -> None:
    """Wait until every flat-file service has an export in service.

    A node loads its exports when it starts, but an export the runner has just generated is
    younger than the adapter's settle time, so the first load is postponed to the next poll
    (reload_interval, seconds later) and the service answers 503 until then. Asking the
    adapter to look again as soon as the file has settled makes the demo start in about a
    second instead of failing (or waiting) at its first evidence request.
    """
    adapters = [
        (node_id, hosted.adapter)
        for node_id, node in federation.nodes.items()
        if node.runtime is not None
        for hosted in node.runtime.services.values()
        if isinstance(hosted.adapter, FlatFileAdapter)
    ]
    deadline = time.monotonic() + timeout
    while waiting := [(n, a) for n, a in adapters if a.current is None]:
        if time.monotonic() > deadline:
            detail = "; ".join(
                f"{a.name} on {n}: {a.last_rejection or 'no export loaded'}" for n, a in waiting
            )
            raise HarnessError(f"flat-file services not ready after {timeout:g} s: {detail}")
        await asyncio.sleep(0.2)
        for _, adapter in waiting:
            await adapter.refresh()


# --- the case service -----------------------------------------------------------------------


@dataclass
class CaseServiceProcess:
    """The BMA case service running as its own process (``python -m case_service``)."""

    url: str
    config_path: Path
    log_path: Path  # its stdout and stderr
    process: asyncio.subprocess.Process
    client: CaseServiceClient

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (it finishes requests in flight and closes its database), wait up to
        ``timeout`` seconds, then SIGKILL. Returns the exit status. Safe to call twice."""
        await self.client.close()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        return self.process.returncode


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _toml_str(value: object) -> str:
    # TOML basic strings share JSON's escapes for what paths and URLs can contain.
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_case_service_config(
    demo: DemoFederation, workdir: Path, *, port: int, sla_days: int = 30
) -> Path:
    """The case service's TOML: BMA's node over mutual TLS as TH/GOV/BMA/licensing, the
    federation root as CA, the demo identity provider's public key, a database in workdir."""
    tls = demo.pki.client_tls(CASE_SERVICE_CLIENT)
    lines = [
        "# Written by xroad_hub.demo.harness for one demo run.",
        f'listen = "127.0.0.1:{port}"',
        f"db = {_toml_str(workdir / 'case-service' / 'cases.db')}",
        f"node_url = {_toml_str(demo.node_url(BMA_NODE, 'client_tls'))}",
        f"client_id = {_toml_str(CASE_SERVICE_CLIENT)}",
        "[tls]",
        f"cert = {_toml_str(tls.cert)}",
        f"key = {_toml_str(tls.key)}",
        f"ca = {_toml_str(demo.pki.root_ca.cert)}",
        "[idp]",
        f"public_key = {_toml_str(demo.pki.idp_jwt().cert)}",
        'issuer = "thaid"',
        "[case_types.food-business-licence]",
        f"sla_days = {int(sla_days)}",
    ]
    path = workdir / "case-service.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def start_case_service(
    demo: DemoFederation,
    workdir: Path,
    *,
    sla_days: int = 30,
    startup_timeout: float = 30.0,
    log_level: str = "info",
) -> CaseServiceProcess:
    """Start the case service against ``demo`` and wait until ``GET /health`` answers.

    Raises HarnessError (with the tail of the process's output) if it exits or does not
    answer within ``startup_timeout`` seconds.
    """
    workdir = await asyncio.to_thread(workdir.resolve)
    await asyncio.to_thread((workdir / "case-service").mkdir, parents=True, exist_ok=True)
    port = free_port()
    config = await asyncio.to_thread(
        write_case_service_config, demo, workdir, port=port, sla_days=sla_days
    )
    log_path = workdir / "case-service.log"
    env = dict(os.environ)
    # Importable even when the repository is not installed in the running interpreter.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(log_path, "ab") as out:  # noqa: ASYNC230 - opening a log file does not block
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "case_service", "--config", str(config),
            "--log-level", log_level, "--log-json",
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=str(workdir), env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    cs = CaseServiceProcess(url, config, log_path, process, CaseServiceClient(url))
    try:
        await _wait_healthy(cs, startup_timeout)
    except BaseException:
        await cs.stop(timeout=5)
        raise
    return cs


async def _wait_healthy(cs: CaseServiceProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    probe = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=probe) as session:
        while True:
            if cs.process.returncode is not None:
                raise HarnessError(
                    f"the case service exited with status {cs.process.returncode} before "
                    f"answering /health; its output ({cs.log_path}):\n{cs.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{cs.url}/health") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"the case service did not answer {cs.url}/health within {timeout:g} s; "
                    f"its output ({cs.log_path}):\n{cs.log_tail()}"
                )
            # Either it exits (returncode, checked above) or the listener appears.
            await asyncio.sleep(0.1)


# --- who applies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Applicant:
    """A seeded citizen and the company she directs; every evidence type exists for them."""

    citizen_id: str
    juristic_id: str
    name_th: str
    name_en: str
    company_th: str
    company_en: str


def demo_applicant(seed: int = SEED, companies_count: int = 200) -> Applicant:
    """The first demo company (in registry order) whose first director holds a title deed in
    the DOL export and which has tax-clearance rows in the RD export, as the flat-file
    adapter would serve them (broken records excluded). For seed 2569: Mrs. Somsri Thongdee,
    1552806801307, director of 0105744622488. Deterministic: same seed, same applicant."""
    from adapters.flatfile.layout import load_layout_file, parse_layout
    from adapters.flatfile.loader import load_export, resolve_layout
    from xroad_hub.demo.legacy_exports import rd_taxclearance_csv, title_deed_lines
    from xroad_hub.demo.synthetic import companies, demo_people

    def served(export: bytes, layout_name: str, key: str) -> set[str]:
        # The same validation and indexes the adapter builds: a broken record never counts.
        layout = parse_layout(load_layout_file(schema_file(layout_name)))
        result = load_export(export, layout, layout.keys)
        resolved = resolve_layout(export, layout)
        index = result.indexes[key]
        f = resolved.field(key)
        assert f is not None
        return {v for v in candidates[key] if index.count(f.vtype.key(v).encode())}

    persons = demo_people(seed, companies_count)
    by_id = {p.citizen_id: p for p in persons}
    registry = companies(seed, companies_count, persons)
    candidates = {
        "owner_citizen_id": {c.directors[0] for c in registry},
        "juristic_id": {c.juristic_id for c in registry},
    }
    deeds = b"".join(line + b"\r\n" for line in title_deed_lines(seed))
    owners = served(deeds, "dol-titledeeds.layout.toml", "owner_citizen_id")
    cleared = served(rd_taxclearance_csv(seed), "rd-taxclearance.layout.toml", "juristic_id")
    for c in registry:
        if c.directors[0] in owners and c.juristic_id in cleared:
            p = by_id[c.directors[0]]
            return Applicant(
                citizen_id=p.citizen_id,
                juristic_id=c.juristic_id,
                name_th=f"{p.given_name_th} {p.family_name_th}",
                name_en=f"{p.given_name_en} {p.family_name_en}",
                company_th=c.name_th,
                company_en=c.name_en,
            )
    raise LookupError(f"no demo company of seed {seed} has all its evidence in the exports")
