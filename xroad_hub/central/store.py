"""The central server's database: members, nodes, subsystems, registration requests, issued
certificates, revocations and the administration audit trail.

``CentralStore`` is the interface the central server uses; ``SqliteCentralStore`` is its
SQLite implementation (a file of mode 0600), ``PostgresCentralStore`` (central/pgstore.py)
its PostgreSQL one. Both run the same SQL (portable: no ``INSERT OR REPLACE``, no
``COLLATE NOCASE``, no ``lastrowid``); only the schema, the connection and how a write
transaction shuts other writers out differ. Each
operation is one short transaction; the checks that decide a request (node code free, nonce
unused, request still pending) run inside the transaction that changes the rows, so two
concurrent requests or approvals cannot both pass.

The audit trail is append-only and hash-chained: each entry's ``hash`` covers the previous
entry's hash and its own fields, so an edited or deleted entry breaks the chain
(``verify_audit``).
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from xroad_hub.errors import HubError, Unavailable
from xroad_hub.privatefile import ensure_private
from xroad_hub.protocol.registration import (
    RegistrationError,
    address_host,
    request_fingerprint,
)

__all__ = [
    "AuditEntry",
    "CentralStore",
    "CertRow",
    "IssuedCert",
    "NodeRow",
    "RequestRow",
    "SqliteCentralStore",
    "StoreError",
    "StoreUnavailable",
]

SUBMITTED, APPROVED, DECLINED, CANCELLED = "SUBMITTED", "APPROVED", "DECLINED", "CANCELLED"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL, state TEXT NOT NULL, server TEXT NOT NULL, client TEXT,
    address TEXT, auth_csr TEXT, sign_csr TEXT, auth_key_sha256 TEXT,
    signed TEXT NOT NULL, received_at TEXT NOT NULL,
    decided_at TEXT, decided_by TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, member TEXT NOT NULL REFERENCES members(id),
    address TEXT NOT NULL, request_id INTEGER NOT NULL REFERENCES requests(id),
    registered_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subsystems (
    id TEXT PRIMARY KEY, member TEXT NOT NULL REFERENCES members(id),
    node TEXT NOT NULL REFERENCES nodes(id), request_id INTEGER REFERENCES requests(id),
    registered_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY, request_id INTEGER NOT NULL REFERENCES requests(id),
    purpose TEXT NOT NULL, subject TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL, not_before TEXT NOT NULL, not_after TEXT NOT NULL,
    issued_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (
    serial TEXT PRIMARY KEY REFERENCES certificates(serial),
    revoked_at TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, seen_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS admins (
    name TEXT PRIMARY KEY, key_sha256 TEXT NOT NULL UNIQUE, roles TEXT NOT NULL,
    added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS admin_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, admin TEXT NOT NULL,
    action TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
-- A revocation is final: nothing, not even the central operator's own tools, undoes it.
CREATE TRIGGER IF NOT EXISTS revocations_final_update BEFORE UPDATE ON revocations
    BEGIN SELECT RAISE(ABORT, 'a revocation is final'); END;
CREATE TRIGGER IF NOT EXISTS revocations_final_delete BEFORE DELETE ON revocations
    BEGIN SELECT RAISE(ABORT, 'a revocation is final'); END;
CREATE UNIQUE INDEX IF NOT EXISTS one_pending_per_server
    ON requests(server) WHERE state = 'SUBMITTED' AND type = 'authCertReg';
CREATE UNIQUE INDEX IF NOT EXISTS one_pending_per_client
    ON requests(client) WHERE state = 'SUBMITTED' AND type = 'clientReg';
"""


class StoreError(HubError):
    """The central database cannot be used (missing, not initialised)."""


class StoreUnavailable(StoreError, Unavailable):
    """The central database failed during an operation or cannot be reached."""


# Hosts every TLS certificate the CA issues names anyway (pki.issue_cert; the development
# federation's nodes share them); any other host is one member's: its node's certificate is
# what the admin CLI and the nodes (for the central server) check a host name against.
SHARED_HOSTS = frozenset({"localhost", "127.0.0.1"})


