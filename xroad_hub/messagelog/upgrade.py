"""Upgrading a version 4 message log to version 5 (``xroad-hub node upgrade-log``).

Version 4 stored each entry's leaf beside the columns it is made of; version 5 stores its
hash and rebuilds the leaf (layout.py). The upgrade writes a new file beside the old one,
entry by entry, and keeps an entry only if its columns rebuild, byte for byte, the leaf
version 4 stored: the tree, its root and every checkpoint then stay what they were, and the
upgraded log verifies with the same checkpoints, witness co-signatures and timestamps. An
entry whose stored leaf its columns do not give (a log changed behind the node's back) stops
the upgrade, naming it: such a log is for ``audit verify`` of the version that wrote it.

The old log is never changed: a SQLite file is renamed to ``FILE.v4``, a PostgreSQL schema
to ``SCHEMA_v4`` (kept as they were, for audit by the old version), and the new log takes its
name, so the node starts on it with its settings as they are. The node must be stopped: the
old log is held with an exclusive lock (SQLite) or the writer's advisory lock (PostgreSQL)
throughout, and a PostgreSQL upgrade is one transaction.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from xroad_hub.errors import HubError
from xroad_hub.messagelog.layout import COLUMNS, SCHEMA_VERSION, STORED
from xroad_hub.messagelog.postgres import (
    added_ddl,
    log_ddl,
    validate_schema_name,
    writer_lock_key,
)
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.messagelog.sqlite import ADDED_SCHEMA, SCHEMA, writer_lock
from xroad_hub.messagelog.store import LogError
from xroad_hub.privatefile import ensure_private
from xroad_hub.protocol import merkle

__all__ = ["UpgradeError", "upgrade_postgres_log", "upgrade_sqlite_log"]

_FROM_VERSION = 4
_BATCH = 4096
_PG_NAME = 63  # PostgreSQL's longest identifier, in bytes


class UpgradeError(HubError):
    """The log cannot be upgraded (the message says why and what to do)."""


def upgrade_sqlite_log(path: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Upgrade the version 4 log ``path`` to version 5; returns where the old file is kept.

    ``progress(done, total)`` is told every batch of entries."""
    if not path.is_file():
        raise UpgradeError(f"{path} is not a file")
    try:
        # One writer at a time, as for a node: a second upgrade of the file would delete this
        # one's FILE.upgrading and build its own there, which this one would then rename
        # over FILE half copied; a node would write to the file being copied.
        lock = writer_lock(path)
    except LogError as exc:
        raise UpgradeError(str(exc)) from exc
    try:
        return _upgrade_sqlite(path, progress)
    except OSError as exc:
        raise UpgradeError(f"upgrading {path} failed: {exc}") from exc
    finally:
        os.close(lock)  # after every SQLite connection to it is closed (POSIX lock semantics)


