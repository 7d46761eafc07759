"""The case benchmark runs end to end: federation and case service start, both phases
complete, the JSON report has its fields.

Only that it works is checked, never how fast: timings on a shared test machine are noise,
so neither the ratio target nor any rate is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_case.py"
EVIDENCE = {"identity", "house_registration", "company_registration", "title_deed", "tax_clearance"}


@pytest.mark.slow
def test_bench_case_smoke_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--tmpdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, output
    report = json.loads(proc.stdout.strip().splitlines()[-1])
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
    for phrase in ("gather / slowest <= 1.5", "cases/s", "--smoke", "Exit status"):
        assert phrase in text, phrase
