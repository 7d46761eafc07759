"""The HTTP session an adapter uses towards the agency system."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import aiohttp
from yarl import URL

from xroad_hub.streams import BodyTooLarge, read_capped

__all__ = ["AdapterSession", "UpstreamError"]


class UpstreamError(Exception):
    """The agency system could not be used. ``message`` is safe to show a foreign client;
    ``cause`` (addresses, library messages) belongs only in this node's log."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


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
                cookie_jar=aiohttp.DummyCookieJar(),  # see Node._http_session
                connector=aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300),
            )
        return self._session

    async def close(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self,
        url: URL,
        data: bytes,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        timeout: aiohttp.ClientTimeout,
        max_bytes: int,
        skip_auto_headers: Iterable[str] = ("User-Agent",),
    ) -> tuple[int, str | None, bytes]:
        """POST one message, no redirects followed (SOAP has none; following one would send
        the message elsewhere), the answer read up to ``max_bytes``: status, Content-Type
        and body, or UpstreamError."""
        try:
            async with self.get().post(
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
                auto_decompress=True,
                skip_auto_headers=tuple(skip_auto_headers),
            ) as resp:
                if 300 <= resp.status < 400:
                    raise UpstreamError(f"the service answered a redirect ({resp.status})")
                body = await read_capped(resp.content, max_bytes)
                return resp.status, resp.headers.get("Content-Type"), body
        except BodyTooLarge as exc:
            raise UpstreamError(f"the service's answer exceeds {max_bytes} bytes", exc) from exc
        except TimeoutError as exc:
            raise UpstreamError("the service did not answer in time", exc) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("cannot reach the service", exc) from exc
