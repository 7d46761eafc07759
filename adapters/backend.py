"""HTTP/1.1 to an agency's REST backend: a keep-alive pool per backend origin.

Why not ``aiohttp.ClientSession``: on the provider node its request machinery (ClientRequest
and ClientResponse objects, header multidicts, the connector's bookkeeping, timer contexts,
cookie and trace hooks) was the largest single cost of an exchange, for a request the node
has already checked and formed. Only that machinery is left out. The wire is still
aiohttp's: each connection runs aiohttp's own client protocol (``ResponseHandler``, with its
C response parser, flow control and disconnect handling), so responses are read exactly as
aiohttp reads them (content-length, chunked, until-close, 1xx skipped, no body for HEAD,
204 and 304), and its exception types come out of it: ``aiohttp.ClientConnectionError``
when the backend cannot be reached or went away, ``aiohttp.ClientPayloadError`` for a
broken body, ``HttpProcessingError`` for an answer that is not HTTP, TimeoutError.

What is sent is what ``ClientSession.request`` sent for the REST adapter: ``Host``, the given
headers in order, ``Accept: */*`` when none was given (unless asked not to), ``Content-Length``
when there is a body or the method may have one; no User-Agent, Accept-Encoding or
Content-Type of ours.

Answers come back as received, compressed ones compressed (the REST adapter passes them on
so), unless a request asks for them decoded (the SOAP adapters, which read the XML): then a
gzip or deflate body is inflated as it arrives, never past ``max_bytes`` of decoded bytes, so a
small compressed answer cannot grow in memory beyond the cap (a "zip bomb").
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import zlib
from collections import deque
from collections.abc import Iterable
from typing import Final

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import StreamReader
from yarl import URL

from xroad_hub.protocol.rest import is_token
from xroad_hub.streams import BodyTooLarge

__all__ = ["BackendPool", "Backends", "UnsafeRequest"]

# What aiohttp's ClientSession uses by default (its limits on the answer's head).
_MAX_LINE: Final = 8190
_MAX_FIELD: Final = 8190
_MAX_HEADERS: Final = 128
_READ_BUFSIZE: Final = 2**16
# Idle keep-alive connections are closed after this long (aiohttp's default).
KEEPALIVE_TIMEOUT: Final = 15.0
# Methods a request may be retried with once, on a fresh connection, when a kept-alive
# connection turned out closed before any answer (RFC 9112 9.3.1; aiohttp does the same).
_IDEMPOTENT: Final = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
# Methods aiohttp sends no Content-Length: 0 for when there is no body.
_BODYLESS: Final = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
# Framing is this client's to set, from the body it sends.
_OWN_HEADERS: Final = frozenset(("host", "content-length", "transfer-encoding", "connection"))
# How late a total timeout may strike (aiohttp rounds timeouts of 5 s and more up to the
# next whole second).
_TICK: Final = 0.05
# aiohttp's default delay before a connection attempt to a name's next address.
_HAPPY_EYEBALLS_DELAY: Final = 0.25
# Head and body go out in one write below this size (one segment on loopback).
_COALESCE: Final = 2**16

_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_default_tls: ssl.SSLContext | None = None


class UnsafeRequest(ValueError):
    """The request cannot be written as it is: a control character would split its head."""


def _verified_tls() -> ssl.SSLContext:
    # The system's CAs, host name checked: what aiohttp uses for https by default.
    global _default_tls
    if _default_tls is None:
        _default_tls = ssl.create_default_context()
    return _default_tls


class _Connection(ResponseHandler):
    """aiohttp's client protocol, and what its parser was made for."""

    parser_for_head: bool | None = None  # None: no parser yet
    idle = False

    def data_received(self, data: bytes) -> None:
        # Nothing is asked on an idle connection, so nothing may come: bytes that do (a late
        # second answer, begun) would be read by the next request as its answer. The parser
        # keeps an answer's unfinished head unseen, so the connection ends here instead.
        if self.idle and data:
            self.close()
            return
        super().data_received(data)


