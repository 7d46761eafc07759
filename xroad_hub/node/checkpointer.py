"""Periodic checkpoints of a node's log: signed tree heads, stored in the log itself.

While there is traffic the node signs its log's size and root every ``interval`` seconds
(and once more on a clean shutdown) with its Ed25519 checkpoint key, whose certificate is
issued by the federation CA. A checkpoint commits the node to every entry before it: an
entry changed, removed or reordered afterwards no longer gives the signed root.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from ..checkpoint import Checkpoint, NoteSigner, sign_note
from ..messagelog import MessageLog

__all__ = ["Checkpointer"]

log = structlog.get_logger("xroad_hub.checkpoint")


class Checkpointer:
    def __init__(
        self, node_id: str, messagelog: MessageLog, signer: NoteSigner, cert_der: bytes,
        interval: float,
    ) -> None:  # fmt: skip
        self.origin = f"xroad-hub/{node_id}"
        self._log = messagelog
        self._signer = signer
        self._cert = cert_der
        self._interval = interval
        self._last_size = -1
        self._task: asyncio.Task[None] | None = None

    async def checkpoint(self) -> str | None:
        """Sign and store the current tree head, if it grew since the last checkpoint."""
        size, root = self._log.tree_head()
        if size == self._last_size or size == 0:
            return None
        note = sign_note(Checkpoint(self.origin, size, root).text(), self._signer)
        await self._log.add_checkpoint(size, root, note, self._cert, time.time())
        self._last_size = size
        log.info("checkpoint.signed", origin=self.origin, size=size)
        return note

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.checkpoint()
            except Exception:  # the next round tries again; exchanges are unaffected
                log.exception("checkpoint.failed", origin=self.origin)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"checkpointer:{self.origin}")

    async def stop(self) -> None:
        """Stop the timer and sign a final checkpoint covering everything logged."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.checkpoint()
