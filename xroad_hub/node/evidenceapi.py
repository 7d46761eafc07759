"""The evidence API of a client node: once-only evidence by type and subject.

A case service asks its own node for evidence instead of asking the citizen for a copy:

    GET /evidence                       -> {"types": [{"type", "title", "subject",
                                                       "service", "purposes"}]}
    GET /evidence/{type}/{subjectId}    -> {"type", "subject", "service", "message_id",
                                            "data"}  (+ X-Road-Id and the request hash)

Headers of an evidence request: X-Road-Client (required, authenticated as on the r1
path), X-Road-Purpose and X-Road-Legal-Basis (required: evidence about a person is never
fetched without saying why), X-Road-UserId and X-Road-Issue (the official and the case),
X-Road-Represented-Party and X-Road-Id (optional).

The catalog (catalog.py) turns type and subject into one request to the authoritative
service, which goes out as an ordinary exchange: signed, logged on both nodes, with
purpose, legal basis and evidence type inside the signed metadata, so the citizen's data
tracker and the auditors see exactly what was asked and why. There is no side channel.

What comes back: a 2xx answer is checked against the type's JSON Schema and returned
wrapped as above (Server.ClientProxy.InvalidEvidence if it does not match); any other
answer of the provider (404 no such company, 400 its own refusal) is passed on with its
status and body unchanged; X-Road errors are rendered as on the r1 path.
"""

from __future__ import annotations

import asyncio

import orjson
import structlog
from aiohttp import web

from xroad_hub.errors import CLIENT_PROXY, XRoadError
from xroad_hub.node.consumer import (
    Answer,
    Call,
    ClientProxy,
    client_authentication,
    named_client,
)
from xroad_hub.node.runtime import NodeRuntime, x_road_errors
from xroad_hub.protocol.catalog import Catalog
from xroad_hub.protocol.exchange import new_id
from xroad_hub.protocol.rest import (
    check_header_value,
    filter_response_headers,
    parse_represented_party,
)

__all__ = ["EvidenceApi"]

log = structlog.get_logger("xroad_hub.evidence_api")

_JSON = "application/json"


# Evidence is a registry record, not a bulk export; validating a larger answer would also
# cost the node seconds of CPU.
MAX_EVIDENCE_BYTES = 1024 * 1024


def _required(request: web.Request, name: str) -> str:
    value = request.headers.get(name, "").strip()
    if not value:
        if name in ("X-Road-Purpose", "X-Road-Legal-Basis"):
            raise XRoadError.client(
                "MissingPurpose",
                f"{name} header is missing: evidence is fetched only for a stated purpose "
                "under a stated legal basis (X-Road-Purpose and X-Road-Legal-Basis)",
            )
        raise XRoadError.client(
            "MissingHeader",
            f"{name} header is missing: evidence requests name the official or citizen acting"
            " (X-Road-UserId) and the case (X-Road-Issue), which the data subject will see",
        )
    return check_header_value(name, value)


class EvidenceApi:
    def __init__(self, runtime: NodeRuntime, proxy: ClientProxy, catalog: Catalog) -> None:
        self.rt = runtime
        self.proxy = proxy
        self.catalog = catalog

    def subapp(self) -> web.Application:
        """The evidence API as a sub-application, its routes relative to /evidence. Errors are
        rendered as on the r1 path by its own middleware, so it answers alike wherever it is
        mounted. Only GET: a POST under /evidence is answered 405, not taken for SOAP."""
        app = web.Application(
            middlewares=[
                x_road_errors("client", CLIENT_PROXY),
                client_authentication(self.rt, public=[self.list_types]),
            ]
        )
        app.router.add_get("", self.list_types)
        app.router.add_get("/{type}/{subject}", self.handle)
        return app

    def add_routes(self, app: web.Application) -> None:
        """Mount the API at /evidence; must come before a catch-all route (aiohttp matches in
        order)."""
        app.add_subapp("/evidence", self.subapp())

    async def list_types(self, request: web.Request) -> web.Response:
        # The catalog is documentation of what may be asked, not data: no authentication.
        types = [
            {
                "type": t.name,
                "title": t.title,
                "subject": t.subject_kind,
                "service": str(t.service),
                "purposes": list(t.purposes),
            }
            for t in self.catalog.types()
        ]
        return _json({"types": types})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Evidence for the client X-Road-Client names, authenticated and admitted by the
        middleware (client_authentication)."""
        h = request.headers
        message_id = check_header_value("X-Road-Id", h.get("X-Road-Id") or new_id())
        client = named_client(request).id
        # After authentication: an unauthenticated caller learns nothing about the catalog.
        etype = self.catalog.get(request.match_info["type"])
        subject = request.match_info["subject"]
        service, method, path, query = etype.request_for(subject)
        purpose = _required(request, "X-Road-Purpose")
        legal_basis = _required(request, "X-Road-Legal-Basis")
        # Who acts and for which case: what the citizen's data tracker shows her.
        user_id = _required(request, "X-Road-UserId")
        issue = _required(request, "X-Road-Issue")
        represented = h.get("X-Road-Represented-Party")
        answer = await self.proxy.send(
            Call(
                client=client,
                service=service,
                method=method,
                path=path,
                query=query,
                # Only what the catalog asks for reaches the provider: the case service's
                # own headers (its credentials among them) stay here.
                headers=[("Accept", _JSON)],
                body=b"",
                message_id=message_id,
                user_id=user_id,
                issue=issue,
                represented_party=parse_represented_party(represented) if represented else None,
                purpose=purpose,
                legal_basis=legal_basis,
                evidence_type=etype.name,
            )
        )
        if not 200 <= answer.status < 300:
            # The provider's own refusal (no such company, no deed): its words, unchanged.
            resp = web.Response(status=answer.status, body=answer.body)
            for k, v in filter_response_headers(answer.headers):
                resp.headers.add(k, v)
            _trace(resp, answer)
            return resp
        if len(answer.body) > MAX_EVIDENCE_BYTES:
            raise XRoadError.client_proxy(
                "InvalidEvidence",
                f"evidence {etype.name!r}: the answer exceeds {MAX_EVIDENCE_BYTES} bytes",
            )
        # Off the event loop: a large answer must not hold up the node's other exchanges.
        data = await asyncio.to_thread(etype.validate, answer.body)
        log.info("evidence.served", type=etype.name, client=str(client), id=message_id)
        resp = _json(
            {
                "type": etype.name,
                "subject": subject,
                "service": answer.service,
                "message_id": message_id,
                "data": data,
            }
        )
        _trace(resp, answer)
        return resp


def _trace(resp: web.Response, answer: Answer) -> None:
    """The ids that tie this answer to the logged exchange (for audits and evidence)."""
    resp.headers["X-Road-Id"] = answer.message_id
    resp.headers["X-Road-Service"] = answer.service
    resp.headers["X-Road-Request-Id"] = answer.request_id
    resp.headers["X-Road-Request-Hash"] = answer.request_hash


def _json(doc: object) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type=_JSON, charset="utf-8")
