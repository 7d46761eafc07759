"""Settings of the case service: defaults, a TOML file, then command-line flags.

Everything the service needs to reach the hub (node URL, client id, TLS material), to trust
users (the identity provider's public key) and to judge deadlines (SLA per case type) lives
here, so the same code runs in tests (plain HTTP on loopback, temporary keys) and in the demo.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_CASE_TYPE",
    "FOOD_BUSINESS_LICENCE",
    "CaseType",
    "ConfigError",
    "EvidenceNeed",
    "Settings",
    "load_settings",
]

DEFAULT_CASE_TYPE = "food-business-licence"

SUBJECT_KINDS = ("citizen_id", "juristic_id")
# The evidence that establishes who may act for a juristic id (see service.py).
DIRECTORSHIP = "company_registration"

# X-Road identifier parts allow A-Z a-z 0-9 ' ( ) + , - . = ? and nothing else.
_ID_PART = re.compile(r"^[A-Za-z0-9'()+,\-.=?]+$")
_CODE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")
_PREFIX = re.compile(r"^[A-Z0-9]{1,12}$")


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key."""


@dataclass(frozen=True)
class EvidenceNeed:
    """One evidence type a case type needs, and which of the applicant's ids is its subject."""

    type: str
    subject: str  # "citizen_id" or "juristic_id"


@dataclass(frozen=True)
class CaseType:
    code: str
    title: str
    number_prefix: str  # the middle part of case numbers: BMA-<prefix>-<BE year>-<seq>
    sla_days: int
    purpose: str
    legal_basis: str
    evidence: tuple[EvidenceNeed, ...]


# ASSUMPTION (not legal advice): the Public Health Act B.E. 2535 s.56 is read here as giving
# the local official 30 days from receipt of a complete application to issue a licence or
# refuse it, and the Licensing Facilitation Act B.E. 2558 s.7 as requiring that period to be
# published in the agency's manual for citizens. Evidence is fetched by the agency itself, so
# an application is complete when submitted and the clock starts then. Confirm with BMA's
# legal office before relying on it; the value is configuration, not code.
FOOD_BUSINESS_LICENCE = CaseType(
    code=DEFAULT_CASE_TYPE,
    title="Food business licence (food sale or storage premises)",
    number_prefix="FOOD",
    sla_days=30,
    purpose="food-business-licence",
    legal_basis="Public Health Act B.E. 2535 s.38; Licensing Facilitation Act B.E. 2558",
    evidence=(
        EvidenceNeed("identity", "citizen_id"),
        EvidenceNeed("house_registration", "citizen_id"),
        EvidenceNeed("company_registration", "juristic_id"),
        EvidenceNeed("tax_clearance", "juristic_id"),
        # The applicant owns the premises in the scenario, so the deed is looked up by her id.
        EvidenceNeed("title_deed", "citizen_id"),
    ),
)


