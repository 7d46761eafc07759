"""Service-level objectives: error-budget burn from the node's operational records, and
alerts the node sends itself to a webhook.

A provider declares per service ``slo = { availability = 0.995, latency_ms = 500,
latency_share = 0.99, window_days = 30 }``. The node computes burn rates as Google's SRE
workbook does (multiwindow, multi-burn-rate alerts): the share of bad requests over a window
divided by the share the objective allows. An alert fires when both the long window (1 h)
and the short one (5 min) burn faster than 14.4 (2% of a 30-day budget in one hour), and
resolves by itself once the short window is back under it. Other alerts: timestamping
failing, global-configuration refresh failing, the message log not writable.

Notifications are JSON POSTs to ``alert_webhook``, sent by a task of their own with retries
and backoff; they name services and nodes, never a person or a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog

from xroad_hub.federation import SloConfig
from xroad_hub.node.opmonitoring import OpMonitor

__all__ = ["BURN_ALERT", "WINDOWS", "AlertSender", "SloWatch", "print_slo"]

log = structlog.get_logger("xroad_hub.slo")

WINDOWS = (("1h", 3600.0), ("5m", 300.0))  # long, short (SRE workbook, page alerts)
BURN_ALERT = 14.4


@dataclass
class _Alert:
    name: str
    labels: dict[str, Any]
    since: float


class AlertSender:
    """Posts firing and resolved notifications; a bounded queue, retried with backoff."""

    def __init__(
        self,
        url: str | None,
        node: str,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        max_pending: int = 100,
    ) -> None:
        self.url = url
        self.node = node
        self.attempts = attempts
        self.backoff = backoff
        self.dropped = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._max = max_pending
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def send(self, body: dict[str, Any]) -> None:
        if self.url is None:
            return
        if len(self._pending) >= self._max:
            self._pending.popleft()  # the oldest goes: the newest state matters most
            self.dropped += 1
        self._pending.append({"node": self.node, **body})
        self._wake.set()

    def start(self) -> None:
        if self.url is not None:
            self._task = asyncio.create_task(self._run(), name="alert-webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        assert self.url is not None
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                body = self._pending.popleft()
                await self._deliver(body)

    async def _deliver(self, body: dict[str, Any]) -> None:
        assert self._session is not None and self.url is not None
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.post(self.url, json=body) as resp:
                    if resp.status < 300:
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            log.warning("alert.webhook_failed", node=self.node, alert=body.get("alert"),
                        attempt=attempt, error=problem)  # fmt: skip
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        self.dropped += 1


@dataclass
class SloWatch:
    """Evaluates the objectives and the node's own conditions every ``interval`` seconds."""

    store: OpMonitor
    objectives: dict[str, SloConfig]  # unversioned service id -> objective
    sender: AlertSender
    interval: float = 30.0
    # name -> () -> labels when failing, None when fine
    conditions: dict[str, Callable[[], dict[str, Any] | None]] = field(default_factory=dict)
    firing: dict[tuple[str, str], _Alert] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _last: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="slo-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.evaluate()
            except Exception:  # the watch goes on; the next round tries again
                log.exception("slo.evaluate_failed", node=self.sender.node)

    async def evaluate(self) -> None:
        status = await asyncio.to_thread(self.status)
        now = time.time()
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in status["services"]:
            for kind in ("availability", "latency"):
                burn = entry.get(f"{kind}_burn")
                if burn and all(burn[w] >= BURN_ALERT for w, _ in WINDOWS):
                    wanted[(f"slo_{kind}_burn", entry["service"])] = {
                        "service": entry["service"],
                        "burn_rate": round(burn["1h"], 2),
                        "burn_rate_5m": round(burn["5m"], 2),
                    }
        for name, check in self.conditions.items():
            labels = check()
            if labels is not None:
                wanted[(name, "")] = labels
        for key, labels in wanted.items():
            if key not in self.firing:
                alert = _Alert(key[0], labels, now)
                self.firing[key] = alert
                log.warning("alert.firing", node=self.sender.node, alert=key[0], **labels)
                self.sender.send(_body(alert, "firing"))
        for key in [k for k in self.firing if k not in wanted]:
            alert = self.firing.pop(key)
            log.info("alert.resolved", node=self.sender.node, alert=key[0])
            self.sender.send(_body(alert, "resolved", resolved_at=now))

    def status(self, now: float | None = None) -> dict[str, Any]:
        """Per service: burn rates over the windows and the budget left (blocking: reads
        the store)."""
        now = now if now is not None else time.time()
        services = []
        for service, slo in sorted(self.objectives.items()):
            entry: dict[str, Any] = {"service": service, "objective": slo.as_dict()}
            avail: dict[str, float] = {}
            latency: dict[str, float] = {}
            for name, seconds in WINDOWS:
                total, bad, slow = self.store.window_counts(service, seconds, slo.latency_ms, now)
                avail[name] = _burn(bad, total, 1 - slo.availability)
                if slo.latency_ms is not None:
                    latency[name] = _burn(slow, total, 1 - slo.latency_share)
                entry.setdefault("requests", {})[name] = total
            # The budget over the objective's window, as far as the records reach back.
            span = min(slo.window_days * 86400, self.store.retention)
            total, bad, slow = self.store.window_counts(service, span, slo.latency_ms, now)
            entry["availability_burn"] = avail
            entry["availability"] = None if total == 0 else round(1 - bad / total, 6)
            entry["error_budget_remaining"] = (
                None if total == 0 else round(1 - _burn(bad, total, 1 - slo.availability), 6)
            )
            if slo.latency_ms is not None:
                entry["latency_burn"] = latency
                entry["latency_share_met"] = None if total == 0 else round(1 - slow / total, 6)
            entry["budget_window_seconds"] = span
            services.append(entry)
        return {
            "node": self.sender.node,
            "burn_alert_threshold": BURN_ALERT,
            "services": services,
            "alerts": [
                {"alert": a.name, **a.labels, "since": _iso(a.since)} for a in self.firing.values()
            ],
        }


