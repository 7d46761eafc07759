"""Benchmark ``audit verify``: entries checked per second, and bytes stored per exchange.

Builds a message log of N realistic exchanges (real member signatures, batched as a busy
node batches them; checkpoints every 10,000 entries), then times, in the same run:

- baseline: reading every row, rebuilding its leaf from its columns and hashing it (what any
  full verification must at least do);
- ``verify_log``: every leaf hash, body digest, certificate, signature and checkpoint.

Both checks run again with ``--jobs`` worker processes (wall time, and the ratio against
one process). It also reports bytes per exchange in the SQLite file with bodies purged.
Targets (issue 3): >= 200,000 entries/s verified, <= 1 KiB per exchange without bodies.

    python scripts/bench_audit.py [--entries 20000] [--smoke] [--dsn postgresql://...]

With ``--dsn`` the log is written to and verified from a PostgreSQL schema of its own
(dropped afterwards), through the same reader interface ``audit verify`` uses; bytes per
exchange are then not measured.

With ``--against TREE`` (another source tree of this project, e.g. ``git archive main |
tar -x -C TREE``) the SQLite log is written by TREE's code, then verified (full and
tree-only) by TREE's and by this tree's, each in a process of its own, in alternating
rounds: CPU entries/s (process time of ``verify_log``), medians, ranges and the ratio
this/against per round. A log the other tree wrote must verify here too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import serialization

from xroad_hub.messagelog import MessageLog, PostgresMessageLog, SQLiteMessageLog, audit
from xroad_hub.messagelog.audit import verify_log
from xroad_hub.messagelog.record import leaf_of


def _load_builder() -> Any:
    """This tree's log builder (xroad_hub/dev/signedlog.py), loaded from its file: with
    --against the process runs TREE's xroad_hub, which writes the log, and an older tree may
    have no builder of its own; the exchanges are then the same on both sides."""
    path = Path(__file__).resolve().parent.parent / "xroad_hub" / "dev" / "signedlog.py"
    spec = importlib.util.spec_from_file_location("_bench_signedlog", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def build(log: MessageLog, entries: int) -> tuple[Any, float]:
    """A log of ``entries`` signed exchanges, checkpointed and witnessed every 10,000 and at
    the end; the federation root and the seconds it took."""
    started = time.perf_counter()
    roots = await _load_builder().build_signed_log(
        log, entries, checkpoints_at=range(10000, entries, 10000)
    )
    return roots[0], time.perf_counter() - started


async def _drop(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _child(tree: Path, *args: str) -> dict[str, object]:
    """This script, run with ``tree``'s package first on the path; its last line (JSON)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def _package_of(tree: Path) -> None:
    import xroad_hub

    if not Path(xroad_hub.__file__).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"xroad_hub came from {xroad_hub.__file__}, not from {tree}")


def child_build(path: Path, entries: int) -> None:
    log = SQLiteMessageLog(path)
    ca_cert, built = asyncio.run(build(log, entries))
    path.with_suffix(".ca").write_bytes(ca_cert.public_bytes(serialization.Encoding.DER))
    print(json.dumps({"built_s": built}))


def child_verify(path: Path, full: bool) -> None:
    from cryptography import x509

    ca_cert = x509.load_der_x509_certificate(path.with_suffix(".ca").read_bytes())
    log = SQLiteMessageLog(path)
    cpu = time.process_time()
    report = verify_log(log.reader, [ca_cert], entries=full)
    cpu = time.process_time() - cpu
    print(json.dumps({"ok": report.ok, "entries": report.entries, "cpu_s": cpu}))


