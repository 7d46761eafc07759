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


async def test_an_abandoned_append_is_written_and_the_others_get_their_indexes() -> None:
    """A client that disconnects cancels its wait, not its record: the record is written in
    its batch, and every other append of that batch gets its own leaf index."""
    written: list[str] = []
    release = asyncio.Event()

    async def write(batch: list[Pending]) -> int:
        await release.wait()
        first = len(written)
        written.extend(rec.message_id for rec, _, _ in batch)
        return first

    commits = GroupCommit(write, max_batch=10)
    commits.start("test")
    tasks = [asyncio.create_task(commits.append(_rec(i))) for i in range(3)]
    await asyncio.sleep(0)  # all three queued, the writer holds the first batch
    tasks[1].cancel()
    release.set()
    got = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert isinstance(got[1], asyncio.CancelledError)
    assert got[0] == written.index(_rec(0).message_id)
    assert got[2] == written.index(_rec(2).message_id)
    assert _rec(1).message_id in written
    assert await commits.stop()
