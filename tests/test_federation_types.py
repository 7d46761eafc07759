"""The federation file's tables are typed: a value of the wrong type is an error naming the
table, the key and the value (never a traceback, never a silent conversion), a missing key
says which, and a key left out takes the dataclass field's default, stated nowhere else."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from xroad_hub.federation import (
    KNOWN_KEYS,
    ConfigError,
    FederationConfig,
    NodeConfig,
    ServiceConfig,
    load_federation,
    load_table,
    setting,
)

BASE = """instance = "TH"
[registry]
listen = "127.0.0.1:1"
[[member]]
id = "TH/GOV/DBD"
[[node]]
id = "TH/GOV/DBD/hub1"
peer_listen = "127.0.0.1:2"
{node}
[[node.service]]
id = "TH/GOV/DBD/registry/companies"
url = "http://127.0.0.1:3/"
answer_subject = []
{service}
"""


def _load(tmp_path: Path, node: str = "", service: str = "") -> FederationConfig:
    path = tmp_path / "federation.toml"
    path.write_text(BASE.format(node=node, service=service), encoding="utf-8")
    return load_federation(path)


def _error(tmp_path: Path, node: str = "", service: str = "") -> str:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, node, service)
    return str(raised.value)


NODE = "node TH/GOV/DBD/hub1"
SERVICE = "node TH/GOV/DBD/hub1 service TH/GOV/DBD/registry/companies"


@pytest.mark.parametrize(
    ("node", "service", "message"),
    [
        ("", 'timeout = "ten"', f'{SERVICE}: timeout must be a number, got "ten"'),
        ("", "timeout = true", f"{SERVICE}: timeout must be a number, got true"),
        ("", "timeout = nan", f"{SERVICE}: timeout must be a number, got NaN"),
        ("", 'disabled = "yes"', f'{SERVICE}: disabled must be true or false, got "yes"'),
        ("", "version = 5", f"{SERVICE}: version must be a string, got 5"),
        ("", 'allow = "TH/GOV/DGA"',
         f'{SERVICE}: allow must be a list of strings, got "TH/GOV/DGA"'),
        ("", "purposes = [1]", f"{SERVICE}: purposes must be a list of strings, got [1]"),
        ("", 'adapter = "ftp"', f'{SERVICE}: adapter must be one of "rest", "flatfile", got "ftp"'),
        ("max_body_bytes = 1.5", "", f"{NODE}: max_body_bytes must be a whole number, got 1.5"),
        ("client_max_concurrent = true", "",
         f"{NODE}: client_max_concurrent must be a whole number, got true"),
        ('audit_listen = "x"', "", f"{NODE}: audit_listen: address 'x' must be HOST:PORT"),
        ("client = 3", "", f"{NODE}: client must be an array of tables ([[client]])"),
        ("[node.registry]", "", f"{NODE}: unknown key 'registry'"),
    ],
)  # fmt: skip
def test_wrong_types_name_table_key_and_value(
    tmp_path: Path, node: str, service: str, message: str
) -> None:
    assert message in _error(tmp_path, node, service)


def test_errors_name_the_file(tmp_path: Path) -> None:
    assert _error(tmp_path, service="timeout = []").startswith(f"{tmp_path / 'federation.toml'}: ")


def test_missing_keys_and_tables_are_named(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_text('instance = "TH"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="top level: missing key 'registry'"):
        load_federation(path)
    path.write_text('instance = "TH"\nregistry = 5\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[registry\]: expected a table, got 5"):
        load_federation(path)
    path.write_text(BASE.format(node="", service="").replace('url = "http://127.0.0.1:3/"', ""))
    with pytest.raises(ConfigError, match=f"{SERVICE}: a REST service needs the url"):
        load_federation(path)


def test_ints_are_numbers_and_identifiers_are_parsed(tmp_path: Path) -> None:
    fed = _load(tmp_path, node="body_timeout = 5\nbody_retention_days = 2", service="timeout = 2")
    node = fed.node("TH/GOV/DBD/hub1")
    assert node.body_timeout == 5.0 and isinstance(node.body_timeout, float)
    assert node.body_retention == 2 * 86400
    (service,) = node.services
    assert service.timeout == 2.0 and isinstance(service.timeout, float)
    assert str(service.id.provider) == "TH/GOV/DBD/registry"
    assert fed.members == {service.id.provider.member: "TH/GOV/DBD"}


def test_keys_left_out_take_the_dataclass_defaults(tmp_path: Path) -> None:
    """The defaults are the fields' own: nothing in the loader restates them."""
    node = _load(tmp_path).node("TH/GOV/DBD/hub1")
    for cls, value in ((NodeConfig, node), (ServiceConfig, node.services[0])):
        for f in dataclasses.fields(cls):
            key = f.metadata.get("key") or f.name
            if f"\n{key} =" in BASE or f"[[node.{key}]]" in BASE:
                continue  # given in the file
            if f.default is not dataclasses.MISSING:
                assert getattr(value, f.name) == f.default, (cls.__name__, f.name)


