"""The Department of Provincial Administration's population registry: a legacy SOAP 1.1
service that knows nothing about X-Road; the hub publishes its operations as
``TH/GOV/DOPA/population/<operation>``.

Its WSDL (``dopa.wsdl`` beside this module) is written by hand, document/literal wrapped;
requests are validated against its schema by lxml (legacysoap.SoapService), on aiohttp:

    POST /        SOAP 1.1 requests (SOAPAction optional)
    GET  /?wsdl   the WSDL; its soap:address is the address the request came to

Namespace ``http://dopa.go.th/population/v1``; operations (names are service codes):

    getPerson(citizenId)            -> person: citizenId, nameTh and nameEn (title,
                                       givenName, familyName), birthDate, sex, nationality,
                                       status, deathDate (deceased only)
    getHouseRegistration(citizenId) -> houseRegistration: citizenId, houseId, role,
                                       movedIn, addressTh, addressEn, members/member*

SOAP faults, all client faults (HTTP 500, as SOAP 1.1 wants):

    Client.InvalidCitizenId       citizenId is not 13 digits, or its check digit is wrong
    Client.NotFound               no such citizen; for getHouseRegistration also a deceased
                                  citizen, whose house registration entry is closed
    Client.SchemaValidationError  the request does not match the schema

The data is ``synthetic.population`` over ``synthetic.demo_people``: the same seed gives
the people DBD lists as directors and DOL as owners, with their households.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

from aiohttp import web
from lxml import etree

from xroad_hub.demo import synthetic
from xroad_hub.demo.legacysoap import SoapFault, SoapService, element, optional_text
from xroad_hub.protocol.thaiid import check_digit

__all__ = ["MAX_BODY", "NAMESPACE", "dopa_app", "population_service"]

NAMESPACE = "http://dopa.go.th/population/v1"
MAX_BODY = 1 << 20  # a request is one citizen id; anything near this is not a real caller


def _el(name: str, *content: object) -> etree._Element:
    return element(NAMESPACE, name, *content)


def _fault(code: str, message: str) -> SoapFault:
    return SoapFault(f"Client.{code}", message)


def _checked(citizen_id: str | None) -> str:
    """The citizen id, or a Client.InvalidCitizenId fault that says what is wrong."""
    shown = repr(citizen_id if citizen_id is None or len(citizen_id) <= 20 else citizen_id[:20])
    if citizen_id is None or not (
        len(citizen_id) == 13 and citizen_id.isascii() and citizen_id.isdigit()
    ):
        raise _fault("InvalidCitizenId", f"citizenId must be exactly 13 digits, got {shown}")
    expected = check_digit(citizen_id[:12])
    if int(citizen_id[12]) != expected:
        raise _fault(
            "InvalidCitizenId",
            f"citizenId {citizen_id} fails its check digit: the 13th digit should be "
            f"{expected}, not {citizen_id[12]}",
        )
    return citizen_id


class _Registry:
    """Lookups over the population, raising the service's faults."""

    def __init__(self, population: synthetic.Population) -> None:
        self.citizens = {c.citizen_id: c for c in population.citizens}
        self.houses = {m.citizen_id: h for h in population.houses for m in h.members}

    def citizen(self, citizen_id: str | None) -> synthetic.Citizen:
        cid = _checked(citizen_id)
        found = self.citizens.get(cid)
        if found is None:
            raise _fault("NotFound", f"no person with citizenId {cid} in the population registry")
        return found

    def house(
        self, citizen_id: str | None
    ) -> tuple[synthetic.Citizen, synthetic.HouseRegistration]:
        citizen = self.citizen(citizen_id)
        house = self.houses.get(citizen.citizen_id)
        if house is None:
            message = f"no current house registration for citizenId {citizen.citizen_id}"
            if citizen.status == "deceased":
                # The entry is closed at death; the person record stays.
                message += f" (died on {citizen.death_date})"
            raise _fault("NotFound", message)
        return citizen, house


def _names(c: synthetic.Citizen) -> tuple[etree._Element, etree._Element]:
    p = c.person

    def name(tag: str, title: str, given: str, family: str) -> etree._Element:
        return _el(tag, _el("title", title), _el("givenName", given), _el("familyName", family))

    return (
        name("nameTh", c.title_th, p.given_name_th, p.family_name_th),
        name("nameEn", c.title_en, p.given_name_en, p.family_name_en),
    )


def _person(c: synthetic.Citizen) -> etree._Element:
    return _el(
        "person",
        _el("citizenId", c.citizen_id),
        *_names(c),
        _el("birthDate", c.person.birth_date),  # ISO 8601 already, as xs:date wants
        _el("sex", c.sex),
        _el("nationality", c.nationality),  # ISO 3166-1 alpha-3
        _el("status", c.status),
        _el("deathDate", c.death_date) if c.death_date else None,
    )


def _address(tag: str, a: synthetic.Address, th: bool) -> etree._Element:
    def optional(name: str, value: str | None) -> etree._Element | None:
        return None if value is None else _el(name, value)

    return _el(
        tag,
        _el("houseNo", a.house_no),
        optional("moo", a.moo),  # village number (หมู่), outer districts only
        optional("soi", a.soi_th if th else a.soi_en),
        optional("road", a.road_th if th else a.road_en),
        _el("subdistrict", a.subdistrict_th if th else a.subdistrict_en),
        _el("district", a.district_th if th else a.district_en),
        _el("province", a.province_th if th else a.province_en),
        _el("postcode", a.postcode),
    )


def _house(
    registry: _Registry, citizen: synthetic.Citizen, house: synthetic.HouseRegistration
) -> etree._Element:
    own = house.member(citizen.citizen_id)
    assert own is not None  # _Registry.houses maps members to their own house
    members = [
        _el(
            "member",
            _el("citizenId", m.citizen_id),
            *_names(registry.citizens[m.citizen_id]),
            _el("role", m.role),
            _el("movedIn", m.moved_in),
        )
        for m in house.members
    ]
    return _el(
        "houseRegistration",
        _el("citizenId", citizen.citizen_id),
        _el("houseId", house.house_id),
        _el("role", own.role),  # of citizenId in this house
        _el("movedIn", own.moved_in),
        _address("addressTh", house.address, th=True),
        _address("addressEn", house.address, th=False),
        _el("members", *members),
    )


def population_service(population: synthetic.Population) -> SoapService:
    """The registry over ``population`` (sans-I/O: ``handle`` answers bytes with bytes)."""
    registry = _Registry(population)

    def get_person(request: etree._Element) -> Iterable[etree._Element]:
        return [_person(registry.citizen(optional_text(request, "citizenId")))]

    def get_house_registration(request: etree._Element) -> Iterable[etree._Element]:
        return [_house(registry, *registry.house(optional_text(request, "citizenId")))]

    wsdl = resources.files(__package__).joinpath("dopa.wsdl").read_bytes()
    operations = {"getPerson": get_person, "getHouseRegistration": get_house_registration}
    return SoapService(wsdl, operations, max_body=MAX_BODY)


def dopa_app(seed: int = 2569, count: int = 200) -> web.Application:
    """The registry over ``population(seed, demo_people(seed, count))``: everyone the DBD
    registry of ``count`` companies (``dbd_app(seed, count)``) names, and their households."""
    population = synthetic.population(seed, synthetic.demo_people(seed, count))
    return population_service(population).app()
