"""Benchmark one X-Road exchange on loopback: the hub path against the backend alone.

Four phases run in the same invocation, with the same load generator and the same requests:

- ``direct``: ``GET {backend}/companies/{juristicId}`` straight to the DBD demo backend;
- ``c``: the same through two plain aiohttp proxy hops with mutual TLS between them (the
  floor of any design that proxies twice over HTTP/1.1; ``benchhops.py``);
- ``d``: ``c`` plus one ECDSA P-256 signature and verification per message and one durable
  SQLite WAL row per request on each hop, with group commit;
- ``hub``: ``GET {client node}/r1/TH/GOV/DBD/registry/companies/{juristicId}`` as the
  loopback client ``TH/GOV/DGA/devportal`` (auth = "http"), i.e. client node -> mutual TLS ->
  provider node -> REST adapter -> the same backend, signed and logged on both nodes.

``--monitoring-matrix`` measures instead what metrics and operational-monitoring records cost:
four federations on the same backend, alike but for those two switches (off, metrics only,
opmon only, both), the hub phase run against each in alternating rounds; the node processes'
CPU per exchange of each mode and its ratio to off (the issue's target: under 1.05).

Process layout (why): on a 2-core machine a load generator sharing an event loop with the
servers would measure its own cost as well. So the backend and the federation (registry and
nodes, as ``xroad-hub up`` runs them) each run in a child process of this script, the load
generator runs in the parent, and server CPU is read from ``/proc`` per child. The backend
having its own process is what lets the direct phase measure the backend only.

The children re-run this file with ``--serve-backend`` / ``--serve-federation``; they stop on
SIGTERM and also when their parent disappears, so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

# Next to this file, found through sys.path[0] as the script is run directly.
from benchhops import serve_hop
from benchproc import (
    EXIT_FAILED_REQUESTS,
    EXIT_OK,
    Child,
    StartupError,
    Tally,
    durable_commit_ms,
    finite,
    nearest_rank,
    quotient,
    run_with_children,
    serve_app,
    serve_federation,
    spawn,
    spawn_federation,
    wait_until_answers,
)

from xroad_hub.demo.dbd import dbd_app
from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.signedlog import build_signed_log
from xroad_hub.dev.testing import TestFederationSpec, free_port, write_federation
from xroad_hub.federation import load_federation
from xroad_hub.logs import configure_logging
from xroad_hub.messagelog import SQLiteMessageLog
from xroad_hub.protocol.identifiers import parse_service_id, parse_subsystem_id

CLIENT = "TH/GOV/DGA/devportal"  # registered with auth = "http" on the client node
CLIENT_NODE = "TH/GOV/DGA/hub1"
PROVIDER_NODE = "TH/GOV/DBD/hub1"
SERVICE = "TH/GOV/DBD/registry/companies"
COMPANY_COUNT = 200  # distinct ids the requests cycle through (the demo backend's default)

LOADGEN_SATURATED = 0.9  # cores of the parent's own CPU above which the client is the limit


# --------------------------------------------------------------------------------------------
# Child side: the servers
# --------------------------------------------------------------------------------------------


async def _serve_backend(address: str) -> None:
    await serve_app(dbd_app(count=COMPANY_COUNT), address)


# --------------------------------------------------------------------------------------------
# Parent side: set-up and children
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    backend_url: str
    hub_url: str  # the client node's plain HTTP listener
    config: Path


@dataclass(frozen=True, slots=True)
class Baseline:
    """A pair of proxy hops (children ``{name}-hop1``, ``{name}-hop2``) and hop 1's URL."""

    name: str  # "c" (plain hops) or "d" (signed and logged hops)
    url: str
    hops: tuple[Child, Child]


def spawn_baseline(children: list[Child], name: str, setup: Setup, workdir: Path) -> Baseline:
    """Hop 2 (mutual TLS in, the provider node's certificate; plain HTTP to the backend)
    and hop 1 (plain HTTP in, the client node's certificate; mutual TLS to hop 2)."""
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    certs = str(workdir / "certs")
    signed = "signed" if name == "d" else "plain"
    hops = []
    for role, listen, upstream, node in (
        ("second", second, setup.backend_url, PROVIDER_NODE),
        ("first", first, f"https://{second}", CLIENT_NODE),
    ):
        db = str(workdir / f"hop-{name}-{role}.sqlite")
        args = ["--serve-hop", role, listen, upstream, certs, node, signed, db]
        child = spawn(f"{name}-hop{1 if role == 'first' else 2}", __file__, args, workdir)
        children.append(child)
        hops.append(child)
    return Baseline(name, f"http://{first}", (hops[1], hops[0]))


