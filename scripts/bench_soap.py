"""Benchmark X-Road SOAP 4.0 against REST over DOPA's legacy SOAP service, on loopback.

All exchanges reach the same legacy service: the DOPA population registry of the demo (a
SOAP 1.1 server that knows nothing of X-Road), registered on the DOPA node with
``[[node.soap_service]]`` mode "bridge", operation ``getPerson``. Three kinds of request:

- ``soap``: X-Road SOAP 4.0 ``POST {client node}/`` as ``TH/GOV/DGA/devportal``; the DGA node
  signs and sends it to the DOPA node, which strips the X-Road header, calls the service and
  wraps its answer (client -> DGA node -> DOPA node -> legacy service);
- ``rest``: ``GET {client node}/r1/TH/GOV/DOPA/population/getPerson?citizenId=...``, bridged
  by the DOPA node from REST/JSON to the same SOAP operation and back;
- ``direct``: the plain SOAP 1.1 request straight to the legacy service, no hub at all.

Two measurements in one run, each from the same processes:

1. throughput at ``--concurrency``: soap against rest (exchanges/s, ratio soap/rest);
2. latency at ``--latency-concurrency`` (low): rest (bridged) against direct, p50/p99 and
   what the hub adds at p50; soap at the same concurrency is reported alongside.

Process layout (why): on a 2-core machine a load generator sharing an event loop with the
servers would bill its own cost to them. The legacy service and the federation (registry
and the two nodes) run in child processes of this script, the load generator in the parent,
and each child's CPU time is read from ``/proc``. The legacy service has a process of its
own so that the direct phase measures it alone. The children re-run this file with
``--serve-backend`` / ``--serve-federation`` and stop on SIGTERM or when the parent is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import requests
import zeep

# Next to this file, found through sys.path[0] as the script is run directly.
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
from lxml import etree

from xroad_hub.demo import synthetic
from xroad_hub.demo.dopa import NAMESPACE as DOPA_NS
from xroad_hub.demo.dopa import dopa_app
from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.testing import on_free_ports
from xroad_hub.federation import load_federation
from xroad_hub.logs import configure_logging
from xroad_hub.protocol.identifiers import parse_subsystem_id
from xroad_hub.protocol.soap import HUB_NS, ID_NS, XRD_NS

DEMO_FEDERATION = Path(__file__).resolve().parents[1] / "config" / "demo-federation.toml"
CLIENT = "TH/GOV/DGA/devportal"  # registered with auth = "http" on the DGA node
CLIENT_NODE = "TH/GOV/DGA/hub1"
PROVIDER_NODE = "TH/GOV/DOPA/hub1"
SUBSYSTEM = ("TH", "GOV", "DOPA", "population")
OPERATION = "getPerson"
VERSION = "v1"
# DOPA's registration declares purposes; REST states one with X-Road-Purpose, SOAP with the
# hub's own header field <xh:purpose> (xroad_hub.protocol.soap.HUB_NS).
PURPOSE = "citizen-self-service"
BACKEND_KIND = "dopa-population"
# dopa_app's default: its population is the people behind this many demo companies.
DOPA_COMPANIES = 200
DEMO_CITIZEN = "1552806801307"  # has a house registration; used for the readiness check

# Placeholders zeep writes into the request templates, replaced per request. The citizen
# mark is 13 digits like a real id, so the template is what zeep builds for a real call.
CITIZEN_MARK = "0000000000000"
MESSAGE_ID_MARK = "bench-soap-message-id"

LOADGEN_SATURATED = 0.9  # cores of the parent's own CPU above which the client is the limit
TARGET_SOAP_VS_REST = 0.6
TARGET_ADDED_P50_MS = 3.0


# --------------------------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------------------------


async def _serve_backend(address: str, seed: int) -> None:
    await serve_app(dopa_app(seed=seed), address)


# --------------------------------------------------------------------------------------------
# Parent side: children and set-up
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    config: Path
    backend_listen: str  # HOST:PORT of the legacy service
    backend_url: str  # its root: POST / for SOAP, GET /?wsdl
    seed: int
    hub_url: str  # the DGA node's plain-HTTP client listener


def prepare_federation(workdir: Path) -> Setup:
    """The demo federation file moved onto free ports, with a fresh development PKI.

    The file is used as it is (DOPA's purposes included): both REST and SOAP requests state
    a declared purpose, so the access checks measured are the demo's own.
    """
    config = on_free_ports(DEMO_FEDERATION, workdir / "federation.toml")
    fed = load_federation(config)
    ensure_pki(fed, workdir / "certs")
    backend = next((b for b in fed.backends if b.kind == BACKEND_KIND), None)
    if backend is None:
        raise StartupError(f"{DEMO_FEDERATION} has no {BACKEND_KIND} backend")
    node = fed.node_of_client(parse_subsystem_id(CLIENT))
    auth = {str(c.id): c.auth for c in node.clients}.get(CLIENT)
    if str(node.id) != CLIENT_NODE or node.client_listen is None or auth != "http":
        raise StartupError(f"{CLIENT} must be a plain-HTTP (auth = 'http') client of {CLIENT_NODE}")
    host, port = backend.listen
    client_host, client_port = node.client_listen
    return Setup(
        config=config,
        backend_listen=f"{host}:{port}",
        backend_url=f"http://{host}:{port}",
        seed=backend.seed,
        hub_url=f"http://{client_host}:{client_port}",
    )


# --------------------------------------------------------------------------------------------
# Requests, built by zeep
# --------------------------------------------------------------------------------------------


class _HeaderCatcher(zeep.Plugin):
    """Keeps the HTTP headers zeep would send (Content-Type, SOAPAction) with a message."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    def egress(
        self, envelope: Any, http_headers: dict[str, str], operation: Any, binding_options: Any
    ) -> tuple[Any, dict[str, str]]:
        self.headers = dict(http_headers)
        return envelope, http_headers


