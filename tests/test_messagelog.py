"""The message log, on every backend: durable, gap-free leaf indexes, group commit,
canonical leaves, tree head, certificates stored once, schema version refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from xroad_hub.messagelog import LogRecord
from xroad_hub.messagelog.sqlite import _COLUMNS as SQLITE_COLUMNS
from xroad_hub.messagelog.sqlite import SQLiteMessageLog
from xroad_hub.messagelog.store import LogError, MessageLog
from xroad_hub.protocol import merkle

if TYPE_CHECKING:  # imported by pytest as a plugin (below); importing it first breaks that
    from .messagelog_backends import Backend

pytest_plugins = ["tests.messagelog_backends"]


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


@pytest.fixture
async def mlog(backend: Backend) -> MessageLog:
    return await backend.open()


async def test_appends_are_gap_free_from_zero(mlog: MessageLog) -> None:
    got = [await mlog.append(_rec(i)) for i in range(10)]
    assert got == list(range(10))
    assert await mlog.count() == 10


async def test_concurrent_appends_durable_and_batched(backend: Backend) -> None:
    log = await backend.open()
    batches: list[int] = []
    log.group_commit.on_batch = batches.append  # type: ignore[attr-defined]
    try:
        got = await asyncio.gather(*(log.append(_rec(i)) for i in range(500)))
    finally:
        await log.close()
    assert sorted(got) == list(range(500))
    assert sum(batches) == 500
    assert len(batches) < 500, "appends were committed one by one, not batched"
    assert max(batches) > 1

    reopened = await backend.open()
    assert await reopened.count() == 500
    leaves = await reopened.leaves(0, 500)
    assert len(leaves) == 500
    # every append's returned index holds its own record
    for i, idx in enumerate(got):
        assert orjson.loads(leaves[idx])["message_id"] == f"msg-{i}"


async def test_max_batch_is_respected(backend: Backend) -> None:
    log = await backend.open(max_batch=16)
    batches: list[int] = []
    log.group_commit.on_batch = batches.append  # type: ignore[attr-defined]
    try:
        got = await asyncio.gather(*(log.append(_rec(i)) for i in range(100)))
    finally:
        await log.close()
    assert sorted(got) == list(range(100))
    assert max(batches) <= 16
    assert sum(batches) == 100


async def test_close_flushes_queued_records(backend: Backend) -> None:
    log = await backend.open()
    tasks = [asyncio.create_task(log.append(_rec(i))) for i in range(50)]
    await asyncio.sleep(0)  # every append has queued its record, none is committed yet
    assert not any(t.done() for t in tasks)
    await log.close()
    assert all(t.done() for t in tasks)
    assert sorted(t.result() for t in tasks) == list(range(50))
    reopened = await backend.open()
    assert await reopened.count() == 50


async def test_reopen_continues_numbering_and_tree_head(backend: Backend) -> None:
    log = await backend.open()
    assert [await log.append(_rec(i)) for i in range(3)] == [0, 1, 2]
    head = log.tree_head()
    await log.close()
    log = await backend.open()
    assert log.tree_head() == head  # rebuilt from the stored leaves
    assert await log.append(_rec(3)) == 3
    assert await log.count() == 4


async def test_tree_head_is_the_root_of_the_committed_leaves(mlog: MessageLog) -> None:
    assert mlog.tree_head() == (0, merkle.EMPTY_ROOT)
    await asyncio.gather(*(mlog.append(_rec(i)) for i in range(7)))
    leaves = await mlog.leaves(0, 7)
    assert mlog.tree_head() == (7, merkle.root([merkle.leaf_hash(x) for x in leaves]))


async def test_leaf_is_canonical_json_of_digests(mlog: MessageLog) -> None:
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


async def test_find_returns_rows_with_bodies(mlog: MessageLog) -> None:
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
    # every backend gives the SQLite columns, in order, so one audit reads them all
    assert list(rows[0]) == [*SQLITE_COLUMNS, "leaf"]  # the leaf, rebuilt


async def test_subjects_are_stored_and_indexed(backend: Backend) -> None:
    log = await backend.open()
    idx = await log.append(_rec(1, subjects=("TH1101700203450", "TH3100600112233")))
    await log.append(_rec(2))
    assert (await log.find("msg-1"))[0]["subjects"] == '["TH1101700203450","TH3100600112233"]'
    assert (await log.find("msg-2"))[0]["subjects"] == "[]"
    rows = await backend.query("SELECT subject, leaf_index FROM {exchange_subject} ORDER BY 1")
    assert rows == [("TH1101700203450", idx), ("TH3100600112233", idx)]


async def test_append_after_close_raises(backend: Backend) -> None:
    log = await backend.open()
    await log.append(_rec(0))
    await log.close()
    with pytest.raises(LogError):
        await log.append(_rec(1))
    await log.close()  # idempotent


async def test_append_before_open_raises(backend: Backend) -> None:
    log = backend.make()
    with pytest.raises(LogError):
        await log.append(_rec(0))


async def test_failed_write_raises_and_leaves_no_gap(mlog: MessageLog) -> None:
    assert await mlog.append(_rec(0)) == 0
    with pytest.raises(LogError):
        await mlog.append(_rec(1, message_id=None))  # violates NOT NULL
    assert await mlog.append(_rec(2)) == 1
    assert await mlog.count() == 2
    assert [orjson.loads(x)["message_id"] for x in await mlog.leaves(0, 10)] == ["msg-0", "msg-2"]
    assert mlog.tree_head()[0] == 2


async def test_log_of_another_schema_version_is_refused_not_migrated(backend: Backend) -> None:
    await backend.execute("CREATE TABLE {exchange} (leaf_index INTEGER PRIMARY KEY, leaf BYTEA)")
    log = backend.make()
    with pytest.raises(LogError, match="schema version 0"):
        await log.open()


async def test_certificates_are_stored_once_by_digest(backend: Backend) -> None:
    log = await backend.open()
    await asyncio.gather(*(log.append(_rec(i)) for i in range(10)))
    await log.close()
    certs = dict(await backend.query("SELECT sha256, der FROM {certificate}"))
    refs = await backend.query("SELECT DISTINCT response_cert_sha256 FROM {exchange} ORDER BY 1")
    assert sorted(certs.values()) == [
        b"client cert DER",
        b"provider cert DER 0",
        b"provider cert DER 1",
    ]
    assert {r[0] for r in refs} <= set(certs)
    assert certs[hashlib.sha256(b"client cert DER").hexdigest()] == b"client cert DER"


async def test_checkpoints_are_stored_with_their_certificate(backend: Backend) -> None:
    log = await backend.open()
    await log.append(_rec(0))
    size, root = log.tree_head()
    await log.add_checkpoint(size, root, "note text", b"checkpoint cert DER", 1700000100.0)
    await log.close()
    digest = hashlib.sha256(b"checkpoint cert DER").hexdigest()
    assert await backend.query(
        "SELECT size, root, note, cert_sha256, created_at FROM {checkpoint}"
    ) == [(1, root, "note text", digest, 1700000100.0)]
    assert await backend.query("SELECT der FROM {certificate} WHERE sha256 = ?", digest) == [
        (b"checkpoint cert DER",)
    ]


async def test_retention_purges_bodies_but_not_leaves(mlog: MessageLog) -> None:
    for i in range(4):
        await mlog.append(_rec(i))
    head = mlog.tree_head()
    # _rec(i) finished at 1700000000.5 + i: purge the first two.
    assert await mlog.purge_bodies(1700000002.0) == 2
    assert await mlog.purge_bodies(1700000002.0) == 0
    rows = [(await mlog.find(f"msg-{i}"))[0] for i in range(4)]
    assert [r["request_body"] is None for r in rows] == [True, True, False, False]
    assert rows[0]["leaf"] == _rec(0).leaf()  # the leaf (with the digests) stays
    assert mlog.tree_head() == head


async def test_witness_cosignature_and_consistency_proof(backend: Backend) -> None:
    log = await backend.open()
    for i in range(5):
        await log.append(_rec(i))
    size, root = log.tree_head()
    await log.add_checkpoint(size, root, "note", b"checkpoint cert DER", 1700000100.0)
    await log.record_witness(size, "note, co-signed", b"witness cert DER")
    assert await backend.query("SELECT note, witness_cert_sha256 FROM {checkpoint}") == [
        ("note, co-signed", hashlib.sha256(b"witness cert DER").hexdigest())
    ]
    hashes = [merkle.leaf_hash(x) for x in await log.leaves(0, 3)]
    proof = await log.consistency_proof(3, 5)
    assert merkle.verify_consistency(3, 5, merkle.root(hashes), root, proof)
    await log.close()
    # rebuilt at open, the tree still proves old sizes
    reopened = await backend.open()
    assert await reopened.consistency_proof(3, 5) == proof


async def test_proofs_reach_old_entries_the_tree_no_longer_holds(backend: Backend) -> None:
    """The tree keeps blocks of 256 leaves as their roots: a proof from an old size reads
    that block's leaf hashes back from the rows, and refuses rows changed since."""
    n = 1600  # six complete blocks and part of a seventh
    log = await backend.open()
    await asyncio.gather(*(log.append(_rec(i)) for i in range(n)))
    await log.close()
    log = await backend.open()  # nothing of the old blocks is in memory now
    hashes = [merkle.leaf_hash(x) for x in await log.leaves(0, n)]
    size, root = log.tree_head()
    assert (size, root) == (n, merkle.root(hashes))
    for old in (1, 3, 255, 256, 300, 511, 1000, 1599):
        proof = await log.consistency_proof(old, n)
        assert proof == merkle.consistency_proof(hashes, old, n)
        assert merkle.verify_consistency(old, n, merkle.root(hashes[:old]), root, proof)
    # Many at once, from and to sizes in every block (more blocks than the tree keeps).
    await log.close()
    log = await backend.open()
    wanted = [(o, s) for o in (5, 300, 600, 900, 1200, 1500) for s in (400, 700, 1300, n) if o <= s]
    proofs = await asyncio.gather(*(log.consistency_proof(o, s) for o, s in wanted))
    assert proofs == [merkle.consistency_proof(hashes, o, s) for o, s in wanted]
    await log.close()
    log = await backend.open()
    # Whoever holds the database rewrites an entry's leaf hash in the second block.
    await backend.tamper(
        "UPDATE {exchange} SET leaf_hash = ? WHERE leaf_index = 260", merkle.leaf_hash(b"x")
    )
    # A proof that needs only the block's root still holds; one that needs its leaves fails.
    assert await log.consistency_proof(256, n) == merkle.consistency_proof(hashes, 256, n)
    with pytest.raises(LogError, match=r"entries 256\.\.511 are not the ones"):
        await log.consistency_proof(270, n)
    await backend.tamper("DELETE FROM {exchange} WHERE leaf_index = 100")
    with pytest.raises(LogError, match=r"entries 0\.\.255 are not all there"):
        await log.consistency_proof(50, n)
    assert log.tree_head() == (size, root)  # the head never reads the rows