def prepare_federation(
    workdir: Path,
    opmonitoring: bool = True,
    client_max_concurrent: int | None = None,
    backend_url: str | None = None,
    log_entries: int = 0,
) -> Setup:
    """Federation file on free loopback ports plus its development PKI, in ``workdir``
    (``backend_url``: a backend already chosen, shared by several federations), and each
    node's message log holding ``log_entries`` exchanges already (``prefill_log``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    backend_url = backend_url or f"http://127.0.0.1:{free_port()}"
    companies = {
        "id": SERVICE,
        "url": f"{backend_url}/companies",
        "version": "v1",
        "timeout": 30,
        "allow": [CLIENT],
        "answer_subject": ["json:directors[*].citizen_id"],
    }
    config = write_federation(
        workdir / "federation.toml",
        TestFederationSpec(
            backend_url=backend_url,
            extra_services=[companies],
            # --no-opmonitoring: the same run without operational-monitoring records, to
            # measure what they cost per exchange.
            # The load generator is one client system: above the nodes' per-client limit (32
            # in flight) it would measure 429s, so that limit is raised to the concurrency.
            node_settings={
                n: {
                    **({} if opmonitoring else {"opmonitoring": False}),
                    **(
                        {"client_max_concurrent": client_max_concurrent}
                        if client_max_concurrent
                        else {}
                    ),
                }
                for n in ("TH/GOV/DGA/hub1", "TH/GOV/BMA/hub1", "TH/GOV/DBD/hub1")
            },
        ),
    )
    fed = load_federation(config)
    ensure_pki(fed, workdir / "certs")
    node = fed.node_of_client(parse_subsystem_id(CLIENT))
    if node.client_listen is None or str(node.id) != CLIENT_NODE:
        raise StartupError(f"{CLIENT} must be a plain-HTTP client of {CLIENT_NODE}")
    host, port = node.client_listen
    for name in (CLIENT_NODE, PROVIDER_NODE):
        prefill_log(workdir, name, log_entries)
    return Setup(backend_url, f"http://{host}:{port}", config)


# Logs of N varied exchanges, built once per run and copied to every node (built anew for
# each, --against's four logs took minutes; copies also start both trees' nodes alike).
_PREFILLED: dict[int, Path] = {}


def prefill_log(workdir: Path, node: str, entries: int) -> None:
    """``node``'s message log as after ``entries`` exchanges, random message ids and a
    million persons among them (``build_signed_log(varied=True)``): a log that starts empty
    fits in SQLite's cache whole and puts every index entry on a page just written, which
    no node does after a week. ``--log-entries``."""
    if entries <= 0:
        return
    print(f"writing {entries} exchanges into {node}'s message log...", flush=True)
    started = time.perf_counter()
    built = _PREFILLED.get(entries)
    if built is None:  # outside any node's directory: copied while the nodes run
        built = _PREFILLED[entries] = workdir / f"log-{entries}.sqlite"
        asyncio.run(build_signed_log(SQLiteMessageLog(built), entries, varied=True))
    path = workdir / "data" / "nodes" / node / "messagelog.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(built)) as src,
        contextlib.closing(sqlite3.connect(path)) as dst,
    ):
        src.backup(dst)
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)


# --------------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadSpec:
    concurrency: int
    duration: float
    warmup: float
    max_requests: int
    request_timeout: float


async def drive(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    concurrency: int,
    duration: float,
    max_requests: int,
) -> tuple[Tally, float]:
    """``concurrency`` closed-loop workers until the duration or the request count is spent.

    Returns the tally and the elapsed time including the last in-flight requests, so that
    every counted request lies inside the measured time.
    """
    tally = Tally()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while tally.issued < max_requests and time.perf_counter() < deadline:
            url = urls[tally.issued % len(urls)]
            tally.issued += 1
            started = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.fail(f"{type(exc).__name__}: {exc}")
                continue
            if status == 200:
                tally.latencies.append(time.perf_counter() - started)
            else:
                tally.fail(f"HTTP {status}: {body[:300]!r}")

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return tally, time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class ProcStats:
    """One server process over one measured window."""

    name: str
    pid: int
    on_path: bool  # does this phase's request pass through it?
    cpu_s: float
    vm_hwm_kib: int
    vm_rss_kib: int


@dataclass(frozen=True, slots=True)
class PhaseResult:
    name: str
    ok: int
    errors: int
    elapsed_s: float
    latencies_s: Sequence[float]
    loadgen_cpu_s: float
    processes: tuple[ProcStats, ...]
    error_samples: tuple[str, ...]
    exited: tuple[str, ...]  # server processes found dead at the end of the phase

    @property
    def failed(self) -> bool:
        return self.errors > 0 or self.ok == 0 or bool(self.exited)

    @property
    def completed(self) -> int:
        return self.ok + self.errors

    @property
    def exchanges_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, p: float) -> float:
        """Nearest-rank percentile of the successful requests' latencies."""
        if not self.latencies_s:
            return math.nan
        return nearest_rank(self.latencies_s, p / 100) * 1000

    @property
    def server_cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.processes if p.on_path)

    @property
    def server_cpu_s_per_exchange(self) -> float:
        return self.server_cpu_s / self.completed if self.completed else math.nan

    def as_json(self) -> dict[str, object]:
        return {
            "exchanges_per_s": round(self.exchanges_per_s, 1),
            "p50_ms": finite(self.percentile_ms(50), 3),
            "p99_ms": finite(self.percentile_ms(99), 3),
            "ok": self.ok,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "server_cpu_s_per_exchange": finite(self.server_cpu_s_per_exchange, 9),
            "server_cores_busy": round(self.server_cpu_s / self.elapsed_s, 3),
            "loadgen_cores_busy": round(self.loadgen_cpu_s / self.elapsed_s, 3),
            "processes": {
                p.name: {
                    "pid": p.pid,
                    "on_path": p.on_path,
                    "cpu_s": round(p.cpu_s, 3),
                    "vm_hwm_kib": p.vm_hwm_kib,
                    "vm_rss_kib": p.vm_rss_kib,
                }
                for p in self.processes
            },
            "exited": list(self.exited),
        }


