"""The federation description (TOML): registry, members, nodes, their clients and services.

One file describes a whole development federation, the way the demo runs it on one machine.
Each node only uses its own section (X-Road: the security server's local configuration);
the central registry publishes the shared part as the signed global configuration.

Each table of the file is a frozen dataclass below, and its fields are the only statement of
the table's keys, their types and their defaults: ``load_table`` reads any of them (unknown
keys, missing keys and wrong types are errors naming the place), ``KNOWN_KEYS`` is derived
from them, and checks that span several keys of one table live in its ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from adapters.flatfile.settings import OPTIONS as FLATFILE_OPTIONS
from xroad_hub.errors import ConfigError, XRoadError
from xroad_hub.protocol.access import parse_endpoint
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
    "AuditorConfig",
    "BackendConfig",
    "ClientConfig",
    "ConfigError",
    "FederationConfig",
    "GlobalGroupConfig",
    "MemberConfig",
    "NodeConfig",
    "RegistryConfig",
    "ServiceConfig",
    "SloConfig",
    "SoapServiceConfig",
    "load_federation",
    "load_table",
    "parse_address",
    "setting",
]

AUTH_MODES = ("http", "mtls", "jwt")
SOAP_MODES = ("bridge", "passthrough")
# Options of a [[node.service]] passed to its adapter (the adapter validates their values).
ADAPTER_OPTIONS: dict[str, frozenset[str]] = {"rest": frozenset(), "flatfile": FLATFILE_OPTIONS}


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {text!r} must be HOST:PORT")
    return host, int(port)


# --- how a field is read ------------------------------------------------------------------


def setting(
    default: Any = dataclasses.MISSING,
    *,
    key: str | None = None,
    raw: Any = None,
    parse: Callable[[Any], Any] | None = None,
    choices: tuple[str, ...] = (),
    missing: str = "",
    rest_of_table: Callable[[Mapping[str, Any]], frozenset[str]] | None = None,
) -> Any:
    """A dataclass field read from the file by ``load_table``.

    ``key``: its name in the file (default: the field's name). ``raw``: the type the file
    holds (default: the field's own type), checked before ``parse`` turns it into the field's
    value (a ValueError from ``parse`` names the key). ``choices``: the values allowed.
    ``missing``: a hint added when a required key is absent. ``rest_of_table``: this field
    takes the table's remaining keys, those that the function allows for the table.
    """
    meta = {"key": key, "raw": raw, "parse": parse, "choices": choices, "missing": missing,
            "rest_of_table": rest_of_table}  # fmt: skip
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    if isinstance(default, dict | list | set):
        return field(default_factory=lambda: type(default)(default), metadata=meta, hash=False)
    return field(default=default, metadata=meta)


def _ids(parse_one: Callable[[str], Any]) -> Callable[[tuple[str, ...]], Any]:
    return lambda texts: tuple(parse_one(t) for t in texts)


def _client_ids(texts: tuple[str, ...]) -> frozenset[ClientId]:
    return frozenset(parse_client_id(t) for t in texts)


def _purposes(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not valid_part(value):
            raise ValueError(
                f"purpose {value!r} must be a code of identifier characters, e.g. "
                "food-business-licence"
            )
    return values


def _endpoints(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        parse_endpoint(value)
    return values


def _legal_bases(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_legal_basis(v) for v in values)


def _group_codes(values: tuple[str, ...]) -> frozenset[str]:
    for value in values:
        if not valid_part(value):
            raise ValueError(f"global group code {value!r} must use identifier characters only")
    return frozenset(values)


def _purpose(value: str) -> str:
    return _purposes((value,))[0]


def _unversioned_service_id(text: str) -> ServiceId:
    sid = parse_service_id(text)
    if not isinstance(sid.provider, SubsystemId):
        raise ValueError(f"{sid}: a service is provided by a subsystem (MEMBER/SUBSYSTEM/CODE)")
    if sid.service_version:
        raise ValueError(f"give the version of {sid} as version = {sid.service_version!r}")
    return sid


def _at_least_one(n: int) -> int:
    if n < 1:
        raise ValueError(f"must be at least 1, got {n}")
    return n


def _auditor_name(name: str) -> str:
    if not valid_part(name):
        raise ValueError(f"{name!r} must use identifier characters only")
    return name


_ANSWER_SUBJECT_HINT = (
    'say where its answers name persons, e.g. answer_subject = ["json:records[*].citizen_id"]'
    " (xml:ELEMENT for SOAP answers), or answer_subject = [] if its answers name no person"
)


def _legal_basis(text: str) -> str:
    if not 0 < len(text) <= 255 or not text.isprintable():
        raise ValueError("must be printable text of at most 255 characters")
    return text


# Settings that SOAP and REST service registrations share, one definition each.
def _allow() -> Any:
    return setting(frozenset(), raw=tuple[str, ...], parse=_client_ids)


def _purposes_setting() -> Any:
    return setting((), parse=_purposes)


def _subjects() -> Any:
    return setting((), key="subject", raw=tuple[str, ...], parse=_ids(parse_locator))


def _answer_subjects() -> Any:
    # Required: a service whose answers name citizens must say where, or the reads would never
    # reach their trackers; [] states that they name nobody.
    return setting(
        key="answer_subject",
        raw=tuple[str, ...],
        parse=_ids(parse_answer_locator),
        missing=_ANSWER_SUBJECT_HINT,
    )


def _address(default: Any = dataclasses.MISSING) -> Any:
    return setting(default, raw=str, parse=parse_address)


def _adapter_options(table: Mapping[str, Any]) -> frozenset[str]:
    adapter = table.get("adapter")
    return ADAPTER_OPTIONS.get(adapter, frozenset()) if isinstance(adapter, str) else frozenset()


# --- the tables -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryConfig:
    label: ClassVar[str] = "registry"
    listen: tuple[str, int] = _address()
    globalconf_validity: float = 600.0
    refresh_interval: float = 60.0
    # The federation's RFC 3161 timestamp authority, run next to the registry.
    tsa_listen: tuple[str, int] | None = _address(None)
    # Unauthenticated health check (X-Road's health-check port), plain HTTP.
    health_listen: tuple[str, int] | None = _address(None)
    # The central monitoring client (X-Road: monitoringClientId in the global
    # configuration): reads every node's operational-monitoring records.
    monitoring_client: ClientId | None = setting(None, raw=str, parse=parse_client_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberConfig:
    label: ClassVar[str] = "member"
    named_by: ClassVar[str] = "id"
    id: MemberId = setting(raw=str, parse=parse_member_id)
    name: str | None = None  # None: the member's id


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """A subsystem allowed to call services through its node, and how it authenticates."""

    label: ClassVar[str] = "client"
    named_by: ClassVar[str] = "id"
    id: SubsystemId = setting(raw=str, parse=parse_subsystem_id)
    auth: str = setting(choices=AUTH_MODES)
    # Applied by the node to this client's requests that name no purpose (X-Road clients
    # that cannot send one), marked as the registered default where they are signed.
    default_purpose: str | None = setting(None, parse=_purpose)
    default_legal_basis: str | None = setting(None, parse=_legal_basis)

    def __post_init__(self) -> None:
        if self.default_legal_basis is not None and self.default_purpose is None:
            raise ValueError("default_legal_basis needs a default_purpose")


# Roles an administrator's key may carry: X-Road's node roles, without the xroad- prefix.
ADMIN_ROLES = frozenset(
    (
        "system-administrator", "security-officer", "registration-officer",
        "service-administrator", "monitor",
    )
)  # fmt: skip
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _admin_name(name: str) -> str:
    if not valid_part(name):
        raise ValueError("name must use identifier characters only")
    return name


def _key_digest(digest: str) -> str:
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(
            "must be the 64 lower-case hex digits of the key's SHA-256"
            " (xroad-hub node admin-key prints a new key and its digest)"
        )
    return digest


def _roles(roles: tuple[str, ...]) -> frozenset[str]:
    if not roles or not set(roles) <= ADMIN_ROLES:
        raise ValueError(f"must be a non-empty list of {sorted(ADMIN_ROLES)}")
    return frozenset(roles)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """An administrator of one node's admin API: a bearer key (only its SHA-256 is
    configured) and the roles it carries (ADMIN_ROLES)."""

    label: ClassVar[str] = "admin"
    named_by: ClassVar[str] = "name"
    name: str = setting(parse=_admin_name)
    key_sha256: str = setting(parse=_key_digest)
    roles: frozenset[str] = setting(raw=tuple[str, ...], parse=_roles)


@dataclass(frozen=True, slots=True, kw_only=True)
class SloConfig:
    """A service-level objective the provider declares: ``availability`` of requests served
    without a fault of the provider's side, ``latency_share`` of them within ``latency_ms``,
    over ``window_days`` (node/slo.py computes the burn)."""

    label: ClassVar[str] = "slo"
    availability: float = 0.995
    latency_ms: float | None = None
    latency_share: float = 0.99
    window_days: float = 30.0

    def __post_init__(self) -> None:
        if not (0 < self.availability < 1 and 0 < self.latency_share < 1):
            raise ValueError("slo availability and latency_share must be between 0 and 1")
        if self.window_days <= 0 or (self.latency_ms is not None and self.latency_ms <= 0):
            raise ValueError("slo window_days and latency_ms must be positive")

    def as_dict(self) -> dict[str, float | None]:
        return {
            "availability": self.availability,
            "latency_ms": self.latency_ms,
            "latency_share": self.latency_share,
            "window_days": self.window_days,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    label: ClassVar[str] = "service"
    named_by: ClassVar[str] = "id"
    id: ServiceId = setting(raw=str, parse=_unversioned_service_id)  # routing is per code
    adapter: str = setting("rest", choices=tuple(ADAPTER_OPTIONS))
    url: str = ""  # REST adapter only (required there)
    timeout: float = 30.0
    allow: frozenset[ClientId] = _allow()
    disabled: bool = False
    disabled_notice: str = "service is disabled by its provider"
    version: str | None = None
    # Adapters other than REST (e.g. "flatfile") take the rest of the service's table as
    # their own options, which the adapter validates.
    options: dict[str, Any] = setting({}, rest_of_table=_adapter_options)
    # Where the data subject's id is in a request (see subjects.py), for the subject index.
    subjects: tuple[Locator, ...] = _subjects()
    # Where the answers name persons (answer_subject, required in the federation file: an
    # empty list states that the answers name nobody).
    answer_subjects: tuple[AnswerLocator, ...] = _answer_subjects()
    # OpenAPI 3 description (JSON file) served by the getOpenAPI metaservice.
    openapi: str | None = None
    # Purposes the provider accepts (X-Road-Purpose); when declared, a request with no
    # purpose or another one is refused with AccessDenied.
    purposes: tuple[str, ...] = _purposes_setting()
    # Legal bases the provider serves under (X-Road-Legal-Basis); when declared, a request
    # naming none of them is refused with AccessDenied.
    legal_bases: tuple[str, ...] = setting((), parse=_legal_bases)
    # A service-level objective the node watches (node/slo.py); None: none declared.
    slo: SloConfig | None = None
    # The operations this service code serves, "METHOD /path/{param}" each (a service code
    # registered from one OpenAPI operation); empty: any method and path under its URL.
    endpoints: tuple[str, ...] = setting((), parse=_endpoints)
    # Global groups (defined centrally, in the global configuration) granted access too.
    global_groups: frozenset[str] = setting(
        frozenset(), key="allow_global_group", raw=tuple[str, ...], parse=_group_codes
    )

    def __post_init__(self) -> None:
        if self.adapter == "rest" and not self.url:
            raise ValueError("a REST service needs the url of its backend: url = ...")


@dataclass(frozen=True, slots=True, kw_only=True)
class SoapServiceConfig:
    """A SOAP service registered from its WSDL: each operation becomes a service code of
    ``provider`` (version from the WSDL's xrd:version, else ``version``), all sharing the
    access rights, purposes and subject locators given here."""

    label: ClassVar[str] = "SOAP service"
    named_by: ClassVar[str] = "provider"
    provider: SubsystemId = setting(raw=str, parse=parse_subsystem_id)
    wsdl: str  # file path or http(s) URL, read when the node starts
    # "bridge": plain legacy SOAP service; "passthrough": X-Road-aware service
    mode: str = setting("bridge", choices=SOAP_MODES)
    url: str | None = None  # endpoint; default: the WSDL's soap:address
    version: str = "v1"
    timeout: float = 30.0
    allow: frozenset[ClientId] = _allow()
    disabled: bool = False
    purposes: tuple[str, ...] = _purposes_setting()
    subjects: tuple[Locator, ...] = _subjects()
    answer_subjects: tuple[AnswerLocator, ...] = _answer_subjects()
    # One objective for every operation of the WSDL (node/slo.py); None: none declared.
    slo: SloConfig | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    label: ClassVar[str] = "node"
    named_by: ClassVar[str] = "id"
    id: NodeId = setting(raw=str, parse=parse_node_id)
    peer_listen: tuple[str, int] = _address()
    client_listen: tuple[str, int] | None = _address(None)
    client_tls_listen: tuple[str, int] | None = _address(None)
    clients: tuple[ClientConfig, ...] = setting((), key="client")
    services: tuple[ServiceConfig, ...] = setting((), key="service")
    soap_services: tuple[SoapServiceConfig, ...] = setting((), key="soap_service")
    max_body_bytes: int = 10 * 1024 * 1024
    body_timeout: float = 30.0
    provider_timeout: float = 60.0
    checkpoint_interval: float = 60.0  # seconds between signed tree heads while logging
    audit_listen: tuple[str, int] | None = _address(None)  # HTTPS API for auditors
    # PostgreSQL DSN for the message log (scale-out); None: SQLite in the data directory.
    messagelog_dsn: str | None = None
    # PostgreSQL DSN for the node's settings database (services, access rights, clients;
    # schema settings_<node id>); None: node-settings.sqlite in the data directory.
    settings_dsn: str | None = None
    # Timestamps: an external RFC 3161 TSA instead of the federation's, and how long a
    # checkpoint may wait for one before the node refuses exchanges (X-Road default: 4 h).
    tsa_url: str | None = None
    timestamp_failure_limit: float = 4 * 3600.0
    # Retention: bodies of exchanges older than this (seconds; given in days) are purged
    # (leaves and proofs stay).
    body_retention: float | None = setting(
        None, key="body_retention_days", raw=float, parse=lambda days: days * 86400
    )
    # Per client system: requests in flight at once, and their bodies' bytes (None: twice
    # max_body_bytes); over either, a request is refused with HTTP 429 (node/limits.py).
    client_max_concurrent: int = 32
    client_max_inflight_bytes: int | None = None
    # TLS connections this node keeps open to each other node (node/peer.py): exchanges
    # beyond it wait, in order, for a free one. Each costs ~0.2-0.3 MB; raise it for peers
    # far away (each connection carries one exchange at a time).
    peer_max_connections: int = setting(32, parse=_at_least_one)
    # Unauthenticated health check (plain HTTP, X-Road's health-check port), and the admin
    # API (HTTPS, or plain HTTP on a loopback address) with its administrators' keys.
    health_listen: tuple[str, int] | None = _address(None)
    admin_listen: tuple[str, int] | None = _address(None)
    admins: tuple[AdminConfig, ...] = setting((), key="admin")
    # Operational monitoring (node/opmonitoring.py): on unless switched off; kept this long
    # (given in days) and at most this many records.
    opmonitoring: bool = True
    opmonitoring_retention: float = setting(
        7 * 86400.0, key="opmonitoring_retention_days", raw=float, parse=lambda d: d * 86400
    )
    opmonitoring_max_records: int = 1_000_000
    # Where the node posts its own alerts (node/slo.py), and how often it looks.
    alert_webhook: str | None = None
    slo_check_interval: float = 30.0
    # Directories from which service administrators may have the node read files by path
    # (flat-file exports and layouts, OpenAPI and WSDL documents): the owner's choice, none
    # by default, since an administrator's API key is no login on the machine. The layouts
    # and descriptions shipped with xroad-hub are always readable.
    service_file_dirs: tuple[str, ...] = ()

    @property
    def providers(self) -> tuple[SubsystemId, ...]:
        """The provider subsystems of the node's services (sorted, unique)."""
        found = {s.id.provider for s in self.services} | {s.provider for s in self.soap_services}
        return tuple(sorted(found))  # type: ignore[type-var]

    @property
    def hosted(self) -> tuple[ClientId, ...]:
        """Every subsystem this node hosts, as client or as provider (sorted, unique)."""
        return tuple(sorted({c.id for c in self.clients} | set(self.providers)))


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """A demo agency system started next to the federation (not part of a real node)."""

    label: ClassVar[str] = "backend"
    named_by: ClassVar[str] = "kind"
    kind: str
    listen: tuple[str, int] = _address()
    seed: int = 2569


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditorConfig:
    """An auditor: a role of its own (not a client subsystem), with an ES256 key."""

    label: ClassVar[str] = "auditor"
    named_by: ClassVar[str] = "name"
    name: str = setting(parse=_auditor_name)


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalGroupConfig:
    """A global group (X-Road): subsystems grouped by the central registry, published in
    the global configuration; a provider's node may grant access rights to it."""

    label: ClassVar[str] = "global group"
    named_by: ClassVar[str] = "code"
    code: str = setting(parse=lambda c: next(iter(_group_codes((c,)))))
    members: frozenset[ClientId] = setting(frozenset(), raw=tuple[str, ...], parse=_client_ids)


def _global_groups(groups: tuple[GlobalGroupConfig, ...]) -> dict[str, frozenset[ClientId]]:
    return {g.code: g.members for g in groups}


def _member_names(members: tuple[MemberConfig, ...]) -> dict[MemberId, str]:
    return {m.id: m.name if m.name is not None else str(m.id) for m in members}


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationConfig:
    instance: str
    registry: RegistryConfig
    members: dict[MemberId, str] = setting(
        {}, key="member", raw=tuple[MemberConfig, ...], parse=_member_names
    )
    nodes: tuple[NodeConfig, ...] = setting((), key="node")
    backends: tuple[BackendConfig, ...] = setting((), key="backend")
    auditors: tuple[str, ...] = setting(
        (), key="auditor", raw=tuple[AuditorConfig, ...], parse=lambda a: tuple(x.name for x in a)
    )
    global_groups: dict[str, frozenset[ClientId]] = setting(
        {}, key="global_group", raw=tuple[GlobalGroupConfig, ...], parse=_global_groups
    )

    def __post_init__(self) -> None:
        for node in self.nodes:
            if node.id.owner not in self.members:
                raise ValueError(f"node {node.id}: owner {node.id.owner} is not a declared member")
            for sub in node.hosted:
                if sub.member not in self.members:
                    raise ValueError(f"node {node.id}: {sub} belongs to no declared member")
            if node.id.owner.instance != self.instance:
                raise ValueError(f"node {node.id} is not in instance {self.instance}")
        hosted = {sub for node in self.nodes for sub in node.hosted}
        for code, members in self.global_groups.items():
            for member in sorted(members - hosted, key=str):
                raise ValueError(f"global group {code}: {member} is hosted by no node")

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


# --- reading a table ------------------------------------------------------------------------

TOP = "top level"
_T = TypeVar("_T")
# What a value of each type is called in an error, alone and in a list.
_KINDS: dict[Any, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("a whole number", "whole numbers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
}


def load_federation(path: Path) -> FederationConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # TOMLDecodeError, or an int of over 4300 digits
        raise ConfigError(f"cannot read federation file {path}: {exc}") from exc
    try:
        return load_table(FederationConfig, data, TOP)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_table(cls: type[_T], table: object, where: str) -> _T:
    """The dataclass ``cls`` read from one table of the file, named ``where`` in errors.

    Every key must be a field's (or, for a field taking the rest of the table, one it
    allows); every field without a default must be given; each value must have the field's
    type (an int is a float too, never a bool); nested tables and arrays of tables are read
    the same way. Anything else is a ConfigError naming the place, the key and the value.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table, got {_shown(table)}")
    fields = _fields(cls)
    rest = next((f for f in fields.values() if f.metadata.get("rest_of_table")), None)
    extra = rest.metadata["rest_of_table"](table) if rest is not None else frozenset()
    _check_keys(table, frozenset(k for k, f in fields.items() if f is not rest), where, extra)
    values: dict[str, Any] = {}
    for key, f in fields.items():
        if f is rest:
            values[f.name] = {k: v for k, v in table.items() if k not in fields}
        elif key in table:
            values[f.name] = _value(cls, f, table[key], where, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            hint = f.metadata.get("missing")
            raise ConfigError(f"{where}: missing key {key!r}" + (f"; {hint}" if hint else ""))
    try:
        return cls(**values)
    except (ValueError, XRoadError) as exc:  # __post_init__: checks across keys
        raise ConfigError(f"{where}: {_message(exc)}") from exc


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """The fields of a table by their key in the file."""
    return {f.metadata.get("key") or f.name: f for f in dataclasses.fields(cls) if f.init}


def _raw_type(cls: type, f: dataclasses.Field[Any]) -> Any:
    """The type the file holds for a field: its ``raw`` type, else its own."""
    return f.metadata.get("raw") or get_type_hints(cls)[f.name]


def _value(cls: type, f: dataclasses.Field[Any], value: object, where: str, key: str) -> Any:
    raw = _convert(_raw_type(cls, f), value, where, key)
    choices = f.metadata.get("choices")
    if choices and raw not in choices:
        allowed = ", ".join(f'"{c}"' for c in choices)
        raise ConfigError(f"{where}: {key} must be one of {allowed}, got {_shown(value)}")
    parse = f.metadata.get("parse")
    if parse is None:
        return raw
    try:
        return parse(raw)
    except (ValueError, XRoadError) as exc:
        raise ConfigError(f"{where}: {key}: {_message(exc)}") from exc


def _convert(tp: Any, value: object, where: str, key: str) -> Any:
    """``value`` checked to be of type ``tp`` (as read from TOML), nested tables loaded."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):  # X | None: None is the default, never in a file
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
        origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return load_table(tp, value, f"[{key}]" if where == TOP else f"{where} [{key}]")  # type: ignore[arg-type]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {key} must be a table, got {_shown(value)}")
        return dict(value)
    if origin is tuple:
        item = get_args(tp)[0]
        if dataclasses.is_dataclass(item):
            if not isinstance(value, list):
                raise ConfigError(f"{where}: {key} must be an array of tables ([[{key}]])")
            return tuple(
                load_table(item, t, _in_array(where, item, t, i))  # type: ignore[arg-type]
                for i, t in enumerate(value)
            )
        items = [_scalar(item, v) for v in value] if isinstance(value, list) else [_WRONG]
        if any(v is _WRONG for v in items):
            raise ConfigError(
                f"{where}: {key} must be a list of {_KINDS[item][1]}, got {_shown(value)}"
            )
        return tuple(items)
    converted = _scalar(tp, value)
    if converted is _WRONG:
        raise ConfigError(f"{where}: {key} must be {_KINDS[tp][0]}, got {_shown(value)}")
    return converted


_WRONG = object()


def _scalar(tp: Any, value: object) -> Any:
    """``value`` as a ``tp`` (bool, int, float or str), or _WRONG."""
    if isinstance(value, bool):  # a bool is an int to Python, never to the file's reader
        return value if tp is bool else _WRONG
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return _WRONG  # TOML's integers are 64-bit; tomllib reads any length
    if tp is int and isinstance(value, int):
        return value
    if tp is float and isinstance(value, int | float):
        try:
            number = float(value)  # an int past 1.8e308 does not fit
        except OverflowError:
            return _WRONG
        return number if number == number and abs(number) != float("inf") else _WRONG
    if tp is str and isinstance(value, str):
        return value
    return _WRONG


def _shown(value: object) -> str:
    """A value as the file would spell it, shortened."""
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**80:
        return "a number of more than 80 digits"  # str() refuses past 4300 digits
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, XRoadError) else str(exc)


def _in_array(where: str, cls: Any, table: object, index: int) -> str:
    """How an error names one table of an array: its id (or name), else its position."""
    value = table.get(cls.named_by) if isinstance(table, Mapping) else None
    name = value if isinstance(value, str) else f"#{index + 1}"
    return f"{cls.label} {name}" if where == TOP else f"{where} {cls.label} {name}"


def _check_keys(
    table: Mapping[str, Any], known: frozenset[str], where: str, extra: frozenset[str]
) -> None:
    """ConfigError for the first key of ``table`` that is neither known nor extra."""
    known = known | extra
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


def _known_keys(cls: type, name: str, into: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """The keys of ``cls``'s table and of every table nested in it, by table name."""
    fields = _fields(cls)
    into[name] = frozenset(k for k, f in fields.items() if not f.metadata.get("rest_of_table"))
    for key, f in fields.items():
        tp = _raw_type(cls, f)
        inner = get_args(tp)[0] if get_origin(tp) is tuple else tp
        if dataclasses.is_dataclass(inner):
            _known_keys(inner, key, into)  # type: ignore[arg-type]
    return into


# The keys each table of the federation file may have, by table name (derived from the
# dataclasses above: a new setting is a new field). A key not listed is an error naming the
# key, its table and the nearest known key (a misspelt "timout" must not silently fall back
# to the default). A [[node.service]] also takes its adapter's options (ADAPTER_OPTIONS).
KNOWN_KEYS: dict[str, frozenset[str]] = _known_keys(FederationConfig, "federation", {})
