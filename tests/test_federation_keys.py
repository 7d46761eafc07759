"""Mistakes in the federation file and in how it is run are errors a user can act on: a
misspelt key names the key, its table and the nearest valid key (never a setting silently
left at its default); a busy port names the address, the component and the key to change."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from xroad_hub.demo.harness import DEFAULT_CONFIG
from xroad_hub.dev.testing import on_free_ports
from xroad_hub.federation import KNOWN_KEYS, ConfigError, load_federation

ROOT = Path(__file__).resolve().parents[1]

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


def test_misspelt_adapter_is_named_before_the_options_it_hides(tmp_path: Path) -> None:
    text = DEMO.replace('adapter = "flatfile"', 'adaptor = "flatfile"', 1)
    with pytest.raises(ConfigError, match="unknown key 'adaptor'; did you mean 'adapter'"):
        load(text, tmp_path)


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("taken", "component", "key"),
    [
        ('kind = "dbd-registry"', "backend dbd-registry", "listen of backend dbd-registry"),
        ('id = "TH/GOV/DBD/hub1"', "node TH/GOV/DBD/hub1 (client port)",
         "client_listen of node TH/GOV/DBD/hub1"),
    ],
)  # fmt: skip
def test_up_on_a_busy_port_says_which_and_whose(
    tmp_path: Path, taken: str, component: str, key: str
) -> None:
    """A second 'xroad-hub up' (here: a socket already bound) names the address, the
    component and the key to change; it exits non-zero without a traceback."""
    config = on_free_ports(DEFAULT_CONFIG, tmp_path / "federation.toml")
    text = config.read_text(encoding="utf-8")
    # The first listen address after the table's identifying line.
    after = text.index(taken)
    keyword = "client_listen" if "node" in component else "listen"
    match = re.compile(rf"^{keyword} = \"127\.0\.0\.1:(\d+)\"", re.M).search(text, after)
    assert match is not None
    port = int(match.group(1))
    with socket.create_server(("127.0.0.1", port)):
        done = subprocess.run(
            [sys.executable, "-m", "xroad_hub.cli", "up", "--config", str(config),
             "--certs-dir", str(tmp_path / "certs"), "--data-dir", str(tmp_path / "var")],
            capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
        )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert f"cannot listen on 127.0.0.1:{port} for {component}: " in done.stderr
    assert "already in use" in done.stderr and key in done.stderr
    assert "Traceback" not in output
