"""The REST adapter's leg to the backend, against real servers: what is sent, how answers of
every framing are read, keep-alive, timeouts, size caps and the X-Road errors of failures."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from adapters import AdapterRequest, RestAdapter
from adapters.backend import Backends
from xroad_hub.errors import XRoadError
from xroad_hub.pki import generate_key, issue_cert, make_root_ca, write_cert, write_key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def _req(method: str = "GET", path: str = "", query: str = "", headers=(), body=b""):
    return AdapterRequest(method, path, query, tuple(headers), body)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def _bytes_until_closed(reader: asyncio.StreamReader) -> int:
    """How much more the client sends before the connection ends (closed or reset)."""
    size = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(2**20):
            size += len(chunk)
    return size


async def _heads(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The request heads a connection brings, until the client closes it."""
    while True:
        try:
            yield await _read_head(reader)
        except asyncio.IncompleteReadError:
            return


async def _call(url: str, request: AdapterRequest, **kw: object):
    adapter = RestAdapter(url, **kw)  # type: ignore[arg-type]
    try:
        return await adapter.handle(request)
    finally:
        await adapter.close()


async def test_cookie_from_one_answer_is_not_sent_with_the_next(serve) -> None:
    # Two clients' exchanges with one backend: what the backend set for the first must not
    # come back to it with the second (a session of one client used by another).
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        resp = web.Response(text="ok")
        resp.set_cookie("session", "client-a")
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    # By name: aiohttp's cookie jar keeps no cookies of IP addresses.
    adapter = RestAdapter((await serve(app)).replace("127.0.0.1", "localhost"))
    try:
        for _ in range(2):
            assert (await adapter.handle(_req(path="/x"))).status == 200
    finally:
        await adapter.close()
    assert seen == [None, None]