def _xroad_header() -> list[etree._Element]:
    """The X-Road SOAP 4.0 header a client system sends, plus the hub's purpose field."""

    def ident(tag: str, object_type: str, parts: Sequence[tuple[str, str]]) -> etree._Element:
        el = etree.Element(f"{{{XRD_NS}}}{tag}", nsmap={"xrd": XRD_NS, "id": ID_NS})
        el.set(f"{{{ID_NS}}}objectType", object_type)
        for name, value in parts:
            etree.SubElement(el, f"{{{ID_NS}}}{name}").text = value
        return el

    names = ("xRoadInstance", "memberClass", "memberCode", "subsystemCode")
    client_el = ident("client", "SUBSYSTEM", list(zip(names, CLIENT.split("/"), strict=True)))
    instance, member_class, member_code, subsystem = SUBSYSTEM
    service_el = ident("service", "SERVICE", [
        ("xRoadInstance", instance), ("memberClass", member_class), ("memberCode", member_code),
        ("subsystemCode", subsystem), ("serviceCode", OPERATION), ("serviceVersion", VERSION),
    ])  # fmt: skip
    message_id = etree.Element(f"{{{XRD_NS}}}id", nsmap={"xrd": XRD_NS})
    message_id.text = MESSAGE_ID_MARK
    protocol = etree.Element(f"{{{XRD_NS}}}protocolVersion", nsmap={"xrd": XRD_NS})
    protocol.text = "4.0"
    purpose = etree.Element(f"{{{HUB_NS}}}purpose", nsmap={"xh": HUB_NS})
    purpose.text = PURPOSE
    return [client_el, service_el, message_id, protocol, purpose]


@dataclass(frozen=True, slots=True)
class Template:
    """One request as zeep builds it, with the citizen id as a placeholder."""

    body: bytes
    headers: dict[str, str]

    def for_citizen(self, citizen_id: str) -> bytes:
        return self.body.replace(CITIZEN_MARK.encode(), citizen_id.encode())


