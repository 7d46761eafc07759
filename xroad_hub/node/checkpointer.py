"""Periodic checkpoints of a node's log: signed tree heads, stored in the log itself.

While there is traffic the node signs its log's size and root every ``interval`` seconds
(and once more on a clean shutdown) with its Ed25519 checkpoint key, whose certificate is
issued by the federation CA. A checkpoint commits the node to every entry before it: an
entry changed, removed or reordered afterwards no longer gives the signed root.

Each checkpoint then gets an RFC 3161 timestamp of its text. Checkpoints the timestamp
authority could not stamp are queued and retried every round; if the oldest has waited
longer than ``failure_limit``, ``healthy()`` turns false and the node refuses new exchanges
(``LoggingFailed.TimestamperFailed``) rather than exchange data it cannot timestamp. It
recovers by itself once the queue is stamped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable

import aiohttp
import structlog
from cryptography import x509

from xroad_hub.messagelog import MessageLog
from xroad_hub.messagelog.audit import cosigned
from xroad_hub.messagelog.store import LogError
from xroad_hub.protocol.checkpoint import Checkpoint, NoteSigner, sign_note

__all__ = ["Checkpointer", "Timestamper"]

# Gets an RFC 3161 timestamp token (DER) for the given bytes, or raises.
Timestamper = Callable[[bytes], Awaitable[bytes]]

log = structlog.get_logger("xroad_hub.protocol.checkpoint")


class Checkpointer:
    def __init__(
        self, node_id: str, messagelog: MessageLog, signer: NoteSigner, cert_der: bytes,
        interval: float, witness_url: str | None = None,
        timestamper: Timestamper | None = None, failure_limit: float = 4 * 3600,
        body_retention: float | None = None,
        trusted_roots: list[x509.Certificate] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.origin = f"xroad-hub/{node_id}"
        self._log = messagelog
        self._signer = signer
        self._cert = cert_der
        self._interval = interval
        self._last_size = -1
        self._task: asyncio.Task[None] | None = None
        # Set by stop(): the timer finishes the round it is in instead of being cancelled
        # in the middle of one, which could leave a checkpoint signed and stored but never
        # timestamped or witnessed (the final one then finds nothing new to sign).
        self._stopping = asyncio.Event()
        self._witness_url = witness_url
        self._ssl = ssl_context or True  # HTTPS to the central server's witness: its CA
        self._session: aiohttp.ClientSession | None = None
        self._timestamper = timestamper
        self._failure_limit = failure_limit
        self._unstamped: dict[int, tuple[bytes, float]] = {}  # size -> (text, created)
        # One checkpoint (sign, timestamp, witness) at a time: the timer's and one asked for
        # meanwhile (an evidence export, the final one) would otherwise sign the same size
        # twice and stamp the same queue entry twice (KeyError, then no witness).
        self._lock = asyncio.Lock()
        self._retention = body_retention
        self._trusted_roots = trusted_roots or []
        self._next_purge = 0.0
        # For health and metrics: when a checkpoint was last stamped and witnessed (this
        # run), and how many stamping attempts failed.
        self.last_timestamp_at: float | None = None
        self.last_witness_at: float | None = None
        self.timestamp_failures = 0

    def oldest_unstamped(self) -> float | None:
        """When the oldest checkpoint still waiting for its timestamp was made (None: none)."""
        return min((created for _, created in self._unstamped.values()), default=None)

    def healthy(self, now: float | None = None) -> bool:
        """False when a checkpoint has waited for its timestamp longer than allowed."""
        if not self._unstamped:
            return True
        oldest = min(created for _, created in self._unstamped.values())
        return (now or time.time()) - oldest <= self._failure_limit

    @property
    def failure_limit(self) -> float:
        return self._failure_limit

    async def _stamp_queued(self) -> None:
        if self._timestamper is None:
            return
        for size in sorted(self._unstamped):
            text, _ = self._unstamped[size]
            try:
                token = await self._timestamper(text)
            except Exception as exc:  # any failure: keep it queued, try again next round
                self.timestamp_failures += 1
                log.warning("checkpoint.timestamp_failed", origin=self.origin, size=size,
                            error=str(exc) or type(exc).__name__)  # fmt: skip
                return
            await self._log.record_timestamp(size, token)
            del self._unstamped[size]
            self.last_timestamp_at = time.time()
            log.info("checkpoint.timestamped", origin=self.origin, size=size)

    async def checkpoint(self) -> str | None:
        """Sign and store the current tree head, if it grew since the last checkpoint."""
        async with self._lock:
            return await self._checkpoint()

    async def _checkpoint(self) -> str | None:
        size, root = self._log.tree_head()
        if size == self._last_size or size == 0:
            return None
        text = Checkpoint(self.origin, size, root).text()
        note = sign_note(text, self._signer)
        created = time.time()
        await self._log.add_checkpoint(size, root, note, self._cert, created)
        self._last_size = size
        log.info("checkpoint.signed", origin=self.origin, size=size)
        if self._timestamper is not None:
            self._unstamped[size] = (text.encode(), created)
            await self._stamp_queued()
        if self._witness_url:
            note = await self._witness(size, note)
        return note

    async def _witness(self, size: int, note: str) -> str:
        """Have the witness co-sign; on any failure keep the node's own checkpoint (the next
        one is submitted with a proof from whatever the witness saw last)."""
        assert self._witness_url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.get(
                self._witness_url, params={"origin": self.origin}, ssl=self._ssl
            ) as r:
                r.raise_for_status()
                seen = int((await r.json())["size"])
            proof = await self._log.consistency_proof(seen, size) if 0 < seen < size else []
            payload = {
                "note": note,
                "cert": base64.b64encode(self._cert).decode(),
                "old_size": seen,
                "proof": [base64.b64encode(h).decode() for h in proof],
            }
            async with self._session.post(self._witness_url, json=payload, ssl=self._ssl) as r:
                answer = await r.json()
                if r.status == 409:
                    log.error("checkpoint.witness_refused", origin=self.origin, size=size,
                              reason=answer.get("error"))  # fmt: skip
                    return note
                r.raise_for_status()
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            log.warning("checkpoint.witness_unavailable", origin=self.origin, error=str(exc))
            return note
        except LogError as exc:  # the log's rows no longer give its tree: say so, sign on
            log.error("checkpoint.proof_failed", origin=self.origin, size=size, error=str(exc))
            return note
        cosigned_note = str(answer.get("note", ""))
        witness_cert = base64.b64decode(str(answer.get("cert", "")))
        # Only a genuine co-signature of our own note is stored: a bad answer (or anyone
        # between us and the registry) must not replace the node's signed checkpoint.
        if not cosigned_note.startswith(note) or not cosigned(
            cosigned_note, witness_cert, self._trusted_roots
        ):
            log.error("checkpoint.witness_answer_invalid", origin=self.origin, size=size)
            return note
        await self._log.record_witness(size, cosigned_note, witness_cert)
        self.last_witness_at = time.time()
        log.info("checkpoint.witnessed", origin=self.origin, size=size)
        return cosigned_note

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            if self._stopping.is_set():
                return
            try:
                await self.checkpoint()
                async with self._lock:
                    await self._stamp_queued()  # also without new entries: retry the queue
                await self._purge_old_bodies()
            except Exception:  # the next round tries again; exchanges are unaffected
                log.exception("checkpoint.failed", origin=self.origin)

    async def _purge_old_bodies(self) -> None:
        """Retention, at most once a minute: leaves keep the bodies' digests, so the tree,
        the checkpoints and every proof stay valid."""
        now = time.time()
        if self._retention is None or now < self._next_purge:
            return
        self._next_purge = now + 60
        purged = await self._log.purge_bodies(now - self._retention)
        if purged:
            log.info("retention.purged_bodies", origin=self.origin, entries=purged)

    async def start(self) -> None:
        # A restarted node continues after its last checkpoint, and checkpoints of an earlier
        # run still waiting for a timestamp join the queue; their wait counts from now, so
        # enabling a TSA on an old log does not close the node at once.
        self._last_size = await self._log.latest_checkpoint_size()
        if self._timestamper is not None:
            now = time.time()
            for size, text, _ in await self._log.unstamped_checkpoints():
                self._unstamped[size] = (text.encode(), now)
            await self._stamp_queued()
        self._task = asyncio.create_task(self._run(), name=f"checkpointer:{self.origin}")

    async def stop(self) -> None:
        """Stop the timer and sign a final checkpoint covering everything logged."""
        if self._task is not None:
            self._stopping.set()
            await self._task
        try:
            await self.checkpoint()
        finally:  # a failing final checkpoint must not leave the witness session open
            if self._session is not None:
                await self._session.close()
