"""Item 7 of issue 10: path segments that some backend reads as '.' or '..', and headers
that are not the client's to send, never reach the service; both nodes check."""

from __future__ import annotations

import uuid

import aiohttp
import orjson
import pytest

from xroad_hub.protocol.message import decode_envelope

from .conftest import ECHO_SEEN, Fed
from .test_e2e_security import DEV, ECHO, _signed_from_client_node, raw_http

DGA = "TH/GOV/DGA/hub1"

# Each is a dot segment, or a separator, in the reading of some server: Tomcat and Jetty
# strip ";params" (`..;`), some decode twice, some fold full-width characters (NFKC).
FORMS = [
    "..;",
    "..;jsessionid=1",
    "%2e%2e;",
    "%2E%2E%3B",
    "..%3b",
    ".%2e%3bx",
    "%252e%252e",
    "%252E%252E%253B",
    "%EF%BC%8E%EF%BC%8E",  # U+FF0E FULLWIDTH FULL STOP, twice
    "%25EF%25BC%258E%25EF%25BC%258E",
    "%E2%80%A5",  # U+2025 TWO DOT LEADER: NFKC ".."
    "...",
    "..%20",
    "..%09",
    "%c0%ae%c0%ae",  # overlong UTF-8 '.', read as '.' by old decoders
    "a%252fb",
    "a%255cb",
    "a%2500",
    "a%EF%BC%8Fb",  # U+FF0F FULLWIDTH SOLIDUS: NFKC "/"
]


def _reached(marker: str) -> bool:
    return any(marker in path for path, _ in ECHO_SEEN)


@pytest.mark.parametrize("form", FORMS)
async def test_traversal_forms_are_refused_by_the_client_node(
    fed: Fed, http: aiohttp.ClientSession, form: str
) -> None:
    marker = "m" + uuid.uuid4().hex
    target = f"{ECHO}/{marker}/{form}/admin"
    status, headers, payload = await raw_http(fed.url(DGA), f"GET {target} HTTP/1.1", DEV)
    assert (status, headers["X-Road-Error"]) == (400, "Client.BadRequest"), payload
    message = orjson.loads(payload)["message"]
    assert "path" in message
    assert not _reached(marker)
    # The node keeps serving, and an ordinary path still reaches the service.
    async with http.get(fed.url(DGA) + f"{ECHO}/{marker}/ok", headers=DEV) as r:
        assert r.status == 200
    assert _reached(marker)


@pytest.mark.parametrize("form", FORMS)
async def test_the_provider_node_rechecks_traversal_forms(fed: Fed, form: str) -> None:
    """A client node that let one through (broken, or another organisation's) is refused."""
    marker = "m" + uuid.uuid4().hex
    reply = await _signed_from_client_node(fed, path=f"/{marker}/{form}/admin")
    assert reply.status == 500
    assert orjson.loads(reply.body)["type"] == "Server.ServerProxy.InvalidMessage"
    assert not _reached(marker)


# Not the client's data: its credentials and cookies, and what proxies assert about origin
# and identity (a backend behind its own proxy trusts them).
STRIPPED = {
    "X-Forwarded-For": "10.0.0.1",
    "X-Forwarded-Host": "admin.internal",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Prefix": "/admin",
    "Forwarded": "for=10.0.0.1;host=admin.internal",
    "X-Real-IP": "10.0.0.1",
    "X-Original-URL": "/admin",
    "X-HTTP-Method-Override": "DELETE",
    "X-SSL-Client-S-DN": "CN=admin",
    "Cookie": "session=stolen",
    "Authorization": "Basic YWRtaW46YWRtaW4=",
    "Origin": "https://evil.example",
    "True-Client-IP": "10.0.0.1",
}


def _names(headers: list[list[str]]) -> set[str]:
    return {k.lower() for k, _ in headers}


@pytest.mark.parametrize("client", ["TH/GOV/DGA/devportal", "TH/GOV/DGA/officeapp"])
async def test_forwarding_headers_cookies_and_credentials_never_reach_the_service(
    fed: Fed, http: aiohttp.ClientSession, client: str
) -> None:
    """For http and mtls clients alike (the jwt client's token is the node's own)."""
    if client.endswith("officeapp"):
        url, ssl = fed.url(DGA, "client_tls"), fed.client_ssl(client)
    else:
        url, ssl = fed.url(DGA), None
    headers = {"X-Road-Client": client, **STRIPPED, "X-Custom": "kept", "Accept-Language": "th"}
    async with http.get(url + ECHO, headers=headers, ssl=ssl) as r:
        assert r.status == 200, await r.text()
        echo = await r.json()
    seen = _names(echo["headers"])
    assert not seen & {k.lower() for k in STRIPPED}
    assert {"x-custom", "accept-language"} <= seen


async def test_the_provider_node_strips_them_too(fed: Fed) -> None:
    reply = await _signed_from_client_node(
        fed, headers=[[k, v] for k, v in STRIPPED.items()] + [["X-Fine", "yes"]]
    )
    assert reply.status == 200
    seen = orjson.loads(decode_envelope(reply.body).body)["headers"]
    assert not _names(seen) & {k.lower() for k in STRIPPED}
    assert ["X-Fine", "yes"] in seen
