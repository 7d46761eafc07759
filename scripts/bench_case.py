"""Benchmark the once-only case: evidence gathered through the hub, and cases per second.

The demo federation (all nodes in this process, xroad_hub.demo.harness) and the BMA case
service (its own process, mutual TLS to BMA's node) are started on free loopback ports in a
fresh work directory, then two phases run:

- ``gather``: REPEATS times, the demo citizen applies (POST /cases) and the case service
  fetches the five evidence items through BMA's node concurrently; the time it took is read
  from the case's own status history (submitted -> evidence-complete, both stamped by the
  case service). Right after, the same five items are fetched one at a time, sequentially,
  through BMA's evidence API (GET /evidence/{type}/{subject}, mutual TLS as
  TH/GOV/BMA/licensing, the same headers the case service sends). Concurrent gathering
  should cost about as much as the slowest single fetch, not the sum: the target is
  gather / slowest <= 1.5, judged on medians.
- ``throughput``: CASES applications (or as many as fit in DURATION seconds), at most
  CONCURRENCY in flight, each a full apply with five exchanges; cases/s is completed
  evidence-complete cases over wall time.

Reading the figures: the gather time includes the case service's own bookkeeping (the case
and one stored reference per item, in SQLite); BMA's message log gives the hub's share alone
(the window of the five concurrent exchanges against each single one). Every node runs in
this one process and event loop, so their CPU work cannot overlap: if the federation
process is CPU-bound (``federation_cores`` near 1.0), five concurrent exchanges cost about
what five sequential ones do, whatever the hub does. Separate machines per agency, as in a
deployment, are what lets concurrency pay off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
import structlog

# Next to this file, found through sys.path[0] as the script is run directly.
from benchproc import EXIT_INTERRUPTED, EXIT_NOT_STARTED, EXIT_OK, cpu_seconds, nearest_rank

from case_service.client import CaseServiceClient, CaseServiceError
from case_service.config import FOOD_BUSINESS_LICENCE
from xroad_hub.demo.harness import (
    BMA_NODE,
    CASE_SERVICE_CLIENT,
    Applicant,
    CaseServiceProcess,
    DemoFederation,
    demo_applicant,
    start_case_service,
    start_demo_federation,
)
from xroad_hub.logs import configure_logging
from xroad_hub.messagelog.audit import search_log
from xroad_hub.messagelog.search import MAX_PAGE, SearchFilter
from xroad_hub.messagelog.source import open_reader

EXIT_FAILED, EXIT_TARGET_MISSED = 1, 3  # with benchproc's OK, NOT_STARTED, INTERRUPTED
TARGET_RATIO = 1.5
CASE_TYPE = FOOD_BUSINESS_LICENCE


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------------------------
# phase 1: gather vs the slowest single fetch
# --------------------------------------------------------------------------------------------


@dataclass
class GatherRun:
    case_no: str
    gather_s: float  # submitted -> evidence-complete, as the case service stamped them
    apply_s: float  # the POST /cases round trip seen by the client (includes the preview)
    single_s: dict[str, float]  # each evidence type fetched alone, as the client timed it
    # The same two things as BMA's node logged them (its started_at/finished_at): the window
    # of the five concurrent exchanges, and each single exchange's duration. Without the
    # case service's bookkeeping and the client's own overhead: the hub's share alone.
    hub_window_s: float
    hub_single_s: dict[str, float]

    @property
    def slowest_s(self) -> float:
        return max(self.single_s.values())

    @property
    def ratio(self) -> float:
        return self.gather_s / self.slowest_s

    @property
    def hub_ratio(self) -> float:
        return self.hub_window_s / max(self.hub_single_s.values())


class Fail(RuntimeError):
    """A request of the benchmark did not give the expected answer."""


def _gather_time(view: dict[str, Any]) -> float:
    at = {h["status"]: datetime.fromisoformat(h["at"]) for h in view["history"]}
    if "evidence-complete" not in at:
        missing = [e["type"] for e in view["evidence"] if e["status"] != "ok"]
        raise Fail(f"case {view['case_no']} is {view['status']} (missing {missing})")
    return (at["evidence-complete"] - at["submitted"]).total_seconds()


async def _single_fetch(
    http: aiohttp.ClientSession,
    demo: DemoFederation,
    evidence_type: str,
    subject: str,
    *,
    case_no: str,
    citizen_id: str,
) -> tuple[str, float]:
    """One evidence item alone, the way the case service asks for it: its message id and
    the seconds it took."""
    url = f"{demo.node_url(BMA_NODE, 'client_tls')}/evidence/{evidence_type}/{subject}"
    headers = {
        "X-Road-Client": CASE_SERVICE_CLIENT,
        "X-Road-Id": str(uuid.uuid4()),
        "X-Road-UserId": f"TH{citizen_id}",
        # Read for the case just built: a real purpose, a real case, logged like any read.
        "X-Road-Issue": case_no,
        "X-Road-Purpose": CASE_TYPE.purpose,
        "X-Road-Legal-Basis": CASE_TYPE.legal_basis,
        "Accept": "application/json",
    }
    started = time.perf_counter()
    async with http.get(url, headers=headers) as resp:
        body = await resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200:
        raise Fail(f"GET /evidence/{evidence_type}: HTTP {resp.status} {body[:300]!r}")
    return headers["X-Road-Id"], elapsed


def _hub_times(
    log_path: Path, case_no: str, singles: dict[str, str]
) -> tuple[float, dict[str, float]]:
    """From BMA's message log (read-only): the window of the case's own exchanges and the
    duration of each single fetch (``singles``: type -> message id)."""
    rows, after = [], -1
    with open_reader(log_path) as reader:  # the auditors' read path, one snapshot
        while after is not None:
            page, after = search_log(
                reader, SearchFilter(issue=case_no, role="client"), limit=MAX_PAGE, after=after
            )
            rows += page
    by_id = {r["message_id"]: (float(r["started_at"]), float(r["finished_at"])) for r in rows}
    single_ids = set(singles.values())
    concurrent = [v for k, v in by_id.items() if k not in single_ids]
    if len(concurrent) != len(CASE_TYPE.evidence) or not single_ids <= set(by_id):
        raise Fail(f"BMA's log does not hold the exchanges of {case_no} as expected")
    window = max(f for _, f in concurrent) - min(s for s, _ in concurrent)
    return window, {t: by_id[m][1] - by_id[m][0] for t, m in singles.items()}


async def gather_phase(
    demo: DemoFederation,
    cs: CaseServiceProcess,
    who: Applicant,
    repeats: int,
    http: aiohttp.ClientSession,
    out: IO[str],
) -> list[GatherRun]:
    token = demo.citizen_token(who.citizen_id, CASE_SERVICE_CLIENT, ttl=3600)
    subjects = {"citizen_id": who.citizen_id, "juristic_id": who.juristic_id}
    runs: list[GatherRun] = []
    # One unmeasured round first: TLS sessions, connection pools and caches warm up.
    for i in range(repeats + 1):
        started = time.perf_counter()
        view = await cs.client.apply(token, citizen_id=who.citizen_id, juristic_id=who.juristic_id)
        apply_s = time.perf_counter() - started
        gather_s = _gather_time(view)
        single, ids = {}, {}
        for need in CASE_TYPE.evidence:
            ids[need.type], single[need.type] = await _single_fetch(
                http, demo, need.type, subjects[need.subject],
                case_no=view["case_no"], citizen_id=who.citizen_id,
            )  # fmt: skip
        if i == 0:
            continue
        window, hub_single = await asyncio.to_thread(
            _hub_times, demo.log_path(BMA_NODE), view["case_no"], ids
        )
        run = GatherRun(view["case_no"], gather_s, apply_s, single, window, hub_single)
        runs.append(run)
        slowest = max(single, key=single.__getitem__)
        out.write(
            f"  {i:>3}/{repeats} {run.case_no}: gather {gather_s * 1000:6.1f} ms, slowest "
            f"single {run.slowest_s * 1000:5.1f} ms ({slowest}), ratio {run.ratio:4.2f}; "
            f"at the hub {window * 1000:5.1f} / {max(hub_single.values()) * 1000:5.1f} ms, "
            f"ratio {run.hub_ratio:4.2f}\n"
        )
        out.flush()
    return runs


def gather_report(runs: list[GatherRun]) -> dict[str, Any]:
    types = list(runs[0].single_s)
    ratio = statistics.median(r.ratio for r in runs)
    gather = statistics.median(r.gather_s for r in runs)
    slowest = statistics.median(r.slowest_s for r in runs)
    return {
        "repeats": len(runs),
        "gather_s_median": _r(gather),
        "slowest_single_s_median": _r(slowest),
        "sum_single_s_median": _r(statistics.median(sum(r.single_s.values()) for r in runs)),
        "ratio_median": _r(ratio, 3),
        # Also the ratio of the medians: robust against one repeat's outlier on either side.
        "ratio_of_medians": _r(gather / slowest, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "apply_round_trip_s_median": _r(statistics.median(r.apply_s for r in runs)),
        "single_s_median": {t: _r(statistics.median(r.single_s[t] for r in runs)) for t in types},
        "hub_window_s_median": _r(statistics.median(r.hub_window_s for r in runs)),
        "hub_slowest_single_s_median": _r(
            statistics.median(max(r.hub_single_s.values()) for r in runs)
        ),
        "hub_sum_single_s_median": _r(
            statistics.median(sum(r.hub_single_s.values()) for r in runs)
        ),
        "hub_ratio_median": _r(statistics.median(r.hub_ratio for r in runs), 3),
    }


# --------------------------------------------------------------------------------------------
# phase 2: cases per second
# --------------------------------------------------------------------------------------------


@dataclass
class Throughput:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    # CPU seconds spent during the phase: this process (the whole federation, the load
    # generator) and the case service's process; what bounds cases/s on a small machine.
    federation_cpu_s: float = 0.0
    case_service_cpu_s: float | None = None


async def throughput_phase(
    demo: DemoFederation,
    client: CaseServiceClient,
    who: Applicant,
    *,
    cases: int,
    duration: float | None,
    concurrency: int,
    case_service_pid: int,
) -> Throughput:
    """Closed loop: ``concurrency`` workers each apply again as soon as their last case is
    built, until ``cases`` are started or ``duration`` seconds have passed."""
    token = demo.citizen_token(who.citizen_id, CASE_SERVICE_CLIENT, ttl=3600)
    result = Throughput()
    cpu0, cs0 = time.process_time(), cpu_seconds(case_service_pid)
    started = time.perf_counter()
    deadline = None if duration is None else started + duration
    budget = [cases]

    async def worker() -> None:
        while budget[0] > 0 and (deadline is None or time.perf_counter() < deadline):
            budget[0] -= 1
            t0 = time.perf_counter()
            try:
                view = await client.apply(
                    token, citizen_id=who.citizen_id, juristic_id=who.juristic_id
                )
            except (CaseServiceError, aiohttp.ClientError, TimeoutError) as exc:
                result.errors.append(str(exc) or type(exc).__name__)
                continue
            result.latencies.append(time.perf_counter() - t0)
            result.statuses[view["status"]] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    result.federation_cpu_s = time.process_time() - cpu0
    cs1 = cpu_seconds(case_service_pid)
    result.case_service_cpu_s = None if cs0 is None or cs1 is None else cs1 - cs0
    return result


def throughput_report(t: Throughput, concurrency: int, exchanges_per_case: int) -> dict[str, Any]:
    complete = t.statuses.get("evidence-complete", 0)
    rate = complete / t.wall_s if t.wall_s > 0 else 0.0
    done = max(1, len(t.latencies))
    cs_cpu = t.case_service_cpu_s
    return {
        "cases": len(t.latencies) + len(t.errors),
        "complete": complete,
        "statuses": dict(t.statuses),
        "errors": len(t.errors),
        "first_error": t.errors[0] if t.errors else None,
        "concurrency": concurrency,
        "wall_s": _r(t.wall_s, 3),
        "cases_per_s": _r(rate, 2),
        "exchanges_per_s": _r(rate * exchanges_per_case, 1),
        "latency_p50_s": _r(nearest_rank(t.latencies, 0.5)) if t.latencies else None,
        "latency_p95_s": _r(nearest_rank(t.latencies, 0.95)) if t.latencies else None,
        "federation_cpu_ms_per_case": _r(t.federation_cpu_s * 1000 / done, 2),
        "case_service_cpu_ms_per_case": None if cs_cpu is None else _r(cs_cpu * 1000 / done, 2),
        "federation_cores": _r(t.federation_cpu_s / t.wall_s, 2) if t.wall_s > 0 else None,
    }


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def _log_to_file(level: str, path: Path) -> IO[str]:
    """Federation logs go to a file: at info every exchange logs two lines, which would bury
    the summary (and a terminal's speed would become part of the measurement)."""
    configure_logging(level, json=True)
    sink = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed at the end of the run
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sink))
    return sink


