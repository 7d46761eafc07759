"""The evidence catalog: loading and its errors, requests for a subject, and answers checked
against the JSON Schemas, on the real answers of the demo agencies' systems."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from adapters.base import AdapterRequest
from adapters.flatfile import FlatFileAdapter
from adapters.soap import SoapBridgeAdapter, fetch_wsdl, load_wsdl, zeep_client
from xroad_hub.demo import synthetic
from xroad_hub.demo.dopa import dopa_app
from xroad_hub.demo.legacy_exports import ensure_export
from xroad_hub.errors import XRoadError
from xroad_hub.federation import load_federation
from xroad_hub.protocol.catalog import (
    DEFAULT_CATALOG,
    Catalog,
    CatalogError,
    EvidenceType,
    fill,
    load_catalog,
)
from xroad_hub.protocol.identifiers import parse_service_id

CITIZEN = "1101700203450"
JURISTIC = "0105744622488"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(DEFAULT_CATALOG)


def test_the_repository_catalog_loads(catalog: Catalog) -> None:
    names = [t.name for t in catalog.types()]
    assert names == [
        "identity", "house_registration", "company_registration", "title_deed", "tax_clearance",
    ]  # fmt: skip
    services = {t.name: str(t.service) for t in catalog.types()}
    assert services["identity"] == "TH/GOV/DOPA/population/getPerson"
    assert services["company_registration"] == "TH/GOV/DBD/registry/companies"
    assert services["title_deed"] == "TH/GOV/DOL/landoffice/titledeeds"
    assert services["tax_clearance"] == "TH/GOV/RD/taxclearance/clearances"
    assert {t.subject_kind for t in catalog.types()} == {"citizen_id", "juristic_id"}


def test_request_for_each_type(catalog: Catalog) -> None:
    got = {
        t.name: t.request_for(CITIZEN if t.subject_kind == "citizen_id" else JURISTIC)
        for t in catalog.types()
    }
    dopa = parse_service_id("TH/GOV/DOPA/population/getPerson")
    assert got["identity"] == (dopa, "GET", "", f"citizenId={CITIZEN}")
    assert got["house_registration"][2:] == ("", f"citizenId={CITIZEN}")
    assert got["company_registration"][1:] == ("GET", f"/{JURISTIC}", "")
    assert got["title_deed"][2:] == ("/records", f"owner_citizen_id={CITIZEN}")
    assert got["tax_clearance"][2:] == (f"/records/{JURISTIC}", "")


def test_the_demo_federation_indexes_what_the_catalog_asks(catalog: Catalog) -> None:
    # A citizen's data tracker finds a read only if the provider's node indexes the subject
    # where the catalog puts it.
    fed = load_federation(REPO / "config" / "demo-federation.toml")
    services = {s.id: s for node in fed.nodes for s in node.services}
    for etype in catalog.types():
        hosted = services.get(etype.service)
        if hosted is not None and etype.subject_kind == "citizen_id":
            assert etype.subject_in in hosted.subjects, etype.name


def test_the_subject_is_percent_encoded_where_it_is_put() -> None:
    # Ids are digits once checked, but the template never trusts that: one segment, one value.
    assert fill("/records/{subject}", "a/b c?d") == "/records/a%2Fb%20c%3Fd"
    assert fill("citizenId={subject}", "1&admin=1") == "citizenId=1%26admin%3D1"
    assert fill("cid={subject}", "ก") == "cid=%E0%B8%81"


@pytest.mark.parametrize(
    "subject",
    [
        "1101700203451",  # check digit wrong
        "110170020345",  # 12 digits
        "11017002034500",  # 14 digits
        "1-1017-00203-45-0",  # dashed
        "๑๑๐๑๗๐๐๒๐๓๔๕๐",  # Thai digits
        "110170020345x",
        "",
    ],
)
def test_invalid_subjects_are_refused_naming_the_rule(catalog: Catalog, subject: str) -> None:
    with pytest.raises(XRoadError) as err:
        catalog.get("identity").request_for(subject)
    assert err.value.code == "Client.InvalidSubject"
    assert err.value.status == 400
    assert "check digit" in err.value.message and "citizen ID" in err.value.message
    with pytest.raises(XRoadError) as err:
        catalog.get("tax_clearance").request_for(subject)
    assert "juristic ID" in err.value.message


def test_unknown_type(catalog: Catalog) -> None:
    with pytest.raises(XRoadError) as err:
        catalog.get("passport")
    assert err.value.code == "Client.UnknownEvidenceType"
    assert "identity" in err.value.message  # says what there is


# --- loading errors ---------------------------------------------------------------------

_GOOD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["id"],
    "properties": {"id": {"type": "string"}},
}
_GOOD = {
    "title": "Thing",
    "subject": "citizen_id",
    "service": "TH/GOV/DBD/registry/things",
    "method": "GET",
    "path": "/things/{subject}",
    "query": "",
    "subject_in": "path:2",
    "schema": "thing.schema.json",
}


def _toml(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON strings and lists are TOML too


def write_catalog(
    tmp: Path, entry: dict[str, object], schema: object = _GOOD_SCHEMA, raw: str | None = None
) -> Path:
    lines = ["[evidence.thing]", *(f"{k} = {_toml(v)}" for k, v in entry.items())]
    path = tmp / "catalog.toml"
    path.write_text(raw if raw is not None else "\n".join(lines) + "\n", encoding="utf-8")
    text = schema if isinstance(schema, str) else json.dumps(schema)
    (tmp / "thing.schema.json").write_text(text, encoding="utf-8")
    return path


def test_a_minimal_catalog_loads(tmp_path: Path) -> None:
    etype = load_catalog(write_catalog(tmp_path, _GOOD)).get("thing")
    assert etype.request_for(CITIZEN)[2] == f"/things/{CITIZEN}"
    assert etype.purposes == ()
    assert etype.schema_file == (tmp_path / "thing.schema.json").resolve()


def _with(**changes: object) -> dict[str, object]:
    entry = {**_GOOD, **changes}
    return {k: v for k, v in entry.items() if v is not None}


@pytest.mark.parametrize(
    ("entry", "schema", "expected"),
    [
        (_with(title=None), _GOOD_SCHEMA, "missing setting(s) ['title']"),
        (_with(colour="blue"), _GOOD_SCHEMA, "unknown setting(s) ['colour']"),
        (_with(subject="passport_no"), _GOOD_SCHEMA, "subject must be one of"),
        (_with(service="TH/GOV/DBD/things"), _GOOD_SCHEMA, "service: malformed service"),
        (_with(service="TH/GOV/DBD/registry/things/v1"), _GOOD_SCHEMA, "must not name a version"),
        (_with(method="POST"), _GOOD_SCHEMA, "method must be GET"),
        (_with(path="things/{subject}"), _GOOD_SCHEMA, "path must be empty or start with '/'"),
        (_with(path="/things"), _GOOD_SCHEMA, "{subject} must occur exactly once"),
        (_with(query="again={subject}"), _GOOD_SCHEMA, "{subject} must occur exactly once"),
        (_with(path="/t/{id}/{subject}"), _GOOD_SCHEMA, "no placeholder but {subject}"),
        (_with(query="a=1#x"), _GOOD_SCHEMA, "must not hold '?', '#' or spaces"),
        (_with(subject_in="path:1"), _GOOD_SCHEMA, "subject_in path:1 does not find {subject}"),
        (_with(subject_in="query:cid"), _GOOD_SCHEMA, "does not find {subject}"),
        (_with(subject_in="header:X-Cid"), _GOOD_SCHEMA, "must be path:N or query:NAME"),
        (_with(subject_in="cookie:x"), _GOOD_SCHEMA, "subject locator 'cookie:x'"),
        (_with(purposes="licensing"), _GOOD_SCHEMA, "purposes must be a list of strings"),
        (_with(schema="missing.json"), _GOOD_SCHEMA, "cannot read schema"),
        (_GOOD, "{not json", "is not JSON"),
        (_GOOD, {"type": "object"}, "must declare $schema"),
        (
            _GOOD,
            {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
            "must declare $schema https://json-schema.org/draft/2020-12/schema",
        ),
        (
            _GOOD,
            {**_GOOD_SCHEMA, "properties": {"id": {"type": "text"}}},
            "not a valid JSON Schema at $.properties.id.type",
        ),
    ],
)
def test_catalog_errors_name_the_place(
    tmp_path: Path, entry: dict[str, object], schema: object, expected: str
) -> None:
    path = write_catalog(tmp_path, entry, schema)
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("[evidence.thing\n", "cannot read evidence catalog"),
        ("title = 'x'\n", "unknown top-level setting(s) ['title']"),
        ("", "no [evidence.NAME] tables"),
        ("[evidence.Thing]\ntitle = 'x'\n", "names are lower case letters"),
    ],
)
def test_catalog_file_errors(tmp_path: Path, raw: str, expected: str) -> None:
    with pytest.raises(CatalogError) as err:
        load_catalog(write_catalog(tmp_path, _GOOD, raw=raw))
    assert expected in str(err.value)


def test_a_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read evidence catalog"):
        load_catalog(tmp_path / "nowhere.toml")


def test_the_repository_catalog_can_move(tmp_path: Path) -> None:
    # Schema paths are relative to the catalog file, not to where the hub runs.
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    moved = load_catalog(tmp_path / "schemas" / "evidence-catalog.toml")
    assert moved.get("identity").schema_file.is_relative_to(tmp_path)


# --- answers against the schemas --------------------------------------------------------


def _invalid(etype: EvidenceType, doc: object) -> XRoadError:
    with pytest.raises(XRoadError) as err:
        etype.validate(orjson.dumps(doc))
    assert err.value.code == "Server.ClientProxy.InvalidEvidence"
    assert err.value.status == 500
    return err.value


@pytest.fixture(scope="module")
def companies() -> list[dict[str, Any]]:
    persons = synthetic.people(2569, 400)
    by_id = {p.citizen_id: p for p in persons}
    return [c.as_dict(by_id) for c in synthetic.companies(2569, 20, persons)]


def test_dbd_company_answers_match(catalog: Catalog, companies: list[dict[str, Any]]) -> None:
    etype = catalog.get("company_registration")
    for company in companies:
        assert etype.validate(orjson.dumps(company)) == company


def test_failures_name_the_json_path(catalog: Catalog, companies: list[dict[str, Any]]) -> None:
    etype = catalog.get("company_registration")
    company = companies[0]
    err = _invalid(etype, {**company, "capital_thb": "lots"})
    assert "at $.capital_thb:" in err.message and "company_registration" in err.message
    director = {**company["directors"][0], "citizen_id": "12345"}
    err = _invalid(etype, {**company, "directors": [director]})
    assert "at $.directors[0].citizen_id:" in err.message
    err = _invalid(etype, {k: v for k, v in company.items() if k != "name_th"})
    assert "at $:" in err.message and "'name_th' is a required property" in err.message
    err = _invalid(etype, {**company, "registered_on": "31/12/2567"})
    assert "at $.registered_on:" in err.message  # formats are checked, dates are ISO 8601


def test_not_json_or_not_an_object(catalog: Catalog) -> None:
    etype = catalog.get("company_registration")
    with pytest.raises(XRoadError) as err:
        etype.validate(b"<html>Service Unavailable</html>")
    assert err.value.code == "Server.ClientProxy.InvalidEvidence"
    assert "not JSON" in err.value.message
    assert "at $:" in _invalid(etype, [1, 2]).message


def test_failures_never_quote_the_data(catalog: Catalog, companies: list[dict[str, Any]]) -> None:
    # The message is logged by the node: it names the rule, never the (personal) value.
    etype = catalog.get("company_registration")
    director = {**companies[0]["directors"][0], "citizen_id": "Somchai Jaidee 1101700203450"}
    err = _invalid(etype, {**companies[0], "directors": [director]})
    assert "Somchai" not in err.message and "1101700203450" not in err.message
    assert 'fails pattern "^[0-9]{13}$"' in err.message
    err = _invalid(etype, {**companies[0], "directors": "x" * 5000})
    assert "xxx" not in err.message and "fails type" in err.message


async def _flatfile(source: Path, layout: str, **extra: str) -> FlatFileAdapter:
    options: dict[str, Any] = {"source": str(source), "layout": str(REPO / "schemas" / layout),
                               "settle_seconds": 0, "reload_interval": 0, **extra}  # fmt: skip
    adapter = FlatFileAdapter.from_options(options)
    await adapter.start()
    return adapter


def _first_juristic_id(csv_file: Path) -> str:
    return csv_file.read_bytes().splitlines()[1].split(b",")[0].decode()


async def _ask(adapter: FlatFileAdapter, path: str, query: str) -> tuple[int, bytes]:
    answer = await adapter.handle(AdapterRequest("GET", path, query, (), b""))
    return answer.status, answer.body


async def test_flat_file_answers_match(catalog: Catalog, tmp_path: Path) -> None:
    ensure_export("dol-titledeeds", tmp_path / "dol")
    ensure_export("rd-taxclearance", tmp_path / "rd.csv")
    dol = await _flatfile(
        tmp_path / "dol", "dol-titledeeds.layout.toml", pattern="titledeeds-*.txt"
    )
    rd = await _flatfile(tmp_path / "rd.csv", "rd-taxclearance.layout.toml")
    try:
        deeds = catalog.get("title_deed")
        checked = 0
        for person in synthetic.people(2569, 400):
            status, body = await _ask(dol, *deeds.request_for(person.citizen_id)[2:])
            if status == 200:
                records = deeds.validate(body)["records"]
                assert {r["owner_citizen_id"] for r in records} == {person.citizen_id}
                checked += 1
        assert checked > 100  # about half of the demo people own land
        clearance = catalog.get("tax_clearance")
        juristic = _first_juristic_id(tmp_path / "rd.csv")
        status, body = await _ask(rd, *clearance.request_for(juristic)[2:])
    finally:
        await dol.close()
        await rd.close()
    assert status == 200
    doc = clearance.validate(body)
    assert {r["tax_year"] for r in doc["records"]} == {2565, 2566, 2567}
    broken = {**doc, "records": [{**doc["records"][1], "status": "PAID"}]}
    assert "at $.records[0].status:" in _invalid(clearance, broken).message
    assert "at $.page:" in _invalid(clearance, {**doc, "page": {"offset": 0}}).message


async def _dopa_json(client: TestClient, operation: str, citizen_id: str) -> tuple[int, Any]:
    """The JSON the node's SOAP bridge makes of DOPA's answer (the real bridge, driven by
    DOPA's own WSDL), as a REST client of the hub receives it."""
    base = str(client.make_url("/"))
    wsdl = await fetch_wsdl(base + "?wsdl")
    info = load_wsdl(wsdl, "dopa")
    adapter = SoapBridgeAdapter(info, zeep_client(wsdl, "dopa"), operation=operation,
                                endpoint_url=base)  # fmt: skip
    try:
        answer = await adapter.handle(AdapterRequest("GET", "", f"citizenId={citizen_id}", (), b""))
    finally:
        await adapter.close()
    return answer.status, orjson.loads(answer.body)


async def test_dopa_answers_match(catalog: Catalog) -> None:
    population = synthetic.population(2569, synthetic.demo_people(2569, 200))
    deceased = next(c.citizen_id for c in population.citizens if c.status == "deceased")
    households = [h for h in population.houses if len(h.members) > 1][:3]
    single = next((h for h in population.houses if len(h.members) == 1), None)
    identity, house = catalog.get("identity"), catalog.get("house_registration")
    async with TestClient(TestServer(dopa_app())) as client:
        for cid in [deceased, *(h.members[0].citizen_id for h in households)]:
            status, doc = await _dopa_json(client, "getPerson", cid)
            assert status == 200
            assert identity.validate(orjson.dumps(doc)) == doc
            # Only the bridge's shape is evidence: the bare person is not.
            _invalid(identity, doc["person"])
        for h in [*households, *([single] if single else [])]:
            cid = h.members[-1].citizen_id
            status, doc = await _dopa_json(client, "getHouseRegistration", cid)
            assert status == 200
            assert house.validate(orjson.dumps(doc)) == doc
            members = doc["houseRegistration"]["members"]["member"]
            assert cid in {m["citizenId"] for m in members}
        _, person = await _dopa_json(client, "getPerson", deceased)
    died = {k: v for k, v in person["person"].items() if k != "deathDate"}
    err = _invalid(identity, {"person": died})
    assert "deathDate" in err.message
    err = _invalid(identity, {"person": {**person["person"], "birthDate": "2510-01-01x"}})
    assert "birthDate" in err.message


def _mutations() -> list[tuple[str, Callable[[dict[str, Any]], object]]]:
    return [
        ("citizenId", lambda p: {**p, "citizenId": "12"}),
        ("sex", lambda p: {**p, "sex": "x"}),
    ]


# A DOPA person as the SOAP bridge gives it.
PERSON = {
    "citizenId": CITIZEN, "birthDate": "1980-01-31", "sex": "female", "nationality": "THA",
    "status": "alive",
    "nameTh": {"title": "นาง", "givenName": "สมศรี", "familyName": "ใจดี"},
    "nameEn": {"title": "Mrs.", "givenName": "Somsri", "familyName": "Jaidee"},
}  # fmt: skip


@pytest.mark.parametrize(("field", "mutate"), _mutations())
def test_identity_failures_name_the_field(
    catalog: Catalog, field: str, mutate: Callable[[dict[str, Any]], object]
) -> None:
    person = dict(PERSON)
    identity = catalog.get("identity")
    assert identity.validate(orjson.dumps({"person": person}))["person"] == person
    err = _invalid(identity, {"person": mutate(person)})
    assert field in err.message


# --- two implementations of one schema ---------------------------------------------------


def _variants(doc: object) -> list[object]:
    """``doc`` with each value in turn replaced by wrong and borderline ones, each key of an
    object dropped, and an unknown key added: what a provider's changed answer looks like."""
    odd: list[object] = [
        None, True, 0, -1, 1.5, 10**15, "", "x", "2569-02-30", "2024-02-29", "1980-1-31",
        "0105744622488\n", "๑๑๐๑๗๐๐๒๐๓๔๕๐", "0" * 12, "0" * 14, [], {}, [None],
    ]  # fmt: skip
    out: list[object] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append({k: v for k, v in doc.items() if k != key})
            out += ({**doc, key: v} for v in [*odd, *_variants(value)])
        out.append({**doc, "unknown_field": "x"})
    elif isinstance(doc, list) and doc:
        out += ([v, *doc[1:]] for v in [*odd, *_variants(doc[0])])
        out.append([])
    return out


def test_the_fast_check_never_passes_what_the_reference_refuses(
    catalog: Catalog, companies: list[dict[str, Any]]
) -> None:
    """jsonschema-rs decides alone only what it passes: it must pass nothing jsonschema (the
    reference) refuses, on real answers and on a thousand changed ones."""
    person = dict(PERSON)
    corpora = {"company_registration": companies[:3], "identity": [{"person": person}]}
    for etype in catalog.types():
        assert etype.schema_check.fast is not None, etype.name  # every shipped schema
    checked = refused = 0
    for name, docs in corpora.items():
        check = catalog.get(name).schema_check
        for doc in docs:
            assert check.fast.is_valid(doc) and check.reference.is_valid(doc)
            for variant in _variants(doc):
                fast_ok = check.fast.is_valid(variant)
                assert not fast_ok or check.reference.is_valid(variant), (name, variant)
                checked += 1
                refused += not fast_ok
    assert checked > 800 and refused > checked // 2


def test_the_reference_judges_what_the_fast_check_refuses(tmp_path: Path) -> None:
    """Where the two readings of a schema differ (here Python's "$" also matches before a
    final line feed), the reference decides; a schema the fast check cannot take (a remote
    $ref, fetched by neither) is checked by the reference alone."""
    schema = {**_GOOD_SCHEMA, "properties": {"id": {"type": "string", "pattern": "^[0-9]{13}$"}}}
    etype = load_catalog(write_catalog(tmp_path, _GOOD, schema)).get("thing")
    doc = {"id": "0105744622488\n"}
    assert not etype.schema_check.fast.is_valid(doc)
    assert etype.validate(orjson.dumps(doc)) == doc
    assert "at $.id:" in _invalid(etype, {"id": "12"}).message
    remote = {**_GOOD_SCHEMA, "properties": {"id": {"$ref": "https://schemas.example/id"}}}
    etype = load_catalog(write_catalog(tmp_path, _GOOD, remote)).get("thing")
    assert etype.schema_check.fast is None
    assert "at $: 'id' is a required property" in _invalid(etype, {"other": 1}).message
