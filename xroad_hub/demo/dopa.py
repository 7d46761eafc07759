"""The Department of Provincial Administration's population registry: a legacy SOAP 1.1
service that knows nothing about X-Road; the hub publishes its operations as
``TH/GOV/DOPA/population/<operation>``.

It is a real spyne service (document/literal wrapped, requests validated against its own
schema by lxml), served from aiohttp through a small WSGI bridge:

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
    Client.SchemaValidationError  spyne's own: the request does not match the schema

The data is ``synthetic.population`` over ``synthetic.demo_people``: the same seed gives
the people DBD lists as directors and DOL as owners, with their households.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import sys
import threading
import urllib.parse
import warnings
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from aiohttp import web
from lxml import etree

from ..thaiid import check_digit
from . import synthetic

with warnings.catch_warnings():
    # spyne 2.14 on Python 3.11 warns while it imports: its vendored six's import hook lacks
    # find_spec (ImportWarning, fixed below) and its SOAP 1.1 protocol imports the
    # deprecated cgi module (DeprecationWarning). Harmless, but tests make warnings errors.
    warnings.simplefilter("ignore", ImportWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from spyne import Application, Array, ComplexModel, Date, Fault, ServiceBase, Unicode, rpc
    from spyne.protocol.soap import Soap11
    from spyne.server.wsgi import WsgiApplication
    from spyne.util import six as _spyne_six


def _modernise_six_importer(importer: type) -> None:
    """spyne vendors six 1.14, whose import hook on ``sys.meta_path`` only has the legacy
    find_module/load_module. Python 3.11 consults it for every import the regular finders
    miss and warns each time (ImportWarning): any optional import that fails anywhere in
    the process (urllib3 probing for brotlicffi, say) then raises instead of falling back
    when warnings are errors. six 1.16 added the modern protocol; this is the same idea."""
    if hasattr(importer, "find_spec"):
        return

    def find_spec(self: Any, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.known_modules:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self: Any, spec: Any) -> Any:
        return self.load_module(spec.name)  # six's lazy modules resolve themselves

    def exec_module(self: Any, module: Any) -> None:
        return None

    importer.find_spec = find_spec  # type: ignore[attr-defined]
    importer.create_module = create_module  # type: ignore[attr-defined]
    importer.exec_module = exec_module  # type: ignore[attr-defined]


_modernise_six_importer(_spyne_six._SixMetaPathImporter)

__all__ = ["MAX_BODY", "NAMESPACE", "dopa_app", "population_wsgi"]

NAMESPACE = "http://dopa.go.th/population/v1"
_WSDL_SOAP11 = "http://schemas.xmlsoap.org/wsdl/soap/"
MAX_BODY = 1 << 20  # a request is one citizen id; anything near this is not a real caller

# spyne logs every fault with a traceback; a client fault (bad or unknown id) is an
# answer, not an incident of this server. Server faults are still logged.
logging.getLogger("spyne.application.client").setLevel(logging.CRITICAL)


def _text(**kw: Any) -> Any:
    return Unicode(min_occurs=1, nillable=False, **kw)


def _optional_text() -> Any:
    return Unicode(min_occurs=0, nillable=False)


_DATE = Date(min_occurs=1, nillable=False)


class PersonName(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("title", _text()), ("givenName", _text()), ("familyName", _text())]


class Person(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [
        ("citizenId", _text()),
        ("nameTh", PersonName.customize(min_occurs=1, nillable=False)),
        ("nameEn", PersonName.customize(min_occurs=1, nillable=False)),
        ("birthDate", _DATE),
        ("sex", _text(values=["male", "female"])),
        ("nationality", _text()),  # ISO 3166-1 alpha-3
        ("status", _text(values=["alive", "deceased"])),
        ("deathDate", Date(min_occurs=0, nillable=False)),
    ]


class Address(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [
        ("houseNo", _text()),
        ("moo", _optional_text()),  # village number (หมู่), outer districts only
        ("soi", _optional_text()),
        ("road", _optional_text()),
        ("subdistrict", _text()),
        ("district", _text()),
        ("province", _text()),
        ("postcode", _text(pattern="[0-9]{5}")),
    ]


class HouseMember(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [
        ("citizenId", _text()),
        ("nameTh", PersonName.customize(min_occurs=1, nillable=False)),
        ("nameEn", PersonName.customize(min_occurs=1, nillable=False)),
        ("role", _text(values=["head", "resident"])),
        ("movedIn", _DATE),
    ]


class HouseRegistration(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [
        ("citizenId", _text()),
        ("houseId", _text(pattern="[0-9]{11}")),
        ("role", _text(values=["head", "resident"])),  # of citizenId in this house
        ("movedIn", _DATE),
        ("addressTh", Address.customize(min_occurs=1, nillable=False)),
        ("addressEn", Address.customize(min_occurs=1, nillable=False)),
        ("members", Array(HouseMember, member_name="member", min_occurs=1, nillable=False)),
    ]


def _fault(code: str, message: str) -> Fault:
    return Fault(faultcode=f"Client.{code}", faultstring=message)


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


def _names(c: synthetic.Citizen) -> tuple[PersonName, PersonName]:
    p = c.person
    return (
        PersonName(title=c.title_th, givenName=p.given_name_th, familyName=p.family_name_th),
        PersonName(title=c.title_en, givenName=p.given_name_en, familyName=p.family_name_en),
    )


def _person(c: synthetic.Citizen) -> Person:
    name_th, name_en = _names(c)
    return Person(
        citizenId=c.citizen_id,
        nameTh=name_th,
        nameEn=name_en,
        birthDate=date.fromisoformat(c.person.birth_date),
        sex=c.sex,
        nationality=c.nationality,
        status=c.status,
        deathDate=date.fromisoformat(c.death_date) if c.death_date else None,
    )


def _addresses(a: synthetic.Address) -> tuple[Address, Address]:
    def one(soi: str | None, road: str, sub: str, district: str, province: str) -> Address:
        return Address(
            houseNo=a.house_no, moo=a.moo, soi=soi, road=road, subdistrict=sub,
            district=district, province=province, postcode=a.postcode,
        )  # fmt: skip

    return (
        one(a.soi_th, a.road_th, a.subdistrict_th, a.district_th, a.province_th),
        one(a.soi_en, a.road_en, a.subdistrict_en, a.district_en, a.province_en),
    )


def _house(
    registry: _Registry, citizen: synthetic.Citizen, house: synthetic.HouseRegistration
) -> HouseRegistration:
    own = house.member(citizen.citizen_id)
    assert own is not None  # _Registry.houses maps members to their own house
    members = []
    for m in house.members:
        name_th, name_en = _names(registry.citizens[m.citizen_id])
        members.append(
            HouseMember(
                citizenId=m.citizen_id, nameTh=name_th, nameEn=name_en, role=m.role,
                movedIn=date.fromisoformat(m.moved_in),
            )
        )  # fmt: skip
    address_th, address_en = _addresses(house.address)
    return HouseRegistration(
        citizenId=citizen.citizen_id,
        houseId=house.house_id,
        role=own.role,
        movedIn=date.fromisoformat(own.moved_in),
        addressTh=address_th,
        addressEn=address_en,
        members=members,
    )


def _service(registry: _Registry) -> type[ServiceBase]:
    # A class per application: spyne services are classes, and each app has its own data.
    class PopulationService(ServiceBase):
        @rpc(_text(), _returns=Person, _out_variable_name="person")
        def getPerson(ctx: Any, citizenId: str | None) -> Person:
            return _person(registry.citizen(citizenId))

        @rpc(_text(), _returns=HouseRegistration, _out_variable_name="houseRegistration")
        def getHouseRegistration(ctx: Any, citizenId: str | None) -> HouseRegistration:
            return _house(registry, *registry.house(citizenId))

    return PopulationService


class _WsdlPerAddress(WsgiApplication):
    """spyne builds the WSDL once, with the soap:address of the first request, and serves
    that to everyone (its WSDL builder cannot be run twice: a second build loses the
    address). A registry reached as localhost, 127.0.0.1 or through a proxy must give each
    caller the address it used, so the one built document is re-addressed per request."""

    _CACHED = 16  # addresses come from the Host header: keep only a few

    def __init__(self, app: Application, **kw: Any) -> None:
        super().__init__(app, **kw)
        self._wsdl_lock = threading.Lock()
        self._built: bytes | None = None
        self._wsdl_by_url: dict[str, bytes] = {}

    def _wsdl_for(self, url: str) -> bytes:
        with self._wsdl_lock:
            if self._built is None:
                self.doc.wsdl11.build_interface_document(url)
                self._built = self.doc.wsdl11.get_interface_document()
            wsdl = self._wsdl_by_url.get(url)
            if wsdl is None:
                # spyne's own output, not a caller's document; no entities to resolve anyway.
                parser = etree.XMLParser(resolve_entities=False, no_network=True)
                root = etree.fromstring(self._built, parser)
                for address in root.iter(f"{{{_WSDL_SOAP11}}}address"):
                    address.set("location", url)
                wsdl = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
                if len(self._wsdl_by_url) < self._CACHED:
                    self._wsdl_by_url[url] = wsdl
            return wsdl

    def handle_wsdl_request(
        self, req_env: dict[str, Any], start_response: Callable[..., Any], url: str
    ) -> Iterable[bytes]:
        wsdl = self._wsdl_for(url)
        start_response(
            "200 OK",
            [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(wsdl)))],
        )
        return [wsdl]


def population_wsgi(population: synthetic.Population) -> WsgiApplication:
    """The registry as a plain WSGI application (any WSGI server can run it)."""
    app = Application(
        [_service(_Registry(population))],
        tns=NAMESPACE,
        name="PopulationRegistry",
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    return _WsdlPerAddress(app, max_content_length=MAX_BODY)


# --- aiohttp -> WSGI ------------------------------------------------------------------------

_HOP_BY_HOP = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding"})


def _environ(request: web.Request, body: bytes) -> dict[str, Any]:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    server_name, server_port = (sockname[0], sockname[1]) if sockname else ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        # PEP 3333: the path percent-decoded, its bytes carried as latin-1 characters.
        "PATH_INFO": urllib.parse.unquote(request.rel_url.raw_path, encoding="latin-1"),
        "QUERY_STRING": request.rel_url.raw_query_string,
        "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": str(server_name),
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
        "REMOTE_ADDR": request.remote or "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name in request.headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH") and key not in environ:
            environ[key] = ",".join(request.headers.getall(name))
    return environ


def _call_wsgi(
    wsgi: Callable[..., Iterable[bytes]], environ: dict[str, Any]
) -> tuple[str, list[tuple[str, str]], bytes]:
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return chunks.append

    result = wsgi(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the WSGI application never called start_response")
    return started[0], started[1], b"".join(chunks)


def _wsgi_handler(
    wsgi: Callable[..., Iterable[bytes]],
) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()  # the app's client_max_size answers 413 beyond the cap
        # spyne is synchronous (parsing, schema validation, serialisation): off the loop.
        status, headers, payload = await asyncio.to_thread(
            _call_wsgi, wsgi, _environ(request, body)
        )
        code, _, reason = status.partition(" ")
        kept = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        return web.Response(status=int(code), reason=reason or None, headers=kept, body=payload)

    return handle


def dopa_app(seed: int = 2569, count: int = 200) -> web.Application:
    """The registry over ``population(seed, demo_people(seed, count))``: everyone the DBD
    registry of ``count`` companies (``dbd_app(seed, count)``) names, and their households."""
    population = synthetic.population(seed, synthetic.demo_people(seed, count))
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_route("*", "/", _wsgi_handler(population_wsgi(population)))
    return app