def test_known_keys_are_the_fields() -> None:
    assert KNOWN_KEYS["node"] >= {"peer_listen", "body_retention_days", "client", "service"}
    assert "body_retention" not in KNOWN_KEYS["node"] and "options" not in KNOWN_KEYS["service"]
    assert set(KNOWN_KEYS) == {"federation", "registry", "member", "node", "admin", "client",
                               "service", "soap_service", "backend", "auditor",
                               "global_group"}  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Inner:
    label = "inner"
    named_by = "name"
    name: str
    size: int = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Outer:
    ratio: float = 0.5
    tags: tuple[str, ...] = ()
    inner: tuple[_Inner, ...] = setting((), key="in")
    port: int | None = setting(None, key="address", raw=str, parse=lambda t: int(t[1:]))


def test_a_new_table_needs_nothing_but_its_dataclass() -> None:
    """The loader is generic: another table (say, an operations section) is a dataclass."""
    outer = load_table(_Outer, {"in": [{"name": "a"}, {"name": "b", "size": 4}]}, "[ops]")
    assert outer == _Outer(inner=(_Inner(name="a"), _Inner(name="b", size=4)))
    assert load_table(_Outer, {"address": ":80", "ratio": 1}, "x").port == 80
    with pytest.raises(ConfigError, match=r"^x: address: invalid literal"):
        load_table(_Outer, {"address": "nope"}, "x")
    with pytest.raises(ConfigError, match=r"^\[ops\] inner b: size must be a whole number"):
        load_table(_Outer, {"in": [{"name": "a"}, {"name": "b", "size": "4"}]}, "[ops]")
    with pytest.raises(ConfigError, match=r"^\[ops\] inner #1: missing key 'name'$"):
        load_table(_Outer, {"in": [{}]}, "[ops]")
    with pytest.raises(ConfigError, match=r"^\[ops\]: unknown key 'ratoi'; did you mean 'ratio'"):
        load_table(_Outer, {"ratoi": 1}, "[ops]")


@pytest.mark.parametrize(
    ("node", "message"),
    [
        # Past float's range: was an OverflowError traceback.
        ("timestamp_failure_limit = 1" + "0" * 400,
         f"{NODE}: timestamp_failure_limit must be a number, got a number of more than 80"),
        ("body_retention_days = 1" + "0" * 400, f"{NODE}: body_retention_days must be a number"),
        # TOML's integers are 64-bit: a larger one is refused, not carried into the node.
        ("max_body_bytes = 9223372036854775808", f"{NODE}: max_body_bytes must be a whole number"),
        # Past str()'s 4300 digits (tomllib itself, and the error's quoting, raised ValueError).
        ("max_body_bytes = 1" + "0" * 5000, "cannot read federation file"),
        ('"\u202eclient" = 1', f"{NODE}: unknown key"),
    ],
)  # fmt: skip
def test_crafted_values_are_config_errors_not_tracebacks(
    tmp_path: Path, node: str, message: str
) -> None:
    assert message in _error(tmp_path, node)


def test_a_file_not_in_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_bytes(b'instance = "\xff"\n')
    with pytest.raises(ConfigError, match="cannot read federation file"):
        load_federation(path)


def test_objectives_are_declared_on_rest_and_soap_services(tmp_path: Path) -> None:
    soap = (
        "[[node.soap_service]]\n"
        'provider = "TH/GOV/DBD/legacy"\nwsdl = "legacy.wsdl"\nanswer_subject = []\n'
        "slo = { availability = 0.99, latency_ms = 800 }\n"
    )
    fed = _load(tmp_path, service="slo = { availability = 0.995 }\n" + soap)
    node = fed.nodes[0]
    assert node.services[0].slo is not None and node.services[0].slo.availability == 0.995
    objective = node.soap_services[0].slo
    assert objective is not None and (objective.availability, objective.latency_ms) == (0.99, 800)
    bad = _error(tmp_path, service="slo = { availability = 1.5 }")
    assert "availability and latency_share must be between 0 and 1" in bad