def _zeep_template(
    wsdl_url: str, session: requests.Session, soapheaders: list[etree._Element] | None
) -> Template:
    catcher = _HeaderCatcher()
    settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True)
    client = zeep.Client(
        wsdl_url, transport=zeep.Transport(session=session), settings=settings, plugins=[catcher]
    )
    kwargs: dict[str, Any] = {"citizenId": CITIZEN_MARK}
    if soapheaders is not None:
        kwargs["_soapheaders"] = soapheaders
    message = client.create_message(client.service, OPERATION, **kwargs)
    body = etree.tostring(message, xml_declaration=True, encoding="UTF-8")
    if body.count(CITIZEN_MARK.encode()) != 1:
        raise StartupError(f"zeep's {OPERATION} request does not hold the citizen id once")
    return Template(body, catcher.headers)


def build_templates(setup: Setup) -> tuple[Template, Template]:
    """(direct, soap): zeep's request from the legacy service's own WSDL, and an X-Road
    client's request from the X-Road WSDL the DGA node serves for the operation. Synchronous
    (zeep and requests); called once, in a thread, before anything is measured."""
    with requests.Session() as session:
        direct = _zeep_template(f"{setup.backend_url}/?wsdl", session, None)
        session.headers["X-Road-Client"] = CLIENT  # the node's GET /wsdl wants to know who
        instance, member_class, member_code, subsystem = SUBSYSTEM
        wsdl = (
            f"{setup.hub_url}/wsdl?xRoadInstance={instance}&memberClass={member_class}"
            f"&memberCode={member_code}&subsystemCode={subsystem}&serviceCode={OPERATION}"
            f"&version={VERSION}"
        )
        soap = _zeep_template(wsdl, session, _xroad_header())
    if soap.body.count(MESSAGE_ID_MARK.encode()) != 1:
        raise StartupError("zeep's X-Road request does not hold the message id once")
    return direct, soap


def citizen_ids(seed: int) -> list[str]:
    """Everyone the legacy service knows (the same data dopa_app(seed) serves), so that the
    requests cycle through the whole registry rather than one cached answer."""
    population = synthetic.population(seed, synthetic.demo_people(seed, DOPA_COMPANIES))
    return [c.citizen_id for c in population.citizens]


# --------------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------------

# A request as the load generator sends it: method, URL, body (None for GET).
Request = tuple[str, str, bytes | None]


@dataclass(frozen=True, slots=True)
class PhaseSpec:
    name: str  # direct, rest or soap
    headers: dict[str, str]  # the same on every request of the phase
    make: Callable[[int], Request]  # the n-th request of the phase
    on_path: frozenset[str]  # children the request passes through


async def drive(
    session: aiohttp.ClientSession,
    make: Callable[[int], Request],
    concurrency: int,
    duration: float,
    max_requests: int | float,
) -> tuple[Tally, float]:
    """``concurrency`` closed-loop workers until the duration or the request count is spent;
    the elapsed time includes the last requests in flight, so every one counted is inside."""
    tally = Tally()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while tally.issued < max_requests and time.perf_counter() < deadline:
            method, url, body = make(tally.issued)
            tally.issued += 1
            started = time.perf_counter()
            try:
                async with session.request(method, url, data=body) as resp:
                    answer = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.fail(f"{type(exc).__name__}: {exc}")
                continue
            if status == 200:  # a SOAP fault is HTTP 500, so 200 is a real answer
                tally.latencies.append(time.perf_counter() - started)
            else:
                tally.fail(f"HTTP {status}: {answer[:300]!r}")

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return tally, time.perf_counter() - started


