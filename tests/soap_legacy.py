"""A legacy SOAP service for the SOAP adapter tests: a real SOAP 1.1 server that knows nothing
of X-Road (document/literal wrapped, requests validated against its schema), run on its own
event loop in a daemon thread.

Its WSDL, tests/data/soap/legacy-population.wsdl, is the one spyne 2.14 published for this
service, kept as spyne wrote it, so the adapters are still tested against a WSDL written by a
tool we did not write; the server is xroad_hub.demo.legacysoap, as for the demo's DOPA.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from lxml import etree

from xroad_hub.demo.legacysoap import SoapFault, SoapService, element, optional_text

__all__ = ["LEGACY_NS", "LegacyServer", "legacy_server"]

LEGACY_NS = "urn:example:dopa:population"
WSDL = Path(__file__).resolve().parent / "data" / "soap" / "legacy-population.wsdl"
CITIZEN = "1101700203451"


@dataclass(frozen=True)
class _Person:
    citizen_id: str
    name: str
    birth_date: datetime.date
    registered: datetime.datetime
    alive: bool
    income: decimal.Decimal
    street: str
    province: str
    phones: tuple[str, ...]


PEOPLE = {
    CITIZEN: _Person(
        citizen_id=CITIZEN,
        name="Somchai Jaidee",
        birth_date=datetime.date(1985, 4, 12),
        registered=datetime.datetime(2001, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        alive=True,
        income=decimal.Decimal("12345.67"),
        street="1 Ratchadamnoen",
        province="Bangkok",
        phones=("+6621234567", "+66812345678"),
    ),
}


def _el(name: str, *content: object) -> etree._Element:
    return element(LEGACY_NS, name, *content)


def _person(tag: str, p: _Person) -> etree._Element:
    return _el(
        tag,
        _el("citizenId", p.citizen_id),
        _el("name", p.name),
        _el("birthDate", p.birth_date),
        _el("registered", p.registered),
        _el("alive", p.alive),
        _el("income", p.income),
        _el("address", _el("street", p.street), _el("province", p.province)),
        _el("phones", *(_el("string", phone) for phone in p.phones)),
    )


def get_person(request: etree._Element) -> Iterable[etree._Element]:
    """Population register entry of one citizen."""
    citizen_id = optional_text(request, "citizenId") or ""
    person = PEOPLE.get(citizen_id)
    if person is None:
        detail = etree.Element("citizenId")
        detail.text = citizen_id
        raise SoapFault("Client.NotFound", f"no citizen {citizen_id}", detail)
    return [_person("getPersonResult", person)]


def count_children(request: etree._Element) -> Iterable[etree._Element]:
    born_after = optional_text(request, "bornAfterYear")
    as_of = optional_text(request, "asOf")
    count = 2 if optional_text(request, "citizenId") == CITIZEN else 0
    if born_after is not None and int(born_after) > 2010:
        count -= 1
    if as_of is not None and datetime.date.fromisoformat(as_of[:10]).year < 1990:
        count = 0
    return [_el("countChildrenResult", count)]


def find_persons(request: etree._Element) -> Iterable[etree._Element]:
    ids = request.find(f"{{{LEGACY_NS}}}citizenIds")
    wanted = [] if ids is None else [item.text or "" for item in ids]
    found = [_person("Person", PEOPLE[c]) for c in wanted if c in PEOPLE]
    return [_el("findPersonsResult", *found)]


def fail_always(request: etree._Element) -> Iterable[etree._Element]:
    raise SoapFault("Server.Broken", f"legacy failure: {optional_text(request, 'reason')}")


@dataclass
class LegacyServer:
    url: str  # the SOAP endpoint; the WSDL is at url + "?wsdl"
    # Headers (upper case, "-" as "_", as CGI names them) and body of every SOAP POST.
    requests: list[tuple[dict[str, str], bytes]]

    @property
    def wsdl_url(self) -> str:
        return self.url + "?wsdl"


@contextmanager
def legacy_server() -> Iterator[LegacyServer]:
    service = SoapService(
        WSDL.read_bytes(),
        {
            "getPerson": get_person,
            "countChildren": count_children,
            "findPersons": find_persons,
            "failAlways": fail_always,
        },
        max_body=1 << 20,
    )
    seen: list[tuple[dict[str, str], bytes]] = []

    async def recording(request: web.Request) -> web.Response:
        if request.method == "POST":
            headers = {k.upper().replace("-", "_"): v for k, v in request.headers.items()}
            seen.append((headers, await request.read()))
        return await service.answer(request)

    app = web.Application(client_max_size=service.max_body)
    app.router.add_route("*", "/", recording)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="legacy-soap", daemon=True)
    thread.start()

    def run(coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, loop).result()  # type: ignore[arg-type]

    runner = web.AppRunner(app, access_log=None)
    run(runner.setup())
    sock = socket.create_server(("127.0.0.1", 0))
    run(web.SockSite(runner, sock).start())
    try:
        yield LegacyServer(f"http://127.0.0.1:{sock.getsockname()[1]}/", seen)
    finally:
        run(runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