def against(tree: Path, entries: int, rounds: int) -> int:
    here = Path(__file__).resolve().parent.parent
    if not (tree / "xroad_hub").is_dir():
        raise SystemExit(f"{tree} is not a source tree of xroad-hub")
    runs: dict[str, dict[str, list[float]]] = {
        mode: {"against": [], "this": []} for mode in ("full", "tree_only")
    }
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.sqlite"
        _child(tree, "--child-build", str(path), "--entries", str(entries))
        for _ in range(rounds):
            for mode in runs:
                for name, root in (("against", tree), ("this", here)):
                    flag = "--child-verify-full" if mode == "full" else "--child-verify-tree"
                    got = _child(root, flag, str(path))
                    ok = ok and bool(got["ok"]) and got["entries"] == entries
                    runs[mode][name].append(entries / float(got["cpu_s"]))  # type: ignore[arg-type]
    result: dict[str, object] = {
        "entries": entries,
        "rounds": rounds,
        "against": str(tree),
        "ok": ok,
    }
    for mode, by in runs.items():
        ratios = [t / a for a, t in zip(by["against"], by["this"], strict=True)]
        result[mode] = {
            name: {"median_cpu_entries_per_s": round(statistics.median(v)),
                   "range": [round(min(v)), round(max(v))]}
            for name, v in by.items()
        } | {"ratio_this_vs_against": [round(r, 3) for r in ratios]}  # fmt: skip
        print(f"{mode}: against {statistics.median(by['against']):.0f}/s, this "
              f"{statistics.median(by['this']):.0f}/s CPU (medians; ratio per round "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip
    print(json.dumps(result))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=20000, help="log size (default 20000)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--dsn", help="benchmark a PostgreSQL log in this database instead")
    parser.add_argument("--against", type=Path, metavar="TREE", help="compare with TREE's code")
    parser.add_argument("--rounds", type=int, default=3, help="with --against (default 3)")
    parser.add_argument(
        "--jobs", type=int, default=len(os.sched_getaffinity(0)),
        help="worker processes for the second pair of checks (default: the CPUs available)",
    )  # fmt: skip
    parser.add_argument("--child-build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-verify-full", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-verify-tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    entries = 500 if args.smoke else args.entries
    if args.smoke:  # small pages, so that 500 entries still go to the workers
        audit._PAGE, audit._PARALLEL_MIN = 64, 0
    if args.child_build or args.child_verify_full or args.child_verify_tree:
        _package_of(Path(os.environ["PYTHONPATH"]))
        if args.child_build:
            child_build(args.child_build, entries)
        else:
            child_verify(args.child_verify_full or args.child_verify_tree,
                         full=args.child_verify_full is not None)  # fmt: skip
        return 0
    if args.against is not None:
        return against(args.against.resolve(), entries, 1 if args.smoke else args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.sqlite"
        schema = f"bench_audit_{uuid.uuid4().hex[:12]}"
        log = PostgresMessageLog(args.dsn, schema=schema) if args.dsn else SQLiteMessageLog(path)
        try:
            ca_cert, built = asyncio.run(build(log, entries))

            t = time.perf_counter()
            with log.reader() as reader:
                for row in reader.entries():
                    hashlib.sha256(b"\0" + leaf_of(row)).digest()
            baseline = time.perf_counter() - t

            t = time.perf_counter()
            report = verify_log(log.reader, [ca_cert])  # type: ignore[list-item]
            verify = time.perf_counter() - t
            t = time.perf_counter()
            quick = verify_log(log.reader, [ca_cert], entries=False)  # type: ignore[list-item]
            tree_only = time.perf_counter() - t
            # The same two checks with worker processes (wall time: the CPU is theirs).
            t = time.perf_counter()
            shared = verify_log(log.reader, [ca_cert], jobs=args.jobs)  # type: ignore[list-item]
            verify_shared = time.perf_counter() - t
            t = time.perf_counter()
            quick_shared = verify_log(
                log.reader,
                [ca_cert],
                entries=False,
                jobs=args.jobs,  # type: ignore[list-item]
            )
            tree_only_shared = time.perf_counter() - t
        finally:
            if args.dsn:
                asyncio.run(_drop(args.dsn, schema))
        per_exchange = None
        if not args.dsn:  # the file's size, bodies purged (SQLite only)
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE exchange SET request_body = NULL, response_body = NULL")
                conn.commit()
                conn.execute("VACUUM")
            per_exchange = round(path.stat().st_size / entries)
    result = {
        "backend": "postgres" if args.dsn else "sqlite",
        "entries": entries,
        "ok": report.ok,
        "checkpoints": report.checkpoints,
        "build_appends_per_s": round(entries / built),
        "baseline_read_and_hash_per_s": round(entries / baseline),
        "verify_entries_per_s": round(entries / verify),
        "verify_vs_baseline": round(baseline / verify, 4),
        "tree_only_entries_per_s": round(entries / tree_only),
        "tree_only_ok": quick.ok,
        "workers": shared.workers,
        "verify_in_processes_entries_per_s": round(entries / verify_shared),
        "verify_in_processes_vs_one": round(verify / verify_shared, 3),
        "tree_only_in_processes_entries_per_s": round(entries / tree_only_shared),
        "tree_only_in_processes_vs_one": round(tree_only / tree_only_shared, 3),
        "in_processes_ok": shared.ok and quick_shared.ok,
        "bytes_per_exchange_without_bodies": per_exchange,
    }
    print(f"{entries} entries: verify {result['verify_entries_per_s']}/s, tree and "
          f"checkpoints only {result['tree_only_entries_per_s']}/s "
          f"(baseline read+hash {result['baseline_read_and_hash_per_s']}/s, ratio "
          f"{result['verify_vs_baseline']}); {result['bytes_per_exchange_without_bodies']} "
          "bytes per exchange without bodies")  # fmt: skip
    print(f"in {result['workers']} worker processes: verify "
          f"{result['verify_in_processes_entries_per_s']}/s "
          f"({result['verify_in_processes_vs_one']}x one process), tree and checkpoints only "
          f"{result['tree_only_in_processes_entries_per_s']}/s "
          f"({result['tree_only_in_processes_vs_one']}x)")  # fmt: skip
    print(json.dumps(result))
    return 0 if report.ok and quick.ok and result["in_processes_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