async def test_the_log_stores_its_block_roots_and_puts_them_right(backend: Backend) -> None:
    """Evidence exports prove from the complete blocks' roots the log holds: a checkpoint
    stores those completed since the last, and a node that opens the log stores missing
    ones and drops stray ones. One that differs from the rows is left alone: the rows may
    be what was changed (exports check against the signed checkpoints either way)."""
    log = await backend.open()
    await asyncio.gather(*(log.append(_rec(i)) for i in range(1100)))
    hashes = [merkle.leaf_hash(x) for x in await log.leaves(0, 1100)]

    def blocks(size: int) -> list[tuple[int, bytes]]:
        return [(b, merkle.root(hashes[b * 256 : (b + 1) * 256])) for b in range(size // 256)]

    stored = "SELECT block, root FROM {tree_block} ORDER BY block"
    assert await backend.query(stored) == []
    await log.add_checkpoint(1100, log.tree_head()[1], "note", b"cert DER", 1700000100.0)
    assert await backend.query(stored) == blocks(1100)
    await log.close()
    await backend.tamper("UPDATE {tree_block} SET root = ? WHERE block = 1", b"\0" * 32)
    await backend.tamper("DELETE FROM {tree_block} WHERE block = 2")
    await backend.tamper("INSERT INTO {tree_block} VALUES (1000000, ?)", b"\0" * 32)
    await backend.tamper("INSERT INTO {tree_block} VALUES (-1, ?)", b"\0" * 32)
    log = await backend.open()
    kept = blocks(1100)
    kept[1] = (1, b"\0" * 32)
    assert await backend.query(stored) == kept
    await asyncio.gather(*(log.append(_rec(i)) for i in range(1100, 1400)))
    hashes += [merkle.leaf_hash(x) for x in await log.leaves(1100, 1400)]
    await log.add_checkpoint(1400, log.tree_head()[1], "note", b"cert DER", 1700000200.0)
    assert await backend.query(stored) == [*kept, *blocks(1400)[len(kept) :]]


async def test_a_proof_sees_every_entry_while_a_reader_is_mid_query(tmp_path: Path) -> None:
    """A read left open on the log's readers' connection holds an older snapshot: the
    leaves a proof reads back must not come from it (they would look removed)."""
    log = SQLiteMessageLog(tmp_path / "messages.db")
    await log.open()
    try:
        await asyncio.gather(*(log.append(_rec(i)) for i in range(250)))
        assert log._db is not None
        async with log._db.execute("SELECT leaf_index FROM exchange") as unfinished:
            await unfinished.fetchone()
            await asyncio.gather(*(log.append(_rec(i)) for i in range(250, 300)))
            hashes = [merkle.leaf_hash(_rec(i).leaf()) for i in range(300)]
            assert await log.consistency_proof(100, 258) == merkle.consistency_proof(
                hashes, 100, 258
            )
    finally:
        await log.close()


async def test_checkpoint_timestamps(backend: Backend) -> None:
    log = await backend.open()
    for size in (1, 2):
        await log.append(_rec(size))
        _, root = log.tree_head()
        note = f"origin\n{size}\nroot\n\n— sig{size}\n"
        await log.add_checkpoint(size, root, note, b"checkpoint cert DER", 1700000100.0 + size)
    assert await log.unstamped_checkpoints() == [
        (1, "origin\n1\nroot\n", 1700000101.0),
        (2, "origin\n2\nroot\n", 1700000102.0),
    ]
    await log.record_timestamp(1, b"tsr DER")
    assert [c[0] for c in await log.unstamped_checkpoints()] == [2]
    assert await backend.query("SELECT size, timestamp_token FROM {checkpoint} ORDER BY 1") == [
        (1, b"tsr DER"),
        (2, None),
    ]


async def test_signed_globalconfs_are_kept_once_and_added_to_older_logs(backend: Backend) -> None:
    log = await backend.open()
    for _ in range(2):  # the same document twice is kept once
        await log.record_globalconf(
            b"signed conf 1", b"signer cert DER", 1700000000.0, 1700000600.0
        )
    assert await backend.query("SELECT COUNT(*) FROM {globalconf}") == [(1,)]
    await log.close()
    # A log made before nodes kept configurations gets the table when it opens.
    await backend.execute("DROP TABLE {globalconf}")
    log = await backend.open()
    await log.record_globalconf(b"signed conf 2", b"signer cert DER", 1700000060.0, 1700000660.0)
    rows = await backend.query(
        "SELECT sha256, generated_at, signed, signer_cert_sha256 FROM {globalconf}"
    )
    assert rows == [
        (hashlib.sha256(b"signed conf 2").hexdigest(), 1700000060.0, b"signed conf 2",
         hashlib.sha256(b"signer cert DER").hexdigest()),
    ]  # fmt: skip
    stored = await backend.query(
        "SELECT der FROM {certificate} WHERE sha256 = ?",
        hashlib.sha256(b"signer cert DER").hexdigest(),
    )
    assert stored == [(b"signer cert DER",)]


async def test_sqlite_writer_commits_durably(tmp_path: Path) -> None:
    """The writer thread's own connection is the one whose commits answer appends: it must
    commit with synchronous=FULL in WAL mode (a committed record survives power loss)."""
    from xroad_hub.messagelog.sqlite import SQLiteMessageLog

    log = SQLiteMessageLog(tmp_path / "log.db")
    await log.open()
    try:
        wdb = log._wdb  # type: ignore[attr-defined]
        settings = await log.group_commit.run(
            lambda: (wdb.execute("PRAGMA synchronous").fetchone()[0],
                     wdb.execute("PRAGMA journal_mode").fetchone()[0])
        )  # fmt: skip
        assert settings == (2, "wal")  # 2: FULL
        assert await log.append(_rec(0)) == 0
    finally:
        await log.close()


async def test_a_log_with_a_removed_row_is_refused_at_open(backend: Backend) -> None:
    # Numbering on after a gap would put every later leaf at the wrong index of the tree.
    log = await backend.open()
    for i in range(3):
        await log.append(_rec(i))
    await log.close()
    await backend.tamper("DELETE FROM {exchange} WHERE leaf_index = 1")
    with pytest.raises(LogError, match=r"no entry 1 \(next is 2\): rows were removed"):
        await backend.make().open()


async def test_a_sqlite_log_has_one_writer_at_a_time(tmp_path: Path) -> None:
    # Two writers would assign the same leaf indexes (the PostgreSQL log holds an advisory
    # lock for the same reason); the second is refused at open, until the first closes.
    path = tmp_path / "messagelog.sqlite"
    first = SQLiteMessageLog(path)
    await first.open()
    try:
        await first.append(_rec(0))
        with pytest.raises(LogError, match="already open for writing by another process"):
            await SQLiteMessageLog(path).open()
        assert await first.append(_rec(1)) == 1  # the refusal took nothing from the first
    finally:
        await first.close()
    second = SQLiteMessageLog(path)
    await second.open()
    try:
        assert await second.append(_rec(2)) == 2
    finally:
        await second.close()
