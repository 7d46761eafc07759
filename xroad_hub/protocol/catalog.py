"""The evidence catalog, sans-I/O apart from loading: which evidence a case service may ask
for, which agency's service is authoritative for it, how to ask, and what the answer must
look like.

A case service asks for evidence by type and subject (``identity`` of citizen
``1101700203450``), never by URL: the catalog turns that into one X-Road request to the
authoritative provider, and the answer is checked against the type's JSON Schema before it
is handed on, so a provider that changes its answer shape is caught at the hub instead of
inside every case service.

The catalog is a TOML file (``schemas/evidence-catalog.toml``); each ``[evidence.NAME]``:

    title       what the evidence is, for people
    subject     "citizen_id" or "juristic_id" (13 digits with a valid check digit)
    service     the provider's service, INSTANCE/CLASS/MEMBER/SUBSYSTEM/CODE
    method      "GET" (evidence is only ever read)
    path        the path after /r1/{service} ("" or "/..."), may hold {subject}
    query       the query string without "?", may hold {subject}
    subject_in  where the subject sits in that request, as a subject locator
                (path:N, query:NAME; see subjects.py); checked against path and query
    schema      JSON Schema (draft 2020-12) of the provider's answer, relative to the file
    purposes    optional: the purposes this evidence may be asked for (documentation)

``{subject}`` must occur exactly once and is percent-encoded where it is put.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from xroad_hub.errors import HubError, ProtocolError, XRoadError
from xroad_hub.packaged import schema_file
from xroad_hub.protocol.identifiers import ServiceId, parse_service_id
from xroad_hub.protocol.subjects import Locator, extract_subjects, parse_locator
from xroad_hub.protocol.thaiid import is_valid

__all__ = [
    "DEFAULT_CATALOG",
    "SUBJECT_KINDS",
    "Catalog",
    "CatalogError",
    "EvidenceType",
    "fill",
    "load_catalog",
]

# The repository's own catalog (schemas/), shipped inside the package.
DEFAULT_CATALOG = schema_file("evidence-catalog.toml")
SUBJECT_KINDS = {"citizen_id": "citizen ID", "juristic_id": "juristic ID"}
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
_PLACEHOLDER = "{subject}"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KEYS = frozenset(
    ("title", "subject", "service", "method", "path", "query", "subject_in", "schema", "purposes")
)
_REQUIRED = ("title", "subject", "service", "path", "query", "subject_in", "schema")
# Any valid id of the right kind serves to check that subject_in finds the filled-in subject.
_PROBE_ID = "1101700203450"
_MAX_REASON = 300


class CatalogError(HubError, ValueError):
    """The catalog file is wrong; the message names the file, the type and what to change."""


def fill(template: str, value: str) -> str:
    """``template`` with ``{subject}`` replaced by ``value``, percent-encoded so that the
    value stays one path segment or one query value whatever it holds."""
    return template.replace(_PLACEHOLDER, quote(value, safe=""))


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    """One JSON Schema (draft 2020-12), checked by two implementations of it.

    jsonschema-rs says whether a document passes: ~0.5 us for an evidence document where
    jsonschema takes ~200 us, once per evidence exchange on the client's node. jsonschema
    (the reference, which also checked the schema itself) judges every document the fast
    one does not pass, and explains the failures, so a stricter reading there (a regex
    dialect, a format) never refuses what the reference accepts. A schema jsonschema-rs
    cannot compile (a remote $ref: neither fetches one) is checked by the reference alone.
    """

    reference: Draft202012Validator
    fast: Any | None  # a jsonschema_rs validator

    def first_error(self, doc: Any) -> ValidationError | None:
        """The most telling error of ``doc``, None if it is valid."""
        if self.fast.is_valid(doc) if self.fast is not None else self.reference.is_valid(doc):
            return None
        # Collecting every error to pick the best one costs more than is_valid: only done
        # to explain a failure (or when the two implementations disagree: then None).
        return best_match(self.reference.iter_errors(doc))


@dataclass(frozen=True, slots=True)
class EvidenceType:
    name: str
    title: str
    subject_kind: str  # one of SUBJECT_KINDS
    service: ServiceId
    method: str
    path: str  # template
    query: str  # template
    subject_in: Locator
    schema_file: Path
    schema_check: SchemaCheck = field(compare=False, repr=False)
    purposes: tuple[str, ...] = ()

    def check_subject(self, subject: str) -> str:
        """``subject`` if it is a valid id of this type's kind, else Client.InvalidSubject."""
        if not is_valid(subject):
            kind = SUBJECT_KINDS[self.subject_kind]
            raise XRoadError.client(
                "InvalidSubject",
                f"the subject is not a valid {kind} for evidence {self.name!r}: 13 digits "
                "whose last is the check digit d13 = (11 - (sum of d_i * (14 - i), "
                "i = 1..12) mod 11) mod 10",
            )
        return subject

    def request_for(self, subject: str) -> tuple[ServiceId, str, str, str]:
        """(service, method, path, query) of the request that fetches this evidence."""
        self.check_subject(subject)
        return self.service, self.method, fill(self.path, subject), fill(self.query, subject)

    def validate(self, payload: bytes) -> dict[str, Any]:
        """The provider's answer as a dict, if it is JSON that matches the schema.

        Failures are the client node's to report (Server.ClientProxy.InvalidEvidence): the
        exchange itself succeeded and is logged, but what came back is not the evidence the
        catalog promises, so it is not handed on."""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise XRoadError.client_proxy(
                "InvalidEvidence", f"evidence {self.name!r}: the provider's answer is not JSON"
            ) from exc
        error = self.schema_check.first_error(doc)
        if error is not None:
            raise XRoadError.client_proxy(
                "InvalidEvidence",
                f"evidence {self.name!r}: the provider's answer does not match "
                f"{self.schema_file.name} at {error.json_path}: {_reason(error)}",
            )
        if not isinstance(doc, dict):
            raise XRoadError.client_proxy(
                "InvalidEvidence", f"evidence {self.name!r}: the answer at $ is not an object"
            )
        return doc


