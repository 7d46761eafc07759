"""The flat-file adapter: publishes an export as a read-only query service, with hot reload.

This is the I/O shell around the sans-I/O core (layout, formats, loader, api). It keeps one
immutable ``Dataset`` as the version in service and checks the source every
``reload_interval`` seconds. A new export is read and validated off the event loop (in a
worker process for large files, see ``worker.py``), then becomes current by one reference
assignment: requests already running finish on the version they started with, new ones see
the new version, none waits for the load. A file that fails validation is remembered by its
signature and not retried until it changes; the previous version keeps serving, and
``GET /_report`` says why the file was refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from adapters.base import AdapterRequest, AdapterResponse

from .api import ServiceView, answer
from .dataset import Dataset, DataVersion
from .errors import ExportRejected
from .loader import LoadResult, from_wire, load_export, resolve_layout
from .settings import PROCESS_THRESHOLD, FlatFileSettings
from .source import Candidate, candidates, read_candidate

__all__ = ["FlatFileAdapter"]

log = structlog.get_logger("xroad_hub.adapters.flatfile")

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding ``adapters``


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class FlatFileAdapter:
    """Serves ``GET`` queries from the current version of a flat-file export."""

    def __init__(self, settings: FlatFileSettings, *, name: str = "") -> None:
        self.settings = settings
        self.name = name or settings.layout.name or settings.source.name
        self.view = ServiceView(
            keys=settings.keys,
            page_size=settings.page_size,
            max_page_size=settings.max_page_size,
            max_candidates=settings.max_candidates,
            name=self.name,
            description=settings.description or settings.layout.description,
        )
        self._current: Dataset | None = None
        self._current_signature: tuple[int, int, int, int] | None = None
        self._rejected: dict[tuple[int, int, int, int], dict[str, Any]] = {}
        self._last_rejection: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._worker: asyncio.subprocess.Process | None = None

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], base_dir: Path | None = None, *, name: str = ""
    ) -> FlatFileAdapter:
        """An adapter from a service's options (see ``settings.py``)."""
        return cls(FlatFileSettings.from_options(options, base_dir), name=name)

    @property
    def current(self) -> Dataset | None:
        """The version in service (None until a valid export has loaded)."""
        return self._current

    @property
    def last_rejection(self) -> dict[str, Any] | None:
        return self._last_rejection

    async def start(self) -> None:
        """Load the current export (a failure is reported; the service answers 503 until a
        valid one appears), then keep checking for new ones."""
        try:
            outcome = await self.refresh()
            if outcome == "settling" and self._current is None:
                # A file written just now (e.g. the demo's seeded export) would otherwise
                # leave the service answering 503 until the next poll; waiting out a short
                # settling time once keeps "loaded before the node answers" true.
                await asyncio.sleep(min(self.settings.settle_seconds, 2.0))
                await self.refresh()
        except Exception:
            log.exception("flatfile.refresh_failed", service=self.name)
        if self.settings.reload_interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._poll(), name=f"flatfile-reload {self.name}")

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        # One read of the reference: the whole answer comes from one version.
        dataset = self._current
        return answer(request, dataset, self.view, self._last_rejection)

    async def close(self) -> None:
        """Stop checking for new exports; a load in progress is abandoned."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        worker = self._worker
        if worker is not None and worker.returncode is None:
            worker.kill()
            await worker.wait()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                await self.refresh()
            except Exception:
                # A surprise in one check must not end hot reload for good.
                log.exception("flatfile.refresh_failed", service=self.name)

    async def refresh(self) -> str:
        """Check the source once and switch to a new valid export if there is one.

        Returns what happened: ``unchanged``, ``loaded``, ``rejected``, ``settling`` (a new
        file is still too fresh) or ``missing`` (no export at all)."""
        async with self._lock:
            s = self.settings
            found = await asyncio.to_thread(candidates, s.source, s.pattern)
            if not found:
                log.warning("flatfile.no_export", service=self.name, source=str(s.source))
                return "missing"
            outcome = "rejected"
            for cand in found:
                if cand.signature == self._current_signature:
                    return "unchanged"
                if cand.signature in self._rejected:
                    if self._current is not None:
                        return "unchanged"
                    continue  # nothing in service yet: try the next older export
                if time.time() - cand.mtime < s.settle_seconds:
                    return "settling"
                if await self._load(cand):
                    return "loaded"
                if self._current is not None:
                    return "rejected"
            return outcome

    async def _load(self, cand: Candidate) -> bool:
        s = self.settings
        started = time.perf_counter()
        in_process = s.loader == "process" or (
            s.loader == "auto" and cand.signature[2] >= PROCESS_THRESHOLD
        )
        try:
            if in_process:
                buf, result = await asyncio.gather(
                    asyncio.to_thread(read_candidate, cand), self._run_worker(cand)
                )
                digest = await asyncio.to_thread(lambda: hashlib.sha256(buf).hexdigest())
                if digest != result.sha256:
                    raise ExportRejected("the export changed while it was loaded")
            else:
                buf, result = await asyncio.to_thread(self._load_inline, cand)
            layout = await asyncio.to_thread(resolve_layout, buf, s.layout)
        except ExportRejected as exc:
            self._reject(cand, exc)
            return False
        version = DataVersion(
            file=cand.name,
            sha256=result.sha256,
            modified_at=cand.modified_at,
            loaded_at=_now(),
            size=len(buf),
            records=result.valid,
            broken=result.broken_count,
        )
        dataset = Dataset(buf, layout, result, version)
        # The switch: requests from here on see the new version.
        self._current, self._current_signature = dataset, cand.signature
        log.info(
            "flatfile.loaded",
            service=self.name,
            file=cand.name,
            records=result.valid,
            broken=result.broken_count,
            seconds=round(time.perf_counter() - started, 3),
            memory_bytes=dataset.nbytes,
            worker=in_process,
        )
        return True

    def _load_inline(self, cand: Candidate) -> tuple[bytes, LoadResult]:
        s = self.settings
        buf = read_candidate(cand)
        result = load_export(
            buf, s.layout, s.keys, max_bad_share=s.max_bad_share, report_limit=s.report_limit
        )
        return buf, result

    async def _run_worker(self, cand: Candidate) -> LoadResult:
        s = self.settings
        job = {
            "path": str(cand.path),
            "signature": list(cand.signature),
            "layout": s.layout_data,
            "keys": list(s.keys),
            "max_bad_share": s.max_bad_share,
            "report_limit": s.report_limit,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "adapters.flatfile.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(_PACKAGE_ROOT),
        )
        self._worker = proc
        try:
            out, err = await proc.communicate(json.dumps(job).encode())
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        finally:
            self._worker = None
        if proc.returncode != 0 or len(out) < 8:
            detail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            log.error(
                "flatfile.worker_failed", service=self.name, status=proc.returncode, error=detail[0]
            )
            raise ExportRejected(f"the loader process failed ({detail[0][:200]})")
        return await asyncio.to_thread(from_wire, out)

    def _reject(self, cand: Candidate, exc: ExportRejected) -> None:
        info = {
            "file": cand.name,
            "modified_at": cand.modified_at,
            "rejected_at": _now(),
            "reason": exc.reason,
            "broken": {
                "count": exc.broken_count,
                "entries": [b.as_dict() for b in exc.broken],  # type: ignore[attr-defined]
            },
        }
        self._rejected[cand.signature] = info
        while len(self._rejected) > 32:  # remembered only to avoid reloading the same bad file
            del self._rejected[next(iter(self._rejected))]
        self._last_rejection = info
        log.warning(
            "flatfile.rejected",
            service=self.name,
            file=cand.name,
            reason=exc.reason,
            broken=exc.broken_count,
            serving=self._current.version.file if self._current else None,
        )