def _burn(bad: int, total: int, allowed: float) -> float:
    if total == 0:
        return 0.0
    return (bad / total) / allowed if allowed > 0 else (float("inf") if bad else 0.0)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _body(alert: _Alert, status: str, resolved_at: float | None = None) -> dict[str, Any]:
    body = {"alert": alert.name, "status": status, **alert.labels, "since": _iso(alert.since)}
    if resolved_at is not None:
        body["resolved_at"] = _iso(resolved_at)
    return body


def print_slo(admin: str, key: str, *, as_json: bool = False, root_ca: Path | None = None) -> int:
    """``xroad-hub node slo``: the node's SLO status as a table (or JSON); 0 when no alert
    fires, 1 when one does, 2 when the node could not be asked."""
    url = admin.rstrip("/") + "/slo"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    context = None
    if url.startswith("https://"):
        cafile = str(root_ca) if root_ca is not None and root_ca.exists() else None
        context = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            data = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        hint = " (check --key)" if exc.code in (401, 403) else ""
        print(f"xroad-hub: {url} answered HTTP {exc.code}{hint}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"xroad-hub: cannot ask {url}: {reason}; is the node's admin API there?",
              file=sys.stderr)  # fmt: skip
        return 2
    if as_json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"node {data.get('node')}: alert when burn >= {data.get('burn_alert_threshold')}")
        print(f"{'service':<45} {'avail':>9} {'burn 1h':>8} {'burn 5m':>8} {'budget':>8}")
        for s in data.get("services", []):
            burn = s.get("availability_burn", {})
            avail = s.get("availability")
            budget = s.get("error_budget_remaining")
            print(
                f"{s['service']:<45} {'-' if avail is None else f'{avail:.4%}':>9} "
                f"{burn.get('1h', 0):>8.2f} {burn.get('5m', 0):>8.2f} "
                f"{'-' if budget is None else f'{budget:.1%}':>8}"
            )
            lat = s.get("latency_burn")
            if lat:
                one_h, five_m = lat.get("1h", 0), lat.get("5m", 0)
                print(f"{'  latency':<45} {'':>9} {one_h:>8.2f} {five_m:>8.2f}")
        for a in data.get("alerts", []):
            print(f"FIRING {a['alert']} {a.get('service', '')} since {a['since']}")
    return 1 if data.get("alerts") else 0
