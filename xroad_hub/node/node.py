"""A node assembled from its configuration, its key material and the registry's address."""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import MappingProxyType

import aiohttp
import orjson
import structlog
import zeep
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters import Adapter, RestAdapter
from adapters.flatfile import FlatFileAdapter, LayoutError
from adapters.soap import (
    SoapBridgeAdapter,
    SoapPassthroughAdapter,
    WsdlError,
    WsdlInfo,
    fetch_wsdl,
    hide_endpoint,
    load_wsdl,
    openapi_for,
    xroad_wsdl,
    zeep_client,
)
from xroad_hub.errors import CLIENT_PROXY, SERVER_PROXY
from xroad_hub.federation import ConfigError, NodeConfig, ServiceConfig, SoapServiceConfig
from xroad_hub.listen import is_loopback_host, listen_socket
from xroad_hub.messagelog import MessageLog, PostgresMessageLog, SQLiteMessageLog
from xroad_hub.messagelog.postgres import schema_for_node
from xroad_hub.node.auditapi import AuditApi, Auditor
from xroad_hub.node.batching import BatchSigner
from xroad_hub.node.checkpointer import Checkpointer, Timestamper
from xroad_hub.node.clientauth import ClientAuthenticator, ClientRegistration
from xroad_hub.node.consumer import ClientProxy
from xroad_hub.node.evidenceapi import EvidenceApi
from xroad_hub.node.globalconf_client import GlobalConfClient
from xroad_hub.node.limits import ClientLimits
from xroad_hub.node.peer import PEER_PATH, PeerTransport
from xroad_hub.node.provider import ServerProxy
from xroad_hub.node.runtime import HostedService, NodeRuntime
from xroad_hub.node.timestamping import fetch_timestamp
from xroad_hub.node.tls import client_facing_context, peer_client_context, peer_server_context
from xroad_hub.node.trackerapi import TrackerApi
from xroad_hub.node.usedtokens import SQLiteUsedTokens
from xroad_hub.pki import PkiLayout, load_cert, load_ed25519_key, load_private_key, load_public_key
from xroad_hub.protocol.catalog import DEFAULT_CATALOG, load_catalog
from xroad_hub.protocol.checkpoint import NoteSigner
from xroad_hub.protocol.identifiers import ServiceId
from xroad_hub.protocol.message import MAX_OVERHEAD
from xroad_hub.protocol.signing import MessageSigner, cert_fingerprint
from xroad_hub.protocol.subjects import (
    is_person_id_name,
    openapi_person_fields,
    uncovered_person_fields,
)

__all__ = ["Node"]
import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from xroad_hub.node.admin import ADMIN, AdminApi, AdminAudit
from xroad_hub.node.health import CertCheck, Problem, cert_problems, health_app
from xroad_hub.node.metrics import (
    CURRENT_EXCHANGE,
    ExchangeTiming,
    NodeMetrics,
    StateCollector,
    time_backend,
)
from xroad_hub.node.opmonitoring import OpMonitor, opmonitoring_app
from xroad_hub.node.runtime import NODE_METRICS
from xroad_hub.node.slo import AlertSender, SloWatch
from xroad_hub.node.tls import (
    admin_context,
)
from xroad_hub.pki import (
    CertPaths,
)
from xroad_hub.protocol.identifiers import parse_client_id, parse_node_id

log = structlog.get_logger("xroad_hub.node")


def _der(path: Path) -> bytes:
    return load_cert(path).public_bytes(serialization.Encoding.DER)


