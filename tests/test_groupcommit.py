"""The group-commit writer: a failure anywhere in a batch's write fails that batch's appends
and nothing else (no append waits forever, the writer serves the next batch)."""

from __future__ import annotations

import asyncio

import pytest

from xroad_hub.messagelog.groupcommit import GroupCommit, Pending, ThreadedGroupCommit
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
        written.extend(rec.message_id for rec, _, _, _ in batch)
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


async def test_threaded_writer_fails_a_batch_whose_write_raises_and_lives_on() -> None:
    """The SQLite log's writer thread: a failed write fails its batch's appends (they must
    not be answered) and the next batch is written; the tree only takes committed ones."""
    calls = 0
    committed: list[str] = []

    def write(batch: list[Pending]) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk I/O error")
        return 7

    commits = ThreadedGroupCommit(
        write, lambda batch, first: committed.extend(r.message_id for r, _, _, _ in batch), 10
    )
    commits.start("test")
    with pytest.raises(LogError, match="disk I/O error"):
        await asyncio.wait_for(commits.append(_rec(0)), 30)
    assert await asyncio.wait_for(commits.append(_rec(1)), 30) == 7
    assert committed == [_rec(1).message_id]
    assert await commits.stop()
    with pytest.raises(LogError, match="not open"):
        await commits.append(_rec(2))


async def test_threaded_writer_runs_other_writes_in_order_with_the_batches() -> None:
    """A checkpoint written through the writer runs after every append queued before it
    (its tree head covers them), and its failure is its caller's alone."""
    written: list[str] = []

    def write(batch: list[Pending]) -> int:
        first = len(written)
        written.extend(rec.message_id for rec, _, _, _ in batch)
        return first

    def checkpoint() -> int:
        written.append("checkpoint")
        return len(written)

    def broken() -> None:
        raise ValueError("UNIQUE constraint failed")

    commits = ThreadedGroupCommit(write, lambda batch, first: None, 10)
    commits.start("test")
    appends = [asyncio.create_task(commits.append(_rec(i))) for i in range(25)]
    await asyncio.sleep(0)  # all 25 queued before the checkpoint
    assert await asyncio.wait_for(commits.run(checkpoint), 30) == 26
    with pytest.raises(ValueError, match="UNIQUE"):
        await asyncio.wait_for(commits.run(broken), 30)
    got = await asyncio.wait_for(asyncio.gather(*appends), 30)
    assert written[:25] == [_rec(i).message_id for i in range(25)]
    assert written[25] == "checkpoint"
    assert got == list(range(25))
    late = asyncio.create_task(commits.append(_rec(99)))
    await asyncio.sleep(0)
    assert await commits.stop()  # writes what was accepted, then stops
    assert late.done() and late.result() == 26
