"""The ids of one-use client tokens already spent, kept durably by the node.

A JWT of a client subsystem may be used once (clientauth.py). Remembering spent ids in
memory alone would let a captured token be replayed after a restart of the node, or at a
second process serving the same node. So the node keeps them in a store that survives
restarts and is shared by its processes; the claim of an id is one atomic INSERT that fails
on a duplicate, which is what makes "exactly one request wins" hold across connections.

``UsedTokenStore`` is the small interface a node needs; ``SQLiteUsedTokens`` implements it
in the node's state directory. A PostgreSQL store (nodes scaled over several hosts) would
implement the same three methods with ``INSERT ... ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Protocol

import aiosqlite

from xroad_hub.errors import HubError

__all__ = ["SQLiteUsedTokens", "TokenStoreError", "UsedTokenStore"]


class TokenStoreError(HubError, RuntimeError):
    """The store could not say whether a token id is new: the token must be refused."""


class UsedTokenStore(Protocol):
    async def open(self) -> None: ...

    async def claim(self, token_id: str, expires_at: float) -> bool:
        """True if ``token_id`` was not used before (and is now recorded as used), False if
        it was; TokenStoreError if the store cannot tell. ``expires_at``: after this time
        the token is refused as expired anyway, so its id may be forgotten."""
        ...

    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS used_token (
    token_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS used_token_expiry ON used_token (expires_at);
"""

_PURGE_INTERVAL = 60.0  # seconds between deletions of expired ids


class SQLiteUsedTokens:
    """Spent token ids in a SQLite file (WAL, so several processes of one node share it)."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._busy_ms = int(busy_timeout * 1000)
        self._db: aiosqlite.Connection | None = None
        self._opening = asyncio.Lock()
        self._next_purge = 0.0

    async def open(self) -> None:
        async with self._opening:
            if self._db is not None:
                return
            try:
                await asyncio.to_thread(_create_private, self.path)
                db = await aiosqlite.connect(self.path, isolation_level=None)
            except (OSError, sqlite3.Error) as exc:
                raise TokenStoreError(f"cannot open {self.path}: {exc}") from exc
            try:
                await db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                await db.execute("PRAGMA journal_mode = WAL")
                # A spent id must still be known after a power loss: the token may live on.
                await db.execute("PRAGMA synchronous = FULL")
                await db.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                await db.close()
                raise TokenStoreError(f"cannot prepare {self.path}: {exc}") from exc
            self._db = db

    async def claim(self, token_id: str, expires_at: float) -> bool:
        if self._db is None:
            await self.open()
        db = self._db
        assert db is not None
        try:
            await self._purge(db)
            await db.execute(
                "INSERT INTO used_token (token_id, expires_at) VALUES (?, ?)",
                (token_id, expires_at),
            )
        except sqlite3.IntegrityError:
            return False
        except sqlite3.Error as exc:
            raise TokenStoreError(f"used-token store {self.path}: {exc}") from exc
        return True

    async def _purge(self, db: aiosqlite.Connection) -> None:
        # Expired tokens are refused on their own, so their ids need not be remembered.
        now = time.time()
        if now < self._next_purge:
            return
        self._next_purge = now + _PURGE_INTERVAL
        await db.execute("DELETE FROM used_token WHERE expires_at < ?", (now,))

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None


def _create_private(path: Path) -> None:
    """The file exists with mode 0600 before SQLite opens it (SQLite gives its -wal and -shm
    files the database file's mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
