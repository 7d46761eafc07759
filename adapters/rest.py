"""REST adapter: a service code maps to a backend base URL; the request is forwarded as is.

Method, path remainder, query string, body and the allowed headers go to the backend
unchanged; redirects come back unchanged (never followed) and compressed bodies stay
compressed. Only the configured host is ever contacted: the path was validated by the r1
parser (no dot segments in any reading, no encoded separators), is checked again here and is
appended to the base URL's path.
"""

from __future__ import annotations

import ssl

import aiohttp
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from xroad_hub.errors import SERVER_PROXY, ProtocolError, XRoadError
from xroad_hub.logs import loggable_error
from xroad_hub.protocol.rest import check_path, check_query
from xroad_hub.streams import BodyTooLarge

from .backend import Backends, UnsafeRequest
from .base import AdapterRequest, AdapterResponse
from .http import basic_auth

__all__ = ["RestAdapter"]

log = structlog.get_logger("xroad_hub.adapters.rest")


class RestAdapter:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        max_response_bytes: int = 64 * 1024 * 1024,
        backends: Backends | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``backends``: the node's pools (the node closes them), otherwise the adapter's own
        (``close`` closes them); ``tls``: how to verify an https backend, and the client
        certificate to show it (mutual TLS), by default the system's CAs."""
        self._base = URL(base_url.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ValueError(f"REST adapter URL must be http(s)://host[:port][/path]: {base_url}")
        self._timeout = timeout
        self._connect_timeout = min(timeout, 10.0)
        self._max = max_response_bytes
        # Per request only the path and query are new: the rest is formed once.
        self._raw_path = self._base.raw_path.rstrip("/")
        # Credentials in the URL (http://user:password@host/...) are the service's own, sent
        # with each of its requests as aiohttp sent them, in place of any the caller gave;
        # the pool is the origin's, shared with services that have other credentials or none.
        self._auth = basic_auth(self._base)
        self._own = backends is None
        self._backends = Backends() if backends is None else backends
        self._pool = self._backends.pool(self._base, tls)

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        # The adapter can be used on its own: the path and query are checked here too (dot
        # segments in any reading a backend may make, encoded separators, anything that
        # would end the request line), not only by the node.
        try:
            check_path(request.path)
            check_query(request.query)
        except ProtocolError as exc:
            raise XRoadError.blame(SERVER_PROXY, exc) from exc
        # The target is the base path with the checked remainder appended: the connection
        # goes to the configured host only, and the path stays under the base.
        target = (self._raw_path + request.path) or "/"
        if request.query:
            target += "?" + request.query
        headers = request.headers
        if self._auth is not None:
            headers = (*(h for h in headers if h[0].lower() != "authorization"), self._auth)
        try:
            status, answer_headers, body = await self._pool.request(
                request.method,
                target,
                headers,
                request.body,
                total=self._timeout,
                connect=self._connect_timeout,
                max_bytes=self._max,
            )
        except UnsafeRequest as exc:
            raise XRoadError.server_proxy("InvalidMessage", str(exc)) from exc
        except BodyTooLarge as exc:
            raise XRoadError.server_proxy("ServiceFailed", f"service response {exc}") from exc
        except TimeoutError as exc:
            raise self._failed("NetworkError", "the service did not answer in time", exc) from exc
        except aiohttp.ClientConnectionError as exc:
            raise self._failed("NetworkError", "cannot connect to the service", exc) from exc
        except (aiohttp.ClientError, HttpProcessingError) as exc:
            # A broken body, or an answer that is not HTTP/1.1.
            raise self._failed("ServiceFailed", "the service failed", exc) from exc
        return AdapterResponse(status, answer_headers, body)

    def _failed(self, code: str, message: str, exc: BaseException) -> XRoadError:
        # Internal addresses and library messages stay in this node's log, under the id the
        # client is given; a foreign client learns only what kind of failure it was.
        # The backend's URL without its credentials, if it has any.
        err = XRoadError.server_proxy(code, message)
        backend = str(self._base.with_user(None))
        log.warning("adapter.failed", detail=err.detail, backend=backend, error=loggable_error(exc))
        return err

    async def close(self) -> None:
        if self._own:
            self._backends.close()