async def run_phase(
    name: str,
    urls: Sequence[str],
    headers: dict[str, str],
    load: LoadSpec,
    servers: Sequence[Child],
    on_path: frozenset[str],
) -> PhaseResult:
    connector = aiohttp.TCPConnector(limit=load.concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=load.request_timeout),
        skip_auto_headers=("User-Agent",),
    ) as session:
        # Warm-up: opens the keep-alive connections (and the nodes' TLS sessions to each
        # other and to the backend) so that handshakes are not billed to the measurement.
        if load.warmup > 0:
            await drive(session, urls, load.concurrency, load.warmup, load.max_requests)
        before = {c.name: c.usage() for c in servers}
        own_before = time.process_time()
        tally, elapsed = await drive(
            session, urls, load.concurrency, load.duration, load.max_requests
        )
        own_cpu = time.process_time() - own_before
        after = {c.name: c.usage() for c in servers}
        processes = tuple(
            ProcStats(
                c.name,
                c.pid,
                c.name in on_path,
                after[c.name].cpu_s - before[c.name].cpu_s,
                after[c.name].vm_hwm_kib,
                after[c.name].vm_rss_kib,
            )
            for c in servers
        )
    return PhaseResult(
        name=name,
        ok=len(tally.latencies),
        errors=tally.errors,
        elapsed_s=elapsed,
        latencies_s=tally.latencies,
        loadgen_cpu_s=own_cpu,
        processes=processes,
        error_samples=tuple(tally.error_samples),
        exited=tuple(c.name for c in servers if c.proc.poll() is not None),
    )


# --------------------------------------------------------------------------------------------
# Readiness
# --------------------------------------------------------------------------------------------


