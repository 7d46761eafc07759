"""The REST interface of a flat-file service: lookups, filters, paging, refusals, traversal."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.base import AdapterRequest
from adapters.flatfile import FlatFileAdapter
from xroad_hub.protocol.thaiid import with_check_digit

from .test_flatfile_formats import CIDS, FIXED, NAME, fixed_record


def write_layout(path: Path, layout: dict[str, Any]) -> Path:
    lines = []
    for k, v in layout.items():
        if k != "field":
            lines.append(f"{k} = {_toml(v)}")
    for f in layout.get("field", []):
        lines.append("[[field]]")
        lines += [f"{k} = {_toml(v)}" for k, v in f.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


async def make_adapter(tmp: Path, data: bytes, **options: Any) -> FlatFileAdapter:
    src = tmp / "export.txt"
    src.write_bytes(data)
    opts = {
        "source": str(src),
        "layout": str(write_layout(tmp / "layout.toml", FIXED)),
        "settle_seconds": 0,
        "reload_interval": 0,
        "max_page_size": 5,
        "page_size": 2,
        **options,
    }
    adapter = FlatFileAdapter.from_options(opts)
    await adapter.start()
    return adapter


def req(path: str, query: str = "", method: str = "GET") -> AdapterRequest:
    return AdapterRequest(method, path, query, (), b"")


async def call(
    adapter: FlatFileAdapter, path: str, query: str = "", method: str = "GET"
) -> tuple[int, dict[str, Any]]:
    r = await adapter.handle(req(path, query, method))
    assert dict(r.headers)["Content-Type"].startswith("application/json")
    return r.status, orjson.loads(r.body)


@pytest.fixture
async def deeds(tmp_path: Path) -> FlatFileAdapter:
    data = b"".join(fixed_record(i) + b"\r\n" for i in range(30))  # owners repeat every 20
    adapter = await make_adapter(tmp_path, data)
    yield adapter  # type: ignore[misc]
    await adapter.close()


async def test_lookup_by_key_answers_thai_exactly_with_data_version(deeds: FlatFileAdapter) -> None:
    status, body = await call(deeds, "/records/000007")
    assert status == 200
    assert body["records"][0]["name"] == NAME
    assert body["records"][0]["owner"] == CIDS[7]
    version = body["data_version"]
    assert version["file"] == "export.txt" and len(version["sha256"]) == 64
    assert version["loaded_at"] and version["modified_at"] and version["records"] == 30
    assert body["page"] == {"offset": 0, "limit": 2, "returned": 1, "total": 1, "next_offset": None}


async def test_filters_and_paging(deeds: FlatFileAdapter) -> None:
    status, body = await call(deeds, "/records", f"owner={CIDS[3]}")
    assert status == 200
    assert [r["deed_no"] for r in body["records"]] == ["000003", "000023"][:2]
    assert body["page"]["total"] == 2 and body["page"]["next_offset"] is None
    status, body = await call(deeds, "/records", f"owner={CIDS[3]}&deed_no=000023")
    assert [r["deed_no"] for r in body["records"]] == ["000023"]
    status, body = await call(deeds, "/records", f"owner={CIDS[3]}&limit=1&offset=1")
    assert [r["deed_no"] for r in body["records"]] == ["000023"]
    assert body["page"]["total"] == 2
    status, body = await call(deeds, "/records", f"owner={CIDS[3]}&limit=1")
    assert body["page"]["next_offset"] == 1


async def test_not_indexed_and_unknown_fields_refused(deeds: FlatFileAdapter) -> None:
    status, body = await call(deeds, "/records", "name=x")
    assert status == 400 and body["error"] == "not_indexed"
    assert body["indexed"] == ["deed_no", "owner"] and "data_version" in body
    status, body = await call(deeds, "/records", "password=x")
    assert status == 400 and body["error"] == "unknown_field"
    status, body = await call(deeds, "/records")
    assert status == 400 and body["error"] == "query_required"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("owner=1234567890123", "invalid_value"),  # check digit
        ("owner=", "invalid_value"),
        ("deed_no=1&deed_no=2", "repeated_parameter"),
        ("deed_no=1&limit=0", "bad_paging"),
        ("deed_no=1&limit=6", "bad_paging"),
        ("deed_no=1&offset=-1", "bad_paging"),
        ("deed_no=%FF", "bad_query"),
        ("deed_no=1&&", "bad_query"),
    ],
)
async def test_bad_queries(deeds: FlatFileAdapter, query: str, error: str) -> None:
    status, body = await call(deeds, "/records", query)
    assert (status, body["error"]) == (400, error)


async def test_not_found_methods_and_description(deeds: FlatFileAdapter) -> None:
    status, body = await call(deeds, "/records/999999")
    assert status == 404 and body["error"] == "not_found" and body["data_version"]
    other = with_check_digit("310170020345")
    status, body = await call(deeds, "/records", f"owner={other}")
    assert status == 404
    status, body = await call(deeds, "/records/1", method="POST")
    assert status == 405
    status, body = await call(deeds, "/")
    assert status == 200 and body["keys"] == ["deed_no", "owner"]
    assert {"name": "issued", "type": "date", "indexed": False} in body["fields"]
    status, body = await call(deeds, "/_report")
    assert status == 200 and body["broken"]["count"] == 0 and body["last_rejected"] is None


TRAVERSAL = [
    ("/records/..%2F..%2Fetc%2Fpasswd", ""),
    ("/records/%2Fetc%2Fpasswd", ""),
    ("/records/../../etc/passwd", ""),
    ("/../../etc/passwd", ""),
    ("/%2e%2e/%2e%2e/etc/passwd", ""),
    ("/etc/passwd", ""),
    ("//etc/passwd", ""),
    ("/records", "deed_no=../../etc/passwd"),
    ("/records", "deed_no=%2Fetc%2Fpasswd"),
    ("/records", "../../etc/passwd=1"),
    ("/records", "deed_no=$(cat%20/etc/passwd)"),
    ("/records", "deed_no=1;rm%20-rf%20/"),
    ("/records", "deed_no=1'%20OR%20'1'='1"),
    ("/records/%00", ""),
]


@pytest.mark.parametrize(("path", "query"), TRAVERSAL)
async def test_request_parts_never_reach_the_file_system(
    deeds: FlatFileAdapter, monkeypatch: pytest.MonkeyPatch, path: str, query: str
) -> None:
    opened: list[object] = []

    def refuse(*args: object, **kw: object) -> None:
        opened.append(args)
        raise AssertionError(f"file opened while answering: {args}")

    for target, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat")):
        monkeypatch.setattr(target, name, refuse)
    status, body = await call(deeds, path, query)
    monkeypatch.undo()
    assert opened == []
    assert status in (400, 404), body
    assert "root:" not in orjson.dumps(body).decode()


async def test_no_valid_export_answers_503_with_the_reason(tmp_path: Path) -> None:
    adapter = await make_adapter(tmp_path, fixed_record(1)[:30])  # half-written
    try:
        status, body = await call(adapter, "/records/000001")
        assert status == 503 and body["error"] == "no_data"
        assert "half-written" in body["last_rejected"]["reason"]
    finally:
        await adapter.close()
