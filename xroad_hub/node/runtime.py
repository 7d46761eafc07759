"""What both proxies of a node share: identity, keys, configuration, log, limits."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from adapters import Adapter
from xroad_hub.errors import CLIENT, ProtocolError, XRoadError
from xroad_hub.federation import ServiceConfig
from xroad_hub.logs import path_shape
from xroad_hub.messagelog import LogRecord, MessageLog
from xroad_hub.messagelog.store import LogError
from xroad_hub.node.batching import BatchSigner
from xroad_hub.node.clientauth import ClientAuthenticator
from xroad_hub.node.globalconf_client import GlobalConfClient
from xroad_hub.node.limits import ClientLimits
from xroad_hub.node.metrics import NodeMetrics
from xroad_hub.node.opmonitoring import OpMonitor
from xroad_hub.node.peer import PeerTransport
from xroad_hub.protocol.globalconf import GlobalConf
from xroad_hub.protocol.identifiers import MemberId, NodeId, ServiceId
from xroad_hub.protocol.rest import error_response
from xroad_hub.protocol.soap import fault_xml
from xroad_hub.streams import BodyTooLarge, read_capped

__all__ = [
    "JSON_ERRORS",
    "NODE_METRICS",
    "REST_ERRORS",
    "SOAP_FAULTS",
    "ErrorForm",
    "HostedService",
    "NodeRuntime",
    "ServiceTable",
    "read_body",
    "refusal",
    "x_road_errors",
]

log = structlog.get_logger("xroad_hub.node")

# The node's metrics, set on each request by the node's middleware (node.py).
NODE_METRICS = web.RequestKey("xroad_hub_node_metrics", NodeMetrics)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Parsing (XML above all) runs in this many threads, never on the event loop: a document
# that takes seconds to parse must not hold up every other exchange of the node. Bounded,
# so that parsing cannot take more threads (and memory) than these.
PARSE_THREADS = min(4, os.cpu_count() or 1)
# ... but a small message is parsed on the loop: the hop to a parsing thread and back costs
# more than the parse (measured on this 2-core machine, medians: parse_soap of a 1 KiB SOAP
# request 114 us here against 192 us through the pool, of a 16 KiB one 128 against 204 us),
# and two such hops per exchange were two more thread and loop wake-ups at concurrency 1.
INLINE_PARSE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class HostedService:
    config: ServiceConfig
    adapter: Adapter
    # Service descriptions for the metaservices: the WSDL that X-Road SOAP clients get and
    # the OpenAPI document of the REST view (None when the service has none).
    wsdl: bytes | None = None
    openapi: dict[str, Any] | None = None


class _Generation:
    """One whole set of services, and how many exchanges are using it now."""

    __slots__ = ("idle", "services", "users")

    def __init__(self, services: Mapping[ServiceId, HostedService]) -> None:
        self.services = services
        self.users = 0
        self.idle = asyncio.Event()
        self.idle.set()

    # The lease of ServiceTable.lease: a class's methods rather than a generator-based
    # context manager, as it is taken once per exchange.
    def __enter__(self) -> Mapping[ServiceId, HostedService]:
        self.users += 1
        self.idle.clear()
        return self.services

    def __exit__(self, *exc: object) -> None:
        self.users -= 1
        if self.users == 0:
            self.idle.set()


class ServiceTable(Mapping[ServiceId, HostedService]):
    """The services a node serves now, replaced whole when an administrator changes them
    (node/services.py), never edited in place: an exchange leases the set in force when it
    starts and uses it to its end, so a change never half-applies to a request in flight,
    and an adapter taken out of service is closed only once no exchange holds a set that
    still has it."""

    def __init__(self, services: Mapping[ServiceId, HostedService] | None = None) -> None:
        self._current = _Generation(MappingProxyType(dict(services or {})))
        self._old: list[_Generation] = []  # replaced sets some exchange still uses

    def __getitem__(self, key: ServiceId) -> HostedService:
        return self._current.services[key]

    def __iter__(self) -> Iterator[ServiceId]:
        return iter(self._current.services)

    def __len__(self) -> int:
        return len(self._current.services)

    def lease(self) -> AbstractContextManager[Mapping[ServiceId, HostedService]]:
        """The set in force now, held until the block ends."""
        return self._current

    def swap(self, services: Mapping[ServiceId, HostedService]) -> None:
        old, self._current = self._current, _Generation(MappingProxyType(dict(services)))
        self._old = [g for g in (*self._old, old) if g.users]

    async def retire(self, adapters: Iterable[Adapter]) -> None:
        """Close ``adapters`` (no longer in the set in force) once every exchange that
        started before the last swap has finished."""
        waiting = [g for g in self._old if g.users]
        for gen in waiting:
            await gen.idle.wait()
        self._old = [g for g in self._old if g.users]
        for adapter in adapters:
            try:
                await adapter.close()
            except Exception:  # one adapter failing to close must not keep others open
                log.exception("adapter.close_failed")


@dataclass(slots=True)
class _KeptConf:
    """The global configuration last kept in the log, and who may be keeping one now."""

    conf: GlobalConf | None = None
    same_rules: GlobalConf | None = None  # a later download with the kept one's rules
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class NodeState:
    """The little of a node that changes while it runs, for health, metrics and refusals."""

    # The administrator's message while the node is in maintenance mode (admin API): new
    # exchanges are refused with Maintenance, health says so. None: serving.
    maintenance: str | None = None
    # When the message log last failed to keep an exchange, and why (for health).
    log_failed_at: float | None = None
    log_failure: str | None = None


@dataclass(frozen=True)
class NodeRuntime:
    """Built complete once by Node.start (node.py), before anything serves."""

    node_id: NodeId
    globalconf: GlobalConfClient
    signers: Mapping[MemberId, BatchSigner]
    authenticator: ClientAuthenticator
    # Swapped whole at run time by the service administration (ServiceTable).
    services: ServiceTable
    log: MessageLog
    peers: PeerTransport
    max_body_bytes: int
    body_timeout: float
    provider_timeout: float
    # What one client system (client_limits) or one peer node (peer_limits) may have in
    # flight at once: admitted before its body is read (limits.py).
    client_limits: ClientLimits
    peer_limits: ClientLimits
    # False while checkpoints wait too long for timestamps: exchanges are refused.
    logging_ok: Callable[[], bool] = lambda: True
    metrics: NodeMetrics | None = None
    # Operational monitoring: fed from ``record`` with every exchange (None: switched off).
    opmon: OpMonitor | None = None
    # What changes while the node runs (maintenance mode, the last log failure).
    state: NodeState = field(default_factory=lambda: NodeState())
    _kept: _KeptConf = field(default_factory=_KeptConf, init=False, repr=False)
    parse_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="parse")
    )

    async def off_loop(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` in the bounded parsing pool, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.parse_pool, functools.partial(fn, *args, **kwargs))

    async def parse(
        self, size: int, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """``fn(*args, **kwargs)``, a parse of ``size`` bytes: here if that is small (its cost
        is bounded by it), else in the parsing pool (``off_loop``)."""
        if size <= INLINE_PARSE_BYTES:
            return fn(*args, **kwargs)
        return await self.off_loop(fn, *args, **kwargs)

    def check_logging(self, raise_as: str) -> None:
        """Fail closed: no exchange the log cannot have timestamped in time. Every exchange
        starts here, so maintenance mode is checked here too (first: nothing else is done
        for a request the node will not take)."""
        if self.state.maintenance is not None:
            raise XRoadError(
                f"{raise_as}.Maintenance",
                f"the node is in maintenance mode ({self.state.maintenance}); try again later or"
                " through another node",
                status=503,
            )
        if not self.logging_ok():
            raise XRoadError(
                f"{raise_as}.LoggingFailed.TimestamperFailed",
                "the node cannot obtain timestamps for its log and refuses exchanges until the"
                " timestamp authority answers again",
            )

    def conf_or_fail(self, raise_as: str) -> GlobalConf:
        conf = self.globalconf.current()
        if conf is None:
            raise XRoadError(
                f"{raise_as}.OutdatedGlobalConf",
                "global configuration is expired or missing; the node refuses exchanges until"
                " it downloads a valid one from the central registry",
            )
        return conf

    async def record(self, record: LogRecord, raise_as: str) -> None:
        """Log durably, or fail the exchange: nothing is answered that is not logged. The
        one place every exchange passes, logged or failed: metrics count it here."""
        started = time.perf_counter()
        try:
            await self._keep_globalconf()
            await self.log.append(record)
        except LogError as exc:
            err = XRoadError(
                f"{raise_as}.LoggingFailed",
                "the exchange could not be logged, so it is not answered",
            )
            self.state.log_failed_at, self.state.log_failure = time.time(), str(exc)[:200]
            if self.metrics is not None:
                answered = dataclasses.replace(record, status=err.status, error_type=err.code)
                self.metrics.exchange(answered, None)
            if self.opmon is not None:
                self.opmon.observe(record, logged=False, raise_as=raise_as)
            raise err from exc
        if self.metrics is not None:
            self.metrics.exchange(record, time.perf_counter() - started)
        if self.opmon is not None:
            self.opmon.observe(record)

    def _conf_kept(self, conf: GlobalConf) -> bool:
        kept = self._kept.conf
        if kept is None:
            return False
        if kept is conf:
            return True
        if conf is not self._kept.same_rules:
            # Compared once per download, not per exchange (~0.2 ms for 50 nodes).
            if not kept.same_rules(conf):
                return False
            self._kept.same_rules = conf
        # The same rules, still in force for a while: no need for another copy. The margin
        # covers clocks: a request's signing time (another node's clock) must fall inside
        # the kept copy's validity for a bundle to prove hosting at that time.
        margin = min(60.0, (kept.expires_at - kept.generated_at).total_seconds() / 4)
        return kept.expires_at.timestamp() > time.time() + margin

    async def _keep_globalconf(self) -> None:
        """Keep the signed global configuration in force in the log, before the exchange
        logged under it: an evidence bundle carries it to prove that this node hosted the
        exchange's client or provider then. A copy is kept when the rules change, and
        otherwise about once per validity period (not on every refresh)."""
        held = self.globalconf.current_signed()
        if held is None or self._conf_kept(held[0]):
            return
        async with self._kept.lock:
            conf, signed = held
            if self._conf_kept(conf):
                return  # another exchange kept it while this one waited
            await self.log.record_globalconf(
                signed,
                self.globalconf.anchor_der,
                conf.generated_at.timestamp(),
                conf.expires_at.timestamp(),
            )
            self._kept.conf, self._kept.same_rules = conf, None

    def signer_for(self, member: MemberId, raise_as: str) -> BatchSigner:
        signer = self.signers.get(member)
        if signer is None:
            raise XRoadError(f"{raise_as}.InternalError", f"no signing key for member {member}")
        return signer


async def read_body(request: web.Request, limit: int, timeout: float, blame: str) -> bytes:
    """Read a request body with a size limit and a deadline (slow senders are cut off)."""
    if request.content_length is not None and request.content_length > limit:
        raise XRoadError(f"{blame}.BadRequest", f"request body exceeds the limit of {limit} bytes")
    if not request.body_exists:
        # Most r1 requests (GET) have none: no deadline to arm, nothing to wait for.
        return b""
    try:
        async with asyncio.timeout(timeout):
            return await read_capped(request.content, limit)
    except BodyTooLarge as exc:
        raise XRoadError(f"{blame}.BadRequest", f"request {exc}") from exc
    except TimeoutError as exc:
        raise XRoadError(
            f"{blame}.BadRequest", f"request body not received within {timeout:g} s"
        ) from exc


@dataclass(frozen=True, slots=True)
class ErrorForm:
    """How a route's X-Road errors reach its caller."""

    soap: bool = False  # a SOAP Fault (HTTP 500) instead of a REST error body
    accept: str | None = None  # a fixed Accept for the REST body; None: the request's own


