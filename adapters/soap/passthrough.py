"""SOAP pass-through: the provider's system already speaks X-Road SOAP 4.0, so the client's
message goes to it unchanged and its answer comes back unchanged.

Only Content-Type travels to the service, with a SOAPAction set here from the service's
WSDL (the operation's soapAction, quoted; X-Road forwards the client's, which would let a
client pick the operation a SOAPAction-dispatching stack runs), and only Content-Type
travels back (credentials in the service's URL go as its Authorization; an answer the service
compressed all the same comes back decoded, as its Content-Encoding stays behind). The bodies
are bytes, never parsed or re-serialised here, so multipart attachments and signatures inside
the XML stay byte-exact. (The node has already checked the request, refusing anything other
readers could read differently, and checks the answer's header before signing it.)
"""

from __future__ import annotations

import structlog
from yarl import URL

from xroad_hub.errors import XRoadError
from xroad_hub.logs import loggable_error

from ..backend import Backends
from ..base import AdapterRequest, AdapterResponse
from ..http import UpstreamError, basic_auth, post, target_of

__all__ = ["SoapPassthroughAdapter"]

log = structlog.get_logger("xroad_hub.adapters.soap")


class SoapPassthroughAdapter:
    def __init__(
        self,
        url: str,
        *,
        soap_action: str = "",
        timeout: float = 30.0,
        max_response_bytes: int = 64 * 1024 * 1024,
        backends: Backends | None = None,
    ) -> None:
        """``backends``: the node's pools (the node closes them), otherwise the adapter's own
        (``close`` closes them)."""
        self._url = URL(url)
        if self._url.scheme not in ("http", "https") or not self._url.host:
            raise ValueError(f"SOAP service URL must be http(s)://host[:port][/path]: {url}")
        self._soap_action = f'"{soap_action}"'
        self._timeout = timeout
        self._connect_timeout = min(timeout, 10.0)
        self._max = max_response_bytes
        self._own = backends is None
        self._backends = Backends(limit=64) if backends is None else backends
        self._pool = self._backends.pool(self._url)
        self._target = target_of(self._url)
        self._auth = basic_auth(self._url)

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        headers = [(k, v) for k, v in request.headers if k.lower() == "content-type"]
        if request.soap is not None and not headers:
            headers.append(("Content-Type", request.soap.content_type))
        headers.append(("SOAPAction", self._soap_action))
        if self._auth is not None:
            headers.append(self._auth)
        try:
            status, content_type, body = await post(
                self._pool,
                self._target,
                request.body,
                headers,
                total=self._timeout,
                connect=self._connect_timeout,
                max_bytes=self._max,
                # Nothing of ours travels: no User-Agent, Accept or Accept-Encoding (an
                # answer compressed all the same is decoded: only Content-Type goes back).
                default_accept=False,
            )
        except UpstreamError as exc:
            raise self._failed(exc.message, exc.cause) from exc
        out = (("Content-Type", content_type),) if content_type is not None else ()
        return AdapterResponse(status, out, body)

    def _failed(self, message: str, exc: BaseException | None) -> XRoadError:
        err = XRoadError.server_proxy("ServiceFailed", f"SOAP service: {message}")
        log.warning(
            "adapter.soap_passthrough.failed",
            detail=err.detail,
            endpoint=str(self._url),
            error=loggable_error(exc) if exc is not None else message,
        )
        return err

    async def close(self) -> None:
        if self._own:
            self._backends.close()
