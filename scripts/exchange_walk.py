"""Walk one X-Road REST exchange through the test federation and count the modules it visits.

    python scripts/exchange_walk.py [--show]

Starts a three-node federation on loopback (real TLS, an echo backend), sends one warm-up
request, then profiles one ``POST /r1/TH/GOV/DBD/registry/echo/...`` with sys.setprofile.
Every call and return event inside the project (xroad_hub, adapters) is attributed to the
node that handles it (the client node's ClientProxy or the provider node's ServerProxy,
found on the frame's stack) and to the innermost project module. The module sequence of
each side, with repeats collapsed, gives:

- modules: how many project modules the exchange passes through;
- returns: how often control comes back to a module it had left (per module and in total).

Calls run off the event loop (``NodeRuntime.off_loop``) are run inline here, so that they are
walked on the same stack; the exchange's bytes are the same either way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from aiohttp import web

from xroad_hub.demo.runner import Federation
from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.testing import TestFederationSpec, free_port, write_federation
from xroad_hub.federation import load_federation
from xroad_hub.logs import configure_logging
from xroad_hub.node.runtime import NodeRuntime

ROOT = Path(__file__).resolve().parent.parent
PROJECT = (str(ROOT / "xroad_hub") + "/", str(ROOT / "adapters") + "/")
SIDES = {
    ("consumer.py", "handle"): "client node",
    ("provider.py", "handle"): "provider node",
}
PATH = "/r1/TH/GOV/DBD/registry/echo/v1/pets/1?q=1"


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"path": request.raw_path, "body": base64.b64encode(body).decode()})


def _module(frame: FrameType) -> str | None:
    name = frame.f_code.co_filename
    if name.startswith(PROJECT):
        return name[len(str(ROOT)) + 1 :]
    return None


def _side(frame: FrameType | None) -> str | None:
    while frame is not None:
        code = frame.f_code
        side = SIDES.get((Path(code.co_filename).name, code.co_name))
        if side and code.co_filename.startswith(PROJECT):
            return side
        frame = frame.f_back
    return None


class Walk:
    def __init__(self) -> None:
        self.seq: dict[str, list[str]] = {side: [] for side in SIDES.values()}

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event not in ("call", "return"):
            return
        # On a return, control goes back to the caller's frame.
        at = frame if event == "call" else frame.f_back
        while at is not None and _module(at) is None:
            at = at.f_back
        if at is None:
            return
        side = _side(at)
        module = _module(at)
        if side is None or module is None:
            return
        seq = self.seq[side]
        if not seq or seq[-1] != module:
            seq.append(module)


def report(walk: Walk, show: bool) -> None:
    total_modules: set[str] = set()
    total_returns = 0
    for side, seq in walk.seq.items():
        visits = Counter(seq)
        returns = {m: n - 1 for m, n in visits.items() if n > 1}
        total_modules |= set(visits)
        total_returns += sum(returns.values())
        print(f"{side}: {len(visits)} modules, {sum(returns.values())} returns "
              f"({len(seq)} module changes)")  # fmt: skip
        for module, n in sorted(returns.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"    {n:3d} x back to {module}")
        if show:
            print("    path: " + " -> ".join(Path(m).name for m in seq))
    print(f"both nodes: {len(total_modules)} modules, {total_returns} returns")


async def main(show: bool) -> int:
    configure_logging("error", json=True)

    async def inline(self: NodeRuntime, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    NodeRuntime.off_loop = inline  # type: ignore[method-assign]
    app = web.Application()
    app.router.add_route("*", "/echo{tail:.*}", _echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = TestFederationSpec(backend_url=f"http://127.0.0.1:{port}")
        cfg = load_federation(write_federation(root / "federation.toml", spec))
        ensure_pki(cfg, root / "certs")
        federation = Federation(cfg, root / "certs", root / "data")
        endpoints: Any = await federation.start()
        url = endpoints["nodes"]["TH/GOV/DGA/hub1"]["client"] + PATH
        headers = {"X-Road-Client": "TH/GOV/DGA/devportal", "Content-Type": "application/json"}
        try:
            async with aiohttp.ClientSession() as http:
                for attempt in ("warm-up", "walked"):
                    walk = Walk()
                    if attempt == "walked":
                        sys.setprofile(walk)
                    try:
                        async with http.post(url, data=b'{"a": 1}', headers=headers) as r:
                            data = await r.read()
                    finally:
                        sys.setprofile(None)
                    if r.status != 200:
                        print(f"exchange failed: HTTP {r.status} {data[:300]!r}", file=sys.stderr)
                        return 1
        finally:
            await federation.stop()
            await runner.cleanup()
    report(walk, show)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--show", action="store_true", help="print each side's module path")
    sys.exit(asyncio.run(main(parser.parse_args().show)))
