"""The central server: admits members, registers nodes and subsystems, issues their
certificates, and publishes the global configuration generated from its own database.

State lives in one directory (``central init``), never shared with nodes:

    central.sqlite              members, nodes, requests, certificates, audit (0600)
    database.toml               instead of central.sqlite: the PostgreSQL DSN and schema
                                holding them (``central init --db``; 0600)
    ca.key.pem, ca.cert.pem     the federation's certification authority
    signer.key.pem, .cert.pem   signs the global configuration (the anchor's certificate)
    tls.key.pem, tls.cert.pem   HTTPS of the central server, issued by its CA
    tsa.key.pem, tsa.cert.pem   the federation's RFC 3161 timestamp authority
    witness.key.pem, .cert.pem  the witness that co-signs nodes' checkpoints (Ed25519)
    witness.json                the last checkpoint the witness co-signed, per node

HTTP surface (one HTTPS listener):

    GET  /globalconf                      the signed global configuration (registry format)
    POST /management/requests             a signed registration request -> 202 {requestId,
                                          statusToken}
    GET  /management/requests/{id}        its state; once approved, the issued certificates
                                          (needs Authorization: Bearer STATUS_TOKEN)
    /admin/...                            the operator's API (bearer API keys with roles)
    POST /tsa/                            RFC 3161 time-stamp queries (nodes' checkpoints)
    GET, POST /witness                    the witness (a node's last co-signed checkpoint;
                                          co-sign a checkpoint extending it)

Nodes download /globalconf without trusting TLS (the document is signed by the anchor's
key) and then call /management over HTTPS verified against the CA the configuration names.
A running node finds the timestamp authority and the witness under the anchor's URL
(``/tsa/``, ``/witness``): the central server is the one party every node already trusts.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from xroad_hub.central.tsa import TSA_POLICY, tsa_app
from xroad_hub.central.witness import Witness, witness_routes
from xroad_hub.errors import ConfigError, ProtocolError, Unavailable
from xroad_hub.federation import AdminConfig
from xroad_hub.node.admin import ADMIN, AdminApi
from xroad_hub.pki import (
    generate_key,
    issue_cert,
    load_cert,
    load_ed25519_key,
    load_private_key,
    make_root_ca,
    write_cert,
    write_key,
)
from xroad_hub.protocol.checkpoint import NoteSigner
from xroad_hub.protocol.globalconf import (
    GlobalConf,
    NodeEntry,
    Revocation,
    sign_globalconf,
    signer_name,
)
from xroad_hub.protocol.identifiers import (
    ClientId,
    parse_client_id,
    parse_member_id,
    parse_node_id,
    parse_subsystem_id,
    valid_part,
)
from xroad_hub.protocol.registration import (
    REQUEST_ID,
    ParsedRequest,
    RegistrationError,
    address_host,
    build_anchor,
    parse_request,
    verify_request,
)
from xroad_hub.protocol.rfc3161 import issue_tsa_cert
from xroad_hub.protocol.signing import cert_fingerprint, cert_fingerprints
from xroad_hub.streams import BodyTooLarge, read_capped

from .store import (
    APPROVED,
    SHARED_HOSTS,
    CentralStore,
    CertRow,
    IssuedCert,
    RequestRow,
    SqliteCentralStore,
)

__all__ = ["CentralDir", "CentralServer", "init_central"]

log = structlog.get_logger("xroad_hub.central.server")

_MAX_REQUEST = 64 * 1024
GLOBALCONF_CACHE = 1.0  # seconds a signed configuration is served again unchanged
_GROUPS_KEY = "global_groups"  # the global groups, one JSON document in the meta table
_SERIAL_KEY = "globalconf_serial"  # the highest serial signed, in the meta table
DEFAULT_VALIDITY = 600  # seconds a global configuration stays valid (X-Road: 600)


@dataclass(frozen=True, slots=True)
class CentralDir:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "central.sqlite"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key.pem"

    def open_store(self, *, create: bool = False) -> CentralStore:
        """The database this directory's server keeps: the PostgreSQL schema its
        database.toml names, else central.sqlite."""
        from xroad_hub.central.pgstore import PostgresCentralStore, read_db_file

        pg = read_db_file(self.root)
        if pg is not None:
            return PostgresCentralStore(*pg, create=create)
        return SqliteCentralStore(self.db, create=create)

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.cert.pem"


def init_central(
    root: Path,
    instance: str,
    url: str,
    validity: int = DEFAULT_VALIDITY,
    *,
    db: str | None = None,
    db_schema: str | None = None,
) -> CentralDir:
    """Create the central server's database and keys in ``root``; refuse to overwrite.
    ``db``: a PostgreSQL DSN to keep the database in (schema ``db_schema``), recorded in
    ``root`` for the other central commands; None: ``root``/central.sqlite."""
    from xroad_hub.central.pgstore import DEFAULT_SCHEMA, PostgresCentralStore, write_db_file

    d = CentralDir(root)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or not parts.port:
        raise RegistrationError("BadUrl", f"--url must be https://HOST:PORT, not {url!r}")
    if d.db.exists() or d.key("ca").exists():
        raise FileExistsError(f"{root} already holds a central server; use another --dir")
    store: CentralStore | None = None
    if db is not None:
        # The database first: a DSN that does not answer, or a schema another central
        # server uses, is refused before any key is made.
        pg = PostgresCentralStore(db, db_schema or DEFAULT_SCHEMA, create=True)
        if pg.get_meta("instance") is not None:
            pg.close()
            raise FileExistsError(
                f"schema {pg.schema!r} already holds a central server's database; "
                "use another --db-schema"
            )
        store = pg
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    if db is not None:
        write_db_file(root, db, db_schema or DEFAULT_SCHEMA)
    ca_key, ca_cert = make_root_ca(f"{instance} central server CA")
    write_key(d.key("ca"), ca_key)
    write_cert(d.cert("ca"), ca_cert)
    _make_services_keys(d, instance, ca_key, ca_cert)
    signer = generate_key()
    write_key(d.key("signer"), signer)
    write_cert(
        d.cert("signer"),
        issue_cert(ca_key, ca_cert, signer_name(instance), signer, purpose="sign"),
    )
    tls = generate_key()
    write_key(d.key("tls"), tls)
    write_cert(
        d.cert("tls"),
        issue_cert(
            ca_key, ca_cert, f"{instance} central server", tls, purpose="tls",
            hosts=(parts.hostname,),
        ),
    )  # fmt: skip
    store = store or SqliteCentralStore(d.db, create=True)
    try:
        store.set_meta("instance", instance)
        store.set_meta("url", url.rstrip("/"))
        store.set_meta("globalconf_validity", str(validity))
        store.audit(_local_operator(), "central.init", instance=instance, url=url)
    finally:
        store.close()
    return d


def _make_services_keys(
    d: CentralDir, instance: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> None:
    """The timestamp authority's key (its certificate has the critical timeStamping EKU RFC
    3161 requires) and the witness's Ed25519 key, named ``INSTANCE/registry``: the only
    co-signer evidence and audit verification accept for the instance's nodes."""
    tsa = generate_key()
    write_key(d.key("tsa"), tsa)
    write_cert(
        d.cert("tsa"), issue_tsa_cert(ca_key, ca_cert, f"{instance} timestamp authority", tsa)
    )
    witness = ed25519.Ed25519PrivateKey.generate()
    write_key(d.key("witness"), witness)
    write_cert(
        d.cert("witness"),
        issue_cert(ca_key, ca_cert, f"{instance}/registry", witness, purpose="checkpoint"),
    )


