"""Runs a whole federation in one process: demo backends, central registry, every node.

This is what ``xroad-hub up`` does on one machine. ``endpoints.json`` in the data directory
tells clients where everything listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from dataclasses import replace
from pathlib import Path

import structlog
from aiohttp import web

from adapters.flatfile.settings import resolve_path
from xroad_hub.central.registry import Registry
from xroad_hub.central.tsa import TSA_POLICY, tsa_app
from xroad_hub.demo.dbd import dbd_app
from xroad_hub.demo.dopa import dopa_app
from xroad_hub.demo.legacy_exports import ensure_export
from xroad_hub.federation import BackendConfig, FederationConfig, NodeConfig
from xroad_hub.listen import listen_socket
from xroad_hub.node import Node
from xroad_hub.node.health import CertCheck, cert_problems, health_app
from xroad_hub.packaged import packaged_path
from xroad_hub.pki import PkiLayout, load_cert, load_private_key

__all__ = ["Federation", "backend_app", "with_packaged_paths"]

log = structlog.get_logger("xroad_hub.demo.runner")

_BACKENDS = {"dbd-registry": dbd_app, "dopa-population": dopa_app}


class Federation:
    def __init__(
        self,
        fed: FederationConfig,
        certs_dir: Path,
        data_dir: Path,
        *,
        only: frozenset[str] | None = None,
        metrics: bool = True,
    ) -> None:
        """``only`` limits this process to some components ("registry", "backends", node
        ids), so that nodes can run in processes of their own; None runs everything."""
        self.fed = fed
        self.only = only
        self.metrics = metrics  # False: nodes keep no metrics (benchmark comparisons)
        self.pki = PkiLayout(certs_dir)
        self.data_dir = data_dir
        self.nodes: dict[str, Node] = {}
        self.registry: Registry | None = None  # when this process runs it
        self._runners: list[web.AppRunner] = []
        self.endpoints: dict[str, object] = {}

    async def _serve(
        self, app: web.Application, address: tuple[str, int], component: str, key: str
    ) -> str:
        sock = listen_socket(address, component, key)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        self._runners.append(runner)
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def _runs(self, component: str) -> bool:
        return self.only is None or component in self.only

    async def start(self) -> dict[str, object]:
        try:
            return await self._start()
        except BaseException:
            # Whatever did start (backends, registry, earlier nodes) stops again, so a failed
            # start leaves no listeners, sessions or open logs behind.
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    async def _start(self) -> dict[str, object]:
        backends = {}
        if self._runs("backends"):
            for b in self.fed.backends:
                backends[b.kind] = await self._serve(
                    backend_app(b), b.listen, f"backend {b.kind}", f"listen of backend {b.kind}"
                )
        host, port = self.fed.registry.listen
        registry_url = f"http://{host}:{port}"
        if self._runs("registry"):
            registry_dir = self.data_dir / "registry"
            registry_dir.mkdir(parents=True, exist_ok=True)
            registry = Registry(self.fed, self.pki, witness_state=registry_dir / "witness.json")
            self.registry = registry
            registry_url = await self._serve(
                registry.app(), self.fed.registry.listen, "the registry", "[registry] listen"
            )
            if self.fed.registry.health_listen is not None:
                self.endpoints["registry_health"] = await self._serve(
                    health_app(functools.partial(cert_problems, self._registry_certs(), None)),
                    self.fed.registry.health_listen,
                    "the registry's health check",
                    "[registry] health_listen",
                )
        tsa_url = None
        if self.fed.registry.tsa_listen is not None:
            tsa_host, tsa_port = self.fed.registry.tsa_listen
            tsa_url = f"http://{tsa_host}:{tsa_port}/"
            if self._runs("registry"):
                tsa_app_ = tsa_app(
                    load_private_key(self.pki.tsa.key), load_cert(self.pki.tsa.cert), TSA_POLICY
                )
                tsa_url = (
                    await self._serve(
                        tsa_app_,
                        self.fed.registry.tsa_listen,
                        "the timestamp authority",
                        "[registry] tsa_listen",
                    )
                    + "/"
                )
        nodes: dict[str, object] = {}
        for cfg in self.fed.nodes:
            if not self._runs(str(cfg.id)):
                continue
            cfg = await asyncio.to_thread(_flatfile_sources, cfg, self.data_dir)
            node = Node(
                cfg,
                self.pki,
                f"{registry_url}/globalconf",
                self.data_dir / "nodes" / Path(*str(cfg.id).split("/")),
                refresh_interval=self.fed.registry.refresh_interval,
                witness_url=f"{registry_url}/witness",
                auditors=self.fed.auditors,
                tsa_url=cfg.tsa_url or tsa_url,
                metrics=self.metrics,
            )
            self.nodes[str(cfg.id)] = node
            urls = await node.start()
            nodes[str(cfg.id)] = {
                **urls,
                "clients": {str(c.id): c.auth for c in cfg.clients},
                # Every service code the node serves, SOAP operations registered from a
                # WSDL included (they exist only once the node has read its WSDL).
                "services": sorted(str(s) for s in node.runtime.services)
                if node.runtime is not None
                else [],
            }
        self.endpoints = {
            **self.endpoints,
            "registry": registry_url, "tsa": tsa_url, "nodes": nodes, "backends": backends,
        }  # fmt: skip
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "endpoints.json").write_text(json.dumps(self.endpoints, indent=2) + "\n")
        log.info("federation.started", endpoints=str(self.data_dir / "endpoints.json"))
        return self.endpoints

    def _registry_certs(self) -> list[CertCheck]:
        """What the registry's health checks: the keys it signs with, in date."""
        pki = self.pki
        checks = [
            ("global configuration signing certificate", pki.globalconf_signer),
            ("witness certificate", pki.registry_witness),
        ]
        if self.fed.registry.tsa_listen is not None:
            checks.append(("timestamp authority certificate", pki.tsa))
        return [CertCheck.load(what, p.cert, p.key) for what, p in checks]

    async def stop(self) -> None:
        # Nodes first: they finish in-flight exchanges and flush their logs.
        for node_id, node in self.nodes.items():
            try:
                await node.stop()
            except Exception:
                # One node failing to stop (e.g. one that never fully started) must not
                # leave the others running.
                log.exception("node.stop_failed", node=node_id)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        log.info("federation.stopped")


