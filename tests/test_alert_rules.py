"""The shipped alerting rules and Grafana dashboard (issue 14, items 4 and 5) use metrics
a node really exports: each name in their expressions is checked against a real scrape, and
the rules against promtool (check and unit tests) where it is installed."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from xroad_hub.dev.testing import TEST_ADMIN_KEYS

from .conftest import Fed

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "config" / "grafana" / "xroad-hub.json"
NODE_SOURCE = ROOT / "xroad_hub" / "node" / "operations.py"
DGA, DBD = "TH/GOV/DGA/hub1", "TH/GOV/DBD/hub1"
SCRAPER = {"Authorization": f"Bearer {TEST_ADMIN_KEYS['scraper'][0]}"}
# Exported only by nodes with a flat-file service (none in the test federation): checked
# against the node's source instead.
FLATFILE_ONLY = {
    "xroad_hub_flatfile_data_age_seconds",
    "xroad_hub_flatfile_loaded_age_seconds",
    "xroad_hub_flatfile_broken_records",
}
_NAME = re.compile(r"\bxroad_hub_[a-z0-9_]+")


def rule_expressions() -> list[str]:
    """Each ``expr:`` of the rules file, inline or as a block (the file's own layout)."""
    exprs, lines = [], RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        key, _, rest = line.strip().partition(":")
        if key != "expr":
            continue
        rest = rest.strip()
        if rest not in ("|", ">-", ">"):
            exprs.append(rest)
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for more in lines[i + 1 :]:
            if more.strip() and len(more) - len(more.lstrip()) <= indent:
                break
            block.append(more.strip())
        exprs.append(" ".join(block))
    return exprs


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [
        v["query"]["query"] for v in board["templating"]["list"] if isinstance(v["query"], dict)
    ]
    return exprs


def _base(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


async def _exported(fed: Fed, http) -> set[str]:  # type: ignore[no-untyped-def]
    # A checkpoint that is timestamped and witnessed: their age gauges exist from then on.
    async with http.get(
        fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo",
        headers={"X-Road-Client": "TH/GOV/DGA/devportal"},
    ) as r:
        assert r.status == 200
    # A refused request (unknown client): refusals are counted by error type from then on.
    async with http.get(
        fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo",
        headers={"X-Road-Client": "TH/GOV/DGA/nobody"},
    ) as r:
        assert r.status >= 400
    await fed.federation.nodes[DBD].checkpointer.checkpoint()
    names = set()
    for node in (DGA, DBD):
        async with http.get(fed.url(node, "admin") + "/metrics", headers=SCRAPER) as r:
            text = await r.text()
        for family in text_string_to_metric_families(text):
            names |= {s.name for s in family.samples}
    return names


async def test_every_metric_in_rules_and_dashboard_is_exported(fed: Fed, http) -> None:
    exported = await _exported(fed, http)
    source = NODE_SOURCE.read_text()
    for where, exprs in (("rules", rule_expressions()), ("dashboard", dashboard_expressions())):
        assert exprs, where
        used = {name for e in exprs for name in _NAME.findall(e)}
        assert used, where
        for name in sorted(used):
            if name in FLATFILE_ONLY:
                assert f'"{name}"' in source, name
                continue
            assert name in exported or _base(name) + "_count" in exported, (where, name)
    # The coordinated names (opmon and SLO work use them).
    assert "xroad_hub_exchanges_total" in exported
    assert "xroad_hub_exchange_duration_seconds_bucket" in exported


def test_dashboard_loads_as_is() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        if panel["type"] != "row":
            # Every query goes to the chosen datasource, none to a hard-coded uid.
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])


async def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return await asyncio.to_thread(
        subprocess.run,
        [tool, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULES.parent,
        check=False,
    )


async def test_promtool_checks_the_rules() -> None:
    result = await _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_rules_fire_as_intended() -> None:
    # Unit tests: a service failing 10 % of exchanges pages; a healthy one does not;
    # log, timestamping and configuration-refresh failures page.
    result = await _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