class Node:
    """One node (X-Road: security server) assembled from its configuration.

    ``start`` builds everything once: the node's resources are the cleanup contexts of its
    root application (HTTP session, message log, spent-token store, the exchange runtime with
    its adapters, checkpointer, global-configuration client), each started after those it
    needs; then the listeners. ``stop`` closes the listeners (in-flight exchanges finish),
    then aiohttp unwinds the contexts in reverse order, gathering their failures, so the
    final checkpoint is written before the log closes. A failed start unwinds what started.
    """

    def __init__(
        self,
        config: NodeConfig,
        pki: PkiLayout,
        registry_url: str,
        data_dir: Path,
        *,
        refresh_interval: float,
        witness_url: str | None = None,
        auditors: tuple[str, ...] = (),
        tsa_url: str | None = None,
        metrics: bool = True,
    ) -> None:
        self.config = config
        # False: no metrics at all (benchmarks compare; /metrics then answers 404).
        self.metrics_enabled = metrics
        self.pki = pki
        self.data_dir = data_dir
        self.globalconf = GlobalConfClient.from_files(
            registry_url, pki.globalconf_signer.cert, refresh_interval
        )
        self.witness_url = witness_url
        self.auditors = auditors
        self.tsa_url = tsa_url
        # Spent one-use client tokens: durable, shared by every process serving this node.
        self.used_tokens = SQLiteUsedTokens(data_dir / "used-tokens.sqlite")
        # Set once by start(), in the order of the contexts that make them.
        self._session: aiohttp.ClientSession | None = None
        self._log: MessageLog | None = None
        self.checkpointer: Checkpointer | None = None
        self.runtime: NodeRuntime | None = None
        self.urls: dict[str, str] = {}
        self._lifecycle: web.AppRunner | None = None
        self._listeners: list[tuple[str, web.AppRunner]] = []  # (role, runner), for metrics
        self.metrics: NodeMetrics | None = None
        self.admin: AdminApi | None = None
        self._certs: list[CertCheck] = []
        # How long a failed append of the message log keeps the node unready (health): no
        # probe writes to the log, so a failure is forgotten once none follows for this long.
        self.log_failure_hold = 30.0
        self.opmonitor: OpMonitor | None = None
        self.slo_watch: SloWatch | None = None
        self._alerts: AlertSender | None = None

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> dict[str, str]:
        """Start serving; ``sockets`` may hold pre-bound listeners by role (peer, client,
        client_tls, audit), otherwise the configured addresses are bound."""
        # Tasks started here (log writer, checkpointer, configuration refresh, flat-file
        # reloads) inherit the node's id: each of their log lines names the node.
        with structlog.contextvars.bound_contextvars(node=str(self.config.id)):
            return await self._start(sockets or {})

    async def _start(self, sockets: dict[str, socket.socket]) -> dict[str, str]:
        root = web.Application()
        root.cleanup_ctx.extend(
            (self._http_session, self._message_log, self._spent_tokens, self._exchange,
             self._checkpoints, self._globalconf_updates, self._monitoring)
        )  # fmt: skip
        self._lifecycle = web.AppRunner(root, handle_signals=False)
        try:
            await self._lifecycle.setup()
        except BaseException:
            await self._lifecycle.cleanup()  # the contexts that did start stop again
            self._lifecycle = None
            raise
        await self._listen(sockets)
        log.info("node.started", node=str(self.config.id), **self.urls)
        return self.urls

    async def stop(self) -> None:
        """Stop accepting, finish in-flight exchanges, then release the resources in reverse
        order: global configuration, final checkpoint, adapters and peers, stores, session."""
        try:
            for _, runner in self._listeners:
                await runner.cleanup()
            self._listeners.clear()
        finally:
            if self._lifecycle is not None:
                lifecycle, self._lifecycle = self._lifecycle, None
                await lifecycle.cleanup()
        log.info("node.stopped", node=str(self.config.id))

    # --- the resources, as cleanup contexts (started in this order, stopped in reverse) ---

    async def _http_session(self, _: web.Application) -> AsyncIterator[None]:
        # One connection pool for the node's adapters and its timestamp requests.
        self._session = aiohttp.ClientSession(
            auto_decompress=False, connector=aiohttp.TCPConnector(limit=0)
        )
        yield
        await self._session.close()

    async def _message_log(self, _: web.Application) -> AsyncIterator[None]:
        self._log = self._messagelog()
        await self._log.open()
        yield
        await self._log.close()

    async def _spent_tokens(self, _: web.Application) -> AsyncIterator[None]:
        await self.used_tokens.open()
        yield
        await self.used_tokens.close()

    async def _exchange(self, _: web.Application) -> AsyncIterator[None]:
        """The services with their adapters (flat-file exports loaded before the node
        answers), and the runtime both proxies share, complete before anything serves."""
        async with contextlib.AsyncExitStack() as stack:
            services = self._services()
            services.update(await self._soap_services(services))
            for hosted in services.values():
                stack.push_async_callback(hosted.adapter.close)
            for hosted in services.values():
                if isinstance(hosted.adapter, FlatFileAdapter):
                    await hosted.adapter.start()
            self.checkpointer = self._checkpointer()
            if self.metrics_enabled:
                self.metrics = NodeMetrics(
                    str(self.config.id), frozenset(str(s) for s in services)
                )
            self.opmonitor = self._opmonitor(services)
            rt = self.runtime = self._runtime(services, self.checkpointer)
            self._instrument(rt)
            stack.push_async_callback(rt.peers.close)
            stack.callback(rt.parse_pool.shutdown, wait=False, cancel_futures=True)
            yield

    async def _checkpoints(self, _: web.Application) -> AsyncIterator[None]:
        assert self.checkpointer is not None
        await self.checkpointer.start()
        yield
        # No exchange runs any more: the final checkpoint covers the whole log.
        await self.checkpointer.stop()

    async def _globalconf_updates(self, _: web.Application) -> AsyncIterator[None]:
        await self.globalconf.start()
        yield
        await self.globalconf.stop()

    async def _monitoring(self, _: web.Application) -> AsyncIterator[None]:
        """Operational-monitoring records, service-level objectives and the node's own
        alerts (the records' store was built with the runtime, which feeds it)."""
        store = self.opmonitor
        if store is None:
            yield
            return
        assert self.runtime is not None
        store.start()
        self._alerts = AlertSender(self.config.alert_webhook, str(self.config.id))
        self._alerts.start()
        self.slo_watch = self._slo_watch(self.runtime, store, self._alerts)
        self.slo_watch.start()
        yield
        await self.slo_watch.stop()
        await self._alerts.stop()
        await asyncio.to_thread(store.stop)  # writes what is queued

    # --- building ---------------------------------------------------------------------------

    def _services(self) -> dict[ServiceId, HostedService]:
        services = {
            s.id: HostedService(s, self._adapter(s), openapi=_openapi(s))
            for s in self.config.services
        }
        for hosted in services.values():
            _check_answer_subjects(hosted)
        return services

    def _checkpointer(self) -> Checkpointer:
        cfg, pki = self.config, self.pki
        assert self._log is not None
        checkpoint_key = pki.node_checkpoint(str(cfg.id))
        return Checkpointer(
            str(cfg.id),
            self._log,
            NoteSigner(str(cfg.id), load_ed25519_key(checkpoint_key.key)),
            _der(checkpoint_key.cert),
            cfg.checkpoint_interval,
            witness_url=self.witness_url,
            timestamper=self._timestamper() if self.tsa_url else None,
            failure_limit=cfg.timestamp_failure_limit,
            body_retention=cfg.body_retention,
            trusted_roots=[load_cert(pki.root_ca.cert)],
        )

    def _runtime(
        self, services: dict[ServiceId, HostedService], checkpointer: Checkpointer
    ) -> NodeRuntime:
        cfg, pki = self.config, self.pki
        assert self._log is not None
        auth = pki.node_auth(str(cfg.id))
        # The owner member signs the node's own requests (GET /wsdl without a client).
        members = {sub.member for sub in cfg.hosted} | {cfg.id.owner}
        signers = {}
        for member in members:
            paths = pki.member_sign(str(member))
            signers[member] = BatchSigner(
                MessageSigner(member, load_private_key(paths.key), _der(paths.cert))
            )
        regs = []
        for c in cfg.clients:
            if c.auth == "mtls":
                fp = cert_fingerprint(_der(pki.client_tls(str(c.id)).cert))
                regs.append(ClientRegistration(c.id, c.auth, cert_sha256=fp))
            elif c.auth == "jwt":
                key = serialization.load_pem_public_key(pki.client_jwt(str(c.id)).cert.read_bytes())
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise ValueError(f"JWT key of {c.id} must be an EC P-256 key")
                regs.append(ClientRegistration(c.id, c.auth, jwt_key=key))
            else:
                regs.append(ClientRegistration(c.id, c.auth))
        client_bytes = cfg.client_max_inflight_bytes or 2 * cfg.max_body_bytes
        return NodeRuntime(
            node_id=cfg.id,
            globalconf=self.globalconf,
            signers=signers,
            authenticator=ClientAuthenticator(str(cfg.id), regs, self.used_tokens),
            services=MappingProxyType(services),
            log=self._log,
            peers=PeerTransport(
                functools.partial(peer_client_context, auth.cert, auth.key, pki.root_ca.cert),
                cfg.max_body_bytes + MAX_OVERHEAD,
            ),
            max_body_bytes=cfg.max_body_bytes,
            body_timeout=cfg.body_timeout,
            provider_timeout=cfg.provider_timeout,
            client_limits=ClientLimits(
                cfg.client_max_concurrent, client_bytes, raise_as=CLIENT_PROXY
            ),
            # A peer node carries the requests of all its clients: a larger share, still
            # bounded, so one node of the federation cannot take all of this one.
            peer_limits=ClientLimits(
                _PEER_SHARE * cfg.client_max_concurrent,
                _PEER_SHARE * (client_bytes + MAX_OVERHEAD),
                raise_as=SERVER_PROXY,
            ),
            logging_ok=checkpointer.healthy,
            metrics=self.metrics,
            opmon=self.opmonitor,
        )

    def _adapter(self, service: ServiceConfig) -> Adapter:
        if service.adapter == "rest":
            # Answers larger than a peer node accepts would be signed and logged, then refused.
            return RestAdapter(
                service.url,
                timeout=service.timeout,
                max_response_bytes=self.config.max_body_bytes,
                session=self._session,
            )
        if service.adapter == "flatfile":
            try:
                # Relative paths are relative to the working directory, like the CLI's own
                # defaults; the runner has made ``source`` absolute under its data directory.
                return FlatFileAdapter.from_options(service.options, name=str(service.id))
            except LayoutError as exc:
                raise ConfigError(f"service {service.id}: {exc}") from exc
        raise ValueError(
            f"service {service.id}: adapter {service.adapter!r} is not available "
            "(use 'rest' or 'flatfile')"
        )

    async def _soap_services(
        self, others: dict[ServiceId, HostedService]
    ) -> dict[ServiceId, HostedService]:
        """SOAP services are registered from their WSDL, read when the node starts: each
        operation becomes a service code (version from the WSDL's xrd:version, else the
        registration's), with one adapter per operation."""
        found: dict[ServiceId, HostedService] = {}
        for reg in self.config.soap_services:
            try:
                data = await fetch_wsdl(reg.wsdl, timeout=reg.timeout)
                info = load_wsdl(data, reg.wsdl)
                client = zeep_client(data, reg.wsdl) if reg.mode == "bridge" else None
                for op in info.operations.values():
                    cfg = ServiceConfig(
                        id=ServiceId(reg.provider, op.name),
                        adapter="soap",
                        url=reg.url or info.endpoint or "",
                        timeout=reg.timeout,
                        allow=reg.allow,
                        disabled=reg.disabled,
                        version=op.version or reg.version,
                        options={"mode": reg.mode, "wsdl": reg.wsdl},
                        subjects=reg.subjects,
                        answer_subjects=reg.answer_subjects,
                        purposes=reg.purposes,
                    )
                    if cfg.id in others or cfg.id in found:
                        raise ValueError(f"operation {op.name} is already a service code here")
                    hosted = self._soap_service(reg, info, data, client, cfg)
                    _check_answer_subjects(hosted)
                    found[cfg.id] = hosted
            except (WsdlError, ValueError) as exc:
                raise ConfigError(
                    f"node {self.config.id}, SOAP service {reg.provider} ({reg.wsdl}): {exc}"
                ) from exc
        return found

    def _soap_service(
        self,
        reg: SoapServiceConfig,
        info: WsdlInfo,
        data: bytes,
        client: zeep.Client | None,
        cfg: ServiceConfig,
    ) -> HostedService:
        limit = self.config.max_body_bytes
        if client is None:  # pass-through: the service speaks X-Road and has its own WSDL
            adapter: Adapter = SoapPassthroughAdapter(
                cfg.url,
                soap_action=info.operation(cfg.id.service_code).soap_action,
                timeout=reg.timeout,
                max_response_bytes=limit,
                session=self._session,
            )
            return HostedService(cfg, adapter, wsdl=hide_endpoint(data))
        code = cfg.id.service_code
        bridge = SoapBridgeAdapter(
            info,
            client,
            operation=code,
            endpoint_url=reg.url,
            timeout=reg.timeout,
            max_response_bytes=limit,
            session=self._session,
        )
        return HostedService(
            cfg,
            bridge,
            wsdl=xroad_wsdl(info, data, reg.provider, cfg.version, operations=[code]),
            openapi=openapi_for(
                info,
                client,
                title=f"{reg.provider} {code}",
                version=cfg.version or "1.0",
                operations=[code],
            ),
        )

    async def _listen(self, sockets: dict[str, socket.socket]) -> None:
        """Bind every listener first, so that the proxies are built knowing the node's own
        URLs, then serve each listener's application with a runner of its own."""
        cfg, pki, rt = self.config, self.pki, self.runtime
        assert rt is not None
        auth = pki.node_auth(str(cfg.id))
        ca = pki.root_ca.cert
        client_tls = client_facing_context(auth.cert, auth.key, ca)
        plan = [
            ("peer", cfg.peer_listen, peer_server_context(auth.cert, auth.key, ca)),
            ("client", cfg.client_listen, None),
            ("client_tls", cfg.client_tls_listen, client_tls),
            ("audit", cfg.audit_listen, client_tls),
            ("health", cfg.health_listen, None),
            ("admin", cfg.admin_listen, self._admin_tls(auth)),
        ]
        bound: list[tuple[str, socket.socket, ssl.SSLContext | None]] = []
        try:
            for role, address, ssl_ctx in plan:
                if address is None and role not in sockets:
                    continue
                sock = sockets.get(role) or listen_socket(
                    address,  # type: ignore[arg-type]
                    f"node {cfg.id} ({role.replace('_', ' ')} port)",
                    f"{role}_listen of node {cfg.id}",
                )
                bound.append((role, sock, ssl_ctx))
                host, port = sock.getsockname()[:2]
                self.urls[role] = f"{'http' if ssl_ctx is None else 'https'}://{host}:{port}"
            apps = self._apps(rt)
        except BaseException:
            for role, sock, _ in bound:
                if role not in sockets:
                    sock.close()
            raise
        for role, sock, ssl_ctx in bound:
            runner = web.AppRunner(
                apps[role],
                access_log=None,
                handle_signals=False,
                # In-flight exchanges may run until the provider timeout; stopping earlier
                # would cut them off unanswered (they would still be logged).
                shutdown_timeout=cfg.provider_timeout + cfg.body_timeout,
                # aiohttp's default (3630 s) would let half-sent request heads hold
                # connections for an hour.
                keepalive_timeout=15,
            )
            await runner.setup()
            self._listeners.append((role, runner))
            await web.SockSite(runner, sock, ssl_context=ssl_ctx).start()

    def _apps(self, rt: NodeRuntime) -> dict[str, web.Application]:
        """The application each listener serves, by role."""
        cfg = self.config
        context = self._context_middleware()
        client_proxy = ClientProxy(
            rt,
            purpose_defaults={
                c.id: (c.default_purpose, c.default_legal_basis)
                for c in cfg.clients
                if c.default_purpose is not None
            },
            public_urls=MappingProxyType(dict(self.urls)),
        )
        server_proxy = ServerProxy(rt)
        # Bodies are read by read_body with their own limit and deadline, not by aiohttp.
        client_app = web.Application(middlewares=[context])
        EvidenceApi(rt, client_proxy, load_catalog(DEFAULT_CATALOG)).add_routes(client_app)
        client_app.router.add_get("/listClients", client_proxy.list_clients)
        client_app.router.add_get("/wsdl", client_proxy.wsdl)
        client_app.router.add_route("*", "/r1/{tail:.*}", client_proxy.handle)
        # X-Road SOAP clients POST to the node's root (any path outside /r1/ is accepted).
        client_app.router.add_post("/{tail:.*}", client_proxy.handle_soap)
        client_app.router.add_route("*", "/{tail:.*}", client_proxy.handle)
        peer_app = web.Application(middlewares=[context])
        peer_app.router.add_post(PEER_PATH, server_proxy.handle)
        apps = {"peer": peer_app, "client": client_app, "client_tls": client_app}
        if "audit" in self.urls:
            apps["audit"] = self._audit_app(rt)
            apps["audit"].middlewares.append(context)
        if "health" in self.urls:
            apps["health"] = health_app(self.problems)
        if "admin" in self.urls:
            apps["admin"] = self._admin_app(rt, context)
        return apps

    def _instrument(self, rt: NodeRuntime) -> None:
        """Metrics and the health checks' inputs: set up once the services are known."""
        cfg, pki = self.config, self.pki
        nid = str(cfg.id)
        checks = [("authentication", pki.node_auth(nid)), ("checkpoint", pki.node_checkpoint(nid))]
        checks += [(f"signing ({m})", pki.member_sign(str(m))) for m in sorted(rt.signers, key=str)]
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
        problems = {p.check for p in self.problems()}
        for check in _CHECKS:
            yield (
                "xroad_hub_health_problem",
                "1 while a health check fails (the node is then not ready)",
                {"check": check},
                float(check in problems),
            )
        yield "xroad_hub_ready", "1 while the node may take traffic", {}, float(not problems)

    def _context_middleware(
        self,
    ) -> Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]], Any]:
        """Per request: log lines name the node, the request carries the node's metrics and
        a clock for its backend's time."""
        node, metrics = str(self.config.id), self.metrics

        @web.middleware
        async def context(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            with structlog.contextvars.bound_contextvars(node=node):
                if metrics is None:
                    return await handler(request)
                request[NODE_METRICS] = metrics
                token = CURRENT_EXCHANGE.set(ExchangeTiming())
                try:
                    return await handler(request)
                finally:
                    CURRENT_EXCHANGE.reset(token)

        return context

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
            AdminAudit(self.data_dir / "admin-audit.jsonl", str(self.config.id)),
        )
        admin.app.middlewares.insert(0, context)
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
            service_types={
                str(sid): "WSDL"
                if h.config.adapter == "soap"
                else "OPENAPI3"
                if h.openapi
                else "REST"
                for sid, h in services.items()
            },
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
            {
                str(sid): h.config.slo
                for sid, h in rt.services.items()
                if getattr(h.config, "slo", None)
            },
            alerts,
            interval=cfg.slo_check_interval,
            conditions={
                "timestamping_failing": timestamping,
                "globalconf_refresh_failing": refresh,
                "messagelog_write_failing": log_writes,
            },
        )

    def _timestamper(self) -> Timestamper:
        roots = [load_cert(self.pki.root_ca.cert)]

        async def timestamp(data: bytes) -> bytes:
            assert self._session is not None and self.tsa_url is not None
            reply, _ = await fetch_timestamp(self._session, self.tsa_url, data, roots, 10.0)
            return reply

        return timestamp

    def _messagelog(self) -> MessageLog:
        if self.config.messagelog_dsn:
            # One schema per node, so that several nodes can share a database.
            schema = schema_for_node(str(self.config.id))
            return PostgresMessageLog(self.config.messagelog_dsn, schema=schema)
        return SQLiteMessageLog(self.data_dir / "messagelog.sqlite")

    def _audit_app(self, rt: NodeRuntime) -> web.Application:
        auditors = []
        for name in self.auditors:
            key = serialization.load_pem_public_key(self.pki.auditor_jwt(name).cert.read_bytes())
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError(f"JWT key of auditor {name} must be an EC P-256 key")
            auditors.append(Auditor(name, key))
        roots = [load_cert(self.pki.root_ca.cert)]
        # Each request opens its own reader of the node's log (SQLite or PostgreSQL).
        app = AuditApi(str(self.config.id), rt.log.reader, auditors, roots).app()

        def member_names() -> dict[str, str]:
            conf = rt.globalconf.current()
            return {str(m): n for m, n in conf.members.items()} if conf else {}

        idp_key = load_public_key(self.pki.idp_jwt().cert)
        TrackerApi(str(self.config.id), rt.log.reader, idp_key, member_names).add_routes(app)
        return app