@dataclass(slots=True)
class PhaseResult:
    name: str
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    loadgen_cpu_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # per child, in the window
    on_path: frozenset[str] = frozenset()
    error_samples: list[str] = field(default_factory=list)
    exited: set[str] = field(default_factory=set)

    def add(self, other: PhaseResult) -> None:
        """Fold another round of the same phase into this one."""
        self.ok += other.ok
        self.errors += other.errors
        self.elapsed_s += other.elapsed_s
        self.latencies_s += other.latencies_s
        self.loadgen_cpu_s += other.loadgen_cpu_s
        for name, cpu in other.cpu_s.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + cpu
        self.on_path = other.on_path
        self.error_samples = (self.error_samples + other.error_samples)[:5]
        self.exited |= other.exited

    @property
    def failed(self) -> bool:
        return self.errors > 0 or self.ok == 0 or bool(self.exited)

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
        return sum(cpu for name, cpu in self.cpu_s.items() if name in self.on_path)

    @property
    def server_cpu_us_per_exchange(self) -> float:
        done = self.ok + self.errors
        return self.server_cpu_s / done * 1e6 if done else math.nan

    def cores(self, cpu: float) -> float:
        return cpu / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def as_json(self) -> dict[str, object]:
        return {
            "exchanges_per_s": round(self.exchanges_per_s, 1),
            "p50_ms": finite(self.percentile_ms(50), 3),
            "p99_ms": finite(self.percentile_ms(99), 3),
            "ok": self.ok,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "server_cpu_us_per_exchange": finite(self.server_cpu_us_per_exchange, 1),
            "cores_busy": {name: round(self.cores(cpu), 3) for name, cpu in self.cpu_s.items()},
            "on_path": sorted(self.on_path),
            "loadgen_cores_busy": finite(self.cores(self.loadgen_cpu_s), 3),
            "error_samples": self.error_samples,
            "exited": sorted(self.exited),
        }


@dataclass(frozen=True, slots=True)
class LoadSpec:
    duration: float  # math.inf when the phases are bounded by a request count
    warmup: float
    max_requests: int | float  # math.inf when the phases are bounded by time
    request_timeout: float


async def run_phase(
    spec: PhaseSpec, concurrency: int, load: LoadSpec, children: Sequence[Child]
) -> PhaseResult:
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(
        connector=connector,
        headers=spec.headers,
        timeout=aiohttp.ClientTimeout(total=load.request_timeout),
        skip_auto_headers=("User-Agent",),
    ) as session:
        # Warm-up: opens the keep-alive connections (and the nodes' TLS sessions to each
        # other) so that handshakes are not billed to the measurement.
        if load.warmup > 0:
            await drive(session, spec.make, concurrency, load.warmup, load.max_requests)
        before = {c.name: c.cpu() for c in children}
        own_before = time.process_time()
        tally, elapsed = await drive(
            session, spec.make, concurrency, load.duration, load.max_requests
        )
        own_cpu = time.process_time() - own_before
        after = {c.name: c.cpu() for c in children}
    return PhaseResult(
        name=spec.name,
        ok=len(tally.latencies),
        errors=tally.errors,
        elapsed_s=elapsed,
        latencies_s=tally.latencies,
        loadgen_cpu_s=own_cpu,
        cpu_s={name: after[name] - before[name] for name in after},
        on_path=spec.on_path,
        error_samples=tally.error_samples,
        exited={c.name for c in children if c.proc.poll() is not None},
    )


async def run_group(
    specs: Sequence[PhaseSpec],
    concurrency: int,
    load: LoadSpec,
    rounds: int,
    children: Sequence[Child],
) -> dict[str, PhaseResult]:
    """Every phase once per round; odd rounds run them in reverse order (A B, B A, ...) so
    that a drift over the run (message logs growing, a neighbour's load) hits both sides."""
    merged: dict[str, PhaseResult] = {}
    for round_no in range(rounds):
        for spec in specs if round_no % 2 == 0 else reversed(specs):
            result = await run_phase(spec, concurrency, load, children)
            print(
                f"  {spec.name:<6} c={concurrency:<3} round {round_no + 1}: "
                f"{result.exchanges_per_s:8.1f}/s  p50 {result.percentile_ms(50):7.2f} ms  "
                f"errors {result.errors}",
                flush=True,
            )
            if spec.name in merged:
                merged[spec.name].add(result)
            else:
                merged[spec.name] = result
    return {spec.name: merged[spec.name] for spec in specs}


# --------------------------------------------------------------------------------------------
# Readiness
# --------------------------------------------------------------------------------------------


def _given_name_soap(answer: bytes) -> str | None:
    root = etree.fromstring(answer, etree.XMLParser(resolve_entities=False, no_network=True))
    name = root.findtext(f".//{{{DOPA_NS}}}nameEn/{{{DOPA_NS}}}givenName")
    return None if name is None else str(name)