REST_ERRORS = ErrorForm()
SOAP_FAULTS = ErrorForm(soap=True)
JSON_ERRORS = ErrorForm(accept="application/json")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def x_road_errors(
    side: str,
    prefix: str,
    *,
    form: ErrorForm = REST_ERRORS,
    forms: Mapping[Handler, ErrorForm] | None = None,
) -> Middleware:
    """The node's error boundary, as middleware of one listener's application: handlers
    raise, and any failure becomes an X-Road error answer in ``form`` (``forms``: the
    handlers that answer in another one); the node serves on.

    Blame is decided here: a protocol error nobody mapped on the way is the fault of what
    this side reads (the client system's request on the client node, the client node's
    message on the provider node), and an unexpected exception is this node's own."""
    by_handler = dict(forms or {})

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise  # aiohttp's own answers (no such route, method not allowed)
        except Exception as exc:
            route_form = by_handler.get(request.match_info.handler, form)
            err = refusal(
                exc,
                side,
                prefix,
                request.get(NODE_METRICS),
                route=path_shape(request.path),
                protocol="soap" if route_form.soap else "rest",
            )
            return _render(err, request, route_form)

    return errors


def refusal(
    exc: Exception,
    side: str,
    prefix: str,
    metrics: NodeMetrics | None,
    *,
    route: str,
    protocol: str = "rest",
) -> XRoadError:
    """The X-Road error a failed exchange is answered with, counted and logged; whichever
    transport carried it (an HTTP listener's middleware, the node-to-node frames)."""
    if isinstance(exc, ProtocolError):
        exc = XRoadError.blame(CLIENT if side == "client" else prefix, exc)
    if isinstance(exc, XRoadError):
        if metrics is not None:
            metrics.refusal(side, exc.code)
        log.info(
            "exchange.refused",
            side=side,
            code=exc.code,
            detail=exc.detail,
            reason=exc.message,
            route=route,
            protocol=protocol,
        )
        return exc
    err = XRoadError(f"{prefix}.InternalError", f"internal error in the {side}'s node")
    if metrics is not None:
        metrics.refusal(side, err.code)
    log.error("exchange.internal_error", side=side, detail=err.detail, exc_info=exc)
    return err


def _render(err: XRoadError, request: web.Request, form: ErrorForm) -> web.Response:
    """An X-Road error as the caller's protocol has it: a REST error body (JSON, or XML when
    Accept asks for it), or a SOAP Fault, sent with HTTP 500 as the SOAP 1.1 HTTP binding
    (and WS-I Basic Profile) has it; X-Road itself answers 200."""
    if form.soap:
        return web.Response(
            status=500,
            body=fault_xml(err.code, err.message, err.detail),
            content_type="text/xml",
            charset="utf-8",
            headers={"X-Road-Error": err.code},
        )
    accept = form.accept if form.accept is not None else request.headers.get("Accept")
    status, headers, body = error_response(err, accept)
    if status == 429:
        headers["Retry-After"] = "1"
    return web.Response(status=status, headers=headers, body=body)
