"""A user's mistake on the command line is an error and a hint, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from xroad_hub.cli import main
from xroad_hub.dev.testing import TestFederationSpec, write_federation


@pytest.fixture
def fed_file(tmp_path: Path) -> Path:
    return write_federation(
        tmp_path / "federation.toml", TestFederationSpec(backend_url="http://127.0.0.1:1")
    )


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0].startswith("xroad-hub: ")
    assert lines[-1].startswith("hint: ")
    return err


def test_malformed_client_identifier(fed_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "token", "--config", str(fed_file), "TH/GOV/bad_one")
    assert "malformed subsystem identifier 'TH/GOV/bad_one'" in err
    assert "e.g. TH/GOV/DGA/devportal" in err


def test_illegal_characters_in_identifier(
    fed_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _fails(capsys, "token", "--config", str(fed_file), "TH/GOV/DGA/dev portal")
    assert "illegal characters" in err


def test_missing_federation_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "token", "--config", str(tmp_path / "nope.toml"), "TH/GOV/DGA/x")
    assert "cannot read federation file" in err


def test_broken_federation_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "federation.toml"
    bad.write_text('instance = "TH"\n[[member]]\nid = "TH/GOV"\n', encoding="utf-8")
    err = _fails(capsys, "pki", "init", "--config", str(bad), "--certs-dir", str(tmp_path))
    assert str(bad) in err


def test_export_from_a_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "audit", "export", str(tmp_path / "nope.sqlite"), "m-1")
    assert "messagelog.sqlite" in err


def test_central_request_id_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cdir = str(tmp_path / "central")
    assert main(["central", "init", "--dir", cdir, "--instance", "TH",
                 "--url", "https://127.0.0.1:4001"]) == 0  # fmt: skip
    capsys.readouterr()
    for argv in (["approve", "9" * 20], ["decline", "9" * 20, "--reason", "x"]):
        err = _fails(capsys, "central", *argv, "--dir", cdir)
        assert "is not a request id" in err


def test_central_run_on_a_taken_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cdir = str(tmp_path / "central")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["central", "init", "--dir", cdir, "--instance", "TH",
                     "--url", f"https://127.0.0.1:{port}"]) == 0  # fmt: skip
        capsys.readouterr()
        err = _fails(capsys, "central", "run", "--dir", cdir)
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--listen" in err
