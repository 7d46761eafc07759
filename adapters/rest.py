"""REST adapter: a service code maps to a backend base URL; the request is forwarded as is.

Method, path remainder, query string, body and the allowed headers go to the backend
unchanged; redirects come back unchanged (never followed) and compressed bodies stay
compressed. Only the configured host is ever contacted: the path was validated by the r1
parser (no dot segments in any reading, no encoded separators), is checked again here and is
appended to the base URL's path.
"""

from __future__ import annotations

import aiohttp
import structlog
from yarl import URL

from xroad_hub.errors import SERVER_PROXY, ProtocolError, XRoadError
from xroad_hub.logs import loggable_error
from xroad_hub.protocol.rest import check_path
from xroad_hub.streams import BodyTooLarge, read_capped

from .base import AdapterRequest, AdapterResponse
from .http import AdapterSession

__all__ = ["RestAdapter"]

log = structlog.get_logger("xroad_hub.adapters.rest")


class RestAdapter:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        max_response_bytes: int = 64 * 1024 * 1024,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._base = URL(base_url.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ValueError(f"REST adapter URL must be http(s)://host[:port][/path]: {base_url}")
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
        self._max = max_response_bytes
        # Per request only the path and query are new: the rest is formed once.
        self._prefix = str(self._base)
        self._origin = self._base.origin()
        self._raw_path = self._base.raw_path
        self._http = AdapterSession(session, limit=256, auto_decompress=False)

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        # The adapter can be used on its own: the path is checked here too (dot segments in
        # any reading a backend may make, encoded separators), not only by the node.
        try:
            check_path(request.path)
        except ProtocolError as exc:
            raise XRoadError.blame(SERVER_PROXY, exc) from exc
        url = URL(
            self._prefix + request.path + ("?" + request.query if request.query else ""),
            encoded=True,
        )
        # Defence in depth behind the path checks: never another host, never above the base.
        if url.origin() != self._origin or not url.raw_path.startswith(self._raw_path):
            raise XRoadError.server_proxy("InvalidMessage", "request path leaves the service")
        session = self._http.get()
        try:
            async with session.request(
                request.method,
                url,
                headers=list(request.headers),
                data=request.body or None,
                allow_redirects=False,
                timeout=self._timeout,
                # Only what the client sent travels: no User-Agent or Accept-Encoding of ours.
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            ) as resp:
                try:
                    body = await read_capped(resp.content, self._max)
                except BodyTooLarge as exc:
                    raise XRoadError.server_proxy(
                        "ServiceFailed", f"service response {exc}"
                    ) from exc
                return AdapterResponse(resp.status, tuple(resp.headers.items()), body)
        except XRoadError:
            raise
        except TimeoutError as exc:
            raise self._failed("NetworkError", "the service did not answer in time", exc) from exc
        except aiohttp.ClientConnectionError as exc:
            raise self._failed("NetworkError", "cannot connect to the service", exc) from exc
        except aiohttp.ClientError as exc:
            raise self._failed("ServiceFailed", "the service failed", exc) from exc

    def _failed(self, code: str, message: str, exc: BaseException) -> XRoadError:
        # Internal addresses and library messages stay in this node's log, under the id the
        # client is given; a foreign client learns only what kind of failure it was.
        err = XRoadError.server_proxy(code, message)
        log.warning(
            "adapter.failed", detail=err.detail, backend=str(self._base), error=loggable_error(exc)
        )
        return err

    async def close(self) -> None:
        await self._http.close()
