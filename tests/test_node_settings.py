"""The node's settings database (versions compared on every change, across processes too),
the service table swapped whole (an adapter closed only after the requests using it), and
the per-operation access rule of services registered from OpenAPI."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from adapters import AdapterRequest, AdapterResponse
from xroad_hub.errors import HubError, ProtocolError
from xroad_hub.federation import ServiceConfig, load_table
from xroad_hub.node.pgsettings import PostgresSettingsStore, redact_dsn
from xroad_hub.node.runtime import HostedService, ServiceTable
from xroad_hub.node.services import ServiceManager
from xroad_hub.node.settings import SERVICE, Conflict, Put, SettingsStore, SQLiteSettingsStore
from xroad_hub.protocol.access import check_endpoint, parse_endpoint
from xroad_hub.protocol.identifiers import parse_client_id, parse_service_id

pytest_plugins = ["tests.pg_stores"]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], SettingsStore]:
    """Opens a store on this test's storage, the same each time (two processes of a node):
    a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        path = tmp_path / "node-settings.sqlite"

        def make() -> SettingsStore:
            return SQLiteSettingsStore(path)
    else:
        from tests.pg_stores import pg_dsn

        schema = request.getfixturevalue("pg_schema")

        def make() -> SettingsStore:
            return PostgresSettingsStore(pg_dsn(), schema)

    def opened() -> SettingsStore:
        store = make()
        store.open()
        return store

    return opened


def test_a_change_made_from_an_old_version_is_refused_also_from_another_process(
    tmp_path: Path, open_store: Callable[[], SettingsStore]
) -> None:
    first, second = open_store(), open_store()  # two processes of one node, one database
    try:
        if isinstance(first, SQLiteSettingsStore):
            assert stat.S_IMODE(os.stat(first.path).st_mode) == 0o600
        [row] = first.apply([Put(SERVICE, "a", None, {"n": 1})], "alice")
        assert (row.version, row.updated_by) == (1, "alice")
        with pytest.raises(Conflict, match="exists already"):
            second.apply([Put(SERVICE, "a", None, {"n": 2})], "bob")
        # Both read version 1; alice's change lands, bob's is refused and lost nowhere.
        first.apply([Put(SERVICE, "a", 1, {"n": 2})], "alice")
        with pytest.raises(Conflict, match="at version 2, not 1"):
            second.apply([Put(SERVICE, "a", 1, {"n": 3})], "bob")
        assert second.get(SERVICE, "a").data == {"n": 2}  # type: ignore[union-attr]
        # All of a change or nothing: the second row's conflict undoes the first's write.
        with pytest.raises(Conflict):
            second.apply([Put(SERVICE, "b", None, {"n": 1}), Put(SERVICE, "a", 1, None)], "bob")
        assert first.get(SERVICE, "b") is None
        digest = first.put_document(b"{}")
        assert second.document(digest) == b"{}"
    finally:
        first.close()
        second.close()


class _Adapter:
    def __init__(self) -> None:
        self.closed = False

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        assert not self.closed, "a request used a closed adapter"
        return AdapterResponse(200, (), b"")

    async def close(self) -> None:
        self.closed = True


def _hosted(code: str, adapter: Any) -> HostedService:
    table = {"id": f"TH/GOV/X/sub/{code}", "url": "http://x", "answer_subject": []}
    return HostedService(load_table(ServiceConfig, table, "test"), adapter)


async def test_a_replaced_adapter_is_closed_only_after_the_requests_using_it() -> None:
    old, new = _Adapter(), _Adapter()
    sid = parse_service_id("TH/GOV/X/sub/a")
    table = ServiceTable({sid: _hosted("a", old)})
    with table.lease() as services:  # a request in flight
        table.swap({sid: _hosted("a", new)})
        assert table[sid].adapter is new  # new requests get the new set at once
        retiring = asyncio.create_task(table.retire([old]))
        await asyncio.sleep(0.05)
        assert not old.closed  # still in use by the request in flight
        await services[sid].adapter.handle(AdapterRequest("GET", "", "", (), b""))
    await asyncio.wait_for(retiring, 1)
    assert old.closed and not new.closed


def test_a_service_code_of_one_operation_serves_that_operation_only() -> None:
    table = {
        "id": "TH/GOV/X/sub/getDeed",
        "url": "http://x",
        "answer_subject": [],
        "endpoints": ["GET /deeds/{deedNo}", "GET /deeds/{deedNo}/history"],
    }
    rules = load_table(ServiceConfig, table, "test")
    check_endpoint(rules, "GET", "/deeds/D-1")
    check_endpoint(rules, "GET", "/deeds/D-1/history")
    for method, path in (("GET", "/deeds"), ("GET", "/deeds/"), ("POST", "/deeds/D-1"),
                         ("GET", "/parcels/1"), ("GET", "/deeds/D-1/owner")):  # fmt: skip
        with pytest.raises(ProtocolError) as info:
            check_endpoint(rules, method, path)
        assert info.value.code == "AccessDenied"
    for bad in ("GET deeds", "FETCH /x", "GET /a b", "GET /{x"):
        with pytest.raises(ValueError, match="METHOD /path"):
            parse_endpoint(bad)


