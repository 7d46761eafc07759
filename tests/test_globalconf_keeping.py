"""Which signed global configurations a node keeps in its log: the one in force before the
first exchange logged under it, again when the rules change or the kept copy nears its
expiry, and not on every download (a copy per refresh would grow the log for nothing)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from xroad_hub.node.runtime import NodeRuntime
from xroad_hub.protocol.globalconf import GlobalConf, NodeEntry
from xroad_hub.protocol.identifiers import parse_client_id, parse_member_id, parse_node_id


def _conf(serial: int, *, hosts: str = "TH/GOV/DBD/registry", age: float = 0) -> GlobalConf:
    made = datetime.now(UTC) - timedelta(seconds=age)
    node = NodeEntry(parse_node_id("TH/GOV/DBD/hub1"), "127.0.0.1:1", "ab" * 32,
                     frozenset({parse_client_id(hosts)}))  # fmt: skip
    return GlobalConf("TH", serial, made, made + timedelta(seconds=600),
                      {parse_member_id("TH/GOV/DBD"): "DBD"}, (node,), (b"root CA",))  # fmt: skip


class _Client:
    anchor_der = b"registry signing cert"

    def __init__(self, conf: GlobalConf | None) -> None:
        self.conf = conf

    def current_signed(self) -> tuple[GlobalConf, bytes] | None:
        return None if self.conf is None else (self.conf, b"signed %d" % self.conf.serial)


class _Log:
    def __init__(self) -> None:
        self.kept: list[bytes] = []

    async def record_globalconf(self, signed: bytes, *_: object) -> None:
        await asyncio.sleep(0)  # another exchange may arrive meanwhile
        self.kept.append(signed)


def _runtime(client: _Client, log: _Log) -> NodeRuntime:
    fields = {f.name: None for f in dataclasses.fields(NodeRuntime) if f.init}
    return NodeRuntime(**{**fields, "globalconf": client, "log": log})  # type: ignore[arg-type]


async def test_kept_once_per_rules_and_validity() -> None:
    client, log = _Client(_conf(1)), _Log()
    rt = _runtime(client, log)
    await asyncio.gather(*(rt._keep_globalconf() for _ in range(5)))  # concurrent exchanges
    assert log.kept == [b"signed 1"]
    client.conf = _conf(2)  # a fresh download saying the same
    await rt._keep_globalconf()
    assert log.kept == [b"signed 1"]
    client.conf = _conf(3, hosts="TH/GOV/DBD/other")  # the hosting changed
    await rt._keep_globalconf()
    assert log.kept == [b"signed 1", b"signed 3"]
    # The kept copy is about to expire: the one in force now is kept, same rules or not.
    rt._kept.conf = _conf(3, hosts="TH/GOV/DBD/other", age=590)
    client.conf = _conf(4, hosts="TH/GOV/DBD/other")
    await rt._keep_globalconf()
    assert log.kept == [b"signed 1", b"signed 3", b"signed 4"]


async def test_nothing_kept_without_a_configuration() -> None:
    log = _Log()
    await _runtime(_Client(None), log)._keep_globalconf()
    assert log.kept == []
