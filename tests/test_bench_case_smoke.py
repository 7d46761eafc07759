"""The case benchmark runs end to end: federation and case service start, both phases
complete, the JSON report has its fields.

Only that it works is checked, never how fast: timings on a shared test machine are noise,
so neither the ratio target nor any rate is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .benchrun import run_bench

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_case.py"
EVIDENCE = {"identity", "house_registration", "company_registration", "title_deed", "tax_clearance"}


@pytest.mark.slow
def test_bench_case_smoke_run(tmp_path: Path) -> None:
    report, _, output = run_bench(SCRIPT, "--smoke", "--tmpdir", str(tmp_path), timeout=180)
    assert report["benchmark"] == "bench_case" and report["ok"] is True, output
    assert report["smoke"] is True

    gather = report["gather"]
    assert gather["repeats"] == 2
    assert set(gather["single_s_median"]) == EVIDENCE
    for key in (
        "gather_s_median", "slowest_single_s_median", "sum_single_s_median", "ratio_median",
        "hub_window_s_median", "hub_slowest_single_s_median", "hub_ratio_median",
    ):  # fmt: skip
        assert gather[key] > 0, (key, output)
    assert gather["target_ratio"] == 1.5
    assert isinstance(gather["meets_target"], bool)
    # The slowest single fetch is one of the singles, and no more than their sum.
    assert gather["slowest_single_s_median"] <= gather["sum_single_s_median"]

    tp = report["throughput"]
    assert tp["cases"] == tp["complete"] == 8 and tp["errors"] == 0, output
    assert tp["statuses"] == {"evidence-complete": 8}
    assert tp["cases_per_s"] > 0 and tp["exchanges_per_s"] > 0
    assert tp["latency_p50_s"] <= tp["latency_p95_s"]
    assert tp["federation_cpu_ms_per_case"] > 0
    # The work directory under --tmpdir is removed after the run (nothing kept by default).
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bench_case_smoke_run_with_each_node_a_process(tmp_path: Path) -> None:
    """--federation processes: the federation as scripts/demo.sh runs it (the demo
    workflow's CLI), every node a process of its own; all of them stop with the run."""
    report, _, output = run_bench(
        SCRIPT, "--smoke", "--federation", "processes", "--tmpdir", str(tmp_path), timeout=240
    )
    assert report["ok"] is True and report["federation"] == "processes", output
    assert list(report["modes"]) == ["processes"]
    pids = report["modes"]["processes"]["processes"]
    nodes = {f"{m} node" for m in ("DGA", "BMA", "DBD", "DOL", "RD", "DOPA")}
    assert nodes | {"central server", "backends", "case service", "bench"} == set(pids)
    assert len(set(pids.values())) == len(pids)  # each a process of its own

    gather = report["gather"]
    assert gather["repeats"] == 2 and set(gather["single_s_median"]) == EVIDENCE
    assert gather["hub_ratio_median"] > 0 and gather["critical_path_s_median"] > 0
    # BMA's node took part in every exchange; the providers' work is on their own nodes.
    assert gather["cpu_ms_apply_median"]["BMA node"] > 0, output
    assert set(gather["per_item_ms_median"]) == EVIDENCE
    assert gather["timeline_ms_median"]["hub_window"] > 0
    tp = report["throughput"]
    assert tp["cases"] == tp["complete"] == 8 and tp["errors"] == 0, output
    assert tp["cpu_ms_per_case"]["BMA node"] > 0
    for name, pid in pids.items():
        if name != "bench":
            assert not Path(f"/proc/{pid}").exists(), f"{name} outlived the benchmark"
    assert list(tmp_path.iterdir()) == []


def test_bench_case_help_explains_the_phases() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for phrase in ("gather / slowest <= 1.5", "cases/s", "--smoke", "Exit status", "--federation"):
        assert phrase in text, phrase
