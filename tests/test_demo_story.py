"""``xroad-hub demo``: the whole once-only story as one command, and the harness under it."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from case_service.config import load_settings
from xroad_hub.cli import main
from xroad_hub.demo import story
from xroad_hub.demo.harness import (
    BMA_NODE,
    CASE_SERVICE_CLIENT,
    DEFAULT_CONFIG,
    DemoFederation,
    HarnessError,
    demo_applicant,
    start_case_service,
    write_case_service_config,
)
from xroad_hub.demo.legacy_exports import rd_taxclearance_csv, title_deed_lines
from xroad_hub.demo.runner import Federation, with_packaged_paths
from xroad_hub.demo.synthetic import companies, demo_people
from xroad_hub.federation import load_federation
from xroad_hub.pki import PkiLayout
from xroad_hub.protocol.thaiid import with_check_digit

NODES = [str(n.id) for n in load_federation(DEFAULT_CONFIG).nodes]


@pytest.mark.slow
def test_demo_command_plays_the_whole_story(tmp_path: Path) -> None:
    # From a directory that is not the repository: the demo must not depend on where it runs.
    proc = subprocess.run(
        [sys.executable, "-m", "xroad_hub.cli", "demo", "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "FAILED" not in out
    assert re.search(r"case BMA-FOOD-\d{4}-\d{6}: evidence-complete", out)
    for evidence in ("identity", "house_registration", "company_registration", "title_deed",
                     "tax_clearance"):  # fmt: skip
        assert re.search(rf"exchange {evidence} +TH/GOV/\S+ +id \S+ +ok", out), evidence
    assert "นางสมศรี ทองดี / Mrs. Somsri Thongdee" in out
    assert "is in-review" in out
    assert "approves: approved" in out
    assert "within the 30-day SLA" in out
    assert "Server.ServerProxy.AccessDenied" in out and "X-Road-Purpose" in out
    # Her three reads by citizen id, and the company answer that names her as a director
    # (answer_subject of the company registry).
    assert "4 tracker entries" in out
    assert "TH/GOV/DBD/registry/companies [company_registration]" in out
    assert "nothing about anyone else" in out
    for node in NODES:
        assert re.search(rf"audit {re.escape(node)} +\d+ entries, [1-9]\d* checkpoints.*: OK", out)
    assert "DEMO OK" in out
    # The work directory was named: it stays, with every node's log in it.
    assert (tmp_path / "w" / "data" / "nodes" / "TH" / "GOV" / "DOPA" / "hub1").is_dir()


def test_demo_refuses_a_used_workdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old.txt").write_text("someone else's file")
    assert main(["demo", "--workdir", str(tmp_path)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "old.txt").exists()


def test_demo_help_says_what_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "free loopback" in text and "--keep" in text and "--workdir" in text


def test_demo_applicant_of_the_default_seed_is_mrs_somsri() -> None:
    a = demo_applicant()
    assert (a.citizen_id, a.juristic_id) == ("1552806801307", "0105744622488")
    assert a.name_en == "Somsri Thongdee"
    assert demo_applicant() == a  # deterministic


def test_demo_applicant_has_every_evidence_type_for_another_seed() -> None:
    seed = 7
    a = demo_applicant(seed)
    persons = demo_people(seed, 200)
    company = next(c for c in companies(seed, 200, persons) if c.juristic_id == a.juristic_id)
    assert company.directors[0] == a.citizen_id  # DBD: she directs it
    assert a.citizen_id in {p.citizen_id for p in persons}  # DOPA knows her
    assert any(a.citizen_id.encode() in line for line in title_deed_lines(seed))  # DOL
    assert a.juristic_id.encode() in rd_taxclearance_csv(seed)  # RD


def _offline_demo(tmp_path: Path) -> DemoFederation:
    """A DemoFederation that was never started: enough for the config writers."""
    fed = load_federation(DEFAULT_CONFIG)
    return DemoFederation(
        workdir=tmp_path,
        config_path=DEFAULT_CONFIG,
        fed=fed,
        pki=PkiLayout(tmp_path / "certs"),
        federation=Federation(fed, tmp_path / "certs", tmp_path / "data"),
        endpoints={"nodes": {BMA_NODE: {"client_tls": "https://127.0.0.1:8444"}}},
        data_dir=tmp_path / "data",
    )


def test_case_service_config_is_what_the_case_service_accepts(tmp_path: Path) -> None:
    demo = _offline_demo(tmp_path)
    path = write_case_service_config(demo, tmp_path, port=8601, sla_days=12)
    s = load_settings(path)
    assert (s.node_url, s.client_id, s.listen_port) == (
        "https://127.0.0.1:8444", CASE_SERVICE_CLIENT, 8601,
    )  # fmt: skip
    assert s.tls_cert == demo.pki.client_tls(CASE_SERVICE_CLIENT).cert
    assert s.tls_ca == demo.pki.root_ca.cert
    assert s.idp_public_key == demo.pki.idp_jwt().cert
    assert s.db_path.is_relative_to(tmp_path)
    assert s.case_types["food-business-licence"].sla_days == 12


def test_node_url_names_what_exists(tmp_path: Path) -> None:
    demo = _offline_demo(tmp_path)
    assert demo.node_url(BMA_NODE, "client_tls") == "https://127.0.0.1:8444"
    with pytest.raises(KeyError, match="has no 'audit' listener"):
        demo.node_url(BMA_NODE, "audit")
    with pytest.raises(KeyError, match="no node"):
        demo.node_url("TH/GOV/XX/hub1")
    assert demo.log_path(BMA_NODE).parts[-5:] == ("TH", "GOV", "BMA", "hub1", "messagelog.sqlite")


def test_relative_layouts_resolve_from_anywhere(tmp_path: Path) -> None:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        fed = with_packaged_paths(load_federation(DEFAULT_CONFIG))
    finally:
        os.chdir(old)
    layouts = [s.options["layout"] for n in fed.nodes for s in n.services if "layout" in s.options]
    assert len(layouts) == 2
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in layouts)


async def test_case_service_that_cannot_start_is_reported_with_its_output(
    tmp_path: Path,
) -> None:
    # No PKI at all: the case service cannot read the identity provider's key and exits.
    demo = _offline_demo(tmp_path)
    with pytest.raises(HarnessError) as exc:
        await start_case_service(demo, tmp_path, startup_timeout=60)
    message = str(exc.value)
    assert "exited with status" in message
    assert "case_service.failed" in message or "No such file" in message


@pytest.mark.slow
async def test_a_failed_step_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A company DBD and RD have never heard of: its evidence cannot be complete.
    real = demo_applicant()
    stranger = dataclasses.replace(real, juristic_id=with_check_digit("010599999999"))
    monkeypatch.setattr(story, "demo_applicant", lambda seed: stranger)
    out = io.StringIO()
    assert await story.play(tmp_path / "w", out) is False
    text = out.getvalue()
    assert "FAILED in step 2." in text and "not evidence-complete" in text
    assert "what to do:" in text and "404 means the registry holds nothing" in text
    assert "missing company_registration" in text and "missing tax_clearance" in text
    # Everything is still stopped cleanly and the logs written so far still verify.
    assert "federation stopped" in text
    assert len(re.findall(r"^   audit .*: OK$", text, re.M)) == len(NODES)
    assert "DEMO FAILED" in text
