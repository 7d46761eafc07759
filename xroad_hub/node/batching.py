"""Batch signing on the event loop: one ECDSA signature per loop iteration and member.

Every exchange that asks for a signature while the loop runs one iteration shares a batch
(see signing.py for the hash-tree format). Under load the batch grows with concurrency and
signing and verifying cost one ECDSA operation per batch; a lone exchange is signed at once,
one loop callback later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from xroad_hub.protocol.identifiers import MemberId
from xroad_hub.protocol.signing import MAX_BATCH, MessageSigner

__all__ = ["BatchSigner"]


class BatchSigner:
    def __init__(self, signer: MessageSigner) -> None:
        self._signer = signer
        self._pending: list[tuple[bytes, asyncio.Future[bytes]]] = []
        # Told the size of each batch signed (metrics).
        self.on_batch: Callable[[int], None] | None = None

    @property
    def member(self) -> MemberId:
        return self._signer.member

    @property
    def cert_der(self) -> bytes:
        return self._signer.cert_der

    async def sign(self, data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._pending.append((data, fut))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_BATCH):
            chunk = pending[start : start + MAX_BATCH]
            if self.on_batch is not None:
                self.on_batch(len(chunk))
            try:
                signatures = self._signer.sign_batch([data for data, _ in chunk])
            except Exception as exc:  # a failing key fails its waiters, not the loop
                for _, fut in chunk:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), signature in zip(chunk, signatures, strict=True):
                if not fut.done():
                    fut.set_result(signature)
