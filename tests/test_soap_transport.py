"""The SOAP adapters' leg to the service, on the node's backend pools: what is sent, compressed
answers decoded within the size cap (a zip bomb refused), refused redirects, timeouts and
kept-alive connections reused across calls and shared between adapters."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import ssl
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import zeep
from aiohttp import web
from yarl import URL

from adapters.backend import BackendPool, Backends, _Inflater
from adapters.base import AdapterRequest
from adapters.soap import (
    SoapBridgeAdapter,
    SoapPassthroughAdapter,
    WsdlInfo,
    fetch_wsdl,
    load_wsdl,
    zeep_client,
)
from xroad_hub.errors import XRoadError
from xroad_hub.streams import BodyTooLarge

from .conftest import kinds_server
from .soap_legacy import LEGACY_NS, LegacyServer, legacy_server
from .test_rest_adapter import _tls_material

JSON = (("Content-Type", "application/json"),)
CITIZEN = "1101700203451"
XML = (("Content-Type", "text/xml"),)
# Megabytes of one byte repeated: a few KiB once compressed.
BOMB_PLAIN = b"<x>" + b"a" * (8 * 2**20) + b"</x>"


def _deflate(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, 9),
    "deflate": lambda data: _deflate(data, zlib.MAX_WBITS),  # zlib-wrapped, per the RFC
    "rawdeflate": lambda data: _deflate(data, -zlib.MAX_WBITS),  # as some servers send it
    "twomembers": lambda data: gzip.compress(data[:100]) + gzip.compress(data[100:]),
}


@pytest.fixture(scope="module")
def legacy() -> Iterator[LegacyServer]:
    with legacy_server() as server:
        yield server


@pytest.fixture(scope="module")
async def info_client(legacy: LegacyServer) -> tuple[WsdlInfo, zeep.Client]:
    wsdl = await fetch_wsdl(legacy.wsdl_url, timeout=10)
    return load_wsdl(wsdl, legacy.wsdl_url), zeep_client(wsdl)


_FORWARD = ("Content-Type", "SOAPAction")


class Front:
    """In front of the legacy service: its answers compressed, bombs, redirects, stalls;
    and which connections the requests came on."""

    def __init__(self, legacy_url: str) -> None:
        self.legacy_url = legacy_url
        self.peers: list[object] = []
        self.heads: list[list[tuple[str, str]]] = []
        self.release = asyncio.Event()
        self.url = ""

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        self.heads.append(list(request.headers.items()))
        body = await request.read()
        kind = request.match_info["kind"]
        if kind == "slow":
            await self.release.wait()
        if kind == "moved":
            raise web.HTTPMovedPermanently("/plain")
        if kind == "echo":  # the pass-through's service: the request comes back
            answer, content_type = body, request.headers.get("Content-Type", "text/xml")
        else:
            forward = {k: v for k, v in request.headers.items() if k in _FORWARD}
            async with (
                aiohttp.ClientSession() as session,
                session.post(self.legacy_url, data=body, headers=forward) as resp,
            ):
                answer, content_type = await resp.read(), resp.headers["Content-Type"]
        headers = {"Content-Type": content_type}
        if kind == "bomb":
            headers["Content-Encoding"] = "gzip"
            answer = gzip.compress(BOMB_PLAIN, 9)
        elif kind == "broken":
            headers["Content-Encoding"] = "gzip"
            answer = gzip.compress(answer)[:-20]  # cut short
        elif kind == "brotli":
            headers["Content-Encoding"] = "br"
        elif kind in ENCODERS:
            headers["Content-Encoding"] = "gzip" if kind == "twomembers" else kind
            if kind == "rawdeflate":
                headers["Content-Encoding"] = "deflate"
            answer = ENCODERS[kind](answer)
        return web.Response(body=answer, headers=headers)


@pytest.fixture(scope="module")
async def front(
    legacy: LegacyServer, info_client: tuple[WsdlInfo, zeep.Client]
) -> AsyncIterator[Front]:
    info = info_client[0]
    assert info.endpoint is not None
    server = Front(info.endpoint)
    async with kinds_server(server.handler) as server.url:
        yield server
        server.release.set()


def _bridge(info_client: tuple[WsdlInfo, zeep.Client], url: str, **kw: object) -> SoapBridgeAdapter:
    info, client = info_client
    return SoapBridgeAdapter(info, client, operation="getPerson", endpoint_url=url, **kw)  # type: ignore[arg-type]


def _rest() -> AdapterRequest:
    return AdapterRequest("GET", "", f"citizenId={CITIZEN}", JSON, b"")


async def _bridged(info_client: tuple[WsdlInfo, zeep.Client], url: str, **kw: object) -> object:
    adapter = _bridge(info_client, url, **kw)
    try:
        answer = await adapter.handle(_rest())
    finally:
        await adapter.close()
    return answer


@pytest.mark.parametrize("kind", ["plain", "gzip", "deflate", "rawdeflate", "twomembers"])
async def test_bridge_decodes_compressed_answers(info_client, front: Front, kind: str) -> None:
    answer = await _bridged(info_client, f"{front.url}/{kind}")
    assert answer.status == 200  # type: ignore[attr-defined]
    assert CITIZEN.encode() in answer.body  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("bomb", "exceeds 100000 bytes"),
        ("broken", "cannot reach the service"),
        ("brotli", "cannot reach the service"),
        ("moved", "answered a redirect (301)"),
        ("slow", "did not answer in time"),
    ],
)
async def test_bridge_unusable_answers(info_client, front: Front, kind: str, reason: str) -> None:
    timeout = 0.3 if kind == "slow" else 10.0
    with pytest.raises(XRoadError) as failure:
        await _bridged(
            info_client, f"{front.url}/{kind}", timeout=timeout, max_response_bytes=100_000
        )
    assert failure.value.code == "Server.ServerProxy.ServiceFailed"
    assert reason in failure.value.message


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("bomb", "exceeds 100000 bytes"),
        ("moved", "answered a redirect (301)"),
        ("slow", "did not answer in time"),
    ],
)
async def test_passthrough_unusable_answers(front: Front, kind: str, reason: str) -> None:
    timeout = 0.3 if kind == "slow" else 10.0
    failure = await _passthrough_failure(
        f"{front.url}/{kind}", timeout=timeout, max_response_bytes=100_000
    )
    assert failure.code == "Server.ServerProxy.ServiceFailed"
    assert reason in failure.message


async def _passthrough_failure(url: str, **options: Any) -> XRoadError:
    """What a pass-through adapter of ``url`` raises for one request (it must raise)."""
    adapter = SoapPassthroughAdapter(url, **options)
    try:
        with pytest.raises(XRoadError) as failure:
            await adapter.handle(AdapterRequest("POST", "", "", XML, b"<x/>"))
    finally:
        await adapter.close()
    return failure.value


async def test_passthrough_decodes_a_compressed_answer(front: Front) -> None:
    # Only Content-Type goes back: a body left compressed would be unreadable to the client.
    adapter = SoapPassthroughAdapter(f"{front.url}/gzip", timeout=10)
    try:
        answer = await adapter.handle(AdapterRequest("POST", "", "", XML, _envelope_request()))
    finally:
        await adapter.close()
    assert answer.status == 200
    assert answer.body.startswith(b"<") and CITIZEN.encode() in answer.body
    assert [name for name, _ in answer.headers] == ["Content-Type"]


def _envelope_request() -> bytes:
    return (
        '<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
        f'<getPerson xmlns="{LEGACY_NS}"><citizenId>'
        f"{CITIZEN}</citizenId></getPerson></e:Body></e:Envelope>"
    ).encode()


async def test_connections_are_reused_and_shared(info_client, front: Front) -> None:
    # Both SOAP adapters of one service origin, on the node's pools: one kept-alive
    # connection carries every call, whichever adapter makes it.
    backends = Backends()
    bridge = _bridge(info_client, f"{front.url}/gzip", backends=backends)
    passthrough = SoapPassthroughAdapter(f"{front.url}/echo", backends=backends)
    del front.peers[:]
    try:
        for _ in range(3):
            assert (await bridge.handle(_rest())).status == 200
            answer = await passthrough.handle(AdapterRequest("POST", "", "", XML, b"<x/>"))
            assert answer.body == b"<x/>"
        await bridge.close()  # the node's pools: left open for the others
        await passthrough.close()
        assert backends.pool(URL(front.url)).idle_count == 1
    finally:
        backends.close()
    assert len(front.peers) == 6 and len(set(front.peers)) == 1


async def test_what_the_bridge_sends(info_client, front: Front) -> None:
    del front.heads[:]
    await _bridged(info_client, f"{front.url.replace('//', '//svc:pa%20ss@')}/plain?x=1")
    names = [name.lower() for name, _ in front.heads[0]]
    sent = {name.lower(): value for name, value in front.heads[0]}
    assert sorted(names) == sorted(
        [
            "host",
            "content-type",
            "soapaction",
            "accept",
            "accept-encoding",
            "authorization",
            "content-length",
        ]
    )
    assert sent["content-type"] == "text/xml; charset=utf-8"
    assert sent["soapaction"] == '"getPerson"'
    assert sent["accept-encoding"] == "gzip, deflate"
    assert sent["authorization"] == "Basic " + base64.b64encode(b"svc:pa ss").decode()


# --- the pool's decoding itself ------------------------------------------------------------


def test_inflating_never_goes_past_what_is_asked() -> None:
    bomb = gzip.compress(BOMB_PLAIN, 9)
    assert len(bomb) < 16 * 1024
    inflater = _Inflater(gzip=True)
    assert len(inflater.inflate(bomb, 1001)) == 1001
    assert inflater.pending


RawServer = Callable[[bytes], Awaitable[str]]


@pytest.fixture
def raw_answer(raw_server: Callable[..., Awaitable[str]]) -> RawServer:
    """A server answering every connection's first request with the bytes given."""

    async def start(answer: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        return await raw_server(handle)

    return start


async def _decoded(raw_answer: RawServer, answer: bytes, max_bytes: int) -> tuple[int, bytes]:
    """A POST answered with ``answer`` (raw HTTP), decoded by a pool of its own: the
    status and the body."""
    pool = BackendPool(URL(await raw_answer(answer)))
    try:
        status, _, data = await pool.request(
            "POST", "/", (), b"x", total=10, connect=5, max_bytes=max_bytes, decompress=True
        )
    finally:
        pool.close()
    return status, data


async def test_a_zip_bomb_is_refused_without_inflating_it(raw_answer: RawServer) -> None:
    plain = bytes(256 * 2**20)  # 256 MiB of zeros: about 250 KiB as gzip
    bomb = gzip.compress(plain, 9)
    del plain
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
    pool = BackendPool(URL(await raw_answer(head.encode() + bomb)))
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            await pool.request(
                "POST", "/", (), b"x", total=10, connect=5, max_bytes=2**20, decompress=True
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pool.close()
    assert peak < 8 * 2**20  # the cap and a read buffer or two, not the bomb


async def test_without_decompress_the_answer_stays_compressed(raw_answer: RawServer) -> None:
    body = gzip.compress(b"hello")
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    url = await raw_answer(head.encode() + body)
    pool = BackendPool(URL(url))
    try:
        status, headers, data = await pool.request(
            "GET", "/", (), b"", total=10, connect=5, max_bytes=100
        )
    finally:
        pool.close()
    assert (status, data) == (200, body)
    assert ("Content-Encoding", "gzip") in headers


async def test_an_empty_compressed_answer_is_empty(raw_answer: RawServer) -> None:
    head = b"HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\n\r\n"
    assert await _decoded(raw_answer, head, 100) == (204, b"")


async def test_decoded_size_exactly_at_the_cap_is_accepted(raw_answer: RawServer) -> None:
    body = gzip.compress(b"y" * 5000)
    head = (
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    url = await raw_answer(head.encode() + body)
    pool = BackendPool(URL(url))
    try:
        _, _, data = await pool.request(
            "POST", "/", (), b"x", total=10, connect=5, max_bytes=5000, decompress=True
        )
        with pytest.raises(BodyTooLarge):
            await pool.request(
                "POST", "/", (), b"x", total=10, connect=5, max_bytes=4999, decompress=True
            )
    finally:
        pool.close()
    assert data == b"y" * 5000


async def test_https_service_verified_with_the_system_cas(tmp_path, monkeypatch) -> None:
    # As with the node's aiohttp session before: https with the default context (system CAs,
    # host name checked). The test's CA stands in for the system's.
    import adapters.backend

    ca, server, _, _ = _tls_material(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(f"{server}.pem", f"{server}.key")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="text/xml")

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/svc"
    try:
        # Not trusted: refused, nothing sent.
        monkeypatch.setattr(adapters.backend, "_default_tls", ssl.create_default_context())
        adapter = SoapPassthroughAdapter(url, timeout=10)
        try:
            with pytest.raises(XRoadError, match="cannot reach the service"):
                await adapter.handle(AdapterRequest("POST", "", "", XML, b"<x/>"))
        finally:
            await adapter.close()
        trusting = ssl.create_default_context(cafile=ca)
        monkeypatch.setattr(adapters.backend, "_default_tls", trusting)
        adapter = SoapPassthroughAdapter(url, timeout=10)
        try:
            answer = await adapter.handle(AdapterRequest("POST", "", "", XML, b"<x/>"))
        finally:
            await adapter.close()
        assert (answer.status, answer.body) == (200, b"<x/>")
    finally:
        await runner.cleanup()


# --- review: hostile compressed answers -----------------------------------------------------

EMPTY_MEMBER = gzip.compress(b"")  # 20 bytes that decode to nothing


async def test_endless_empty_gzip_members_are_refused_early(raw_answer: RawServer) -> None:
    # Members that decode to nothing never reach the decoded-size cap: without a limit on their
    # number, 64 MiB of them were read and decoded (seconds of CPU, the event loop held up to
    # half a second per chunk), where aiohttp before refused past 1024 in a chunk.
    members = EMPTY_MEMBER * (8 * 2**20 // len(EMPTY_MEMBER))
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(members)}\r\n\r\n"
    with pytest.raises(aiohttp.ClientPayloadError, match="more than 1024 gzip members"):
        await _decoded(raw_answer, head.encode() + members, 1000)


async def test_gzip_members_up_to_the_limit_are_decoded(raw_answer: RawServer) -> None:
    body = gzip.compress(b"<x>") + EMPTY_MEMBER * 1022 + gzip.compress(b"</x>")
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    _, data = await _decoded(raw_answer, head.encode() + body, 1000)
    assert data == b"<x></x>"


def test_many_members_in_one_chunk_cost_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # zlib copies all input past a member's end: the rest of a 2 MiB chunk at each of its
    # 100,000 ends took seconds (quadratic); slices keep it to a fraction of that.
    import time

    import adapters.backend

    monkeypatch.setattr(adapters.backend, "_MAX_MEMBERS", 10**9)
    chunk = EMPTY_MEMBER * (2 * 2**20 // len(EMPTY_MEMBER))
    inflater = _Inflater(gzip=True)
    started = time.process_time()
    assert inflater.inflate(chunk, 1001) == b""
    assert time.process_time() - started < 1.5
    assert inflater.finished and not inflater.pending


async def test_too_many_members_fail_the_soap_call_as_a_broken_answer(
    raw_answer: RawServer,
) -> None:
    members = EMPTY_MEMBER * 2000
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(members)}\r\n\r\n"
    )
    failure = await _passthrough_failure(await raw_answer(head.encode() + members), timeout=10)
    assert failure.code == "Server.ServerProxy.ServiceFailed"
    assert "cannot reach the service" in failure.message


@pytest.mark.parametrize(
    "fields",
    [
        ("identity", "gzip"),  # the first alone said identity: the gzip body went on as XML
        ("gzip", "identity"),
        ("identity, GZip ",),
        (" x-gzip",),
    ],
)
async def test_every_content_encoding_field_counts(raw_answer: RawServer, fields) -> None:
    body = gzip.compress(b"<x/>")
    codings = "".join(f"Content-Encoding: {f}\r\n" for f in fields)
    head = f"HTTP/1.1 200 OK\r\n{codings}Content-Length: {len(body)}\r\n\r\n"
    _, data = await _decoded(raw_answer, head.encode() + body, 1000)
    assert data == b"<x/>"


@pytest.mark.parametrize("fields", [("gzip", "gzip"), ("gzip, gzip",), ("gzip", "br")])
async def test_codings_one_after_another_are_refused(raw_answer: RawServer, fields) -> None:
    # A twice-gzipped body decoded once would go on as XML (aiohttp, by the last field, did so).
    body = gzip.compress(gzip.compress(b"<x/>"))
    codings = "".join(f"Content-Encoding: {f}\r\n" for f in fields)
    head = f"HTTP/1.1 200 OK\r\n{codings}Content-Length: {len(body)}\r\n\r\n"
    with pytest.raises(aiohttp.ClientPayloadError, match="unsupported Content-Encoding"):
        await _decoded(raw_answer, head.encode() + body, 1000)


@pytest.mark.parametrize(
    "body",
    [
        b"",  # the body never comes: the call waited for it until its timeout
        b"not gzip at all",  # a broken body: "cannot reach the service"
        gzip.compress(bytes(2 * 2**20)),  # past the cap once decoded: "exceeds"
    ],
)
async def test_a_redirect_fails_as_a_redirect_whatever_its_body(body: bytes) -> None:
    # As before (aiohttp's session returned at the head): the redirect is the reason given,
    # its body unread, and a connection left with some of it unread is not used again.
    peers: list[object] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(4)
                writer.write(
                    b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Encoding: gzip\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (max(len(body), 100), body)
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/svc"
    adapter = SoapPassthroughAdapter(url, timeout=1.0, max_response_bytes=100_000)
    try:
        for _ in range(2):
            with pytest.raises(XRoadError) as failure:
                await adapter.handle(AdapterRequest("POST", "", "", XML, b"<x/>"))
            assert failure.value.code == "Server.ServerProxy.ServiceFailed"
            assert "the service answered a redirect (302)" in failure.value.message
    finally:
        await adapter.close()
        server.close()
        await server.wait_closed()
    complete = len(body) >= 100  # all of it came with the head: the connection is clean
    assert len(set(peers)) == (1 if complete else 2)


@pytest.mark.parametrize(
    ("userinfo", "credentials"),
    [
        ("svc:p%C3%A4ss", "svc:päss".encode("latin-1")),  # as aiohttp's session sent them
        ("svc:%E2%82%AC", "svc:€".encode()),  # not Latin-1: UTF-8 (aiohttp failed the call)
    ],
)
async def test_url_credentials_are_encoded_as_before(
    raw_answer: RawServer, userinfo: str, credentials: bytes
) -> None:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 4\r\n\r\n<x/>")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = SoapPassthroughAdapter(f"http://{userinfo}@127.0.0.1:{port}/svc", timeout=5)
    try:
        await adapter.handle(AdapterRequest("POST", "", "", XML, b"<x/>"))
    finally:
        await adapter.close()
        server.close()
        await server.wait_closed()
    expected = b"Authorization: Basic " + base64.b64encode(credentials) + b"\r\n"
    assert expected in heads[0]
