"""Service administration at run time: the node's services, access rights and local groups
as rows of its settings database (settings.py), built into the set of services the node
serves (runtime.ServiceTable) and swapped whole on every change.

A change is checked completely before anything is written: the services it touches are
built (adapters, descriptions, answer-subject checks) and a failure refuses the change with
the rule it breaks. Then the rows are written, comparing versions (settings.Conflict), the
change is recorded in the node's admin audit trail, and the new set replaces the old one;
exchanges in flight finish with the set they started with, and adapters no longer used are
closed once they have (ServiceTable.retire).

Services declared in the node's configuration are imported when the node starts: a table
the file changed since the last import replaces the row (the file wins for the ids it names),
an unchanged one leaves the row as the administrators left it; a service gone from the file
is removed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from adapters import Adapter
from adapters.flatfile import FlatFileAdapter
from xroad_hub.errors import ConfigError, Unavailable
from xroad_hub.federation import ServiceConfig, SoapServiceConfig, load_table
from xroad_hub.node.runtime import HostedService, ServiceTable
from xroad_hub.node.settings import CLIENT, GROUP, SERVICE, Conflict, Put, Row, SettingsStore
from xroad_hub.protocol.identifiers import ClientId, ServiceId, parse_client_id, valid_part

__all__ = ["Refused", "ServiceManager", "service_table"]

log = structlog.get_logger("xroad_hub.node.services")


class Refused(ConfigError):
    """A change the node does not make, with the rule it breaks; nothing was changed (a
    ConfigError: at start, the node's configuration is what is refused)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Builder(Protocol):
    """What the node provides to build a service (node.Node)."""

    def build_service(
        self, cfg: ServiceConfig, row: dict[str, Any], documents: Mapping[str, bytes]
    ) -> HostedService: ...


@dataclass(frozen=True, slots=True)
class _Built:
    row: Row
    hosted: HostedService


# Keys of a service row's table that only decide who may call it and how: a change of
# these needs a new registration around the same adapter; a change of any other key (URL,
# timeout, version, answer subjects, a flat file's options...) a new adapter.
_CONFIG_ONLY = frozenset(
    ("disabled", "disabled_notice", "purposes", "legal_bases", "subject", "endpoints")
)


def service_table(cfg: ServiceConfig) -> dict[str, Any]:
    """A registration as its [[node.service]] table (what a settings row keeps)."""
    table: dict[str, Any] = {
        "id": str(cfg.id),
        "adapter": cfg.adapter,
        "timeout": cfg.timeout,
        "disabled": cfg.disabled,
        "disabled_notice": cfg.disabled_notice,
        "subject": [str(s) for s in cfg.subjects],
        "answer_subject": [str(s) for s in cfg.answer_subjects],
        "purposes": list(cfg.purposes),
        "legal_bases": list(cfg.legal_bases),
        "endpoints": list(cfg.endpoints),
        # Access rights (allow, global groups) are the row's own data, not its table's.
        # A SOAP operation's options (mode, WSDL) are its row's "soap" data.
        **(cfg.options if cfg.adapter != "soap" else {}),
    }
    if cfg.url:
        table["url"] = cfg.url
    if cfg.version is not None:
        table["version"] = cfg.version
    if cfg.slo is not None:
        table["slo"] = {k: v for k, v in cfg.slo.as_dict().items() if v is not None}
    return table


def _digest(value: object) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ServiceManager:
    """The node's services from its settings database; every change through ``change``."""

    def __init__(
        self,
        store: SettingsStore,
        builder: Builder,
        table: ServiceTable,
        *,
        known_client: Callable[[ClientId], bool],
        hosted_here: Callable[[ClientId], bool] = lambda _: True,
        global_group: Callable[[str], bool] = lambda _: False,
        record: Callable[..., Awaitable[None]] | None = None,
        on_new_adapter: Callable[[Adapter], None] | None = None,
    ) -> None:
        self.store = store
        self.builder = builder
        self.table = table
        self.known_client = known_client
        self.hosted_here = hosted_here  # the global configuration lists it as this node's
        self.global_group = global_group  # the global configuration defines it
        self.record = record  # the admin audit trail's record(admin, action, **detail)
        self.on_new_adapter = on_new_adapter
        # Told of every new set of services (the node's monitoring follows it).
        self.on_swap: Callable[[Mapping[ServiceId, HostedService]], None] | None = None
        self._built: dict[str, _Built] = {}
        self._clients: dict[str, Row] = {}
        self._generation = -1  # the store's, as last taken in
        # ``prepare_clients(rows, changed)``: checks the hosted clients' rows (those in
        # ``changed`` as new registrations) and returns what puts them in force (node.py).
        self.prepare_clients: Callable[[Mapping[str, Row], set[str]], Callable[[], None]] | None = (
            None
        )
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    # --- reading ------------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        return [b.row for b in self._built.values()]

    def row(self, key: str) -> Row | None:
        built = self._built.get(key)
        return built.row if built else None

    def hosted(self, key: str) -> HostedService | None:
        built = self._built.get(key)
        return built.hosted if built else None

    def groups(self) -> dict[str, Row]:
        return {r.key: r for r in self.store.rows(GROUP)}

    # --- start and stop --------------------------------------------------------------------

    async def start(
        self,
        declared: Iterable[tuple[ServiceConfig, dict[str, Any]]],
        clients: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        """Import the services (each with its row's extra data: access rights, documents)
        and hosted clients the node's configuration declares, then build and serve every
        service of the store."""
        services = {}
        for cfg, extra in declared:
            services[str(cfg.id)] = {"table": service_table(cfg), **extra}
        await self._import(SERVICE, services)
        await self._import(CLIENT, dict(clients or {}))
        self._generation = await asyncio.to_thread(self.store.generation)
        rows = await asyncio.to_thread(self.store.rows, SERVICE)
        built = await self._build({r.key: r for r in rows}, None)
        self._built = built
        self.table.swap({_service_id(b): b.hosted for b in built.values()})
        self._clients = {r.key: r for r in await asyncio.to_thread(self.store.rows, CLIENT)}

    async def follow(self, interval: float = 0.5) -> None:
        """Take in changes another process of this node made to the shared settings (run
        as a task): every ``interval`` seconds, one read of the store's generation."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except Unavailable as exc:  # the database is down: keep serving what was read
                log.warning("services.store_unavailable", error=str(exc))
            except Exception:  # a change that cannot be built here: keep serving, say so
                log.exception("services.reload_failed")

    async def reload(self) -> bool:
        """The rows as the store has them now, if another process changed them."""
        async with self._lock:
            generation = await asyncio.to_thread(self.store.generation)
            if generation == self._generation:
                return False
            services = {r.key: r for r in await asyncio.to_thread(self.store.rows, SERVICE)}
            groups = await asyncio.to_thread(self.groups)
            clients = {r.key: r for r in await asyncio.to_thread(self.store.rows, CLIENT)}
            built = await self._build(services, groups)
            commit_clients = None
            if clients != self._clients and self.prepare_clients is not None:
                try:
                    commit_clients = self.prepare_clients(clients, set())
                except BaseException:
                    await self._close_new(built)
                    raise
            self._swap(built)
            if commit_clients is not None:
                commit_clients()
            self._clients = clients
            self._generation = generation
            log.info("services.reloaded", services=len(built))
            return True

    async def _import(
        self, kind: str, declared: Mapping[str, dict[str, Any]], *, retry: bool = True
    ) -> None:
        """The file wins for what it names when it changed since the last import; what it
        no longer names and it had declared goes."""
        existing = {r.key: r for r in await asyncio.to_thread(self.store.rows, kind)}
        puts = []
        for key, data in declared.items():
            data = {**data, "file_sha": _digest(data)}
            had = existing.get(key)
            if had is not None and had.data.get("file_sha") == data["file_sha"]:
                continue  # the file says what it said: the administrators' changes stand
            puts.append(Put(kind, key, had.version if had else None, data, source="file"))
        for key, had in existing.items():
            if had.source == "file" and key not in declared:
                puts.append(Put(kind, key, had.version, None, source="file"))
        if puts:
            try:
                await asyncio.to_thread(self.store.apply, puts, "node configuration")
            except Conflict:
                # Another process of this node, started from the same file, imported it
                # first: once more, from what it wrote (then usually nothing is left to do).
                if retry:
                    await self._import(kind, declared, retry=False)
                else:
                    raise

    def client_rows(self) -> dict[str, Row]:
        return dict(self._clients)

    async def close(self) -> None:
        for task in list(self._retiring):
            await task
        for built in self._built.values():
            await built.hosted.adapter.close()
        self._built = {}

    # --- changing ----------------------------------------------------------------------------

    async def change(
        self,
        admin: str,
        action: str,
        puts: Callable[[Mapping[str, Row], Mapping[str, Row], Mapping[str, Row]], list[Put]],
        **detail: Any,
    ) -> list[Row]:
        """Make one change: ``puts(services, groups, clients)`` says what to write, from the
        rows in force (it raises Refused for a change the node does not make). Serialised,
        so that every change is made from the rows the previous one left."""
        async with self._lock:
            services = {k: b.row for k, b in self._built.items()}
            groups = await asyncio.to_thread(self.groups)
            try:
                wanted = puts(services, groups, dict(self._clients))
            except Refused as exc:
                await self._refused(admin, action, exc, detail)
                raise
            after = {SERVICE: dict(services), GROUP: dict(groups), CLIENT: dict(self._clients)}
            for put in wanted:
                target = after[put.kind]
                if put.data is None:
                    target.pop(put.key, None)
                else:
                    old = target.get(put.key)
                    target[put.key] = Row(
                        put.kind, put.key, (old.version if old else 0) + 1, put.data,
                        put.source, 0.0, admin,
                    )  # fmt: skip
            # Built (and so checked) before anything is written or recorded.
            try:
                built = await self._build(after[SERVICE], after[GROUP])
            except Refused as exc:
                await self._refused(admin, action, exc, detail)
                raise
            commit_clients = None
            try:
                if any(p.kind == CLIENT for p in wanted) and self.prepare_clients is not None:
                    changed = {p.key for p in wanted if p.kind == CLIENT and p.data is not None}
                    try:
                        commit_clients = self.prepare_clients(after[CLIENT], changed)
                    except ConfigError as exc:
                        await self._refused(admin, action, exc, detail)
                        raise
                # Recorded before it is made: a trail that cannot be written refuses it.
                if self.record is not None:
                    await self.record(admin, action, **detail)
                try:
                    written = await asyncio.to_thread(self.store.apply, wanted, admin)
                except Conflict as exc:
                    # The trail says the change did not happen, and why.
                    if self.record is not None:
                        await self.record(admin, f"{action}.refused", reason=str(exc))
                    raise
            except BaseException:
                await self._close_new(built)
                raise
            # Rows carry the store's versions and times.
            for row in written:
                if row.kind == SERVICE and row.key in built:
                    built[row.key] = _Built(row, built[row.key].hosted)
                if row.kind == CLIENT:
                    after[CLIENT][row.key] = row
            self._swap(built)
            if commit_clients is not None:
                commit_clients()
            self._clients = after[CLIENT]
            # This process made the change: nothing of it for follow() to take in, unless
            # another process changed the settings meanwhile (then all is read again).
            generation = await asyncio.to_thread(self.store.generation)
            if generation == self._generation + 1:
                self._generation = generation
            log.info("services.changed", action=action, admin=admin, services=len(built))
            return written

    async def _refused(
        self, admin: str, action: str, exc: Exception, detail: Mapping[str, Any]
    ) -> None:
        """The trail holds what an administrator was refused too, and why: who tried to
        grant what to whom is part of the node's administration record."""
        if self.record is not None:
            await self.record(admin, f"{action}.refused", reason=str(exc), **detail)

    def _swap(self, built: dict[str, _Built]) -> None:
        old = self._built
        kept = {id(b.hosted.adapter) for b in built.values()}
        gone = [b.hosted.adapter for b in old.values() if id(b.hosted.adapter) not in kept]
        self._built = built
        self.table.swap({_service_id(b): b.hosted for b in built.values()})
        if self.on_swap is not None:
            self.on_swap(self.table)
        if gone:
            task = asyncio.get_running_loop().create_task(self.table.retire(gone))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _close_new(self, built: dict[str, _Built]) -> None:
        current = {id(b.hosted.adapter) for b in self._built.values()}
        for b in built.values():
            if id(b.hosted.adapter) not in current:
                await b.hosted.adapter.close()

    async def _build(
        self, rows: Mapping[str, Row], groups: Mapping[str, Row] | None
    ) -> dict[str, _Built]:
        """Every service of ``rows``, reusing the adapter of a service whose backend did not
        change; a service that cannot be built refuses the whole set."""
        if groups is None:
            groups = await asyncio.to_thread(self.groups)
        members = {name: r.data.get("members", []) for name, r in groups.items()}
        built: dict[str, _Built] = {}
        new: list[Adapter] = []
        try:
            for key, row in rows.items():
                try:
                    cfg = _config(row, members)
                except ConfigError as exc:
                    raise Refused(str(exc)) from exc
                except (KeyError, TypeError, AttributeError) as exc:  # an imported row
                    raise Refused(f"service {key}: malformed settings ({exc!r})") from exc
                was = self._built.get(key)
                same_backend = (
                    was is not None
                    and _backend(was.row) == _backend(row)
                    and all(was.row.data.get(k) == row.data.get(k) for k in ("openapi", "soap"))
                )
                if was is not None and same_backend:
                    hosted = dataclasses.replace(was.hosted, config=cfg)
                else:
                    documents = await asyncio.to_thread(self._documents, row)
                    try:
                        hosted = self.builder.build_service(cfg, row.data, documents)
                    except (ConfigError, ValueError) as exc:
                        text = str(exc)
                        raise Refused(
                            text if text.startswith(f"service {key}") else f"service {key}: {text}"
                        ) from exc
                    new.append(hosted.adapter)
                    if isinstance(hosted.adapter, FlatFileAdapter):
                        await hosted.adapter.start()
                    if self.on_new_adapter is not None:
                        self.on_new_adapter(hosted.adapter)
                built[key] = _Built(row, hosted)
        except BaseException:
            for adapter in new:
                await adapter.close()
            raise
        return built

    def _documents(self, row: Row) -> dict[str, bytes]:
        found = {}
        for sha in (row.data.get("openapi"), (row.data.get("soap") or {}).get("wsdl")):
            if sha:
                content = self.store.document(sha)
                if content is None:
                    raise Refused(f"service {row.key}: its document {sha[:12]} is missing")
                found[sha] = content
        return found

    # --- what a change checks ----------------------------------------------------------------

    def check_grantee(self, who: str, groups: Mapping[str, object]) -> tuple[str, str]:
        """("client", id), ("group", name) or ("global", code) of a grant; unknown ones are
        refused."""
        if who.startswith("global:"):
            code = who.removeprefix("global:")
            if not self.global_group(code):
                raise Refused(
                    f"no global group {code!r} in the global configuration (central servers"
                    " define them: xroad-hub central group add)",
                    404,
                )
            return "global", code
        if who.startswith("group:"):
            name = who.removeprefix("group:")
            if name not in groups:
                raise Refused(f"no local group {name!r} on this node (node group add)", 404)
            return "group", name
        try:
            client = parse_client_id(who)
        except ValueError as exc:
            raise Refused(f"{who!r}: {exc}") from exc
        if not self.known_client(client):
            raise Refused(
                f"{client} is not a subsystem of the federation (not in the global"
                " configuration); register it at the central server first",
                404,
            )
        return "client", str(client)


def _backend(row: Row) -> dict[str, Any]:
    return {k: v for k, v in row.data["table"].items() if k not in _CONFIG_ONLY}


def _service_id(built: _Built) -> ServiceId:
    return built.hosted.config.id


def _config(row: Row, members: Mapping[str, list[str]]) -> ServiceConfig:
    """The registration in force for a row: its access rights with its groups' members."""
    table = dict(row.data["table"])
    allow = set(row.data.get("allow", []))
    for group in row.data.get("groups", []):
        allow.update(members.get(group, []))
    # Global groups are resolved per request, from the global configuration in force.
    table["allow_global_group"] = sorted(row.data.get("global_groups", []))
    adapter = table.get("adapter", "rest")
    if adapter == "soap":
        # A SOAP operation's registration: the adapter is built from its WSDL.
        table.pop("adapter")
        cfg = load_table(
            ServiceConfig,
            {**table, "url": table.get("url") or "http://wsdl.invalid", "allow": sorted(allow)},
            f"service {row.key}",
        )
        soap = row.data.get("soap") or {}
        _keyed(row, cfg)
        return dataclasses.replace(
            cfg,
            adapter="soap",
            url=table.get("url", ""),
            options={"mode": soap.get("mode", "bridge"), "wsdl": soap.get("source", "")},
        )
    return _keyed(
        row, load_table(ServiceConfig, {**table, "allow": sorted(allow)}, f"service {row.key}")
    )


def _keyed(row: Row, cfg: ServiceConfig) -> ServiceConfig:
    """A row serves the service it is listed, granted and audited as: a table naming
    another id (an imported row) would serve that one, with this row's access rights."""
    if str(cfg.id) != row.key:
        raise ConfigError(f"service {row.key}: its settings name another service, {cfg.id}")
    return cfg


def soap_registration(cfg: ServiceConfig, soap: Mapping[str, Any]) -> SoapServiceConfig:
    """The SoapServiceConfig the node's SOAP builder takes, for one operation's row."""
    return SoapServiceConfig(
        provider=cfg.id.provider,  # type: ignore[arg-type]
        wsdl=str(soap.get("source", "")),
        mode=str(soap.get("mode", "bridge")),
        url=soap.get("url"),
        version=cfg.version or "v1",
        timeout=cfg.timeout,
        allow=cfg.allow,
        disabled=cfg.disabled,
        purposes=cfg.purposes,
        subjects=cfg.subjects,
        answer_subjects=cfg.answer_subjects,
        slo=cfg.slo,
    )


def check_group_name(name: str) -> str:
    if not valid_part(name):
        raise Refused(f"group name {name!r} must use identifier characters only")
    return name


def read_document(source: str, limit: int) -> bytes:
    """A description document from a file (URLs are fetched by the caller)."""
    path = Path(source)
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise Refused(f"cannot read {source}: {exc.strerror}") from exc
    if len(data) > limit:
        raise Refused(f"{source} exceeds {limit // (1024 * 1024)} MiB")
    return data
