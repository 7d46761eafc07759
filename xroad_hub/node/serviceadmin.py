"""The service administrator's part of the node's admin API: services, access rights,
local groups, the settings' export and import, and the node's status.

Mounted by the node at ``/settings`` for the ``service-administrator`` role (admin.py).
Every change goes through ``ServiceManager.change`` (services.py): checked completely, then
written comparing versions, recorded in the admin audit trail, and in force at once.

A row's version is its ETag; a change sent with ``If-Match`` made from another version is
refused with 412, and a change that meets another one in the database with 409: two
administrators cannot lose each other's change silently.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import web

from adapters.flatfile import FlatFileSettings, LayoutError
from adapters.soap import WsdlError, fetch_wsdl, load_wsdl
from xroad_hub.federation import ADAPTER_OPTIONS, ServiceConfig, load_table
from xroad_hub.node.admin import ADMIN
from xroad_hub.node.services import (
    Refused,
    ServiceManager,
    check_group_name,
)
from xroad_hub.node.settings import CLIENT, GROUP, SERVICE, Conflict, Put, Row
from xroad_hub.packaged import schemas_dir
from xroad_hub.protocol.access import parse_endpoint
from xroad_hub.protocol.identifiers import (
    SubsystemId,
    parse_service_id,
    parse_subsystem_id,
    valid_part,
)

__all__ = ["EXPORT_FORMAT", "openapi_operations", "settings_app"]

EXPORT_FORMAT = "xroad-hub-node-settings/1"
Rows = Mapping[str, Row]
_MAX_DOCUMENT = 5 * 1024 * 1024
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")


def _json(data: object, status: int = 200, etag: int | None = None) -> web.Response:
    headers = {"ETag": f'"{etag}"'} if etag is not None else None
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def _dumps(data: object) -> str:
    return orjson.dumps(data).decode()


def openapi_operations(document: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """(operationId, "METHOD /path") of every operation of an OpenAPI 3 document."""
    found: list[tuple[str | None, str]] = []
    paths = document.get("paths")
    if not isinstance(paths, dict) or not paths:
        raise Refused("the OpenAPI document has no paths: nothing to register")
    for path, item in paths.items():
        if not isinstance(item, dict):
            raise Refused(f"OpenAPI path {path!r} is not an object")
        for method in _HTTP_METHODS:
            op = item.get(method)
            if op is None:
                continue
            endpoint = f"{method.upper()} {path}"
            try:
                parse_endpoint(endpoint)
            except ValueError as exc:
                raise Refused(f"OpenAPI operation {endpoint}: {exc}") from exc
            op_id = op.get("operationId") if isinstance(op, dict) else None
            found.append((op_id if isinstance(op_id, str) else None, endpoint))
    if not found:
        raise Refused("the OpenAPI document declares no operations: nothing to register")
    return found


def _openapi(data: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Refused(f"the OpenAPI document is not JSON (OpenAPI 3 JSON is read): {exc}") from exc
    if not isinstance(document, dict) or not str(document.get("openapi", "")).startswith("3."):
        raise Refused("the document is not an OpenAPI 3 document (its 'openapi' is not 3.x)")
    return document


class OutsideFileDirs(Refused):
    """A path outside the directories the node's owner opened to service administrators."""


