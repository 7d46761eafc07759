"""Runs a benchmark script as its smoke tests do: a child process, exit status 0, and the
JSON report of its last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


class BenchRun(NamedTuple):
    report: dict[str, Any]
    stdout: str
    output: str  # the ends of stdout and stderr, for assertion messages


def run_bench(script: Path, *args: str, timeout: float) -> BenchRun:
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, output
    return BenchRun(json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout, output)
