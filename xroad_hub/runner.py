"""Runs a whole federation in one process: demo backends, central registry, every node.

This is what ``xroad-hub up`` does on one machine. ``endpoints.json`` in the data directory
tells clients where everything listens.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import structlog
from aiohttp import web

from .demo.dbd import dbd_app
from .federation import BackendConfig, FederationConfig
from .node import Node
from .pki import PkiLayout
from .registry import Registry

__all__ = ["Federation"]

log = structlog.get_logger("xroad_hub.runner")

_BACKENDS = {"dbd-registry": dbd_app}


class Federation:
    def __init__(self, fed: FederationConfig, certs_dir: Path, data_dir: Path) -> None:
        self.fed = fed
        self.pki = PkiLayout(certs_dir)
        self.data_dir = data_dir
        self.nodes: dict[str, Node] = {}
        self._runners: list[web.AppRunner] = []
        self.endpoints: dict[str, object] = {}

    async def _serve(self, app: web.Application, address: tuple[str, int]) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        self._runners.append(runner)
        sock = socket.create_server(address)
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> dict[str, object]:
        backends = {}
        for b in self.fed.backends:
            backends[b.kind] = await self._serve(_backend(b), b.listen)
        registry = Registry(self.fed, self.pki)
        registry_url = await self._serve(registry.app(), self.fed.registry.listen)
        nodes: dict[str, object] = {}
        for cfg in self.fed.nodes:
            node = Node(
                cfg,
                self.pki,
                f"{registry_url}/globalconf",
                self.data_dir / "nodes" / Path(*str(cfg.id).split("/")),
                refresh_interval=self.fed.registry.refresh_interval,
            )
            urls = await node.start()
            self.nodes[str(cfg.id)] = node
            nodes[str(cfg.id)] = {
                **urls,
                "clients": {str(c.id): c.auth for c in cfg.clients},
                "services": [str(s.id) for s in cfg.services],
            }
        self.endpoints = {"registry": registry_url, "nodes": nodes, "backends": backends}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "endpoints.json").write_text(json.dumps(self.endpoints, indent=2) + "\n")
        log.info("federation.started", endpoints=str(self.data_dir / "endpoints.json"))
        return self.endpoints

    async def stop(self) -> None:
        # Nodes first: they finish in-flight exchanges and flush their logs.
        for node in self.nodes.values():
            await node.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        log.info("federation.stopped")


def _backend(b: BackendConfig) -> web.Application:
    try:
        return _BACKENDS[b.kind](seed=b.seed)
    except KeyError:
        raise ValueError(
            f"unknown demo backend kind {b.kind!r}; known: {sorted(_BACKENDS)}"
        ) from None
