"""How the SOAP adapters POST to the agency system: through the node's backend pools."""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from xroad_hub.streams import BodyTooLarge

from .backend import BackendPool, UnsafeRequest

__all__ = ["UpstreamError", "basic_auth", "post", "target_of"]


class UpstreamError(Exception):
    """The agency system could not be used. ``message`` is safe to show a foreign client;
    ``cause`` (addresses, library messages) belongs only in this node's log."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


def basic_auth(url: URL) -> tuple[str, str] | None:
    """The Authorization header for credentials in the URL (http://user:password@host/...),
    sent with each request as aiohttp sent them; None when there are none."""
    if url.raw_user is None and url.raw_password is None:
        return None
    login, password = url.user or "", url.password or ""
    # Latin-1, as aiohttp's session encoded them for these adapters: a legacy service that
    # took "pä" so before would answer 401 to its UTF-8 bytes. Credentials Latin-1 cannot
    # encode (aiohttp failed the request on them) go as UTF-8.
    try:
        value = aiohttp.encode_basic_auth(login, password, "latin-1")
    except UnicodeEncodeError:
        value = aiohttp.encode_basic_auth(login, password, "utf-8")
    return ("Authorization", value)


def target_of(url: URL) -> str:
    """The request target: the URL's raw path and query, its fragment left out."""
    return url.raw_path_qs or "/"


async def post(
    pool: BackendPool,
    target: str,
    data: bytes,
    headers: Iterable[tuple[str, str]],
    *,
    total: float,
    connect: float,
    max_bytes: int,
    default_accept: bool = True,
) -> tuple[int, str | None, bytes]:
    """POST one message, no redirects followed (SOAP has none; following one would send the
    message elsewhere), the answer decoded (gzip, deflate) and read up to ``max_bytes`` of
    decoded bytes: status, Content-Type and body, or UpstreamError."""
    try:
        status, answer_headers, body = await pool.request(
            "POST",
            target,
            headers,
            data,
            total=total,
            connect=connect,
            max_bytes=max_bytes,
            decompress=True,
            default_accept=default_accept,
            redirect_body=False,
        )
    except BodyTooLarge as exc:
        raise UpstreamError(f"the service's answer exceeds {max_bytes} bytes", exc) from exc
    except TimeoutError as exc:
        raise UpstreamError("the service did not answer in time", exc) from exc
    except UnsafeRequest as exc:
        # The node refuses such requests before any adapter runs; an adapter used alone
        # refuses them here, before anything is sent.
        raise UpstreamError("the request cannot be sent as it is", exc) from exc
    except (aiohttp.ClientError, HttpProcessingError) as exc:
        raise UpstreamError("cannot reach the service", exc) from exc
    if 300 <= status < 400:
        raise UpstreamError(f"the service answered a redirect ({status})")
    content_type = None
    for name, value in answer_headers:
        if name.lower() == "content-type":
            content_type = value  # aiohttp's resp.headers.get gave the first one
            break
    return status, content_type, body
