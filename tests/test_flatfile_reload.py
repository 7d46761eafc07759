"""Hot reload: atomic replace switches versions, bad files are refused, requests never fail."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
import pytest

from adapters.flatfile import FlatFileAdapter
from adapters.flatfile.errors import ExportRejected
from adapters.flatfile.source import candidates, read_candidate

from .test_flatfile_api import call, make_adapter, req, write_layout
from .test_flatfile_formats import FIXED, fixed_record


def export(n: int, name: str = "สมชาย ใจดี", bad: int = 0) -> bytes:
    recs = [
        fixed_record(i, name=name, issued="25679999" if i < bad else "25670115") for i in range(n)
    ]
    return b"".join(r + b"\r\n" for r in recs)


def replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_atomic_replace_switches_and_old_version_finishes(tmp_path: Path) -> None:
    adapter = await make_adapter(tmp_path, export(10, "สมชาย"))
    try:
        old = adapter.current
        assert old is not None
        replace_atomically(tmp_path / "export.txt", export(12, "มาลี"))
        assert await adapter.refresh() == "loaded"
        status, body = await call(adapter, "/records/000011")
        assert status == 200 and body["records"][0]["name"] == "มาลี"
        assert body["data_version"]["sha256"] != old.version.sha256
        # A request that started on the old version still answers from it, consistently.
        assert old.record(3)["name"] == "สมชาย"
        assert await adapter.refresh() == "unchanged"
    finally:
        await adapter.close()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (export(10)[:-37], "half-written"),  # cut in the middle of a record
        (export(10, bad=5), "5 of 10 records are broken"),
        (b"", "no valid record"),
    ],
)
async def test_bad_new_file_rejected_previous_keeps_serving(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    adapter = await make_adapter(tmp_path, export(10, "สมชาย"))
    try:
        before = adapter.current
        replace_atomically(tmp_path / "export.txt", data)
        assert await adapter.refresh() == "rejected"
        assert adapter.current is before
        status, body = await call(adapter, "/records/000001")
        assert status == 200 and body["records"][0]["name"] == "สมชาย"
        status, report = await call(adapter, "/_report")
        assert reason in report["last_rejected"]["reason"]
        assert report["data_version"]["sha256"] == before.version.sha256
        # The same bad file is not loaded again at every check.
        assert await adapter.refresh() == "unchanged"
        replace_atomically(tmp_path / "export.txt", export(3, "มาลี"))
        assert await adapter.refresh() == "loaded"
    finally:
        await adapter.close()


async def test_concurrent_requests_during_reload_all_succeed(tmp_path: Path) -> None:
    adapter = await make_adapter(tmp_path, export(2000))
    stop = asyncio.Event()
    statuses: list[int] = []
    waits: list[float] = []

    async def client(i: int) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            r = await adapter.handle(req(f"/records/{i % 1500:06d}"))
            waits.append(time.perf_counter() - t0)
            statuses.append(r.status)
            await asyncio.sleep(0.0005)  # a steady load, not a busy loop starving the loader

    try:
        tasks = [asyncio.create_task(client(i)) for i in range(8)]
        versions = set()
        for n in (2100, 2200, 2300):
            replace_atomically(tmp_path / "export.txt", export(n))
            assert await adapter.refresh() == "loaded"
            versions.add(adapter.current.version.sha256)  # type: ignore[union-attr]
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await adapter.close()
    assert len(versions) == 3
    assert statuses and set(statuses) == {200}


async def test_worker_process_loads_and_serves_during_reload(tmp_path: Path) -> None:
    adapter = await make_adapter(tmp_path, export(3000), loader="process")
    try:
        assert adapter.current is not None and adapter.current.version.records == 3000
        replace_atomically(tmp_path / "export.txt", export(3100, "มาลี"))
        refresh = asyncio.create_task(adapter.refresh())
        served = 0
        while not refresh.done():
            r = await adapter.handle(req("/records/000042"))
            assert r.status == 200
            served += 1
            await asyncio.sleep(0.001)
        assert await refresh == "loaded"
        status, body = await call(adapter, "/records/003099")
        assert status == 200 and body["records"][0]["name"] == "มาลี"
        assert served > 0
        replace_atomically(tmp_path / "export.txt", export(10)[:-5])
        assert await adapter.refresh() == "rejected"  # the worker's rejection travels back
        assert "half-written" in adapter.last_rejection["reason"]  # type: ignore[index]
    finally:
        await adapter.close()


async def test_directory_of_dated_exports(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "deeds-25681120.txt").write_bytes(export(5, "สมชาย"))
    (exports / "deeds-25681122.txt").write_bytes(export(5)[:-7])  # newest, but half-written
    (exports / ".deeds-25681123.txt.tmp").write_bytes(export(5, "ทอง"))  # writer's temp name
    (exports / "deeds-25681124.txt.part").write_bytes(export(5, "ทอง"))
    outside = tmp_path / "secret.txt"
    outside.write_bytes(export(5, "ลับ"))
    (exports / "deeds-25681125.txt").symlink_to(outside)  # a link out of the directory
    adapter = FlatFileAdapter.from_options(
        {
            "source": str(exports),
            "pattern": "deeds-*.txt",
            "layout": str(write_layout(tmp_path / "layout.toml", FIXED)),
            "settle_seconds": 0,
            "reload_interval": 0,
        }
    )
    await adapter.start()
    try:
        # Nothing in service yet and the newest is broken: the next older one serves.
        assert adapter.current is not None
        assert adapter.current.version.file == "deeds-25681120.txt"
        assert adapter.last_rejection["file"] == "deeds-25681122.txt"  # type: ignore[index]
        (exports / "deeds-25681126.txt").write_bytes(export(6, "มาลี"))
        assert await adapter.refresh() == "loaded"
        _, body = await call(adapter, "/records/000005")
        assert body["data_version"]["file"] == "deeds-25681126.txt"
        assert body["records"][0]["name"] == "มาลี"
    finally:
        await adapter.close()


async def test_fresh_files_settle_and_polling_switches_by_itself(tmp_path: Path) -> None:
    adapter = await make_adapter(tmp_path, export(5, "สมชาย"), reload_interval=0.05)
    try:
        replace_atomically(tmp_path / "export.txt", export(6, "มาลี"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if adapter.current is not None and adapter.current.version.records == 6:
                break
        assert adapter.current is not None and adapter.current.version.records == 6
    finally:
        await adapter.close()
    (tmp_path / "fresh").mkdir()
    slow = await make_adapter(tmp_path / "fresh", export(5), settle_seconds=3600)
    try:
        assert slow.current is None
        assert await slow.refresh() == "settling"
    finally:
        await slow.close()


def test_a_file_that_changes_while_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"one\n")
    (cand,) = candidates(path, None)
    assert read_candidate(cand) == b"one\n"
    path.write_bytes(b"two, longer\n")
    with pytest.raises(ExportRejected, match="changed"):
        read_candidate(cand)
    assert candidates(tmp_path / "missing", None) == []
    assert candidates(tmp_path / "missing", "*") == []


async def test_missing_source_keeps_the_version_in_service(tmp_path: Path) -> None:
    adapter = await make_adapter(tmp_path, export(5))
    try:
        (tmp_path / "export.txt").unlink()
        assert await adapter.refresh() == "missing"
        status, body = await call(adapter, "/records/000001")
        assert status == 200
        assert orjson.loads(orjson.dumps(body))["data_version"]["file"] == "export.txt"
    finally:
        await adapter.close()
