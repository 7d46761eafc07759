"""The node's settings database (versions compared on every change, across processes too),
the service table swapped whole (an adapter closed only after the requests using it), and
the per-operation access rule of services registered from OpenAPI."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from adapters import AdapterRequest, AdapterResponse
from xroad_hub.errors import ProtocolError
from xroad_hub.federation import ServiceConfig, load_table
from xroad_hub.node.runtime import HostedService, ServiceTable
from xroad_hub.node.services import ServiceManager
from xroad_hub.node.settings import SERVICE, Conflict, Put, SQLiteSettingsStore
from xroad_hub.protocol.access import check_endpoint, parse_endpoint
from xroad_hub.protocol.identifiers import parse_client_id, parse_service_id


def _store(path: Path) -> SQLiteSettingsStore:
    store = SQLiteSettingsStore(path)
    store.open()
    return store


def test_a_change_made_from_an_old_version_is_refused_also_from_another_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node-settings.sqlite"
    first, second = _store(path), _store(path)  # two processes of one node, one file
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
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
    tmp_path: Path,
) -> None:
    path = tmp_path / "node-settings.sqlite"
    stores = [_store(path), _store(path)]
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