# Every health check's code (health_problem gauge: each always present, 0 or 1).
_CHECKS = (
    "maintenance", "globalconf_invalid", "timestamping_failing", "messagelog_unwritable",
    "key_missing", "certificate_expired", "certificate_not_yet_valid",
)  # fmt: skip


def _maintenance_state(rt: NodeRuntime) -> dict[str, object]:
    return {"maintenance": rt.state.maintenance is not None, "message": rt.state.maintenance}


def _cert_check(what: str, paths: CertPaths) -> CertCheck:
    return CertCheck.load(what, paths.cert, paths.key)


def _check_answer_subjects(hosted: HostedService) -> None:
    """Refuse a registration whose answer_subject misses a person id that the service's
    own description declares in its answers: a flat-file layout's citizen_id fields, the
    person-id properties of its OpenAPI answers (for bridged SOAP services, of the OpenAPI
    made from the WSDL). Otherwise such reads would never reach the citizens' trackers."""
    cfg = hosted.config
    fields: list[tuple[str, ...]] = []
    if isinstance(hosted.adapter, FlatFileAdapter):
        fields += [
            ("records", "*", f.name)
            for f in hosted.adapter.settings.layout.fields
            if f.publish and (f.type == "citizen_id" or is_person_id_name(f.name))
        ]
    if hosted.openapi is not None:
        fields += openapi_person_fields(hosted.openapi)
    missing = uncovered_person_fields(cfg.answer_subjects, fields)
    if missing:
        hint = ", ".join(f'"{m}"' for m in missing)
        raise ConfigError(
            f"service {cfg.id}: its answers name persons in {', '.join(missing)} (says its "
            f"description), which answer_subject does not locate; add {hint}"
            + (" (or xml:ELEMENT for a SOAP service)" if cfg.adapter == "soap" else "")
        )


def _openapi(service: ServiceConfig) -> dict[str, object] | None:
    """The service's registered OpenAPI document, checked to be OpenAPI 3 JSON."""
    if service.openapi is None:
        return None
    try:
        with open(service.openapi, "rb") as f:
            data = f.read(_MAX_OPENAPI + 1)
        if len(data) > _MAX_OPENAPI:
            raise ConfigError(f"service {service.id}: {service.openapi} exceeds 5 MiB")
        document = orjson.loads(data)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            f"service {service.id}: cannot read OpenAPI {service.openapi}: {exc}"
        ) from exc
    if not isinstance(document, dict) or not str(document.get("openapi", "")).startswith("3."):
        raise ConfigError(f"service {service.id}: {service.openapi} is not an OpenAPI 3 document")
    return document


_MAX_OPENAPI = 5 * 1024 * 1024
_PEER_SHARE = 4  # a peer node's limits, in multiples of one client system's
