"""SQLite message log: durable, gap-free leaf indexes, group commit, canonical leaves."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from xroad_hub.messagelog import LogRecord, SQLiteMessageLog
from xroad_hub.messagelog.store import LogError


def _rec(i: int, **overrides: object) -> LogRecord:
    fields: dict[str, object] = {
        "message_id": f"msg-{i}",
        "request_id": f"req-{i}",
        "role": "client",
        "client": "TH/GOV/DGA/citizenportal",
        "service": "TH/GOV/DOPA/population/personInfo",
        "user_id": "TH1101700203450",
        "issue": None,
        "represented_party": None,
        "method": "GET",
        "status": 200,
        "error_type": None,
        "started_at": 1700000000.125 + i,
        "finished_at": 1700000000.5 + i,
        "request_meta": b'{"id":"msg-%d"}' % i,
        "request_signature": b"req-signature-%d" % i,
        "request_body": b"secret request body %d" % i,
        "response_meta": b'{"kind":"response"}',
        "response_signature": b"resp-signature",
        "response_body": b"secret response body %d" % i,
        "request_cert": b"client cert DER",
        "response_cert": b"provider cert DER %d" % (i % 2),
    }
    fields.update(overrides)
    return LogRecord(**fields)  # type: ignore[arg-type]


_opened: list[SQLiteMessageLog] = []


async def _open(path: Path, **kw: int) -> SQLiteMessageLog:
    log = SQLiteMessageLog(path, **kw)
    await log.open()
    _opened.append(log)
    return log


@pytest.fixture(autouse=True)
async def _close_all() -> AsyncIterator[None]:
    # A failing assertion must not leave a writer task and its SQLite thread running
    # (that would hang the test process at exit); close() is idempotent.
    yield
    while _opened:
        await _opened.pop().close()


@pytest.fixture
async def mlog(tmp_path: Path) -> SQLiteMessageLog:
    return await _open(tmp_path / "log" / "messages.db")


async def test_appends_are_gap_free_from_zero(mlog: SQLiteMessageLog) -> None:
    got = [await mlog.append(_rec(i)) for i in range(10)]
    assert got == list(range(10))
    assert await mlog.count() == 10


async def test_concurrent_appends_durable_and_batched(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    log = await _open(path)
    batches: list[int] = []
    real_write = log._write

    async def counting_write(batch):  # type: ignore[no-untyped-def]
        batches.append(len(batch))
        await real_write(batch)

    log._write = counting_write  # type: ignore[method-assign]
    try:
        got = await asyncio.gather(*(log.append(_rec(i)) for i in range(500)))
    finally:
        await log.close()
    assert sorted(got) == list(range(500))
    assert sum(batches) == 500
    assert len(batches) < 500, "appends were committed one by one, not batched"
    assert max(batches) > 1

    reopened = await _open(path)
    try:
        assert await reopened.count() == 500
        leaves = await reopened.leaves(0, 500)
        assert len(leaves) == 500
        # every append's returned index holds its own record
        for i, idx in enumerate(got):
            assert orjson.loads(leaves[idx])["message_id"] == f"msg-{i}"
    finally:
        await reopened.close()


async def test_max_batch_is_respected(tmp_path: Path) -> None:
    log = await _open(tmp_path / "m.db", max_batch=16)
    batches: list[int] = []
    real_write = log._write

    async def counting_write(batch):  # type: ignore[no-untyped-def]
        batches.append(len(batch))
        await real_write(batch)

    log._write = counting_write  # type: ignore[method-assign]
    try:
        got = await asyncio.gather(*(log.append(_rec(i)) for i in range(100)))
    finally:
        await log.close()
    assert sorted(got) == list(range(100))
    assert max(batches) <= 16
    assert sum(batches) == 100


async def test_close_flushes_queued_records(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    log = await _open(path)
    tasks = [asyncio.create_task(log.append(_rec(i))) for i in range(50)]
    await asyncio.sleep(0)  # every append has queued its record, none is committed yet
    assert not any(t.done() for t in tasks)
    await log.close()
    assert all(t.done() for t in tasks)
    assert sorted(t.result() for t in tasks) == list(range(50))
    reopened = await _open(path)
    try:
        assert await reopened.count() == 50
    finally:
        await reopened.close()


async def test_reopen_continues_numbering(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    log = await _open(path)
    assert [await log.append(_rec(i)) for i in range(3)] == [0, 1, 2]
    await log.close()
    log = await _open(path)
    try:
        assert await log.append(_rec(3)) == 3
        assert await log.count() == 4
    finally:
        await log.close()


async def test_leaf_is_canonical_json_of_digests(mlog: SQLiteMessageLog) -> None:
    rec = _rec(1)
    leaf = rec.leaf()
    parsed = json.loads(leaf)
    assert leaf == json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
    assert list(parsed) == sorted(parsed)
    for name in ("request_body", "response_body"):
        assert getattr(rec, name) not in leaf
        assert parsed[f"{name}_sha256"] == hashlib.sha256(getattr(rec, name)).hexdigest()
    for name in ("request_meta", "request_signature", "response_meta", "response_signature"):
        assert parsed[f"{name}_sha256"] == hashlib.sha256(getattr(rec, name)).hexdigest()
    assert b"secret" not in leaf
    assert parsed["message_id"] == "msg-1"
    assert parsed["started_at"] == 1700000001.125
    assert parsed["v"] == 1
    # the stored leaf is exactly rec.leaf()
    idx = await mlog.append(rec)
    assert await mlog.leaves(idx, idx + 1) == [leaf]


def test_leaf_of_record_without_response() -> None:
    rec = _rec(2, response_meta=None, response_signature=None, response_body=None)
    parsed = json.loads(rec.leaf())
    assert parsed["response_body_sha256"] is None
    assert parsed["response_meta_sha256"] is None
    assert parsed["request_body_sha256"] == hashlib.sha256(rec.request_body).hexdigest()


def test_leaf_changes_with_any_body_byte() -> None:
    a = _rec(3)
    b = _rec(3, response_body=a.response_body + b"!")
    assert a.leaf() != b.leaf()
    assert len(a.leaf()) == len(b.leaf())


async def test_find_returns_rows_with_bodies(mlog: SQLiteMessageLog) -> None:
    await mlog.append(_rec(1))
    idx_a = await mlog.append(_rec(2, role="client"))
    idx_b = await mlog.append(_rec(2, role="provider", status=500, error_type="Server.X"))
    rows = await mlog.find("msg-2")
    assert [r["leaf_index"] for r in rows] == [idx_a, idx_b]
    assert [r["role"] for r in rows] == ["client", "provider"]
    assert rows[0]["request_body"] == b"secret request body 2"
    assert rows[0]["response_body"] == b"secret response body 2"
    assert rows[1]["error_type"] == "Server.X"
    assert rows[1]["status"] == 500
    assert rows[0]["leaf"] == _rec(2).leaf()
    assert await mlog.find("nope") == []
    # the row factory is restored: plain queries still give tuples
    assert await mlog.count() == 3


async def test_append_after_close_raises(tmp_path: Path) -> None:
    log = await _open(tmp_path / "m.db")
    await log.append(_rec(0))
    await log.close()
    with pytest.raises(LogError):
        await log.append(_rec(1))
    await log.close()  # idempotent


async def test_append_before_open_raises(tmp_path: Path) -> None:
    log = SQLiteMessageLog(tmp_path / "m.db")
    with pytest.raises(LogError):
        await log.append(_rec(0))


async def test_failed_write_raises_and_leaves_no_gap(mlog: SQLiteMessageLog) -> None:
    assert await mlog.append(_rec(0)) == 0
    with pytest.raises(LogError):
        await mlog.append(_rec(1, message_id=None))  # violates NOT NULL
    assert await mlog.append(_rec(2)) == 1
    assert await mlog.count() == 2
    assert [orjson.loads(x)["message_id"] for x in await mlog.leaves(0, 10)] == ["msg-0", "msg-2"]


async def test_log_of_another_schema_version_is_refused_not_migrated(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE exchange (leaf_index INTEGER PRIMARY KEY, leaf BLOB)")
    log = SQLiteMessageLog(path)
    with pytest.raises(LogError, match="schema version 0"):
        await log.open()


async def test_certificates_are_stored_once_by_digest(tmp_path: Path) -> None:
    import sqlite3

    log = SQLiteMessageLog(tmp_path / "log.sqlite")
    await log.open()
    await asyncio.gather(*(log.append(_rec(i)) for i in range(10)))
    await log.close()
    with sqlite3.connect(tmp_path / "log.sqlite") as conn:
        certs = dict(conn.execute("SELECT sha256, der FROM certificate"))
        refs = conn.execute(
            "SELECT DISTINCT response_cert_sha256 FROM exchange ORDER BY 1"
        ).fetchall()
    assert sorted(certs.values()) == [
        b"client cert DER",
        b"provider cert DER 0",
        b"provider cert DER 1",
    ]
    assert {r[0] for r in refs} <= set(certs)
    assert certs[hashlib.sha256(b"client cert DER").hexdigest()] == b"client cert DER"


async def test_retention_purges_bodies_but_not_leaves(tmp_path: Path) -> None:
    log = SQLiteMessageLog(tmp_path / "log.sqlite")
    await log.open()
    try:
        for i in range(4):
            await log.append(_rec(i))
        head = log.tree_head()
        # _rec(i) finished at 1700000000.5 + i: purge the first two.
        assert await log.purge_bodies(1700000002.0) == 2
        assert await log.purge_bodies(1700000002.0) == 0
        rows = [(await log.find(f"msg-{i}"))[0] for i in range(4)]
        assert [r["request_body"] is None for r in rows] == [True, True, False, False]
        assert rows[0]["leaf"] == _rec(0).leaf()  # the leaf (with the digests) stays
        assert log.tree_head() == head
    finally:
        await log.close()