async def test_request_goes_out_as_the_adapter_sent_it(raw_server) -> None:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for head in _heads(reader):
            length = next(
                (
                    int(line[15:])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            body = await reader.readexactly(length)
            heads.append(head + body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    url = await raw_server(handle) + "/base"
    await _call(url, _req("GET", "/a%20b/c", "x=1&x=%26", [("X-Custom", "v1"), ("x-two", "v2")]))
    await _call(
        url,
        _req(
            "POST",
            "/p",
            "",
            [("Content-Type", "text/plain"), ("Accept", "application/json")],
            b"hello",
        ),
    )
    await _call(url, _req("DELETE", "", ""))
    host = url.split("//")[1].split("/")[0]
    assert heads == [
        f"GET /base/a%20b/c?x=1&x=%26 HTTP/1.1\r\nHost: {host}\r\nX-Custom: v1\r\nx-two: v2\r\n"
        "Accept: */*\r\n\r\n".encode(),
        f"POST /base/p HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
        "Accept: application/json\r\nContent-Length: 5\r\n\r\nhello".encode(),
        f"DELETE /base HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n"
        "Content-Length: 0\r\n\r\n".encode(),
    ]


async def test_chunked_and_content_length_answers_on_one_kept_connection(serve) -> None:
    peers: set[object] = set()

    async def chunked(request: web.Request) -> web.StreamResponse:
        peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        resp = web.StreamResponse(headers={"X-Kind": "chunked"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await resp.write(part)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def sized(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        return web.Response(body=b"x" * 100_000, headers={"X-Kind": "sized"})

    app = web.Application()
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/sized", sized)
    adapter = RestAdapter(await serve(app))
    try:
        for _ in range(3):
            answer = await adapter.handle(_req(path="/chunked"))
            assert (answer.status, answer.body) == (200, b"one,two,three")
            assert ("X-Kind", "chunked") in answer.headers
            assert ("Transfer-Encoding", "chunked") in answer.headers
            answer = await adapter.handle(_req(path="/sized"))
            assert (answer.status, answer.body) == (200, b"x" * 100_000)
            assert ("Content-Length", "100000") in answer.headers
            answer = await adapter.handle(_req("HEAD", "/sized"))  # a length, no body
            assert (answer.status, answer.body) == (200, b"")
            assert ("Content-Length", "100000") in answer.headers
    finally:
        await adapter.close()
    assert len(peers) == 1  # every request on the one kept-alive connection


async def test_answers_without_length_head_and_no_content(raw_server) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_head(reader)
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
        elif b" /empty " in head:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
        else:  # the body runs until the connection closes
            writer.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil ")
            await writer.drain()
            writer.write(b"close")
        await writer.drain()
        if not head.startswith(b"HEAD") and b" /empty " not in head:
            writer.close()
        else:
            await reader.read()  # the client's next request or its close
            writer.close()

    url = await raw_server(handle)
    answer = await _call(url, _req(path="/eof"))
    assert (answer.status, answer.body, answer.headers) == (200, b"until close", (("X-A", "1"),))
    answer = await _call(url, _req("HEAD", "/h"))
    assert (answer.status, answer.body) == (200, b"")
    answer = await _call(url, _req(path="/empty"))
    assert (answer.status, answer.body) == (204, b"")


async def test_backend_closing_kept_alive_connections(raw_server) -> None:
    # The backend answers each connection's first request and drops its second one unread
    # (a keep-alive timeout that struck as the request left): an idempotent request is sent
    # again on a new connection, a POST is not (it may have been acted on).
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await _read_head(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await _read_head(reader)
        writer.close()

    adapter = RestAdapter(await raw_server(handle))
    try:
        for _ in range(3):
            assert (await adapter.handle(_req(path="/g"))).body == b"ok"
        assert served == 3
        with pytest.raises(XRoadError) as err:
            await adapter.handle(_req("POST", "/p", body=b"once"))
        assert err.value.code == "Server.ServerProxy.NetworkError"
        assert served == 3
        # ... and the next POST goes out on a new connection.
        assert (await adapter.handle(_req("POST", "/p", body=b"again"))).body == b"ok"
    finally:
        await adapter.close()


async def test_connection_close_answer_is_not_reused(serve) -> None:
    peers: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        return web.Response(text="bye", headers={"Connection": "close"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    adapter = RestAdapter(await serve(app))
    try:
        for _ in range(3):
            assert (await adapter.handle(_req(path="/c"))).body == b"bye"
    finally:
        await adapter.close()
    assert len(set(peers)) == 3


async def test_timeouts_and_unreachable_backends_are_network_errors(serve, raw_server) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    url = await serve(app)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(XRoadError) as err:
        await _call(url, _req(path="/s"), timeout=0.3)
    assert err.value.code == "Server.ServerProxy.NetworkError"
    assert "in time" in err.value.message
    assert loop.time() - started < 2

    async def silent_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await reader.read()  # until the client gives up
        writer.close()

    with pytest.raises(XRoadError) as err:
        await _call(await raw_server(silent_body), _req(path="/b"), timeout=0.3)
    assert err.value.code == "Server.ServerProxy.NetworkError"
    assert "in time" in err.value.message

    closed = url.rsplit(":", 1)[0] + ":1"  # nothing listens on port 1
    with pytest.raises(XRoadError) as err:
        await _call(closed, _req(path="/x"))
    assert err.value.code == "Server.ServerProxy.NetworkError"
    assert "connect" in err.value.message


async def test_broken_answers_are_service_failures(raw_server) -> None:
    async def answer_with(data: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_head(reader)
            writer.write(data)
            await writer.drain()
            writer.close()

        return await raw_server(handle)

    for data in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",  # cut short
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # cut short
    ):
        with pytest.raises(XRoadError) as err:
            await _call(await answer_with(data), _req(path="/x"))
        assert err.value.code == "Server.ServerProxy.ServiceFailed", data


async def test_compressed_answers_pass_on_compressed(serve) -> None:
    # The client asked for the coding (Accept-Encoding travels as it gave it) and gets the
    # bytes as the backend sent them: the cap counts them, not what they would inflate to.
    plain = b"z" * 100_000
    packed = gzip.compress(plain)
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        return web.Response(body=packed, headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    url = await serve(app)
    answer = await _call(url, _req(path="/x"), max_response_bytes=len(packed))
    assert answer.body == packed
    assert ("Content-Encoding", "gzip") in answer.headers
    answer = await _call(url, _req(path="/x", headers=[("Accept-Encoding", "gzip")]))
    assert answer.body == packed
    assert seen == [None, "gzip"]


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_answers_are_refused(serve, chunked: bool) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = 5000
        await resp.prepare(request)
        for _ in range(5):
            await resp.write(b"y" * 1000)
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", big)
    url = await serve(app)
    with pytest.raises(XRoadError) as err:
        await _call(url, _req(path="/big"), max_response_bytes=4999)
    assert err.value.code == "Server.ServerProxy.ServiceFailed"
    answer = await _call(url, _req(path="/big"), max_response_bytes=5000)
    assert answer.body == b"y" * 5000


async def test_connections_per_backend_are_bounded(serve) -> None:
    in_flight = peak = 0
    peers: set[object] = set()

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    url = await serve(app)
    backends = Backends(limit=2)
    # Two services on one backend share its bound.
    adapters = [RestAdapter(url + "/a", backends=backends), RestAdapter(url, backends=backends)]
    try:
        answers = await asyncio.gather(
            *(adapters[i % 2].handle(_req(path=f"/{i}")) for i in range(8))
        )
    finally:
        backends.close()
    assert [a.body for a in answers] == [b"ok"] * 8
    assert peak == 2
    assert len(peers) == 2


def _tls_material(tmp_path: Path) -> tuple[str, Path, Path, Path]:
    """A CA, the backend's server certificate for 127.0.0.1 and a client certificate."""
    ca_key, ca_cert = make_root_ca("test backend CA")
    write_cert(tmp_path / "ca.pem", ca_cert)
    for name, purpose in (("server", "tls"), ("client", "client-tls")):
        key = generate_key()
        write_key(tmp_path / f"{name}.key", key)
        write_cert(
            tmp_path / f"{name}.pem",
            issue_cert(ca_key, ca_cert, f"{name}.test", key, purpose=purpose),
        )
    return str(tmp_path / "ca.pem"), tmp_path / "server", tmp_path / "client", tmp_path


async def test_https_backend_with_mutual_tls(tmp_path: Path) -> None:
    ca, server, client, _ = _tls_material(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    server_ctx.load_cert_chain(f"{server}.pem", f"{server}.key")
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert")  # type: ignore[union-attr]
        return web.Response(text=dict(x[0] for x in peer["subject"])["commonName"])

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        with_cert = ssl.create_default_context(cafile=ca)
        with_cert.load_cert_chain(f"{client}.pem", f"{client}.key")
        answer = await _call(url, _req(path="/who"), tls=with_cert)
        assert (answer.status, answer.body) == (200, b"client.test")
        # No client certificate, or the system's CAs (which do not know this backend's):
        # the handshake fails, a network error.
        for tls in (ssl.create_default_context(cafile=ca), None):
            with pytest.raises(XRoadError) as err:
                await _call(url, _req(path="/who"), tls=tls)
            assert err.value.code == "Server.ServerProxy.NetworkError"
    finally:
        await runner.cleanup()


async def test_request_splitting_is_refused_before_sending(raw_server) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("nothing may reach the backend")

    url = await raw_server(handle)
    for request in (
        _req(path="/x", query="a=1 HTTP/1.1\r\nX: y"),
        _req(path="/x\r\nX: y"),
    ):
        with pytest.raises(XRoadError) as err:
            await _call(url, request)
        assert err.value.code.startswith("Server.ServerProxy."), request
    for headers in ([("X-A", "1\r\nX-B: 2")], [("X-A", "1\nX-B: 2")], [("X-A", "1\x00")]):
        with pytest.raises(XRoadError) as err:
            await _call(url, _req(path="/x", headers=headers))
        assert err.value.code == "Server.ServerProxy.InvalidMessage"


async def test_waiting_for_a_connection_counts_in_the_timeout(serve) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/hold":
            await release.wait()
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    backends = Backends(limit=1)
    url = await serve(app)
    adapter = RestAdapter(url, timeout=0.3, backends=backends)
    patient = RestAdapter(url, timeout=5, backends=backends)
    try:
        held = asyncio.create_task(patient.handle(_req(path="/hold")))
        await asyncio.sleep(0.05)
        with pytest.raises(XRoadError) as err:  # the one connection is in use
            await adapter.handle(_req(path="/next"))
        assert "in time" in err.value.message
        # A caller's own cancellation stays one, and gives its place up.
        waiting = asyncio.create_task(patient.handle(_req(path="/cancelled")))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        assert (await held).body == b"/hold"
        assert (await adapter.handle(_req(path="/after"))).body == b"/after"
    finally:
        backends.close()


@pytest.mark.parametrize(
    ("userinfo", "credentials"),
    [
        ("svc:p%40ss", b"svc:p@ss"),
        # Latin-1, as aiohttp's session sent them (and as the SOAP adapters send them)
        ("svc:p%C3%A4ss", "svc:päss".encode("latin-1")),
        ("svc:%E2%82%AC", "svc:€".encode()),  # not Latin-1: UTF-8
    ],
)
async def test_credentials_in_the_backend_url_are_sent(
    raw_server, userinfo: str, credentials: bytes
) -> None:
    # A backend behind basic authentication is configured as http://user:password@host/...
    # (clients' own Authorization headers never pass): aiohttp sent those credentials, and
    # the adapter's own pool must too, for that service only, in place of any client's.
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for head in _heads(reader):
            seen.append(
                next(
                    (line for line in head.split(b"\r\n") if line.startswith(b"Authorization")), b""
                )
            )
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    url = await raw_server(handle)
    backends = Backends()
    with_auth = RestAdapter(url.replace("//", f"//{userinfo}@"), backends=backends)
    without = RestAdapter(url, backends=backends)
    try:
        await with_auth.handle(_req(path="/a", headers=[("Authorization", "Bearer client")]))
        await without.handle(_req(path="/b"))
    finally:
        backends.close()
    assert seen == [b"Authorization: Basic " + base64.b64encode(credentials), b""]


async def test_method_and_header_names_that_are_not_tokens_are_refused(raw_server) -> None:
    # Used on its own, the adapter gets whatever its caller gives: a method or a header name
    # that is not an HTTP token would change the request line or the framing a lenient
    # backend reads (``Transfer-Encoding `` next to this client's Content-Length).
    reached: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.append(await reader.read(65536))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        writer.close()

    url = await raw_server(handle)
    for request in (
        _req("GET /admin?", "/x"),
        _req("GÉT", "/x"),
        _req("POST", "/x", headers=[("Transfer-Encoding ", "chunked")], body=b"0\r\n\r\n"),
        _req("GET", "/x", headers=[("X-A: 1, Content-Length", "5")]),
    ):
        with pytest.raises(XRoadError) as err:
            await _call(url, request)
        assert err.value.code == "Server.ServerProxy.InvalidMessage", request
    assert reached == []


async def test_backend_credentials_stay_out_of_the_log(raw_server, oplog) -> None:
    # The failure's log line names the backend; the password in its URL is not the log's.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # no answer: a failure, logged

    url = (await raw_server(handle)).replace("//", "//svc:s3cret@") + "/base"
    with pytest.raises(XRoadError):
        await _call(url, _req(path="/x"))
    failed = [entry for entry in oplog if entry["event"] == "adapter.failed"]
    assert failed and "s3cret" not in repr(failed)
    assert failed[0]["backend"] == url.replace("svc:s3cret@", "")


async def test_bytes_a_backend_sends_on_an_idle_connection_end_it(raw_server) -> None:
    # A backend (or a proxy before it) that writes after its answer, a second answer to the
    # same request begun while the connection was idle: the next request sent there, another
    # client's maybe, would read that answer as its own. The connection is not reused.
    next_request = asyncio.Event()
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        async for head in _heads(reader):
            if b" /first " in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 500 Stale\r\n")  # the rest comes later
                await writer.drain()
                continue
            if first:
                next_request.set()
                writer.write(b"Content-Length: 0\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
            await writer.drain()
        writer.close()

    adapter = RestAdapter(await raw_server(handle))
    try:
        assert (await adapter.handle(_req(path="/first"))).body == b"first"
        await asyncio.sleep(0.15)  # the stray bytes arrive on the idle connection
        answer = await adapter.handle(_req(path="/second"))
        assert (answer.status, answer.body) == (200, b"second")
    finally:
        await adapter.close()
    assert not next_request.is_set()


async def test_an_address_that_never_answers_does_not_cost_the_backend(serve, monkeypatch) -> None:
    # A backend's name resolving to an address whose packets are dropped (IPv6 behind a
    # firewall, a retired host) before one that works: the next address is tried while the
    # first still has no answer, as aiohttp did (happy eyeballs, RFC 8305), instead of the
    # connect timeout going on the first and the request failing.
    async def here(request: web.Request) -> web.Response:
        return web.Response(text="here")

    app = web.Application()
    app.router.add_get("/{tail:.*}", here)
    port = int((await serve(app)).rsplit(":", 1)[1])
    # A listener that never accepts, its queue full: its connections' SYNs are dropped.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    silent.setblocking(False)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(silent.getsockname())
        fillers.append(filler)
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, *args: object, **kw: object) -> list[tuple]:
        assert host == "backend.test"
        tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        return [(*tcp, silent.getsockname()), (*tcp, ("127.0.0.1", port))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    try:
        answer = await _call(f"http://backend.test:{port}", _req(path="/x"), timeout=3)
        assert answer.body == b"here"
    finally:
        for s in (silent, *fillers):
            s.close()


async def test_https_backend_named_with_a_trailing_dot(tmp_path: Path, monkeypatch) -> None:
    # An absolute name (``backend.example.`` spares the resolver its search domains) is the
    # same host: certificates name it without the dot, so the name checked and sent (SNI) is
    # the one without it, as aiohttp had it.
    ca, server, _, _ = _tls_material(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(f"{server}.pem", f"{server}.key")
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo

    async def getaddrinfo(host: str, *args: object, **kw: object) -> list[tuple]:
        assert host == "localhost."
        return await resolve("127.0.0.1", *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    try:
        url = f"https://localhost.:{runner.addresses[0][1]}"
        answer = await _call(url, _req(path="/"), tls=ssl.create_default_context(cafile=ca))
        assert (answer.status, answer.body) == (200, b"ok")
        assert names == ["localhost"]
    finally:
        await runner.cleanup()


async def test_a_request_given_up_on_is_not_sent_on(raw_server) -> None:
    # A backend that stops reading (stuck) and a large body: when the request times out the
    # connection goes at once, with what of the body was not yet sent. Closed gracefully, it
    # stayed open until the backend read it all, the body held in memory meanwhile (one
    # body per stuck request, up to the node's limit each), and the backend then got a
    # whole request whose client had been told it failed.
    gave_up = asyncio.Event()
    received: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        await gave_up.wait()
        received.set_result(await _bytes_until_closed(reader))
        writer.close()

    body = b"x" * (32 * 2**20)
    with pytest.raises(XRoadError) as err:
        await _call(await raw_server(handle), _req("POST", "/", body=body), timeout=0.3)
    assert "in time" in err.value.message
    gave_up.set()
    assert await asyncio.wait_for(received, 10) < len(body)


async def test_an_early_final_answer_ends_the_body(raw_server) -> None:
    # A backend that answers before reading the body (413, Connection: close) and reads no
    # more: the rest of the body is not sent on after the answer was taken (the connection
    # would stay, the body held, until the backend read it all).
    answered = asyncio.Event()
    received: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await answered.wait()
        received.set_result(await _bytes_until_closed(reader))
        writer.close()

    body = b"x" * (32 * 2**20)
    answer = await _call(await raw_server(handle), _req("POST", "/", body=body))
    assert answer.status == 413
    answered.set()
    assert await asyncio.wait_for(received, 10) < len(body)
