"""A test double of the hub node's evidence API, as the case service sees it.

It answers ``GET /evidence`` and ``GET /evidence/{type}/{subject}`` by the documented
contract with canned JSON, can be told to fail per evidence type in each of the ways a real
node can (X-Road error, the provider's own error passed through, a dropped connection),
records every request with its headers, and counts requests in flight so a test can prove
that fetches overlap without measuring time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import ipaddress
import json
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CLIENT_ID = "TH/GOV/BMA/licensing"

SERVICES = {
    "identity": ("TH/GOV/DOPA/population/getPerson", "citizen_id"),
    "house_registration": ("TH/GOV/DOPA/population/getHouseRegistration", "citizen_id"),
    "company_registration": ("TH/GOV/DBD/registry/companies", "juristic_id"),
    "tax_clearance": ("TH/GOV/RD/taxclearance/clearances", "juristic_id"),
    "title_deed": ("TH/GOV/DOL/landoffice/titledeeds", "citizen_id"),
}

TITLES = {
    "identity": "Identity (population registry)",
    "house_registration": "House registration (Tabien Baan)",
    "company_registration": "Company registration and directors",
    "tax_clearance": "Tax clearance status",
    "title_deed": "Title deed of the premises",
}

# Strings that occur only inside payloads: a test greps the case service's files for them.
PAYLOAD_MARKERS = ("สมหญิง", "PAYLOAD-SECRET")

REQUIRED_HEADERS = (
    "X-Road-Client",
    "X-Road-UserId",
    "X-Road-Issue",
    "X-Road-Purpose",
    "X-Road-Legal-Basis",
)


DIRECTORS = ["1101700203450", "1234567890121"]
STRANGERS_COMPANY = "0105536000313"


def canned_payload(evidence_type: str, subject: str) -> dict[str, Any]:
    """Synthetic registry data; Thai script on purpose (UTF-8 end to end)."""
    base: dict[str, Any] = {"subject": subject, "note": f"PAYLOAD-SECRET-{evidence_type}"}
    if evidence_type == "identity":
        base |= {
            "name_th": "นางสาวสมหญิง ใจดี",
            "name_en": "Miss Somying Jaidee",
            "birth_date": "1990-04-12",
        }
    elif evidence_type == "house_registration":
        base |= {"address_th": "99/1 ถนนสุขุมวิท แขวงคลองตัน เขตคลองเตย กรุงเทพมหานคร"}
    elif evidence_type == "company_registration":
        # The DBD shape: directors with their citizen ids (the tests' two citizens direct
        # every company except STRANGERS_COMPANY).
        ids = ["3100600123459"] if subject == STRANGERS_COMPANY else DIRECTORS
        base |= {
            "name_th": "บริษัท ครัวสมหญิง จำกัด",
            "directors": [{"citizen_id": i, "name_th": "สมหญิง ใจดี"} for i in ids],
        }
    elif evidence_type == "tax_clearance":
        base |= {"tax_year": 2567, "cleared": True}
    elif evidence_type == "title_deed":
        base |= {"deed_no": "12345", "owner_th": "สมหญิง ใจดี", "area_sqw": 50}
    return base


@dataclass
class Recorded:
    path: str
    evidence_type: str | None
    subject: str | None
    headers: dict[str, str]
    peer_cn: str | None


@dataclass
class Failure:
    kind: str  # "xroad" | "provider" | "drop"
    status: int = 500
    code: str = "Server.ServerProxy.NetworkError"
    message: str = "provider unreachable"
    body: str = ""


@dataclass
class FakeEvidenceHub:
    ssl_context: ssl.SSLContext | None = None
    requests: list[Recorded] = field(default_factory=list)
    # ("request" | "answer", evidence type) in the order they happened: a test can show
    # that one fetch was sent only after another one's answer had been given.
    events: list[tuple[str, str]] = field(default_factory=list)
    failures: dict[str, Failure] = field(default_factory=dict)
    # Per (type, subject) replacements of the canned payload, to simulate a registry change.
    overrides: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # When set, each evidence request waits until this many are in flight (or gate_timeout
    # passes, so a serial client fails its assertion instead of hanging the test run).
    gate: int | None = None
    gate_timeout: float = 10.0
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None
    _gate_open: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/evidence", self._catalog)
        app.router.add_get("/evidence/{type}/{subject}", self._evidence)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- switches -----------------------------------------------------------------------

    def fail(self, evidence_type: str, failure: Failure) -> None:
        self.failures[evidence_type] = failure

    def recover(self, evidence_type: str | None = None) -> None:
        if evidence_type is None:
            self.failures.clear()
        else:
            self.failures.pop(evidence_type, None)

    def evidence_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.evidence_type is not None]

    def payload(self, evidence_type: str, subject: str) -> dict[str, Any]:
        data = self.overrides.get((evidence_type, subject))
        return copy.deepcopy(data if data is not None else canned_payload(evidence_type, subject))

    # --- handlers -----------------------------------------------------------------------

    def _record(self, request: web.Request, etype: str | None, subject: str | None) -> None:
        cn = None
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        cn = value
        self.requests.append(Recorded(request.path, etype, subject, dict(request.headers), cn))

    async def _catalog(self, request: web.Request) -> web.Response:
        self._record(request, None, None)
        types = [
            {
                "type": t,
                "title": TITLES[t],
                "subject": subject,
                "service": service,
                "purposes": ["food-business-licence"],
            }
            for t, (service, subject) in SERVICES.items()
        ]
        return web.json_response({"types": types})

    def _xroad_error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {"type": code, "message": message, "detail": str(uuid.uuid4())},
            status=status,
            headers={"X-Road-Error": code},
        )

    async def _evidence(self, request: web.Request) -> web.StreamResponse:
        etype, subject = request.match_info["type"], request.match_info["subject"]
        self._record(request, etype, subject)
        self.events.append(("request", etype))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                if self.in_flight >= self.gate:
                    self._gate_open.set()
                # The timeout only guards against a hang; the test asserts max_in_flight.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._gate_open.wait(), self.gate_timeout)
            return await self._answer(request, etype, subject)
        finally:
            self.in_flight -= 1
            self.events.append(("answer", etype))

    async def _answer(self, request: web.Request, etype: str, subject: str) -> web.StreamResponse:
        if missing := [h for h in REQUIRED_HEADERS if not request.headers.get(h)]:
            return self._xroad_error(
                400, "Client.MissingHeader", f"missing header(s): {', '.join(missing)}"
            )
        if request.headers["X-Road-Client"] != CLIENT_ID:
            return self._xroad_error(403, "Server.ClientProxy.AccessDenied", "unknown client")
        if etype not in SERVICES:
            return self._xroad_error(
                404, "Server.ClientProxy.UnknownService", f"no evidence type {etype}"
            )
        failure = self.failures.get(etype)
        if failure is not None:
            if failure.kind == "drop":
                # The connection dies without an answer, as when a node crashes mid-request.
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=500)
            if failure.kind == "xroad":
                return self._xroad_error(failure.status, failure.code, failure.message)
            return web.Response(
                status=failure.status, text=failure.body, content_type="application/json"
            )
        message_id = request.headers.get("X-Road-Id") or str(uuid.uuid4())
        return web.json_response(
            {
                "type": etype,
                "subject": subject,
                "service": SERVICES[etype][0],
                "message_id": message_id,
                "data": self.payload(etype, subject),
            },
            headers={"X-Road-Id": message_id},
            dumps=_dumps,
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# --- TLS material for the mutual-TLS test ------------------------------------------------


@dataclass(frozen=True)
class TlsMaterial:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self) -> ssl.SSLContext:
        """The node's side: its own certificate, and client certificates required."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_tls_material(directory: Path) -> TlsMaterial:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("test federation root"))
        .issuer_name(_name("test federation root"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [
                        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
                        if server
                        else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
                    ]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return key, builder.sign(ca_key, hashes.SHA256())

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.cert.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_key, server_cert = leaf("node.bma.test", server=True)
    client_key, client_cert = leaf(CLIENT_ID, server=False)
    _write(directory / "server", server_key, server_cert)
    _write(directory / "client", client_key, client_cert)
    return TlsMaterial(
        ca=directory / "ca.cert.pem",
        server_cert=directory / "server.cert.pem",
        server_key=directory / "server.key.pem",
        client_cert=directory / "client.cert.pem",
        client_key=directory / "client.key.pem",
    )