@dataclass(frozen=True, slots=True)
class RequestRow:
    id: int
    type: str
    state: str
    server: str
    client: str | None
    address: str | None
    auth_csr: str | None
    sign_csr: str | None
    received_at: str
    decided_at: str | None
    decided_by: str | None
    reason: str | None
    checkpoint_csr: str | None = None

    @property
    def fingerprint(self) -> str | None:
        """The keys' fingerprint the node's operator was shown when filing (node init, key
        rotation): the registration officer compares it by phone with the member before
        approving. None: the request carries no key (subsystem registrations)."""
        if not (self.auth_csr or self.sign_csr):
            return None
        return request_fingerprint(self.auth_csr, self.sign_csr, self.checkpoint_csr)


@dataclass(frozen=True, slots=True)
class IssuedCert:
    serial: str
    purpose: str  # "auth" | "sign" | "checkpoint" | "client"
    subject: str
    sha256: str
    pem: str
    not_before: str
    not_after: str


@dataclass(frozen=True, slots=True)
class CertRow:
    """An issued certificate as the operator lists it, with its revocation if any."""

    serial: str
    request_id: int
    purpose: str  # "auth" | "sign" | "checkpoint" | "client"
    subject: str  # the node id (auth, checkpoint), the member id (sign), the subsystem (client)
    server: str  # the node whose request it was issued for
    sha256: str
    issued_at: str
    revoked_at: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class NodeRow:
    id: str
    address: str
    auth_cert_pem: str
    clients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: str
    admin: str
    action: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class CentralStore(Protocol):
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def add_member(self, member: str, name: str, admin: str) -> None: ...
    def members(self) -> dict[str, str]: ...
    def add_admin(self, name: str, key_sha256: str, roles: list[str], admin: str) -> None: ...
    def admins(self) -> list[tuple[str, str, list[str]]]: ...
    def file_request(
        self, kind: str, server: str, nonce: str, signed: bytes, *, client: str | None = None,
        address: str | None = None, auth_csr: str | None = None,
        sign_csr: str | None = None, auth_key_sha256: str | None = None,
        checkpoint_csr: str | None = None,
    ) -> int: ...  # fmt: skip
    def request(self, request_id: int) -> RequestRow | None: ...
    def requests(self, state: str | None = None) -> list[RequestRow]: ...
    def certificates(self, request_id: int) -> list[IssuedCert]: ...
    def approve(self, request_id: int, admin: str, certs: list[IssuedCert]) -> RequestRow: ...
    def decline(self, request_id: int, admin: str, reason: str) -> RequestRow: ...
    def cancel(self, request_id: int, server: str, nonce: str) -> RequestRow: ...
    def node_auth_pem(self, node: str) -> str | None: ...
    def node_sign_pem(self, node: str) -> str | None: ...
    def node_address(self, node: str) -> str | None: ...
    def nodes(self) -> list[NodeRow]: ...
    def certs(self) -> list[CertRow]: ...
    def revoke(self, serials: list[str], admin: str, reason: str) -> list[CertRow]: ...
    def record_client_cert(
        self, node: str, subsystem: str, csr_pem: str, cert: IssuedCert, admin: str
    ) -> None: ...
    def audit(self, admin: str, action: str, **detail: Any) -> None: ...
    def audit_entries(self) -> list[AuditEntry]: ...
    def audit_head(self) -> int: ...


# A connection the store's SQL runs on: sqlite3's, or pgstore's PgConnection (which takes
# the same ``?`` placeholders).
_Db = Any