class _Builder:
    def build_service(
        self, cfg: ServiceConfig, row: dict[str, Any], documents: Any
    ) -> HostedService:
        return HostedService(cfg, _Adapter())  # type: ignore[arg-type]


async def test_another_process_of_the_node_takes_in_a_change_within_its_poll(
    open_store: Callable[[], SettingsStore],
) -> None:
    stores = [open_store(), open_store()]
    managers = [
        ServiceManager(s, _Builder(), ServiceTable(), known_client=lambda c: True) for s in stores
    ]
    table = {"id": "TH/GOV/X/sub/a", "url": "http://x", "answer_subject": []}
    declared = [(load_table(ServiceConfig, table, "test"), {"allow": []})]
    try:
        # Both processes start from the same file: one imports, the other finds it done.
        await asyncio.gather(*(m.start(declared) for m in managers))
        sid = parse_service_id("TH/GOV/X/sub/a")
        assert all(m.table[sid].config.allow == frozenset() for m in managers)
        portal = "TH/GOV/DGA/portal"

        def grant(services: Any, groups: Any, clients: Any) -> list[Put]:
            row = services["TH/GOV/X/sub/a"]
            return [Put(SERVICE, row.key, row.version, {**row.data, "allow": [portal]})]

        await managers[0].change("alice", "access.grant", grant)
        assert managers[0].table[sid].config.allow == {parse_client_id(portal)}
        assert await managers[0].reload() is False  # its own change: nothing to take in
        assert managers[1].table[sid].config.allow == frozenset()
        # The other process, not yet aware, changes the row it knows: refused, and its
        # audit trail says so (the admin API answers 409).
        trail: list[tuple[str, str]] = []

        async def record(admin: str, action: str, **detail: object) -> None:
            trail.append((admin, action))

        managers[1].record = record
        with pytest.raises(Conflict, match="someone changed it"):
            await managers[1].change("bob", "access.grant", grant)
        assert trail == [("bob", "access.grant"), ("bob", "access.grant.refused")]
        assert await managers[1].reload() is True
        assert managers[1].table[sid].config.allow == {parse_client_id(portal)}
    finally:
        for m in managers:
            await m.close()
        for s in stores:
            s.close()


def test_racing_changes_made_from_one_version_let_exactly_one_through(
    open_store: Callable[[], SettingsStore],
) -> None:
    """Eight administrators (each a process with its own connection) change one service
    from the version they all read: one change lands, seven are refused, none is lost."""
    stores = [open_store() for _ in range(8)]
    try:
        stores[0].apply([Put(SERVICE, "a", None, {"n": 0})], "setup")
        start = stores[0].generation()
        barrier = threading.Barrier(len(stores))

        def change(i: int) -> str:
            barrier.wait()
            try:
                stores[i].apply([Put(SERVICE, "a", 1, {"n": i})], f"admin{i}")
            except Conflict:
                return "refused"
            return "applied"

        with ThreadPoolExecutor(len(stores)) as pool:
            outcomes = list(pool.map(change, range(len(stores))))
        assert sorted(outcomes) == ["applied"] + ["refused"] * 7
        row = stores[1].get(SERVICE, "a")
        assert row is not None and row.version == 2
        assert row.data == {"n": outcomes.index("applied")}
        assert stores[2].generation() == start + 1
    finally:
        for s in stores:
            s.close()


def test_two_nodes_share_one_postgresql_database_apart_and_its_password_is_never_shown(
    pg_schema: str,
) -> None:
    from tests.pg_stores import drop_schema, pg_dsn

    other = pg_schema + "_b"
    one, two = PostgresSettingsStore(pg_dsn(), pg_schema), PostgresSettingsStore(pg_dsn(), other)
    try:
        one.open()
        two.open()
        one.apply([Put(SERVICE, "a", None, {"n": 1})], "alice")
        assert two.get(SERVICE, "a") is None and two.generation() == 0
    finally:
        one.close()
        two.close()
        drop_schema(other)
    secret = PostgresSettingsStore("postgresql://u:s3cret@127.0.0.1:1/x", "n")
    assert "s3cret" not in repr(secret)
    with pytest.raises(HubError) as err:
        secret.open()
    assert "s3cret" not in str(err.value) and "***" in str(err.value)
    assert redact_dsn("postgresql://u@h/db?password=s3cret&x=1") == (
        "postgresql://u@h/db?password=***&x=1"
    )