class _Api:
    def __init__(
        self,
        manager: ServiceManager,
        node_id: str,
        private_dirs: Iterable[Path] = (),
        file_dirs: Iterable[Path] = (),
    ) -> None:
        self.m = manager
        self.node_id = node_id
        self.private_dirs = tuple(d.resolve() for d in private_dirs)
        # Shipped with xroad-hub (schemas/: public layouts and descriptions): always readable.
        self.shipped = schemas_dir().resolve()
        self.file_dirs = tuple(d.resolve() for d in file_dirs)

    def _check_readable(self, table: Mapping[str, Any]) -> None:
        """A flat-file service reads no file of the node's own (its keys, its databases, its
        logs): served to a client it grants itself, the service administrator's role would
        otherwise read the node's private keys."""
        for option in ("source", "layout"):
            value = table.get(option)
            if isinstance(value, str):
                # As the flat-file adapter reads it.
                self._refuse_private(
                    Path(value).expanduser(), f"flat file {option} {value}", "the export"
                )

    def _check_description(self, location: object) -> None:
        """An OpenAPI or WSDL the node reads from a local path (at registration, at every
        refresh, from an import's recorded source) is no file of the node's own either:
        refused before anything says whether a file is there."""
        if not isinstance(location, str) or location.startswith("(sent "):
            return  # a document sent in the request: no path at all
        scheme = urlsplit(location).scheme.lower()
        if scheme in ("http", "https"):
            return
        if scheme == "file":  # as fetch_wsdl reads it
            path = Path(unquote(urlsplit(location).path))
        elif scheme and not re.fullmatch(r"[a-z]", scheme):
            return  # not read at all: fetch_wsdl refuses the scheme
        else:
            path = Path(location)
        for candidate in {path, path.expanduser()}:
            self._refuse_private(candidate, f"description {location}", "the document")

    def _refuse_private(self, path: Path, what: str, thing: str) -> None:
        """Default deny: a path is read only inside the directories the node's owner lists
        (service_file_dirs), and never where the node keeps its keys and data. Symbolic
        links are followed first, so a link cannot lead out."""
        resolved = path.resolve()
        for private in self.private_dirs:
            if resolved.is_relative_to(private) or private.is_relative_to(resolved):
                raise Refused(
                    f"{what}: the node keeps its keys and data there;"
                    f" place {thing} in a folder of its own"
                )
        if not any(resolved.is_relative_to(d) for d in (self.shipped, *self.file_dirs)):
            listed = ", ".join(str(d) for d in self.file_dirs) or "none"
            raise OutsideFileDirs(
                f"{what}: the node reads files only from the directories its owner lists in "
                f"the node's settings (service_file_dirs; now: {listed}); place {thing} in one, "
                "or ask the node's owner to add its directory"
            )

    # --- reading -------------------------------------------------------------------------

    def _shown(self, row: Row) -> dict[str, Any]:
        hosted = self.m.hosted(row.key)
        table = row.data["table"]
        sid = parse_service_id(row.key)
        version = table.get("version")
        r1 = f"/r1/{sid.provider}/{sid.service_code}"
        return {
            "service": row.key,
            "version": version,
            "adapter": table.get("adapter", "rest"),
            "url": table.get("url"),
            "timeout": table.get("timeout"),
            "disabled": table.get("disabled", False),
            "disabled_notice": table.get("disabled_notice"),
            "purposes": table.get("purposes", []),
            "legal_bases": table.get("legal_bases", []),
            "subject": table.get("subject", []),
            "answer_subject": table.get("answer_subject", []),
            "endpoints": table.get("endpoints", []),
            "allow": row.data.get("allow", []),
            "groups": row.data.get("groups", []),
            "global_groups": row.data.get("global_groups", []),
            "allowed_now": sorted(str(c) for c in hosted.config.allow) if hosted else [],
            "openapi": bool(row.data.get("openapi")) or bool(hosted and hosted.openapi),
            "source": row.data.get("source") or (row.data.get("soap") or {}).get("source"),
            "declared_by": "node configuration" if row.source == "file" else "admin API",
            "version_tag": row.version,
            "updated_at": row.updated_at,
            "updated_by": row.updated_by,
            # What a client system calls, through its own node.
            "call": [f"{r1}{e.partition(' ')[2]}" for e in table.get("endpoints", [])] or [r1],
        }

    async def list_services(self, request: web.Request) -> web.Response:
        return _json({"services": [self._shown(r) for r in self.m.rows()]})

    def _row(self, request: web.Request) -> Row:
        key = request.match_info["id"]
        row = self.m.row(key)
        if row is None:
            raise Refused(f"no service {key} on this node (node service list)", 404)
        return row

    async def show_service(self, request: web.Request) -> web.Response:
        row = self._row(request)
        return _json(self._shown(row), etag=row.version)

    # --- adding ----------------------------------------------------------------------------

    async def add_service(self, request: web.Request) -> web.Response:
        body = await _body(request)
        admin = request[ADMIN].name
        provider = _subsystem(body.get("provider"))
        if not self.m.hosted_here(provider):
            raise Refused(
                f"the global configuration does not list {provider} as a subsystem of this"
                " node, so no client could reach its services; register it at the central"
                " server first (xroad-hub node client add)",
                404,
            )
        common = _common(body)
        kinds = [k for k in ("openapi", "wsdl", "layout") if body.get(k) or body.get(f"{k}_url")]
        if len(kinds) != 1:
            raise Refused("give one of openapi (OpenAPI 3 JSON), wsdl or layout (a flat file)")
        if kinds[0] == "openapi":
            puts = await self._from_openapi(body, provider, common)
        elif kinds[0] == "wsdl":
            puts = await self._from_wsdl(body, provider, common)
        else:
            puts = self._from_layout(body, provider, common)
        codes = [p.key for p in puts]

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            for put in puts:
                if put.key in services:
                    raise Refused(
                        f"{put.key} is already a service code of this node (node service"
                        " refresh updates it from its changed description)",
                        409,
                    )
                assert put.data is not None
                for who in _grantees(put.data):
                    self.m.check_grantee(who, groups)
            return puts

        await self.m.change(admin, "service.add", change, services=codes)
        shown = [self._shown(r) for r in (self.m.row(c) for c in codes) if r is not None]
        return _json({"registered": shown}, status=201)

    async def _document(self, body: dict[str, Any], kind: str) -> tuple[bytes, str]:
        """The document sent (``kind``: its text) or the one at ``kind_url`` (a file path
        or URL the node reads)."""
        text, source = body.get(kind), body.get(f"{kind}_url")
        recorded = body.get("source")
        if isinstance(text, str) and text:
            # A sent document's recorded source is where a later refresh reads it again:
            # never a file of the node's own; a path outside service_file_dirs (say, on the
            # administrator's own machine) is not kept, so refreshing means sending it again.
            try:
                self._check_description(recorded or source)
            except OutsideFileDirs:
                recorded = source = None
            data = text.encode()
            if len(data) > _MAX_DOCUMENT:
                raise Refused(f"the {kind} document exceeds 5 MiB")
            return data, str(recorded or source or f"(sent {kind})")
        self._check_description(recorded or source)
        if not isinstance(source, str):
            raise Refused(f"{kind}: send the document's text, or {kind}_url")
        try:
            return await fetch_wsdl(source, timeout=10.0, max_bytes=_MAX_DOCUMENT), source
        except WsdlError as exc:
            raise Refused(f"cannot read {source}: {str(exc).replace('WSDL', kind)}") from exc

    async def _from_openapi(
        self, body: dict[str, Any], provider: SubsystemId, common: dict[str, Any]
    ) -> list[Put]:
        data, source = await self._document(body, "openapi")
        document = _openapi(data)
        url = body.get("url")
        if not isinstance(url, str) or not url:
            raise Refused("a REST service needs its backend's URL: url (--url)")
        operations = openapi_operations(document)
        code = body.get("code")
        by_code: dict[str, list[str]] = {}
        if code:
            by_code[_code(code)] = [e for _, e in operations]
        else:
            missing = [e for op, e in operations if not op]
            if missing:
                raise Refused(
                    f"operations without operationId: {', '.join(missing)}; give each one, or"
                    " register the document under one service code (--code)"
                )
            for op, endpoint in operations:
                assert op is not None
                by_code.setdefault(_code(op, "operationId"), []).append(endpoint)
        # Kept whatever becomes of the change: documents are stored by digest, once.
        sha = await asyncio.to_thread(self.m.store.put_document, orjson.dumps(document))
        puts = []
        for c, endpoints in by_code.items():
            table = {**common["table"], "id": f"{provider}/{c}", "adapter": "rest", "url": url}
            table["endpoints"] = endpoints
            data_row = {**common["row"], "table": table, "openapi": sha, "source": source}
            if code:
                data_row["code"] = c  # refreshed under the same code
            puts.append(Put(SERVICE, table["id"], None, data_row))
        return puts

    async def _from_wsdl(
        self, body: dict[str, Any], provider: SubsystemId, common: dict[str, Any]
    ) -> list[Put]:
        data, source = await self._document(body, "wsdl")
        mode = body.get("mode", "bridge")
        if mode not in ("bridge", "passthrough"):
            raise Refused("mode must be bridge or passthrough")
        try:
            info = load_wsdl(data, source)  # today's checks and refusals
        except WsdlError as exc:
            raise Refused(f"the WSDL cannot be served: {exc}") from exc
        sha = await asyncio.to_thread(self.m.store.put_document, data)
        url = body.get("url") or None
        if not (url or info.endpoint):
            raise Refused("the WSDL names no endpoint (soap:address): give the service's url")
        puts = []
        for op in info.operations.values():
            table = {**common["table"], "id": f"{provider}/{op.name}", "adapter": "soap"}
            table["version"] = op.version or common["table"].get("version") or "v1"
            table["url"] = url or info.endpoint
            soap = {"wsdl": sha, "source": source, "mode": mode, "url": url}
            puts.append(Put(SERVICE, table["id"], None, {**common["row"], "table": table,
                                                          "soap": soap}))  # fmt: skip
        return puts

    def _from_layout(
        self, body: dict[str, Any], provider: SubsystemId, common: dict[str, Any]
    ) -> list[Put]:
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise Refused("options must be an object of flat-file settings")
        if not isinstance(body["layout"], str) or not isinstance(body.get("file") or "", str):
            raise Refused("layout and file are paths on the node's machine")
        options = {**options, "layout": body["layout"]}
        if body.get("file"):
            options["source"] = body["file"]
        unknown = set(options) - ADAPTER_OPTIONS["flatfile"]
        if unknown:
            raise Refused(f"unknown flat-file options: {', '.join(sorted(unknown))}")
        code = _code(body.get("code") or "records")
        self._check_readable(options)  # before anything says whether a file is there
        try:
            settings = FlatFileSettings.from_options(options)
        except (LayoutError, ValueError, TypeError) as exc:
            raise Refused(f"the flat-file settings cannot be served: {exc}") from exc
        if not settings.source.exists():
            # No export there: the service would have no backend to answer from.
            raise Refused(f"no export at {settings.source} on the node's machine (file)")
        table = {**common["table"], "id": f"{provider}/{code}", "adapter": "flatfile", **options}
        return [Put(SERVICE, table["id"], None, {**common["row"], "table": table})]

    # --- changing ----------------------------------------------------------------------------

    async def set_service(self, request: web.Request) -> web.Response:
        body = await _body(request)
        key = request.match_info["id"]
        expect = _if_match(request)
        settable = {
            "disabled", "disabled_notice", "url", "timeout", "purposes", "legal_bases",
            "subject", "answer_subject", "version",
        }  # fmt: skip
        unknown = set(body) - settable
        if unknown or not body:
            raise Refused(f"settable: {', '.join(sorted(settable))} (not {sorted(unknown)})")

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            row = _current(services, key, expect)
            table = {**row.data["table"], **body}
            if body.get("disabled") is False:
                table.pop("disabled_notice", None)
            return [Put(SERVICE, key, row.version, {**row.data, "table": table})]

        action = (
            "service.disable" if body.get("disabled") is True
            else "service.enable" if body.get("disabled") is False
            else "service.set"
        )  # fmt: skip
        await self.m.change(request[ADMIN].name, action, change, service=key, set=body)
        row = self.m.row(key)
        assert row is not None
        return _json(self._shown(row), etag=row.version)

    async def remove_service(self, request: web.Request) -> web.Response:
        key = request.match_info["id"]
        expect = _if_match(request)

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            row = _current(services, key, expect)
            return [Put(SERVICE, key, row.version, None)]

        await self.m.change(request[ADMIN].name, "service.remove", change, service=key)
        return _json({"removed": key})

    async def refresh(self, request: web.Request) -> web.Response:
        """Services registered from one description, read again from its source (or the
        document sent): changed operations are updated, new ones added with the same
        settings, vanished ones removed."""
        body = await _body(request)
        key = body.get("service")
        row = self.m.row(str(key)) if key else None
        if row is None:
            raise Refused(f"no service {key} on this node", 404)
        soap = row.data.get("soap")
        if not soap and not row.data.get("openapi"):
            raise Refused(f"{key} was not registered from a description: nothing to refresh")
        sid = parse_service_id(row.key)
        assert isinstance(sid.provider, SubsystemId)

        def sibling_of(r: Row) -> bool:
            """Registered with ``row``: one provider's, from one description (the same
            document, or the same WSDL's source), under one code or by operationIds. Another
            subsystem's or another code's registration of the same document is not refreshed,
            nor removed as an operation gone from it."""
            if parse_service_id(r.key).provider != sid.provider:
                return False
            if soap:
                # Sent WSDLs all have the source "(sent wsdl)": their documents tell them apart.
                theirs = r.data.get("soap") or {}
                return all(theirs.get(k) == soap.get(k) for k in ("source", "wsdl"))
            same = ("openapi", "source", "code")
            return all(r.data.get(k) == row.data.get(k) for k in same)

        common = {
            "table": {
                k: v for k, v in row.data["table"].items()
                if k not in ("id", "endpoints", "adapter")
            },
            "row": {k: v for k, v in row.data.items() if k in _RIGHTS.values()},
        }  # fmt: skip
        if soap:
            new_body = {"wsdl": body.get("document"), "wsdl_url": soap["source"]}
            new_body["mode"] = soap["mode"]
            new_body["url"] = soap.get("url")
            puts = await self._from_wsdl(new_body, sid.provider, common)
        else:
            new_body = {
                "openapi": body.get("document"),
                "openapi_url": row.data.get("source"),
                "url": row.data["table"].get("url"),
            }
            if row.data.get("code"):
                new_body["code"] = row.data["code"]
            puts = await self._from_openapi(new_body, sid.provider, common)

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            out = []
            fresh = {p.key: p for p in puts}
            for k, r in services.items():
                if sibling_of(r) and k not in fresh:
                    out.append(Put(SERVICE, k, r.version, None))
            for k, p in fresh.items():
                had = services.get(k)
                assert p.data is not None
                if had is not None:
                    # The administrators' settings of an existing operation stand.
                    data = {**had.data, **{x: p.data[x] for x in ("openapi", "soap", "source")
                                          if x in p.data}}  # fmt: skip
                    data["table"] = {
                        **had.data["table"],
                        "endpoints": p.data["table"].get("endpoints", []),
                        "version": p.data["table"].get("version"),
                    }
                    out.append(Put(SERVICE, k, had.version, data))
                else:
                    out.append(p)
            return out

        written = await self.m.change(request[ADMIN].name, "service.refresh", change, service=key)
        return _json({"refreshed": [self._shown(r) for r in written]})

    # --- access rights -----------------------------------------------------------------------

    async def grant(self, request: web.Request) -> web.Response:
        return await self._access(request, grant=True)

    async def revoke(self, request: web.Request) -> web.Response:
        return await self._access(request, grant=False)

    async def _access(self, request: web.Request, *, grant: bool) -> web.Response:
        body = await _body(request)
        key, who = str(body.get("service", "")), str(body.get("to", ""))
        expect = _if_match(request)

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            row = _current(services, key, expect)
            rights = {k: list(row.data.get(f, [])) for k, f in _RIGHTS.items()}
            if grant:
                kind, name = self.m.check_grantee(who, groups)
                if name not in rights[kind]:
                    rights[kind].append(name)
            else:
                kind, name = _grantee(who)
                if name not in rights[kind]:
                    raise Refused(f"{who} holds no access right to {key} on this node", 404)
                rights[kind].remove(name)
            data = {**row.data, **{f: sorted(rights[k]) for k, f in _RIGHTS.items()}}
            return [Put(SERVICE, key, row.version, data)]

        action = "access.grant" if grant else "access.revoke"
        await self.m.change(request[ADMIN].name, action, change, service=key, to=who)
        row = self.m.row(key)
        assert row is not None
        return _json(self._shown(row), etag=row.version)

    async def list_access(self, request: web.Request) -> web.Response:
        wanted = request.query.get("service")
        rights = []
        for row in self.m.rows():
            if wanted and row.key != wanted:
                continue
            for who in row.data.get("allow", []):
                rights.append({"service": row.key, "to": who})
            for group in row.data.get("groups", []):
                rights.append({"service": row.key, "to": f"group:{group}"})
            for code in row.data.get("global_groups", []):
                rights.append({"service": row.key, "to": f"global:{code}"})
        return _json({"access": rights})

    # --- local groups --------------------------------------------------------------------

    async def list_groups(self, request: web.Request) -> web.Response:
        groups = self.m.groups()
        return _json({"groups": [_group(r) for r in groups.values()]})

    async def show_group(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        row = self.m.groups().get(name)
        if row is None:
            raise Refused(f"no local group {name!r} on this node", 404)
        return _json(_group(row), etag=row.version)

    async def add_group(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name = check_group_name(str(body.get("name", "")))
        description = str(body.get("description", ""))[:200]

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            if name in groups:
                raise Refused(f"local group {name!r} exists already", 409)
            return [Put(GROUP, name, None, {"members": [], "description": description})]

        await self.m.change(request[ADMIN].name, "group.add", change, group=name)
        return _json(_group(self.m.groups()[name]), status=201)

    async def change_members(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name = request.match_info["name"]
        adding, removing = body.get("add", []), body.get("remove", [])
        if not isinstance(adding, list) or not isinstance(removing, list):
            raise Refused('send {"add": [SUBSYSTEM...], "remove": [SUBSYSTEM...]}')
        expect = _if_match(request)

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            row = groups.get(name)
            if row is None:
                raise Refused(f"no local group {name!r} on this node", 404)
            if expect is not None and expect != row.version:
                raise Refused(f"group {name} is at version {row.version}, not {expect}", 412)
            members = set(row.data.get("members", []))
            for who in adding:
                kind, client = self.m.check_grantee(str(who), {})
                if kind != "client":
                    raise Refused("a local group holds subsystems, not groups")
                members.add(client)
            for who in removing:
                if str(who) not in members:
                    raise Refused(f"{who} is not a member of {name}", 404)
                members.discard(str(who))
            return [Put(GROUP, name, row.version, {**row.data, "members": sorted(members)})]

        await self.m.change(
            request[ADMIN].name, "group.members", change, group=name, add=adding, remove=removing
        )
        row = self.m.groups()[name]
        return _json(_group(row), etag=row.version)

    async def remove_group(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            row = groups.get(name)
            if row is None:
                raise Refused(f"no local group {name!r} on this node", 404)
            using = [k for k, r in services.items() if name in r.data.get("groups", [])]
            if using:
                raise Refused(
                    f"group {name} holds access rights to {', '.join(using)}; revoke them first",
                    409,
                )
            return [Put(GROUP, name, row.version, None)]

        await self.m.change(request[ADMIN].name, "group.remove", change, group=name)
        return _json({"removed": name})

    # --- hosted clients --------------------------------------------------------------------

    def _client_shown(self, row: Row) -> dict[str, Any]:
        data = row.data
        return {
            "client": row.key,
            "auth": data.get("auth"),
            "cert_sha256": data.get("cert_sha256"),
            "jwt_key": bool(data.get("jwt_key_pem")),
            "default_purpose": data.get("default_purpose"),
            "default_legal_basis": data.get("default_legal_basis"),
            "declared_by": "node configuration" if row.source == "file" else "admin API",
            "version_tag": row.version,
            "updated_by": row.updated_by,
        }

    async def list_clients(self, request: web.Request) -> web.Response:
        rows = self.m.client_rows().values()
        return _json({"clients": [self._client_shown(r) for r in rows]})

    async def show_client(self, request: web.Request) -> web.Response:
        key = request.match_info["id"]
        row = self.m.client_rows().get(key)
        if row is None:
            raise Refused(f"no client {key} registered on this node", 404)
        return _json(self._client_shown(row), etag=row.version)

    async def add_client(self, request: web.Request) -> web.Response:
        return await self._put_client(request, new=True)

    async def set_client(self, request: web.Request) -> web.Response:
        return await self._put_client(request, new=False)

    async def _put_client(self, request: web.Request, *, new: bool) -> web.Response:
        body = await _body(request)
        known = {"id", "auth", "cert", "jwt_key", "default_purpose", "default_legal_basis"}
        if set(body) - known:
            raise Refused(f"client settings: {', '.join(sorted(known))}")
        key = str(_subsystem(body.get("id") if new else request.match_info["id"]))
        expect = _if_match(request)

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            had = clients.get(key)
            if new and had is not None:
                raise Refused(f"client {key} is registered already (node clients set)", 409)
            if not new:
                if had is None:
                    raise Refused(f"no client {key} registered on this node", 404)
                if expect is not None and expect != had.version:
                    raise Refused(f"client {key} is at version {had.version}, not {expect}", 412)
            data = dict(had.data) if had else {}
            for name, field in (("auth", "auth"), ("cert", "cert_pem"),
                                ("jwt_key", "jwt_key_pem"), ("default_purpose", "default_purpose"),
                                ("default_legal_basis", "default_legal_basis")):  # fmt: skip
                if name in body:
                    data[field] = body[name]
            data.pop("cert_sha256", None)  # computed from the certificate in force
            return [Put(CLIENT, key, had.version if had else None, data)]

        action = "client.add" if new else "client.set"
        changed = sorted(k for k in body if k != "id")
        await self.m.change(request[ADMIN].name, action, change, client=key, set=changed)
        row = self.m.client_rows()[key]
        return _json(self._client_shown(row), status=201 if new else 200, etag=row.version)

    async def remove_client(self, request: web.Request) -> web.Response:
        key = request.match_info["id"]

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            had = clients.get(key)
            if had is None:
                raise Refused(f"no client {key} registered on this node", 404)
            return [Put(CLIENT, key, had.version, None)]

        await self.m.change(request[ADMIN].name, "client.remove", change, client=key)
        return _json({"removed": key})

    # --- export, import, status ------------------------------------------------------------

    async def export(self, request: web.Request) -> web.Response:
        rows = self.m.rows() + list(self.m.groups().values())
        rows += list(self.m.client_rows().values())
        documents = {}
        for row in rows:
            for sha in (row.data.get("openapi"), (row.data.get("soap") or {}).get("wsdl")):
                content = self.m.store.document(sha) if sha else None
                if content is not None:
                    documents[sha] = base64.b64encode(content).decode()
        return _json(
            {
                "format": EXPORT_FORMAT,
                "node": self.node_id,
                "settings": [
                    {"kind": r.kind, "key": r.key, "data": r.data, "source": r.source} for r in rows
                ],
                "documents": documents,
            }
        )

    async def import_(self, request: web.Request) -> web.Response:
        """Replace the node's services and groups by an export's (a restore)."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise Refused(f"the export is not JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("format") != EXPORT_FORMAT:
            raise Refused(f"not an export of node settings (format {EXPORT_FORMAT})")
        try:
            documents = {
                sha: base64.b64decode(content, validate=True)
                for sha, content in (body.get("documents") or {}).items()
            }
            wanted = {(s["kind"], s["key"]): s for s in body.get("settings", [])}
            for (kind, key), s in wanted.items():
                if kind not in (SERVICE, GROUP, CLIENT) or not isinstance(key, str):
                    raise ValueError(f"a setting of an unknown kind {kind!r}")
                if not isinstance(s["data"], dict) or (
                    kind == SERVICE and not isinstance(s["data"].get("table"), dict)
                ):
                    raise ValueError(f"{kind} {key} has no settings")
                if kind == SERVICE:
                    parse_service_id(key)
                    if s["data"]["table"].get("adapter") == "flatfile":
                        self._check_readable(s["data"]["table"])
                    # Where a refresh of the imported service would read its description.
                    self._check_description(s["data"].get("source"))
                    self._check_description((s["data"].get("soap") or {}).get("source"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Refused(f"the export is malformed: {exc}") from exc
        for sha, content in documents.items():
            if await asyncio.to_thread(self.m.store.put_document, content) != sha:
                raise Refused(f"document {sha[:12]} of the export does not match its digest")

        # As a registration through the API: only this node's subsystems' services (another
        # node's export, or a crafted one, would serve them here under rows nobody added).
        for kind, key in wanted:
            provider = parse_service_id(key).provider if kind == SERVICE else None
            if provider is not None and not self.m.hosted_here(provider):
                raise Refused(
                    f"the export holds {key}, but the global configuration does not list"
                    f" {provider} as a subsystem of this node"
                )

        def change(services: Rows, groups: Rows, clients: Rows) -> list[Put]:
            # As a grant through the API: rights and members the global configuration does
            # not know are refused (they would admit whoever registers that name later).
            imported_groups = {key: s for (k, key), s in wanted.items() if k == GROUP}
            for (kind, key), s in wanted.items():
                if kind == GROUP:
                    for member in _list(s["data"].get("members", []), f"group {key}'s members"):
                        if self.m.check_grantee(member, {})[0] != "client":
                            raise Refused(f"group {key}: a local group holds subsystems only")
                elif kind == SERVICE:
                    for who in _grantees(s["data"]):
                        self.m.check_grantee(who, imported_groups)
            puts = []
            for kind, current in ((SERVICE, services), (GROUP, groups), (CLIENT, clients)):
                for key, row in current.items():
                    if (kind, key) not in wanted:
                        puts.append(Put(kind, key, row.version, None))
                for (k, key), s in wanted.items():
                    if k == kind:
                        had = current.get(key)
                        # "Declared by the node's configuration" only where it is: a row an
                        # export merely claims so would be misattributed, and dropped at
                        # the next start as one the configuration no longer names.
                        by_file = s.get("source") == "file" and had is not None
                        source = "file" if by_file and had.source == "file" else "admin"
                        puts.append(Put(kind, key, had.version if had else None, s["data"],
                                        source=source))  # fmt: skip
            return puts

        await self.m.change(request[ADMIN].name, "settings.import", change, settings=len(wanted))
        return _json({"imported": len(wanted)})

    async def status(self, request: web.Request) -> web.Response:
        rows = self.m.rows()
        groups = self.m.groups()
        return _json(
            {
                "node": self.node_id,
                "settings_database": str(getattr(self.m.store, "path", "")),
                "services": len(rows),
                "disabled": [r.key for r in rows if r.data["table"].get("disabled")],
                "access_rights": sum(len(_grantees(r.data)) for r in rows),
                "groups": {name: len(r.data.get("members", [])) for name, r in groups.items()},
                "by_adapter": _count(r.data["table"].get("adapter", "rest") for r in rows),
                "clients": {k: r.data.get("auth") for k, r in self.m.client_rows().items()},
            }
        )


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _group(row: Row) -> dict[str, Any]:
    return {
        "name": row.key,
        "description": row.data.get("description", ""),
        "members": row.data.get("members", []),
        "version_tag": row.version,
        "updated_by": row.updated_by,
    }


def _current(services: Mapping[str, Row], key: str, expect: int | None) -> Row:
    row = services.get(key)
    if row is None:
        raise Refused(f"no service {key} on this node (node service list)", 404)
    if expect is not None and expect != row.version:
        raise Refused(
            f"{key} is at version {row.version}, not {expect}: someone changed it since you"
            " read it; read it again (node service show) and redo your change",
            412,
        )
    return row


def _if_match(request: web.Request) -> int | None:
    tag = request.headers.get("If-Match")
    if tag is None:
        return None
    digits = tag.strip().strip('"')
    if not digits.isdigit():
        raise Refused('If-Match must be the ETag of a GET, e.g. "3"', 400)
    return int(digits)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise Refused(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise Refused("the request body must be a JSON object")
    return body


def _subsystem(text: object) -> SubsystemId:
    try:
        return parse_subsystem_id(str(text or ""))
    except ValueError as exc:
        raise Refused(f"provider (INSTANCE/CLASS/MEMBER/SUBSYSTEM): {exc}") from exc


def _code(text: object, what: str = "service code") -> str:
    if not isinstance(text, str) or not valid_part(text) or re.search(r"[/\s]", text):
        raise Refused(f"{what} {text!r} cannot be a service code (identifier characters only)")
    return text


def _common(body: dict[str, Any]) -> dict[str, Any]:
    """The settings every service of one registration shares, checked as the node's
    configuration would check them."""
    if "answer_subject" not in body:
        raise Refused(
            "say where the answers name persons: answer_subject (--answer-subject"
            " json:records[*].citizen_id, or none if they name nobody)"
        )
    table: dict[str, Any] = {
        k: body[k]
        for k in (
            "timeout",
            "purposes",
            "legal_bases",
            "subject",
            "answer_subject",
            "version",
            "disabled",
        )
        if body.get(k) is not None
    }
    try:
        load_table(ServiceConfig, {**table, "id": "X/Y/Z/W/check", "url": "http://x"}, "service")
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    allow = body.get("allow") or []
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise Refused("allow must be a list of subsystems, group:NAME or global:CODE")
    rights: dict[str, list[str]] = {"allow": [], "groups": [], "global_groups": []}
    for who in allow:
        kind, name = _grantee(who)
        rights[_RIGHTS[kind]].append(name)
    return {"table": table, "row": {k: sorted(v) for k, v in rights.items()}}


# Where a service row keeps each kind of access right.
_RIGHTS = {"client": "allow", "group": "groups", "global": "global_groups"}


def _grantee(who: str) -> tuple[str, str]:
    """("group", NAME), ("global", CODE) or ("client", SUBSYSTEM) of ``group:NAME``,
    ``global:CODE`` or a subsystem (whose identifier holds no ':')."""
    kind, sep, name = who.partition(":")
    return (kind, name) if sep and kind in ("group", "global") else ("client", who)


def _grantees(data: Mapping[str, Any]) -> list[str]:
    return (
        _list(data.get("allow", []), "allow")
        + [f"group:{g}" for g in _list(data.get("groups", []), "groups")]
        + [f"global:{g}" for g in _list(data.get("global_groups", []), "global_groups")]
    )


def _list(value: object, what: str) -> list[str]:
    """A list of names as a row keeps it (an imported row may hold anything)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(f"{what} must be a list of names")
    return list(value)


def settings_app(
    manager: ServiceManager,
    node_id: str,
    private_dirs: Iterable[Path] = (),
    file_dirs: Iterable[Path] = (),
) -> web.Application:
    """``private_dirs``: where the node keeps its keys and data (no file is read there);
    ``file_dirs``: where files named by path may be read (service_file_dirs)."""
    api = _Api(manager, node_id, private_dirs, file_dirs)

    @web.middleware
    async def refusals(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as exc:
            return _json({"error": str(exc)}, status=exc.status)
        except Conflict as exc:
            return _json({"error": f"{exc}; read it again and redo your change"}, status=409)

    app = web.Application(middlewares=[refusals], client_max_size=12 * 1024 * 1024)
    r = app.router
    r.add_get("/services", api.list_services)
    r.add_post("/services", api.add_service)
    r.add_get("/services/{id:.+}", api.show_service)
    r.add_patch("/services/{id:.+}", api.set_service)
    r.add_delete("/services/{id:.+}", api.remove_service)
    r.add_post("/refresh", api.refresh)
    r.add_get("/access", api.list_access)
    r.add_post("/access", api.grant)
    r.add_post("/access/revoke", api.revoke)
    r.add_get("/groups", api.list_groups)
    r.add_post("/groups", api.add_group)
    r.add_get("/groups/{name}", api.show_group)
    r.add_patch("/groups/{name}", api.change_members)
    r.add_delete("/groups/{name}", api.remove_group)
    r.add_get("/clients", api.list_clients)
    r.add_post("/clients", api.add_client)
    r.add_get("/clients/{id:.+}", api.show_client)
    r.add_patch("/clients/{id:.+}", api.set_client)
    r.add_delete("/clients/{id:.+}", api.remove_client)
    r.add_get("/export", api.export)
    r.add_post("/import", api.import_)
    r.add_get("/status", api.status)
    return app