def _one(cursor: Any) -> Any:
    """The first row, reading the cursor to its end: a half-read SELECT keeps its read
    snapshot open in SQLite, and the server would not see what the CLI committed since."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _entry_hash(prev: str, at: str, admin: str, action: str, detail: str) -> str:
    return hashlib.sha256(orjson.dumps([prev, at, admin, action, detail])).hexdigest()


def verify_audit(entries: list[AuditEntry]) -> None:
    """Raise StoreError at the first entry that does not chain onto the one before."""
    prev = ""
    for e in entries:
        detail = orjson.dumps(e.detail, option=orjson.OPT_SORT_KEYS).decode()
        if e.prev_hash != prev or e.hash != _entry_hash(prev, e.at, e.admin, e.action, detail):
            raise StoreError(f"admin audit trail broken at entry {e.seq}")
        prev = e.hash


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """One operation at a time on the connection: the server calls the store from worker
    threads, and two interleaved transactions on one connection would be one."""

    @functools.wraps(method)
    def wrapper(self: SqliteCentralStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            # A connection per operation: no read snapshot outlives it, so the server sees
            # at once what the CLI (another process) committed.
            self._db = self._connect()
            try:
                return method(self, *args, **kwargs)
            finally:
                self._end()

    return wrapper  # type: ignore[return-value]


class SqliteCentralStore:
    """CentralStore in one SQLite file (WAL; the CLI and the running server share it)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not path.exists():
            raise StoreError(
                f"{path} does not exist; run 'xroad-hub central init --dir {path.parent}' first"
            )
        ensure_private(path, sqlite=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL").fetchall()
        self._db.executescript(SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(requests)").fetchall()}
        if "checkpoint_csr" not in columns:  # a database made before checkpoint keys enrolled
            self._db.execute("ALTER TABLE requests ADD COLUMN checkpoint_csr TEXT")
        self._db.close()
        ensure_private(path, sqlite=True)  # the -wal/-shm files WAL mode just made

    def _connect(self) -> _Db:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000").fetchall()
        return db

    def _end(self) -> None:
        self._db.close()

    def close(self) -> None:
        """Nothing stays open between operations; kept for stores that pool connections."""

    @contextmanager
    def _tx(self) -> Iterator[_Db]:
        # IMMEDIATE: the write lock is taken before the checks, so they hold until commit.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @_locked
    def get_meta(self, key: str) -> str | None:
        row = _one(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)))
        return None if row is None else str(row[0])

    @_locked
    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value),
            )  # fmt: skip

    @_locked
    def add_member(self, member: str, name: str, admin: str) -> None:
        with self._tx() as db:
            if _one(db.execute("SELECT 1 FROM members WHERE id = ?", (member,))):
                raise RegistrationError("Duplicate", f"member {member} is already admitted", 409)
            db.execute("INSERT INTO members VALUES (?, ?, ?)", (member, name, _now()))
            self._audit(db, admin, "member.add", {"member": member, "name": name})

    @_locked
    def members(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT id, name FROM members ORDER BY id").fetchall())

    @_locked
    def add_admin(self, name: str, key_sha256: str, roles: list[str], admin: str) -> None:
        with self._tx() as db:
            # A new key for a name replaces its old one (and a key is one administrator's).
            db.execute("DELETE FROM admins WHERE name = ? OR key_sha256 = ?", (name, key_sha256))
            db.execute(
                "INSERT INTO admins VALUES (?, ?, ?, ?)",
                (name, key_sha256, orjson.dumps(sorted(roles)).decode(), _now()),
            )
            self._audit(db, admin, "admin.add", {"name": name, "roles": sorted(roles)})

    @_locked
    def admins(self) -> list[tuple[str, str, list[str]]]:
        rows = self._db.execute("SELECT name, key_sha256, roles FROM admins").fetchall()
        return [(n, k, list(orjson.loads(r))) for n, k, r in rows]

    @_locked
    def file_request(
        self, kind: str, server: str, nonce: str, signed: bytes, *, client: str | None = None,
        address: str | None = None, auth_csr: str | None = None,
        sign_csr: str | None = None, auth_key_sha256: str | None = None,
        checkpoint_csr: str | None = None,
    ) -> int:  # fmt: skip
        """Record a verified request as SUBMITTED, or refuse it (replay, unknown member,
        code or subsystem taken) leaving the database as it was."""
        owner = server.rsplit("/", 1)[0]
        with self._tx() as db:
            if _one(db.execute("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,))):
                raise RegistrationError(
                    "Replay", "this request was received before (its nonce is used); make a "
                    "new one", 409,
                )  # fmt: skip
            member = client.rsplit("/", 1)[0] if client else owner
            if not _one(db.execute("SELECT 1 FROM members WHERE id = ?", (member,))):
                raise RegistrationError(
                    "UnknownMember",
                    f"{member} is not a member of the federation; the central operator must "
                    "admit it first (xroad-hub central member add)",
                    403,
                )
            if kind == "authCertReg":
                # Codes that differ only in case are one code: an operator reading "HUB1"
                # next to "hub1" in a list of requests or a TLS name would take them for one.
                taken_as = _one(db.execute(
                    "SELECT id FROM nodes WHERE lower(id) = lower(?)", (server,)
                ))  # fmt: skip
                if taken_as:
                    raise RegistrationError(
                        "Duplicate", f"node code {server} is already registered"
                        + (f" (as {taken_as[0]})" if taken_as[0] != server else ""), 409,
                    )  # fmt: skip
                pending = _one(db.execute(
                    "SELECT id FROM requests WHERE lower(server) = lower(?) "
                    "AND type = 'authCertReg' "
                    "AND state = 'SUBMITTED'", (server,),
                ))  # fmt: skip
                if pending:
                    raise RegistrationError(
                        "Duplicate", f"request {pending[0]} for node {server} is already "
                        "pending", 409,
                    )  # fmt: skip
                taken = _one(db.execute(
                    "SELECT id FROM requests WHERE auth_key_sha256 = ? AND state IN "
                    "('SUBMITTED', 'APPROVED')", (auth_key_sha256,),
                ))  # fmt: skip
                if taken:
                    raise RegistrationError(
                        "Duplicate", "this authentication key is already in a request", 409
                    )
                self._check_host(db, address or "", owner, pending=True)
            elif kind == "certRotation":
                registered = _one(db.execute("SELECT address FROM nodes WHERE id = ?",
                                             (server,)))  # fmt: skip
                if not registered:
                    raise RegistrationError(
                        "UnknownServer", f"{server} is not a registered node", 403
                    )
                address = str(registered[0])
                purpose = "auth" if auth_csr else "sign"
                pending = _one(db.execute(
                    "SELECT id FROM requests WHERE server = ? AND type = 'certRotation' "
                    "AND state = 'SUBMITTED' AND (auth_csr IS NOT NULL) = ?",
                    (server, purpose == "auth"),
                ))  # fmt: skip
                if pending:
                    raise RegistrationError(
                        "Duplicate", f"rotation request {pending[0]} of {server}'s {purpose} key "
                        "is already pending", 409,
                    )  # fmt: skip
                if auth_key_sha256 and _one(db.execute(
                    "SELECT id FROM requests WHERE auth_key_sha256 = ? AND state IN "
                    "('SUBMITTED', 'APPROVED')", (auth_key_sha256,),
                )):  # fmt: skip
                    raise RegistrationError(
                        "Duplicate", "this authentication key is already in a request", 409
                    )
            elif kind == "clientReg":
                if _one(db.execute(
                    "SELECT 1 FROM subsystems WHERE lower(id) = lower(?)", (client,)
                )):  # fmt: skip
                    raise RegistrationError(
                        "Duplicate", f"subsystem {client} is already registered", 409
                    )
                if _one(db.execute(
                    "SELECT id FROM requests WHERE lower(client) = lower(?) "
                    "AND type = 'clientReg' "
                    "AND state = 'SUBMITTED'", (client,),
                )):  # fmt: skip
                    raise RegistrationError(
                        "Duplicate", f"a request for subsystem {client} is already pending", 409
                    )
            db.execute("INSERT INTO nonces VALUES (?, ?)", (nonce, _now()))
            cur = db.execute(
                "INSERT INTO requests (type, state, server, client, address, auth_csr, "
                "sign_csr, auth_key_sha256, signed, received_at, checkpoint_csr) "
                "VALUES (?, 'SUBMITTED', ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (kind, server, client, address, auth_csr, sign_csr, auth_key_sha256,
                 signed.decode(), _now(), checkpoint_csr),
            )  # fmt: skip
            return int(_one(cur)[0])

    _REQUEST_COLS = (
        "id, type, state, server, client, address, auth_csr, sign_csr, received_at, "
        "decided_at, decided_by, reason, checkpoint_csr"
    )

    @_locked
    def request(self, request_id: int) -> RequestRow | None:
        row = _one(
            self._db.execute(
                f"SELECT {self._REQUEST_COLS} FROM requests WHERE id = ?", (request_id,)
            )
        )
        return None if row is None else RequestRow(*row)

    @_locked
    def requests(self, state: str | None = None) -> list[RequestRow]:
        sql = f"SELECT {self._REQUEST_COLS} FROM requests"
        rows = (
            self._db.execute(sql + " WHERE state = ? ORDER BY id", (state,))
            if state
            else self._db.execute(sql + " ORDER BY id")
        )
        return [RequestRow(*r) for r in rows.fetchall()]

    @_locked
    def certificates(self, request_id: int) -> list[IssuedCert]:
        rows = self._db.execute(
            "SELECT serial, purpose, subject, sha256, pem, not_before, not_after "
            "FROM certificates WHERE request_id = ? ORDER BY purpose", (request_id,),
        ).fetchall()  # fmt: skip
        return [IssuedCert(*r) for r in rows]

    def _pending(self, db: _Db, request_id: int) -> RequestRow:
        row = _one(
            db.execute(f"SELECT {self._REQUEST_COLS} FROM requests WHERE id = ?", (request_id,))
        )
        if row is None:
            raise RegistrationError("UnknownRequest", f"there is no request {request_id}", 404)
        req = RequestRow(*row)
        if req.state != SUBMITTED:
            raise RegistrationError(
                "NotPending", f"request {request_id} is {req.state}, not pending", 409
            )
        return req

    @_locked
    def approve(self, request_id: int, admin: str, certs: list[IssuedCert]) -> RequestRow:
        now = _now()
        with self._tx() as db:
            req = self._pending(db, request_id)
            if req.type == "authCertReg":
                self._check_host(db, req.address or "", req.server.rsplit("/", 1)[0])
                db.execute(
                    "INSERT INTO nodes VALUES (?, ?, ?, ?, ?)",
                    (req.server, req.server.rsplit("/", 1)[0], req.address, request_id, now),
                )
            elif req.type == "certRotation":
                # A node revoked since it filed gets no new certificate: that would put it
                # back into the global configuration behind the revocation's back.
                if self._current(db, req.server, "auth") is None:
                    raise RegistrationError(
                        "Revoked", f"{req.server} is not registered or its authentication "
                        "certificate was revoked; decline the request", 409,
                    )  # fmt: skip
            elif req.type == "clientReg":
                if not _one(db.execute("SELECT 1 FROM nodes WHERE id = ?", (req.server,))):
                    raise RegistrationError("UnknownServer", f"{req.server} is not registered")
                assert req.client is not None
                db.execute(
                    "INSERT INTO subsystems VALUES (?, ?, ?, ?, ?)",
                    (req.client, req.client.rsplit("/", 1)[0], req.server, request_id, now),
                )
            for c in certs:
                db.execute(
                    "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (c.serial, request_id, c.purpose, c.subject, c.sha256, c.pem,
                     c.not_before, c.not_after, now),
                )  # fmt: skip
            db.execute(
                "UPDATE requests SET state = 'APPROVED', decided_at = ?, decided_by = ? "
                "WHERE id = ?", (now, admin, request_id),
            )  # fmt: skip
            detail: dict[str, Any] = {"request": request_id, "type": req.type,
                                      "server": req.server}  # fmt: skip
            if req.client:
                detail["client"] = req.client
            if certs:
                detail["certificates"] = [c.serial for c in certs]
            self._audit(db, admin, "request.approve", detail)
            return self._pending_row(db, request_id)

    def _pending_row(self, db: _Db, request_id: int) -> RequestRow:
        row = _one(
            db.execute(f"SELECT {self._REQUEST_COLS} FROM requests WHERE id = ?", (request_id,))
        )
        return RequestRow(*row)

    @_locked
    def decline(self, request_id: int, admin: str, reason: str) -> RequestRow:
        with self._tx() as db:
            self._pending(db, request_id)
            db.execute(
                "UPDATE requests SET state = 'DECLINED', decided_at = ?, decided_by = ?, "
                "reason = ? WHERE id = ?", (_now(), admin, reason, request_id),
            )  # fmt: skip
            self._audit(db, admin, "request.decline", {"request": request_id, "reason": reason})
            return self._pending_row(db, request_id)

    @_locked
    def cancel(self, request_id: int, server: str, nonce: str) -> RequestRow:
        with self._tx() as db:
            if _one(db.execute("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,))):
                raise RegistrationError("Replay", "this request was received before", 409)
            req = self._pending(db, request_id)
            if req.server != server:
                raise RegistrationError(
                    "Forbidden", f"request {request_id} is not {server}'s to cancel", 403
                )
            db.execute("INSERT INTO nonces VALUES (?, ?)", (nonce, _now()))
            db.execute(
                "UPDATE requests SET state = 'CANCELLED', decided_at = ?, decided_by = ? "
                "WHERE id = ?", (_now(), f"node {server}", request_id),
            )  # fmt: skip
            return self._pending_row(db, request_id)

    def _check_host(self, db: _Db, address: str, member: str, *, pending: bool = False) -> None:
        host = address_host(address)
        if host in SHARED_HOSTS:
            return
        rows = db.execute("SELECT id, address FROM nodes").fetchall()
        if pending:
            rows += db.execute(
                "SELECT server, address FROM requests WHERE type = 'authCertReg' "
                "AND state = 'SUBMITTED'"
            ).fetchall()
        for node, other in rows:
            if address_host(str(other)) == host and str(node).rsplit("/", 1)[0] != member:
                raise RegistrationError(
                    "Duplicate", f"host {host} is {node}'s (a node of another member); its "
                    "certificate would name that host", 409,
                )  # fmt: skip

    # A node's current certificate of a purpose: the latest issued for its approved
    # requests (registration, then rotations). A revoked current one is not replaced by an
    # older one: the node has none until it rotates (a revoked auth certificate: the node is
    # out of the global configuration).
    _CURRENT = (
        "SELECT c.serial, c.pem FROM certificates c JOIN requests r ON r.id = c.request_id "
        "WHERE r.server = ? AND c.purpose = ? AND r.state = 'APPROVED' "
        "ORDER BY c.{order} DESC LIMIT 1"
    )
    # The certificates' order of issue: SQLite's rowid; PostgreSQL's has a column for it.
    _ISSUE_ORDER = "rowid"

    def _current(self, db: _Db, node: str, purpose: str) -> str | None:
        if not _one(db.execute("SELECT 1 FROM nodes WHERE id = ?", (node,))):
            return None
        row = _one(db.execute(self._CURRENT.format(order=self._ISSUE_ORDER), (node, purpose)))
        if row is None or _one(db.execute("SELECT 1 FROM revocations WHERE serial = ?",
                                          (row[0],))):  # fmt: skip
            return None
        return str(row[1])

    @_locked
    def node_auth_pem(self, node: str) -> str | None:
        return self._current(self._db, node, "auth")

    @_locked
    def node_sign_pem(self, node: str) -> str | None:
        return self._current(self._db, node, "sign")

    @_locked
    def node_address(self, node: str) -> str | None:
        row = _one(self._db.execute("SELECT address FROM nodes WHERE id = ?", (node,)))
        return None if row is None else str(row[0])

    @_locked
    def nodes(self) -> list[NodeRow]:
        hosted: dict[str, list[str]] = {}
        for sub, node in self._db.execute("SELECT id, node FROM subsystems ORDER BY id"):
            hosted.setdefault(node, []).append(sub)
        out = []
        for node, address in self._db.execute(
            "SELECT id, address FROM nodes ORDER BY id"
        ).fetchall():
            pem = self._current(self._db, node, "auth")
            if pem is not None:
                out.append(NodeRow(node, address, pem, tuple(hosted.get(node, ()))))
        return out

    @_locked
    def certs(self) -> list[CertRow]:
        rows = self._db.execute(
            "SELECT c.serial, c.request_id, c.purpose, c.subject, r.server, c.sha256, "
            "c.issued_at, v.revoked_at, v.reason FROM certificates c "
            "JOIN requests r ON r.id = c.request_id "
            f"LEFT JOIN revocations v ON v.serial = c.serial ORDER BY c.{self._ISSUE_ORDER}"
        ).fetchall()
        return [CertRow(*r) for r in rows]

    @_locked
    def revoke(self, serials: list[str], admin: str, reason: str) -> list[CertRow]:
        """Revoke these certificates, for good, in one transaction with its audit entry;
        refuses (changing nothing) if one is unknown or all are revoked already."""
        now = _now()
        with self._tx() as db:
            fresh = []
            for serial in dict.fromkeys(serials):
                if not _one(db.execute("SELECT 1 FROM certificates WHERE serial = ?",
                                       (serial,))):  # fmt: skip
                    raise RegistrationError("UnknownCertificate",
                                            f"no certificate of serial {serial}", 404)  # fmt: skip
                if not _one(db.execute("SELECT 1 FROM revocations WHERE serial = ?", (serial,))):
                    fresh.append(serial)
            if not fresh:
                raise RegistrationError(
                    "AlreadyRevoked", "every certificate named is revoked already", 409
                )
            for serial in fresh:
                db.execute("INSERT INTO revocations VALUES (?, ?, ?)", (serial, now, reason))
            rows = [
                CertRow(*_one(db.execute(
                    "SELECT c.serial, c.request_id, c.purpose, c.subject, r.server, c.sha256, "
                    "c.issued_at, ?, ? FROM certificates c JOIN requests r "
                    "ON r.id = c.request_id WHERE c.serial = ?", (now, reason, serial),
                )))
                for serial in fresh
            ]  # fmt: skip
            self._audit(db, admin, "certificate.revoke", {
                "reason": reason,
                "certificates": [{"serial": r.serial, "purpose": r.purpose,
                                  "subject": r.subject, "sha256": r.sha256} for r in rows],
            })  # fmt: skip
            return rows

    @_locked
    def record_client_cert(
        self, node: str, subsystem: str, csr_pem: str, cert: IssuedCert, admin: str
    ) -> None:
        """A client TLS certificate issued by the operator (no node filed a request): kept
        as an approved request of its own with its certificate, so it is listed and revoked
        like every other, in one transaction with its audit entry."""
        now = _now()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO requests (type, state, server, client, signed, received_at, "
                "decided_at, decided_by) VALUES ('clientCert', 'APPROVED', ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (node, subsystem, csr_pem, now, now, admin),
            )  # fmt: skip
            request_id = int(_one(cur)[0])
            db.execute(
                "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cert.serial, request_id, cert.purpose, cert.subject, cert.sha256, cert.pem,
                 cert.not_before, cert.not_after, now),
            )  # fmt: skip
            self._audit(db, admin, "client_cert.issue", {
                "request": request_id, "subsystem": subsystem, "node": node,
                "serial": cert.serial, "sha256": cert.sha256,
            })  # fmt: skip

    def _audit(self, db: _Db, admin: str, action: str, detail: Any) -> None:
        row = _one(db.execute("SELECT hash FROM admin_audit ORDER BY seq DESC LIMIT 1"))
        prev = "" if row is None else str(row[0])
        at = _now()
        text = orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode()
        db.execute(
            "INSERT INTO admin_audit (at, admin, action, detail, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (at, admin, action, text, prev, _entry_hash(prev, at, admin, action, text)),
        )

    @_locked
    def audit(self, admin: str, action: str, **detail: Any) -> None:
        with self._tx() as db:
            self._audit(db, admin, action, detail)

    @_locked
    def audit_head(self) -> int:
        """The last audit entry's number: every change of members or nodes adds one."""
        return int(_one(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM admin_audit"))[0])

    @_locked
    def audit_entries(self) -> list[AuditEntry]:
        rows = self._db.execute(
            "SELECT seq, at, admin, action, detail, prev_hash, hash FROM admin_audit ORDER BY seq"
        ).fetchall()
        return [AuditEntry(s, a, ad, ac, orjson.loads(d), p, h) for s, a, ad, ac, d, p, h in rows]
