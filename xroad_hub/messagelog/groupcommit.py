"""Group commit, shared by the log backends.

Appends queue up; one writer task hands whatever has queued (up to ``max_batch``) to the
backend's ``write`` in one go, which stores it in one transaction and returns the leaf
index of its first record; this writer then resolves each record's future, or, if the write
raised, fails them all. While one batch commits the next one gathers, so batches grow with
load and an append waits about one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from xroad_hub.messagelog.record import LogRecord
from xroad_hub.messagelog.store import LogError

__all__ = ["GroupCommit", "Pending"]

log = structlog.get_logger("xroad_hub.messagelog")

# A queued record, its leaf bytes, and the future its leaf index is delivered on.
Pending = tuple[LogRecord, bytes, "asyncio.Future[int]"]


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
        # The leaf is computed here, so a record that cannot be serialised fails its own
        # append and never the writer (which would leave the whole batch waiting).
        leaf = record.leaf()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, leaf, fut))
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
                for i, (_, _, fut) in enumerate(batch, start=start):
                    if not fut.done():
                        fut.set_result(i)
            except Exception as exc:
                # Any storage failure fails the whole batch, loudly; no append may wait
                # forever and the writer lives on for the next batch.
                reason = (
                    str(exc) if isinstance(exc, LogError) else f"message log write failed: {exc}"
                )
                for _, _, fut in batch:
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