async def wait_ready(
    setup: Setup,
    backend: Child,
    federation: Child,
    baselines: Sequence[Baseline],
    timeout: float,
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Wait for the children; return the direct, hub and baseline URLs of every company id.

    Also checks that the hub and the baselines return exactly the backend's bytes, so that
    the phases are known to do the same work before anything is measured.
    """
    deadline = time.monotonic() + timeout
    hub_headers = {"X-Road-Client": CLIENT}
    short = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=short) as session:
        listing = await wait_until_answers(
            session, f"{setup.backend_url}/companies?limit={COMPANY_COUNT}", {}, backend, deadline
        )
        ids = [str(i) for i in json.loads(listing)["juristic_ids"]]
        if not ids:
            raise StartupError("the backend lists no companies")
        base = setup.hub_url + parse_service_id(SERVICE).r1_path()
        direct = [f"{setup.backend_url}/companies/{i}" for i in ids]
        hub = [f"{base}/{i}" for i in ids]
        via_hub = await wait_until_answers(session, hub[0], hub_headers, federation, deadline)
        async with session.get(direct[0]) as resp:
            straight = await resp.read()
        if via_hub != straight:
            raise StartupError(
                f"the hub's answer differs from the backend's: {via_hub[:200]!r} vs "
                f"{straight[:200]!r}"
            )
        baseline_urls = {}
        for b in baselines:
            urls = [f"{b.url}/companies/{i}" for i in ids]
            for hop in b.hops:
                hop.check_alive()
            via = await wait_until_answers(session, urls[0], hub_headers, b.hops[0], deadline)
            if via != straight:
                raise StartupError(f"baseline {b.name} answers other bytes: {via[:200]!r}")
            baseline_urls[b.name] = urls
    return direct, hub, baseline_urls


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def print_report(
    direct: PhaseResult,
    hub: PhaseResult,
    load: LoadSpec,
    baselines: Sequence[PhaseResult] = (),
    commit_ms: float = math.nan,
) -> dict[str, object]:
    phases = (direct, *baselines, hub)
    print(
        f"\nconcurrency {load.concurrency}, {load.duration:g} s per phase "
        f"(after {load.warmup:g} s warm-up), at most {load.max_requests} requests per phase"
    )
    head = (
        f"{'phase':<7} {'exch/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'srv CPU us/exch':>16} {'srv cores':>10} {'loadgen cores':>14}"
    )
    print(head)
    print("-" * len(head))
    for r in phases:
        print(
            f"{r.name:<7} {r.exchanges_per_s:>9.1f} {r.percentile_ms(50):>8.2f} "
            f"{r.percentile_ms(99):>8.2f} {r.errors:>7} "
            f"{r.server_cpu_s_per_exchange * 1e6:>16.0f} "
            f"{r.server_cpu_s / r.elapsed_s:>10.2f} {r.loadgen_cpu_s / r.elapsed_s:>14.2f}"
        )
    print("\nserver processes (CPU in the measured window; memory read at its end):")
    for r in phases:
        for p in r.processes:
            if not p.on_path and r is not hub:
                continue  # the idle ones are listed under the hub phase
            print(
                f"  {r.name:<7} {p.name:<11} pid {p.pid:<7} {'on path' if p.on_path else 'idle':<8}"
                f" cpu {p.cpu_s:7.2f} s  VmHWM {_mib(p.vm_hwm_kib):>6} MiB"
                f"  VmRSS {_mib(p.vm_rss_kib):>6} MiB"
            )
    ratio = quotient(hub.exchanges_per_s, direct.exchanges_per_s)
    added_p50 = hub.percentile_ms(50) - direct.percentile_ms(50)
    added_p99 = hub.percentile_ms(99) - direct.percentile_ms(99)
    cpu_ratio = quotient(hub.server_cpu_s_per_exchange, direct.server_cpu_s_per_exchange)
    print(
        f"\nhub/direct throughput {ratio:.3f}; hub adds {added_p50:.2f} ms at p50 and "
        f"{added_p99:.2f} ms at p99; server CPU per exchange x{cpu_ratio:.1f}"
    )
    # Each node commits its log row durably before answering: two fsyncs on the path.
    above_commits = added_p50 - 2 * commit_ms
    print(
        f"a durable commit takes {commit_ms:.2f} ms (p50) on this disk; the hub waits for two "
        f"per exchange and adds {above_commits:.2f} ms at p50 beyond them"
    )
    vs_baselines: dict[str, object] = {}
    for b in baselines:
        # CPU per request of the server processes on each path, in the same run.
        r_cpu = quotient(hub.server_cpu_s_per_exchange, b.server_cpu_s_per_exchange)
        r_tput = quotient(hub.exchanges_per_s, b.exchanges_per_s)
        print(
            f"hub/({b.name}): server CPU per request {r_cpu:.2f}, throughput {r_tput:.2f} "
            f"({b.name} {b.server_cpu_s_per_exchange * 1e6:.0f} us, hub "
            f"{hub.server_cpu_s_per_exchange * 1e6:.0f} us)"
        )
        vs_baselines[b.name] = {
            "server_cpu_per_exchange_ratio": finite(r_cpu, 3),
            "throughput_ratio": finite(r_tput, 4),
        }
    for r in phases:
        if r.loadgen_cpu_s / r.elapsed_s > LOADGEN_SATURATED:
            # One Python process cannot out-run the server then; say so rather than let a
            # client limit pass for a server figure.
            print(
                f"  note: the load generator was saturated in the {r.name} phase, so its "
                "throughput is a lower bound (and hub/direct an upper bound)"
            )
        for sample in r.error_samples:
            print(f"  {r.name} error: {sample}")
        for name in r.exited:
            print(f"  {r.name}: the {name} process exited during the phase")
    # The largest node process: with --one-process, the whole federation.
    fed = max(
        (p for p in hub.processes if p.name != "backend" and "-hop" not in p.name),
        key=lambda p: p.vm_hwm_kib,
    )
    return {
        "benchmark": "xroad-hub exchange",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(),
        "concurrency": load.concurrency,
        "duration_s": load.duration,
        "warmup_s": load.warmup,
        "direct": direct.as_json(),
        "hub": hub.as_json(),
        **{b.name: b.as_json() for b in baselines},
        "hub_vs_baselines": vs_baselines,
        "hub_vs_direct": {
            "throughput_ratio": finite(ratio, 4),
            "added_p50_ms": finite(added_p50, 3),
            "added_p99_ms": finite(added_p99, 3),
            "server_cpu_per_exchange_ratio": finite(cpu_ratio, 3),
            "durable_commit_p50_ms": finite(commit_ms, 3),
            "added_p50_beyond_two_commits_ms": finite(above_commits, 3),
        },
        "largest_node_process": fed.name,
        "node_vm_hwm_kib": fed.vm_hwm_kib,
        "node_vm_rss_kib": fed.vm_rss_kib,
        "ok": not any(r.failed for r in phases),
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def benchmark(
    setup: Setup,
    backend: Child,
    baselines: Sequence[Baseline],
    nodes: list[Child],
    args: argparse.Namespace,
) -> int:
    direct_urls, hub_urls, baseline_urls = await wait_ready(
        setup, backend, nodes[0], baselines, args.startup_timeout
    )
    pids = ", ".join(f"{c.name} pid {c.pid}" for c in nodes)
    print(
        f"ready: backend pid {backend.pid} at {setup.backend_url}, {pids}, client node at "
        f"{setup.hub_url}; {len(hub_urls)} company ids",
        flush=True,
    )
    load = LoadSpec(
        args.concurrency, args.duration, args.warmup, args.max_requests, args.request_timeout
    )
    hops = [h for b in baselines for h in b.hops]
    servers = (backend, *hops, *nodes)
    # The same X-Road-Client header in both phases keeps the requests byte-for-byte alike
    # apart from the path; the backend ignores it.
    headers = {"X-Road-Client": CLIENT}
    direct = await run_phase("direct", direct_urls, headers, load, servers, frozenset({"backend"}))
    measured = []
    for b in baselines:
        on_path = frozenset({"backend", *(h.name for h in b.hops)})
        measured.append(
            await run_phase(b.name, baseline_urls[b.name], headers, load, servers, on_path)
        )
    hub = await run_phase(
        "hub", hub_urls, headers, load, servers, frozenset({"backend", *(c.name for c in nodes)})
    )
    commit_ms = await asyncio.to_thread(durable_commit_ms, setup.config.parent)
    report = print_report(direct, hub, load, measured, commit_ms)
    print(json.dumps(report, separators=(",", ":"), allow_nan=False), flush=True)
    return EXIT_OK if report["ok"] else EXIT_FAILED_REQUESTS


# --------------------------------------------------------------------------------------------
# Monitoring matrix: what metrics and operational-monitoring records cost per exchange
# --------------------------------------------------------------------------------------------

# (name, metrics, opmonitoring): four federations, the same in all but these two switches.
MONITORING_MODES = (
    ("off", False, False),
    ("metrics", True, False),
    ("opmon", False, True),
    ("both", True, True),
)


@dataclass(slots=True)
class ModeFederation:
    name: str
    setup: Setup
    nodes: tuple[Child, ...]
    urls: tuple[str, ...] = ()  # known once the federation answers


def _node_cpu_per_exchange(results: Sequence[PhaseResult]) -> float:
    """CPU of the node processes (the backend, the same in every mode, left out) over every
    completed exchange of ``results``."""
    cpu = sum(p.cpu_s for r in results for p in r.processes if p.on_path and p.name != "backend")
    done = sum(r.completed for r in results)
    return cpu / done if done else math.nan


def monitoring_report(
    rounds: Sequence[dict[str, PhaseResult]], load: LoadSpec
) -> dict[str, object]:
    names = [m[0] for m in MONITORING_MODES]
    per_mode = {n: [r[n] for r in rounds] for n in names}
    off = _node_cpu_per_exchange(per_mode["off"])
    print(
        f"\nmonitoring cost: {len(rounds)} rounds, modes alternating, concurrency "
        f"{load.concurrency}, {load.duration:g} s per phase (after {load.warmup:g} s warm-up)"
    )
    head = (
        f"{'mode':<8} {'exch/s':>8} {'node CPU us/exch':>17} {'vs off':>8} "
        f"{'per round vs off':>28} {'errors':>7}"
    )
    print(head)
    print("-" * len(head))
    modes: dict[str, object] = {}
    for n in names:
        results = per_mode[n]
        cpu = _node_cpu_per_exchange(results)
        # The same ratio per round (each against that round's off phase): the spread says
        # how much of a difference is noise of the shared machine.
        each = [
            quotient(_node_cpu_per_exchange([r[n]]), _node_cpu_per_exchange([r["off"]]))
            for r in rounds
        ]
        rate = sum(r.ok for r in results) / sum(r.elapsed_s for r in results)
        errors = sum(r.errors for r in results)
        spread = " ".join(f"{x:.3f}" for x in each)
        print(
            f"{n:<8} {rate:>8.1f} {cpu * 1e6:>17.0f} {quotient(cpu, off):>8.3f} "
            f"{spread:>28} {errors:>7}"
        )
        for r in results:
            for sample in r.error_samples:
                print(f"  {n} error: {sample}")
            for name in r.exited:
                print(f"  {n}: the {name} process exited during the phase")
        modes[n] = {
            "node_cpu_us_per_exchange": finite(cpu * 1e6, 1),
            "ratio_vs_off": finite(quotient(cpu, off), 4),
            "round_ratios_vs_off": [finite(x, 4) for x in each],
            "exchanges_per_s": round(rate, 1),
            "ok": sum(r.ok for r in results),
            "errors": errors,
        }
    return {
        "benchmark": "xroad-hub monitoring cost",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "concurrency": load.concurrency,
        "duration_s": load.duration,
        "warmup_s": load.warmup,
        "rounds": len(rounds),
        "modes": modes,
        "ok": not any(r.failed for rs in per_mode.values() for r in rs),
    }


async def _ready(
    backend: Child, feds: Sequence[ModeFederation], args: argparse.Namespace
) -> tuple[list[str], LoadSpec, tuple[Child, ...]]:
    """Waits for every federation; the backend's direct URLs, the load and the servers
    whose CPU counts."""
    direct_urls: list[str] = []
    for f in feds:
        timeout = args.startup_timeout
        direct_urls, hub, _ = await wait_ready(f.setup, backend, f.nodes[0], (), timeout)
        f.urls = tuple(hub)
    print(
        f"ready: backend pid {backend.pid}; "
        + "; ".join(f"{f.name}: " + ", ".join(str(c.pid) for c in f.nodes) for f in feds),
        flush=True,
    )
    load = LoadSpec(
        args.concurrency, args.duration, args.warmup, args.max_requests, args.request_timeout
    )
    return direct_urls, load, (backend, *(c for f in feds for c in f.nodes))


async def _alternating_rounds(
    targets: dict[str, tuple[list[str], frozenset[str]]],
    rounds: int,
    load: LoadSpec,
    servers: Sequence[Child],
) -> list[dict[str, PhaseResult]]:
    """Every target once per round, each round starting one target later: drift of the
    shared machine (other processes, thermal limits) falls on every target alike."""
    names = list(targets)
    headers = {"X-Road-Client": CLIENT}
    done: list[dict[str, PhaseResult]] = []
    for i in range(rounds):
        this: dict[str, PhaseResult] = {}
        for name in [*names[i % len(names) :], *names[: i % len(names)]]:
            urls, on_path = targets[name]
            this[name] = await run_phase(name, urls, headers, load, servers, on_path)
        done.append(this)
    return done


def _on_path(f: ModeFederation) -> frozenset[str]:
    return frozenset({"backend", *(c.name for c in f.nodes)})


async def monitoring_benchmark(
    backend: Child, feds: Sequence[ModeFederation], args: argparse.Namespace
) -> int:
    _, load, servers = await _ready(backend, feds, args)
    targets = {f.name: (list(f.urls), _on_path(f)) for f in feds}
    rounds = await _alternating_rounds(targets, args.rounds, load, servers)
    report = monitoring_report(rounds, load)
    for f in feds:
        # The switches took: a node keeps its records file exactly when opmonitoring is on.
        kept = any(f.setup.config.parent.glob("data/**/opmonitoring.sqlite"))
        wanted = f.name in ("opmon", "both")
        if kept != wanted:
            print(f"  {f.name}: opmonitoring.sqlite {'present' if kept else 'missing'}")
            report["ok"] = False
    print(json.dumps(report, separators=(",", ":"), allow_nan=False), flush=True)
    return EXIT_OK if report["ok"] else EXIT_FAILED_REQUESTS


def run_matrix(args: argparse.Namespace, workdir: Path, children: list[Child]) -> int:
    """One backend, four federations (MONITORING_MODES) on their own ports and processes."""
    configure_logging("warning")
    backend_url = f"http://127.0.0.1:{free_port()}"
    backend_addr = backend_url.removeprefix("http://")
    children.append(spawn("backend", __file__, ["--serve-backend", backend_addr], workdir))
    feds = []
    for name, metrics, opmon in MONITORING_MODES:
        setup = prepare_federation(
            workdir / name,
            opmonitoring=opmon,
            client_max_concurrent=args.concurrency if args.concurrency > 32 else None,
            backend_url=backend_url,
            log_entries=args.log_entries,
        )
        first = len(children)
        spawn_federation(
            children, __file__, setup.config, args.log_level, workdir,
            client_node=CLIENT_NODE, provider_node=PROVIDER_NODE, one_process=args.one_process,
            prefix=f"{name}-", extra=() if metrics else ("--no-metrics",),
        )  # fmt: skip
        feds.append(ModeFederation(name, setup, tuple(children[first:])))
    return asyncio.run(monitoring_benchmark(children[0], feds, args))


# --------------------------------------------------------------------------------------------
# Against another source tree: the unchanged hub next to this one, in the same run
# --------------------------------------------------------------------------------------------

AGAINST_PHASES = ("direct", "against", "this")


def _largest_node_kib(result: PhaseResult) -> int:
    return max((p.vm_hwm_kib for p in result.processes if p.on_path and p.name != "backend"),
               default=0)  # fmt: skip


def against_report(
    rounds: Sequence[dict[str, PhaseResult]], load: LoadSpec, tree: Path
) -> dict[str, object]:
    import statistics

    def added(r: dict[str, PhaseResult], name: str) -> float:
        return r[name].percentile_ms(50) - r["direct"].percentile_ms(50)

    print(
        f"\nthis tree against {tree}: {len(rounds)} rounds, phases alternating, concurrency "
        f"{load.concurrency}, {load.duration:g} s per phase (after {load.warmup:g} s warm-up)"
    )
    head = (
        f"{'hub':<8} {'exch/s':>8} {'p50 ms':>8} {'added p50':>10} {'node CPU us/exch':>17} "
        f"{'node peak MiB':>14} {'errors':>7}"
    )
    print(head)
    print("-" * len(head))
    variants: dict[str, object] = {}
    for name in ("against", "this"):
        results = [r[name] for r in rounds]
        p50 = statistics.median(r.percentile_ms(50) for r in results)
        add = statistics.median(added(r, name) for r in rounds)
        cpu = _node_cpu_per_exchange(results)
        rate = sum(r.ok for r in results) / sum(r.elapsed_s for r in results)
        peak = max(_largest_node_kib(r) for r in results)
        errors = sum(r.errors for r in results)
        print(
            f"{name:<8} {rate:>8.1f} {p50:>8.2f} {add:>10.2f} {cpu * 1e6:>17.0f} "
            f"{peak / 1024:>14.1f} {errors:>7}"
        )
        for r in results:
            for sample in r.error_samples:
                print(f"  {name} error: {sample}")
            for proc in r.exited:
                print(f"  {name}: the {proc} process exited during the phase")
        variants[name] = {
            "exchanges_per_s": round(rate, 1),
            "p50_ms": finite(p50, 3),
            "added_p50_ms": finite(add, 3),
            "node_cpu_us_per_exchange": finite(cpu * 1e6, 1),
            "node_peak_vm_hwm_kib": peak,
            "errors": errors,
        }
    # Per round, this against the unchanged tree: the spread says how much is noise.
    cpu_each = [
        quotient(_node_cpu_per_exchange([r["this"]]), _node_cpu_per_exchange([r["against"]]))
        for r in rounds
    ]
    p50_each = [
        quotient(r["this"].percentile_ms(50), r["against"].percentile_ms(50)) for r in rounds
    ]
    added_each = [quotient(added(r, "this"), added(r, "against")) for r in rounds]
    ratios = {
        "node_cpu_per_exchange": statistics.median(cpu_each),
        "p50": statistics.median(p50_each),
        "added_p50": statistics.median(added_each),
        "node_peak_memory": quotient(
            float(variants["this"]["node_peak_vm_hwm_kib"]),  # type: ignore[index]
            float(variants["against"]["node_peak_vm_hwm_kib"]),  # type: ignore[index]
        ),
    }
    for key, each in (("node_cpu_per_exchange", cpu_each), ("p50", p50_each),
                      ("added_p50", added_each)):  # fmt: skip
        spread = " ".join(f"{x:.3f}" for x in each)
        print(f"this/against {key:<22} {ratios[key]:.3f} (median; per round: {spread})")
    print(f"this/against {'node_peak_memory':<22} {ratios['node_peak_memory']:.3f}")
    return {
        "benchmark": "xroad-hub exchange, this tree against another",
        "against": str(tree),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "concurrency": load.concurrency,
        "duration_s": load.duration,
        "warmup_s": load.warmup,
        "rounds": len(rounds),
        "variants": variants,
        "ratios_this_vs_against": {k: finite(v, 4) for k, v in ratios.items()},
        "ok": not any(r[n].failed for r in rounds for n in AGAINST_PHASES),
    }


async def against_benchmark(
    backend: Child, feds: Sequence[ModeFederation], args: argparse.Namespace
) -> int:
    direct_urls, load, servers = await _ready(backend, feds, args)
    targets = {"direct": (direct_urls, frozenset({"backend"}))} | {
        f.name: (list(f.urls), _on_path(f)) for f in feds
    }
    targets = {name: targets[name] for name in AGAINST_PHASES}
    rounds = await _alternating_rounds(targets, args.rounds, load, servers)
    report = against_report(rounds, load, args.against)
    print(json.dumps(report, separators=(",", ":"), allow_nan=False), flush=True)
    return EXIT_OK if report["ok"] else EXIT_FAILED_REQUESTS


def run_against(args: argparse.Namespace, workdir: Path, children: list[Child]) -> int:
    """One backend; the federation of another source tree (its own scripts and package, run
    with PYTHONPATH set to it) and this one's, on their own ports and processes."""
    configure_logging("warning")
    tree: Path = args.against.resolve()
    script = tree / "scripts" / "bench_exchange.py"
    if not (script.is_file() and (tree / "xroad_hub").is_dir()):
        raise StartupError(f"{tree} is not a source tree of xroad-hub (no {script})")
    backend_url = f"http://127.0.0.1:{free_port()}"
    backend_addr = backend_url.removeprefix("http://")
    children.append(spawn("backend", __file__, ["--serve-backend", backend_addr], workdir))
    here = Path(__file__).resolve().parent.parent
    feds = []
    for name, source, root in (("against", script, tree), ("this", Path(__file__), here)):
        setup = prepare_federation(
            workdir / name,
            client_max_concurrent=args.concurrency if args.concurrency > 32 else None,
            backend_url=backend_url,
            log_entries=args.log_entries,
        )
        first = len(children)
        spawn_federation(
            children, source, setup.config, args.log_level, workdir,
            client_node=CLIENT_NODE, provider_node=PROVIDER_NODE, one_process=args.one_process,
            prefix=f"{name}-", env={**os.environ, "PYTHONPATH": str(root)},
        )  # fmt: skip
        feds.append(ModeFederation(name, setup, tuple(children[first:])))
    return asyncio.run(against_benchmark(children[0], feds, args))


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="xroad-bench-", dir=args.tmpdir))

    def start_and_measure(children: list[Child]) -> int:
        if args.monitoring_matrix:
            return run_matrix(args, workdir, children)
        if args.against is not None:
            return run_against(args, workdir, children)
        # The PKI helper logs every file it creates; only problems matter here.
        configure_logging("warning")
        setup = prepare_federation(
            workdir,
            opmonitoring=not args.no_opmonitoring,
            client_max_concurrent=args.concurrency if args.concurrency > 32 else None,
            log_entries=args.log_entries,
        )
        backend_addr = setup.backend_url.removeprefix("http://")
        children.append(spawn("backend", __file__, ["--serve-backend", backend_addr], workdir))
        baselines = (
            []
            if args.no_baselines
            else [spawn_baseline(children, name, setup, workdir) for name in ("c", "d")]
        )
        first_node = len(children)
        spawn_federation(
            children, __file__, setup.config, args.log_level, workdir,
            client_node=CLIENT_NODE, provider_node=PROVIDER_NODE, one_process=args.one_process,
        )  # fmt: skip
        return asyncio.run(benchmark(setup, children[0], baselines, children[first_node:], args))

    return run_with_children("bench_exchange", workdir, args.keep_workdir, start_and_measure)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
