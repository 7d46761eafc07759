"""Helpers for tests and benchmarks: a small federation on free loopback ports.

Public on purpose: agencies writing tests for their own adapters use the same federation.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xroad_hub.packaged import schema_file

__all__ = [
    "TEST_ADMIN_KEYS",
    "TestFederationSpec",
    "free_port",
    "on_free_ports",
    "write_federation",
]

# Administrators of every node of a test federation: name -> (API key, roles). Known keys,
# for tests only: a real node's keys come from ``xroad-hub node admin-key``.
TEST_ADMIN_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ops": ("test-admin-key-ops-not-for-production", ("system-administrator",)),
    "scraper": ("test-admin-key-scraper-not-for-production", ("monitor",)),
    "officer": ("test-admin-key-officer-not-for-production", ("security-officer",)),
    "services": ("test-admin-key-services-not-for-production", ("service-administrator",)),
}


# Ports handed out by this process: a port is free when picked and bound only later, so the
# same one must not be picked twice meanwhile.
_HANDED_OUT: set[int] = set()
# Below the kernel's ephemeral range (32768-60999 by default): ports the kernel gives to
# outgoing connections could otherwise take a picked port before it is bound. Each
# pytest-xdist worker picks from its own share (every n-th port), so that two workers never
# pick the same port between picking and binding it.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
_PORTS = range(20000 + _WORKER % _WORKERS, 32000, _WORKERS)


def free_port() -> int:
    """A loopback port nobody listens on now and that no outgoing connection will take."""
    for _ in range(200):
        port = random.choice(_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {_PORTS.start}-{_PORTS.stop - 1}")


def _addr() -> str:
    return f"127.0.0.1:{free_port()}"


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


@dataclass
class TestFederationSpec:
    """Three nodes: a consumer node with one client of each auth type, a provider node with
    REST services, and a second consumer node with an mTLS client."""

    __test__ = False  # not a pytest test class

    backend_url: str
    validity: float = 600
    refresh: float = 60
    max_body_bytes: int = 1024 * 1024
    body_timeout: float = 1.5
    extra_services: list[dict[str, object]] = field(default_factory=list)
    # SOAP services registered from a WSDL on the provider node ([[node.soap_service]]).
    soap_services: list[dict[str, object]] = field(default_factory=list)
    provider_log_dsn: str | None = None  # the provider node logs to PostgreSQL
    # None: the node's default (federation.NodeConfig), not written to the file.
    checkpoint_interval: float | None = None
    timestamp_failure_limit: float | None = None
    # More settings of a client's registration ([[node.client]]), e.g. default_purpose.
    client_settings: dict[str, dict[str, str]] = field(default_factory=dict)
    # More settings of a node ([[node]], by node id) and of [registry].
    node_settings: dict[str, dict[str, object]] = field(default_factory=dict)
    registry_settings: dict[str, object] = field(default_factory=dict)
    # Global groups the registry publishes ([[global_group]]): code -> members.
    global_groups: dict[str, list[str]] = field(default_factory=dict)


def write_federation(path: Path, spec: TestFederationSpec) -> Path:
    everyone = [
        "TH/GOV/DGA/citizenportal",
        "TH/GOV/DGA/devportal",
        "TH/GOV/DGA/officeapp",
        "TH/GOV/BMA/licensing",
    ]
    services = [
        {
            "id": "TH/GOV/DBD/registry/echo",
            "url": f"{spec.backend_url}/echo",
            "version": "v1",
            "allow": everyone,
            # The data subject (a citizen id): first path segment or the cid parameter.
            "subject": ["path:1", "query:cid"],
            # Every registration says where its answers name persons. The echo service's
            # answers are the request itself; its OpenAPI (the company registry's) declares
            # directors' citizen ids, so the registration must locate them.
            "answer_subject": ["json:directors[*].citizen_id"],
            "openapi": str(schema_file("dbd-registry.openapi.json")),
        },
        {
            "id": "TH/GOV/DBD/registry/restricted",
            "answer_subject": [],
            "url": f"{spec.backend_url}/echo",
            "allow": ["TH/GOV/BMA/licensing"],
        },
        {
            "id": "TH/GOV/DBD/registry/closed",
            "answer_subject": [],
            "url": f"{spec.backend_url}/echo",
            "allow": everyone,
            "disabled": True,
        },
        {
            "id": "TH/GOV/DBD/registry/down",
            "answer_subject": [],
            # Port 1 (tcpmux): nothing listens there, unlike a free port picked now, which
            # another test may bind before this service is called.
            "url": "http://127.0.0.1:1/",
            "allow": everyone,
            "timeout": 2,
        },
        {
            "id": "TH/GOV/DBD/registry/slow",
            "answer_subject": [],
            "url": f"{spec.backend_url}/slow",
            "allow": everyone,
            "timeout": 0.5,
        },
        *spec.extra_services,
    ]
    lines = [
        'instance = "TH"',
        "[registry]",
        f'listen = "{_addr()}"',
        f"globalconf_validity = {spec.validity}",
        f"refresh_interval = {spec.refresh}",
        f'tsa_listen = "{_addr()}"',
        f'health_listen = "{_addr()}"',
        *(f"{k} = {_toml(v)}" for k, v in spec.registry_settings.items()),
    ]
    for member in ("DGA", "BMA", "DBD"):
        lines += ["[[member]]", f'id = "TH/GOV/{member}"', f'name = "{member}"']
    lines += ["[[auditor]]", 'name = "oag"']  # an auditor of the Office of the Auditor General
    common = [
        f"max_body_bytes = {spec.max_body_bytes}",
        f"body_timeout = {spec.body_timeout}",
        *(f"{key} = {value}" for key, value in (
            ("checkpoint_interval", spec.checkpoint_interval),
            ("timestamp_failure_limit", spec.timestamp_failure_limit),
        ) if value is not None),
    ]  # fmt: skip

    def ops() -> list[str]:  # each node's health and admin listeners, and administrators
        lines = [f'health_listen = "{_addr()}"', f'admin_listen = "{_addr()}"']
        for name, (key, roles) in TEST_ADMIN_KEYS.items():
            digest = hashlib.sha256(key.encode()).hexdigest()
            lines += [f'[[node.admin]]\nname = "{name}"\nkey_sha256 = "{digest}"']
            lines += [f"roles = {_list(roles)}"]
        return lines

    lines += [
        "[[node]]",
        'id = "TH/GOV/DGA/hub1"',
        f'peer_listen = "{_addr()}"',
        f'client_listen = "{_addr()}"',
        f'client_tls_listen = "{_addr()}"',
        *common,
        # Settings before ops(): its [[node.admin]] tables would otherwise take them.
        *_settings(spec, "TH/GOV/DGA/hub1"),
        *ops(),
        *_client(spec, "TH/GOV/DGA/citizenportal", "jwt"),
        *_client(spec, "TH/GOV/DGA/devportal", "http"),
        *_client(spec, "TH/GOV/DGA/officeapp", "mtls"),
        "[[node]]",
        'id = "TH/GOV/BMA/hub1"',
        f'peer_listen = "{_addr()}"',
        f'client_listen = "{_addr()}"',
        f'client_tls_listen = "{_addr()}"',
        *common,
        # Settings before ops(): its [[node.admin]] tables would otherwise take them.
        *_settings(spec, "TH/GOV/BMA/hub1"),
        *ops(),
        *_client(spec, "TH/GOV/BMA/licensing", "mtls"),
        "[[node]]",
        'id = "TH/GOV/DBD/hub1"',
        f'peer_listen = "{_addr()}"',
        f'audit_listen = "{_addr()}"',
        f'messagelog_dsn = "{spec.provider_log_dsn}"' if spec.provider_log_dsn else "",
        *common,
        # Settings before ops(): its [[node.admin]] tables would otherwise take them.
        *_settings(spec, "TH/GOV/DBD/hub1"),
        *ops(),
    ]
    tables = [("[[node.service]]", s) for s in services]
    tables += [("[[node.soap_service]]", s) for s in spec.soap_services]
    for table, s in tables:
        lines += [table]
        for key, value in s.items():
            lines.append(f"{key} = {_toml(value)}")
    for code, members in spec.global_groups.items():
        lines += ["[[global_group]]", f'code = "{code}"', f"members = {_list(members)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(value: object) -> str:
    if isinstance(value, list):
        return _list(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):  # an inline table, e.g. slo = { availability = 0.995 }
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return f'"{value}"'


def _settings(spec: TestFederationSpec, node: str) -> list[str]:
    # Tests register files from wherever pytest put them: every directory is open to the
    # admin API unless a test names its own (the node's keys and data stay refused).
    settings = {"service_file_dirs": ["/"], **spec.node_settings.get(node, {})}
    return [f"{k} = {_toml(v)}" for k, v in settings.items()]


def _client(spec: TestFederationSpec, client: str, auth: str) -> list[str]:
    extra = spec.client_settings.get(client, {})
    return ["[[node.client]]", f'id = "{client}"', f'auth = "{auth}"'] + [
        f'{k} = "{v}"' for k, v in extra.items()
    ]


_LOOPBACK = re.compile(r"127\.0\.0\.1:(\d{2,5})")


def on_free_ports(source: Path, target: Path) -> Path:
    """A copy of the federation file ``source`` with every loopback port moved to a free
    one, consistently (a backend's port changes in its service URLs and WSDL URLs too), so
    a second federation (a test, ``xroad-hub demo``) runs next to ``xroad-hub up``."""
    text = source.read_text(encoding="utf-8")
    ports: dict[str, int] = {}

    def swap(m: re.Match[str]) -> str:
        return f"127.0.0.1:{ports.setdefault(m.group(1), free_port())}"

    target.write_text(_LOOPBACK.sub(swap, text), encoding="utf-8")
    return target