def _flatfile_sources(cfg: NodeConfig, data_dir: Path) -> NodeConfig:
    """Flat-file exports are runtime data: a relative ``source`` lives under the data
    directory. Demo services (option ``generate``) get their seeded export there on a fresh
    clone; an export that is already there is never touched."""
    services = []
    for service in cfg.services:
        source = service.options.get("source")
        if service.adapter != "flatfile" or not isinstance(source, str):
            services.append(service)
            continue
        target = resolve_path(source, data_dir.resolve())
        kind = service.options.get("generate")
        if kind:
            seed = service.options.get("seed")  # None: ensure_export's (the demo's) seed
            written = ensure_export(str(kind), target, *([] if seed is None else [int(seed)]))
            if written is not None:
                log.info("demo.export_generated", service=str(service.id), path=str(written))
        services.append(replace(service, options={**service.options, "source": str(target)}))
    return replace(cfg, services=tuple(services))


def backend_app(b: BackendConfig) -> web.Application:
    """The demo backend (an agency's own system) of a [[backend]] table."""
    try:
        return _BACKENDS[b.kind](seed=b.seed)
    except KeyError:
        raise ValueError(
            f"unknown demo backend kind {b.kind!r}; known: {sorted(_BACKENDS)}"
        ) from None


def with_packaged_paths(fed: FederationConfig) -> FederationConfig:
    """``fed`` with its services' layout, OpenAPI and WSDL paths made absolute (``packaged_path``),
    so that the demo federation runs from any directory."""
    nodes = []
    for node in fed.nodes:
        services = []
        for s in node.services:
            options = dict(s.options)
            if isinstance(options.get("layout"), str):
                options["layout"] = packaged_path(options["layout"])
            openapi = packaged_path(s.openapi) if s.openapi else s.openapi
            services.append(replace(s, options=options, openapi=openapi))
        soap = tuple(replace(s, wsdl=packaged_path(s.wsdl)) for s in node.soap_services)
        nodes.append(replace(node, services=tuple(services), soap_services=soap))
    return replace(fed, nodes=tuple(nodes))
