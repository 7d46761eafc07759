"""Prometheus metrics of one node, in a registry of its own (several nodes may share a
process, as in tests and ``xroad-hub up``).

Exchanges are counted at one place, when the runtime logs them (runtime.py ``record``):
every exchange a node answers is logged, so counts and log agree. Label values are bounded:
services, clients and outcomes are identifiers of organisations and X-Road error types,
never ids of people or messages, and each label takes at most ``MAX_LABEL_VALUES`` values
(later ones collapse to "other"), so a client spraying made-up service codes cannot grow the
node's memory or the scrape without bound.

Names (kept stable for the alerting rules and the dashboard in config/):
    xroad_hub_exchanges_total{side,service,client,outcome}   outcome: X-Road error type,
        "ok", or "http_5xx" (the backend answered 5xx without an X-Road error)
    xroad_hub_exchange_duration_seconds{side,service}        whole exchange at this node
    xroad_hub_exchange_node_seconds{side,service}            of which the node's own time
    xroad_hub_exchange_backend_seconds{side,service}         of which the backend's (provider
        side: the service's system; client side: the provider's node and service)
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from xroad_hub.messagelog import LogRecord

__all__ = [
    "CURRENT_EXCHANGE",
    "MAX_LABEL_VALUES",
    "ExchangeTiming",
    "NodeMetrics",
    "time_backend",
]

# No "_created" series next to every counter and histogram: they double the scrape and no
# dashboard or rule here uses them (process-wide setting of prometheus-client).
_disable_created_metrics()

MAX_LABEL_VALUES = 200
OTHER = "other"
# An X-Road error type: Client.X, Server.ClientProxy.X(.Y)... Anything else (a remote node
# may send any text) is "other".
_ERROR_TYPE = re.compile(r"(Client|Server)(\.[A-Za-z][A-Za-z0-9_]{0,63}){1,4}")

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Label children resolved once per (side, service, client, outcome) kept at most this many
# times; beyond, exchanges take the slower way through ``labels`` (same counts).
_MAX_CACHED_CHILDREN = 4096


@dataclass
class ExchangeTiming:
    """Time one exchange has spent waiting for its backend, so far (seconds)."""

    backend: float = 0.0


# Set per request by the node's middleware (node.py); adapters and the peer transport add
# their time to it, ``NodeMetrics.exchange`` reads it when the exchange is logged.
CURRENT_EXCHANGE: contextvars.ContextVar[ExchangeTiming | None] = contextvars.ContextVar(
    "xroad_hub_exchange_timing", default=None
)


def time_backend(obj: Any, method: str) -> None:
    """Make ``obj.method`` (a coroutine method: an adapter's ``handle``, the peer transport's
    ``send``) add its time to the current exchange's backend time. Done on the instance, so
    ``isinstance`` checks of the adapter and the handlers that call it are unchanged."""
    inner = getattr(obj, method)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await inner(*args, **kwargs)
        finally:
            timing = CURRENT_EXCHANGE.get()
            if timing is not None:
                timing.backend += time.perf_counter() - started

    setattr(obj, method, timed)


class _Bounded:
    """At most ``limit`` distinct label values; values not admitted become "other"."""

    def __init__(self, limit: int = MAX_LABEL_VALUES, known: frozenset[str] = frozenset()):
        self._seen: set[str] = set(known)
        self._limit = max(limit, len(known))

    def __call__(self, value: str, admit: bool = True) -> str:
        if value in self._seen:
            return value
        if admit and len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return OTHER


def _unversioned(service: str) -> str:
    # SUBSYSTEM service ids have five parts; a sixth is the version (one label per code).
    parts = service.split("/")
    return "/".join(parts[:5]) if len(parts) > 5 else service


def _service_exists(outcome: str) -> bool:
    """Whether an exchange's outcome shows its service exists: not a made-up service code
    (UnknownService, UnknownMember), a malformed request (Client.*) or an odd error."""
    if outcome == OTHER or outcome.startswith("Client."):
        return False
    return not outcome.endswith((".UnknownService", ".UnknownMember"))


def outcome_of(error_type: str | None, status: int) -> str:
    if error_type is None:
        return "ok" if status < 500 else "http_5xx"
    return error_type if _ERROR_TYPE.fullmatch(error_type) else OTHER


# A counter's and three histograms' children, and whether they may be cached.
_Series = tuple[Any, Any, Any, Any, bool]


class NodeMetrics:
    def __init__(self, node_id: str, hosted_services: frozenset[str] = frozenset()) -> None:
        self.node_id = node_id
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.exchanges = Counter(
            "xroad_hub_exchanges",
            "Exchanges logged by this node, by side, service, client and outcome",
            ["side", "service", "client", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "xroad_hub_exchange_duration_seconds",
            "Whole exchange as this node saw it, from the request's arrival to its logging",
            ["side", "service"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.node_time = Histogram(
            "xroad_hub_exchange_node_seconds",
            "The node's own share of an exchange (duration minus the backend's time)",
            ["side", "service"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_time = Histogram(
            "xroad_hub_exchange_backend_seconds",
            "Time waiting for the backend: the service's system (provider side), the"
            " provider's node and service (client side)",
            ["side", "service"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "xroad_hub_refused_requests",
            "Requests answered with an X-Road error (logged or not: refused before"
            " authentication, over limits, in maintenance), by side and error type",
            ["side", "outcome"],
            registry=r,
        )
        self.append_seconds = Histogram(
            "xroad_hub_messagelog_append_seconds",
            "Time to log one exchange durably (queueing and group commit included)",
            buckets=_APPEND_BUCKETS,
            registry=r,
        )
        self.append_failures = Counter(
            "xroad_hub_messagelog_append_failures",
            "Exchanges that could not be logged (and so were not answered)",
            registry=r,
        )
        self.log_batch = Histogram(
            "xroad_hub_messagelog_batch_size",
            "Records per group commit of the message log",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.signature_batch = Histogram(
            "xroad_hub_signature_batch_size",
            "Messages per batch signature (one ECDSA signature each)",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.evidence_failures = Counter(
            "xroad_hub_evidence_validation_failures",
            "Evidence answers refused because they do not match their type's schema",
            registry=r,
        )
        self.maintenance = Gauge(
            "xroad_hub_maintenance_mode", "1 while the node is in maintenance mode", registry=r
        )
        # Service labels: the node's own services always; others once an exchange shows
        # they exist (_service_exists), until MAX_LABEL_VALUES.
        self._services = _Bounded(known=hosted_services)
        self._clients = _Bounded()
        self._outcomes = _Bounded(64)
        # The four series an exchange updates, by what the exchange's labels are made of:
        # ``labels()`` costs more than the update itself (the exchange path, twice per
        # exchange). Only exchanges whose labels all were admitted are kept: an admitted
        # value stays admitted, while "other" may later become the value itself.
        self._children: dict[tuple[str, str, str, str | None, bool], _Series] = {}

    def _series(self, side: str, raw_service: str, raw_client: str, outcome: str) -> _Series:
        outcome = self._outcomes(outcome)
        service = self._services(_unversioned(raw_service), admit=_service_exists(outcome))
        client = self._clients(raw_client)
        return (
            self.exchanges.labels(side, service, client, outcome),
            self.duration.labels(side, service),
            self.node_time.labels(side, service),
            self.backend_time.labels(side, service),
            OTHER not in (service, client, outcome),
        )

    def exchange(self, record: LogRecord, append_seconds: float | None) -> None:
        """Count one logged exchange (``append_seconds``: None if logging it failed)."""
        timing = CURRENT_EXCHANGE.get()
        backend = 0.0
        if timing is not None:
            backend, timing.backend = timing.backend, 0.0
        error, status = record.error_type, record.status
        key = (record.role, record.service, record.client, error, error is None and status >= 500)
        series = self._children.get(key)
        if series is None:
            series = self._series(record.role, record.service, record.client,
                                  outcome_of(error, status))  # fmt: skip
            if series[4] and len(self._children) < _MAX_CACHED_CHILDREN:
                self._children[key] = series
        exchanges, duration, node_time, backend_time, _ = series
        exchanges.inc()
        total = record.finished_at - record.started_at
        if total < 0.0:
            total = 0.0
        duration.observe(total)
        node_time.observe(total - backend if total > backend else 0.0)
        backend_time.observe(backend)
        if append_seconds is None:
            self.append_failures.inc()
        else:
            self.append_seconds.observe(append_seconds)

    def refusal(self, side: str, code: str) -> None:
        self.refused.labels(side, self._outcomes(outcome_of(code, 500))).inc()
        if code.endswith(".InvalidEvidence"):
            self.evidence_failures.inc()

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class StateCollector:
    """Gauges (and counters) read from the node's state at scrape time, nothing updated per
    exchange: ages of the global configuration, the last timestamp and witnessed checkpoint,
    flat-file data versions, open connections, health."""

    def __init__(self, read: Callable[[], Iterator[tuple[str, str, dict[str, str], float]]]):
        self._read = read

    def describe(self) -> list[Any]:
        return []  # no fixed set: families depend on the node's configuration

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, doc, labels, value in self._read():
            family = families.get(name)
            if family is None:
                # Counts kept by the node's components (names ending in _total) are counters.
                kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
                family = families[name] = kind(name, doc, labels=list(labels))
            family.add_metric(list(labels.values()), value)
        yield from families.values()