@dataclass(frozen=True)
class Settings:
    node_url: str = "https://127.0.0.1:8444"
    client_id: str = "TH/GOV/BMA/licensing"
    idp_public_key: Path | None = None
    idp_issuer: str = "thaid"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8600
    db_path: Path = Path("var/case-service/cases.db")
    # Client authentication to the node: mutual TLS; the CA verifies the node's certificate.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # Optional HTTPS for the service's own listener (bearer tokens should not cross networks
    # in clear text; plain HTTP is for loopback).
    server_cert: Path | None = None
    server_key: Path | None = None
    # X-Road userIds are country-prefixed (TH1101700203451); empty sends the bare id.
    user_id_prefix: str = "TH"
    agency_prefix: str = "BMA"
    fetch_timeout: float = 30.0
    cache_entries: int = 256
    max_token_lifetime: int = 3600
    case_types: dict[str, CaseType] = field(
        default_factory=lambda: {DEFAULT_CASE_TYPE: FOOD_BUSINESS_LICENCE}
    )

    @property
    def audience(self) -> str:
        # Tokens are minted for one relying party: this subsystem, by its X-Road id.
        return self.client_id

    def validated(self) -> Settings:
        """``self`` after checks that would otherwise fail late, at the first request."""
        parts = urlsplit(self.node_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"node_url must be an http(s) URL, got {self.node_url!r}")
        if parts.query or parts.fragment:
            raise ConfigError("node_url must not have a query or fragment")
        ids = self.client_id.split("/")
        if len(ids) != 4 or not all(_ID_PART.match(p) for p in ids):
            raise ConfigError(
                f"client_id must be a subsystem INSTANCE/CLASS/MEMBER/SUBSYSTEM, got "
                f"{self.client_id!r}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls.cert and tls.key go together")
        if (self.server_cert is None) != (self.server_key is None):
            raise ConfigError("server.cert and server.key go together")
        if self.idp_public_key is None:
            raise ConfigError("idp.public_key is required: without it no user can be trusted")
        if not 1 <= self.listen_port <= 65535:
            raise ConfigError(f"listen port out of range: {self.listen_port}")
        if self.fetch_timeout <= 0 or self.cache_entries < 0:
            raise ConfigError("fetch_timeout must be > 0 and cache_entries >= 0")
        if not 0 < self.max_token_lifetime <= 3600:
            # The federation's rule: user tokens live at most one hour.
            raise ConfigError("idp.max_token_lifetime must be between 1 and 3600 seconds")
        if self.user_id_prefix and not _PREFIX.match(self.user_id_prefix):
            raise ConfigError("user_id_prefix must be upper-case letters/digits (e.g. TH)")
        if not _PREFIX.match(self.agency_prefix):
            raise ConfigError("agency_prefix must be upper-case letters/digits (e.g. BMA)")
        if not self.case_types:
            raise ConfigError("at least one case type is required")
        for ct in self.case_types.values():
            _check_case_type(ct)
        return self


def _check_case_type(ct: CaseType) -> None:
    where = f"case_types.{ct.code}"
    if not _CODE.match(ct.code):
        raise ConfigError(f"{where}: code must be lower-case letters, digits, - or _")
    if not _PREFIX.match(ct.number_prefix):
        raise ConfigError(f"{where}.number_prefix must be upper-case letters/digits")
    if not 1 <= ct.sla_days <= 3650:
        raise ConfigError(f"{where}.sla_days must be between 1 and 3650")
    # Purpose and legal basis travel as HTTP header values, which must be printable ASCII.
    for key, value in (("purpose", ct.purpose), ("legal_basis", ct.legal_basis)):
        if not value or not value.isascii() or not value.isprintable():
            raise ConfigError(f"{where}.{key} must be non-empty printable ASCII")
    if not ct.evidence:
        raise ConfigError(f"{where}.evidence must name at least one evidence type")
    seen: set[str] = set()
    for need in ct.evidence:
        if not _CODE.match(need.type) or need.type in seen:
            raise ConfigError(f"{where}.evidence: bad or repeated type {need.type!r}")
        if need.subject not in SUBJECT_KINDS:
            raise ConfigError(
                f"{where}.evidence.{need.type}: subject must be one of {SUBJECT_KINDS}"
            )
        seen.add(need.type)
    subjects = {need.type: need.subject for need in ct.evidence}
    if "juristic_id" in subjects.values() and subjects.get(DIRECTORSHIP) != "juristic_id":
        # Evidence about a company is fetched only after its registration names the
        # applicant as a director; without that evidence nothing could be fetched safely.
        raise ConfigError(
            f"{where}.evidence: evidence keyed by juristic_id needs "
            f'{DIRECTORSHIP} = "juristic_id" (directorship is checked first)'
        )


