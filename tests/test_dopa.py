"""The DOPA population registry: a real SOAP service on a loopback port, called with
zeep (a client we did not write) from its own WSDL."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Iterator
from datetime import date

import aiohttp
import pytest
import zeep
from lxml import etree
from zeep.exceptions import Fault

from xroad_hub.demo.dopa import MAX_BODY, NAMESPACE, dopa_app
from xroad_hub.demo.runner import _BACKENDS
from xroad_hub.demo.synthetic import Citizen, demo_people, is_valid_house_id, population
from xroad_hub.protocol.thaiid import with_check_digit

from .conftest import served_app

SEED, COUNT = 2569, 20
WSDL = "http://schemas.xmlsoap.org/wsdl/"
SOAP11 = "http://schemas.xmlsoap.org/wsdl/soap/"
XSD = "http://www.w3.org/2001/XMLSchema"
SAFE = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)

SEEDED = demo_people(SEED, COUNT)
REGISTRY = population(SEED, SEEDED)
BY_ID = {c.citizen_id: c for c in REGISTRY.citizens}
# A seeded person (as DBD knows them) in a house with others, and someone who has died.
SHARED = next(
    BY_ID[p.citizen_id]
    for h in REGISTRY.houses
    if len(h.members) >= 3
    for p in SEEDED
    if h.member(p.citizen_id)
)
DECEASED = next(c for c in REGISTRY.citizens if c.status == "deceased")


@pytest.fixture(scope="module")
async def base_url() -> AsyncIterator[str]:
    async with served_app(dopa_app(SEED, COUNT)) as url:
        yield url + "/"


@pytest.fixture(scope="module")
async def client(base_url: str) -> AsyncIterator[zeep.Client]:
    # zeep.AsyncClient needs httpx; the sync client runs in a worker thread instead.
    settings = zeep.Settings(forbid_dtd=True, forbid_entities=True, forbid_external=True)
    c = await asyncio.to_thread(zeep.Client, f"{base_url}?wsdl", settings=settings)
    yield c
    c.transport.session.close()


async def call(client: zeep.Client, operation: str, citizen_id: str) -> object:
    return await asyncio.to_thread(getattr(client.service, operation), citizenId=citizen_id)


async def soap(base_url: str, operation: str, inner: str) -> tuple[int, bytes]:
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        f'xmlns:p="{NAMESPACE}"><s:Body><p:{operation}>{inner}</p:{operation}></s:Body>'
        "</s:Envelope>"
    )
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{operation}"'}
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url, data=envelope.encode(), headers=headers) as r,
    ):
        return r.status, await r.read()


def names(c: Citizen) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    p = c.person
    return (
        (c.title_th, p.given_name_th, p.family_name_th),
        (c.title_en, p.given_name_en, p.family_name_en),
    )


def wire_names(obj: object) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    th, en = obj.nameTh, obj.nameEn  # type: ignore[attr-defined]
    return (th.title, th.givenName, th.familyName), (en.title, en.givenName, en.familyName)


def test_registered_as_a_demo_backend() -> None:
    assert _BACKENDS["dopa-population"] is dopa_app


async def test_get_person(client: zeep.Client) -> None:
    person = await call(client, "getPerson", SHARED.citizen_id)
    assert person.citizenId == SHARED.citizen_id
    assert wire_names(person) == names(SHARED)
    assert any("\u0e00" <= ch <= "\u0e7f" for ch in person.nameTh.familyName)
    assert person.birthDate == date.fromisoformat(SHARED.person.birth_date)
    assert (person.sex, person.nationality, person.status) == (SHARED.sex, "THA", "alive")
    assert person.deathDate is None


async def test_deceased_person(client: zeep.Client) -> None:
    person = await call(client, "getPerson", DECEASED.citizen_id)
    assert person.status == "deceased"
    assert person.deathDate == date.fromisoformat(DECEASED.death_date or "")
    with pytest.raises(Fault) as raised:
        await call(client, "getHouseRegistration", DECEASED.citizen_id)
    assert raised.value.code.endswith("Client.NotFound")
    assert f"died on {DECEASED.death_date}" in raised.value.message


async def test_utf8_and_iso_dates_on_the_wire(base_url: str) -> None:
    status, body = await soap(
        base_url, "getPerson", f"<p:citizenId>{SHARED.citizen_id}</p:citizenId>"
    )
    assert status == 200
    # Thai as UTF-8 bytes, not character references; dates as ISO 8601.
    assert SHARED.person.family_name_th.encode("utf-8") in body
    assert b"&#" not in body
    assert re.search(rb"<tns:birthDate>\d{4}-\d{2}-\d{2}</tns:birthDate>", body)
    root = etree.fromstring(body, SAFE)
    assert root.find(f".//{{{NAMESPACE}}}getPersonResponse/{{{NAMESPACE}}}person") is not None


async def test_get_house_registration(client: zeep.Client) -> None:
    reg = await call(client, "getHouseRegistration", SHARED.citizen_id)
    house = next(h for h in REGISTRY.houses if h.member(SHARED.citizen_id))
    own = house.member(SHARED.citizen_id)
    assert own is not None
    assert (reg.citizenId, reg.houseId, reg.role) == (SHARED.citizen_id, house.house_id, own.role)
    assert is_valid_house_id(reg.houseId)
    assert reg.movedIn == date.fromisoformat(own.moved_in)
    a = house.address
    th, en = reg.addressTh, reg.addressEn
    assert (th.houseNo, th.moo, th.soi, th.road) == (a.house_no, a.moo, a.soi_th, a.road_th)
    assert (th.subdistrict, th.district, th.province) == (
        a.subdistrict_th,
        a.district_th,
        a.province_th,
    )
    assert (en.subdistrict, en.district, en.province) == (
        a.subdistrict_en,
        a.district_en,
        "Bangkok",
    )
    assert th.province == "กรุงเทพมหานคร" and th.postcode == en.postcode == a.postcode
    members = reg.members.member
    assert [m.citizenId for m in members] == [m.citizen_id for m in house.members]
    assert [m.role for m in members].count("head") == 1 and members[0].role == "head"
    assert SHARED.citizen_id in {m.citizenId for m in members}
    for m in members:
        assert wire_names(m) == names(BY_ID[m.citizenId])


async def test_household_members_see_the_same_house(client: zeep.Client) -> None:
    reg = await call(client, "getHouseRegistration", SHARED.citizen_id)
    ids = [m.citizenId for m in reg.members.member]
    for cid in ids:
        other = await call(client, "getHouseRegistration", cid)
        assert other.houseId == reg.houseId
        assert [m.citizenId for m in other.members.member] == ids
        person = await call(client, "getPerson", cid)
        assert wire_names(person) == wire_names(
            next(m for m in reg.members.member if m.citizenId == cid)
        )


@pytest.mark.parametrize("operation", ["getPerson", "getHouseRegistration"])
async def test_invalid_check_digit_is_a_client_fault(client: zeep.Client, operation: str) -> None:
    good = SHARED.citizen_id
    bad = good[:12] + str((int(good[12]) + 1) % 10)
    with pytest.raises(Fault) as raised:
        await call(client, operation, bad)
    assert raised.value.code.endswith("Client.InvalidCitizenId")
    assert "check digit" in raised.value.message
    assert f"should be {good[12]}" in raised.value.message


@pytest.mark.parametrize("citizen_id", ["12345", "1234567890abc", "12345678901234", ""])
async def test_malformed_citizen_id_is_a_client_fault(client: zeep.Client, citizen_id: str) -> None:
    with pytest.raises(Fault) as raised:
        await call(client, "getPerson", citizen_id)
    assert raised.value.code.endswith("Client.InvalidCitizenId")
    assert "exactly 13 digits" in raised.value.message


def _unknown_ids() -> Iterator[str]:
    for n in range(10**11, 10**12):
        cid = with_check_digit(str(n))
        if cid not in BY_ID:
            yield cid


@pytest.mark.parametrize("operation", ["getPerson", "getHouseRegistration"])
async def test_unknown_citizen_is_not_found(client: zeep.Client, operation: str) -> None:
    unknown = next(_unknown_ids())
    with pytest.raises(Fault) as raised:
        await call(client, operation, unknown)
    assert raised.value.code.endswith("Client.NotFound")
    assert unknown in raised.value.message


async def test_request_not_matching_the_schema_is_rejected(base_url: str) -> None:
    status, body = await soap(base_url, "getPerson", "<p:somethingElse>1</p:somethingElse>")
    assert status == 500
    assert b"Client.SchemaValidationError" in body


async def test_oversized_request_is_refused(base_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url, data=io.BytesIO(b"x" * (MAX_BODY + 1))) as r,
    ):
        assert r.status == 413


async def _wsdl(base_url: str, host: str | None = None) -> etree._Element:
    headers = {"Host": host} if host else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}?wsdl", headers=headers) as r,
    ):
        assert r.status == 200
        assert r.content_type == "text/xml"
        return etree.fromstring(await r.read(), SAFE)


async def test_wsdl_is_document_literal_wrapped(base_url: str) -> None:
    root = await _wsdl(base_url)
    assert root.get("targetNamespace") == NAMESPACE
    binding = root.find(f"{{{WSDL}}}binding")
    assert binding is not None
    assert binding.find(f"{{{SOAP11}}}binding").get("style") == "document"
    operations = binding.findall(f"{{{WSDL}}}operation")
    assert {op.get("name") for op in operations} == {"getPerson", "getHouseRegistration"}
    messages = {m.get("name"): m for m in root.findall(f"{{{WSDL}}}message")}
    elements = {
        e.get("name")
        for e in root.iter(f"{{{XSD}}}element")
        if e.getparent().tag.endswith("schema")
    }
    for op in operations:
        name = op.get("name")
        assert op.find(f"{{{SOAP11}}}operation").get("style") == "document"
        for direction in ("input", "output"):
            body = op.find(f"{{{WSDL}}}{direction}/{{{SOAP11}}}body")
            assert body.get("use") == "literal"
        # Wrapped: one part per message, an element named after the operation.
        port_op = root.find(f"{{{WSDL}}}portType/{{{WSDL}}}operation[@name='{name}']")
        for direction, wrapper in (("input", name), ("output", f"{name}Response")):
            message = port_op.find(f"{{{WSDL}}}{direction}").get("message").split(":")[-1]
            parts = messages[message].findall(f"{{{WSDL}}}part")
            assert [p.get("element") for p in parts] == [f"tns:{wrapper}"]
            assert wrapper in elements


async def test_wsdl_address_is_where_the_request_came(base_url: str) -> None:
    for host, expected in ((None, base_url), ("dopa.example:8443", "http://dopa.example:8443/")):
        root = await _wsdl(base_url, host)
        addresses = [a.get("location") for a in root.iter(f"{{{SOAP11}}}address")]
        assert addresses == [expected]
