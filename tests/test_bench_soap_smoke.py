"""The SOAP benchmark runs end to end: children start, every phase answers, the JSON has its
fields.

Only that it works is checked, never how fast: timings on a shared test machine are noise,
and a missed target is a figure to report, not a failure (the script exits 0 then too).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .benchrun import run_bench

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_soap.py"

PHASE_FIELDS = (
    "exchanges_per_s",
    "p50_ms",
    "p99_ms",
    "ok",
    "errors",
    "elapsed_s",
    "server_cpu_us_per_exchange",
    "cores_busy",
    "loadgen_cores_busy",
)


@pytest.mark.slow
def test_bench_soap_smoke_run(tmp_path: Path) -> None:
    report, _, output = run_bench(SCRIPT, "--smoke", "--tmpdir", str(tmp_path), timeout=180)
    assert report["ok"] is True, output
    phases = [("throughput", "rest"), ("throughput", "soap")]
    phases += [("latency", name) for name in ("direct", "rest", "soap")]
    for group, name in phases:
        phase = report[group][name]
        for key in PHASE_FIELDS:
            assert key in phase, (group, name, key, output)
        assert phase["ok"] > 0 and phase["errors"] == 0, (group, name, output)
    assert isinstance(report["throughput"]["soap_vs_rest"], float), output
    for key in (
        "rest_added_p50_ms",
        "rest_added_p99_ms",
        "soap_added_p50_ms",
        "durable_commit_p50_ms",
        "rest_added_p50_beyond_two_commits_ms",
    ):
        assert isinstance(report["latency"][key], float), (key, output)
    for key in ("soap_vs_rest_met", "rest_added_p50_met"):
        assert isinstance(report["targets"][key], bool), (key, output)
    # The children were stopped and the work directory removed.
    assert list(tmp_path.iterdir()) == [], output
