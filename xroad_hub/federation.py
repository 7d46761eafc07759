"""The federation description (TOML): registry, members, nodes, their clients and services.

One file describes a whole development federation, the way the demo runs it on one machine.
Each node only uses its own section (X-Road: the security server's local configuration);
the central registry publishes the shared part as the signed global configuration.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.flatfile.settings import OPTIONS as FLATFILE_OPTIONS
from xroad_hub.errors import HubError, ProtocolError
from xroad_hub.protocol.identifiers import (
    ClientId,
    MemberId,
    NodeId,
    ServiceId,
    SubsystemId,
    parse_client_id,
    parse_member_id,
    parse_node_id,
    parse_service_id,
    parse_subsystem_id,
    valid_part,
)
from xroad_hub.protocol.subjects import AnswerLocator, Locator, parse_answer_locator, parse_locator

__all__ = [
    "ADMIN_ROLES",
    "AUTH_MODES",
    "KNOWN_KEYS",
    "AdminConfig",
    "BackendConfig",
    "ClientConfig",
    "FederationConfig",
    "NodeConfig",
    "RegistryConfig",
    "ServiceConfig",
    "SloConfig",
    "SoapServiceConfig",
    "load_federation",
    "parse_address",
]

AUTH_MODES = ("http", "mtls", "jwt")


class ConfigError(HubError, ValueError):
    """The federation file is wrong; the message names the place and what to change."""


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {text!r} must be HOST:PORT")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    listen: tuple[str, int]
    globalconf_validity: float = 600.0
    refresh_interval: float = 60.0
    # The federation's RFC 3161 timestamp authority, run next to the registry.
    tsa_listen: tuple[str, int] | None = None
    # Unauthenticated health check (X-Road's health-check port), plain HTTP.
    health_listen: tuple[str, int] | None = None
    # The central monitoring client (X-Road: monitoringClientId in the global
    # configuration): reads every node's operational-monitoring records.
    monitoring_client: ClientId | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A subsystem allowed to call services through its node, and how it authenticates."""

    id: SubsystemId
    auth: str  # one of AUTH_MODES
    # Applied by the node to this client's requests that name no purpose (X-Road clients
    # that cannot send one), marked as the registered default where they are signed.
    default_purpose: str | None = None
    default_legal_basis: str | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """An administrator of one node's admin API: a bearer key (only its SHA-256 is
    configured) and the roles it carries (ADMIN_ROLES)."""

    name: str
    key_sha256: str
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class SloConfig:
    """A service-level objective the provider declares: ``availability`` of requests served
    without a fault of the provider's side, ``latency_share`` of them within ``latency_ms``,
    over ``window_days`` (node/slo.py computes the burn)."""

    availability: float = 0.995
    latency_ms: float | None = None
    latency_share: float = 0.99
    window_days: float = 30.0

    def as_dict(self) -> dict[str, float | None]:
        return {
            "availability": self.availability,
            "latency_ms": self.latency_ms,
            "latency_share": self.latency_share,
            "window_days": self.window_days,
        }


_SLO_KEYS = frozenset(("availability", "latency_ms", "latency_share", "window_days"))


