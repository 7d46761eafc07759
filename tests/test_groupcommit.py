"""The group-commit writer: a failure anywhere in a batch's write fails that batch's appends
and nothing else (no append waits forever, the writer serves the next batch)."""

from __future__ import annotations

import asyncio

import pytest

from xroad_hub.messagelog.groupcommit import GroupCommit, Pending
from xroad_hub.messagelog.store import LogError

from .test_messagelog import _rec


async def test_a_write_that_raises_fails_its_batch_and_the_writer_lives_on() -> None:
    calls = 0

    async def write(batch: list[Pending]) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            # e.g. a closed stream while the backend reports a problem
            raise ValueError("I/O operation on closed file")
        return 0  # leaf index of the batch's first record

    commits = GroupCommit(write, max_batch=10)
    commits.start("test")
    # Bounded waits: a writer that died would leave these appends waiting forever, and the
    # test must then fail rather than hang the suite.
    with pytest.raises(LogError, match="closed file"):
        await asyncio.wait_for(commits.append(_rec(0)), 30)
    assert await asyncio.wait_for(commits.append(_rec(1)), 30) == 0
    assert await commits.stop()
