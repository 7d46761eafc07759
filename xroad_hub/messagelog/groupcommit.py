"""Group commit, for the log backends.

Appends queue up; one writer hands whatever has queued (up to ``max_batch``) to the
backend's ``write`` in one go, which stores it in one transaction and returns the leaf
index of its first record; each record's future is then resolved, or, if the write raised,
they all fail. While one batch commits the next one gathers, so batches grow with load and
an append waits about one commit. `GroupCommit`'s writer is a task (an async driver:
PostgreSQL); `ThreadedGroupCommit`'s is a thread (a blocking driver: SQLite), which hands
each batch back to the loop in one callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from xroad_hub.messagelog.layout import STORED
from xroad_hub.messagelog.record import LogRecord
from xroad_hub.messagelog.store import LogError

__all__ = ["GroupCommit", "Pending", "ThreadedGroupCommit"]

T = TypeVar("T")

_LEAF_HASH = STORED.index("leaf_hash")

log = structlog.get_logger("xroad_hub.messagelog")

# A queued record, what the log stores of it (``LogRecord.stored``), its leaf hash, and the
# future its leaf index is delivered on.
Pending = tuple[LogRecord, tuple[Any, ...], bytes, "asyncio.Future[int]"]


class GroupCommit:
    def __init__(self, write: Callable[[list[Pending]], Awaitable[int]], max_batch: int) -> None:
        self._write = write
        self.max_batch = max_batch
        self._queue: asyncio.Queue[Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        # Told the size of each batch handed to the backend (metrics).
        self.on_batch: Callable[[int], None] | None = None

    def start(self, name: str) -> None:
        self._writer = asyncio.create_task(self._run(), name=f"messagelog-writer:{name}")

    async def append(self, record: LogRecord) -> int:
        if self._closing or self._writer is None or self._writer.done():
            raise LogError("message log is not open")
        # The row is made here, so a record that cannot be serialised fails its own append
        # and never the writer (which would leave the whole batch waiting).
        stored = record.stored()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, stored, stored[_LEAF_HASH], fut))
        # Not shielded: the future is the append's alone, so a client that disconnects only
        # cancels its wait (the writer skips a cancelled future); the record is written all
        # the same. A shield would cost every append one more loop pass after the commit.
        return await fut

    async def _run(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                start = await self._write(batch)
                for i, (_, _, _, fut) in enumerate(batch, start=start):
                    if not fut.done():
                        fut.set_result(i)
            except Exception as exc:
                # Any storage failure fails the whole batch, loudly; no append may wait
                # forever and the writer lives on for the next batch.
                reason = (
                    str(exc) if isinstance(exc, LogError) else f"message log write failed: {exc}"
                )
                for _, _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(LogError(reason))
                # Logging itself may fail (a closed stream); the appends are answered already.
                with contextlib.suppress(Exception):
                    log.error("messagelog.write_failed", error=reason, batch=len(batch))

    async def stop(self) -> bool:
        """Write everything already accepted; False if it was stopped before."""
        if self._closing:
            return False
        self._closing = True
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
        return True


_NEXT: Any = object()  # the writer thread has no item in hand: it takes the next one


class _Job:
    """Another write (a checkpoint, a purge...), run by the writer thread between batches."""

    __slots__ = ("fn", "fut")

    def __init__(self, fn: Callable[[], object], fut: asyncio.Future[object]) -> None:
        self.fn, self.fut = fn, fut


class ThreadedGroupCommit:
    """Group commit for a blocking driver (sqlite3): the writer is a thread of its own.

    The thread takes whatever has queued (up to ``max_batch``), stores it with ``write``
    (blocking; returns the leaf index of the batch's first record), and hands the whole
    batch back to the event loop in ONE callback: ``committed`` (the tree grows) and every
    append's future resolved there, so the appends run in the loop's next pass. Through a
    writer task (aiosqlite) the commit came back as that task's wake-up, one pass before
    the task could resolve the appends: a loop pass more per commit, and under load a pass
    is where the latency is. The thread is the log's only writer: other writes go through
    ``run``, in order with the batches, so no write ever waits on SQLite's busy lock.
    """

    def __init__(
        self,
        write: Callable[[list[Pending]], int],
        committed: Callable[[list[Pending], int], None],
        max_batch: int,
    ) -> None:
        self._write = write
        self._committed = committed
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Pending | _Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False
        # Told the size of each batch handed to the backend (metrics), on the loop.
        self.on_batch: Callable[[int], None] | None = None

    def start(self, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, name=f"messagelog-writer:{name}", daemon=True
        )
        self._thread.start()

    async def append(self, record: LogRecord) -> int:
        if self._closing or self._loop is None or self._stopped is None or self._stopped.done():
            raise LogError("message log is not open")
        # Made here, as in GroupCommit: a record that cannot be serialised fails alone.
        stored = record.stored()
        fut: asyncio.Future[int] = self._loop.create_future()
        self._queue.put((record, stored, stored[_LEAF_HASH], fut))
        # Not shielded (see GroupCommit.append): a cancelled wait skips its result only.
        return await fut

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the writer thread, after every batch queued before it."""
        if self._closing or self._loop is None or self._stopped is None or self._stopped.done():
            raise LogError("message log is not open")
        fut: asyncio.Future[object] = self._loop.create_future()
        self._queue.put(_Job(fn, fut))
        return await fut  # type: ignore[return-value]

    def _run(self) -> None:  # the writer thread
        get, get_nowait = self._queue.get, self._queue.get_nowait
        item = get()
        while item is not None:  # None: stop
            if isinstance(item, _Job):
                self._job(item)
                item = get()
                continue
            batch: list[Pending] = [item]
            item = _NEXT
            while len(batch) < self.max_batch:
                try:
                    nxt = get_nowait()
                except queue.Empty:
                    break
                if nxt is None or isinstance(nxt, _Job):
                    item = nxt  # served after this batch, in order
                    break
                batch.append(nxt)
            try:
                first: int | None = self._write(batch)
                error: Exception | None = None
            except Exception as exc:
                first, error = None, exc
            self._back(self._handback, batch, first, error)
            if item is _NEXT:
                item = get()
        self._back(self._finished)

    def _job(self, job: _Job) -> None:
        try:
            result = job.fn()
        except Exception as exc:
            self._back(_settle, job.fut, None, exc)
        else:
            self._back(_settle, job.fut, result, None)

    def _back(self, fn: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed under a stray thread
            self._loop.call_soon_threadsafe(fn, *args)

    def _handback(self, batch: list[Pending], first: int | None, error: Exception | None) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        if first is not None:
            try:
                self._committed(batch, first)
            except Exception as exc:  # stored, but the tree could not take it
                error = exc
            else:
                for i, (_, _, _, fut) in enumerate(batch, start=first):
                    if not fut.done():
                        fut.set_result(i)
                return
        reason = str(error) if isinstance(error, LogError) else f"message log write failed: {error}"
        for _, _, _, fut in batch:
            if not fut.done():
                fut.set_exception(LogError(reason))
        with contextlib.suppress(Exception):
            log.error("messagelog.write_failed", error=reason, batch=len(batch))

    def _finished(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def stop(self) -> bool:
        """Write everything already accepted; False if it was stopped before."""
        if self._closing:
            return False
        self._closing = True
        if self._thread is not None and self._stopped is not None:
            self._queue.put(None)
            await self._stopped
            self._thread.join()
        return True


def _settle(fut: asyncio.Future[object], result: object, error: Exception | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
