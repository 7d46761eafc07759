"""The Department of Business Development's company registry: a plain REST API.

It knows nothing about X-Road; the hub publishes it through the REST adapter as
``TH/GOV/DBD/registry/companies``.

    GET /companies/{juristicId}   200 company with directors | 400 invalid id | 404 unknown
    GET /companies?limit=N        the first N juristic ids (for demos and benchmarks)
"""

from __future__ import annotations

import orjson
from aiohttp import web

from xroad_hub.demo.synthetic import companies, people
from xroad_hub.protocol.thaiid import is_valid

__all__ = ["dbd_app"]

_JSON = "application/json; charset=utf-8"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", charset="utf-8"
    )


def dbd_app(seed: int = 2569, count: int = 200) -> web.Application:
    persons = people(seed, count * 2)
    by_id = {p.citizen_id: p for p in persons}
    registry = {c.juristic_id: c.as_dict(by_id) for c in companies(seed, count, persons)}
    ids = list(registry)

    async def one(request: web.Request) -> web.Response:
        jid = request.match_info["juristic_id"]
        if not is_valid(jid):
            return _json(
                {"error": "invalid_juristic_id", "message": "13 digits with a valid check digit"},
                400,
            )
        company = registry.get(jid)
        if company is None:
            return _json({"error": "not_found", "message": f"no company {jid}"}, 404)
        return _json(company)

    async def listing(request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "20")), 1000))
        except ValueError:
            return _json({"error": "bad_limit", "message": "limit must be an integer"}, 400)
        return _json({"juristic_ids": ids[:limit], "total": len(ids)})

    app = web.Application()
    app.router.add_get("/companies", listing)
    app.router.add_get("/companies/{juristic_id}", one)
    return app
