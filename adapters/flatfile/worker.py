"""Worker process that validates and indexes one export: ``python -m adapters.flatfile.worker``.

Why a process: validating and sorting a million records takes long C calls (regular
expressions over the whole file, one sort of a million keys) that hold the interpreter lock
for hundreds of milliseconds; in a thread of the node they would stall every exchange the
node is serving. The worker reads the job (JSON) on stdin, the file itself, and writes the
result in ``loader.to_wire`` form on stdout. It runs at a lower priority than the node.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from .errors import ExportRejected, LayoutError
from .layout import parse_layout
from .loader import load_export, to_wire
from .source import Candidate, read_candidate

__all__ = ["main"]


def run(job: dict[str, object]) -> bytes:
    """Do one job; every failure becomes a rejection the parent can report."""
    try:
        layout = parse_layout(job["layout"])  # type: ignore[arg-type]
        sig = tuple(job["signature"])  # type: ignore[arg-type]
        buf = read_candidate(Candidate(Path(str(job["path"])), sig))  # type: ignore[arg-type]
        result = load_export(
            buf,
            layout,
            tuple(job["keys"]),  # type: ignore[arg-type]
            max_bad_share=float(job["max_bad_share"]),  # type: ignore[arg-type]
            report_limit=int(job["report_limit"]),  # type: ignore[call-overload]
        )
        return to_wire(result)
    except ExportRejected as exc:
        return to_wire(exc)
    except LayoutError as exc:
        return to_wire(ExportRejected(f"layout: {exc}"))
    except MemoryError:
        return to_wire(ExportRejected("the export does not fit in memory"))


def main() -> int:
    with contextlib.suppress(OSError):
        os.nice(5)  # the node's event loop comes first on a busy machine
    job = json.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(run(job))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
