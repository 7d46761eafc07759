"""The baselines of the exchange benchmark: two plain aiohttp proxy hops, without the hub.

- (c) ``plain``: hop 1 (plain HTTP, as the client node's listener) forwards to hop 2 over
  mutual TLS (the node's own peer TLS contexts and dev-PKI certificates), hop 2 forwards to
  the backend over a keep-alive session, and the answer goes back the same way;
- (d) ``signed``: (c), plus one ECDSA P-256 signature per message (hop 1 signs the request,
  hop 2 verifies it and signs the answer, hop 1 verifies that) and one durable SQLite row
  per request on each hop (WAL, synchronous=FULL as the message log, group commit by a
  writer thread; the hop answers only after its row is committed).

Each hop is a process of its own, like the hub's nodes, with the same keep-alive and the
same peer connection pool bound, so that the ratios hub/(c) and hub/(d) compare like with
like. Found next to the benchmark scripts through ``sys.path[0]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import socket
import sqlite3
import threading
from pathlib import Path

import aiohttp
from aiohttp import web
from benchproc import until_stopped
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.federation import parse_address
from xroad_hub.node.peer import PEER_POOL_LIMIT, PEER_POOL_PER_PEER
from xroad_hub.node.tls import bound_tls_read_buffers, peer_client_context, peer_server_context
from xroad_hub.pki import PkiLayout

_ECDSA = ec.ECDSA(hashes.SHA256())
_SIG_HEADER = "X-Bench-Signature"


class GroupCommitLog:
    """One row per request, committed durably in batches by a writer thread; ``append``
    returns once the row's batch is committed (results handed back once per batch)."""

    def __init__(self, path: Path) -> None:
        self._queue: queue.SimpleQueue[tuple[bytes, asyncio.Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self._loop = asyncio.get_running_loop()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, row BLOB)")
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    async def append(self, row: bytes) -> None:
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((row, done))
        await done

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            batch = []
            while item is not None:
                batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO log (row) VALUES (?)", [(r,) for r, _ in batch])
                self._db.execute("COMMIT")
                self._loop.call_soon_threadsafe(_resolve, [f for _, f in batch])
            if item is None:
                return

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._db.close()


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)


def _session(ssl_ctx: object = None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        ssl=ssl_ctx if ssl_ctx is not None else False,
        limit=PEER_POOL_LIMIT,
        limit_per_host=PEER_POOL_PER_PEER,
        keepalive_timeout=60,
    )
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )


async def serve_hop(
    role: str, listen: str, upstream: str, certs: Path, node_id: str, signed: bool, db: Path
) -> None:
    """Run hop ``role`` ("first": plain HTTP in, mutual TLS out; "second": mutual TLS in,
    plain HTTP to the backend) until stopped."""
    bound_tls_read_buffers()  # as a node does: the floor pays what the hub pays for TLS
    pki = PkiLayout(certs)
    auth, ca = pki.node_auth(node_id), pki.root_ca.cert
    # Both hops sign with one key (the node's signing cost, not key distribution, is what
    # the baseline measures); each verifies the other's messages with its public key.
    key = ec.derive_private_key(
        int.from_bytes(hashlib.sha256(b"bench-hop").digest(), "big") % (2**255), ec.SECP256R1()
    )
    public = key.public_key()
    log = GroupCommitLog(db) if signed else None
    session = _session(peer_client_context(auth.cert, auth.key, ca) if role == "first" else None)

    async def forward(request: web.Request) -> web.Response:
        target = upstream + request.path_qs
        out_headers: dict[str, str] = {}
        if signed and role == "first":
            out_headers[_SIG_HEADER] = key.sign(request.path_qs.encode(), _ECDSA).hex()
        if signed and role == "second":
            signature = bytes.fromhex(request.headers.get(_SIG_HEADER, ""))
            public.verify(signature, request.path_qs.encode(), _ECDSA)  # raises if wrong
        async with session.get(target, headers=out_headers) as resp:
            body = await resp.read()
            status, ctype = resp.status, resp.content_type
            answer_sig = resp.headers.get(_SIG_HEADER)
        headers: dict[str, str] = {}
        if signed:
            assert log is not None
            if role == "first":
                public.verify(bytes.fromhex(answer_sig or ""), body, _ECDSA)  # raises if wrong
            else:
                headers[_SIG_HEADER] = key.sign(body, _ECDSA).hex()
            await log.append(request.path_qs.encode() + b"\n" + hashlib.sha256(body).digest())
        return web.Response(body=body, status=status, content_type=ctype, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    ssl_ctx = peer_server_context(auth.cert, auth.key, ca) if role == "second" else None
    try:
        sock = socket.create_server(parse_address(listen))
        await web.SockSite(runner, sock, ssl_context=ssl_ctx, shutdown_timeout=5.0).start()
        await until_stopped()
    finally:
        await runner.cleanup()
        await session.close()
        if log is not None:
            with contextlib.suppress(Exception):
                log.close()
