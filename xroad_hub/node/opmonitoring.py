"""Operational monitoring as X-Road has it: one record per exchange, in the node's own store.

The exchange path only appends a few small values to a bounded in-memory queue (the hook in
``NodeRuntime.record``); a writer thread turns them into X-Road's operational-monitoring
records (field names of X-Road's op-monitoring data) and stores them in batches in a SQLite
file of the node's data directory (0600), with a retention period and a bound on the number
of records. A full queue drops the record and counts it: monitoring never blocks or fails an
exchange.

The records are served as X-Road serves them, through the SOAP metaservices of the node's
owner member (``getSecurityServerOperationalData``, ``getSecurityServerHealthData``, request
header ``securityServer`` naming the node), and as JSON over the admin API
(``opmonitoring_app``). The node's owner and the federation's monitoring client read every
record; any other client only the records of exchanges it took part in.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import math
import sqlite3
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
import structlog
from aiohttp import web
from lxml import etree

from adapters import AdapterResponse
from xroad_hub.errors import XRoadError
from xroad_hub.logs import mask_numbers, path_shape
from xroad_hub.messagelog import LogRecord
from xroad_hub.privatefile import ensure_private
from xroad_hub.protocol.identifiers import (
    MEMBER_SERVICES,
    ClientId,
    MemberId,
    NodeId,
    ServiceId,
    SubsystemId,
    parse_client_id,
)
from xroad_hub.protocol.soap import (
    ID_NS,
    SoapError,
    SoapMessage,
    build_response,
    client_identifier,
    identifier_element,
)

__all__ = [
    "FIELDS",
    "HEALTH_DATA",
    "OPERATIONAL_DATA",
    "OPMON_NS",
    "OpMonitor",
    "Query",
    "mark_request_out",
    "mark_response_in",
    "opmonitoring_app",
    "timed",
]

log = structlog.get_logger("xroad_hub.opmonitoring")

OPMON_NS = "http://x-road.eu/xsd/op-monitoring.xsd"
OPERATIONAL_DATA = "getSecurityServerOperationalData"
HEALTH_DATA = "getSecurityServerHealthData"
assert {OPERATIONAL_DATA, HEALTH_DATA} == MEMBER_SERVICES

# X-Road's operational-monitoring fields, in its order (outputSpec takes these names).
FIELDS: tuple[str, ...] = (
    "monitoringDataTs", "securityServerInternalIp", "securityServerType",
    "requestInTs", "requestOutTs", "responseInTs", "responseOutTs",
    "clientXRoadInstance", "clientMemberClass", "clientMemberCode", "clientSubsystemCode",
    "serviceXRoadInstance", "serviceMemberClass", "serviceMemberCode", "serviceSubsystemCode",
    "serviceCode", "serviceVersion", "restMethod", "restPath",
    "representedPartyClass", "representedPartyCode",
    "messageId", "messageUserId", "messageIssue", "messageProtocolVersion",
    "clientSecurityServerAddress", "serviceSecurityServerAddress",
    "requestSize", "requestMimeSize", "requestAttachmentCount",
    "responseSize", "responseMimeSize", "responseAttachmentCount",
    "succeeded", "faultCode", "faultString", "statusCode", "serviceType",
    "xRoadVersion", "xRequestId",
)  # fmt: skip
_FIELD_SET = frozenset(FIELDS)
# Only the node's owner and the monitoring client see where the node runs inside its network.
_PRIVATE_FIELDS = frozenset({"securityServerInternalIp"})

MAX_RECORDS_IN_ANSWER = 10_000  # X-Road's default (op-monitor max-records-in-payload)
STATISTICS_PERIOD = 600  # seconds, X-Road's health-statistics period
_MAX_TEXT = 255  # X-Road's column width: every stored text is cut there, so rows are bounded
_ATTACHMENT_CID = "operational-monitoring-data.json.gz"
XROAD_HUB_VERSION = "xroad-hub/1"

# Faults that count against a service's availability: the provider's node or its service
# failed. A refused client (AccessDenied, unknown service, bad request) is not an outage.
PROVIDER_FAULTS = frozenset(
    {"ServiceFailed", "InternalError", "LoggingFailed", "TimestamperFailed", "NetworkError",
     "OutdatedGlobalConf", "ServiceTimeout", "Timeout"}
)  # fmt: skip

# When the request left the node (to the peer node or the service) and when the answer came
# back: set by the proxies, read by the hook. Task-local, and only believed when they fall
# within the exchange's own start and end (a keep-alive connection reuses its task).
_request_out: ContextVar[float] = ContextVar("opmon_request_out", default=0.0)
_response_in: ContextVar[float] = ContextVar("opmon_response_in", default=0.0)

_T = TypeVar("_T")


def mark_request_out() -> None:
    _request_out.set(time.time())


def mark_response_in() -> None:
    _response_in.set(time.time())


async def timed(call: Awaitable[_T]) -> _T:
    """``await call``, noting when the request went out and the answer came in."""
    mark_request_out()
    try:
        return await call
    finally:
        mark_response_in()


class _Seen(NamedTuple):
    """What the exchange path keeps of one exchange: small values only (never bodies).

    A named tuple, not a frozen dataclass: made on every exchange of both nodes, and a
    frozen dataclass's __init__ sets its 19 fields one object.__setattr__ at a time (1.9 us
    against 0.3 us, timeit)."""

    role: str
    message_id: str
    request_id: str
    client: str
    service: str
    user_id: str | None
    issue: str | None
    represented_party: str | None
    method: str
    status: int
    error_type: str | None
    fault_string: str | None
    started: float
    request_out: float
    response_in: float
    finished: float
    request_size: int
    response_size: int | None
    request_meta: bytes


# Per client, service, side and peer node: the client's and the service's node address and
# serviceType of the records (OpMonitor._fixed).
_Fixed = tuple[str | None, str | None, str]

# A stored record (the data column) is a JSON array of these values (OpMonitor._stored);
# the X-Road record is built from it when read (_record). Arrays, as records are written
# far more often than read. A JSON object there is a record as stored before (kept as is).
_STORED_VERSION = 1
(_S_VERSION, _S_ROLE, _S_MESSAGE_ID, _S_REQUEST_ID, _S_CLIENT, _S_SERVICE, _S_USER_ID,
 _S_ISSUE, _S_REPRESENTED, _S_METHOD, _S_STATUS, _S_ERROR, _S_FAULT, _S_STARTED,
 _S_REQUEST_OUT, _S_RESPONSE_IN, _S_FINISHED, _S_REQUEST_SIZE, _S_RESPONSE_SIZE, _S_SOAP,
 _S_ROUTE, _S_CLIENT_ADDR, _S_SERVICE_ADDR, _S_SERVICE_TYPE,
 _S_INTERNAL_IP) = range(25)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Query:
    """One search of the records: a closed interval of monitoringDataTs (Unix seconds)."""

    records_from: int
    records_to: int
    viewer: ClientId | None = None  # None: everything (owner, monitoring client, admin)
    partner: ClientId | None = None  # X-Road's searchCriteria/client: the service provider
    fields: frozenset[str] = frozenset()  # empty: all
    limit: int = MAX_RECORDS_IN_ANSWER


class OpMonitor:
    """The node's operational-monitoring store and the queue that feeds it."""

    def __init__(
        self,
        path: Path,
        node_id: NodeId,
        *,
        retention: float = 7 * 86400.0,
        max_records: int = 1_000_000,
        max_queue: int = 10_000,
        flush_interval: float = 0.5,
        internal_ip: str | None = None,
        addresses: Callable[[str, str | None], tuple[str | None, str | None]] | None = None,
        service_types: dict[str, str] | None = None,
        monitoring_client: Callable[[], ClientId | None] = lambda: None,
    ) -> None:
        self.path = path
        self.node_id = node_id
        self.retention = retention
        self.max_records = max_records
        self.max_queue = max_queue
        self.flush_interval = flush_interval
        self.internal_ip = internal_ip
        self._addresses = addresses
        self.service_types = service_types if service_types is not None else {}
        self.monitoring_client = monitoring_client
        self.started_at = time.time()
        self.dropped = 0  # records lost because the queue was full or the store failed
        self.written = 0
        self._accepted = 0  # queued so far
        self._failed = 0  # queued, then lost to a failed write
        self.log_failed_since: float | None = None  # the message log refused an exchange
        self._queue: deque[_Seen] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._flushed = threading.Condition()
        self._last_cleanup = 0.0

    # -- the hook (exchange path) ----------------------------------------------------------

    def observe(self, record: LogRecord, *, logged: bool = True, raise_as: str = "") -> None:
        """Queue the record of one exchange; never raises, never waits."""
        try:
            if not logged:
                self.log_failed_since = self.log_failed_since or time.time()
            elif self.log_failed_since is not None:
                self.log_failed_since = None
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                return
            error = record.error_type if logged else f"{raise_as}.LoggingFailed"
            exc = sys.exception()
            fault = exc.message if isinstance(exc, XRoadError) and exc.code == error else None
            service = record.service
            if error is not None and error.endswith(".UnknownService"):
                # Not a service but what a client typed where its code goes: a person's id
                # in the wrong place must not reach records that monitoring clients read.
                service = mask_numbers(service)
            if fault is not None:
                fault = mask_numbers(fault)  # faults quote the values they refuse
            started, finished = record.started_at, record.finished_at
            out, back = _request_out.get(), _response_in.get()
            self._queue.append(
                _Seen(
                    record.role, record.message_id, record.request_id, record.client,
                    service, record.user_id, record.issue, record.represented_party,
                    record.method, record.status, error, fault, started,
                    out if started <= out <= finished else 0.0,
                    back if started <= back <= finished else 0.0,
                    finished, len(record.request_body),
                    None if record.response_body is None else len(record.response_body),
                    record.request_meta,
                )
            )  # fmt: skip
            self._accepted += 1
            if len(self._queue) >= 512:
                self._wake.set()
        except Exception:  # monitoring must never fail an exchange
            self.dropped += 1

    # -- the writer ------------------------------------------------------------------------

    def start(self) -> None:
        ensure_private(self.path, sqlite=True)
        with contextlib.closing(self._connect()) as db:
            db.executescript(_SCHEMA)
        self._thread = threading.Thread(target=self._run, name="opmonitoring", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record queued so far is stored (tests, shutdown)."""
        target = self._accepted
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self.written + self._failed < target and time.monotonic() < deadline:
                self._flushed.wait(0.05)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # The log file is copied into the store (and reused) every 1 MiB rather than 4: the
        # files on disk stay near the records' own size, whatever the write pattern.
        db.execute("PRAGMA wal_autocheckpoint=256")
        return db

    def _run(self) -> None:
        db = self._connect()
        try:
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                stopping = self._stopping
                self._write_batch(db)
                if stopping:
                    return
        finally:
            db.close()

    def _write_batch(self, db: sqlite3.Connection) -> None:
        batch: list[_Seen] = []
        while self._queue and len(batch) < 5000:
            batch.append(self._queue.popleft())
        now = time.time()
        try:
            if batch:
                ts = int(now)
                cache: dict[Any, Any] = {}
                rows = [self._row(seen, ts, cache) for seen in batch]
                with db:
                    _insert(db, rows)
                    # The size bound: the oldest records beyond it go first.
                    db.execute(
                        "DELETE FROM records WHERE id <= (SELECT MAX(id) FROM records) - ?",
                        (self.max_records,),
                    )
            if now - self._last_cleanup > 60:
                with db:
                    db.execute("DELETE FROM records WHERE ts < ?", (int(now - self.retention),))
                self._last_cleanup = now
            self.written += len(batch)
        except Exception as exc:  # a full disk must not stop the node
            self.dropped += len(batch)
            self._failed += len(batch)
            log.warning("opmonitoring.write_failed", node=str(self.node_id), error=str(exc))
        with self._flushed:
            self._flushed.notify_all()
        if self._queue:
            self._wake.set()

    def _row(self, seen: _Seen, ts: int, cache: dict[Any, Any] | None = None) -> tuple[Any, ...]:
        """The stored row of one exchange: the columns queries filter on, and the values its
        X-Road record is built from when read (``_record``): the writer builds no record."""
        stored = self._stored(seen, cache)
        found = cache.get(seen.service) if cache is not None else None
        if found is None:
            found = (str(_provider_of(seen.service)), _unversioned(seen.service))
            if cache is not None:
                cache[seen.service] = found
        provider, service = found
        error, status, soap = seen.error_type, seen.status, stored[_S_SOAP]
        finished_ms = _ms(seen.finished)
        # Spends the service's error budget (see PROVIDER_FAULTS).
        if error is not None:
            bad = _cut(error).rsplit(".", 1)[-1] in PROVIDER_FAULTS
        else:
            bad = not soap and status >= 500
        return (
            ts,
            seen.client,
            provider,
            service,
            1 if seen.role == "provider" else 0,
            finished_ms,
            max(0, finished_ms - _ms(seen.started)),
            1 if bad else 0,
            orjson.dumps(stored),
        )

    def _fixed(self, seen: _Seen, meta: dict[str, Any], cache: dict[Any, Any] | None) -> _Fixed:
        """What a record takes from its client, service, side and peer node alone (node
        addresses, serviceType): the same for every exchange of that kind, so worked out
        once per batch (``cache``), not per record; per batch, so that addresses follow the
        global configuration."""
        target = meta.get("target_node")
        soap = meta.get("protocol") == "soap"
        key = (seen.client, seen.service, seen.role, target if isinstance(target, str) else None,
               soap)  # fmt: skip
        if cache is not None:
            found = cache.get(key)
            if found is not None:
                return found  # type: ignore[no-any-return]
        producer = seen.role == "provider"
        client_addr = service_addr = None
        if self._addresses is not None:
            try:
                own, other = self._addresses(seen.client if producer else "", target)
            except Exception:  # no configuration at hand: the addresses stay out
                own, other = None, None
            client_addr, service_addr = (other, own) if producer else (own, other)
        service_type = (
            "WSDL" if soap else self.service_types.get(_unversioned(seen.service), "REST")
        )
        fixed = (client_addr or None, service_addr or None, service_type)
        if cache is not None:
            cache[key] = fixed
        return fixed

    def _stored(self, seen: _Seen, cache: dict[Any, Any] | None) -> list[Any]:
        """What is kept of one exchange (the layout of ``_S_*``): its own values, the route
        of its path (never the path: ids in paths may name persons) and the node's
        addresses as the configuration had them then."""
        try:
            meta = orjson.loads(seen.request_meta)
        except orjson.JSONDecodeError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        soap = meta.get("protocol") == "soap"
        client_addr, service_addr, service_type = self._fixed(seen, meta, cache)
        path = meta.get("path")
        route = (
            path_shape(path or "/")
            if not soap and seen.role == "provider" and isinstance(path, str)
            else None
        )
        return [
            _STORED_VERSION, seen.role, seen.message_id, seen.request_id, seen.client,
            seen.service, seen.user_id, seen.issue, seen.represented_party, seen.method,
            seen.status, seen.error_type, seen.fault_string, seen.started, seen.request_out,
            seen.response_in, seen.finished, seen.request_size, seen.response_size, soap,
            route, client_addr, service_addr, service_type, self.internal_ip,
        ]  # fmt: skip

    def to_xroad(self, seen: _Seen, ts: int, cache: dict[Any, Any] | None = None) -> dict[str, Any]:
        """The X-Road operational-monitoring record of one exchange."""
        return _record(ts, self._stored(seen, cache))

    # -- queries (run in a thread: they read the file) -------------------------------------

    def query(
        self, q: Query, *, now: float | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The records of ``q`` in monitoringDataTs order, and X-Road's nextRecordsFrom
        (None when the answer is complete)."""
        _check_query(q)
        # A record's monitoringDataTs is the second its batch was written, by one writer:
        # the current second may still grow, earlier ones are complete. (X-Road holds back
        # 60 s because its records come from many proxies, out of order.)
        available_before = int(now if now is not None else time.time())
        if q.records_from >= available_before:
            raise XRoadError.client(
                "InvalidRequest", f"Records not available from {q.records_from} yet"
            )
        records_to, next_from = q.records_to, None
        if records_to >= available_before:
            records_to, next_from = available_before - 1, available_before
        where, args = "ts BETWEEN ? AND ?", [q.records_from, records_to]
        for column, value in _filters(q):
            where += f" AND {column}"
            args += value
        with contextlib.closing(self._connect()) as db:
            rows = db.execute(
                f"SELECT ts, data FROM records WHERE {where} ORDER BY ts, id LIMIT ?",
                [*args, q.limit],
            ).fetchall()
            if len(rows) == q.limit:
                # As X-Road: the last second is given whole (bounded by the limit once more),
                # and the next query starts after it if anything is left.
                last = rows[-1][0]
                rows = [r for r in rows if r[0] != last]
                rows += db.execute(
                    f"SELECT ts, data FROM records WHERE {where} AND ts = ? ORDER BY id LIMIT ?",
                    [*args, last, q.limit],
                ).fetchall()
                more = db.execute(
                    f"SELECT 1 FROM records WHERE {where} AND ts > ? LIMIT 1",
                    [*args, last],
                ).fetchone()
                if more is not None and last < records_to:
                    next_from = last + 1
        fields = set(q.fields) if q.fields else set(FIELDS)
        if q.viewer is not None:
            fields -= _PRIVATE_FIELDS
        if q.fields:
            fields.add("monitoringDataTs")  # X-Road: always there when a field is asked
        out = []
        for ts, data in rows:
            record = _record(ts, orjson.loads(data))
            out.append({k: v for k, v in record.items() if k in fields})
        return out, next_from

    def health(
        self, partner: ClientId | None = None, *, now: float | None = None
    ) -> dict[str, Any]:
        """X-Road's health data: per service served here, last successes and failures and
        the statistics of the last period (never before the node started)."""
        now = now if now is not None else time.time()
        since = max(self.started_at, now - STATISTICS_PERIOD)
        with contextlib.closing(self._connect()) as db:
            rows = db.execute(
                "SELECT service, ts, data FROM records WHERE producer = 1 AND finished_ms >= ?"
                " ORDER BY id",
                (_ms(self.started_at),),
            ).fetchall()
        services: dict[str, dict[str, Any]] = {}
        for service, ts, data in rows:
            if partner is not None and _provider_of(service) != partner:
                continue
            r = _record(ts, orjson.loads(data))
            s = services.setdefault(
                service,
                {"ok": [], "failed": 0, "last_ok": None, "last_failed": None,
                 "type": r.get("serviceType")},
            )  # fmt: skip
            if r["succeeded"]:
                s["last_ok"] = r["responseOutTs"]
            else:
                s["last_failed"] = r["responseOutTs"]
            if r["responseOutTs"] >= since * 1000:
                if r["succeeded"]:
                    s["ok"].append(r)
                else:
                    s["failed"] += 1
        return {
            "monitoringStartupTimestamp": _ms(self.started_at),
            "statisticsPeriodSeconds": STATISTICS_PERIOD,
            "services": [
                {"service": service, **_stats(s)} for service, s in sorted(services.items())
            ],
        }

    def window_counts(self, service: str, seconds: float, slow_ms: float | None,
                      now: float | None = None) -> tuple[int, int, int]:  # fmt: skip
        """Requests to ``service`` served here in the last ``seconds``: total, bad, slow."""
        now = now if now is not None else time.time()
        with contextlib.closing(self._connect()) as db:
            total, bad, slow = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bad), 0),"
                " COALESCE(SUM(CASE WHEN duration_ms > ? THEN 1 ELSE 0 END), 0)"
                " FROM records WHERE producer = 1 AND service = ? AND finished_ms >= ?",
                (slow_ms if slow_ms is not None else math.inf, service, _ms(now - seconds)),
            ).fetchone()
        return int(total), int(bad), int(slow)

    # -- the SOAP metaservices -------------------------------------------------------------

    def addresses_me(self, service: ServiceId) -> bool:
        return service.service_code in MEMBER_SERVICES and service.provider == self.node_id.owner

    def sees_all(self, client: ClientId) -> bool:
        """The node's owner and the federation's monitoring client read every record."""
        return client == self.node_id.owner or client == self.monitoring_client()

    async def metaservice(
        self, client: ClientId, service: ServiceId, soap: SoapMessage | None
    ) -> AdapterResponse:
        if soap is None:
            raise XRoadError.client(
                "InvalidRequest", f"{service.service_code} is a SOAP service of X-Road's"
                " operational monitoring; send it as an X-Road SOAP 4.0 request",
            )  # fmt: skip
        el = soap.body_element
        if (
            etree.QName(el).namespace != OPMON_NS
            or etree.QName(el).localname != service.service_code
        ):
            raise XRoadError.client(
                "InvalidRequest",
                f"the SOAP body must be {{{OPMON_NS}}}{service.service_code}",
            )
        if service.service_code == OPERATIONAL_DATA:
            q = _operational_query(el, None if self.sees_all(client) else client)
            records, next_from = await asyncio.to_thread(self.query, q)
            return _operational_answer(soap, records, next_from)
        partner = _optional_client(el, "filterCriteria")
        health = await asyncio.to_thread(self.health, partner)
        return _health_answer(soap, health)