def _reason(error: ValidationError) -> str:
    """What rule failed, without the offending value: the message ends up in operational
    logs, and the value may be personal data (a name, an id)."""
    if error.validator in ("required", "additionalProperties", "dependentRequired"):
        text = error.message  # names properties, never values
    elif error.validator in ("oneOf", "anyOf") and error.context:
        # The subschemas themselves would say little; the closest miss says more.
        closest = best_match(error.context)
        text = (
            f"matches none of {len(error.validator_value)} accepted forms (closest: at "
            f"{closest.json_path}: {_reason(closest)})"
        )
    else:
        text = f"fails {error.validator} {orjson.dumps(error.validator_value).decode()}"
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."


@dataclass(frozen=True, slots=True)
class Catalog:
    path: Path
    _types: dict[str, EvidenceType]

    def types(self) -> list[EvidenceType]:
        return list(self._types.values())

    def get(self, name: str) -> EvidenceType:
        etype = self._types.get(name)
        if etype is None:
            raise XRoadError.client(
                "UnknownEvidenceType",
                f"no evidence type {name[:64]!r}; known types: {', '.join(self._types)}",
            )
        return etype


def load_catalog(path: Path = DEFAULT_CATALOG) -> Catalog:
    """Read and check the catalog and every schema it names; CatalogError if anything is
    wrong, so a node never starts with evidence it could not check."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # bad TOML or UTF-8, an int of over 4300 digits
        raise CatalogError(f"cannot read evidence catalog {path}: {exc}") from exc
    unknown = set(data) - {"evidence"}
    if unknown:
        raise CatalogError(f"{path}: unknown top-level setting(s) {sorted(unknown)}")
    entries = data.get("evidence")
    if not isinstance(entries, dict) or not entries:
        raise CatalogError(f"{path}: no [evidence.NAME] tables")
    types = {}
    for name, table in entries.items():
        where = f"{path}, evidence {name!r}"
        if not _NAME.fullmatch(name):
            raise CatalogError(f"{where}: names are lower case letters, digits and '_'")
        if not isinstance(table, dict):
            raise CatalogError(f"{where}: must be a table")
        types[name] = _evidence_type(name, table, path.parent, where)
    return Catalog(path, types)


def _text(table: dict[str, Any], key: str, where: str) -> str:
    value = table[key]
    if not isinstance(value, str):
        raise CatalogError(f"{where}: {key} must be a string")
    return value


def _evidence_type(name: str, table: dict[str, Any], base: Path, where: str) -> EvidenceType:
    unknown = set(table) - _KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown setting(s) {sorted(unknown)}")
    missing = [k for k in _REQUIRED if k not in table]
    if missing:
        raise CatalogError(f"{where}: missing setting(s) {missing}")
    title = _text(table, "title", where)
    kind = _text(table, "subject", where)
    if kind not in SUBJECT_KINDS:
        raise CatalogError(f"{where}: subject must be one of {sorted(SUBJECT_KINDS)}")
    try:
        service = parse_service_id(_text(table, "service", where))
    except ProtocolError as exc:
        raise CatalogError(f"{where}: service: {exc.message}") from exc
    if service.service_version:
        # Evidence is asked of a service code; versions are the provider's business.
        raise CatalogError(f"{where}: service must not name a version")
    method = table.get("method", "GET")
    if method != "GET":
        raise CatalogError(f"{where}: method must be GET (evidence is only ever read)")
    path_t, query_t = _text(table, "path", where), _text(table, "query", where)
    _check_templates(path_t, query_t, where)
    try:
        locator = parse_locator(_text(table, "subject_in", where))
    except ValueError as exc:
        raise CatalogError(f"{where}: {exc}") from exc
    if locator.kind == "header":
        raise CatalogError(f"{where}: subject_in must be path:N or query:NAME")
    probe = (fill(path_t, _PROBE_ID), fill(query_t, _PROBE_ID))
    if extract_subjects([locator], *probe, []) != (_PROBE_ID,):
        # A wrong locator would leave the provider's subject index, and so the citizen's
        # data tracker, without these exchanges.
        raise CatalogError(
            f"{where}: subject_in {locator} does not find {{subject}} in the request"
        )
    purposes = table.get("purposes", [])
    if not isinstance(purposes, list) or not all(isinstance(p, str) and p for p in purposes):
        raise CatalogError(f"{where}: purposes must be a list of strings")
    schema_file = (base / _text(table, "schema", where)).resolve()
    return EvidenceType(
        name=name,
        title=title,
        subject_kind=kind,
        service=service,
        method=method,
        path=path_t,
        query=query_t,
        subject_in=locator,
        schema_file=schema_file,
        purposes=tuple(purposes),
        schema_check=_schema_check(schema_file, where),
    )


def _check_templates(path_t: str, query_t: str, where: str) -> None:
    if path_t and not path_t.startswith("/"):
        raise CatalogError(f"{where}: path must be empty or start with '/'")
    for key, text in (("path", path_t), ("query", query_t)):
        if "?" in text or "#" in text or any(c.isspace() for c in text):
            raise CatalogError(f"{where}: {key} must not hold '?', '#' or spaces")
        rest = text.replace(_PLACEHOLDER, "")
        if "{" in rest or "}" in rest:
            raise CatalogError(f"{where}: {key} may hold no placeholder but {_PLACEHOLDER}")
    if (path_t + query_t).count(_PLACEHOLDER) != 1:
        raise CatalogError(f"{where}: {_PLACEHOLDER} must occur exactly once in path and query")


def _refuse_remote(uri: str) -> Any:
    raise CatalogError(f"remote schema references are not fetched ({uri})")


def _schema_check(schema_file: Path, where: str) -> SchemaCheck:
    try:
        schema = orjson.loads(schema_file.read_bytes())
    except OSError as exc:
        raise CatalogError(f"{where}: cannot read schema {schema_file}: {exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{where}: schema {schema_file} is not JSON: {exc}") from exc
    if not isinstance(schema, dict) or schema.get("$schema") != DRAFT_2020_12:
        # Saying the draft explicitly keeps a schema from meaning something else elsewhere.
        raise CatalogError(f"{where}: schema {schema_file} must declare $schema {DRAFT_2020_12}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise CatalogError(
            f"{where}: schema {schema_file} is not a valid JSON Schema at "
            f"{exc.json_path}: {exc.message}"
        ) from exc
    reference = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    try:
        fast = jsonschema_rs.validator_for(schema, validate_formats=True, retriever=_refuse_remote)
    except Exception:  # whatever it cannot compile, the reference checks alone
        fast = None
    return SchemaCheck(reference, fast)
