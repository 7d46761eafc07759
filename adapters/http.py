"""The HTTP session an adapter uses towards the agency system."""

from __future__ import annotations

import aiohttp

__all__ = ["AdapterSession"]


class AdapterSession:
    """The node's shared session when it gives one (the node closes it), otherwise one made on
    first use and closed by ``close`` (an adapter used on its own, as in tests)."""

    def __init__(
        self, session: aiohttp.ClientSession | None, *, limit: int, auto_decompress: bool = True
    ) -> None:
        self._session = session
        self._own = session is None
        self._limit = limit
        self._auto_decompress = auto_decompress

    def get(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=self._auto_decompress,
                connector=aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300),
            )
        return self._session

    async def close(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None
