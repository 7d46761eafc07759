"""Benchmark of the message log backends: durable appends/s with group commit, bytes per exchange.

What is measured, on the same realistic records (signed metadata shaped like the nodes',
batch signatures with a 4-hash audit path, ~1 KiB bodies, one data subject):

- baseline: plain ``sqlite3`` ``executemany`` + ``commit`` of 100 rows per transaction into
  the SQLite log's own tables (WAL, synchronous=FULL), no asyncio: what the hardware gives;
- ``SQLiteMessageLog`` and ``PostgresMessageLog``: ``--appenders`` coroutines (64) each
  awaiting one ``append`` after another, so every figure counts durable appends (each
  returned after its COMMIT); latency percentiles and the process CPU per append (for SQLite
  that includes its writer thread; for PostgreSQL the server's CPU is not in it);
- bytes stored per exchange without bodies: bodies set NULL (retention), then SQLite's file
  size after VACUUM, and PostgreSQL's ``pg_total_relation_size`` of a fresh copy of the
  log's tables with NULL bodies (in a second scratch schema), divided by the rows; and as
  written, with bodies;
- PostgreSQL batch insert methods (``--insert-methods``, on by default): ``executemany`` of
  one INSERT, ``INSERT ... SELECT FROM unnest(arrays)`` and binary COPY, rows/s and client
  CPU per row at several batch sizes: why the log uses COPY.

Targets: >= 5,000 durable appends/s with group commit; <= 1 KiB per exchange without bodies.
The last line of output is a JSON object with every figure; the exit status is 1 if the
logs returned wrong or duplicate indexes or lost a record, never because of speed; it is 2
if PostgreSQL cannot be reached (--no-postgres measures SQLite only).
PostgreSQL runs in a scratch schema of the database at --dsn, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.messagelog import LogRecord, MessageLog, SQLiteMessageLog
from xroad_hub.messagelog import postgres as pg
from xroad_hub.messagelog.postgres import PostgresMessageLog
from xroad_hub.messagelog.store import LogError
from xroad_hub.protocol.exchange import new_id
from xroad_hub.protocol.message import body_digest, canonical
from xroad_hub.protocol.signing import BatchSignature

TARGET_APPENDS_PER_S = 5000
TARGET_BYTES_PER_EXCHANGE = 1024
DEFAULT_DSN = os.environ.get(
    "XROAD_HUB_BENCH_PG_DSN",
    os.environ.get("XROAD_HUB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
)


def make_records(n: int, client_ids: bool = False) -> list[LogRecord]:
    """``n`` provider-side records shaped like the nodes' (see node/consumer.py, provider.py):
    message ids as nodes make them (time-ordered), or (``client_ids``) random ones, as
    clients that send their own X-Road-Id often do."""
    key = ec.generate_private_key(ec.SECP256R1())
    ecdsa = key.sign(b"batch root", ec.ECDSA(hashes.SHA256()))
    certs = [os.urandom(620), os.urandom(640)]  # DER of two member signing certificates
    records = []
    for i in range(n):
        mid = str(uuid.uuid4()) if client_ids else new_id()
        rid = new_id()
        cid = f"1101700{i:06d}"
        body = b'{"query":{"cid":"%s"}}' % cid.encode()
        answer = b'{"cid":"%s","name":"...","address":"%s"}' % (cid.encode(), b"x" * 900)
        started = 1_700_000_000.0 + i / 1000
        meta = canonical(
            {
                "v": 1, "kind": "request", "id": mid, "request_id": rid,
                "client": "TH/GOV/DGA/citizenportal",
                "service": "TH/GOV/DOPA/population/personInfo/v1",
                "target_node": "TH/GOV/DOPA/hub1", "method": "POST", "path": "/persons",
                "query": "", "headers": [["Accept", "application/json"],
                                          ["Content-Type", "application/json"]],
                "user_id": "TH3100600112233", "issue": "CASE-2024-0042",
                "represented_party": None, "created": started, "body_sha512": body_digest(body),
            }
        )  # fmt: skip
        rmeta = canonical(
            {
                "v": 1, "kind": "response", "id": mid, "request_id": rid,
                "service": "TH/GOV/DOPA/population/personInfo/v1", "status": 200,
                "headers": [["Content-Type", "application/json"]],
                "request_hash": base64.b64encode(hashlib.sha512(meta).digest()).decode(),
                "created": started + 0.004, "body_sha512": body_digest(answer),
            }
        )  # fmt: skip
        path = tuple(os.urandom(32) for _ in range(4))  # a batch of 16 signed together

        def sig(index: int, path: tuple[bytes, ...] = path) -> bytes:
            return BatchSignature(index, 16, path, ecdsa).encode()

        records.append(
            LogRecord(
                message_id=mid, request_id=rid, role="provider",
                client="TH/GOV/DGA/citizenportal",
                service="TH/GOV/DOPA/population/personInfo/v1", user_id="TH3100600112233",
                issue="CASE-2024-0042", represented_party=None, method="POST", status=200,
                error_type=None, started_at=started, finished_at=started + 0.004,
                request_meta=meta, request_signature=sig(i % 16), request_body=body,
                request_cert=certs[0], response_meta=rmeta, response_signature=sig(i % 16),
                response_body=answer, response_cert=certs[1], subjects=(cid,),
            )
        )  # fmt: skip
    return records


def sqlite_baseline(records: Sequence[LogRecord], path: Path) -> dict[str, Any]:
    """Plain sqlite3, 100 rows per transaction, into the log's own schema and settings."""
    asyncio.run(_create_sqlite(path))
    # Both logs share one layout: a row is the leaf index and what LogRecord.stored gives.
    rows = [(i, *rec.stored()) for i, rec in enumerate(records)]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executemany(
        "INSERT OR IGNORE INTO certificate VALUES (?, ?)",
        [(hashlib.sha256(c).hexdigest(), c) for c in {records[0].request_cert,
                                                       records[0].response_cert}],
    )  # fmt: skip
    conn.commit()
    sql = (
        f"INSERT INTO exchange ({', '.join(pg._COLUMNS)})"
        f" VALUES ({', '.join('?' * len(pg._COLUMNS))})"
    )
    start = time.perf_counter()
    for i in range(0, len(rows), 100):
        conn.executemany(sql, rows[i : i + 100])
        conn.commit()
    elapsed = time.perf_counter() - start
    conn.close()
    return {"rows": len(rows), "rows_per_s": round(len(rows) / elapsed)}


