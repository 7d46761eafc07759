"""PostgreSQL failing under a running store: a connection the server dropped while idle is
reopened and the operation succeeds; a failure in the middle of a change is the store's
HubError (Unavailable: a message naming the database and what to do, the password never
shown), nothing of the change lands, and the store - and the central server's APIs, which
answer 503 - keep serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from xroad_hub.central.server import CentralServer, init_central
from xroad_hub.central.store import StoreError
from xroad_hub.errors import HubError, Unavailable
from xroad_hub.node.admin import key_digest
from xroad_hub.node.pgsettings import PostgresSettingsStore, lock_key
from xroad_hub.node.settings import SERVICE, Put, SettingsUnavailable

pytest_plugins = ["tests.pg_stores"]

SECRET = "s3cret-pw"


def _dsn_with_password() -> tuple[str, str | None]:
    """The test DSN with a password the server ignores (trust auth), to check it is never
    shown; the DSN as it is when it already holds one."""
    from tests.pg_stores import pg_dsn

    dsn = pg_dsn()
    if urlsplit(dsn).password is not None or "password=" in dsn:
        return dsn, None
    return dsn + ("&" if "?" in dsn else "?") + f"password={SECRET}", SECRET


@contextmanager
def _admin_db() -> Iterator[psycopg.Connection]:
    from tests.pg_stores import pg_dsn

    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        yield conn


def _backend(db: psycopg.Connection, purpose: str, schema: str) -> tuple[int, str | None]:
    """The store's server process and what it waits for (None: nothing)."""
    row = db.execute(
        "SELECT pid, wait_event_type FROM pg_stat_activity WHERE application_name = %s",
        (f"xroad-hub {purpose} {schema}",),
    ).fetchone()
    assert row is not None, "the store has no connection"
    return row[0], row[1]


def _terminate(db: psycopg.Connection, pid: int) -> None:
    assert db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def _wait_for_lock(db: psycopg.Connection, purpose: str, schema: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid, waits = _backend(db, purpose, schema)
        if waits == "Lock":
            return pid
        time.sleep(0.02)
    raise AssertionError("the store's write never waited for the writer lock")


def test_settings_store_reopens_a_dropped_connection_and_a_change_cut_off_is_a_hub_error(
    pg_schema: str,
) -> None:
    dsn, secret = _dsn_with_password()
    store = PostgresSettingsStore(dsn, pg_schema)
    store.open()
    try:
        store.apply([Put(SERVICE, "a", None, {"n": 1})], "alice")
        with _admin_db() as db:
            # The server restarted / an operator ended the connection while it sat idle.
            before, _ = _backend(db, "settings", pg_schema)
            _terminate(db, before)
            row = store.get(SERVICE, "a")
            assert row is not None and row.data == {"n": 1}
            assert _backend(db, "settings", pg_schema)[0] != before  # a new connection

            # A change cut off in the middle: it waits for the writer lock (another writer
            # holds it) when its connection is terminated.
            db.execute("SELECT pg_advisory_lock(%s)", (lock_key("settings", pg_schema),))
            generation = store.generation()
            with ThreadPoolExecutor(1) as pool:
                change = pool.submit(store.apply, [Put(SERVICE, "a", 1, {"n": 2})], "bob")
                _terminate(db, _wait_for_lock(db, "settings", pg_schema))
                with pytest.raises(SettingsUnavailable) as err:
                    change.result(timeout=10)
            db.execute("SELECT pg_advisory_unlock_all()")
        assert isinstance(err.value, HubError)
        message = str(err.value)
        assert "settings database" in message and "retry" in message
        assert secret is None or (secret not in message and "***" in message)

        # Nothing of the change landed, and the store keeps serving: the change made again
        # from the same version goes through.
        row = store.get(SERVICE, "a")
        assert row is not None and (row.version, row.data) == (1, {"n": 1})
        assert store.generation() == generation
        store.apply([Put(SERVICE, "a", 1, {"n": 2})], "bob")
        assert store.get(SERVICE, "a").data == {"n": 2}  # type: ignore[union-attr]
    finally:
        store.close()


@pytest.fixture
def pg_central(tmp_path: Path, pg_schema: str) -> Iterator[Callable[[], CentralServer]]:
    dsn, _ = _dsn_with_password()
    init_central(tmp_path / "central", "TH", "https://127.0.0.1:4001", db=dsn, db_schema=pg_schema)
    server = CentralServer(tmp_path / "central")
    server.store.add_admin("sam", key_digest("sam-key"), ["system-administrator"], "t")
    yield lambda: server
    server.close()


async def test_central_server_answers_503_when_its_database_fails_and_keeps_serving(
    pg_central: Callable[[], CentralServer], pg_schema: str
) -> None:
    central = pg_central()
    headers = {"Authorization": "Bearer sam-key"}
    _, secret = _dsn_with_password()
    async with TestClient(TestServer(central.app())) as client:
        assert (await client.get("/admin/members", headers=headers)).status == 200
        with _admin_db() as db:
            _terminate(db, _backend(db, "central", pg_schema)[0])
            # Reopened: the operator does not see the dropped connection at all.
            assert (await client.get("/admin/members", headers=headers)).status == 200

            db.execute("SELECT pg_advisory_lock(%s)", (lock_key("central", pg_schema),))
            adding = asyncio.ensure_future(
                client.post(
                    "/admin/members", json={"id": "TH/GOV/DOPA", "name": "DOPA"}, headers=headers
                )
            )
            pid = await asyncio.to_thread(_wait_for_lock, db, "central", pg_schema)
            _terminate(db, pid)
            r = await adding
            db.execute("SELECT pg_advisory_unlock_all()")
        body = await r.json()
        assert r.status == 503, body
        assert "central database" in body["error"] and "retry" in body["error"]
        assert secret is None or secret not in body["error"]

        # Still serving: nothing was added, and the same request now succeeds.
        r = await client.get("/admin/members", headers=headers)
        assert r.status == 200 and "TH/GOV/DOPA" not in [m["id"] for m in await r.json()]
        assert (await client.get("/globalconf")).status == 200
        r = await client.post(
            "/admin/members", json={"id": "TH/GOV/DOPA", "name": "DOPA"}, headers=headers
        )
        assert r.status == 201


def test_a_central_database_failure_is_a_store_error(
    pg_central: Callable[[], CentralServer],
) -> None:
    """What the CLI catches (HubError) and prints as a message: the store's own class."""
    central = pg_central()
    with _admin_db() as db:
        db.execute(f'DROP TABLE "{central.store.schema}".members CASCADE')  # type: ignore[attr-defined]
    with pytest.raises(StoreError) as err:
        central.store.members()
    assert isinstance(err.value, Unavailable)
    assert "members" in str(err.value) and "central database" in str(err.value)
