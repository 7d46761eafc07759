"""A legacy SOAP service for the SOAP adapter tests: a real spyne server that knows nothing of
X-Road (its own WSDL, document/literal wrapped, SOAP 1.1), run in a daemon thread."""

from __future__ import annotations

import datetime
import decimal
import io
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

# spyne 2.14 still imports through six and the deprecated cgi module; the test suite turns
# warnings into errors, and these are spyne's own business.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from spyne import (
        Array,
        Boolean,
        ComplexModel,
        Date,
        DateTime,
        Decimal,
        Fault,
        Integer,
        Integer32,
        Mandatory,
        ServiceBase,
        Unicode,
        rpc,
    )
    from spyne.application import Application
    from spyne.protocol.soap import Soap11
    from spyne.server.wsgi import WsgiApplication

__all__ = ["LEGACY_NS", "LegacyServer", "legacy_server"]

LEGACY_NS = "urn:example:dopa:population"


class Address(ComplexModel):
    __namespace__ = LEGACY_NS
    street = Unicode
    province = Mandatory(Unicode)


class Person(ComplexModel):
    __namespace__ = LEGACY_NS
    citizenId = Mandatory(Unicode)
    name = Unicode
    birthDate = Date
    registered = DateTime
    alive = Boolean
    income = Decimal
    address = Address
    phones = Array(Unicode)


PEOPLE = {
    "1101700203451": Person(
        citizenId="1101700203451",
        name="Somchai Jaidee",
        birthDate=datetime.date(1985, 4, 12),
        registered=datetime.datetime(2001, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        alive=True,
        income=decimal.Decimal("12345.67"),
        address=Address(street="1 Ratchadamnoen", province="Bangkok"),
        phones=["+6621234567", "+66812345678"],
    ),
}


class PopulationService(ServiceBase):
    @rpc(Mandatory(Unicode), _returns=Person)
    def getPerson(ctx: Any, citizenId: str) -> Person:
        """Population register entry of one citizen."""
        person = PEOPLE.get(citizenId)
        if person is None:
            raise Fault(
                faultcode="Client.NotFound",
                faultstring=f"no citizen {citizenId}",
                detail={"citizenId": citizenId},
            )
        return person

    @rpc(Mandatory(Unicode), Integer32, Date, _returns=Integer)
    def countChildren(
        ctx: Any,
        citizenId: str,
        bornAfterYear: int | None,
        asOf: datetime.date | None,
    ) -> int:
        base = 2 if citizenId == "1101700203451" else 0
        if bornAfterYear is not None and bornAfterYear > 2010:
            base -= 1
        if asOf is not None and asOf.year < 1990:
            base = 0
        return base

    @rpc(Array(Mandatory(Unicode)), _returns=Array(Person))
    def findPersons(ctx: Any, citizenIds: list[str] | None) -> list[Person]:
        return [PEOPLE[c] for c in citizenIds or () if c in PEOPLE]

    @rpc(Unicode, _returns=Unicode)
    def failAlways(ctx: Any, reason: str | None) -> str:
        raise Fault(faultcode="Server.Broken", faultstring=f"legacy failure: {reason}")


@dataclass
class LegacyServer:
    url: str  # the SOAP endpoint; the WSDL is at url + "?wsdl"
    requests: list[tuple[dict[str, str], bytes]]  # headers and body of every SOAP POST

    @property
    def wsdl_url(self) -> str:
        return self.url + "?wsdl"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def legacy_server() -> Iterator[LegacyServer]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = Application(
            [PopulationService],
            tns=LEGACY_NS,
            name="PopulationRegister",
            in_protocol=Soap11(validator="lxml"),
            out_protocol=Soap11(),
        )
        wsgi = WsgiApplication(app)
    # spyne logs every Fault it sends with a traceback; here Faults are part of the tests.
    logging.getLogger("spyne").setLevel(logging.CRITICAL)
    seen: list[tuple[dict[str, str], bytes]] = []

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(size)
            headers = {k[5:]: v for k, v in environ.items() if k.startswith("HTTP_")}
            headers["CONTENT_TYPE"] = environ.get("CONTENT_TYPE", "")
            seen.append((headers, body))
            environ["wsgi.input"] = io.BytesIO(body)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(wsgi(environ, start_response))

    server: WSGIServer = make_server("127.0.0.1", 0, recording, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="legacy-soap", daemon=True)
    thread.start()
    try:
        yield LegacyServer(f"http://127.0.0.1:{server.server_port}/", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
