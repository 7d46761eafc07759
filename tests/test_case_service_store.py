"""The case store's transactions: all or nothing, also when their caller is cancelled.

Each write runs whole in the store's database thread; these tests hold that thread inside a
transaction (a trace callback on its connection blocks at a chosen statement) to cancel the
caller at a known point.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from case_service.store import Store

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
ITEMS = [("identity", "citizen", "1101700203451"), ("tax_clearance", "juristic", "0105556000001")]


class Gate:
    """Stops the database thread at the first statement containing ``at``, until opened."""

    def __init__(self) -> None:
        self.at: str | None = None
        self.reached = threading.Event()
        self.opened = threading.Event()

    def trace(self, sql: str) -> None:
        if self.at is not None and self.at in sql and not self.reached.is_set():
            self.reached.set()
            self.opened.wait(10)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(gate.trace)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    yield gate
    gate.opened.set()  # never leave the thread blocked


@pytest.fixture
async def store(tmp_path: Path, gate: Gate) -> AsyncIterator[Store]:
    store = Store(tmp_path / "cases.db")
    await store.open()
    yield store
    gate.opened.set()
    await store.close()


async def create(store: Store, evidence: list[tuple[str, str, str]] = ITEMS) -> str:
    return await store.create_case(
        agency="BMA",
        prefix="RL",
        year_be=2569,
        case_type="restaurant-licence",
        citizen_id="1101700203451",
        juristic_id="0105556000001",
        submitted_at=NOW,
        due_at=NOW + timedelta(days=15),
        sla_days=15,
        evidence=evidence,
        actor="citizen",
    )


async def fetched(store: Store, case_no: str) -> None:
    await store.record_fetch(
        case_no,
        "identity",
        at=NOW,
        message_id="m-1",
        user_id="citizen",
        reason="apply",
        ok=True,
        status=200,
        error_code=None,
        sha256="ab" * 32,
        reference={"status": "ok", "service": "DOPA/identity"},
    )


async def stop_inside(gate: Gate, at: str, call: Any) -> asyncio.Task[Any]:
    """Start ``call`` and return once the database thread is held at ``at``."""
    gate.at = at
    task = asyncio.ensure_future(call)
    assert await asyncio.to_thread(gate.reached.wait, 5), "the thread never got there"
    return task


async def test_cancelled_create_case_leaves_nothing(store: Store, gate: Gate) -> None:
    # Held after the counter was advanced and before the case row exists.
    task = await stop_inside(gate, "INSERT INTO cases", create(store))
    # A read does not wait for the write held in the other thread.
    assert await asyncio.wait_for(store.list_cases(), 2) == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.opened.set()  # the thread finishes the transaction's statements, then rolls back

    assert await store.list_cases() == []
    assert await store.count_by_status() == {}
    # The counter's increment went with the rest: the next case gets the first number.
    case_no = await create(store)
    assert case_no == "BMA-RL-2569-000001"
    assert [h.status for h in await store.history(case_no)] == ["submitted"]
    assert [r.status for r in await store.evidence(case_no)] == ["pending", "pending"]


async def test_cancelled_record_fetch_leaves_nothing(store: Store, gate: Gate) -> None:
    case_no = await create(store)
    # Held after the exchange row was inserted and before the reference is updated.
    task = await stop_inside(gate, "UPDATE evidence", fetched(store, case_no))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.opened.set()

    assert await store.exchanges(case_no) == []
    assert (await store.evidence(case_no))[0].status == "pending"
    # The store keeps working: the same write, not cancelled, commits.
    await fetched(store, case_no)
    assert [e["message_id"] for e in await store.exchanges(case_no)] == ["m-1"]
    ref = (await store.evidence(case_no))[0]
    assert (ref.status, ref.attempts, ref.service) == ("ok", 1, "DOPA/identity")
    moved = await store.transition(
        case_no, allowed_from=["submitted"], to="evidence-complete", at=NOW, actor="system"
    )
    assert moved
    assert [h.status for h in await store.history(case_no)] == ["submitted", "evidence-complete"]


async def test_cancelled_while_queued_never_runs(store: Store, gate: Gate) -> None:
    case_no = await create(store)
    first = await stop_inside(gate, "UPDATE evidence", fetched(store, case_no))
    queued = asyncio.ensure_future(
        store.transition(
            case_no, allowed_from=["submitted"], to="evidence-complete", at=NOW, actor="system"
        )
    )
    await asyncio.sleep(0.05)  # the transition is submitted, waiting behind the held write
    queued.cancel()
    gate.opened.set()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await first  # not cancelled: it commits
    assert (await store.get_case(case_no)).status == "submitted"  # type: ignore[union-attr]
    assert [h.status for h in await store.history(case_no)] == ["submitted"]
    assert len(await store.exchanges(case_no)) == 1


async def test_failed_statement_rolls_back_the_transaction(store: Store) -> None:
    # The same item twice violates the evidence key in the last statement of the transaction.
    with pytest.raises(sqlite3.IntegrityError):
        await create(store, [ITEMS[0], ITEMS[0]])
    assert await store.list_cases() == []
    assert await create(store) == "BMA-RL-2569-000001"