What it does:
  Writes a federation file on free loopback ports (xroad_hub.dev.testing) and its development
  PKI into a temporary directory, starts the DBD demo backend and the federation (registry
  and nodes) as two child processes, waits until both answer (and checks that the hub's
  answer equals the backend's), then runs two phases with the same closed-loop load:
  CONCURRENCY workers on one keep-alive aiohttp session, each sending its next request as
  soon as the last one answered, until DURATION seconds or MAX_REQUESTS are spent.
    direct  GET <backend>/companies/<id>
    hub     GET <client node>/r1/TH/GOV/DBD/registry/companies/<id>, X-Road-Client:
            TH/GOV/DGA/devportal (plain HTTP client, auth = "http")

What it prints, per phase:
  exch/s           successful (HTTP 200) requests per second of the measured window
  p50/p99 ms       latency of the successful requests, nearest rank
  errors           requests that failed or answered anything but 200
  srv CPU us/exch  user+system CPU of the server processes on the path (/proc/<pid>/stat:
                   backend for direct; backend + federation for hub) / completed requests
  srv cores        that CPU / wall time (1.0 = one core busy; the federation runs in one
                   event loop, so ~1.0 there means the hub is CPU-bound)
  loadgen cores    the load generator's own CPU / wall time (near 1.0: the client limits)
  VmHWM / VmRSS    peak and current resident memory of each child (/proc/<pid>/status)
then the hub/direct throughput ratio, the added p50/p99 latency, and the same figures as
one JSON line (the last line of stdout).

Exit status: 0 all requests answered 200; 1 some failed; 2 a child did not start or did
not answer within --startup-timeout; 130 interrupted.""",
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="concurrent workers (default: 64)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per phase (default: 10)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="unmeasured seconds of the same load before each phase (default: 2)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=1_000_000,
        help="upper bound on requests per phase (default: 1000000)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds before one request counts as failed (default: 30)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        help="seconds the children get to answer their first request (default: 60)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="log level of the federation; info (the default of `xroad-hub up`) logs every "
        "exchange on both nodes, which is part of the cost measured",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run for the test suite: concurrency 4, 1 s per phase, 0.2 s warm-up "
        "(overrides those options)",
    )
    parser.add_argument(
        "--tmpdir", type=Path, default=None, help="where to create the work directory"
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="run registry and both nodes in one process (as `xroad-hub up` does) instead of "
        "one process per node",
    )
    parser.add_argument(
        "--no-opmonitoring",
        action="store_true",
        help="nodes keep no operational-monitoring records (compare the srv CPU us/exch of "
        "a run with and one without this flag for the records' cost)",
    )
    parser.add_argument(
        "--monitoring-matrix",
        action="store_true",
        help="instead of the phases above: what metrics and operational-monitoring records "
        "cost, with four federations (off, metrics only, opmon only, both) measured in "
        "alternating rounds; node CPU per exchange and its ratio to off",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="TREE",
        help="instead of the phases above: the hub of another source tree of this project "
        "(e.g. `git archive main | tar -x -C TREE`) and this one's, each with its own nodes "
        "on the same backend, in alternating rounds with the direct phase; p50, added p50, "
        "node CPU per exchange, peak node memory and their ratios this/against",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --monitoring-matrix or --against: rounds of the modes (default: 3; --smoke: 1)",
    )
    parser.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the baselines (c) and (d) (two plain proxy hops with mutual TLS; the same "
        "with ECDSA P-256 signatures and a durable SQLite row per request)",
    )
    parser.add_argument(
        "--log-entries",
        type=int,
        default=0,
        metavar="N",
        help="start each node with N exchanges in its message log (random ids, a million "
        "persons), as a node that has run for a while; an empty log fits in memory whole",
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the work directory (federation file, PKI, message logs, child logs)",
    )
    internal = parser.add_argument_group("internal (how the script starts its own children)")
    internal.add_argument(
        "--serve-backend", metavar="HOST:PORT", help="run the DBD demo backend until SIGTERM"
    )
    internal.add_argument(
        "--serve-federation",
        type=Path,
        metavar="CONFIG",
        help="run registry and nodes of CONFIG (certs/ and data/ next to it) until SIGTERM",
    )
    internal.add_argument(
        "--serve-hop",
        nargs=7,
        metavar=("ROLE", "LISTEN", "UPSTREAM", "CERTS", "NODE", "MODE", "DB"),
        help="run one baseline proxy hop (benchhops.py) until SIGTERM",
    )
    internal.add_argument(
        "--no-metrics",
        action="store_true",
        help="with --serve-federation: the nodes keep no metrics",
    )
    internal.add_argument(
        "--only",
        metavar="COMPONENTS",
        help="with --serve-federation: comma-separated components to run (registry, node ids)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve_backend:
        asyncio.run(_serve_backend(args.serve_backend))
        return EXIT_OK
    if args.serve_hop:
        role, listen, upstream, certs, node, mode, db = args.serve_hop
        asyncio.run(
            serve_hop(role, listen, upstream, Path(certs), node, mode == "signed", Path(db))
        )
        return EXIT_OK
    if args.serve_federation:
        asyncio.run(
            serve_federation(
                args.serve_federation, args.log_level, args.only, metrics=not args.no_metrics
            )
        )
        return EXIT_OK
    if args.smoke:
        args.concurrency, args.duration, args.warmup, args.rounds = 4, 1.0, 0.2, 1
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.log_entries < 0:
        parser.error("--log-entries must be >= 0")
    if args.concurrency < 1 or args.duration <= 0 or args.max_requests < 1 or args.warmup < 0:
        parser.error("--concurrency and --max-requests must be >= 1, --duration > 0, --warmup >= 0")
    return run(args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):  # `... | head` must not end in a traceback
        sys.exit(main())
