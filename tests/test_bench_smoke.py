"""The exchange benchmark runs end to end: children start, every phase (direct, the
baselines (c) and (d), hub) answers, JSON parses.

Only that it works is checked, never how fast: timings on a shared test machine are noise.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .benchrun import run_bench

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_exchange.py"


@pytest.mark.slow
def test_bench_exchange_smoke_run() -> None:
    report, stdout, output = run_bench(SCRIPT, "--smoke", timeout=120)
    assert report["ok"] is True, output
    for phase in ("direct", "c", "d", "hub"):
        assert report[phase]["exchanges_per_s"] > 0, output
        assert report[phase]["ok"] > 0, output
        assert report[phase]["errors"] == 0, output
    assert report["node_vm_hwm_kib"] > 0, output
    # The baselines ran on their own processes: (c) two plain hops, (d) signed and logged.
    for name, hops in (("c", ("c-hop1", "c-hop2")), ("d", ("d-hop1", "d-hop2"))):
        on_path = {n for n, p in report[name]["processes"].items() if p["on_path"]}
        assert on_path == {"backend", *hops}, output
        assert report["hub_vs_baselines"][name]["server_cpu_per_exchange_ratio"] > 0, output
    assert "hub/(c): server CPU per request" in stdout, output
    # What the disk costs: two durable commits are the floor of the added latency.
    assert report["hub_vs_direct"]["durable_commit_p50_ms"] > 0, output
    assert "a durable commit takes" in stdout, output


@pytest.mark.slow
def test_bench_exchange_monitoring_matrix_smoke_run() -> None:
    """The four monitoring modes each run on their own federation and are reported against
    the run with both switched off (figures only, no timing asserted)."""
    report, _, output = run_bench(SCRIPT, "--smoke", "--monitoring-matrix", timeout=180)
    assert report["benchmark"] == "xroad-hub monitoring cost", output
    assert report["ok"] is True, output
    assert list(report["modes"]) == ["off", "metrics", "opmon", "both"], output
    for name, mode in report["modes"].items():
        assert mode["ok"] > 0 and mode["errors"] == 0, (name, output)
        assert mode["node_cpu_us_per_exchange"] > 0, (name, output)
        assert len(mode["round_ratios_vs_off"]) == report["rounds"] == 1, (name, output)
    assert report["modes"]["off"]["ratio_vs_off"] == 1.0, output


@pytest.mark.slow
def test_bench_exchange_against_another_tree_smoke_run(tmp_path: Path) -> None:
    """Another source tree's hub runs next to this one's (a copy here, so both run the same
    code), each on its own nodes, and both are reported with their ratios."""
    from .repo_copy import copy_tracked

    tree = copy_tracked(tmp_path / "other")
    # The copy's package leaves a mark when a process imports it (from the copy, not here).
    init = tree / "xroad_hub" / "__init__.py"
    marker = tmp_path / "imported-from-the-copy"
    init.write_text(init.read_text() + f"\nopen({str(marker)!r}, 'a').close()\n")
    report, _, output = run_bench(SCRIPT, "--smoke", "--against", str(tree), timeout=180)
    assert report["ok"] is True and report["against"] == str(tree), output
    for name in ("against", "this"):
        variant = report["variants"][name]
        assert variant["errors"] == 0 and variant["exchanges_per_s"] > 0, (name, output)
        assert variant["node_peak_vm_hwm_kib"] > 0, (name, output)
    assert report["ratios_this_vs_against"]["node_cpu_per_exchange"] > 0, output
    # The other tree's nodes ran from its own package.
    assert marker.exists(), output


def test_bench_exchange_against_refuses_what_is_not_a_source_tree(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--against", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "is not a source tree of xroad-hub" in proc.stderr


@pytest.mark.slow
def test_bench_exchange_starts_nodes_on_full_logs(tmp_path: Path) -> None:
    """--log-entries: each node serves on a log that already holds that many exchanges
    (varied ids and persons), and logs its own after them."""
    report, stdout, output = run_bench(
        SCRIPT, "--smoke", "--no-baselines", "--log-entries", "500",
        "--keep-workdir", "--tmpdir", str(tmp_path), timeout=120,
    )  # fmt: skip
    assert report["ok"] is True, output
    served = report["hub"]["ok"]
    assert served > 0, output
    for node in ("DGA", "DBD"):
        assert f"writing 500 exchanges into TH/GOV/{node}/hub1's message log" in stdout, output
        (log,) = tmp_path.glob(f"xroad-bench-*/data/nodes/TH/GOV/{node}/hub1/messagelog.sqlite")
        with contextlib.closing(sqlite3.connect(log)) as db:
            rows, ids = db.execute(
                "SELECT count(*), count(DISTINCT message_id) FROM exchange"
            ).fetchone()
            persons = db.execute("SELECT count(DISTINCT subject) FROM exchange_subject")
            assert rows == ids >= 500 + served, output
            assert persons.fetchone()[0] > 400, output
