"""A node is built complete once and stopped in reverse order: its runtime cannot be
patched after it is built, and a resource that fails to stop does not keep the others (the
message log, the spent-token store, the HTTP session) open; the failure is still reported."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from xroad_hub.protocol.identifiers import parse_service_id

from .conftest import Fed

DBD = "TH/GOV/DBD/hub1"


async def test_the_runtime_is_complete_and_frozen(own_fed: Fed) -> None:
    node = own_fed.federation.nodes[DBD]
    rt = node.runtime
    assert rt is not None and node.checkpointer is not None
    assert rt.logging_ok == node.checkpointer.healthy  # given when built, not set afterwards
    with pytest.raises(dataclasses.FrozenInstanceError):
        rt.logging_ok = lambda: True  # type: ignore[misc]
    service = next(iter(rt.services.values()))
    with pytest.raises(TypeError):
        rt.services[parse_service_id("TH/GOV/DBD/registry/new")] = service  # type: ignore[index]


async def test_a_failing_final_checkpoint_still_closes_log_tokens_and_session(
    own_fed: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = own_fed.federation.nodes[DBD]
    assert node.runtime is not None and node.checkpointer is not None
    closed: list[str] = []

    def spy(name: str, close: Any) -> Any:
        async def closing() -> None:
            closed.append(name)
            await close()

        return closing

    stop_checkpointer = node.checkpointer.stop

    async def broken() -> None:
        await stop_checkpointer()  # (closes the checkpointer's own witness session)
        raise RuntimeError("final checkpoint failed")

    monkeypatch.setattr(node.checkpointer, "stop", broken)
    monkeypatch.setattr(node.runtime.log, "close", spy("log", node.runtime.log.close))
    monkeypatch.setattr(node.used_tokens, "close", spy("tokens", node.used_tokens.close))
    with pytest.raises(RuntimeError, match="final checkpoint failed"):
        await node.stop()
    assert closed == ["tokens", "log"]  # reverse order of opening
    assert node._session is not None and node._session.closed
    await node.stop()  # stopping again (as Federation.stop does) is harmless
