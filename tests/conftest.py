"""Shared fixtures: an echo backend and a three-node federation on loopback, over real TLS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import structlog
from aiohttp import web
from structlog.testing import LogCapture

from xroad_hub.demo.runner import Federation
from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.dev.testing import TestFederationSpec, free_port, write_federation
from xroad_hub.federation import load_federation
from xroad_hub.logs import configure_logging
from xroad_hub.pki import PkiLayout, load_private_key

from .soap_legacy import LegacyServer, legacy_server
from .xroad_soap_service import xroad_soap_echo

EVERYONE = [
    "TH/GOV/DGA/citizenportal",
    "TH/GOV/DGA/devportal",
    "TH/GOV/DGA/officeapp",
    "TH/GOV/BMA/licensing",
]

configure_logging("warning", json=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Test files with slow tests (whole federations of separate processes) first, each
    file's own order kept: the two workers (scripts/test.sh) then end together instead of
    one finishing a long file alone."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


# Every request the echo backend received (raw path, headers): tests show what never
# reached it.
ECHO_SEEN: list[tuple[str, list[tuple[str, str]]]] = []


async def _echo(request: web.Request) -> web.Response:
    ECHO_SEEN.append((request.raw_path, list(request.headers.items())))
    tail = request.match_info["tail"]
    if tail.startswith("status/"):
        return web.json_response({"problem": "provider says no"}, status=int(tail[7:10]))
    if tail == "redirect":
        raise web.HTTPFound("/elsewhere")
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path.partition("?")[0],
            "query": request.raw_path.partition("?")[2],
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": base64.b64encode(body).decode(),
        },
        headers={"X-Backend": "echo", "X-Road-Id": "forged-by-provider", "Server": "leaky/1.0"},
    )


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({})


@dataclass
class Fed:
    root: Path
    federation: Federation
    pki: PkiLayout
    endpoints: dict[str, object]

    def url(self, node: str, role: str = "client") -> str:
        return self.endpoints["nodes"][node][role]  # type: ignore[index]

    def token(self, client: str = "TH/GOV/DGA/citizenportal", **overrides: object) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": client,
            "aud": "TH/GOV/DGA/hub1",
            "iat": now,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        claims.update(overrides)
        key = load_private_key(self.pki.client_jwt(client).key)
        return jwt.encode(claims, key, algorithm="ES256")

    def client_ssl(self, client: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.root_ca.cert))
        if client:
            paths = self.pki.client_tls(client)
            ctx.load_cert_chain(str(paths.cert), str(paths.key))
        return ctx


async def start_federation(root: Path, spec: TestFederationSpec) -> Fed:
    root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test set-up, before serving
    fed_cfg = load_federation(write_federation(root / "federation.toml", spec))
    ensure_pki(fed_cfg, root / "certs")
    federation = Federation(fed_cfg, root / "certs", root / "data")
    endpoints = await federation.start()
    return Fed(root, federation, PkiLayout(root / "certs"), endpoints)


# Requests for schemas a WSDL refers to (X-Road's example WSDL imports xroad.xsd by URL):
# a node loading a WSDL must never make any.
SCHEMA_FETCHES: list[str] = []


async def _schema(request: web.Request) -> web.Response:
    SCHEMA_FETCHES.append(request.path)
    return web.Response(status=404)


def xroad_example_wsdl(echo_backend: str, target: Path) -> Path:
    """X-Road's own example WSDL (PR-MESS Annex C), its imports pointing at the echo
    backend, where any fetch would be recorded."""
    source = Path(__file__).parent / "data" / "xroad" / "pr-mess-example.wsdl"
    text = source.read_text(encoding="utf-8")
    for url in (
        "http://x-road.eu/xsd/xroad.xsd",
        "http://ws-i.org/profiles/basic/1.1/swaref.xsd",
        "http://www.w3.org/2005/05/xmlmime",
    ):
        assert f'schemaLocation="{url}"' in text
        text = text.replace(
            f'schemaLocation="{url}"', f'schemaLocation="{echo_backend}/xsd{url[6:]}"'
        )
    target.write_text(text, encoding="utf-8")
    return target


@pytest.fixture(scope="session")
async def echo_backend() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/xsd/{tail:.*}", _schema)
    app.router.add_route("*", "/echo{tail:.*}", _echo_route)
    app.router.add_get("/slow", _slow)
    app.router.add_post("/xroad-soap", xroad_soap_echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _echo_route(request: web.Request) -> web.Response:
    request.match_info["tail"] = request.match_info["tail"].lstrip("/")
    return await _echo(request)


@pytest.fixture(scope="session")
def legacy_soap() -> Iterator[LegacyServer]:
    """A plain legacy SOAP service (tests/soap_legacy.py), bridged to X-Road by the provider."""
    with legacy_server() as server:
        yield server


def soap_services(
    echo_backend: str, legacy: LegacyServer, workdir: Path
) -> list[dict[str, object]]:
    return [
        {  # a legacy SOAP service that knows nothing of X-Road: bridged (SOAP and REST)
            "provider": "TH/GOV/DBD/legacy",
            "wsdl": legacy.wsdl_url,
            "mode": "bridge",
            "version": "v1",
            "timeout": 5,
            "allow": EVERYONE,
            "subject": ["query:citizenId", "body:citizenId"],
            "answer_subject": ["xml:citizenId"],
        },
        {  # the same legacy service, served only for declared purposes
            "provider": "TH/GOV/DBD/legacypurpose",
            "wsdl": legacy.wsdl_url,
            "mode": "bridge",
            "timeout": 5,
            "allow": EVERYONE,
            "purposes": ["food-business-licence"],
            "answer_subject": ["xml:citizenId"],
        },
        {  # an X-Road-aware SOAP service: messages pass through unchanged
            "provider": "TH/GOV/DBD/xroadsoap",
            "wsdl": str(Path(__file__).parent / "data" / "xroad" / "echo.wsdl"),
            "url": f"{echo_backend}/xroad-soap",
            "mode": "passthrough",
            "allow": ["TH/GOV/DGA/devportal", "TH/GOV/BMA/licensing"],
            "subject": ["body:text"],  # whom the echo is about, as the node reads it
            "answer_subject": [],  # the echo service answers with the request itself
        },
        {  # an X-Road-aware service described by X-Road's own example WSDL (imports by URL)
            "provider": "TH/GOV/DBD/xroadexample",
            "wsdl": str(xroad_example_wsdl(echo_backend, workdir / "pr-mess-example.wsdl")),
            "url": f"{echo_backend}/xroad-soap",
            "mode": "passthrough",
            "allow": ["TH/GOV/DGA/devportal"],
            "answer_subject": [],
        },
    ]


@pytest.fixture(scope="session")
async def fed(
    tmp_path_factory: pytest.TempPathFactory, echo_backend: str, legacy_soap: LegacyServer
) -> AsyncIterator[Fed]:
    root = tmp_path_factory.mktemp("fed")
    spec = TestFederationSpec(
        backend_url=echo_backend,
        soap_services=soap_services(echo_backend, legacy_soap, root),
        # An X-Road client that cannot send a purpose: its registration gives one.
        client_settings={
            "TH/GOV/DGA/officeapp": {
                "default_purpose": "food-business-licence",
                "default_legal_basis": "Public Health Act B.E. 2535 s.38",
            }
        },
    )
    f = await start_federation(root, spec)
    yield f
    await f.federation.stop()


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def own_fed(tmp_path: Path, echo_backend: str) -> AsyncIterator[Fed]:
    """A federation of the test's own, for tests that break a node (wrong keys): their
    nodes' logs then hold what a broken node logs, which no other test should see."""
    f = await start_federation(tmp_path / "own", TestFederationSpec(backend_url=echo_backend))
    yield f
    await f.federation.stop()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """A TCP server answering with whatever bytes a test scripts (HTTP a real server would
    not send, or connections closed at chosen moments)."""
    servers: list[asyncio.Server] = []

    async def start(
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> str:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def kinds_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A misbehaving service: ``handler`` answers POST /{kind} (the kind of misbehaviour
    is the path); its base URL."""
    app = web.Application()
    app.router.add_post("/{kind}", handler)
    async with served_app(app) as url:
        yield url


@contextlib.asynccontextmanager
async def served_app(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free loopback port while the block runs; its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def _forget_cached_loggers() -> None:
    """Module loggers cache their configuration on first use (cache_logger_on_first_use);
    forgetting it makes them take the configuration in force now."""
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("xroad_hub", "adapters"):
            for value in list(vars(module).values()):
                if isinstance(value, structlog._config.BoundLoggerLazyProxy):
                    vars(value).pop("bind", None)


@pytest.fixture
def oplog() -> Iterator[list[dict[str, Any]]]:
    """Every event the node's code logs, at every level, with the context bound to it (as
    configure_logging renders it), while the test runs (unlike structlog's capture_logs,
    also from loggers an earlier test already used)."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    _forget_cached_loggers()
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)
        _forget_cached_loggers()
