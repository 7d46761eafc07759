"""No citizen id in a node's operational log (issue 10, item 9).

Exchanges about a citizen, accepted and refused on every path (REST, SOAP, evidence, the
auditors' search), while structlog's events are captured: the id appears in none of them.
The message log holds who was read, for the citizen and the auditors; the operational log
is for operators, and says which route and which service, never whom it was about.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import aiohttp
import jwt
import pytest
import structlog

from xroad_hub.pki import load_private_key

from .conftest import Fed
from .test_e2e_soap import envelope

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}
CID = "3101700123457"
LEGACY_NS = "urn:example:dopa:population"


def _auditor_token(fed: Fed) -> str:
    now = int(time.time())
    claims = {"iss": "auditor:oag", "aud": DBD, "iat": now, "exp": now + 60}
    return jwt.encode(claims, load_private_key(fed.pki.auditor_jwt("oag").key), algorithm="ES256")


async def _status(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> int:
    async with http.request(method, url, **kw) as r:
        await r.read()
        return r.status


async def test_citizen_ids_never_reach_the_operational_log(
    fed: Fed, http: aiohttp.ClientSession, oplog: list[dict[str, Any]]
) -> None:
    node = fed.url(DGA)
    echo = f"{node}/r1/TH/GOV/DBD/registry"
    audit = f"{fed.url(DBD, 'audit')}/audit/search"
    auditor = {"Authorization": f"Bearer {_auditor_token(fed)}"}
    office = {"X-Road-Client": "TH/GOV/DGA/officeapp"}
    soap = envelope(
        f'<p:getPerson xmlns:p="{LEGACY_NS}"><p:citizenId>{CID}</p:citizenId></p:getPerson>',
        subsystem="legacy",
        code="getPerson",
        version="v1",
    )
    requests: list[tuple[int | None, str, str, dict[str, Any]]] = [
        # accepted, the id in the path and the query
        (200, "GET", f"{echo}/echo/{CID}?cid={CID}", {"headers": DEV}),
        # refused by the provider's node (no access right, disabled service)
        (500, "GET", f"{echo}/restricted/{CID}?cid={CID}", {"headers": DEV}),
        (500, "GET", f"{echo}/closed/{CID}", {"headers": DEV}),
        # refused by the client's node: bad path, bad service id, protocol, credentials
        (400, "GET", f"{echo}/echo/{CID}//x?cid={CID}", {"headers": DEV}),
        (400, "GET", f"{node}/r1/{CID}?cid={CID}", {"headers": DEV}),
        (400, "GET", f"{node}/r9/{CID}", {"headers": DEV}),
        (500, "GET", f"{echo}/echo/{CID}", {"headers": office}),
        # the evidence API, refused (no purpose) after authentication
        (400, "GET", f"{node}/evidence/identity/{CID}", {"headers": DEV}),
        # SOAP: the id in the body
        (None, "POST", node + "/", {"headers": {"Content-Type": "text/xml"}, "data": soap}),
        # the auditors' search by subject, with and without a valid token
        (200, "GET", f"{audit}?subject={CID}", {"headers": auditor, "ssl": fed.client_ssl()}),
        (401, "GET", f"{audit}?subject={CID}&user_id={CID}", {"ssl": fed.client_ssl()}),
    ]
    for expected, method, url, kw in requests:
        status = await _status(http, method, url, **kw)
        assert expected is None or status == expected, (url, status)
    events = list(oplog)
    names = [e["event"] for e in events]
    # The test saw what it meant to: refusals and audits were logged (at info level).
    assert names.count("exchange.refused") >= 6, names
    assert "audit.request" in names and "audit.refused" in names, names
    leaked = [e for e in events if CID in repr(e)]
    assert not leaked, leaked
    routes = {str(e.get("route")) for e in events if e["event"] == "exchange.refused"}
    assert "/r1/TH/GOV/DBD/registry/restricted/{id}" in routes, routes


def test_libraries_records_are_json_lines_with_numbers_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Libraries log through the standard library (asyncio's "Fatal error on transport", a
    # parser quoting the value it failed on); those records went to stderr as plain text,
    # tracebacks and ids included. conftest configured logging as a node does (JSON).
    structlog.contextvars.bind_contextvars(node=DGA)
    try:
        try:
            int(f"x{CID}")
        except ValueError:
            logging.getLogger("some.library").exception("cannot read %s", CID)
        logging.getLogger("some.library").info("chatter")  # below WARNING: left out
    finally:
        structlog.contextvars.unbind_contextvars("node")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert CID not in lines[0]
    record = json.loads(lines[0])
    assert record["event"] == "cannot read {number}"
    assert (record["logger"], record["level"], record["node"]) == ("some.library", "error", DGA)
    assert "ValueError: invalid literal" in record["exception"]
