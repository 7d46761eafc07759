"""Micro-benchmark of the message log's Merkle tree math at log scale (10**6 leaves).

Absolute times depend on the machine, so every figure is also given against a baseline
measured in the same run: ``leaves`` plain ``hashlib.sha256(32 bytes).digest()`` calls (for
whole-tree work) and the mean time of one such call (for per-proof work, shown as "sha256
calls"). What is measured, on leaf hashes only (leaf data never matters to the tree):

- building a tree head: ``root()`` over the list, ``CompactRange`` appending every leaf (the
  log writer's path) and ``MemoryTree`` caching every perfect subtree (the proof server's);
- one ``CompactRange.root()`` at full size (a new tree head after an append);
- inclusion and consistency proof generation from the ``MemoryTree`` and their verification,
  median over random samples; the target is inclusion proof generation <= 1 ms.

The last line of output is a JSON object with every figure; the exit status is 1 if any
root disagrees or any proof fails to verify, never because of speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from xroad_hub.protocol.merkle import (
    CompactRange,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

SMOKE_LEAVES, SMOKE_SAMPLES = 20_000, 100


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds one call of ``func`` took, and what it returned."""
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def sha256_baseline(hashes: list[bytes]) -> float:
    """Seconds for one plain SHA-256 call per leaf hash, no tree logic at all."""
    sha256 = hashlib.sha256
    start = time.perf_counter()
    for value in hashes:
        sha256(value).digest()
    return time.perf_counter() - start


def build_compact(hashes: list[bytes]) -> bytes:
    compact = CompactRange()
    append = compact.append
    for value in hashes:
        append(value)
    return compact.root()


def run(leaves: int, samples: int, seed: int, target_ms: float) -> dict[str, Any]:
    rng = random.Random(seed)
    hash_s, hashes = timed(lambda: [leaf_hash(i.to_bytes(8, "big")) for i in range(leaves)])
    baseline_s = min(sha256_baseline(hashes) for _ in range(3))
    per_call_s = baseline_s / leaves

    root_s, list_root = timed(lambda: root(hashes))
    compact_s, compact_root = timed(lambda: build_compact(hashes))
    tree_s, tree = timed(lambda: MemoryTree(hashes))
    compact = CompactRange()
    compact.extend(hashes)
    head_times = [timed(compact.root)[0] for _ in range(samples)]
    ok = list_root == compact_root == tree.root() == compact.root()

    gen, ver = [], []
    for index in (rng.randrange(leaves) for _ in range(samples)):
        gen_s, proof = timed(lambda index=index: inclusion_proof(tree, index))
        ver_s, good = timed(
            lambda index=index, proof=proof: verify_inclusion(
                hashes[index], index, leaves, proof, list_root
            )
        )
        gen.append(gen_s)
        ver.append(ver_s)
        ok = ok and good
    cgen, cver = [], []
    for old in (rng.randrange(1, leaves) for _ in range(samples)):
        old_root = tree.root(old)
        gen_s, proof = timed(lambda old=old: consistency_proof(tree, old))
        ver_s, good = timed(
            lambda old=old, proof=proof, old_root=old_root: verify_consistency(
                old, leaves, old_root, list_root, proof
            )
        )
        cgen.append(gen_s)
        cver.append(ver_s)
        ok = ok and good

    def ms(seconds: float) -> float:
        return round(seconds * 1e3, 4)

    def calls(seconds: float) -> float:
        return round(seconds / per_call_s, 1)

    median_gen = statistics.median(gen)
    return {
        "ok": ok,
        "leaves": leaves,
        "samples": samples,
        "proofs_verified": len(gen) if ok else 0,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "baseline_sha256_calls_ms": ms(baseline_s),
        "baseline_one_sha256_us": round(per_call_s * 1e6, 4),
        "leaf_hashing_ms": ms(hash_s),
        "root_list_ms": ms(root_s),
        "root_list_x_baseline": round(root_s / baseline_s, 2),
        "compact_range_ms": ms(compact_s),
        "compact_range_x_baseline": round(compact_s / baseline_s, 2),
        "memory_tree_ms": ms(tree_s),
        "memory_tree_x_baseline": round(tree_s / baseline_s, 2),
        "compact_root_median_ms": ms(statistics.median(head_times)),
        "compact_root_median_sha256_calls": calls(statistics.median(head_times)),
        "inclusion_gen_median_ms": ms(median_gen),
        "inclusion_gen_max_ms": ms(max(gen)),
        "inclusion_gen_median_sha256_calls": calls(median_gen),
        "inclusion_verify_median_ms": ms(statistics.median(ver)),
        "inclusion_verify_median_sha256_calls": calls(statistics.median(ver)),
        "consistency_gen_median_ms": ms(statistics.median(cgen)),
        "consistency_gen_median_sha256_calls": calls(statistics.median(cgen)),
        "consistency_verify_median_ms": ms(statistics.median(cver)),
        "consistency_verify_median_sha256_calls": calls(statistics.median(cver)),
        "target_inclusion_gen_ms": target_ms,
        "target_met": median_gen * 1e3 <= target_ms,
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"Merkle tree, {r['leaves']:,} leaves, {r['samples']} samples, Python {r['python']}")
    print(f"  baseline: {r['leaves']:,} x sha256(32 B)   {r['baseline_sha256_calls_ms']:10.1f} ms")
    for label, key in (
        ("root() over the list", "root_list"),
        ("CompactRange appends", "compact_range"),
        ("MemoryTree build", "memory_tree"),
    ):
        print(f"  {label:<34}{r[key + '_ms']:10.1f} ms  = {r[key + '_x_baseline']:5.2f}x baseline")
    one = r["baseline_one_sha256_us"]
    print(f"  per operation (median; one sha256 call = {one:.3f} us):")
    for label, key in (
        ("CompactRange.root()", "compact_root"),
        ("inclusion proof generation", "inclusion_gen"),
        ("inclusion proof verification", "inclusion_verify"),
        ("consistency proof generation", "consistency_gen"),
        ("consistency proof verification", "consistency_verify"),
    ):
        calls = r[key + "_median_sha256_calls"]
        print(f"    {label:<32}{r[key + '_median_ms']:9.4f} ms  = {calls:7.1f} sha256 calls")
    verdict = "met" if r["target_met"] else "MISSED"
    print(
        f"  target: inclusion proof generation <= {r['target_inclusion_gen_ms']} ms: {verdict}"
        f" (median {r['inclusion_gen_median_ms']} ms, max {r['inclusion_gen_max_ms']} ms)"
    )
    print("  correctness: " + ("all roots agree, all proofs verify" if r["ok"] else "FAILED"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=1_000_000, help="tree size (1,000,000)")
    parser.add_argument("--samples", type=int, default=1000, help="proofs per kind (1000)")
    parser.add_argument("--seed", type=int, default=6962, help="random seed for the indices")
    parser.add_argument("--target-ms", type=float, default=1.0, help="proof target (1 ms)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"quick run ({SMOKE_LEAVES:,} leaves, {SMOKE_SAMPLES} samples) that checks it works",
    )
    args = parser.parse_args(argv)
    leaves, samples = (SMOKE_LEAVES, SMOKE_SAMPLES) if args.smoke else (args.leaves, args.samples)
    if leaves < 2 or samples < 1:
        parser.error("need at least 2 leaves and 1 sample")
    report = run(leaves, samples, args.seed, args.target_ms)
    print_report(report)
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
