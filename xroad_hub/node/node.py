"""A node assembled from its configuration, its key material and the registry's address."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
import zeep
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters import Adapter, RestAdapter
from adapters.backend import Backends
from adapters.flatfile import FlatFileAdapter, LayoutError
from adapters.flatfile.openapi import flatfile_openapi
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
from xroad_hub.federation import (
    ClientConfig,
    ConfigError,
    NodeConfig,
    ServiceConfig,
    SoapServiceConfig,
    load_table,
)
from xroad_hub.listen import listen_socket
from xroad_hub.messagelog import MessageLog, PostgresMessageLog, SQLiteMessageLog
from xroad_hub.messagelog.postgres import schema_for_node
from xroad_hub.node.admin import AdminApi
from xroad_hub.node.auditapi import AuditApi, Auditor
from xroad_hub.node.batching import BatchSigner
from xroad_hub.node.checkpointer import Checkpointer, Timestamper
from xroad_hub.node.clientauth import ClientAuthenticator, ClientRegistration
from xroad_hub.node.consumer import ClientProxy, client_authentication
from xroad_hub.node.evidenceapi import EvidenceApi
from xroad_hub.node.framelistener import FrameListener, PeerSite
from xroad_hub.node.globalconf_client import GlobalConfClient
from xroad_hub.node.health import CertCheck, health_app
from xroad_hub.node.keys import DevPkiKeys, NodeKeys
from xroad_hub.node.limits import ClientLimits
from xroad_hub.node.metrics import NodeMetrics, time_backend
from xroad_hub.node.operations import NodeOperations
from xroad_hub.node.opmonitoring import OpMonitor
from xroad_hub.node.peer import PEER_PATH, PeerTransport
from xroad_hub.node.provider import ServerProxy
from xroad_hub.node.runtime import (
    JSON_ERRORS,
    SOAP_FAULTS,
    HostedService,
    NodeRuntime,
    ServiceTable,
    x_road_errors,
)
from xroad_hub.node.services import Refused, ServiceManager, soap_registration
from xroad_hub.node.settings import Row, SettingsStore, SQLiteSettingsStore
from xroad_hub.node.slo import AlertSender, SloWatch
from xroad_hub.node.timestamping import fetch_timestamp
from xroad_hub.node.tls import (
    bound_tls_read_buffers,
    client_facing_context,
    peer_client_context,
    peer_server_context,
)
from xroad_hub.node.trackerapi import TrackerApi
from xroad_hub.node.usedtokens import SQLiteUsedTokens
from xroad_hub.pki import PkiLayout, load_cert, load_ed25519_key, load_private_key, load_public_key
from xroad_hub.protocol.catalog import DEFAULT_CATALOG, load_catalog
from xroad_hub.protocol.checkpoint import NoteSigner
from xroad_hub.protocol.globalconf import Revocation
from xroad_hub.protocol.identifiers import ClientId, ServiceId
from xroad_hub.protocol.message import MAX_OVERHEAD
from xroad_hub.protocol.signing import MessageSigner, cert_fingerprint
from xroad_hub.protocol.subjects import (
    is_person_id_name,
    openapi_person_fields,
    uncovered_person_fields,
)

__all__ = ["Node"]

log = structlog.get_logger("xroad_hub.node")


def _der(path: Path) -> bytes:
    return load_cert(path).public_bytes(serialization.Encoding.DER)


class Node(NodeOperations):
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
        pki: NodeKeys | PkiLayout,
        registry_url: str,
        data_dir: Path,
        *,
        refresh_interval: float,
        witness_url: str | None = None,
        auditors: tuple[str, ...] = (),
        tsa_url: str | None = None,
        metrics: bool = True,
        central_tls: ssl.SSLContext | None = None,
    ) -> None:
        """``pki``: the node's key material (a ``PkiLayout`` is the development PKI);
        ``central_tls``: how to verify the central server's HTTPS (global configuration,
        witness, timestamp authority), None for plain HTTP or the system's CAs."""
        self.config = config
        # False: no metrics at all (benchmarks compare; /metrics then answers 404).
        self.metrics_enabled = metrics
        self.pki = pki
        self.keys: NodeKeys = DevPkiKeys(pki, str(config.id)) if isinstance(pki, PkiLayout) else pki
        self.central_tls = central_tls
        self.data_dir = data_dir
        self.globalconf = GlobalConfClient(
            registry_url,
            self.keys.anchor(),
            refresh_interval,
            ssl_context=central_tls,
            # The newest configuration accepted survives restarts: no rollback to an older one.
            state_path=data_dir / "globalconf-accepted.json",
        )
        self.witness_url = witness_url
        self.auditors = auditors
        self.tsa_url = tsa_url
        # Spent one-use client tokens: durable, shared by every process serving this node.
        self.used_tokens = SQLiteUsedTokens(data_dir / "used-tokens.sqlite")
        # Set once by start(), in the order of the contexts that make them.
        self._session: aiohttp.ClientSession | None = None
        self._backends: Backends | None = None
        self._log: MessageLog | None = None
        self.checkpointer: Checkpointer | None = None
        self.runtime: NodeRuntime | None = None
        self.urls: dict[str, str] = {}
        self._lifecycle: web.AppRunner | None = None
        self._listeners: list[tuple[str, web.AppRunner]] = []  # (role, runner), for metrics
        self.frames: FrameListener | None = None  # the peer port's framed channel
        self.metrics: NodeMetrics | None = None
        self.admin: AdminApi | None = None
        # The node's settings database and the services built from it (node/services.py).
        self.settings: SettingsStore | None = None
        self.service_manager: ServiceManager | None = None
        self._wsdls: dict[tuple[str, str, str], tuple[WsdlInfo, zeep.Client | None]] = {}
        self._purpose_defaults: dict[ClientId, tuple[str, str | None]] = {}
        self._certs: list[CertCheck] = []
        # How long a failed append of the message log keeps the node unready (health): no
        # probe writes to the log, so a failure is forgotten once none follows for this long.
        self.log_failure_hold = 30.0
        self.opmonitor: OpMonitor | None = None
        self.slo_watch: SloWatch | None = None
        self._alerts: AlertSender | None = None

    def _client_cert_revocation(self, cert_sha256: str) -> Revocation | None:
        """A client's TLS certificate revoked in the global configuration in force (none in
        force: exchanges are refused anyway, OutdatedGlobalConf)."""
        conf = self.globalconf.current()
        return None if conf is None else conf.revoked(cert_sha256)

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> dict[str, str]:
        """Start serving; ``sockets`` may hold pre-bound listeners by role (peer, client,
        client_tls, audit), otherwise the configured addresses are bound."""
        # Tasks started here (log writer, checkpointer, configuration refresh, flat-file
        # reloads) inherit the node's id: each of their log lines names the node.
        with structlog.contextvars.bound_contextvars(node=str(self.config.id)):
            return await self._start(sockets or {})

    async def _start(self, sockets: dict[str, socket.socket]) -> dict[str, str]:
        bound_tls_read_buffers()  # before any TLS connection of the node is made
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
            for role, runner in self._listeners:
                if role == "peer" and self.frames is not None:
                    # The framed channel's exchanges in flight finish as the HTTP ones do.
                    timeout = self.config.provider_timeout + self.config.body_timeout
                    await asyncio.gather(runner.cleanup(), self.frames.shutdown(timeout))
                else:
                    await runner.cleanup()
            self._listeners.clear()
        finally:
            if self._lifecycle is not None:
                lifecycle, self._lifecycle = self._lifecycle, None
                await lifecycle.cleanup()
        log.info("node.stopped", node=str(self.config.id))

    # --- the resources, as cleanup contexts (started in this order, stopped in reverse) ---

    async def _http_session(self, _: web.Application) -> AsyncIterator[None]:
        # One connection pool for the node's adapters and its timestamp requests. No cookie
        # jar: a cookie one client's exchange brought back must not travel with another
        # client's request (and filtering an empty jar on every request costs CPU).
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # The adapters' pools (REST and SOAP), one per backend, shared by the services on
        # the same one.
        self._backends = Backends()
        yield
        self._backends.close()
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

    def _settings_store(self) -> SettingsStore:
        if self.config.settings_dsn:
            from xroad_hub.node.pgsettings import PostgresSettingsStore, settings_schema

            return PostgresSettingsStore(
                self.config.settings_dsn, settings_schema(str(self.config.id))
            )
        return SQLiteSettingsStore(self.data_dir / "node-settings.sqlite")

    async def _exchange(self, _: web.Application) -> AsyncIterator[None]:
        """The services with their adapters (flat-file exports loaded before the node
        answers), and the runtime both proxies share, complete before anything serves."""
        async with contextlib.AsyncExitStack() as stack:
            store = self.settings = self._settings_store()
            await asyncio.to_thread(store.open)
            stack.callback(store.close)
            table = ServiceTable()
            manager = self.service_manager = ServiceManager(
                store,
                self,
                table,
                known_client=self._known_client,
                hosted_here=self._hosts,
                global_group=self._global_group,
            )
            declared = self._declared_services() + await self._declared_soap_services()
            await manager.start(declared, self._declared_clients())
            manager.prepare_clients = self._prepare_clients
            stack.push_async_callback(manager.close)
            self.checkpointer = self._checkpointer()
            if self.metrics_enabled:
                self.metrics = NodeMetrics(str(self.config.id), frozenset(str(s) for s in table))
            self.opmonitor = self._opmonitor(table)
            rt = self.runtime = self._runtime(table, self.checkpointer)
            self._instrument(rt)
            if rt.metrics is not None:
                manager.on_new_adapter = lambda adapter: time_backend(adapter, "handle")
            manager.on_swap = self._services_changed
            # Other processes serving this node change the same settings database.
            following = asyncio.get_running_loop().create_task(manager.follow())
            stack.push_async_callback(_cancelled, following)
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

    def _declared_services(self) -> list[tuple[ServiceConfig, dict[str, Any]]]:
        """The REST and flat-file services of the node's configuration, as settings rows
        (their OpenAPI documents kept in the settings database)."""
        assert self.settings is not None
        found: list[tuple[ServiceConfig, dict[str, Any]]] = []
        for s in self.config.services:
            extra: dict[str, Any] = {"allow": sorted(str(c) for c in s.allow)}
            if s.global_groups:
                extra["global_groups"] = sorted(s.global_groups)
            if s.openapi is not None:
                _openapi(s)  # an unreadable or wrong document is the file's error, named so
                extra["openapi"] = self.settings.put_document(Path(s.openapi).read_bytes())
            found.append((s, extra))
        return found

    async def _declared_soap_services(self) -> list[tuple[ServiceConfig, dict[str, Any]]]:
        """SOAP services are registered from their WSDL, read when the node starts: each
        operation becomes a service code (version from the WSDL's xrd:version, else the
        registration's), with one adapter per operation."""
        assert self.settings is not None
        found: list[tuple[ServiceConfig, dict[str, Any]]] = []
        seen = {s.id for s in self.config.services}
        for reg in self.config.soap_services:
            try:
                data = await fetch_wsdl(reg.wsdl, timeout=reg.timeout)
                info = load_wsdl(data, reg.wsdl)
                sha = self.settings.put_document(data)
                for op in info.operations.values():
                    cfg = soap_operation(reg, info, op.name, op.version)
                    if cfg.id in seen:
                        raise ValueError(f"operation {op.name} is already a service code here")
                    seen.add(cfg.id)
                    soap = {"wsdl": sha, "source": reg.wsdl, "mode": reg.mode, "url": reg.url}
                    found.append((cfg, {"allow": sorted(str(c) for c in reg.allow), "soap": soap}))
            except (WsdlError, ValueError) as exc:
                raise ConfigError(
                    f"node {self.config.id}, SOAP service {reg.provider} ({reg.wsdl}): {exc}"
                ) from exc
        return found

    def build_service(
        self, cfg: ServiceConfig, row: dict[str, Any], documents: Mapping[str, bytes]
    ) -> HostedService:
        """One service of a settings row (services.ServiceManager): its adapter and its
        descriptions, checked (answer subjects) before it is served."""
        if cfg.adapter == "soap":
            soap = row["soap"]
            data = documents[soap["wsdl"]]
            try:
                # One reading (and zeep client) per WSDL, shared by its operations.
                key = (soap["wsdl"], soap["source"], soap["mode"])
                if key not in self._wsdls:
                    info = load_wsdl(data, soap["source"])
                    bridge = soap["mode"] == "bridge"
                    self._wsdls[key] = info, zeep_client(data, soap["source"]) if bridge else None
                info, client = self._wsdls[key]
                info.operation(cfg.id.service_code)
            except (WsdlError, KeyError) as exc:
                raise ConfigError(f"WSDL {soap['source']}: {exc}") from exc
            hosted = self._soap_service(soap_registration(cfg, soap), info, data, client, cfg)
        else:
            sha = row.get("openapi")
            openapi = _openapi_document(documents[sha], str(cfg.id)) if sha else None
            adapter = self._adapter(cfg)
            if openapi is None and isinstance(adapter, FlatFileAdapter):
                # A legacy export's description, generated from its layout (getOpenAPI).
                openapi = flatfile_openapi(
                    adapter.settings, title=str(cfg.id), version=cfg.version or "1.0"
                )
            hosted = HostedService(cfg, adapter, openapi=openapi)
        try:
            _check_answer_subjects(hosted)
        except BaseException:
            asyncio.get_running_loop().create_task(hosted.adapter.close())
            raise
        return hosted

    def _declared_clients(self) -> dict[str, dict[str, Any]]:
        """The client subsystems of the node's configuration, as settings rows: their TLS
        certificate or JWT public key read from the key directory (public parts only)."""
        found: dict[str, dict[str, Any]] = {}
        for c in self.config.clients:
            data: dict[str, Any] = {"auth": c.auth}
            if c.auth == "mtls":
                data["cert_pem"] = self.keys.client_tls(str(c.id)).read_text("ascii")
            elif c.auth == "jwt":
                data["jwt_key_pem"] = self.keys.client_jwt(str(c.id)).read_text("ascii")
            if c.default_purpose is not None:
                data["default_purpose"] = c.default_purpose
                if c.default_legal_basis is not None:
                    data["default_legal_basis"] = c.default_legal_basis
            found[str(c.id)] = data
        return found

    def _registrations(
        self, rows: Mapping[str, Row], changed: set[str]
    ) -> tuple[list[ClientRegistration], dict[ClientId, tuple[str, str | None]]]:
        """The hosted clients' registrations, each checked: a certificate of the federation's
        CA, an EC P-256 JWT key; a client newly registered (``changed``) must be one the
        global configuration says this node hosts, of a member this node signs for."""
        regs, defaults = [], {}
        root = load_cert(self.keys.root_ca)
        for key, row in rows.items():
            data = row.data
            table = {"id": key, "auth": data.get("auth")}
            table.update({k: data[k] for k in ("default_purpose", "default_legal_basis")
                          if data.get(k) is not None})  # fmt: skip
            try:
                cfg = load_table(ClientConfig, table, f"client {key}")
                reg = ClientRegistration(cfg.id, cfg.auth)
                if cfg.auth == "mtls":
                    reg = ClientRegistration(
                        cfg.id,
                        cfg.auth,
                        cert_sha256=_client_cert(data.get("cert_pem"), root, str(cfg.id)),
                    )
                elif cfg.auth == "jwt":
                    reg = ClientRegistration(
                        cfg.id, cfg.auth, jwt_key=_jwt_key(data.get("jwt_key_pem"))
                    )
            except (ConfigError, ValueError) as exc:
                text = str(exc) if str(exc).startswith("client") else f"client {key}: {exc}"
                raise Refused(text) from exc
            if key in changed:
                self._check_hostable(cfg.id)
            regs.append(reg)
            if cfg.default_purpose is not None:
                defaults[cfg.id] = (cfg.default_purpose, cfg.default_legal_basis)
        return regs, defaults

    def _check_hostable(self, client: ClientId) -> None:
        if not self._hosts(client):
            raise Refused(
                f"the global configuration does not list {client} as a client of this node;"
                " register it at the central server first (xroad-hub node client add)",
                404,
            )
        rt = self.runtime
        if rt is not None and client.member not in rt.signers:
            raise Refused(
                f"this node holds no signing key of member {client.member}; its requests"
                " could not be signed (enroll the member's signing key first)"
            )

    def _prepare_clients(self, rows: Mapping[str, Row], changed: set[str]) -> Callable[[], None]:
        regs, defaults = self._registrations(rows, changed)
        rt = self.runtime
        assert rt is not None

        def commit() -> None:
            rt.authenticator.replace(regs)
            self._purpose_defaults.clear()
            self._purpose_defaults.update(defaults)

        return commit

    def _hosts(self, subsystem: ClientId) -> bool:
        conf = self.globalconf.current()
        entry = conf.node(self.config.id) if conf is not None else None
        return entry is not None and subsystem in entry.clients

    def _global_group(self, code: str) -> bool:
        conf = self.globalconf.current()
        return conf is not None and code in conf.groups

    def _known_client(self, client: ClientId) -> bool:
        conf = self.globalconf.current()
        return conf is not None and conf.node_hosting(client) is not None

    def _checkpointer(self) -> Checkpointer:
        cfg, keys = self.config, self.keys
        assert self._log is not None
        checkpoint_key = keys.checkpoint()
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
            trusted_roots=[load_cert(keys.root_ca)],
            ssl_context=self.central_tls,
        )

    def _runtime(self, services: ServiceTable, checkpointer: Checkpointer) -> NodeRuntime:
        cfg, keys = self.config, self.keys
        assert self._log is not None
        auth = keys.auth()
        # The owner member signs the node's own requests (GET /wsdl without a client).
        members = {sub.member for sub in cfg.hosted} | {cfg.id.owner}
        signers = {}
        for member in members:
            paths = keys.member_sign(str(member))
            signers[member] = BatchSigner(
                MessageSigner(member, load_private_key(paths.key), _der(paths.cert))
            )
        assert self.service_manager is not None
        regs, defaults = self._registrations(self.service_manager.client_rows(), set())
        self._purpose_defaults.update(defaults)
        client_bytes = cfg.client_max_inflight_bytes or 2 * cfg.max_body_bytes
        return NodeRuntime(
            node_id=cfg.id,
            globalconf=self.globalconf,
            signers=signers,
            authenticator=ClientAuthenticator(
                str(cfg.id), regs, self.used_tokens, self._client_cert_revocation
            ),
            services=services,
            log=self._log,
            peers=PeerTransport(
                functools.partial(peer_client_context, auth.cert, auth.key, keys.root_ca),
                cfg.max_body_bytes + MAX_OVERHEAD,
                cfg.peer_max_connections,
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
                backends=self._backends,
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
                backends=self._backends,
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
            backends=self._backends,
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
        cfg, rt = self.config, self.runtime
        assert rt is not None
        auth = self.keys.auth()
        ca = self.keys.root_ca
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
            if role == "peer" and self.frames is not None and ssl_ctx is not None:
                # Node-to-node exchanges over the framed channel where the peer chooses it.
                site: web.SockSite = PeerSite(runner, sock, ssl_context=ssl_ctx, frames=self.frames)
            else:
                site = web.SockSite(runner, sock, ssl_context=ssl_ctx)
            await site.start()

    def _apps(self, rt: NodeRuntime) -> dict[str, web.Application]:
        """The application each listener serves, by role."""
        context = self._context_middleware()
        client_proxy = ClientProxy(
            rt,
            # Changed in place when an administrator changes a client (_prepare_clients).
            purpose_defaults=self._purpose_defaults,
            public_urls=MappingProxyType(dict(self.urls)),
        )
        server_proxy = ServerProxy(rt)
        self.frames = FrameListener(server_proxy, self._exchange_context, rt.metrics)
        # Handlers raise; each listener's middleware answers their errors in its side's form.
        client_errors = x_road_errors(
            "client",
            CLIENT_PROXY,
            forms={client_proxy.handle_soap: SOAP_FAULTS, client_proxy.wsdl: JSON_ERRORS},
        )
        # Bodies are read by read_body with their own limit and deadline, not by aiohttp.
        # Default deny: every route of the client listener but listClients authenticates
        # its caller from the head and admits it within its limits, before any body is read.
        client_auth = client_authentication(rt, public=[client_proxy.list_clients])
        client_app = web.Application(middlewares=[context, client_errors, client_auth])
        # /evidence is the evidence API's (GET only): a POST there is not taken for SOAP.
        client_app.add_subapp(
            "/evidence", EvidenceApi(rt, client_proxy, load_catalog(DEFAULT_CATALOG)).subapp()
        )
        client_app.router.add_get("/listClients", client_proxy.list_clients)
        client_app.router.add_get("/wsdl", client_proxy.wsdl)
        client_app.router.add_route("*", "/r1/{tail:.*}", client_proxy.handle)
        # X-Road SOAP clients POST to the node's root (any path outside /r1/ and /evidence).
        client_app.router.add_post("/{tail:.*}", client_proxy.handle_soap)
        client_app.router.add_route("*", "/{tail:.*}", client_proxy.handle)
        peer_errors = x_road_errors("provider", SERVER_PROXY, form=JSON_ERRORS)
        peer_app = web.Application(middlewares=[context, peer_errors])
        peer_app.router.add_post(PEER_PATH, server_proxy.handle)
        apps = {"peer": peer_app, "client": client_app, "client_tls": client_app}
        if "audit" in self.urls:
            apps["audit"] = self._audit_app(rt, context)
        if "health" in self.urls:
            apps["health"] = health_app(self.problems)
        if "admin" in self.urls:
            apps["admin"] = self._admin_app(rt, context)
        return apps

    def _timestamper(self) -> Timestamper:
        roots = [load_cert(self.keys.root_ca)]
        # The central server's TSA is verified against the federation CA; another (an
        # external TSA in tsa_url) against the system's CAs.
        central = urlsplit(self.globalconf.url).netloc
        tls = self.central_tls if urlsplit(self.tsa_url or "").netloc == central else None

        async def timestamp(data: bytes) -> bytes:
            assert self._session is not None and self.tsa_url is not None
            reply, _ = await fetch_timestamp(
                self._session, self.tsa_url, data, roots, 10.0, ssl_context=tls
            )
            return reply

        return timestamp

    def _messagelog(self) -> MessageLog:
        if self.config.messagelog_dsn:
            # One schema per node, so that several nodes can share a database.
            schema = schema_for_node(str(self.config.id))
            return PostgresMessageLog(self.config.messagelog_dsn, schema=schema)
        return SQLiteMessageLog(self.data_dir / "messagelog.sqlite")

    def _audit_app(self, rt: NodeRuntime, context: Any) -> web.Application:
        """The audit listener: the auditors' API at /audit, the citizens' tracker at
        /tracker, each a sub-application with its own authentication."""
        auditors = []
        for name in self.auditors:
            key = serialization.load_pem_public_key(self.keys.auditor_jwt(name).read_bytes())
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError(f"JWT key of auditor {name} must be an EC P-256 key")
            auditors.append(Auditor(name, key))
        roots = [load_cert(self.keys.root_ca)]
        # Each request opens its own reader of the node's log (SQLite or PostgreSQL).
        audit = AuditApi(str(self.config.id), rt.log.reader, auditors, roots)
        app = web.Application(middlewares=[context])
        app.add_subapp("/audit", audit.subapp())

        def member_names() -> dict[str, str]:
            conf = rt.globalconf.current()
            return {str(m): n for m, n in conf.members.items()} if conf else {}

        idp_key = load_public_key(self.keys.idp_jwt())
        tracker = TrackerApi(str(self.config.id), rt.log.reader, idp_key, member_names)
        app.add_subapp("/tracker", tracker.subapp())
        return app


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


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _client_cert(pem: object, root: x509.Certificate, subsystem: str) -> str:
    """The SHA-256 a client's TLS certificate is pinned by: issued by the federation's CA
    (or its TLS handshake with the node would fail anyway) as a client system's certificate
    of this very subsystem (CN, clientAuth only, as 'central client-cert' issues it). Another
    subsystem's certificate, or a node's, pasted by mistake would let its holder call as
    this subsystem, with this node's signature."""
    if not isinstance(pem, str):
        raise ValueError("an mtls client needs its TLS certificate (PEM)")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValueError(
            "the TLS certificate must be a PEM certificate issued by the federation's CA"
        ) from exc
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != subsystem:
        named = cns[0].value if cns else "no subsystem"
        raise ValueError(
            f"the TLS certificate is {named!r}'s, not {subsystem}'s: a client system's"
            " certificate names its subsystem (xroad-hub central client-cert)"
        )
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if (
        usages is None
        or ExtendedKeyUsageOID.CLIENT_AUTH not in usages
        or ExtendedKeyUsageOID.SERVER_AUTH in usages
    ):
        raise ValueError(
            "the TLS certificate is not a client system's (clientAuth only): a node's"
            " certificate is no client's (xroad-hub central client-cert)"
        )
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _jwt_key(pem: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(pem, str):
        raise ValueError("a jwt client needs its public key (PEM)")
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("the JWT key must be a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the JWT key must be an EC P-256 key (ES256)")
    return key


def _openapi_document(data: bytes, where: str) -> dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"service {where}: its OpenAPI description is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not str(document.get("openapi", "")).startswith("3."):
        raise ConfigError(f"service {where}: its description is not an OpenAPI 3 document")
    return _without_servers(document)


def _without_servers(document: dict[str, Any]) -> dict[str, Any]:
    """The description as getOpenAPI gives it to any client of the federation: without its
    ``servers`` (at the top, per path, per operation), the backend's address inside the
    agency, which only its node needs (X-Road hides a WSDL's soap:address the same way);
    clients call the service through their own node."""
    served = {k: v for k, v in document.items() if k != "servers"}
    paths = document.get("paths")
    if isinstance(paths, dict):
        served["paths"] = {
            path: {
                k: ({n: o for n, o in v.items() if n != "servers"} if isinstance(v, dict) else v)
                for k, v in item.items()
                if k != "servers"
            }
            if isinstance(item, dict)
            else item
            for path, item in paths.items()
        }
    return served


def soap_operation(
    reg: SoapServiceConfig, info: WsdlInfo, name: str, version: str | None
) -> ServiceConfig:
    """The registration of one operation of a WSDL: a service code of the provider."""
    return ServiceConfig(
        id=ServiceId(reg.provider, name),
        adapter="soap",
        url=reg.url or info.endpoint or "",
        timeout=reg.timeout,
        allow=reg.allow,
        disabled=reg.disabled,
        version=version or reg.version,
        options={"mode": reg.mode, "wsdl": reg.wsdl},
        subjects=reg.subjects,
        answer_subjects=reg.answer_subjects,
        purposes=reg.purposes,
        slo=reg.slo,
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