def _path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a path string")
    p = Path(value)
    return p if p.is_absolute() else base / p


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"listen must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _case_type(code: str, raw: object, base: CaseType | None) -> CaseType:
    if not isinstance(raw, dict):
        raise ConfigError(f"case_types.{code} must be a table")
    known = {"title", "number_prefix", "sla_days", "purpose", "legal_basis", "evidence"}
    if unknown := set(raw) - known:
        raise ConfigError(f"case_types.{code}: unknown keys {sorted(unknown)}")
    if base is None and not known <= set(raw):
        raise ConfigError(f"case_types.{code}: a new case type needs all of {sorted(known)}")
    values: dict[str, Any] = {}
    for key in ("title", "number_prefix", "purpose", "legal_basis"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ConfigError(f"case_types.{code}.{key} must be a string")
            values[key] = raw[key]
    if "sla_days" in raw:
        if not isinstance(raw["sla_days"], int) or isinstance(raw["sla_days"], bool):
            raise ConfigError(f"case_types.{code}.sla_days must be an integer")
        values["sla_days"] = raw["sla_days"]
    if "evidence" in raw:
        ev = raw["evidence"]
        if not isinstance(ev, dict) or not all(isinstance(v, str) for v in ev.values()):
            raise ConfigError(
                f"case_types.{code}.evidence must map evidence type -> 'citizen_id'|'juristic_id'"
            )
        values["evidence"] = tuple(EvidenceNeed(t, s) for t, s in ev.items())
    if base is None:
        return CaseType(code=code, **values)
    return replace(base, **values)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` (non-None only).

    Relative paths in the file are relative to the file's directory. ``sla_days`` in the
    overrides sets the default case type's SLA (the command line has no per-type syntax).
    """
    values: dict[str, Any] = {}
    case_types = dict(Settings().case_types)
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # bad TOML or UTF-8, an int of 4300+ digits
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        values, case_types = _from_toml(raw, path.parent, case_types)
    sla_days = overrides.pop("sla_days", None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if sla_days is not None:
        default = case_types[DEFAULT_CASE_TYPE]
        case_types[DEFAULT_CASE_TYPE] = replace(default, sla_days=int(sla_days))
    return Settings(**values, case_types=case_types).validated()


def _from_toml(
    raw: dict[str, Any], base: Path, case_types: dict[str, CaseType]
) -> tuple[dict[str, Any], dict[str, CaseType]]:
    top = {
        "listen",
        "db",
        "node_url",
        "client_id",
        "user_id_prefix",
        "agency_prefix",
        "fetch_timeout",
        "cache_entries",
        "tls",
        "server",
        "idp",
        "case_types",
    }
    if unknown := set(raw) - top:
        # A misspelt key silently ignored would mean e.g. TLS quietly off: refuse instead.
        raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
    values: dict[str, Any] = {}
    if "listen" in raw:
        values["listen_host"], values["listen_port"] = parse_listen(str(raw["listen"]))
    if "db" in raw:
        values["db_path"] = _path(raw["db"], "db", base)
    for key in ("node_url", "client_id", "user_id_prefix", "agency_prefix"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ConfigError(f"{key} must be a string")
            values[key] = raw[key]
    for key, kind in (("fetch_timeout", float), ("cache_entries", int)):
        if key in raw:
            if not isinstance(raw[key], int | float) or isinstance(raw[key], bool):
                raise ConfigError(f"{key} must be a number")
            values[key] = kind(raw[key])
    for table, keys in (
        ("tls", {"cert": "tls_cert", "key": "tls_key", "ca": "tls_ca"}),
        ("server", {"cert": "server_cert", "key": "server_key"}),
        (
            "idp",
            {
                "public_key": "idp_public_key",
                "issuer": "idp_issuer",
                "max_token_lifetime": "max_token_lifetime",
            },
        ),
    ):
        section = raw.get(table, {})
        if not isinstance(section, dict):
            raise ConfigError(f"[{table}] must be a table")
        if unknown := set(section) - set(keys):
            raise ConfigError(f"[{table}]: unknown keys {sorted(unknown)}")
        for key, attr in keys.items():
            if key not in section:
                continue
            value = section[key]
            if key == "issuer":
                values[attr] = str(value)
            elif key == "max_token_lifetime":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ConfigError("idp.max_token_lifetime must be an integer (seconds)")
                values[attr] = value
            else:
                values[attr] = _path(value, f"{table}.{key}", base)
    types = raw.get("case_types", {})
    if not isinstance(types, dict):
        raise ConfigError("[case_types] must be a table of tables")
    for code, table in types.items():
        case_types[code] = _case_type(code, table, case_types.get(code))
    return values, case_types