def _slo(where: str, table: object) -> SloConfig | None:
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: slo must be a table, e.g. slo = {{ availability = 0.995 }}")
    unknown = sorted(set(table) - _SLO_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown slo key {unknown[0]!r}; known keys: {', '.join(sorted(_SLO_KEYS))}"
        )
    try:
        slo = SloConfig(
            availability=float(table.get("availability", 0.995)),
            latency_ms=float(table["latency_ms"]) if "latency_ms" in table else None,
            latency_share=float(table.get("latency_share", 0.99)),
            window_days=float(table.get("window_days", 30)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: slo values must be numbers") from exc
    if not (0 < slo.availability < 1 and 0 < slo.latency_share < 1):
        raise ConfigError(f"{where}: slo availability and latency_share must be between 0 and 1")
    if slo.window_days <= 0 or (slo.latency_ms is not None and slo.latency_ms <= 0):
        raise ConfigError(f"{where}: slo window_days and latency_ms must be positive")
    return slo


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    id: ServiceId  # unversioned: access rights and routing are per service code
    adapter: str
    url: str  # REST adapter only
    timeout: float = 30.0
    allow: frozenset[ClientId] = frozenset()
    disabled: bool = False
    disabled_notice: str = "service is disabled by its provider"
    version: str | None = None
    # Adapters other than REST (e.g. "flatfile") take the rest of the service's table as
    # their own options, which the adapter validates.
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    # Where the data subject's id is in a request (see subjects.py), for the subject index.
    subjects: tuple[Locator, ...] = ()
    # Where the answers name persons (answer_subject, required in the federation file: an
    # empty list states that the answers name nobody).
    answer_subjects: tuple[AnswerLocator, ...] = ()
    # OpenAPI 3 description (JSON file) served by the getOpenAPI metaservice.
    openapi: str | None = None
    # Purposes the provider accepts (X-Road-Purpose); when declared, a request with no
    # purpose or another one is refused with AccessDenied.
    purposes: tuple[str, ...] = ()
    # The provider's service-level objective (None: none declared).
    slo: SloConfig | None = None


@dataclass(frozen=True, slots=True)
class SoapServiceConfig:
    """A SOAP service registered from its WSDL: each operation becomes a service code of
    ``provider`` (version from the WSDL's xrd:version, else ``version``), all sharing the
    access rights, purposes and subject locators given here."""

    provider: SubsystemId
    wsdl: str  # file path or http(s) URL, read when the node starts
    mode: str  # "bridge": plain legacy SOAP service; "passthrough": X-Road-aware service
    url: str | None = None  # endpoint; default: the WSDL's soap:address
    version: str = "v1"
    timeout: float = 30.0
    allow: frozenset[ClientId] = frozenset()
    disabled: bool = False
    purposes: tuple[str, ...] = ()
    subjects: tuple[Locator, ...] = ()
    answer_subjects: tuple[AnswerLocator, ...] = ()


SOAP_MODES = ("bridge", "passthrough")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: NodeId
    peer_listen: tuple[str, int]
    client_listen: tuple[str, int] | None
    client_tls_listen: tuple[str, int] | None
    clients: tuple[ClientConfig, ...] = ()
    providers: tuple[SubsystemId, ...] = ()
    services: tuple[ServiceConfig, ...] = ()
    soap_services: tuple[SoapServiceConfig, ...] = ()
    max_body_bytes: int = 10 * 1024 * 1024
    body_timeout: float = 30.0
    provider_timeout: float = 60.0
    checkpoint_interval: float = 60.0  # seconds between signed tree heads while logging
    audit_listen: tuple[str, int] | None = None  # HTTPS API for auditors (auditapi.py)
    # PostgreSQL DSN for the message log (scale-out); None: SQLite in the data directory.
    messagelog_dsn: str | None = None
    # Timestamps: an external RFC 3161 TSA instead of the federation's, and how long a
    # checkpoint may wait for one before the node refuses exchanges (X-Road default: 4 h).
    tsa_url: str | None = None
    timestamp_failure_limit: float = 4 * 3600.0
    # Retention: bodies of exchanges older than this are purged (leaves and proofs stay).
    body_retention: float | None = None
    # Per client system: requests in flight at once, and their bodies' bytes (None: twice
    # max_body_bytes); over either, a request is refused with HTTP 429 (node/limits.py).
    client_max_concurrent: int = 32
    client_max_inflight_bytes: int | None = None
    # Unauthenticated health check (plain HTTP, X-Road's health-check port), and the admin
    # API (HTTPS, or plain HTTP on a loopback address) with its administrators' keys.
    health_listen: tuple[str, int] | None = None
    admin_listen: tuple[str, int] | None = None
    admins: tuple[AdminConfig, ...] = ()
    # Operational monitoring (node/opmonitoring.py): on unless switched off; kept this long
    # and at most this many records.
    opmonitoring: bool = True
    opmonitoring_retention: float = 7 * 86400.0
    opmonitoring_max_records: int = 1_000_000
    # Where the node posts its own alerts (node/slo.py), and how often it looks.
    alert_webhook: str | None = None
    slo_check_interval: float = 30.0

    @property
    def hosted(self) -> tuple[ClientId, ...]:
        """Every subsystem this node hosts, as client or as provider (sorted, unique)."""
        return tuple(sorted({c.id for c in self.clients} | set(self.providers)))


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """A demo agency system started next to the federation (not part of a real node)."""

    kind: str
    listen: tuple[str, int]
    seed: int = 2569


@dataclass(frozen=True, slots=True)
class FederationConfig:
    instance: str
    registry: RegistryConfig
    members: dict[MemberId, str]
    nodes: tuple[NodeConfig, ...]
    backends: tuple[BackendConfig, ...] = field(default=())
    # Auditors: a role of their own (not client subsystems), each with an ES256 key.
    auditors: tuple[str, ...] = ()

    def node(self, node_id: str) -> NodeConfig:
        for node in self.nodes:
            if str(node.id) == node_id:
                return node
        raise ConfigError(f"no node {node_id!r} in the federation file")

    def node_of_client(self, client: ClientId) -> NodeConfig:
        for node in self.nodes:
            if any(c.id == client for c in node.clients):
                return node
        raise ConfigError(f"{client} is not a client subsystem of any node")


def load_federation(path: Path) -> FederationConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read federation file {path}: {exc}") from exc
    try:
        return _build(data)
    except ProtocolError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: missing or wrong-typed setting {exc}") from exc


# The keys each table of the federation file may have. A key not listed is an error naming
# the key, its table and the nearest known key (a misspelt "timout" must not silently fall
# back to the default). A new setting is added here, and read where its table is built.
KNOWN_KEYS: dict[str, frozenset[str]] = {
    "federation": frozenset(("instance", "registry", "member", "node", "backend", "auditor")),
    "registry": frozenset(
        (
            "listen", "globalconf_validity", "refresh_interval", "tsa_listen", "health_listen",
            "monitoring_client",
        )
    ),
    "member": frozenset(("id", "name")),
    "node": frozenset(
        (
            "id", "peer_listen", "client_listen", "client_tls_listen", "client", "service",
            "soap_service", "max_body_bytes", "body_timeout", "provider_timeout",
            "checkpoint_interval", "audit_listen", "messagelog_dsn", "tsa_url",
            "timestamp_failure_limit", "body_retention_days", "client_max_concurrent",
            "client_max_inflight_bytes", "health_listen", "admin_listen", "admin", "opmonitoring",
            "opmonitoring_retention_days", "opmonitoring_max_records", "alert_webhook",
            "slo_check_interval",
        )
    ),
    "admin": frozenset(("name", "key_sha256", "roles")),
    "client": frozenset(("id", "auth", "default_purpose", "default_legal_basis")),
    # Settings every [[node.service]] has; the adapter's options come on top (ADAPTER_OPTIONS).
    "service": frozenset(
        (
            "id", "adapter", "url", "timeout", "allow", "disabled", "disabled_notice",
            "version", "subject", "answer_subject", "purposes", "openapi", "slo",
        )
    ),
    "soap_service": frozenset(
        ("provider", "wsdl", "mode", "url", "version", "timeout", "allow", "disabled",
         "purposes", "subject", "answer_subject")
    ),
    "backend": frozenset(("kind", "listen", "seed")),
    "auditor": frozenset(("name",)),
}  # fmt: skip
# Options of a [[node.service]] passed to its adapter (the adapter validates their values).
ADAPTER_OPTIONS: dict[str, frozenset[str]] = {"rest": frozenset(), "flatfile": FLATFILE_OPTIONS}
_SERVICE_KEYS = KNOWN_KEYS["service"]


def _check_keys(
    table: Mapping[str, Any], kind: str, where: str, extra: frozenset[str] = frozenset()
) -> None:
    """ConfigError for the first key of ``table`` that a ``kind`` table does not have."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    known = KNOWN_KEYS[kind] | extra
    unknown = [key for key in table if key not in known]
    if not unknown:
        return
    # A misspelling is named first: a misspelt 'adapter' makes the adapter's options unknown.
    near = {k: difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.6) for k in unknown}
    key = next((k for k in unknown if near[k]), unknown[0])
    hint = (
        f"did you mean {near[key][0]!r}?"
        if near[key]
        else f"known keys: {', '.join(sorted(known))}"
    )
    raise ConfigError(f"{where}: unknown key {key!r}; {hint}")


def _named(table: Mapping[str, Any], key: str, index: int) -> str:
    """How an error names one table of an array: its id (or name), else its position."""
    value = table.get(key) if isinstance(table, Mapping) else None
    return str(value) if isinstance(value, str) else f"#{index + 1}"


def _build(data: dict[str, Any]) -> FederationConfig:
    _check_keys(data, "federation", "top level")
    for i, table in enumerate(data.get("member", [])):
        _check_keys(table, "member", f"member {_named(table, 'id', i)}")
    for i, table in enumerate(data.get("backend", [])):
        _check_keys(table, "backend", f"backend {_named(table, 'kind', i)}")
    for i, table in enumerate(data.get("auditor", [])):
        _check_keys(table, "auditor", f"auditor {_named(table, 'name', i)}")
    instance = data["instance"]
    reg = data["registry"]
    _check_keys(reg, "registry", "[registry]")
    registry = RegistryConfig(
        parse_address(reg["listen"]),
        float(reg.get("globalconf_validity", 600)),
        float(reg.get("refresh_interval", 60)),
        parse_address(reg["tsa_listen"]) if "tsa_listen" in reg else None,
        parse_address(reg["health_listen"]) if "health_listen" in reg else None,
        parse_client_id(reg["monitoring_client"]) if "monitoring_client" in reg else None,
    )
    members = {parse_member_id(m["id"]): m.get("name", m["id"]) for m in data.get("member", [])}
    nodes = tuple(_node(n, members, i) for i, n in enumerate(data.get("node", [])))
    for node in nodes:
        if node.id.owner not in members:
            raise ConfigError(f"node {node.id}: owner {node.id.owner} is not a declared member")
        for sub in node.hosted:
            if sub.member not in members:
                raise ConfigError(f"node {node.id}: {sub} belongs to no declared member")
        if node.id.owner.instance != instance:
            raise ConfigError(f"node {node.id} is not in instance {instance}")
    backends = tuple(
        BackendConfig(b["kind"], parse_address(b["listen"]), int(b.get("seed", 2569)))
        for b in data.get("backend", [])
    )
    auditors = tuple(str(a["name"]) for a in data.get("auditor", []))
    for name in auditors:
        if not valid_part(name):
            raise ConfigError(f"auditor name {name!r} must use identifier characters only")
    return FederationConfig(instance, registry, members, nodes, backends, auditors)


def _locators(node_id: NodeId, sid: ServiceId, texts: list[str]) -> tuple[Locator, ...]:
    try:
        return tuple(parse_locator(t) for t in texts)
    except ValueError as exc:
        raise ConfigError(f"node {node_id}, service {sid}: {exc}") from exc


def _answer_locators(where: str, table: dict[str, Any]) -> tuple[AnswerLocator, ...]:
    """``answer_subject`` is required: a service whose answers name citizens must say
    where, or the reads would never reach their trackers; [] states that they name nobody."""
    if "answer_subject" not in table:
        raise ConfigError(
            f"{where}: say where its answers name persons, e.g. answer_subject ="
            ' ["json:records[*].citizen_id"] (xml:ELEMENT for SOAP answers), or'
            " answer_subject = [] if its answers name no person"
        )
    texts = table["answer_subject"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ConfigError(f"{where}: answer_subject must be a list of locators")
    try:
        return tuple(parse_answer_locator(t) for t in texts)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _purposes(node_id: NodeId, sid: ServiceId, values: list[str]) -> tuple[str, ...]:
    for value in values:
        if not isinstance(value, str) or not valid_part(value):
            raise ConfigError(
                f"node {node_id}, service {sid}: purpose {value!r} must be a code of "
                "identifier characters, e.g. food-business-licence"
            )
    return tuple(values)


def _soap_service(node_id: NodeId, t: dict[str, Any], index: int) -> SoapServiceConfig:
    _check_keys(t, "soap_service", f"node {node_id} SOAP service {_named(t, 'provider', index)}")
    provider = parse_subsystem_id(t["provider"])
    mode = t.get("mode", "bridge")
    if mode not in SOAP_MODES:
        raise ConfigError(
            f"node {node_id}, SOAP service {provider}: mode must be one of {SOAP_MODES}"
        )
    where = ServiceId(provider, "wsdl")
    return SoapServiceConfig(
        provider=provider,
        wsdl=str(t["wsdl"]),
        mode=mode,
        url=t.get("url"),
        version=str(t.get("version", "v1")),
        timeout=float(t.get("timeout", 30)),
        allow=frozenset(parse_client_id(a) for a in t.get("allow", [])),
        disabled=bool(t.get("disabled", False)),
        purposes=_purposes(node_id, where, t.get("purposes", [])),
        subjects=_locators(node_id, where, t.get("subject", [])),
        answer_subjects=_answer_locators(f"node {node_id}, SOAP service {provider}", t),
    )


def _client(node_id: NodeId, c: dict[str, Any]) -> ClientConfig:
    client = parse_subsystem_id(c["id"])
    purpose = c.get("default_purpose")
    basis = c.get("default_legal_basis")
    if purpose is not None:
        _purposes(node_id, ServiceId(client, "default_purpose"), [purpose])
    if basis is not None and (
        not isinstance(basis, str) or not 0 < len(basis) <= 255 or not basis.isprintable()
    ):
        raise ConfigError(
            f"node {node_id}, client {client}: default_legal_basis must be printable text of "
            "at most 255 characters"
        )
    if basis is not None and purpose is None:
        raise ConfigError(
            f"node {node_id}, client {client}: default_legal_basis needs a default_purpose"
        )
    return ClientConfig(client, c["auth"], purpose, basis)


def _node(n: dict[str, Any], members: dict[MemberId, str], index: int) -> NodeConfig:
    _check_keys(n, "node", f"node {_named(n, 'id', index)}")
    node_id = parse_node_id(n["id"])
    clients = []
    for i, c in enumerate(n.get("client", [])):
        _check_keys(c, "client", f"node {node_id} client {_named(c, 'id', i)}")
        if c["auth"] not in AUTH_MODES:
            raise ConfigError(f"node {node_id}: client auth must be one of {AUTH_MODES}")
        clients.append(_client(node_id, c))
    services = []
    for i, s in enumerate(n.get("service", [])):
        options = ADAPTER_OPTIONS.get(s.get("adapter", "rest"), frozenset())
        _check_keys(s, "service", f"node {node_id} service {_named(s, 'id', i)}", options)
        sid = parse_service_id(s["id"])
        if sid.service_version:
            raise ConfigError(f"node {node_id}: give the version of {sid} as version = ...")
        if not isinstance(sid.provider, SubsystemId):
            raise ConfigError(f"node {node_id}: service {sid} must belong to a subsystem")
        adapter = s.get("adapter", "rest")
        services.append(
            ServiceConfig(
                id=sid,
                adapter=adapter,
                url=s["url"] if adapter == "rest" else s.get("url", ""),
                timeout=float(s.get("timeout", 30)),
                allow=frozenset(parse_client_id(a) for a in s.get("allow", [])),
                disabled=bool(s.get("disabled", False)),
                disabled_notice=s.get("disabled_notice", "service is disabled by its provider"),
                version=s.get("version"),
                subjects=_locators(node_id, sid, s.get("subject", [])),
                answer_subjects=_answer_locators(f"node {node_id}, service {sid}", s),
                purposes=_purposes(node_id, sid, s.get("purposes", [])),
                openapi=s.get("openapi"),
                slo=_slo(f"node {node_id}, service {sid}", s.get("slo")),
                options=(
                    {k: v for k, v in s.items() if k not in _SERVICE_KEYS}
                    if adapter != "rest"
                    else {}
                ),
            )
        )
    soap_services = tuple(
        _soap_service(node_id, t, i) for i, t in enumerate(n.get("soap_service", []))
    )
    providers = tuple(
        sorted({s.id.provider for s in services} | {s.provider for s in soap_services})  # type: ignore[type-var]
    )
    return NodeConfig(
        id=node_id,
        peer_listen=parse_address(n["peer_listen"]),
        client_listen=parse_address(n["client_listen"]) if "client_listen" in n else None,
        client_tls_listen=(
            parse_address(n["client_tls_listen"]) if "client_tls_listen" in n else None
        ),
        clients=tuple(clients),
        providers=providers,  # type: ignore[arg-type]
        services=tuple(services),
        soap_services=soap_services,
        max_body_bytes=int(n.get("max_body_bytes", 10 * 1024 * 1024)),
        body_timeout=float(n.get("body_timeout", 30)),
        provider_timeout=float(n.get("provider_timeout", 60)),
        checkpoint_interval=float(n.get("checkpoint_interval", 60)),
        audit_listen=parse_address(n["audit_listen"]) if "audit_listen" in n else None,
        messagelog_dsn=n.get("messagelog_dsn"),
        tsa_url=n.get("tsa_url"),
        timestamp_failure_limit=float(n.get("timestamp_failure_limit", 4 * 3600)),
        body_retention=(
            float(n["body_retention_days"]) * 86400 if "body_retention_days" in n else None
        ),
        client_max_concurrent=int(n.get("client_max_concurrent", 32)),
        client_max_inflight_bytes=(
            int(n["client_max_inflight_bytes"]) if "client_max_inflight_bytes" in n else None
        ),
        health_listen=parse_address(n["health_listen"]) if "health_listen" in n else None,
        admin_listen=parse_address(n["admin_listen"]) if "admin_listen" in n else None,
        admins=tuple(_admin(node_id, a, i) for i, a in enumerate(n.get("admin", []))),
        opmonitoring=bool(n.get("opmonitoring", True)),
        opmonitoring_retention=float(n.get("opmonitoring_retention_days", 7)) * 86400,
        opmonitoring_max_records=int(n.get("opmonitoring_max_records", 1_000_000)),
        alert_webhook=n.get("alert_webhook"),
        slo_check_interval=float(n.get("slo_check_interval", 30)),
    )


# Roles an administrator's key may carry: X-Road's node roles, without the xroad- prefix.
ADMIN_ROLES = frozenset(
    (
        "system-administrator", "security-officer", "registration-officer",
        "service-administrator", "monitor",
    )
)  # fmt: skip
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _admin(node_id: NodeId, a: dict[str, Any], index: int) -> AdminConfig:
    where = f"node {node_id} admin {_named(a, 'name', index)}"
    _check_keys(a, "admin", where)
    name, digest, roles = a.get("name"), a.get("key_sha256"), a.get("roles")
    if not isinstance(name, str) or not valid_part(name):
        raise ConfigError(f"{where}: name must use identifier characters only")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise ConfigError(
            f"{where}: key_sha256 must be the 64 lower-case hex digits of the key's SHA-256"
            " (xroad-hub node admin-key prints a new key and its digest)"
        )
    if not isinstance(roles, list) or not roles or not set(roles) <= ADMIN_ROLES:
        raise ConfigError(f"{where}: roles must be a non-empty list of {sorted(ADMIN_ROLES)}")
    return AdminConfig(name, digest, frozenset(roles))