async def check_same_answer(
    setup: Setup, rest_url: str, rest_headers: dict[str, str], direct: Template, soap: Template
) -> None:
    """The three paths must reach the same record before any of them is timed: a refused
    or misrouted call would otherwise be measured as a fast one."""
    names: dict[str, str | None] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(rest_url, headers=rest_headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise StartupError(f"REST getPerson answered {resp.status}: {body[:300]!r}")
            names["rest"] = json.loads(body)["person"]["nameEn"]["givenName"]
        message_id = uuid.uuid4().hex.encode()
        for name, url, template in (
            ("direct", setup.backend_url + "/", direct),
            ("soap", setup.hub_url + "/", soap),
        ):
            # Only the X-Road request holds the message id mark.
            data = template.for_citizen(DEMO_CITIZEN).replace(MESSAGE_ID_MARK.encode(), message_id)
            async with session.post(url, data=data, headers=template.headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise StartupError(f"{name} getPerson answered {resp.status}: {body[:400]!r}")
                names[name] = _given_name_soap(body)
    if len(set(names.values())) != 1 or None in names.values():
        raise StartupError(f"the three paths disagree about {DEMO_CITIZEN}: {names}")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _print_table(title: str, results: dict[str, PhaseResult]) -> None:
    print(f"\n{title}")
    head = (
        f"{'phase':<7} {'exch/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'srv CPU us/exch':>16}  cores busy (per process; loadgen)"
    )
    print(head)
    print("-" * len(head))
    for r in results.values():
        cores = " ".join(f"{name} {r.cores(cpu):.2f}" for name, cpu in r.cpu_s.items())
        print(
            f"{r.name:<7} {r.exchanges_per_s:>8.1f} {r.percentile_ms(50):>8.2f} "
            f"{r.percentile_ms(99):>8.2f} {r.errors:>7} {r.server_cpu_us_per_exchange:>16.0f}  "
            f"{cores}; loadgen {r.cores(r.loadgen_cpu_s):.2f}"
        )


def _met(value: float, ok: Callable[[float], bool]) -> bool | None:
    return ok(value) if math.isfinite(value) else None


def report(
    throughput: dict[str, PhaseResult],
    latency: dict[str, PhaseResult],
    args: argparse.Namespace,
    load: LoadSpec,
    direct: Template,
    soap: Template,
    commit_ms: float = math.nan,
) -> dict[str, object]:
    bound = (
        f"{args.requests} requests" if args.requests else f"{load.duration:g} s"
    ) + f" per phase after {load.warmup:g} s warm-up, {args.rounds} round(s)"
    _print_table(f"throughput, concurrency {args.concurrency} ({bound})", throughput)
    _print_table(f"latency, concurrency {args.latency_concurrency} ({bound})", latency)
    rest_hi, soap_hi = throughput["rest"], throughput["soap"]
    ratio = quotient(soap_hi.exchanges_per_s, rest_hi.exchanges_per_s)
    cpu_ratio = quotient(soap_hi.server_cpu_us_per_exchange, rest_hi.server_cpu_us_per_exchange)
    base = latency["direct"]
    added = {
        name: (
            latency[name].percentile_ms(50) - base.percentile_ms(50),
            latency[name].percentile_ms(99) - base.percentile_ms(99),
        )
        for name in ("rest", "soap")
    }
    print(
        f"\nsoap/rest throughput {ratio:.3f} (target >= {TARGET_SOAP_VS_REST}); "
        f"server CPU per exchange soap/rest x{cpu_ratio:.2f}"
    )
    for name, (p50, p99) in added.items():
        print(f"{name} adds {p50:.2f} ms at p50 and {p99:.2f} ms at p99 over direct", end="")
        print(f" (target <= {TARGET_ADDED_P50_MS} ms at p50)" if name == "rest" else "")
    # Each node commits its log row durably before answering: two fsyncs on the path.
    print(
        f"a durable commit takes {commit_ms:.2f} ms (p50) on this disk; beyond the two per "
        f"exchange, rest adds {added['rest'][0] - 2 * commit_ms:.2f} ms and soap "
        f"{added['soap'][0] - 2 * commit_ms:.2f} ms at p50"
    )
    for r in (*throughput.values(), *latency.values()):
        if r.cores(r.loadgen_cpu_s) > LOADGEN_SATURATED:
            print(
                f"  note: the load generator was saturated in {r.name}; its throughput there "
                "is a lower bound"
            )
        for sample in r.error_samples:
            print(f"  {r.name} error: {sample}")
        for name in sorted(r.exited):
            print(f"  {r.name}: the {name} process exited during the phase")
    rest_p50 = added["rest"][0]
    return {
        "benchmark": "xroad-hub soap",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "zeep": zeep.__version__,
        "cpus": os.cpu_count(),
        "layout": "one process" if args.one_process else "one process per node",
        "log_level": args.log_level,
        "duration_s": None if args.requests else load.duration,
        "requests_per_phase": args.requests,
        "warmup_s": load.warmup,
        "rounds": args.rounds,
        "requests": {
            "direct": "SOAP 1.1 envelope built by zeep (create_message on the legacy WSDL, "
            "citizen id substituted), POSTed with aiohttp with zeep's HTTP headers",
            "soap": "X-Road SOAP 4.0 envelope built by zeep from the DGA node's /wsdl with "
            "client/service/id/protocolVersion and xh:purpose headers (fresh id per "
            "request), POSTed with aiohttp",
            "rest": "GET /r1/TH/GOV/DOPA/population/getPerson?citizenId=... with "
            "X-Road-Client and X-Road-Purpose",
            "soap_headers": {"direct": direct.headers, "soap": soap.headers},
        },
        "throughput": {
            "concurrency": args.concurrency,
            "rest": rest_hi.as_json(),
            "soap": soap_hi.as_json(),
            "soap_vs_rest": finite(ratio, 4),
            "server_cpu_per_exchange_soap_vs_rest": finite(cpu_ratio, 3),
        },
        "latency": {
            "concurrency": args.latency_concurrency,
            **{name: r.as_json() for name, r in latency.items()},
            "rest_added_p50_ms": finite(added["rest"][0], 3),
            "rest_added_p99_ms": finite(added["rest"][1], 3),
            "soap_added_p50_ms": finite(added["soap"][0], 3),
            "soap_added_p99_ms": finite(added["soap"][1], 3),
            "durable_commit_p50_ms": finite(commit_ms, 3),
            "rest_added_p50_beyond_two_commits_ms": finite(added["rest"][0] - 2 * commit_ms, 3),
            "soap_added_p50_beyond_two_commits_ms": finite(added["soap"][0] - 2 * commit_ms, 3),
        },
        "targets": {
            "soap_vs_rest_min": TARGET_SOAP_VS_REST,
            "soap_vs_rest_met": _met(ratio, lambda v: v >= TARGET_SOAP_VS_REST),
            "rest_added_p50_max_ms": TARGET_ADDED_P50_MS,
            "rest_added_p50_met": _met(rest_p50, lambda v: v <= TARGET_ADDED_P50_MS),
        },
        "ok": not any(r.failed for r in (*throughput.values(), *latency.values())),
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def benchmark(
    setup: Setup, backend: Child, nodes: Sequence[Child], args: argparse.Namespace
) -> int:
    deadline = time.monotonic() + args.startup_timeout
    rest_base = f"{setup.hub_url}/r1/{'/'.join(SUBSYSTEM)}/{OPERATION}?citizenId="
    rest_headers = {"X-Road-Client": CLIENT, "X-Road-Purpose": PURPOSE}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        await wait_until_answers(
            session, rest_base + DEMO_CITIZEN, rest_headers, nodes[0], deadline
        )
    for node in nodes:
        node.check_alive()
    direct, soap = await asyncio.to_thread(build_templates, setup)
    await check_same_answer(setup, rest_base + DEMO_CITIZEN, rest_headers, direct, soap)
    ids = citizen_ids(setup.seed)
    pids = ", ".join(f"{c.name} pid {c.pid}" for c in (backend, *nodes))
    print(f"ready: {pids}; client node at {setup.hub_url}; {len(ids)} citizen ids", flush=True)

    direct_bodies = [direct.for_citizen(i) for i in ids]
    # Split around the message id once, so a request costs the client one join.
    soap_parts = [soap.for_citizen(i).split(MESSAGE_ID_MARK.encode()) for i in ids]
    backend_root, hub_root = setup.backend_url + "/", setup.hub_url + "/"

    def make_direct(n: int) -> Request:
        return "POST", backend_root, direct_bodies[n % len(ids)]

    def make_rest(n: int) -> Request:
        return "GET", rest_base + ids[n % len(ids)], None

    def make_soap(n: int) -> Request:
        head, tail = soap_parts[n % len(ids)]
        return "POST", hub_root, b"".join((head, uuid.uuid4().hex.encode(), tail))

    everyone = frozenset(c.name for c in (backend, *nodes))
    specs = {
        "direct": PhaseSpec("direct", direct.headers, make_direct, frozenset({backend.name})),
        "rest": PhaseSpec("rest", rest_headers, make_rest, everyone),
        "soap": PhaseSpec("soap", soap.headers, make_soap, everyone),
    }
    load = LoadSpec(
        duration=math.inf if args.requests else args.duration,
        warmup=args.warmup,
        max_requests=args.requests or math.inf,
        request_timeout=args.request_timeout,
    )
    children = (backend, *nodes)
    print(f"throughput phases (concurrency {args.concurrency}):", flush=True)
    throughput = await run_group(
        [specs["rest"], specs["soap"]], args.concurrency, load, args.rounds, children
    )
    print(f"latency phases (concurrency {args.latency_concurrency}):", flush=True)
    latency = await run_group(
        [specs["direct"], specs["rest"], specs["soap"]],
        args.latency_concurrency,
        load,
        args.rounds,
        children,
    )
    commit_ms = await asyncio.to_thread(durable_commit_ms, setup.config.parent)
    result = report(throughput, latency, args, load, direct, soap, commit_ms)
    print(json.dumps(result, separators=(",", ":"), allow_nan=False), flush=True)
    return EXIT_OK if result["ok"] else EXIT_FAILED_REQUESTS


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="xroad-bench-soap-", dir=args.tmpdir))

    def start_and_measure(children: list[Child]) -> int:
        configure_logging("warning")  # the PKI helper logs every file it creates
        setup = prepare_federation(workdir)
        backend = spawn(
            "backend",
            __file__,
            ["--serve-backend", setup.backend_listen, "--seed", str(setup.seed)],
            workdir,
        )
        children.append(backend)

        async def backend_up() -> None:
            # The DOPA node reads the legacy WSDL when it starts: the service must be up first.
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                deadline = time.monotonic() + args.startup_timeout
                await wait_until_answers(s, setup.backend_url + "/?wsdl", {}, backend, deadline)

        asyncio.run(backend_up())
        spawn_federation(
            children, __file__, setup.config, args.log_level, workdir,
            client_node=CLIENT_NODE, provider_node=PROVIDER_NODE, one_process=args.one_process,
            # --serve-federation here wants --only: the demo federation has more nodes.
            one_process_only=f"registry,{CLIENT_NODE},{PROVIDER_NODE}",
        )  # fmt: skip
        return asyncio.run(benchmark(setup, backend, children[1:], args))

    return run_with_children("bench_soap", workdir, args.keep_workdir, start_and_measure)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""\
What it does:
  Copies config/demo-federation.toml onto free loopback ports (xroad_hub.dev.testing.
  on_free_ports) in a temporary directory with a fresh development PKI, starts the DOPA
  legacy service in one child process and the registry, DGA node and DOPA node in
  two more (or one, --one-process), checks that direct, REST and SOAP calls return the same
  person, then runs closed-loop phases: CONCURRENCY workers on one keep-alive aiohttp
  session, each sending its next request when the last one answered. Requests cycle
  through every citizen of the seeded registry.

    direct  POST <legacy service>/            SOAP 1.1 getPerson, as zeep builds it
    rest    GET  <DGA node>/r1/TH/GOV/DOPA/population/getPerson?citizenId=<id>
            X-Road-Client: {CLIENT}, X-Road-Purpose: {PURPOSE}
    soap    POST <DGA node>/                  X-Road SOAP 4.0 getPerson, as zeep builds it
            from the node's /wsdl, with <xh:purpose>{PURPOSE}</xh:purpose>

  Throughput: rest and soap at --concurrency. Latency: direct, rest and soap at
  --latency-concurrency. With --rounds N each group repeats N times, odd rounds in reverse
  order, and the rounds are pooled.

What it prints, per phase:
  exch/s           successful (HTTP 200) requests per second of the measured window
  p50/p99 ms       latency of the successful requests, nearest rank
  errors           requests that failed or answered anything but 200 (a SOAP fault is 500)
  srv CPU us/exch  user+system CPU of the child processes on the path, from
                   /proc/<pid>/stat (backend only for direct), per completed request
  cores busy       each child's CPU / wall time, and the load generator's own (near 1.0:
                   the client is the limit)
then soap/rest throughput (target >= {TARGET_SOAP_VS_REST}), what rest and soap add over
direct at p50/p99 (target for rest: <= {TARGET_ADDED_P50_MS} ms at p50), and the same figures
as one JSON line, the last line of stdout. Compare figures within one run only: the
machine's other load moves absolute numbers between runs.

Exit status: 0 all requests answered 200 (targets missed or not); 1 some failed; 2 a child
did not start or answer within --startup-timeout; 130 interrupted.""",
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="workers in the throughput phases (16)"
    )
    parser.add_argument(
        "--latency-concurrency",
        type=int,
        default=1,
        help="workers in the latency phases (1; keep it low, 1-4)",
    )
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase (5)")
    bound.add_argument(
        "--requests",
        type=int,
        default=None,
        help="measure this many requests per phase instead of a duration",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="unmeasured seconds of the same load before each phase (1)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat each group, alternating order (1)"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds per request (30)"
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        help="seconds the children get to answer their first request (60)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="log level of the nodes; info (as `xroad-hub up`) logs every exchange on both "
        "nodes, which is part of the cost measured",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run for the test suite: concurrency 2 and 1, 0.5 s per phase, 0.1 s "
        "warm-up, 1 round (overrides those options)",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="run registry and both nodes in one process instead of one process per node",
    )
    parser.add_argument("--tmpdir", type=Path, default=None, help="where to make the work dir")
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the work directory (federation file, PKI, message logs, child logs)",
    )
    internal = parser.add_argument_group("internal (how the script starts its own children)")
    internal.add_argument(
        "--serve-backend", metavar="HOST:PORT", help="run the DOPA legacy service until SIGTERM"
    )
    internal.add_argument("--seed", type=int, default=2569, help="with --serve-backend")
    internal.add_argument(
        "--serve-federation",
        type=Path,
        metavar="CONFIG",
        help="run components of CONFIG (certs/ and data/ next to it) until SIGTERM",
    )
    internal.add_argument(
        "--only", metavar="COMPONENTS", help="with --serve-federation: registry and node ids"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve_backend:
        asyncio.run(_serve_backend(args.serve_backend, args.seed))
        return EXIT_OK
    if args.serve_federation:
        if not args.only:
            parser.error("--serve-federation needs --only")
        asyncio.run(serve_federation(args.serve_federation, args.log_level, args.only))
        return EXIT_OK
    if args.smoke:
        args.concurrency, args.latency_concurrency = 2, 1
        args.duration, args.warmup, args.rounds, args.requests = 0.5, 0.1, 1, None
    if (
        min(args.concurrency, args.latency_concurrency, args.rounds) < 1
        or args.duration <= 0
        or args.warmup < 0
        or (args.requests is not None and args.requests < 1)
    ):
        parser.error(
            "--concurrency, --latency-concurrency, --rounds and --requests must be >= 1, "
            "--duration > 0, --warmup >= 0"
        )
    return run(args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):  # `... | head` must not end in a traceback
        sys.exit(main())