async def bench(args: argparse.Namespace, workdir: Path, out: IO[str]) -> int:
    out.write(f"bench_case: work directory {workdir}\n")
    try:
        demo = await start_demo_federation(workdir / "federation")
    except Exception as exc:
        print(f"bench_case: the demo federation did not start: {exc}", file=sys.stderr)
        return EXIT_NOT_STARTED
    cs: CaseServiceProcess | None = None
    try:
        try:
            cs = await start_case_service(
                demo, workdir / "case-service", log_level=args.case_service_log_level
            )
        except Exception as exc:
            print(f"bench_case: the case service did not start: {exc}", file=sys.stderr)
            return EXIT_NOT_STARTED
        who = await asyncio.to_thread(demo_applicant)
        out.write(
            f"federation up ({len(demo.fed.nodes)} nodes), case service {cs.url}; applicant "
            f"{who.name_en} {who.citizen_id}, company {who.juristic_id}\n"
        )
        out.write(f"phase gather: {args.repeats} repeats (+1 warm-up)\n")
        out.flush()
        connector = aiohttp.TCPConnector(ssl=demo.ssl_context(client=CASE_SERVICE_CLIENT))
        timeout = aiohttp.ClientTimeout(total=args.request_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            runs = await gather_phase(demo, cs, who, args.repeats, http, out)
        gather = gather_report(runs)
        limit = f"{args.duration:g} s" if args.duration else f"{args.cases} cases"
        out.write(f"phase throughput: {limit}, concurrency {args.concurrency}\n")
        out.flush()
        # A session of its own, sized to the concurrency (aiohttp's default pool is 100).
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.concurrency), timeout=timeout
        )
        async with CaseServiceClient(cs.url, session=session) as client, session:
            tp = await throughput_phase(
                demo, client, who, cases=args.cases if not args.duration else 10**9,
                duration=args.duration, concurrency=args.concurrency,
                case_service_pid=cs.process.pid,
            )  # fmt: skip
        throughput = throughput_report(tp, args.concurrency, len(CASE_TYPE.evidence))
    except Fail as exc:
        print(f"bench_case: FAILED: {exc}", file=sys.stderr)
        if cs is not None:
            print(f"case service log ({cs.log_path}):\n{cs.log_tail()}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if cs is not None:
            await cs.stop()
        await demo.stop()

    # Every started case answered and was built with all five items: anything else means
    # the figures describe a failure path, not the service.
    ok = throughput["errors"] == 0 and 0 < throughput["complete"] == throughput["cases"]
    report = {
        "benchmark": "bench_case",
        "ok": ok,
        "smoke": bool(args.smoke),
        "gather": gather,
        "throughput": throughput,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
        },
    }
    _summary(report, out)
    out.write(json.dumps(report, separators=(",", ":"), allow_nan=False) + "\n")
    out.flush()
    if not ok:
        return EXIT_FAILED
    if args.strict and not gather["meets_target"]:
        return EXIT_TARGET_MISSED
    return EXIT_OK


