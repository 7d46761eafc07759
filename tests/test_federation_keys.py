"""A misspelt key in the federation file is an error naming the key, its table and the
nearest valid key, never a setting silently left at its default."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from xroad_hub.demo.harness import DEFAULT_CONFIG
from xroad_hub.federation import KNOWN_KEYS, ConfigError, load_federation

DEMO = DEFAULT_CONFIG.read_text(encoding="utf-8")


def with_line(after: str, line: str) -> str:
    """The demo federation file with ``line`` added after the first line matching ``after``."""
    lines = DEMO.splitlines()
    at = next(i for i, text in enumerate(lines) if re.search(after, text))
    return "\n".join([*lines[: at + 1], line, *lines[at + 1 :]]) + "\n"


def load(text: str, tmp_path: Path) -> object:
    path = tmp_path / "federation.toml"
    path.write_text(text, encoding="utf-8")
    return load_federation(path)


def test_the_demo_federation_uses_known_keys_only(tmp_path: Path) -> None:
    load(DEMO, tmp_path)


@pytest.mark.parametrize(
    ("after", "line", "where", "key", "nearest"),
    [
        (r"^instance = ", 'instanse = "TH"', "top level", "instanse", "instance"),
        (r"^refresh_interval", "refresh_intervall = 5", "[registry]", "refresh_intervall",
         "refresh_interval"),
        (r'^name = "oag"', 'nmae = "x"', "auditor oag", "nmae", "name"),
        (r'^id = "TH/GOV/RD"$', 'nmae = "Revenue"', "member TH/GOV/RD", "nmae", "name"),
        (r'^id = "TH/GOV/DBD/hub1"', "checkpoint_intervall = 5", "node TH/GOV/DBD/hub1",
         "checkpoint_intervall", "checkpoint_interval"),
        (r'id = "TH/GOV/DGA/devportal"', 'auht = "jwt"',
         "node TH/GOV/DGA/hub1 client TH/GOV/DGA/devportal", "auht", "auth"),
        (r'id = "TH/GOV/DBD/registry/companies"', "timout = 5",
         "node TH/GOV/DBD/hub1 service TH/GOV/DBD/registry/companies", "timout", "timeout"),
        # A flat-file service's adapter options are known keys of its table, and checked too.
        (r'id = "TH/GOV/RD/taxclearance/clearances"', "page_sise = 10",
         "node TH/GOV/RD/hub1 service TH/GOV/RD/taxclearance/clearances", "page_sise",
         "page_size"),
        (r'provider = "TH/GOV/DOPA/population"', "tmeout = 3",
         "node TH/GOV/DOPA/hub1 SOAP service TH/GOV/DOPA/population", "tmeout", "timeout"),
        (r'^kind = "dbd-registry"', "sed = 1", "backend dbd-registry", "sed", "seed"),
    ],
)  # fmt: skip
def test_misspelt_key_names_key_table_and_nearest(
    tmp_path: Path, after: str, line: str, where: str, key: str, nearest: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load(with_line(after, line), tmp_path)
    message = str(raised.value)
    assert f"{where}: unknown key {key!r}; did you mean {nearest!r}?" in message


def test_rest_service_has_no_adapter_options(tmp_path: Path) -> None:
    text = with_line(r'id = "TH/GOV/DBD/registry/companies"', 'pattern = "*.txt"')
    with pytest.raises(ConfigError, match="service TH/GOV/DBD/registry/companies: unknown key"):
        load(text, tmp_path)


def test_key_far_from_every_known_key_lists_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(with_line(r"^refresh_interval", "zzz = 1"), tmp_path)
    assert "[registry]: unknown key 'zzz'; known keys: " in str(raised.value)
    assert all(k in str(raised.value) for k in KNOWN_KEYS["registry"])


def test_cli_says_which_key_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_text(with_line(r'id = "TH/GOV/DBD/registry/companies"', "timout = 5"))
    done = subprocess.run(
        [sys.executable, "-m", "xroad_hub.cli", "up", "--config", str(path),
         "--data-dir", str(tmp_path / "var")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "unknown key 'timout'; did you mean 'timeout'?" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
