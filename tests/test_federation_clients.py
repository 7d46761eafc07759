"""A client subsystem's registration: its default purpose and legal basis are checked when
the federation file is read, not when the first request goes wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from xroad_hub.federation import ConfigError, load_federation

BASE = """instance = "TH"
[registry]
listen = "127.0.0.1:1"
[[member]]
id = "TH/GOV/DGA"
[[node]]
id = "TH/GOV/DGA/hub1"
peer_listen = "127.0.0.1:2"
[[node.client]]
id = "TH/GOV/DGA/portal"
auth = "http"
"""


def _load(tmp_path: Path, extra: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "federation.toml"
    path.write_text(BASE + extra, encoding="utf-8")
    return load_federation(path)


def test_default_purpose_and_legal_basis_are_read(tmp_path: Path) -> None:
    fed = _load(tmp_path, 'default_purpose = "case-work"\ndefault_legal_basis = "Act s.1"\n')
    (client,) = fed.nodes[0].clients
    assert (client.default_purpose, client.default_legal_basis) == ("case-work", "Act s.1")
    (client,) = _load(tmp_path, "").nodes[0].clients
    assert client.default_purpose is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('default_purpose = "two words"\n', "purpose 'two words' must be a code"),
        ('default_legal_basis = "Act s.1"\n', "default_legal_basis needs a default_purpose"),
        ('default_purpose = "x"\ndefault_legal_basis = "a\\nb"\n', "must be printable text"),
    ],
)
def test_bad_defaults_are_refused_naming_the_setting(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, extra)
