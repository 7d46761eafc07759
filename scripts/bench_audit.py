"""Benchmark ``audit verify``: entries checked per second, and bytes stored per exchange.

Builds a message log of N realistic exchanges (real member signatures, batched as a busy
node batches them; checkpoints every 10,000 entries), then times, in the same run:

- baseline: reading every row, rebuilding its leaf from its columns and hashing it (what any
  full verification must at least do);
- ``verify_log``: every leaf hash, body digest, certificate, signature and checkpoint.

Both checks run again with ``--jobs`` worker processes (wall time, and the ratio against
one process). It also reports bytes per exchange in the SQLite file with bodies purged.
Targets (issue 3):
>= 200,000 entries/s verified, <= 1 KiB per exchange without bodies.

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

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.messagelog import LogRecord, MessageLog, PostgresMessageLog, SQLiteMessageLog, audit
from xroad_hub.messagelog.audit import verify_log
from xroad_hub.messagelog.record import leaf_of
from xroad_hub.pki import generate_key, issue_cert, make_root_ca
from xroad_hub.protocol.checkpoint import Checkpoint, NoteSigner, sign_note
from xroad_hub.protocol.identifiers import parse_member_id
from xroad_hub.protocol.message import body_digest, canonical
from xroad_hub.protocol.rest import request_hash
from xroad_hub.protocol.signing import MessageSigner

BATCH = 64  # messages per signature batch, as under load


def _der(cert) -> bytes:  # type: ignore[no-untyped-def]
    return cert.public_bytes(serialization.Encoding.DER)


async def build(log: MessageLog, entries: int) -> tuple[object, float]:
    ca_key, ca_cert = make_root_ca("bench root")
    signers = {}
    for member in ("TH/GOV/DGA", "TH/GOV/DBD"):
        key = generate_key()
        der = _der(issue_cert(ca_key, ca_cert, member, key, purpose="sign"))
        signers[member] = MessageSigner(parse_member_id(member), key, der)
    node_key = ed25519.Ed25519PrivateKey.generate()
    node_cert = _der(issue_cert(ca_key, ca_cert, "TH/GOV/DBD/hub1", node_key, purpose="checkpoint"))
    note_signer = NoteSigner("TH/GOV/DBD/hub1", node_key)
    # The registry's witness co-signs each checkpoint, as in a federation: a log no witness
    # co-signed does not verify.
    witness_key = ed25519.Ed25519PrivateKey.generate()
    witness_cert = _der(
        issue_cert(ca_key, ca_cert, "TH/registry", witness_key, purpose="checkpoint")
    )
    witness_signer = NoteSigner("TH/registry", witness_key)
    await log.open()
    started = time.perf_counter()
    for start in range(0, entries, BATCH):
        n = min(BATCH, entries - start)
        body = b'{"juristic_id":"0105744622488","status":"active"}' * 4
        metas = [
            canonical(
                {
                    "v": 1, "kind": "request", "id": f"m{start + i}",
                    "request_id": f"r{start + i}", "client": "TH/GOV/DGA/citizenportal",
                    "service": "TH/GOV/DBD/registry/companies", "method": "GET",
                    "path": f"/{start + i}", "query": "", "user_id": "TH1101700203450",
                    "issue": "BMA-FOOD-2569-0001", "represented_party": None,
                    "headers": [["Accept", "application/json"]], "created": time.time(),
                    "body_sha512": body_digest(b""),
                }
            )
            for i in range(n)
        ]  # fmt: skip
        answers = [
            canonical(
                {
                    "v": 1, "kind": "response", "id": f"m{start + i}",
                    "request_id": f"r{start + i}", "status": 200,
                    "request_hash": request_hash(metas[i], b""), "created": time.time(),
                    "headers": [["Content-Type", "application/json"]],
                    "body_sha512": body_digest(body),
                }
            )
            for i in range(n)
        ]  # fmt: skip
        req_sigs = signers["TH/GOV/DGA"].sign_batch(metas)
        resp_sigs = signers["TH/GOV/DBD"].sign_batch(answers)
        now = time.time()
        await asyncio.gather(
            *(
                log.append(
                    LogRecord(
                        message_id=f"m{start + i}", request_id=f"r{start + i}", role="provider",
                        client="TH/GOV/DGA/citizenportal",
                        service="TH/GOV/DBD/registry/companies", user_id="TH1101700203450",
                        issue="BMA-FOOD-2569-0001", represented_party=None, method="GET",
                        status=200, error_type=None, started_at=now, finished_at=now,
                        request_meta=metas[i], request_signature=req_sigs[i], request_body=b"",
                        request_cert=signers["TH/GOV/DGA"].cert_der, response_meta=answers[i],
                        response_signature=resp_sigs[i], response_body=body,
                        response_cert=signers["TH/GOV/DBD"].cert_der,
                        subjects=("0105744622488",),
                    )
                )
                for i in range(n)
            )
        )  # fmt: skip
        size, root = log.tree_head()
        if size % 10000 < BATCH or size == entries:
            text = Checkpoint("xroad-hub/TH/GOV/DBD/hub1", size, root).text()
            note = sign_note(text, note_signer)
            await log.add_checkpoint(size, root, note, node_cert, time.time())
            cosigned = note + witness_signer.signature_line(text)
            await log.record_witness(size, cosigned, witness_cert)
    built = time.perf_counter() - started
    await log.close()
    return ca_cert, built


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
    path.with_suffix(".ca").write_bytes(_der(ca_cert))
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
