"""A node's operations: health checks, Prometheus metrics, the admin API (maintenance mode,
metrics, monitoring records) and the wiring of operational monitoring and SLO alerts.

Kept apart from node.py, which builds and runs the exchange itself; ``Node`` inherits these
methods, which read the node's state (its runtime, checkpointer, global configuration,
listeners) and never change how an exchange is served.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters.flatfile import FlatFileAdapter
from xroad_hub.federation import NodeConfig
from xroad_hub.listen import is_loopback_host
from xroad_hub.node.admin import ADMIN, AdminApi, AdminAudit
from xroad_hub.node.checkpointer import Checkpointer
from xroad_hub.node.framelistener import FrameListener
from xroad_hub.node.globalconf_client import GlobalConfClient
from xroad_hub.node.health import CertCheck, Problem, cert_problems
from xroad_hub.node.keys import NodeKeys
from xroad_hub.node.metrics import (
    CURRENT_EXCHANGE,
    ExchangeTiming,
    NodeMetrics,
    StateCollector,
    time_backend,
)
from xroad_hub.node.opmonitoring import OpMonitor, opmonitoring_app
from xroad_hub.node.runtime import NODE_METRICS, HostedService, NodeRuntime
from xroad_hub.node.serviceadmin import settings_app
from xroad_hub.node.services import ServiceManager
from xroad_hub.node.slo import AlertSender, SloWatch
from xroad_hub.node.tls import admin_context
from xroad_hub.pki import CertPaths, load_ed25519_key
from xroad_hub.protocol.identifiers import ServiceId, parse_client_id, parse_node_id

__all__ = ["NodeOperations"]


class NodeOperations:
    """Health, metrics, admin API and monitoring of a ``Node`` (node.py)."""

    # Set by Node (node.py).
    config: NodeConfig
    keys: NodeKeys
    data_dir: Path
    globalconf: GlobalConfClient
    runtime: NodeRuntime | None
    checkpointer: Checkpointer | None
    metrics: NodeMetrics | None
    admin: AdminApi | None
    service_manager: ServiceManager | None
    opmonitor: OpMonitor | None
    slo_watch: SloWatch | None
    log_failure_hold: float
    _certs: list[CertCheck]
    _listeners: list[tuple[str, web.AppRunner]]
    frames: FrameListener | None

    def _instrument(self, rt: NodeRuntime) -> None:
        """Metrics and the health checks' inputs: set up once the services are known."""
        keys = self.keys
        checks = [("authentication", keys.auth()), ("checkpoint", keys.checkpoint())]
        members = sorted(rt.signers, key=str)
        checks += [(f"signing ({m})", keys.member_sign(str(m))) for m in members]
        self._certs = [_cert_check(f"{what} certificate", paths) for what, paths in checks]
        metrics = rt.metrics
        if metrics is None:
            return
        for hosted in rt.services.values():
            time_backend(hosted.adapter, "handle")
        time_backend(rt.peers, "send")
        for signer in rt.signers.values():
            signer.on_batch = metrics.signature_batch.observe
        commits = getattr(rt.log, "group_commit", None)
        if commits is not None:
            commits.on_batch = metrics.log_batch.observe
        metrics.add_collector(StateCollector(self._state_gauges))

    def problems(self) -> list[Problem]:
        """Why the node may not take traffic now (empty: it may). Reads memory and stats a
        few key files; the health endpoint caches the answer (health.py)."""
        rt, now = self.runtime, time.time()
        if rt is None:
            return [Problem("starting", "the node is not started")]
        found = []
        if rt.state.maintenance is not None:
            found.append(Problem("maintenance", f"maintenance mode: {rt.state.maintenance}"))
        if self.globalconf.current() is None:
            why = self.globalconf.last_error or "it has expired"
            found.append(
                Problem(
                    "globalconf_invalid", "no valid global configuration", f"last download: {why}"
                )
            )
        cp = self.checkpointer
        if cp is not None and not cp.healthy(now):
            waited = now - (cp.oldest_unstamped() or now)
            found.append(
                Problem(
                    "timestamping_failing",
                    f"checkpoints have waited {waited:.0f} s for a timestamp (limit"
                    f" {cp.failure_limit:g} s); the timestamp authority does not answer",
                )
            )
        failed_at = rt.state.log_failed_at
        if failed_at is not None and now - failed_at < self.log_failure_hold:
            found.append(
                Problem(
                    "messagelog_unwritable",
                    f"the message log could not be written {now - failed_at:.0f} s ago",
                    rt.state.log_failure,
                )
            )
        return found + cert_problems(self._certs, now)

    def _state_gauges(self) -> Iterator[tuple[str, str, dict[str, str], float]]:
        """Gauges computed at scrape time (StateCollector)."""
        now, rt = time.time(), self.runtime
        conf = self.globalconf.current()
        if conf is not None:
            yield (
                "xroad_hub_globalconf_age_seconds",
                "Age of the global configuration in force",
                {},
                now - conf.generated_at.timestamp(),
            )
        yield (
            "xroad_hub_globalconf_valid",
            "1 while the node holds a valid global configuration",
            {},
            float(conf is not None),
        )
        yield (
            "xroad_hub_globalconf_refresh_failures_total",
            "Downloads of the global configuration that failed",
            {},
            float(self.globalconf.refresh_failures),
        )
        cp = self.checkpointer
        if cp is not None:
            for name, doc, at in (
                ("timestamp", "Time since a checkpoint was last timestamped", cp.last_timestamp_at),
                ("witness", "Time since a checkpoint was last witnessed", cp.last_witness_at),
            ):
                if at is not None:
                    yield f"xroad_hub_last_{name}_age_seconds", doc, {}, now - at
            oldest = cp.oldest_unstamped()
            yield (
                "xroad_hub_timestamp_pending_seconds",
                "How long the oldest checkpoint has waited for a timestamp (0: none waits)",
                {},
                0.0 if oldest is None else now - oldest,
            )
            yield (
                "xroad_hub_timestamp_failure_limit_seconds",
                "How long a checkpoint may wait for a timestamp before exchanges are refused",
                {},
                cp.failure_limit,
            )
            yield (
                "xroad_hub_timestamp_failures_total",
                "Timestamp requests that failed",
                {},
                float(cp.timestamp_failures),
            )
        if rt is not None:
            for sid, hosted in rt.services.items():
                if not isinstance(hosted.adapter, FlatFileAdapter):
                    continue
                data = hosted.adapter.current()
                if data is None:
                    continue
                labels = {"service": str(sid)}
                loaded = datetime.fromisoformat(data.version.loaded_at).timestamp()
                modified = datetime.fromisoformat(data.version.modified_at).timestamp()
                yield (
                    "xroad_hub_flatfile_data_age_seconds",
                    "Age of the export a flat-file service serves (since the file changed)",
                    labels,
                    now - modified,
                )
                yield (
                    "xroad_hub_flatfile_loaded_age_seconds",
                    "Time since a flat-file service loaded the export it serves",
                    labels,
                    now - loaded,
                )
                yield (
                    "xroad_hub_flatfile_broken_records",
                    "Records of the served export that failed validation (not served)",
                    labels,
                    float(data.version.broken),
                )
        for role, runner in self._listeners:
            server = runner.server
            yield (
                "xroad_hub_open_connections",
                "Connections open on the node's listeners",
                {"listener": role},
                float(len(server.connections)) if server is not None else 0.0,
            )
        frames = self.frames
        if frames is not None and self._listeners:
            # The peer port's connections of the framed channel (not aiohttp's).
            yield (
                "xroad_hub_open_connections",
                "Connections open on the node's listeners",
                {"listener": "peer_frames"},
                float(len(frames.connections)),
            )
        problems = {p.check for p in self.problems()}
        for check in _CHECKS:
            yield (
                "xroad_hub_health_problem",
                "1 while a health check fails (the node is then not ready)",
                {"check": check},
                float(check in problems),
            )
        yield "xroad_hub_ready", "1 while the node may take traffic", {}, float(not problems)

    def _exchange_context(self) -> AbstractContextManager[None]:
        """Around each exchange served: log lines name the node, and with metrics a clock
        for its backend's time."""
        return _ExchangeContext(self._node_name(), self.metrics is not None)

    def _node_name(self) -> str:
        # The node's id as log lines name it, formatted once (config.id never changes).
        name: str | None = self.__dict__.get("_node_id_text")
        if name is None:
            name = self.__dict__["_node_id_text"] = str(self.config.id)
        return name

    def _context_middleware(
        self,
    ) -> Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]], Any]:
        """Per request: the exchange's context, and the request carries the node's metrics."""
        metrics, context = self.metrics, self._exchange_context

        @web.middleware
        async def middleware(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            with context():
                if metrics is not None:
                    request[NODE_METRICS] = metrics
                return await handler(request)

        return middleware

    def _admin_tls(self, auth: CertPaths) -> ssl.SSLContext | None:
        """Plain HTTP on a loopback address only; elsewhere HTTPS with the node's
        certificate (administrators authenticate with their API keys)."""
        address = self.config.admin_listen
        if address is None or is_loopback_host(address[0]):
            return None
        return admin_context(auth.cert, auth.key)

    def _admin_app(self, rt: NodeRuntime, context: Any) -> web.Application:
        admin = self.admin = AdminApi(
            str(self.config.id),
            self.config.admins,
            AdminAudit(
                self.data_dir / "admin-audit.jsonl",
                str(self.config.id),
                load_ed25519_key(self.keys.checkpoint().key),  # signs each entry
            ),
            # Service descriptions (OpenAPI, WSDL) and settings exports are sent here.
            max_body=12 * 1024 * 1024,
        )
        admin.app.middlewares.insert(0, context)
        manager = self.service_manager
        if manager is not None:
            # Services, access rights, groups: the service administrators' (serviceadmin.py).
            assert admin.audit is not None
            manager.record = admin.audit.record
            admin.mount(
                "/settings",
                settings_app(
                    manager,
                    str(self.config.id),
                    # Where the node keeps what no service may read: its keys and data.
                    private_dirs=(
                        self.data_dir,
                        self.keys.auth().key.parent,
                        self.keys.checkpoint().key.parent,
                        *self.keys.private_dirs(),
                    ),
                    file_dirs=[Path(d) for d in self.config.service_file_dirs],
                ),
                ("service-administrator",),
            )
        metrics = self.metrics

        async def scrape(request: web.Request) -> web.Response:
            assert metrics is not None
            return web.Response(
                body=generate_latest(metrics.registry),
                headers={"Content-Type": CONTENT_TYPE_LATEST},
            )

        async def maintenance(request: web.Request) -> web.Response:
            return web.json_response(_maintenance_state(rt))

        async def set_maintenance(request: web.Request) -> web.Response:
            try:
                body = await request.json()
                enabled = body["enabled"]
                message = body.get("message") or "planned maintenance"
                if not isinstance(enabled, bool) or not isinstance(message, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError, AttributeError):
                return web.json_response(
                    {"error": 'send JSON {"enabled": true|false, "message": "why"}'}, status=400
                )
            message = message[:200]
            # Recorded before it takes effect: a trail that cannot be written (disk full)
            # refuses the change rather than letting it happen unrecorded.
            assert admin.audit is not None  # the node's trail (admin-audit.jsonl)
            await admin.audit.record(
                request[ADMIN].name,
                "maintenance.on" if enabled else "maintenance.off",
                **({"message": message} if enabled else {}),
            )
            rt.state.maintenance = message if enabled else None
            if metrics is not None:
                metrics.maintenance.set(float(enabled))
            return web.json_response(_maintenance_state(rt))

        async def problems(request: web.Request) -> web.Response:
            found = self.problems()
            return web.json_response(
                {"ready": not found, "problems": [p.as_dict(detailed=True) for p in found]}
            )

        watchers = ("system-administrator", "security-officer", "monitor")
        if metrics is not None:
            admin.route("GET", "/metrics", scrape, ("monitor", "system-administrator"))
        admin.route("GET", "/maintenance", maintenance, watchers)
        admin.route("POST", "/maintenance", set_maintenance, ("system-administrator",))
        admin.route("GET", "/health", problems, watchers)
        if self.opmonitor is not None:
            # Operational-monitoring records and service-level objectives (node/opmonitoring.py)
            # read every exchange of the node: the same watchers' roles.
            monitoring = opmonitoring_app(self.opmonitor, self.slo_watch)
            for route in monitoring.router.routes():
                if route.method != "HEAD":
                    admin.route(route.method, route.resource.canonical, route.handler, watchers)
        return admin.app

    def _services_changed(self, services: Mapping[ServiceId, HostedService]) -> None:
        """Monitoring follows the services in force: their types in operational records,
        their objectives in the SLO watch."""
        if self.opmonitor is not None:
            self.opmonitor.service_types = _service_types(services)
        if self.slo_watch is not None:
            self.slo_watch.objectives = {
                str(sid): h.config.slo for sid, h in services.items() if h.config.slo
            }

    def _opmonitor(self, services: Mapping[ServiceId, HostedService]) -> OpMonitor | None:
        """The store of operational-monitoring records (None: switched off), fed by the
        runtime with every exchange; started by the monitoring context."""
        cfg = self.config
        if not cfg.opmonitoring:
            return None
        globalconf = self.globalconf

        def addresses(client: str, target: str | None) -> tuple[str | None, str | None]:
            conf = globalconf.current()
            if conf is None:
                return None, None
            own = conf.node(cfg.id)
            other = (
                conf.node_hosting(parse_client_id(client))
                if client
                else conf.node(parse_node_id(target))
                if target
                else None
            )
            return (own.address if own else None), (other.address if other else None)

        def monitoring_client() -> object:
            conf = globalconf.current()
            return conf.monitoring_client if conf else None

        return OpMonitor(
            self.data_dir / "opmonitoring.sqlite",
            cfg.id,
            retention=cfg.opmonitoring_retention,
            max_records=cfg.opmonitoring_max_records,
            internal_ip=(cfg.client_listen or cfg.peer_listen)[0],
            addresses=addresses,
            service_types=_service_types(services),
            monitoring_client=monitoring_client,  # type: ignore[arg-type]
        )

    def _slo_watch(self, rt: NodeRuntime, store: OpMonitor, alerts: AlertSender) -> SloWatch:
        """Watches each service's objective and the node's own failures; alerts by webhook."""
        cfg, globalconf, checkpointer = self.config, self.globalconf, self.checkpointer
        stamp_limit = max(120.0, 2 * cfg.checkpoint_interval)

        def timestamping() -> dict[str, object] | None:
            oldest = checkpointer.oldest_unstamped() if checkpointer else None
            waited = time.time() - oldest if oldest is not None else 0.0
            return {"waiting_seconds": round(waited)} if waited > stamp_limit else None

        def refresh() -> dict[str, object] | None:
            since = globalconf.failing_since
            return {"failing_seconds": round(time.time() - since)} if since else None

        def log_writes() -> dict[str, object] | None:
            since = store.log_failed_since
            return {"failing_seconds": round(time.time() - since)} if since else None

        return SloWatch(
            store,
            {str(sid): h.config.slo for sid, h in rt.services.items() if h.config.slo},
            alerts,
            interval=cfg.slo_check_interval,
            conditions={
                "timestamping_failing": timestamping,
                "globalconf_refresh_failing": refresh,
                "messagelog_write_failing": log_writes,
            },
        )


# Every health check's code (health_problem gauge: each always present, 0 or 1).
_CHECKS = (
    "maintenance", "globalconf_invalid", "timestamping_failing", "messagelog_unwritable",
    "key_missing", "certificate_expired", "certificate_not_yet_valid",
)  # fmt: skip


def _service_types(services: Mapping[ServiceId, HostedService]) -> dict[str, str]:
    """Each service's type as operational-monitoring records name it."""
    return {
        str(sid): "WSDL" if h.config.adapter == "soap" else "OPENAPI3" if h.openapi else "REST"
        for sid, h in services.items()
    }


def _maintenance_state(rt: NodeRuntime) -> dict[str, object]:
    return {"maintenance": rt.state.maintenance is not None, "message": rt.state.maintenance}


def _cert_check(what: str, paths: CertPaths) -> CertCheck:
    return CertCheck.load(what, paths.cert, paths.key)


class _ExchangeContext:
    """The context of one exchange (what ``_exchange_context`` gives), by hand: entered for
    every exchange on both nodes, where structlog's ``bound_contextvars`` (a generator) reads
    the whole context to save it, while a token restores just the one variable it set."""

    __slots__ = ("_node", "_timed", "_timing", "_tokens")

    def __init__(self, node: str, timed: bool) -> None:
        self._node, self._timed = node, timed

    def __enter__(self) -> None:
        self._tokens = structlog.contextvars.bind_contextvars(node=self._node)
        self._timing = CURRENT_EXCHANGE.set(ExchangeTiming()) if self._timed else None

    def __exit__(self, *_exc: object) -> None:
        if self._timing is not None:
            CURRENT_EXCHANGE.reset(self._timing)
        structlog.contextvars.reset_contextvars(**self._tokens)