def _local_operator() -> str:
    """Who, for changes made with the CLI on the central server's machine: the OS user."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


class CentralServer:
    def __init__(self, root: Path, store: CentralStore | None = None) -> None:
        self.dir = CentralDir(root)
        self.store: CentralStore = store or self.dir.open_store()
        instance = self.store.get_meta("instance")
        url = self.store.get_meta("url")
        if instance is None or url is None:
            raise RegistrationError("NotInitialised", f"{root} is not an initialised central")
        self.instance, self.url = instance, url
        self.validity = int(self.store.get_meta("globalconf_validity") or DEFAULT_VALIDITY)
        self._ca_key = load_private_key(self.dir.key("ca"))
        self._ca_cert = load_cert(self.dir.cert("ca"))
        self._signer_key = load_private_key(self.dir.key("signer"))
        self.signer_cert = load_cert(self.dir.cert("signer"))
        # Serials increase across restarts too: a node keeps the highest it accepted and
        # refuses lower ones. Milliseconds of the clock, and never below the highest signed
        # before (kept in the database: the clock may have been set back since).
        self._serial = 0
        # Request ids count up from 1: a status read needs the token given to the request's
        # filer (an HMAC of the id), else anyone could list every node's pending, declined
        # (with the officer's reason) and approved requests by counting.
        key = self.store.get_meta("status_token_key")
        if key is None:
            key = secrets.token_hex(32)
            self.store.set_meta("status_token_key", key)
        self._status_key = bytes.fromhex(key)
        self._signed: tuple[int, float, bytes] | None = None  # (audit head, made at, body)
        for name in ("tsa", "witness"):
            if not self.dir.key(name).exists() or not self.dir.cert(name).exists():
                raise RegistrationError(
                    "NotInitialised", f"{root} has no {name} key ({self.dir.key(name).name}); "
                    "it was made by an older 'central init': initialise a new directory",
                )  # fmt: skip
        self.witness = Witness(
            NoteSigner(f"{self.instance}/registry", load_ed25519_key(self.dir.key("witness"))),
            [self._ca_cert],
            self.dir.root / "witness.json",
            self._revocation_of,
        )
        self.witness_cert = load_cert(self.dir.cert("witness"))

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def anchor(self) -> bytes:
        return build_anchor(self.instance, self.url, self.signer_cert)

    # --- global configuration -------------------------------------------------------------

    def globalconf(self, now: datetime | None = None) -> GlobalConf:
        """The configuration as the database says now: every admitted member, every node
        with a valid auth certificate and the subsystems it hosts."""
        now = now or datetime.now(UTC)
        # Kept in the database: a clock set back (an hour fast, corrected at a reboot) must
        # not make serials lower than those the nodes accepted, or every node would refuse
        # the configurations as rollbacks, new revocations with them, until the clock caught
        # up.
        kept = int(self.store.get_meta(_SERIAL_KEY) or 0)
        self._serial = max(self._serial + 1, kept + 1, int(time.time() * 1000))
        self.store.set_meta(_SERIAL_KEY, str(self._serial))
        nodes = []
        for row in self.store.nodes():
            cert_der = x509.load_pem_x509_certificate(row.auth_cert_pem.encode()).public_bytes(
                serialization.Encoding.DER
            )
            nodes.append(
                NodeEntry(
                    id=parse_node_id(row.id),
                    address=row.address,
                    auth_cert_sha256=cert_fingerprint(cert_der),
                    clients=frozenset(parse_client_id(c) for c in row.clients),
                    auth_cert_der=cert_der,
                )
            )
        return GlobalConf(
            instance=self.instance,
            serial=self._serial,
            generated_at=now,
            expires_at=now + timedelta(seconds=self.validity),
            members={parse_member_id(m): n for m, n in self.store.members().items()},
            nodes=tuple(nodes),
            trusted_cas_der=(self._ca_cert.public_bytes(serialization.Encoding.DER),),
            revocations=tuple(
                Revocation(c.sha256, c.purpose, c.subject, datetime.fromisoformat(c.revoked_at))
                for c in self.store.certs()
                if c.revoked_at is not None
            ),
            groups=self.global_groups(),
        )

    # --- revocation ---------------------------------------------------------------------------

    def _revocation_of(self, cert_der: bytes) -> str | None:
        """Why this certificate is revoked, or None: for the witness, which co-signs no
        checkpoint a revoked key signed (a thief of it gets no proof from the federation)."""
        shas = cert_fingerprints(cert_der)  # either encoding of an ECDSA-signed certificate
        for c in self.store.certs():
            if c.sha256 in shas and c.revoked_at is not None:
                at = datetime.fromisoformat(c.revoked_at)
                return Revocation(c.sha256, c.purpose, c.subject, at).describe()
        return None

    def revoke(
        self,
        admin: str,
        reason: str,
        *,
        cert: str | None = None,
        node: str | None = None,
        member: str | None = None,
        what: str = "all",
    ) -> list[CertRow]:
        """Revoke, for good, one certificate (``cert``: its serial or SHA-256), or a node's or
        a member's certificates (``what``: auth, sign, checkpoint or all of them, superseded
        ones too).
        The next global configuration lists them; every node refuses them from then on."""
        if not reason.strip():
            raise RegistrationError("Malformed", "a revocation needs a reason (--reason)")
        if [cert, node, member].count(None) != 2:
            raise RegistrationError("Malformed", "name exactly one of a certificate, a node "
                                    "or a member")  # fmt: skip
        if what not in ("auth", "sign", "checkpoint", "client", "all"):
            raise RegistrationError(
                "Malformed", "what must be auth, sign, checkpoint, client or all"
            )
        purposes = ("auth", "sign", "checkpoint") if what == "all" else (what,)
        kind = "" if what == "all" else f"{what} "
        rows = self.store.certs()
        if cert is not None:
            wanted = cert.strip().lower().replace(":", "")
            chosen = [c for c in rows if wanted in (c.serial, c.sha256)]
            if not chosen:
                raise RegistrationError(
                    "UnknownCertificate", f"no certificate has serial or SHA-256 {cert}", 404
                )
        elif node is not None:
            node_id = str(parse_node_id(node))
            chosen = [c for c in rows if c.server == node_id and c.purpose in purposes]
            if not chosen:
                raise RegistrationError("UnknownServer", f"{node_id} has no {kind}"
                                        "certificates", 404)  # fmt: skip
        else:
            assert member is not None
            member_id = str(parse_member_id(member))
            # A client certificate is its subsystem's member's (the hosting node may be
            # another member's); "all" of a member includes them.
            of_member = (*purposes, "client") if what == "all" else purposes
            chosen = [c for c in rows if c.purpose in of_member and _owner(c) == member_id]
            if not chosen:
                raise RegistrationError("UnknownMember", f"{member_id} has no {kind}"
                                        "certificates", 404)  # fmt: skip
        revoked = self.store.revoke([c.serial for c in chosen], admin, reason.strip())
        for c in revoked:
            log.warning("central.certificate_revoked", serial=c.serial, purpose=c.purpose,
                        subject=c.subject, admin=admin)  # fmt: skip
        return revoked

    # --- global groups ---------------------------------------------------------------------

    def global_groups(self) -> dict[str, frozenset[ClientId]]:
        """The global groups (X-Road): subsystems grouped here, published in the global
        configuration, to which providers' nodes grant access rights."""
        raw = self.store.get_meta(_GROUPS_KEY)
        groups = orjson.loads(raw) if raw else {}
        return {code: frozenset(parse_client_id(m) for m in ms) for code, ms in groups.items()}

    def change_group(
        self,
        code: str,
        admin: str,
        *,
        add: tuple[str, ...] = (),
        remove: tuple[str, ...] = (),
        delete: bool = False,
    ) -> frozenset[ClientId]:
        """Create a group (by adding to one that does not exist), change its members, or
        delete it; members must be subsystems registered here. In the next configuration."""
        if not valid_part(code):
            raise RegistrationError("Malformed", f"group code {code!r}: identifier characters")
        groups = {c: set(m) for c, m in self.global_groups().items()}
        if delete:
            if code not in groups:
                raise RegistrationError("NotFound", f"no global group {code}", 404)
            del groups[code]
        else:
            registered = {c for row in self.store.nodes() for c in row.clients}
            members = groups.setdefault(code, set())
            for text in add:
                client = _subsystem(text)
                if str(client) not in registered:
                    raise RegistrationError(
                        "NotFound", f"{client} is not a subsystem registered here", 404
                    )
                members.add(client)
            for text in remove:
                if _subsystem(text) not in members:
                    raise RegistrationError("NotFound", f"{text} is not in group {code}", 404)
                members.discard(_subsystem(text))
        doc = {c: sorted(str(m) for m in ms) for c, ms in sorted(groups.items())}
        self.store.set_meta(_GROUPS_KEY, orjson.dumps(doc).decode())
        # After the change, so that the configuration made for the new audit head has it.
        self.store.audit(
            admin, "group.remove" if delete else "group.change", group=code,
            add=list(add), remove=list(remove),
        )  # fmt: skip
        return frozenset(groups.get(code, ()))

    def signed_globalconf(self) -> bytes:
        """The signed configuration for GET /globalconf (unauthenticated): made anew only
        when the database changed (members and nodes change with an audit entry, also from
        the CLI's process) or the last is a second old, so a storm of downloads costs one
        indexed read each, not every node's certificate parsed and a signature."""
        head, now = self.store.audit_head(), time.monotonic()
        cached = self._signed
        if cached is not None and cached[0] == head and now - cached[1] < GLOBALCONF_CACHE:
            return cached[2]
        body = sign_globalconf(self.globalconf(), self._signer_key)
        self._signed = (head, now, body)
        return body

    # --- requests --------------------------------------------------------------------------

    def file(self, data: bytes, now: datetime | None = None) -> tuple[int, str]:
        """Verify and record a signed management request: (request id, state)."""
        request, _, _ = parse_request(data)
        auth_key: ec.EllipticCurvePublicKey | None = None
        sign_key: ec.EllipticCurvePublicKey | None = None
        if request["type"] == "certRotation":
            sign_pem = self.store.node_sign_pem(str(request.get("server", "")))
            if sign_pem is not None:
                key = x509.load_pem_x509_certificate(sign_pem.encode()).public_key()
                sign_key = key if isinstance(key, ec.EllipticCurvePublicKey) else None
        if request["type"] != "authCertReg":
            pem = self.store.node_auth_pem(str(request.get("server", "")))
            pending = self._pending_auth_reg(request)
            if pem is not None:
                key = x509.load_pem_x509_certificate(pem.encode()).public_key()
            elif pending is not None and pending.auth_csr:
                # Cancelling a pending registration: the node is not registered yet, its
                # auth key is the one of the request's CSR.
                key = x509.load_pem_x509_csr(pending.auth_csr.encode()).public_key()
            else:
                key = None
            auth_key = key if isinstance(key, ec.EllipticCurvePublicKey) else None
        parsed = verify_request(data, self.instance, auth_key, now, sign_key)
        if parsed.type == "cancel":
            assert parsed.request_id is not None
            row = self.store.cancel(parsed.request_id, str(parsed.server), parsed.nonce)
            log.info("central.request_cancelled", request=row.id, server=row.server)
            return row.id, row.state
        request_id = self._file(parsed, data)
        log.info("central.request_filed", request=request_id, type=parsed.type,
                 server=str(parsed.server))  # fmt: skip
        return request_id, "SUBMITTED"

    def _pending_auth_reg(self, request: dict[str, Any]) -> RequestRow | None:
        rid = request.get("request_id")
        if request.get("type") != "cancel" or not isinstance(rid, str):
            return None
        if not REQUEST_ID.fullmatch(rid):  # before any database lookup; unsigned yet
            raise RegistrationError("Malformed", "request_id must be a number of up to 18 digits")
        row = self.store.request(int(rid))
        ok = row is not None and row.type == "authCertReg" and row.server == request.get("server")
        return row if ok else None

    def _file(self, parsed: ParsedRequest, data: bytes) -> int:
        pem = serialization.Encoding.PEM
        if parsed.type == "authCertReg":
            assert parsed.auth_csr is not None and parsed.sign_csr is not None
            host = address_host(parsed.address)
            if host == (urlsplit(self.url).hostname or "").lower() and host not in SHARED_HOSTS:
                # A node certificate naming it would serve as the central server's HTTPS.
                raise RegistrationError(
                    "Duplicate", f"{parsed.address} is the central server's host; a node's "
                    "certificate may not name it", 409,
                )  # fmt: skip
            return self.store.file_request(
                parsed.type, str(parsed.server), parsed.nonce, data,
                address=parsed.address,
                auth_csr=parsed.auth_csr.public_bytes(pem).decode(),
                sign_csr=parsed.sign_csr.public_bytes(pem).decode(),
                auth_key_sha256=parsed.auth_key_sha256,
                checkpoint_csr=(
                    parsed.checkpoint_csr.public_bytes(pem).decode()
                    if parsed.checkpoint_csr is not None
                    else None
                ),
            )  # fmt: skip
        if parsed.type == "certRotation":
            csr = parsed.auth_csr or parsed.sign_csr
            assert csr is not None
            return self.store.file_request(
                parsed.type, str(parsed.server), parsed.nonce, data,
                auth_csr=csr.public_bytes(pem).decode() if parsed.auth_csr else None,
                sign_csr=csr.public_bytes(pem).decode() if parsed.sign_csr else None,
                auth_key_sha256=parsed.auth_key_sha256 or None,
            )  # fmt: skip
        if parsed.client is not None and parsed.client.member != parsed.server.owner:
            # X-Road would also accept another member's subsystem signed by that member;
            # this slice registers only the node owner's own subsystems.
            raise RegistrationError(
                "Forbidden", f"{parsed.server} may only register subsystems of its owner "
                f"{parsed.server.owner}", 403,
            )  # fmt: skip
        return self.store.file_request(
            parsed.type, str(parsed.server), parsed.nonce, data, client=str(parsed.client)
        )

    def approve(self, request_id: int, admin: str) -> RequestRow:
        row = self.store.request(request_id)
        if row is None:
            raise RegistrationError("UnknownRequest", f"there is no request {request_id}", 404)
        certs = (
            self._issue(row)
            if row.type in ("authCertReg", "certRotation") and row.state != APPROVED
            else []
        )
        approved = self.store.approve(request_id, admin, certs)
        log.info("central.request_approved", request=request_id, admin=admin)
        return approved

    def decline(self, request_id: int, admin: str, reason: str) -> RequestRow:
        if not reason.strip():
            raise RegistrationError("Malformed", "a decline needs a reason (--reason)")
        row = self.store.decline(request_id, admin, reason.strip())
        log.info("central.request_declined", request=request_id, admin=admin)
        return row

    def _issue(self, row: RequestRow) -> list[IssuedCert]:
        """The node's auth certificate (CN = node id), the member's signing certificate
        (CN = member id) and the node's checkpoint certificate (CN = node id: audit and
        evidence verification take a checkpoint's node from it), issued for the CSRs' keys
        (a rotation renews one of them); the names are the central server's choice, not the
        CSRs'."""
        out = []
        member = row.server.rsplit("/", 1)[0]
        wanted = [
            ("auth", row.auth_csr, row.server, "tls"),
            ("sign", row.sign_csr, member, "sign"),
        ]
        if row.checkpoint_csr:
            wanted.append(("checkpoint", row.checkpoint_csr, row.server, "checkpoint"))
        for purpose, csr_pem, cn, profile in wanted:
            if csr_pem is None:  # a rotation renews one of them
                continue
            csr = x509.load_pem_x509_csr(csr_pem.encode())
            host = (row.address or "").rpartition(":")[0]
            cert = issue_cert(
                self._ca_key, self._ca_cert, cn, csr.public_key(),  # type: ignore[arg-type]
                purpose=profile, hosts=(host,) if profile == "tls" and host else (),
            )  # fmt: skip
            out.append(
                IssuedCert(
                    serial=format(cert.serial_number, "x"),
                    purpose=purpose,
                    subject=cn,
                    sha256=cert_fingerprint(cert.public_bytes(serialization.Encoding.DER)),
                    pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                    not_before=cert.not_valid_before_utc.isoformat(),
                    not_after=cert.not_valid_after_utc.isoformat(),
                )
            )
        return out

    def issue_client_cert(self, subsystem: str, csr_pem: bytes, admin: str) -> x509.Certificate:
        """A TLS client certificate (clientAuth only, CN = the subsystem) for the key of a
        client system of a registered subsystem, from that system's CSR: its key stays with
        the client system. Nodes' client-facing HTTPS trusts the federation CA, and a node
        accepts the certificate for that subsystem only once its operator registered it."""
        sub = str(parse_subsystem_id(subsystem))
        host = next((n.id for n in self.store.nodes() if sub in n.clients), None)
        if host is None:
            raise RegistrationError(
                "UnknownSubsystem", f"{sub} is hosted by no registered node; its node files "
                "'xroad-hub node client add' first, and the request is approved",
            )  # fmt: skip
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise RegistrationError("Malformed", f"not a PEM certificate request: {exc}") from exc
        key = csr.public_key()
        if not csr.is_signature_valid or not isinstance(key, ec.EllipticCurvePublicKey):
            raise RegistrationError(
                "Malformed", "the request is not signed by an EC P-256 key of its own"
            )
        cert = issue_cert(self._ca_key, self._ca_cert, sub, key, purpose="client-tls")
        # In the certificates table (purpose "client"), not only on the trail: listed by
        # 'central certs', revoked by 'central revoke', published as a revocation.
        self.store.record_client_cert(host, sub, csr_pem.decode(errors="replace"), IssuedCert(
            serial=format(cert.serial_number, "x"),
            purpose="client",
            subject=sub,
            sha256=cert_fingerprint(cert.public_bytes(serialization.Encoding.DER)),
            pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            not_before=cert.not_valid_before_utc.isoformat(),
            not_after=cert.not_valid_after_utc.isoformat(),
        ), admin)  # fmt: skip
        log.info("central.client_cert_issued", subsystem=sub, admin=admin)
        return cert

    def status_token(self, request_id: int) -> str:
        """What the filer of request ``request_id`` shows to read its status."""
        mac = hmac.new(self._status_key, f"request-status:{request_id}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def status(self, request_id: int, token: str | None = None) -> dict[str, Any]:
        """A request's state, for the operator (``token`` None) or for whoever shows the
        request's status token; a wrong token is answered as an unknown request."""
        if token is not None and not hmac.compare_digest(
            token.encode(), self.status_token(request_id).encode()
        ):
            raise RegistrationError("UnknownRequest", f"there is no request {request_id}", 404)
        row = self.store.request(request_id)
        if row is None:
            raise RegistrationError("UnknownRequest", f"there is no request {request_id}", 404)
        out: dict[str, Any] = {"requestId": row.id, "type": row.type, "state": row.state,
                               "server": row.server}  # fmt: skip
        if row.client:
            out["client"] = row.client
        if row.reason:
            out["reason"] = row.reason
        if row.state == APPROVED:
            out["certificates"] = {c.purpose: c.pem for c in self.store.certificates(row.id)}
            out["ca"] = self._ca_cert.public_bytes(serialization.Encoding.PEM).decode()
        return out

    # --- HTTP ------------------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.dir.cert("tls")), str(self.dir.key("tls")))
        return ctx

    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_REQUEST, middlewares=[_unavailable])
        app.router.add_get("/globalconf", self._h_globalconf)
        app.router.add_post("/management/requests", self._h_file)
        app.router.add_get("/management/requests/{id:[0-9]{1,18}}", self._h_status)
        # The central server's administration trail is the hash-chained table in its
        # database (store.audit); AdminApi's own JSON-lines trail is not written here.
        # Administrators are read from the database at each request: a key made with
        # 'central admin-key' (another process) works at once, a replaced one stops working.
        api = AdminApi("central", (), lookup=self._admin)
        officers = ("registration-officer", "system-administrator", "security-officer")
        api.route("GET", "/requests", self._h_list, officers)
        api.route("POST", "/requests/{id:[0-9]{1,18}}/approve", self._h_approve,
                  ("registration-officer",))  # fmt: skip
        api.route("POST", "/requests/{id:[0-9]{1,18}}/decline", self._h_decline,
                  ("registration-officer",))  # fmt: skip
        api.route("GET", "/members", self._h_members, officers)
        api.route("POST", "/members", self._h_add_member, ("system-administrator",))
        api.route("GET", "/audit", self._h_audit, ("security-officer", "system-administrator"))
        api.route("GET", "/certificates", self._h_certs, officers)
        api.route("POST", "/revocations", self._h_revoke, ("security-officer",))
        api.route("GET", "/groups", self._h_groups, officers)
        for method in ("POST", "DELETE"):
            api.route(method, "/groups/{code}", self._h_group,
                      ("registration-officer", "system-administrator"))  # fmt: skip
        app.add_subapp("/admin", api.app)
        app.router.add_routes(
            witness_routes(self.witness, self.witness_cert.public_bytes(serialization.Encoding.DER))
        )
        app.add_subapp(
            "/tsa",
            tsa_app(
                load_private_key(self.dir.key("tsa")), load_cert(self.dir.cert("tsa")), TSA_POLICY
            ),
        )
        return app

    async def _admin(self, digest: str) -> AdminConfig | None:
        admins = await asyncio.to_thread(self.store.admins)
        return next(
            (AdminConfig(name=n, key_sha256=k, roles=frozenset(r))
             for n, k, r in admins if hmac.compare_digest(k, digest)),
            None,
        )  # fmt: skip

    async def _h_globalconf(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.signed_globalconf)
        return web.Response(
            body=body, content_type="application/json", headers={"Cache-Control": "no-store"}
        )

    async def _h_file(self, request: web.Request) -> web.Response:
        try:
            data = await read_capped(request.content, _MAX_REQUEST)
        except BodyTooLarge:
            return _refuse(RegistrationError("Malformed", "request too large", 413))

        async def run() -> web.Response:
            request_id, state = await asyncio.to_thread(self.file, data)
            return web.json_response(
                {"requestId": request_id, "state": state,
                 "statusToken": self.status_token(request_id)},
                status=202,
            )  # fmt: skip

        return await _answer(run)

    async def _h_status(self, request: web.Request) -> web.Response:
        request_id = int(request.match_info["id"])
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip() if scheme == "Bearer" else ""

        async def run() -> web.Response:
            return web.json_response(await asyncio.to_thread(self.status, request_id, token))

        return await _answer(run)

    async def _h_list(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "SUBMITTED")
        rows = await asyncio.to_thread(self.store.requests, None if state == "all" else state)
        return web.json_response([_row_json(r) for r in rows])

    async def _h_approve(self, request: web.Request) -> web.Response:
        admin, request_id = request[ADMIN].name, int(request.match_info["id"])

        async def run() -> web.Response:
            row = await asyncio.to_thread(self.approve, request_id, f"api:{admin}")
            return web.json_response(_row_json(row))

        return await _answer(run)

    async def _h_decline(self, request: web.Request) -> web.Response:
        admin, request_id = request[ADMIN].name, int(request.match_info["id"])

        async def run() -> web.Response:
            try:
                reason = str((await request.json()).get("reason", ""))
            except (ValueError, AttributeError) as exc:
                raise RegistrationError("Malformed", 'body must be {"reason": "..."}') from exc
            row = await asyncio.to_thread(self.decline, request_id, f"api:{admin}", reason)
            return web.json_response(_row_json(row))

        return await _answer(run)

    async def _h_members(self, request: web.Request) -> web.Response:
        members = await asyncio.to_thread(self.store.members)
        return web.json_response([{"id": m, "name": n} for m, n in members.items()])

    async def _h_add_member(self, request: web.Request) -> web.Response:
        admin = request[ADMIN].name

        async def run() -> web.Response:
            try:
                doc = await request.json()
                member, name = str(parse_member_id(str(doc["id"]))), str(doc["name"]).strip()
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RegistrationError(
                    "Malformed", 'body must be {"id": "INSTANCE/CLASS/CODE", "name": "..."}'
                ) from exc
            if not member.startswith(self.instance + "/") or not name:
                raise RegistrationError("Malformed", f"member must be of {self.instance}, named")
            await asyncio.to_thread(self.store.add_member, member, name, f"api:{admin}")
            return web.json_response({"id": member, "name": name}, status=201)

        return await _answer(run)

    async def _h_certs(self, request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(self.store.certs)
        return web.json_response([cert_json(c) for c in rows])

    async def _h_revoke(self, request: web.Request) -> web.Response:
        admin = request[ADMIN].name

        async def run() -> web.Response:
            try:
                doc = await request.json()
                if not isinstance(doc, dict) or set(doc) - {"cert", "node", "member", "what",
                                                            "reason"}:  # fmt: skip
                    raise TypeError("unknown fields")
                fields = {k: str(doc[k]) for k in ("cert", "node", "member") if k in doc}
                what, reason = str(doc.get("what", "all")), str(doc.get("reason", ""))
            except (ValueError, TypeError, AttributeError) as exc:
                raise RegistrationError(
                    "Malformed", 'body must be {"cert"|"node"|"member": "...", "what": '
                    '"auth"|"sign"|"checkpoint"|"all", "reason": "..."}',
                ) from exc  # fmt: skip
            try:
                rows = await asyncio.to_thread(
                    self.revoke, f"api:{admin}", reason, what=what, **fields
                )
            except ProtocolError as exc:  # a malformed node or member id
                raise RegistrationError("Malformed", exc.message) from exc
            return web.json_response([cert_json(c) for c in rows], status=201)

        return await _answer(run)

    async def _h_groups(self, request: web.Request) -> web.Response:
        groups = await asyncio.to_thread(self.global_groups)
        return web.json_response(
            {c: sorted(str(m) for m in ms) for c, ms in sorted(groups.items())}
        )

    async def _h_group(self, request: web.Request) -> web.Response:
        """POST {"add": [...], "remove": [...]} changes (or creates) a group; DELETE it."""
        admin, code = request[ADMIN].name, request.match_info["code"]

        async def run() -> web.Response:
            doc: dict[str, Any] = {}
            if request.method == "POST":
                try:
                    doc = await request.json()
                    add = tuple(str(m) for m in doc.get("add", []))
                    remove = tuple(str(m) for m in doc.get("remove", []))
                except (ValueError, TypeError, AttributeError) as exc:
                    raise RegistrationError(
                        "Malformed", 'body must be {"add": [SUBSYSTEM...], "remove": [...]}'
                    ) from exc
            else:
                add = remove = ()
            members = await asyncio.to_thread(
                functools.partial(
                    self.change_group, code, f"api:{admin}", add=add, remove=remove,
                    delete=request.method == "DELETE",
                )
            )  # fmt: skip
            return web.json_response({"code": code, "members": sorted(str(m) for m in members)})

        return await _answer(run)

    async def _h_audit(self, request: web.Request) -> web.Response:
        entries = await asyncio.to_thread(self.store.audit_entries)
        fields = ("seq", "at", "admin", "action", "detail", "hash")
        return web.json_response([{f: getattr(e, f) for f in fields} for e in entries])


def _owner(c: CertRow) -> str:
    """The member a certificate is of: a client certificate's subsystem's, else the member
    of the node whose request it was issued for."""
    return (c.subject if c.purpose == "client" else c.server).rsplit("/", 1)[0]


def cert_json(c: CertRow) -> dict[str, Any]:
    out = {"serial": c.serial, "requestId": c.request_id, "purpose": c.purpose,
           "subject": c.subject, "server": c.server, "sha256": c.sha256,
           "issuedAt": c.issued_at, "revokedAt": c.revoked_at, "reason": c.reason}  # fmt: skip
    return {k: v for k, v in out.items() if v is not None}


def _row_json(r: RequestRow) -> dict[str, Any]:
    out = {"requestId": r.id, "type": r.type, "state": r.state, "server": r.server,
           "client": r.client, "address": r.address, "receivedAt": r.received_at,
           "decidedAt": r.decided_at, "decidedBy": r.decided_by, "reason": r.reason,
           "fingerprint": r.fingerprint}  # fmt: skip
    return {k: v for k, v in out.items() if v is not None}


def _subsystem(text: str) -> ClientId:
    try:
        return parse_client_id(text)
    except ValueError as exc:
        raise RegistrationError("Malformed", f"{text!r} is not a subsystem id: {exc}") from exc


def _refuse(exc: RegistrationError) -> web.Response:
    return web.json_response(exc.as_dict(), status=exc.status)


@web.middleware
async def _unavailable(request: web.Request, handler: Any) -> web.StreamResponse:
    """The database failing is answered as such (503, retry later; in the management
    protocol's error form), not as a 500 with a traceback in the log."""
    try:
        return await handler(request)
    except Unavailable as exc:
        log.warning("central.store_unavailable", path=request.path, error=str(exc))
        return web.json_response(
            {"error": "Unavailable", "message": str(exc)}, status=503, headers={"Retry-After": "5"}
        )


async def _answer(run: Callable[[], Awaitable[web.Response]]) -> web.Response:
    try:
        return await run()
    except RegistrationError as exc:
        log.info("central.refused", code=exc.code, reason=exc.message)
        return _refuse(exc)


def serve(root: Path, host: str | None = None, port: int | None = None) -> None:
    """Run the central server until interrupted (``xroad-hub central run``)."""
    server = CentralServer(root)
    parts = urlsplit(server.url)
    address = (host or parts.hostname or "", port or parts.port or 443)
    try:
        # Bound here, not by run_app: a port taken is the operator's to fix, not a traceback.
        sock = socket.create_server(address)
    except OSError as exc:
        server.close()
        raise ConfigError(
            f"the central server cannot listen on {address[0]}:{address[1]}: "
            f"{exc.strerror or exc}; stop whatever listens there or pass --listen HOST:PORT"
        ) from exc
    log.info("central.listening", url=server.url, instance=server.instance)
    try:
        web.run_app(
            server.app(),
            sock=sock,
            ssl_context=server.tls_context(),
            print=None,
            access_log=None,
        )
    finally:
        server.close()