def _summary(report: dict[str, Any], out: IO[str]) -> None:
    g, t = report["gather"], report["throughput"]
    ms = {k: f"{v * 1000:.1f}" for k, v in g["single_s_median"].items()}
    out.write(
        "\n== evidence gathering (medians over {n} cases) ==\n"
        "  concurrent gather, as the case service stamped it  {gather:8.1f} ms\n"
        "  slowest single fetch alone                         {slow:8.1f} ms\n"
        "  sum of the five fetched one after another          {total:8.1f} ms\n"
        "  gather / slowest  {ratio:.2f} (ratio of medians {rom:.2f}); target <= {target}: "
        "{verdict}\n"
        "  single fetches: {singles}\n"
        "  POST /cases round trip (gather + preview)          {apply:8.1f} ms\n"
        "  at BMA's node (its log): five concurrent {hw:.1f} ms, slowest single {hs:.1f} ms, "
        "sum of singles {hsum:.1f} ms, ratio {hr:.2f}\n".format(
            n=g["repeats"],
            gather=g["gather_s_median"] * 1000,
            slow=g["slowest_single_s_median"] * 1000,
            total=g["sum_single_s_median"] * 1000,
            ratio=g["ratio_median"],
            rom=g["ratio_of_medians"],
            target=g["target_ratio"],
            verdict="met" if g["meets_target"] else "MISSED",
            singles=", ".join(f"{k} {v} ms" for k, v in ms.items()),
            apply=g["apply_round_trip_s_median"] * 1000,
            hw=g["hub_window_s_median"] * 1000,
            hs=g["hub_slowest_single_s_median"] * 1000,
            hsum=g["hub_sum_single_s_median"] * 1000,
            hr=g["hub_ratio_median"],
        )
    )
    p50 = t["latency_p50_s"] * 1000 if t["latency_p50_s"] is not None else float("nan")
    p95 = t["latency_p95_s"] * 1000 if t["latency_p95_s"] is not None else float("nan")
    out.write(
        f"\n== case throughput ({t['cases']} cases, concurrency {t['concurrency']}) ==\n"
        f"  {t['cases_per_s']} cases/s ({t['exchanges_per_s']} evidence exchanges/s) over "
        f"{t['wall_s']} s; apply latency p50 {p50:.1f} ms, p95 {p95:.1f} ms\n"
        f"  CPU per case: federation process {t['federation_cpu_ms_per_case']} ms "
        f"({t['federation_cores']} cores busy), case service "
        f"{t['case_service_cpu_ms_per_case']} ms\n"
        f"  statuses {t['statuses']}, errors {t['errors']}"
        + (f" (first: {t['first_error']})" if t["first_error"] else "")
        + "\n\n"
    )