def _upgrade_sqlite(path: Path, progress: Callable[[int, int], None] | None) -> Path:
    kept = path.with_name(path.name + ".v4")
    new = path.with_name(path.name + ".upgrading")
    try:
        old = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise UpgradeError(f"cannot open {path}: {exc}") from exc
    try:
        try:
            # No node may write while the entries are copied (one that tries fails closed).
            old.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as exc:
            raise UpgradeError(f"{path} is in use ({exc}): stop the node first") from exc
        _check_version(str(path), int(old.execute("PRAGMA user_version").fetchone()[0]))
        if kept.exists():
            raise UpgradeError(f"{kept} exists (an earlier upgrade kept it): move it aside first")
        new.unlink(missing_ok=True)  # left by an upgrade that was interrupted
        _copy(old, new, progress)
        old.execute("COMMIT")
    except sqlite3.Error as exc:
        new.unlink(missing_ok=True)
        raise UpgradeError(f"upgrading {path} failed: {exc}") from exc
    except BaseException:
        new.unlink(missing_ok=True)
        raise
    finally:
        old.close()
    for suffix in ("-wal", "-shm"):
        if path.with_name(path.name + suffix).exists():
            # Another connection still has the file open: it may hold committed entries
            # only its write-ahead log has. Nothing was renamed.
            new.unlink(missing_ok=True)
            raise UpgradeError(f"{path} is still open elsewhere: stop the node and try again")
    # FILE names a complete log at every moment: the old one is linked as FILE.v4 first,
    # then the new one replaces FILE in one rename.
    try:
        os.link(path, kept)
    except OSError as exc:
        new.unlink(missing_ok=True)
        raise UpgradeError(f"cannot keep {path} as {kept}: {exc}") from exc
    os.replace(new, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the renames survive a power cut
    finally:
        os.close(directory)
    return kept


def _copy(
    old: sqlite3.Connection,
    new_path: Path,
    progress: Callable[[int, int], None] | None,
) -> None:
    ensure_private(new_path, sqlite=True)  # citizens' data: 0600 before the first byte
    new = sqlite3.connect(new_path, isolation_level=None)
    try:
        new.executescript(SCHEMA + ADDED_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
        new.execute("BEGIN")
        tables = {r[0] for r in old.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in ("certificate", "checkpoint", "globalconf"):
            if table in tables:
                rows = old.execute(f"SELECT * FROM {table}").fetchall()
                if rows:
                    marks = ", ".join("?" * len(rows[0]))
                    new.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        total = int(old.execute("SELECT COUNT(*) FROM exchange").fetchone()[0])
        insert = (
            f"INSERT INTO exchange (leaf_index, {', '.join(STORED)})"
            f" VALUES ({', '.join('?' * (len(STORED) + 1))})"
        )
        cur = old.execute("SELECT * FROM exchange ORDER BY leaf_index")
        names = [d[0] for d in cur.description]
        done = 0
        while batch := cur.fetchmany(_BATCH):
            new.executemany(insert, [_upgraded(dict(zip(names, r, strict=True))) for r in batch])
            done += len(batch)
            if progress is not None:
                progress(done, total)
        # The subject index as version 4 kept it (as PostgreSQL's upgrade copies it), not as
        # the trigger rebuilt it: a changed index its audit reports must stay reported.
        new.execute("DELETE FROM exchange_subject")
        cur = old.execute("SELECT subject, leaf_index FROM exchange_subject")
        while batch := cur.fetchmany(_BATCH):
            new.executemany("INSERT INTO exchange_subject VALUES (?, ?)", batch)
        new.execute("COMMIT")
    finally:
        new.close()


def upgrade_postgres_log(
    dsn: str, schema: str, progress: Callable[[int, int], None] | None = None
) -> str:
    """Upgrade the version 4 log in ``schema`` to version 5; returns the schema the old log
    is kept in. One transaction: an upgrade that fails leaves the database as it was."""
    try:
        schema = validate_schema_name(schema)
    except ValueError as exc:
        raise UpgradeError(str(exc)) from exc
    if len(schema) > _PG_NAME - len("_upgrading"):
        # PostgreSQL would cut SCHEMA_upgrading and SCHEMA_v4 to 63 bytes, silently: the old
        # log kept under another name than the one reported, or no upgrade at all.
        raise UpgradeError(
            f"schema name {schema!r} is too long to upgrade in place (at most "
            f"{_PG_NAME - len('_upgrading')} characters): rename the schema first"
        )
    try:
        return asyncio.run(_upgrade_postgres(dsn, schema, progress))
    except ValueError as exc:  # asyncpg's reading of a malformed DSN
        raise UpgradeError(f"the database address is not valid ({exc})") from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise UpgradeError(f"upgrading the log in schema {schema!r} failed: {exc}") from exc


async def _upgrade_postgres(
    dsn: str, schema: str, progress: Callable[[int, int], None] | None
) -> str:
    kept, new = f"{schema}_v4", f"{schema}_upgrading"
    old_s, new_s = f'"{schema}"', f'"{new}"'
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", writer_lock_key(schema)):
            raise UpgradeError(f"the log in schema {schema!r} is in use: stop the node first")
        names = {r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
        if schema not in names:
            raise UpgradeError(f"the database has no schema {schema!r}")
        for other in (kept, new):
            if other in names:
                raise UpgradeError(
                    f"schema {other!r} exists (an earlier upgrade?): rename it first"
                )
        tables = {
            r[0]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
            )
        }
        version = (
            await conn.fetchval(f"SELECT version FROM {old_s}.schema_version")
            if "schema_version" in tables
            else None
        )
        _check_version(f"schema {schema!r}", version)
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {new_s}")
            await conn.execute(log_ddl(new_s))
            await conn.execute(added_ddl(new_s))
            for table in ("certificate", "checkpoint", "globalconf"):
                if table in tables:
                    await conn.execute(f"INSERT INTO {new_s}.{table} SELECT * FROM {old_s}.{table}")
            total = int(await conn.fetchval(f"SELECT count(*) FROM {old_s}.exchange"))
            done = 0
            cursor = await conn.cursor(f"SELECT * FROM {old_s}.exchange ORDER BY leaf_index")
            while rows := await cursor.fetch(_BATCH):
                await conn.copy_records_to_table(
                    "exchange", schema_name=new, columns=COLUMNS,
                    records=[_upgraded(dict(r)) for r in rows],
                )  # fmt: skip
                done += len(rows)
                if progress is not None:
                    progress(done, total)
            await conn.execute(
                f"INSERT INTO {new_s}.exchange_subject SELECT * FROM {old_s}.exchange_subject"
            )
            await conn.execute(f'ALTER SCHEMA {old_s} RENAME TO "{kept}"')
            await conn.execute(f"ALTER SCHEMA {new_s} RENAME TO {old_s}")
    finally:
        await conn.close()  # and with the session, the advisory lock
    return kept


def _check_version(log: str, version: object) -> None:
    """UpgradeError unless ``log`` (named for the message) holds a version 4 log."""
    if version == SCHEMA_VERSION:
        raise UpgradeError(f"{log} is a version {version} log already: nothing to do")
    if version != _FROM_VERSION:
        raise UpgradeError(
            f"{log} holds a message log of version {version}; this command upgrades version "
            f"{_FROM_VERSION} logs only"
        )


def _upgraded(row: dict[str, Any]) -> tuple[Any, ...]:
    """The version 5 row of a version 4 one (leaf_index first, then STORED)."""
    index = row["leaf_index"]
    leaf = row.pop("leaf")
    if not isinstance(leaf, bytes):
        raise _altered(index, f"its leaf is {type(leaf).__name__}, not bytes")
    try:
        parsed = orjson.loads(leaf)
        for side in ("request", "response"):
            digest = parsed[f"{side}_body_sha256"]
            row[f"{side}_body_sha256"] = None if digest is None else bytes.fromhex(digest)
        rebuilt = leaf_of(row)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise _altered(index, f"its leaf or columns cannot be read ({exc})") from exc
    if rebuilt != leaf:
        raise _altered(index, "its columns do not give the leaf stored with them")
    row["leaf_hash"] = merkle.leaf_hash(rebuilt)
    return (index, *(row[name] for name in STORED))


def _altered(index: object, why: str) -> UpgradeError:
    return UpgradeError(
        f"entry {index}: {why}. The log was changed after it was written; nothing was "
        "upgraded. Check it with 'xroad-hub audit verify' of the version that wrote it"
    )
