"""Benchmark the flat-file adapter at a million records, against baselines in the same run.

Data: the DOL title-deed layout (``schemas/dol-titledeeds.layout.toml``, 200-byte records +
CRLF, TIS-620) generated with the seeded demo generator, and the same records as a cp874 CSV.

Figures (every absolute time also as a ratio to its baseline, measured in this run):

- ``load``: validating and indexing the export, in this process (``inline``) and the way a
  node does it for large files (``worker``: a separate process, plus reading the bytes here),
  against Python's ``csv`` module merely reading the CSV form of the same records; the CSV
  form loaded by the adapter too;
- ``memory``: what the version in service holds (file bytes + indexes), and this process's
  resident-set growth after the load, against the file's size;
- ``lookup``: ``adapter.handle`` for ``GET /records/{deedNo}`` (index search, decoding, JSON)
  and the index search alone, p50/p99, against a plain ``dict`` lookup of the same keys;
- ``reload_under_load``: a new export is swapped in while a probe sends a request every
  millisecond; the longest any request waited and how many failed;
- ``hub``: throughput and latency through client node -> provider node -> flat-file adapter
  (``xroad-hub up`` in a child process, load generated here), with a reload in the middle.

``--smoke`` runs every phase on small data (the test suite does); ``--phases`` runs only
some (``--phases load`` for the load timings alone); the last line printed is a JSON report,
with the targets of the phases that ran.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from adapters.base import AdapterRequest
from adapters.flatfile import FlatFileAdapter
from adapters.flatfile.layout import load_layout_file, parse_layout
from adapters.flatfile.loader import load_export
from xroad_hub.demo.legacy_exports import title_deed_lines, write_atomic
from xroad_hub.demo.synthetic import people
from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.testing import TestFederationSpec, free_port, write_federation
from xroad_hub.federation import load_federation

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "schemas" / "dol-titledeeds.layout.toml"
SERVICE = "TH/GOV/DBD/registry/titledeeds"
CLIENT = "TH/GOV/DGA/devportal"
PHASES = ("load", "adapter", "hub")
TARGETS = {
    "load_s": 5.0,
    "load_vs_csv": 2.0,
    "load_csv_form_vs_csv": 2.0,
    "memory_vs_file": 2.0,
    "lookup_p99_ms": 0.2,
    "reload_max_wait_ms": 50.0,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def make_data(workdir: Path, records: int, seed: int) -> tuple[Path, Path, list[str]]:
    """The fixed-width export, its CSV form, and the deed numbers in it."""
    owners = people(seed, max(100, min(records // 50, 20_000)))
    fixed = workdir / "export" / "titledeeds-25681121.txt"
    lines = list(title_deed_lines(seed, records, owners=owners, broken=False))
    write_atomic(fixed, b"".join(line + b"\r\n" for line in lines))
    layout = parse_layout(load_layout_file(LAYOUT))
    out = io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow([f.name for f in layout.fields])
    for line in lines:
        text = line.decode("tis-620")  # single-byte: byte positions are character positions
        w.writerow([text[f.start : f.start + f.width].rstrip() for f in layout.fields])
    csv_path = workdir / "titledeeds.csv"
    csv_path.write_bytes(out.getvalue().encode("cp874"))
    keys = [line[:8].decode() for line in lines]
    return fixed, csv_path, keys


def next_version(path: Path, seed: int) -> None:
    """A changed export (other owners' names), replaced by an atomic rename."""
    data = bytearray(path.read_bytes())
    data[37:49] = "มาลี ทองดี  ".encode("tis-620")[:12].ljust(12)
    write_atomic(path, bytes(data))


# ---------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------


def csv_baseline(csv_path: Path) -> tuple[float, float]:
    """Wall and CPU seconds for the csv module to read the CSV form."""
    t0, c0 = time.perf_counter(), time.process_time()
    with open(csv_path, encoding="cp874", newline="") as f:
        for _row in csv.reader(f):
            pass
    return time.perf_counter() - t0, time.process_time() - c0


def load_inline(
    path: Path, layout_file: Path, fmt_overrides: dict[str, Any]
) -> tuple[float, float]:
    """Wall and CPU seconds for the adapter to validate and index the export."""
    layout = parse_layout(load_layout_file(layout_file), fmt_overrides)
    data = path.read_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    load_export(data, layout, layout.keys)
    return time.perf_counter() - t0, time.process_time() - c0


def paired(rounds: int, *runs: Any) -> list[tuple[float, float]]:
    """Median (wall, CPU) of each run, the runs interleaved ``rounds`` times: on a shared
    machine a lone pair of timings mostly measures the neighbours."""
    samples: list[list[tuple[float, float]]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            samples[i].append(run())
    return [
        (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for s in samples
    ]


def csv_layout(workdir: Path) -> Path:
    """The DOL layout for the CSV form: same fields and types, by header column."""
    text = LAYOUT.read_text(encoding="utf-8")
    text = text.replace('format = "fixed"', 'format = "csv"').replace(
        'encoding = "tis-620"', 'encoding = "cp874"'
    )
    lines = [
        line
        for line in text.splitlines()
        if not line.startswith(("start", "width", "record_length", "terminator"))
    ]
    path = workdir / "csv.layout.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def adapter_phases(fixed: Path, size: int, keys: list[str], samples: int) -> dict[str, Any]:
    rng = random.Random(1)
    before = rss_kib()
    adapter = FlatFileAdapter.from_options(
        {
            "source": str(fixed.parent),
            "pattern": "titledeeds-*.txt",
            "layout": str(LAYOUT),
            "settle_seconds": 0,
            "reload_interval": 0,
            "loader": "process",
        }
    )
    t0 = time.perf_counter()
    await adapter.start()
    worker_load = time.perf_counter() - t0
    ds = adapter.current
    assert ds is not None, adapter.last_rejection
    after = rss_kib()

    # Lookups: the adapter end to end (index + decode + JSON) and the index alone.
    chosen = [rng.choice(keys) for _ in range(samples)]
    handle_ms, index_ms = [], []
    for key in chosen:
        request = AdapterRequest("GET", f"/records/{key}", "", (), b"")
        t = time.perf_counter_ns()
        r = await adapter.handle(request)
        handle_ms.append((time.perf_counter_ns() - t) / 1e6)
        assert r.status == 200, r.body[:200]
    index = ds.indexes["deed_no"]
    for key in chosen:
        raw = key.encode()
        t = time.perf_counter_ns()
        index.records(raw)
        index_ms.append((time.perf_counter_ns() - t) / 1e6)
    plain = {k: i for i, k in enumerate(keys)}
    dict_ms = []
    for key in chosen:
        t = time.perf_counter_ns()
        plain.get(key)
        dict_ms.append((time.perf_counter_ns() - t) / 1e6)

    # Reload under load: a probe every millisecond; how long did any request wait?
    next_version(fixed, 2)
    waits: list[float] = []
    failed = 0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal failed
        while not done.is_set():
            due = time.perf_counter()
            await asyncio.sleep(0.001)
            r = await adapter.handle(
                AdapterRequest("GET", f"/records/{rng.choice(keys)}", "", (), b"")
            )
            # Wait = beyond the 1 ms the probe meant to sleep: what a request arriving
            # then would have waited for the event loop, plus its own answer.
            waits.append(max(0.0, time.perf_counter() - due - 0.001) * 1000)
            failed += r.status != 200

    probes = [asyncio.create_task(probe()) for _ in range(4)]
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    outcome = await adapter.refresh()
    reload_s = time.perf_counter() - t0
    await asyncio.sleep(0.05)
    done.set()
    await asyncio.gather(*probes)
    await adapter.close()
    return {
        "worker_load_s": worker_load,
        "memory": {
            "file_bytes": size,
            "held_bytes": ds.nbytes,
            "held_vs_file": ds.nbytes / size,
            "rss_growth_bytes": (after - before) * 1024,
            "rss_growth_vs_file": (after - before) * 1024 / size,
        },
        "lookup_ms": {
            "adapter_p50": pct(handle_ms, 0.5),
            "adapter_p99": pct(handle_ms, 0.99),
            "index_p50": pct(index_ms, 0.5),
            "index_p99": pct(index_ms, 0.99),
            "dict_p50": pct(dict_ms, 0.5),
            "dict_p99": pct(dict_ms, 0.99),
        },
        "reload_under_load": {
            "outcome": outcome,
            "reload_s": reload_s,
            "requests": len(waits),
            "failed": failed,
            "max_wait_ms": max(waits, default=0.0),
            "p99_wait_ms": pct(waits, 0.99) if waits else 0.0,
        },
    }


async def hub_phase(
    workdir: Path, fixed: Path, keys: list[str], duration: float, concurrency: int
) -> dict[str, Any]:
    """Through the hub: ``xroad-hub up`` in a child process, load generated here."""
    root = workdir / "fed"
    root.mkdir()
    spec = TestFederationSpec(
        backend_url=f"http://127.0.0.1:{free_port()}",
        max_body_bytes=4 * 1024 * 1024,
        body_timeout=30,
        extra_services=[
            {
                "id": SERVICE,
                "adapter": "flatfile",
                "source": str(fixed.parent),
                "pattern": "titledeeds-*.txt",
                "layout": str(LAYOUT),
                "settle_seconds": 0,
                "reload_interval": 0.5,
                "allow": [CLIENT],
                "answer_subject": ["json:records[*].owner_citizen_id"],
            }
        ],
    )
    cfg = write_federation(root / "federation.toml", spec)
    ensure_pki(load_federation(cfg), root / "certs")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "xroad_hub.cli", "--log-level", "warning", "up"),
        *("--config", str(cfg), "--certs-dir", str(root / "certs")),
        *("--data-dir", str(root / "data")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(ROOT),
    )
    try:
        endpoints = root / "data" / "endpoints.json"
        deadline = time.monotonic() + 120
        while not endpoints.exists():
            if proc.returncode is not None or time.monotonic() > deadline:
                err = await proc.stderr.read() if proc.stderr else b""
                raise RuntimeError(err.decode()[-2000:])
            await asyncio.sleep(0.1)
        client = json.loads(endpoints.read_text())["nodes"]["TH/GOV/DGA/hub1"]["client"]
        base = f"{client}/r1/{SERVICE}/records/"
        rng = random.Random(3)
        latencies: list[float] = []
        errors = 0
        reload_window: list[float] = []
        in_reload = False
        stop_at = time.perf_counter() + duration
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < stop_at:
                    t = time.perf_counter()
                    try:
                        async with http.get(
                            base + rng.choice(keys), headers={"X-Road-Client": CLIENT}
                        ) as r:
                            await r.read()
                            ok = r.status == 200
                    except aiohttp.ClientError:
                        ok = False
                    ms = (time.perf_counter() - t) * 1000
                    latencies.append(ms)
                    if in_reload:
                        reload_window.append(ms)
                    errors += not ok

            async def reload_midway() -> None:
                nonlocal in_reload
                await asyncio.sleep(duration / 3)
                in_reload = True
                await asyncio.to_thread(next_version, fixed, 3)
                await asyncio.sleep(min(duration / 3, 5.0))
                in_reload = False

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)), reload_midway())
            elapsed = time.perf_counter() - t0
        return {
            "concurrency": concurrency,
            "seconds": elapsed,
            "ok": len(latencies) - errors,
            "errors": errors,
            "exchanges_per_s": len(latencies) / elapsed,
            "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99),
            "during_reload": {
                "requests": len(reload_window),
                "max_ms": max(reload_window, default=0.0),
                "p50_ms": statistics.median(reload_window) if reload_window else 0.0,
            },
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the export")
    parser.add_argument("--seed", type=int, default=2569)
    parser.add_argument("--samples", type=int, default=20_000, help="lookups to time")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of hub load")
    parser.add_argument("--concurrency", type=int, default=32, help="hub load connections")
    parser.add_argument("--keep", type=Path, help="keep the generated data in this directory")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved load timings")
    parser.add_argument("--smoke", action="store_true", help="small and quick: it only works")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all); "
        "adapter is memory, lookup and reload_under_load",
    )
    args = parser.parse_args()
    phases_wanted = {p.strip() for p in args.phases.split(",") if p.strip()}
    unknown = phases_wanted - set(PHASES)
    if unknown or not phases_wanted:
        parser.error(f"--phases: unknown {sorted(unknown)}; choose from {', '.join(PHASES)}")
    if args.smoke:
        args.records, args.samples, args.duration, args.concurrency = 20_000, 2_000, 1.5, 8
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-flatfile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        log(f"generating {args.records} records in {workdir} ...")
        fixed, csv_path, keys = make_data(workdir, args.records, args.seed)
        size = fixed.stat().st_size
        log(f"export: {size / 1e6:.1f} MB ({size / args.records:.0f} bytes per record)")
        report: dict[str, Any] = {"ok": True, "records": args.records, "file_bytes": size}
        figures: dict[str, float] = {}
        if "load" in phases_wanted:
            csv_form = csv_layout(workdir)
            (baseline, baseline_cpu), (inline, inline_cpu), (csv_load, csv_load_cpu) = paired(
                1 if args.smoke else args.rounds,
                lambda: csv_baseline(csv_path),
                lambda: load_inline(fixed, LAYOUT, {}),
                lambda: load_inline(csv_path, csv_form, {}),
            )
            log(f"csv module reads the CSV form: {baseline:.2f} s ({baseline_cpu:.2f} s CPU)")
            log(
                f"adapter load, fixed width, inline: {inline:.2f} s ({inline / baseline:.2f}x), "
                f"CPU {inline_cpu:.2f} s ({inline_cpu / baseline_cpu:.2f}x)"
            )
            log(
                f"adapter load, CSV form, inline:    {csv_load:.2f} s "
                f"({csv_load / baseline:.2f}x), CPU {csv_load_cpu:.2f} s "
                f"({csv_load_cpu / baseline_cpu:.2f}x)"
            )
            # CPU seconds of this process: wall time on a shared machine adds the neighbours'.
            figures["load_vs_csv"] = inline_cpu / baseline_cpu
            figures["load_csv_form_vs_csv"] = csv_load_cpu / baseline_cpu
            report |= {
                "baseline_csv_read_s": baseline,
                "baseline_csv_read_cpu_s": baseline_cpu,
                "load_inline_s": inline,
                "load_inline_cpu_s": inline_cpu,
                "load_vs_csv_wall": inline / baseline,
                "load_csv_form_inline_s": csv_load,
                "load_csv_form_inline_cpu_s": csv_load_cpu,
                "load_csv_form_vs_csv": csv_load / baseline,
                "load_csv_form_vs_csv_cpu": csv_load_cpu / baseline_cpu,
            }
        if "adapter" in phases_wanted:
            phases = asyncio.run(adapter_phases(fixed, size, keys, args.samples))
            mem, lk, rl = phases["memory"], phases["lookup_ms"], phases["reload_under_load"]
            log(f"adapter load via worker process: {phases['worker_load_s']:.2f} s")
            log(
                f"memory held {mem['held_vs_file']:.2f}x file, RSS growth "
                f"{mem['rss_growth_vs_file']:.2f}x file"
            )
            log(
                f"lookup p50/p99 ms: adapter {lk['adapter_p50']:.4f}/{lk['adapter_p99']:.4f}, "
                f"index {lk['index_p50']:.4f}/{lk['index_p99']:.4f}, "
                f"dict {lk['dict_p50']:.5f}/{lk['dict_p99']:.5f}"
            )
            log(
                f"reload under load: {rl['outcome']} in {rl['reload_s']:.2f} s, "
                f"{rl['requests']} probes, {rl['failed']} failed, max wait "
                f"{rl['max_wait_ms']:.1f} ms"
            )
            figures |= {
                "load_s": phases["worker_load_s"],
                "memory_vs_file": max(mem["held_vs_file"], mem["rss_growth_vs_file"]),
                "lookup_p99_ms": lk["adapter_p99"],
                "reload_max_wait_ms": rl["max_wait_ms"],
            }
            report["ok"] = rl["failed"] == 0 and rl["outcome"] == "loaded"
            report |= phases
        if "hub" in phases_wanted:
            hub = asyncio.run(hub_phase(workdir, fixed, keys, args.duration, args.concurrency))
            log(
                f"hub: {hub['exchanges_per_s']:.0f} exchanges/s, p50 {hub['p50_ms']:.1f} ms, "
                f"p99 {hub['p99_ms']:.1f} ms, {hub['errors']} errors; during reload max "
                f"{hub['during_reload']['max_ms']:.1f} ms over "
                f"{hub['during_reload']['requests']}"
            )
            report["ok"] = report["ok"] and hub["errors"] == 0
            report["hub"] = hub
        report["targets"] = {
            name: {"value": figures[name], "target": t, "met": figures[name] <= t}
            for name, t in TARGETS.items()
            if name in figures
        }
        print(json.dumps(report))
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
