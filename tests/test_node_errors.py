"""The node's error boundary (runtime.x_road_errors): handlers raise, the listener's
middleware decides the blame and answers in the route's form; the node serves on."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree
from structlog.testing import LogCapture

from xroad_hub.errors import CLIENT_PROXY, SERVER_PROXY, ProtocolError, XRoadError
from xroad_hub.node import runtime
from xroad_hub.node.runtime import JSON_ERRORS, SOAP_FAULTS, x_road_errors

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


@contextmanager
def _captured() -> Iterator[list[dict[str, Any]]]:
    """The node's structlog events at every level while the block runs (its logger caches
    its configuration on first use: forgotten here and after, as test_oplog_privacy does)."""
    capture = LogCapture()
    saved = structlog.get_config()
    structlog.configure(
        processors=[capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    vars(runtime.log).pop("bind", None)
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)
        vars(runtime.log).pop("bind", None)


async def _bad_xml(request: web.Request) -> web.StreamResponse:
    raise ProtocolError("InvalidXml", "the document is not well formed")


async def _bug(request: web.Request) -> web.StreamResponse:
    raise KeyError("a bug of the node, not of its caller")


async def _busy(request: web.Request) -> web.StreamResponse:
    raise XRoadError(f"{CLIENT_PROXY}.TooManyRequests", "over the client's share", status=429)


async def _soap(request: web.Request) -> web.StreamResponse:
    raise ProtocolError("InvalidSoap", "no SOAP body")


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text="fine")


@pytest.fixture
async def client_side() -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application(
        middlewares=[x_road_errors("client", CLIENT_PROXY, forms={_soap: SOAP_FAULTS})]
    )
    app.router.add_get("/r1/bad", _bad_xml)
    app.router.add_get("/r1/bug", _bug)
    app.router.add_get("/r1/busy", _busy)
    app.router.add_get("/r1/ok", _ok)
    app.router.add_post("/soap", _soap)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


@pytest.fixture
async def provider_side() -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application(middlewares=[x_road_errors("provider", SERVER_PROXY, form=JSON_ERRORS)])
    app.router.add_post("/peer", _bad_xml)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def test_a_protocol_error_is_the_callers_fault_on_the_client_side(
    client_side: TestClient[Any, Any],
) -> None:
    async with client_side.get("/r1/bad") as resp:
        assert resp.status == 400 and resp.headers["X-Road-Error"] == "Client.InvalidXml"
        doc = orjson.loads(await resp.read())
    assert (
        doc["type"] == "Client.InvalidXml" and doc["message"] == "the document is not well formed"
    )
    async with client_side.get("/r1/bad", headers={"Accept": "application/xml"}) as resp:
        assert resp.content_type.endswith("xml")
        assert etree.fromstring(await resp.read()).findtext("type") == "Client.InvalidXml"
    async with client_side.get("/r1/ok") as resp:  # the node serves on
        assert resp.status == 200 and await resp.text() == "fine"


async def test_a_protocol_error_is_the_client_nodes_fault_on_the_provider_side(
    provider_side: TestClient[Any, Any],
) -> None:
    # JSON whatever the caller asks: the client node always reads X-Road errors so.
    async with provider_side.post("/peer", headers={"Accept": "text/xml"}) as resp:
        assert resp.status == 500
        doc = orjson.loads(await resp.read())
    assert doc["type"] == "Server.ServerProxy.InvalidXml"


async def test_soap_routes_answer_with_faults(client_side: TestClient[Any, Any]) -> None:
    async with client_side.post("/soap") as resp:
        assert resp.status == 500 and resp.content_type == "text/xml"
        assert resp.headers["X-Road-Error"] == "Client.InvalidSoap"
        fault = etree.fromstring(await resp.read()).find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    assert fault is not None and fault.findtext("faultcode") == "Client.InvalidSoap"


async def test_a_bug_is_the_nodes_own_internal_error_and_tells_nothing(
    client_side: TestClient[Any, Any],
) -> None:
    with _captured() as logs:
        async with client_side.get("/r1/bug") as resp:
            assert resp.status == 500
            body = await resp.read()
    assert orjson.loads(body)["type"] == "Server.ClientProxy.InternalError"
    assert b"a bug of the node" not in body
    assert [e["event"] for e in logs] == ["exchange.internal_error"]


async def test_too_many_requests_says_when_to_retry(client_side: TestClient[Any, Any]) -> None:
    async with client_side.get("/r1/busy") as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "1"


async def test_aiohttps_own_answers_pass_unchanged(
    client_side: TestClient[Any, Any], provider_side: TestClient[Any, Any]
) -> None:
    """No route, or a method the route does not take: HTTP's answer, not an X-Road
    InternalError (the middleware sees aiohttp's HTTPException too)."""
    with _captured() as logs:
        async with client_side.get("/elsewhere") as resp:
            assert resp.status == 404 and "X-Road-Error" not in resp.headers
        async with provider_side.get("/peer") as resp:
            assert resp.status == 405 and "POST" in resp.headers["Allow"]
    assert logs == []


async def test_a_refusal_is_logged_with_the_route_shape_only(
    client_side: TestClient[Any, Any],
) -> None:
    with _captured() as logs:
        async with client_side.get("/r1/bad"):
            pass
    [event] = logs
    assert event["event"] == "exchange.refused" and event["code"] == "Client.InvalidXml"
    assert event["side"] == "client" and event["protocol"] == "rest" and event["route"]