class BackendPool:
    """Connections to one backend origin: at most ``limit`` open (a request waits for one
    beyond that, within its own total timeout), idle ones kept for reuse."""

    def __init__(self, origin: URL, *, limit: int = 256, tls: ssl.SSLContext | None = None) -> None:
        if origin.scheme not in ("http", "https") or not origin.raw_host:
            raise ValueError(f"backend URL must be http(s)://host[:port]: {origin}")
        self._host = origin.raw_host
        self._port = origin.port
        self._tls = (tls or _verified_tls()) if origin.scheme == "https" else None
        # The name checked against the certificate and sent (SNI): an absolute name's trailing
        # dot is no part of it (certificates name hosts without), as aiohttp strips it.
        self._tls_name = self._host.rstrip(".") if self._tls is not None else None
        # As aiohttp forms it: the port only when it is not the scheme's default.
        self._host_header = f"Host: {origin.host_port_subcomponent}\r\n"
        # Open connections: in use (``_busy``, at most ``limit``), and idle. Requests beyond
        # the limit wait in order for a slot handed over by a finishing one.
        self._limit = limit
        self._busy = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        # The total timeouts of the requests in flight: one timer checks them all, each
        # ``_TICK`` s while any is in flight, instead of a timer made and cancelled per
        # request (asyncio.timeout was a fifth of this leg's cost, the send syscall included).
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._idle: list[tuple[_Connection, float]] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        total: float,
        connect: float,
        max_bytes: int,
        decompress: bool = False,
        default_accept: bool = True,
        redirect_body: bool = True,
    ) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
        """Send one request (``target``: the raw path and query) and read the answer whole:
        status, headers as received, body; BodyTooLarge past ``max_bytes``. ``total`` bounds
        everything from here (waiting for a free connection included), ``connect`` each
        connection attempt. Redirects are answers like any other: never followed.

        ``decompress``: a body with Content-Encoding gzip or deflate comes back decoded
        (``max_bytes`` then bounds the decoded size; the headers stay as received), any other
        coding but identity is a ``ClientPayloadError``. ``default_accept``: whether
        ``Accept: */*`` is added when the headers have no Accept. ``redirect_body``: whether a
        3xx answer's body is read; if not, it comes back empty (for a caller that refuses
        redirects whatever they hold) and a connection with a body left unread is closed."""
        head = self._head(method, target, headers, body, default_accept)
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._deadlines[task] = loop.time() + total
        if self._ticker is None:
            self._ticker = loop.call_later(_TICK, self._tick)
        try:
            if self._busy < self._limit and not self._waiting:
                self._busy += 1
            else:
                await self._wait_for_slot(loop)
            try:
                return await self._exchange(
                    method, head, body, connect, max_bytes, decompress, redirect_body
                )
            finally:
                self._free_slot()
        except asyncio.CancelledError:
            # Cancelled by _tick, and by nobody else: the total timeout.
            if task in self._expired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            del self._deadlines[task]
            self._expired.discard(task)

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter = loop.create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # handed over as this request gave up: pass it on
            raise

    def _free_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # a request that gave up waiting left a cancelled one
                waiter.set_result(None)  # the slot goes over, in use still
                return
        self._busy -= 1

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in self._deadlines.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._ticker = loop.call_later(_TICK, self._tick) if self._deadlines else None

    def _head(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        default_accept: bool = True,
    ) -> bytes:
        # A method or a field name of other characters (a space, a colon, a non-ASCII letter)
        # would be read by a lenient backend as another target or another field: one named
        # "Transfer-Encoding " next to this client's Content-Length frames the body otherwise.
        # aiohttp refused such methods; the node refuses both before any adapter runs.
        if not is_token(method):
            raise UnsafeRequest("the request method is not an HTTP token")
        parts = [method, " ", target, " HTTP/1.1\r\n", self._host_header]
        lines = 3  # the request line, Host and the empty line that ends the head
        accept = False
        for name, value in headers:
            if not is_token(name):
                raise UnsafeRequest("a header name is not an HTTP token")
            low = name.lower()
            if low in _OWN_HEADERS:
                continue
            if low == "accept":
                accept = True
            parts += (name, ": ", value, "\r\n")
            lines += 1
        if not accept and default_accept:
            parts.append("Accept: */*\r\n")
            lines += 1
        if body or method not in _BODYLESS:
            parts += ("Content-Length: ", str(len(body)), "\r\n")
            lines += 1
        parts.append("\r\n")
        text = "".join(parts)
        # One line break per line and no other control character (tab aside), or a method,
        # target, name or value would split the head: aiohttp's writer refuses the same (the
        # node has refused such requests already; an adapter used alone must too).
        if text.count("\n") != lines or _CONTROL.search(text.replace("\r\n", "")):
            raise UnsafeRequest("the request line or a header holds a control character")
        # Lone surrogates are dropped, as aiohttp's writer drops them.
        return text.encode("utf-8", "ignore")

    async def _exchange(
        self,
        method: str,
        head: bytes,
        body: bytes,
        connect: float,
        max_bytes: int,
        decompress: bool = False,
        redirect_body: bool = True,
    ) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
        retry = method in _IDEMPOTENT
        while True:
            proto, reused = await self._connection(connect)
            try:
                message, payload = await self._send(proto, method, head, body)
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                proto.abort()
                # A kept-alive connection the backend had closed before answering: once
                # more, on a new one.
                if reused and retry:
                    retry = False
                    continue
                raise
            except BaseException:
                # Aborted, not closed: a close waits until what is left of the body has been
                # sent, for as long as the backend takes to read it (forever, stuck), the body
                # held meanwhile, and the backend would get a request given up on.
                proto.abort()
                raise
        if not redirect_body and 300 <= message.code < 400:
            # Not read: a redirect's body (too large, broken, slow) would otherwise decide how
            # the request fails, where the redirect itself is the caller's reason (aiohttp's
            # session did not read it either, and closed the connection it was left on).
            if payload.is_eof():
                self._release(proto)
            else:
                proto.abort()
            return message.code, tuple(message.headers.items()), b""
        try:
            inflater = (
                _inflater(message.headers.getall("Content-Encoding", [])) if decompress else None
            )
            if inflater is None:
                data = await _read_capped(payload, max_bytes)
            else:
                data = await _read_inflated(payload, max_bytes, inflater)
        except BaseException:
            proto.abort()  # as above: an early answer may have come before the whole body went
            raise
        self._release(proto)
        return message.code, tuple(message.headers.items()), data

    async def _send(
        self, proto: _Connection, method: str, head: bytes, body: bytes
    ) -> tuple[RawResponseMessage, StreamReader]:
        """Write the request, wait for the head of the (final) answer."""
        head_only = method == "HEAD"
        # A parser that has read a whole answer is ready for the next one on the connection
        # (aiohttp's server side reuses its parser so); a new one only for a new connection
        # or when the answer to come has no body where the last one had, or the reverse.
        if proto.parser_for_head is not head_only:
            proto.set_response_params(
                skip_payload=head_only,
                read_until_eof=True,
                auto_decompress=False,  # compressed answers pass on compressed
                read_bufsize=_READ_BUFSIZE,
                max_line_size=_MAX_LINE,
                max_field_size=_MAX_FIELD,
                max_headers=_MAX_HEADERS,
            )
            proto.parser_for_head = head_only
        transport = proto.transport
        assert transport is not None
        if len(body) < _COALESCE:
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            transport.write(body)
        while True:
            message, payload = await proto.read()
            # Interim answers (100 Continue, 103 Early Hints) precede the real one.
            if not 100 <= message.code < 200:
                return message, payload
            if message.code == 101:
                raise BadHttpMessage("the service switched protocols")

    async def _connection(self, connect: float) -> tuple[_Connection, bool]:
        while self._idle:
            proto, _ = self._idle.pop()  # the most recent: the least likely to be closed
            # Not one the backend closed, or sent anything on unasked, while it was idle.
            if proto.is_connected() and not proto.should_close:
                proto.idle = False
                return proto, True
            proto.close()
        if self._closed:
            raise aiohttp.ClientConnectionError("the backend pool is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect):
                _, proto = await loop.create_connection(
                    lambda: _Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._tls_name,
                    # A name's next address is tried when one has not answered after this
                    # long, as aiohttp does (RFC 8305): a dropped one (IPv6 behind a firewall)
                    # would otherwise take the whole connect timeout, and the request with it.
                    happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY,
                )
        except TimeoutError:
            raise
        except OSError as exc:  # refused, unreachable, name not found, TLS failures
            raise aiohttp.ClientConnectionError(
                f"cannot connect to {self._host}:{self._port}: {exc!r}"
            ) from exc
        return proto, False

    def _release(self, proto: _Connection) -> None:
        if self._closed or proto.should_close or not proto.is_connected():
            transport = proto.transport
            if transport is not None and transport.get_write_buffer_size():
                # Answered before the whole body went (413 and close): what is left is not
                # sent on, for as long as a backend that reads no more would take.
                proto.abort()
            else:
                proto.close()
            return
        proto.idle = True
        self._idle.append((proto, time.monotonic()))
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(KEEPALIVE_TIMEOUT, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = time.monotonic() - KEEPALIVE_TIMEOUT
        keep = []
        for proto, since in self._idle:
            if since > deadline and proto.is_connected():
                keep.append((proto, since))
            else:
                proto.close()
        self._idle = keep
        if keep:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(keep[0][1] - deadline, self._sweep)

    def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for proto, _ in self._idle:
            proto.close()
        self._idle.clear()


async def _read_capped(payload: StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = payload.read_nowait(-1) if payload.is_eof() else await payload.readany()
        if not chunk:
            if payload.at_eof():
                return b"".join(chunks) if len(chunks) != 1 else chunks[0]
            continue
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)


# Concatenated gzip members decoded in one answer, at most (aiohttp, before, allowed 1024 per
# chunk): each new member costs a fresh decompressor, and members that decode to nothing would
# otherwise let an answer of any length through the decoded-size cap.
_MAX_MEMBERS: Final = 1024
# After the first gzip member, input goes to zlib in slices of at most this size: at a member's
# end zlib copies all the input it was given past that end (``unused_data``), so the rest of a
# chunk given at each end would cost that rest per member: quadratic over a chunk of tiny
# members. (Not for the first: slicing a single member's input would slow it down.)
_INFLATE_SLICE: Final = 2**14


class _Inflater:
    """gzip (members one after another, as RFC 1952 allows) or deflate (zlib-wrapped, or raw
    as some servers send it: told apart by the first byte, as aiohttp does)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._zlib: zlib._Decompress | None = None
        self._members = 0
        self._left = False

    def inflate(self, chunk: bytes, max_length: int) -> bytes:
        """At most ``max_length`` decoded bytes of ``chunk``; ``pending`` when input was left
        undecoded. zlib.error for a broken stream, or one of too many gzip members."""
        out: list[bytes] = []
        view = memoryview(chunk)
        pos = 0
        end = len(chunk)
        while pos < end and max_length > 0:
            d = self._zlib
            if d is None or d.eof:
                if d is not None and not self._gzip:
                    raise zlib.error("data after the end of the deflate stream")
                self._members += 1
                if self._members > _MAX_MEMBERS:
                    raise zlib.error(f"more than {_MAX_MEMBERS} gzip members")
                if self._gzip:
                    wbits = 16 + zlib.MAX_WBITS
                else:
                    wbits = zlib.MAX_WBITS if chunk[0] & 0x0F == 8 else -zlib.MAX_WBITS
                d = self._zlib = zlib.decompressobj(wbits)
            piece = view[pos : pos + _INFLATE_SLICE] if self._members > 1 else view[pos:]
            data = d.decompress(piece, max_length)
            max_length -= len(data)
            out.append(data)
            # What zlib did not take of the slice: past the member's end, or past the output
            # asked for.
            pos += len(piece) - len(d.unused_data if d.eof else d.unconsumed_tail)
        self._left = pos < end
        return b"".join(out)

    @property
    def pending(self) -> bool:
        """Input left undecoded (a call stopped at ``max_length``)."""
        return self._left

    @property
    def finished(self) -> bool:
        """The stream is complete: nothing came, or its (last) end was reached."""
        return self._zlib is None or self._zlib.eof


def _inflater(fields: list[str]) -> _Inflater | None:
    # Every Content-Encoding field counts (several make one list, RFC 9110 5.3): reading only
    # the first, "identity" then "gzip" passed a gzip body on as if it were the XML itself
    # (aiohttp, before, went by the last). "identity" changes nothing, wherever it stands.
    codings = [c for c in (c.strip() for f in fields for c in f.lower().split(",")) if c]
    coding = ", ".join(c for c in codings if c != "identity")
    if not coding:
        return None
    if coding in ("gzip", "x-gzip"):
        return _Inflater(gzip=True)
    if coding == "deflate":
        return _Inflater(gzip=False)
    # br, zstd, compress, or codings one after another: none decoded here, and passing the
    # body on undecoded would hand on bytes no reader can use as what they claim to be.
    raise aiohttp.ClientPayloadError(f"unsupported Content-Encoding: {coding[:40]!r}")


async def _read_inflated(payload: StreamReader, limit: int, inflater: _Inflater) -> bytes:
    """The decoded body, or BodyTooLarge as soon as it would pass ``limit``: each chunk is
    inflated to at most one byte more than the room left, so no more than ``limit + 1``
    decoded bytes are ever held, whatever the compression ratio (aiohttp inflated in 64 KiB
    steps and left the cap to the reader, holding up to a step past it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = payload.read_nowait(-1) if payload.is_eof() else await payload.readany()
        if not chunk:
            if payload.at_eof():
                break
            continue
        try:
            data = inflater.inflate(chunk, limit - size + 1)
        except zlib.error as exc:
            raise aiohttp.ClientPayloadError(
                f"the answer's compressed body is broken: {exc}"
            ) from exc
        size += len(data)
        if size > limit or inflater.pending:
            raise BodyTooLarge(limit)
        chunks.append(data)
    if not inflater.finished:
        raise aiohttp.ClientPayloadError("the answer's compressed body is cut short")
    return b"".join(chunks)


class Backends:
    """The node's pools, one per backend origin (and TLS context), shared by the services
    that use the same backend; closed with the node."""

    def __init__(self, *, limit: int = 256) -> None:
        self._limit = limit
        self._pools: dict[tuple[str, ssl.SSLContext | None], BackendPool] = {}

    def pool(self, url: URL, tls: ssl.SSLContext | None = None) -> BackendPool:
        key = (str(url.origin()), tls)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = BackendPool(url.origin(), limit=self._limit, tls=tls)
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