def run(args: argparse.Namespace) -> int:
    made = args.workdir is None
    workdir = (
        Path(tempfile.mkdtemp(prefix="bench-case-", dir=args.tmpdir)) if made else args.workdir
    )
    workdir.mkdir(parents=True, exist_ok=True)
    sink = _log_to_file(args.log_level, workdir / "federation.log")
    try:
        return asyncio.run(bench(args, workdir, sys.stdout))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        sink.close()
        if made and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__.split("\n\n", 1)[1] if __doc__ else "")
        + """
Process layout: the federation (registry, TSA, six nodes, two legacy backends) runs in this
process's event loop, as `xroad-hub demo` runs it; the case service is a child process. The
single fetches and the load generator share the loop with the nodes, so on a small machine
the client's own cost is part of what is measured (it is small next to five signed, logged
exchanges per case).

What it prints: one line per gather repeat, a summary of both phases, and the same figures
as one JSON line (the last line of stdout): gather.{gather_s_median,
slowest_single_s_median, ratio_median, meets_target, single_s_median}, throughput.
{cases_per_s, exchanges_per_s, latency_p50_s, latency_p95_s, statuses, errors}.

Exit status: 0 every case was built with complete evidence; 1 a request failed or a case
was not complete; 2 the federation or the case service did not start; 3 with --strict, the
gather/slowest target was missed; 130 interrupted.""",
    )
    parser.add_argument(
        "--repeats", type=int, default=15, help="measured gather repeats (default: 15)"
    )
    parser.add_argument(
        "--cases", type=int, default=200, help="applications in the throughput phase (200)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="run the throughput phase for this many seconds instead of --cases",
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="applications in flight at most (16)"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=60.0, help="seconds per request (60)"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="federation log level (to WORKDIR/federation.log); info, the default of a node, "
        "logs every exchange, which is part of the cost measured",
    )
    parser.add_argument(
        "--case-service-log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="the case service's log level (its output goes to WORKDIR/case-service.log)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 3 when the gather target is missed"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run for the test suite: 2 repeats, 8 cases, concurrency 4",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="use (and keep) this directory")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where to make the work dir")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the temporary work directory"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.cases, args.concurrency, args.duration = 2, 8, 4, None
    if args.repeats < 1 or args.cases < 1 or args.concurrency < 1:
        parser.error("--repeats, --cases and --concurrency must be >= 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be > 0")
    return run(args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):  # `... | head` must not end in a traceback
        sys.exit(main())
