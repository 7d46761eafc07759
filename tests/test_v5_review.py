"""Review of the v5 log layout (leaf rebuilt from the columns, only its hash stored).

Each test is a defect found in review: an honest log that must verify, tampering the
audit must report, a crafted row that must be refused with a clear error."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from xroad_hub.dev.signedlog import build_signed_log
from xroad_hub.messagelog.audit import verify_log
from xroad_hub.messagelog.reader import LogReadError
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.messagelog.source import reading
from xroad_hub.messagelog.store import LogError
from xroad_hub.protocol import merkle

if TYPE_CHECKING:
    from tests.messagelog_backends import Backend

pytest_plugins = ["tests.messagelog_backends"]


# 1. An honest log must verify, whatever number type the record's times have -------------


@pytest.mark.parametrize("kind", ["whole seconds (int)", "negative zero"])
async def test_honest_log_with_any_time_value_verifies(backend: Backend, kind: str) -> None:
    """LogRecord's times are floats to the type checker, and an int is one (PEP 484), as
    the audit's column types allow. The leaf was hashed from the record's int
    ("1700000000") but is rebuilt from the REAL / double precision column
    ("1700000000.0"); SQLite keeps no -0.0. An honest log then fails its audit."""
    base = int(time.time())
    when = (lambda i: base + i) if kind.startswith("whole") else (lambda i: -0.0)
    roots = await build_signed_log(backend.make(), 3, when)
    report = await asyncio.to_thread(verify_log, backend.source(), roots, now=time.time())
    assert report.ok, [str(f) for f in report.findings]

    def rebuilt() -> list[bool]:
        with reading(backend.source()) as reader:
            return [merkle.leaf_hash(leaf_of(r)) == r["leaf_hash"] for r in reader.entries()]

    assert await asyncio.to_thread(rebuilt) == [True] * 3


# 2. Tree-only mode must still tie what it reads to the tree ------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        # The citizen's subject removed from the entry AND from the subject index.
        "UPDATE {exchange} SET subjects = '[]' WHERE leaf_index = 1",
        # ... or a finish time moved (coverage and grace are judged by it).
        "UPDATE {exchange} SET finished_at = finished_at + 86400 WHERE leaf_index = 1",
        # ... or who asked, in a column every search and the tracker read.
        "UPDATE {exchange} SET client = 'TH/GOV/DGA/other' WHERE leaf_index = 1",
    ],
)
async def test_tree_only_mode_reports_a_changed_covered_entry(backend: Backend, sql: str) -> None:
    """v4's tree-only pass hashed each stored leaf and read the subjects from it, so a
    covered entry could not change unseen ("enough to show that nothing covered by a
    checkpoint changed"). v5's reads leaf_hash and the loose columns and never rebuilds a
    leaf: any column of a witnessed entry, and the subject index with it, can be rewritten
    and the tree-only audit passes."""
    roots = await build_signed_log(backend.make(), 3)
    assert (await asyncio.to_thread(verify_log, backend.source(), roots, entries=False)).ok
    await backend.tamper(sql)
    await backend.tamper("DELETE FROM {exchange_subject} WHERE leaf_index = 1")
    if "subjects" not in sql:  # the index must still match the (unchanged) subjects
        await backend.tamper("INSERT INTO {exchange_subject} VALUES ('0105744622488', 1)")
    full = await asyncio.to_thread(verify_log, backend.source(), roots, entries=True)
    assert {f.leaf_index for f in full.findings} == {1}, [str(f) for f in full.findings]
    tree_only = await asyncio.to_thread(verify_log, backend.source(), roots, entries=False)
    assert {f.leaf_index for f in tree_only.findings} == {1}, [str(f) for f in tree_only.findings]


# 3. A stored leaf hash that is no SHA-256 hash ------------------------------------------


@pytest.mark.parametrize("value", [b"\x01" * 31, 32, "ab" * 16])
async def test_start_up_refuses_a_leaf_hash_that_is_not_one(
    backend: Backend, value: object
) -> None:
    """Start-up loads the tree from the stored hashes: a hash of the wrong length crashed
    it with merkle's ValueError, and an integer N (SQLite) became N zero bytes, taken
    silently as a leaf hash the node then signs checkpoints over. It must refuse with a
    LogError naming the entry, as it does for a missing one."""
    if backend.name == "postgres" and not isinstance(value, bytes):
        pytest.skip("a bytea column holds bytes only")
    await build_signed_log(backend.make(), 2)
    await backend.tamper("UPDATE {exchange} SET leaf_hash = ? WHERE leaf_index = 1", value)
    log = backend.make()
    backend.opened.append(log)
    with pytest.raises(LogError, match="entry 1"):
        await log.open()


async def test_reader_refuses_a_leaf_hash_that_is_not_one(backend: Backend) -> None:
    """Evidence export builds its inclusion proof from ``reader.leaf_hashes``: a stored
    hash of the wrong length crashed it (merkle's ValueError) instead of a LogReadError,
    which export turns into an EvidenceError."""
    await build_signed_log(backend.make(), 2)
    await backend.tamper("UPDATE {exchange} SET leaf_hash = ? WHERE leaf_index = 0", b"\0")

    def hashes() -> list[bytes]:
        with reading(backend.source()) as reader:
            return reader.leaf_hashes(2)

    with pytest.raises(LogReadError, match="entry 0"):
        await asyncio.to_thread(hashes)


# 4. A log of the previous layout, kept for audit as the node tells its operator --------


async def test_a_v4_log_is_named_as_such_not_an_sql_error(backend: Backend) -> None:
    """The node refuses a v4 log with "keep that file for audit"; the auditor's reader
    (verify, export, search) then failed on "no such column: leaf_hash" (or "leaf_index,
    leaf_hash"), which tells the auditor nothing. It must say which layout the log has."""
    await build_signed_log(backend.make(), 1)
    await backend.tamper("ALTER TABLE {exchange} RENAME COLUMN leaf_hash TO leaf")
    if backend.name == "sqlite":
        await backend.tamper("PRAGMA user_version = 4")
    else:
        schema = getattr(backend, "schema")  # noqa: B009 (PostgresBackend only)
        await backend.tamper(f'UPDATE "{schema}".schema_version SET version = 4')

    def opened() -> None:
        with reading(backend.source()) as reader:
            reader.count()

    with pytest.raises(LogReadError, match="version 4"):
        await asyncio.to_thread(opened)