async def _create_sqlite(path: Path) -> None:
    log = SQLiteMessageLog(path)
    await log.open()
    await log.close()


async def group_commit(
    log: MessageLog, records: Sequence[LogRecord], appenders: int
) -> dict[str, Any]:
    """``appenders`` coroutines appending one record after another; every append durable."""
    latencies: list[float] = []
    got: list[int] = []
    batches: list[int] = []
    log.group_commit.on_batch = batches.append  # type: ignore[attr-defined]

    async def appender(mine: Sequence[LogRecord]) -> None:
        for rec in mine:
            t = time.perf_counter()
            got.append(await log.append(rec))
            latencies.append(time.perf_counter() - t)

    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(appender(records[k::appenders]) for k in range(appenders)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = len(records)
    ok = sorted(got) == list(range(n)) and await log.count() == n and log.tree_head()[0] == n
    latencies.sort()
    return {
        "ok": ok,
        "appends": n,
        "appenders": appenders,
        "appends_per_s": round(n / elapsed),
        "meets_target": n / elapsed >= TARGET_APPENDS_PER_S,
        "latency_p50_ms": round(latencies[n // 2] * 1e3, 2),
        "latency_p99_ms": round(latencies[min(n - 1, n * 99 // 100)] * 1e3, 2),
        "commits": len(batches),
        "mean_batch": round(statistics.mean(batches), 1),
        "process_cpu_us_per_append": round(cpu / n * 1e6, 1),
    }


async def bench_sqlite(records: Sequence[LogRecord], path: Path, appenders: int) -> dict[str, Any]:
    log = SQLiteMessageLog(path)
    await log.open()
    try:
        return await group_commit(log, records, appenders)
    finally:
        await log.close()


def sqlite_bytes(path: Path, n: int) -> dict[str, Any]:
    """File bytes per exchange as written, and without bodies after VACUUM."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file
        with_bodies = path.stat().st_size / n
        conn.execute("UPDATE exchange SET request_body = NULL, response_body = NULL")
        conn.commit()
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    per = path.stat().st_size / n
    return {
        "bytes_per_exchange_with_bodies": round(with_bodies),
        "bytes_per_exchange": round(per),
        "meets_bytes_target": per <= TARGET_BYTES_PER_EXCHANGE,
    }


async def _pg_size(conn: asyncpg.Connection, schema: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relkind = 'r'",
            schema,
        )
    )


def _tables(schema: str) -> list[str]:
    return [f'"{schema}".{t}' for t in ("exchange", "exchange_subject", "certificate")]


async def _copy_without_bodies(conn: asyncpg.Connection, schema: str, copy: str) -> None:
    """Schema ``copy``: the log in ``schema`` as it would be with every body NULL.

    Written fresh rather than by setting the bodies NULL in place and rewriting with VACUUM
    FULL: while any other session's snapshot is older than that UPDATE (another test
    worker's, a psql left open), the replaced row versions are still visible to it, so VACUUM
    FULL must copy them too and the log "without bodies" came out larger than with them.
    A copy only ever inserted has no dead row versions, whatever other sessions do.
    """
    s, c = f'"{schema}"', f'"{copy}"'
    await conn.execute(f"CREATE SCHEMA {c}")
    await conn.execute(pg.log_ddl(c) + pg.added_ddl(c))  # same tables, indexes, names
    columns = ", ".join(pg._COLUMNS)
    bodiless = ", ".join(
        "NULL" if col in ("request_body", "response_body") else col for col in pg._COLUMNS
    )
    async with conn.transaction():
        # In the order the log writes them, so that the indexes grow as the log's do.
        await conn.execute(f"INSERT INTO {c}.certificate SELECT * FROM {s}.certificate")
        await conn.execute(
            f"INSERT INTO {c}.exchange ({columns})"
            f" SELECT {bodiless} FROM {s}.exchange ORDER BY leaf_index"
        )
        await conn.execute(
            f"INSERT INTO {c}.exchange_subject SELECT * FROM {s}.exchange_subject"
            " ORDER BY leaf_index, subject"
        )
    await conn.execute(f"VACUUM {', '.join(_tables(copy))}")  # as the log was measured


async def bench_postgres(
    records: Sequence[LogRecord], dsn: str, schema: str, appenders: int
) -> dict[str, Any]:
    log = PostgresMessageLog(dsn, schema=schema)
    await log.open()
    try:
        result = await group_commit(log, records, appenders)
    finally:
        await log.close()
    n = len(records)
    copy = f"{schema}_nobodies"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"VACUUM {', '.join(_tables(schema))}")
        result["bytes_per_exchange_with_bodies"] = round(await _pg_size(conn, schema) / n)
        await _copy_without_bodies(conn, schema, copy)
        per = await _pg_size(conn, copy) / n
        result["bytes_per_exchange"] = round(per)
        result["meets_bytes_target"] = per <= TARGET_BYTES_PER_EXCHANGE
        sizes = await conn.fetch(
            "SELECT c.relname, pg_relation_size(c.oid) AS size FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1"
            " UNION ALL"  # out-of-line values (TOAST) of each table, with their index
            " SELECT c.relname || ' toast', pg_total_relation_size(c.reltoastrelid)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.reltoastrelid <> 0",
            copy,
        )
        result["bytes_by_relation"] = {
            r["relname"]: round(r["size"] / n)
            for r in sorted(sizes, key=lambda r: -r["size"])
            if r["size"] >= n  # at least a byte per exchange
        }
    finally:
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{copy}" CASCADE')
        finally:
            await conn.close()
    return result


async def insert_methods(
    records: Sequence[LogRecord], dsn: str, schema: str, batch_sizes: Sequence[int]
) -> dict[str, Any]:
    """Rows/s and client CPU per row of three ways to insert one batch in one transaction."""
    rows = [(i, *rec.stored()) for i, rec in enumerate(records)]
    certs = {(hashlib.sha256(c).hexdigest(), c) for rec in records[:1]
             for c in (rec.request_cert, rec.response_cert) if c is not None}  # fmt: skip
    s = f'"{schema}"'
    conn = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "on"})
    results: dict[str, Any] = {}
    try:
        await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(pg.log_ddl(s))
        await conn.executemany(f"INSERT INTO {s}.certificate VALUES ($1, $2)", list(certs))
        types = [
            r["data_type"]
            for r in await conn.fetch(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = $1"
                " AND table_name = 'exchange' ORDER BY ordinal_position",
                schema,
            )
        ]
        into = f"INSERT INTO {s}.exchange ({', '.join(pg._COLUMNS)})"
        values = ", ".join(f"${i}" for i in range(1, len(types) + 1))
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
        insert = f"{into} VALUES ({values})"
        unnest = f"{into} SELECT * FROM unnest({arrays})"

        async def one(method: str, batch: Sequence[tuple[Any, ...]]) -> None:
            async with conn.transaction():
                if method == "executemany":
                    await conn.executemany(insert, batch)
                elif method == "unnest":
                    await conn.execute(unnest, *(list(col) for col in zip(*batch, strict=True)))
                else:
                    await conn.copy_records_to_table(
                        "exchange", schema_name=schema, columns=pg._COLUMNS, records=batch
                    )

        for size in batch_sizes:
            some = rows[: size * 200]  # 200 transactions at most: small batches are slow
            for method in ("executemany", "unnest", "copy"):
                await conn.execute(f"TRUNCATE {s}.exchange CASCADE")
                cpu, start = time.process_time(), time.perf_counter()
                for i in range(0, len(some), size):
                    await one(method, some[i : i + size])
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
                results[f"{method}_{size}"] = {
                    "rows_per_s": round(len(some) / elapsed),
                    "client_cpu_us_per_row": round(cpu / len(some) * 1e6, 1),
                }
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
        await conn.close()
    return results


async def server_settings(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        names = ("server_version", "fsync", "synchronous_commit", "full_page_writes",
                 "wal_level", "shared_buffers")  # fmt: skip
        return {name: await conn.fetchval(f"SHOW {name}") for name in names}
    finally:
        await conn.close()


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    records = make_records(args.records, args.client_ids)
    exchange_sample = records[0]
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "records": args.records,
        "message_ids": "random (clients')" if args.client_ids else "time-ordered (nodes')",
        "targets": {
            "durable_appends_per_s": TARGET_APPENDS_PER_S,
            "bytes_per_exchange_without_bodies": TARGET_BYTES_PER_EXCHANGE,
        },
        "record_bytes": {
            "leaf": len(exchange_sample.leaf()),
            "request_meta": len(exchange_sample.request_meta),
            "response_meta": len(exchange_sample.response_meta or b""),
            "signature": len(exchange_sample.request_signature),
            "bodies": len(exchange_sample.request_body) + len(exchange_sample.response_body or b""),
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-messagelog-") as tmp:
        report["baseline_sqlite3_100_per_commit"] = sqlite_baseline(
            records, Path(tmp) / "baseline.db"
        )
        path = Path(tmp) / "log.db"
        report["sqlite"] = asyncio.run(bench_sqlite(records, path, args.appenders))
        report["sqlite"].update(sqlite_bytes(path, len(records)))
    if not args.no_postgres:
        tag = uuid.uuid4().hex[:10]
        schema, scratch = f"bench_messagelog_{tag}", f"bench_insert_{tag}"
        try:
            report["postgres_server"] = asyncio.run(server_settings(args.dsn))
            report["postgres"] = asyncio.run(
                bench_postgres(records, args.dsn, schema, args.appenders)
            )
            if args.insert_methods:
                report["postgres_insert_methods"] = asyncio.run(
                    insert_methods(records, args.dsn, scratch, args.batch_sizes)
                )
        finally:
            asyncio.run(drop_schema(args.dsn, schema))
    baseline = report["baseline_sqlite3_100_per_commit"]["rows_per_s"]
    for name in ("sqlite", "postgres"):
        if name in report:
            report[name]["x_baseline"] = round(report[name]["appends_per_s"] / baseline, 2)
    report["ok"] = all(report[n]["ok"] for n in ("sqlite", "postgres") if n in report)
    return report


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"baseline sqlite3 executemany, 100 rows/commit: "
        f"{report['baseline_sqlite3_100_per_commit']['rows_per_s']:,} rows/s"
    ]
    for name in ("sqlite", "postgres"):
        if name not in report:
            continue
        r = report[name]
        lines.append(
            f"{name:8} {r['appends_per_s']:>8,} durable appends/s ({r['x_baseline']}x baseline,"
            f" {r['appenders']} appenders, mean batch {r['mean_batch']}, p50"
            f" {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms,"
            f" {r['process_cpu_us_per_append']} us CPU/append); {r['bytes_per_exchange']:,}"
            f" bytes/exchange without bodies ({r['bytes_per_exchange_with_bodies']:,} with)"
        )
    for key, value in report.get("postgres_insert_methods", {}).items():
        lines.append(
            f"  insert {key:>16}: {value['rows_per_s']:>7,} rows/s,"
            f" {value['client_cpu_us_per_row']} us client CPU/row"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=20_000, help="appends per backend")
    parser.add_argument("--appenders", type=int, default=64, help="concurrent appenders")
    parser.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
        help="PostgreSQL DSN (default: $XROAD_HUB_BENCH_PG_DSN, $XROAD_HUB_TEST_PG_DSN or "
        "the local server's database test); a scratch schema is created and dropped",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--client-ids",
        action="store_true",
        help="random message ids, as clients that send their own X-Road-Id make them (default: "
        "time-ordered ones, as a node makes them); both logs index the message id",
    )
    parser.add_argument(
        "--insert-methods",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compare PostgreSQL batch insert methods (default: on)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 16, 32, 128, 1024],
        help="for --insert-methods",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds: 640 records, batch sizes 4 and 128"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.records, args.batch_sizes = 640, [4, 128]
    if args.records < 1 or args.appenders < 1:
        build_parser().error("--records and --appenders must be at least 1")
    try:
        report = run(args)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, LogError) as exc:
        # Not the DSN itself: it may hold a password.
        print(f"PostgreSQL (--dsn) failed: {exc}; --no-postgres runs SQLite only", file=sys.stderr)
        return 2
    print(summary(report), file=sys.stderr)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
