"""What metrics cost per exchange: CPU time per exchange with --metrics off and on.

Runs the test federation (three nodes, registry, TSA) and an echo backend in this process,
sends the same REST exchanges through both nodes in alternating rounds, with the nodes'
metrics switched off (no registry, no timing hooks) and on, and reports the process's CPU
time per exchange (time.process_time: every node, the backend and the load generator, which
are the same in both modes, so the difference is what metrics add).

    python scripts/bench_metrics.py [--exchanges 1500] [--rounds 3] [--concurrency 8]
    python scripts/bench_metrics.py --metrics on     # one mode only
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from xroad_hub.demo.runner import Federation
from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.testing import TestFederationSpec, free_port, write_federation
from xroad_hub.federation import load_federation
from xroad_hub.logs import configure_logging

DGA = "TH/GOV/DGA/hub1"
ECHO = "/r1/TH/GOV/DBD/registry/echo/x"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "path": request.path})


async def _round(root: Path, backend: str, metrics: bool, n: int, conc: int) -> float:
    fed_cfg = load_federation(write_federation(root / "federation.toml", _spec(backend)))
    ensure_pki(fed_cfg, root / "certs")
    federation = Federation(fed_cfg, root / "certs", root / f"data-{time.time_ns()}",
                            metrics=metrics)  # fmt: skip
    endpoints = await federation.start()
    url = endpoints["nodes"][DGA]["client"] + ECHO  # type: ignore[index]
    try:
        async with aiohttp.ClientSession() as http:

            async def worker(count: int) -> None:
                for _ in range(count):
                    async with http.get(url, headers=DEV) as r:
                        await r.read()
                        if r.status != 200:
                            raise SystemExit(f"exchange failed: HTTP {r.status}")

            await asyncio.gather(*(worker(20) for _ in range(conc)))  # warm-up
            cpu = time.process_time()
            await asyncio.gather(*(worker(n // conc) for _ in range(conc)))
            return (time.process_time() - cpu) / (n // conc * conc)
    finally:
        await federation.stop()


def _spec(backend: str) -> TestFederationSpec:
    return TestFederationSpec(backend_url=backend, checkpoint_interval=5)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--metrics", choices=["off", "on", "both"], default="both")
    p.add_argument("--exchanges", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    configure_logging("warning", json=True)
    app = web.Application()
    app.router.add_get("/echo{tail:.*}", _echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    modes = ["off", "on"] if args.metrics == "both" else [args.metrics]
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for mode in modes:  # alternating, so drift in machine load hits both
                    per = await _round(
                        Path(tmp), f"http://127.0.0.1:{port}", mode == "on",
                        args.exchanges, args.concurrency,
                    )  # fmt: skip
                    cpu[mode].append(per)
                    print(f"metrics {mode}: {per * 1e6:8.1f} us CPU per exchange", flush=True)
    finally:
        await runner.cleanup()
    med = {m: statistics.median(v) for m, v in cpu.items()}
    for m, v in med.items():
        print(f"median, metrics {m}: {v * 1e6:.1f} us CPU per exchange ({args.rounds} rounds)")
    if len(med) == 2:
        added = med["on"] / med["off"] - 1
        print(f"metrics add {added * 100:+.1f} % CPU per exchange (target: under 5 %)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
