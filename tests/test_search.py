"""Auditor search over a node's log: every filter, paging, and values never become SQL."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from xroad_hub.messagelog.audit import search_log
from xroad_hub.messagelog.search import SearchFilter, search_sql

from .conftest import Fed
from .sqlite_db import sqlite_db

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"


@pytest.fixture
async def searchable(fed: Fed, http, tmp_path: Path) -> tuple[Path, str]:
    """Five exchanges under a fresh issue number; a copy of the provider's log."""
    case = "CASE-" + uuid.uuid4().hex[:8]
    for i in range(5):
        cid = "1101700203450" if i % 2 == 0 else "3100600123459"
        service = "echo" if i < 4 else "restricted"
        url = fed.url(DGA) + f"/r1/TH/GOV/DBD/registry/{service}/{cid}"
        headers = {"X-Road-Client": "TH/GOV/DGA/devportal", "X-Road-Issue": case,
                   "X-Road-UserId": f"TH-officer-{i % 2}", "X-Road-Id": f"{case}-{i}"}  # fmt: skip
        async with http.get(url, headers=headers):
            pass
    copy = tmp_path / "log.sqlite"
    with (
        sqlite_db(fed.federation.nodes[DBD].runtime.log.path) as a,
        sqlite_db(copy) as b,
    ):
        a.backup(b)
    return copy, case


def _ids(rows: list[dict[str, object]]) -> list[str]:
    return [str(r["message_id"]) for r in rows]


async def test_filters(searchable: tuple[Path, str]) -> None:
    log, case = searchable
    everything, _ = search_log(log, SearchFilter(issue=case))
    assert _ids(everything) == [f"{case}-{i}" for i in range(5)]
    assert "request_body" not in everything[0]  # search never returns bodies
    by_subject, _ = search_log(log, SearchFilter(issue=case, subject="3100600123459"))
    assert _ids(by_subject) == [f"{case}-1", f"{case}-3"]
    by_user, _ = search_log(log, SearchFilter(issue=case, user_id="TH-officer-0"))
    assert _ids(by_user) == [f"{case}-0", f"{case}-2", f"{case}-4"]
    denied, _ = search_log(log, SearchFilter(issue=case, status=500))
    assert [r["error_type"] for r in denied] == ["Server.ServerProxy.AccessDenied"]
    service, _ = search_log(log, SearchFilter(service="TH/GOV/DBD/registry/restricted",
                                              issue=case))  # fmt: skip
    assert _ids(service) == [f"{case}-4"]
    now = datetime.now(UTC)
    assert search_log(log, SearchFilter(issue=case, since=now + timedelta(minutes=1)))[0] == []
    recent, _ = search_log(log, SearchFilter(issue=case, since=now - timedelta(minutes=5),
                                             until=now + timedelta(minutes=1)))  # fmt: skip
    assert len(recent) == 5


async def test_paging_by_leaf_index(searchable: tuple[Path, str]) -> None:
    log, case = searchable
    first, after = search_log(log, SearchFilter(issue=case), limit=2)
    second, after2 = search_log(log, SearchFilter(issue=case), limit=2, after=after or 0)
    third, after3 = search_log(log, SearchFilter(issue=case), limit=2, after=after2 or 0)
    assert _ids(first + second + third) == [f"{case}-{i}" for i in range(5)]
    assert after3 is None


async def test_values_never_become_sql(searchable: tuple[Path, str]) -> None:
    log, _ = searchable
    for value in ("x' OR '1'='1", "'; DROP TABLE exchange; --"):
        assert search_log(log, SearchFilter(client=value, subject=value))[0] == []
    with sqlite_db(log) as conn:
        assert conn.execute("SELECT COUNT(*) FROM exchange").fetchone()[0] >= 5
    sql, params = search_sql(SearchFilter(client="zzz-value", subject="yyy-value"))
    assert "zzz-value" not in sql and "yyy-value" not in sql
    assert {"zzz-value", "yyy-value"} <= set(params)
    with pytest.raises(ValueError):
        search_sql(SearchFilter(), limit=0)


def test_cli_search(searchable: tuple[Path, str]) -> None:
    log, case = searchable
    cmd = [sys.executable, "-m", "xroad_hub.cli", "audit", "search", str(log), "--issue", case,
           "--subject", "1101700203450", "--limit", "2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["message_id"] for r in rows] == [f"{case}-0", f"{case}-2"]
    assert rows[0]["subjects"] == ["1101700203450"]
    assert "more: --after" in out.stderr
