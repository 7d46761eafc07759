"""The storage interface of the message log; backends implement exactly this."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from xroad_hub.errors import HubError
from xroad_hub.messagelog.reader import LogReader
from xroad_hub.messagelog.record import LogRecord

__all__ = ["LogError", "MessageLog"]


class LogError(HubError, RuntimeError):
    """The log could not store a record durably; the exchange must not be answered."""


class MessageLog(Protocol):
    async def open(self) -> None: ...

    async def append(self, record: LogRecord) -> int:
        """Store ``record`` durably and return its leaf index (0-based, gap-free)."""
        ...

    def tree_head(self) -> tuple[int, bytes]:
        """Size and RFC 9162 root of the durably stored entries."""
        ...

    async def add_checkpoint(
        self, size: int, root: bytes, note: str, cert_der: bytes, created_at: float
    ) -> None: ...

    async def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        """RFC 9162 proof that the tree of ``old_size`` entries is a prefix of ``size``'s
        (reads older entries' leaf hashes back from the log: the tree keeps few in memory)."""
        ...

    async def record_witness(self, size: int, cosigned_note: str, witness_cert: bytes) -> None: ...

    async def record_globalconf(
        self, signed: bytes, signer_cert: bytes, generated_at: float, expires_at: float
    ) -> None:
        """Keep a signed global configuration the node worked under (idempotent)."""
        ...

    async def latest_checkpoint_size(self) -> int: ...

    async def record_timestamp(self, size: int, token: bytes) -> None: ...

    async def unstamped_checkpoints(self) -> list[tuple[int, str, float]]: ...

    async def purge_bodies(self, before: float) -> int:
        """Retention: drop bodies of exchanges finished before ``before``; keep leaves."""
        ...

    async def count(self) -> int: ...

    async def leaves(self, start: int, end: int) -> Sequence[bytes]: ...

    async def find(self, message_id: str) -> list[dict[str, object]]: ...

    def reader(self) -> LogReader:
        """Open a read-only reader of the committed log, for auditing (blocking: call it in
        a worker thread; each call opens its own connection)."""
        ...

    async def close(self) -> None: ...