_INSERT = (
    "INSERT INTO records (ts, client, provider, service, producer, finished_ms, duration_ms,"
    " bad, data) VALUES "
)
_ROW_PLACES = "(?,?,?,?,?,?,?,?,?)"
# Rows per INSERT statement. sqlite3 lets go of the GIL for every step of a statement and
# takes it back after: row by row (executemany), each time the event loop had to hand it
# over (forced switches every 5 ms while it is busy). One statement per chunk of rows.
_ROWS_PER_INSERT = 256


def _insert(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    for i in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[i : i + _ROWS_PER_INSERT]
        # One statement text per chunk size: the connection's statement cache prepares the
        # full chunk's once, the last (shorter) chunk's once per size.
        sql = _INSERT + ",".join([_ROW_PLACES] * len(chunk))
        db.execute(sql, [value for row in chunk for value in row])


def _record(ts: int, v: Any) -> dict[str, Any]:
    """The X-Road operational-monitoring record of a stored one (``OpMonitor._stored``)."""
    if isinstance(v, dict):
        return v  # stored as a whole record
    producer = v[_S_ROLE] == "provider"
    soap = v[_S_SOAP]
    r: dict[str, Any] = {
        "monitoringDataTs": ts,
        "securityServerType": "Producer" if producer else "Client",
        "requestInTs": _ms(v[_S_STARTED]),
        "responseOutTs": _ms(v[_S_FINISHED]),
    }
    if v[_S_INTERNAL_IP]:
        r["securityServerInternalIp"] = v[_S_INTERNAL_IP]
    if v[_S_REQUEST_OUT]:
        r["requestOutTs"] = _ms(v[_S_REQUEST_OUT])
    if v[_S_RESPONSE_IN]:
        r["responseInTs"] = _ms(v[_S_RESPONSE_IN])
    _put_client(r, "client", v[_S_CLIENT])
    parts = v[_S_SERVICE].split("/")
    member_service = len(parts) == 4
    _put_client(r, "service", "/".join(parts[: 3 if member_service else 4]))
    r["serviceCode"] = _cut(parts[3 if member_service else 4])
    if len(parts) == 6:
        r["serviceVersion"] = _cut(parts[5])
    if v[_S_REPRESENTED]:
        cls, _, code = v[_S_REPRESENTED].rpartition("/")
        if cls:
            r["representedPartyClass"] = _cut(cls)
        r["representedPartyCode"] = _cut(code)
    r["messageId"] = _cut(v[_S_MESSAGE_ID])
    if v[_S_USER_ID]:
        r["messageUserId"] = _cut(v[_S_USER_ID])
    if v[_S_ISSUE]:
        r["messageIssue"] = _cut(v[_S_ISSUE])
    r["messageProtocolVersion"] = "4.0" if soap else "1"
    if v[_S_CLIENT_ADDR]:
        r["clientSecurityServerAddress"] = _cut(v[_S_CLIENT_ADDR])
    if v[_S_SERVICE_ADDR]:
        r["serviceSecurityServerAddress"] = _cut(v[_S_SERVICE_ADDR])
    r["requestSize"] = v[_S_REQUEST_SIZE]
    if v[_S_RESPONSE_SIZE] is not None:
        r["responseSize"] = v[_S_RESPONSE_SIZE]
    r["succeeded"] = v[_S_ERROR] is None
    if v[_S_ERROR]:
        r["faultCode"] = _cut(v[_S_ERROR])
        if v[_S_FAULT]:
            r["faultString"] = _cut(v[_S_FAULT])
    if soap:
        r["serviceType"] = "WSDL"
    else:
        r["restMethod"] = _cut(v[_S_METHOD])
        if v[_S_ROUTE] is not None:
            r["restPath"] = _cut(v[_S_ROUTE])
        r["statusCode"] = v[_S_STATUS]
        r["serviceType"] = v[_S_SERVICE_TYPE]
    r["xRoadVersion"] = XROAD_HUB_VERSION
    r["xRequestId"] = _cut(v[_S_REQUEST_ID])
    return r


def _provider_of(service: str) -> ClientId:
    """The provider part of a logged service id (``.../SUBSYSTEM/CODE[/VERSION]`` or a
    member service ``.../MEMBER/CODE``)."""
    parts = service.split("/")
    if len(parts) == 4:
        return MemberId(*parts[:3])
    return SubsystemId(*parts[:4])


def _unversioned(service: str) -> str:
    parts = service.split("/")
    return "/".join(parts[:5]) if len(parts) == 6 else service


def _ms(t: float) -> int:
    return int(t * 1000)


def _cut(text: str) -> str:
    return text[:_MAX_TEXT]


def _put_client(r: dict[str, Any], prefix: str, ident: str) -> None:
    parts = ident.split("/")
    names = ("XRoadInstance", "MemberClass", "MemberCode", "SubsystemCode")
    for name, value in zip(names, parts, strict=False):
        r[prefix + name] = _cut(value)


def _client_columns(ident: ClientId) -> str:
    return str(ident)


def _filters(q: Query) -> Iterable[tuple[str, list[Any]]]:
    if q.viewer is not None:
        me = _client_columns(q.viewer)
        yield "(client = ? OR provider = ?)", [me, me]
    if q.partner is not None:
        yield "provider = ?", [_client_columns(q.partner)]


def _check_query(q: Query) -> None:
    if q.records_from < 0 or q.records_to < 0:
        raise XRoadError.client("InvalidRequest", "recordsFrom and recordsTo must not be negative")
    if q.records_to < q.records_from:
        raise XRoadError.client("InvalidRequest", "recordsTo is earlier than recordsFrom")
    unknown = sorted(q.fields - _FIELD_SET)
    if unknown:
        raise XRoadError.client(
            "InvalidRequest", f"Unknown output field in search criteria: {unknown[0]}"
        )
    if not 0 < q.limit <= MAX_RECORDS_IN_ANSWER:
        raise XRoadError.client(
            "InvalidRequest", f"limit must be between 1 and {MAX_RECORDS_IN_ANSWER}"
        )


def _stats(s: dict[str, Any]) -> dict[str, Any]:
    ok: list[dict[str, Any]] = s["ok"]
    out: dict[str, Any] = {"serviceType": s["type"]}
    if s["last_ok"] is not None:
        out["lastSuccessfulRequestTimestamp"] = s["last_ok"]
    if s["last_failed"] is not None:
        out["lastUnsuccessfulRequestTimestamp"] = s["last_failed"]
    stats: dict[str, Any] = {"successfulRequestCount": len(ok),
                             "unsuccessfulRequestCount": s["failed"]}  # fmt: skip
    if ok:
        series = {
            "Duration": [r["responseOutTs"] - r["requestInTs"] for r in ok],
            "Size": [r.get("requestSize", 0) for r in ok],
            "ResponseSize": [r.get("responseSize", 0) for r in ok],
        }
        for name, values in series.items():
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            stem = ("request", name) if name != "ResponseSize" else ("response", "Size")
            stats[f"{stem[0]}Min{stem[1]}"] = min(values)
            stats[f"{stem[0]}Average{stem[1]}"] = mean
            stats[f"{stem[0]}Max{stem[1]}"] = max(values)
            stats[f"{stem[0]}{stem[1]}StdDev"] = std
    out["lastPeriodStatistics"] = stats
    return out


# -- SOAP request and answer ---------------------------------------------------------------


def _o(name: str) -> str:
    return f"{{{OPMON_NS}}}{name}"


def _long(parent: etree._Element, name: str) -> int:
    text = (parent.findtext(_o(name)) or "").strip()
    try:
        return int(text)
    except ValueError:
        raise XRoadError.client(
            "InvalidRequest", f"{name} must be a Unix time in seconds"
        ) from None


def _optional_client(el: etree._Element, container: str) -> ClientId | None:
    holder = el.find(_o(container))
    found = holder.find(_o("client")) if holder is not None else None
    if found is None:
        return None
    try:
        return client_identifier(found)
    except SoapError as exc:
        raise XRoadError.client("InvalidRequest", f"{container}/client: {exc.message}") from exc


def _operational_query(el: etree._Element, viewer: ClientId | None) -> Query:
    criteria = el.find(_o("searchCriteria"))
    if criteria is None:
        raise XRoadError.client("InvalidRequest", "searchCriteria is required")
    spec = el.find(_o("outputSpec"))
    fields = (
        frozenset((f.text or "").strip() for f in spec.findall(_o("outputField")))
        if spec is not None
        else frozenset()
    )
    return Query(
        _long(criteria, "recordsFrom"),
        _long(criteria, "recordsTo"),
        viewer=viewer,
        partner=_optional_client(el, "searchCriteria"),
        fields=fields,
    )


def _multipart(soap_part: bytes, attachment: bytes) -> AdapterResponse:
    boundary = "xroad-hub-opmon-" + uuid.uuid4().hex
    while boundary.encode() in attachment:  # pragma: no cover - 2^-122
        boundary = "xroad-hub-opmon-" + uuid.uuid4().hex
    body = b"".join(
        (
            f"--{boundary}\r\nContent-Type: text/xml; charset=UTF-8\r\n"
            "Content-ID: <soap-part>\r\n\r\n".encode(),
            soap_part,
            f"\r\n--{boundary}\r\nContent-Type: application/gzip\r\n"
            "Content-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{_ATTACHMENT_CID}>\r\n\r\n".encode(),
            attachment,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    content_type = f'multipart/related; type="text/xml"; start="<soap-part>"; boundary="{boundary}"'
    return AdapterResponse(200, (("Content-Type", content_type),), body)


def _operational_answer(
    soap: SoapMessage, records: list[dict[str, Any]], next_from: int | None
) -> AdapterResponse:
    wrapper = etree.Element(_o(OPERATIONAL_DATA + "Response"), nsmap={"om": OPMON_NS})
    etree.SubElement(wrapper, _o("recordsCount")).text = str(len(records))
    etree.SubElement(wrapper, _o("records")).text = f"cid:{_ATTACHMENT_CID}"
    if next_from is not None:
        etree.SubElement(wrapper, _o("nextRecordsFrom")).text = str(next_from)
    payload = gzip.compress(orjson.dumps({"records": records}), compresslevel=6)
    return _multipart(build_response(soap, wrapper), payload)


def _health_answer(soap: SoapMessage, health: dict[str, Any]) -> AdapterResponse:
    wrapper = etree.Element(_o(HEALTH_DATA + "Response"), nsmap={"om": OPMON_NS, "id": ID_NS})
    etree.SubElement(wrapper, _o("monitoringStartupTimestamp")).text = str(
        health["monitoringStartupTimestamp"]
    )
    etree.SubElement(wrapper, _o("statisticsPeriodSeconds")).text = str(
        health["statisticsPeriodSeconds"]
    )
    events = etree.SubElement(wrapper, _o("servicesEvents"))
    order = ("Duration", "Size")
    for entry in health["services"]:
        ev = etree.SubElement(events, _o("serviceEvents"))
        sid = identifier_element("service", _service_id(entry["service"]))
        sid.tag = _o("service")
        ev.append(sid)
        for name in ("lastSuccessfulRequestTimestamp", "lastUnsuccessfulRequestTimestamp",
                     "serviceType"):  # fmt: skip
            if entry.get(name) is not None:
                etree.SubElement(ev, _o(name)).text = str(entry[name])
        stats = entry["lastPeriodStatistics"]
        st = etree.SubElement(ev, _o("lastPeriodStatistics"))
        for name in ("successfulRequestCount", "unsuccessfulRequestCount"):
            etree.SubElement(st, _o(name)).text = str(stats[name])
        for side, kinds in (("request", order), ("response", ("Size",))):
            for kind in kinds:
                for agg in ("Min", "Average", "Max"):
                    key = f"{side}{agg}{kind}"
                    if key in stats:
                        etree.SubElement(st, _o(key)).text = _number(stats[key])
                key = f"{side}{kind}StdDev"
                if key in stats:
                    etree.SubElement(st, _o(key)).text = _number(stats[key])
    return AdapterResponse(
        200, (("Content-Type", "text/xml; charset=utf-8"),), build_response(soap, wrapper)
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _service_id(text: str) -> ServiceId:
    parts = text.split("/")
    if len(parts) == 4:
        return ServiceId(MemberId(*parts[:3]), parts[3])
    return ServiceId(SubsystemId(*parts[:4]), parts[4], parts[5] if len(parts) > 5 else None)


# -- admin API (JSON) ----------------------------------------------------------------------


def opmonitoring_app(store: OpMonitor, slo: Any | None = None) -> web.Application:
    """The records as JSON, for the node's admin listener (which authenticates: only a
    holder of an admin key with the right role reaches this app; it sees every record).

    GET /opmonitoring/records?from=&to=&client=&partner=&fields=a,b&limit=
    GET /opmonitoring/health
    GET /slo                       (when the node has service-level objectives)
    """
    app = web.Application()

    async def records(request: web.Request) -> web.Response:
        qs = request.query
        try:
            now = int(time.time())
            q = Query(
                int(qs.get("from", now - 3600)),
                int(qs.get("to", now)),
                viewer=parse_client_id(qs["client"]) if qs.get("client") else None,
                partner=parse_client_id(qs["partner"]) if qs.get("partner") else None,
                fields=frozenset(f for f in qs.get("fields", "").split(",") if f),
                limit=int(qs.get("limit", 1000)),
            )
            found, next_from = await asyncio.to_thread(store.query, q)
        except ValueError:
            return _json_error("from, to and limit must be whole numbers")
        except XRoadError as err:
            return _json_error(err.message)
        answer: dict[str, Any] = {"recordsCount": len(found), "records": found}
        if next_from is not None:
            answer["nextRecordsFrom"] = next_from
        answer["dropped"] = store.dropped
        return web.json_response(answer, dumps=lambda o: orjson.dumps(o).decode())

    async def health(request: web.Request) -> web.Response:
        data = await asyncio.to_thread(store.health)
        return web.json_response(data, dumps=lambda o: orjson.dumps(o).decode())

    app.router.add_get("/opmonitoring/records", records)
    app.router.add_get("/opmonitoring/health", health)
    if slo is not None:

        async def slo_status(request: web.Request) -> web.Response:
            data = await asyncio.to_thread(slo.status)
            return web.json_response(data, dumps=lambda o: orjson.dumps(o).decode())

        app.router.add_get("/slo", slo_status)
    return app


def _json_error(message: str) -> web.Response:
    return web.json_response({"type": "Client.InvalidRequest", "message": message}, status=400)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,          -- monitoringDataTs
    client TEXT NOT NULL,
    provider TEXT NOT NULL,
    service TEXT NOT NULL,        -- unversioned
    producer INTEGER NOT NULL,    -- securityServerType Producer
    finished_ms INTEGER NOT NULL, -- responseOutTs
    duration_ms INTEGER NOT NULL,
    bad INTEGER NOT NULL,         -- spends the service's error budget
    data BLOB NOT NULL            -- what the record is built from (_stored), JSON
);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
-- Service-level objectives read the provider side only (window_counts): the client side's
-- records, half of them on a node that is both, need not pay for this index on insert.
DROP INDEX IF EXISTS records_service;
CREATE INDEX IF NOT EXISTS records_served ON records (service, finished_ms) WHERE producer = 1;
"""
