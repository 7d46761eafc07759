"""``xroad-hub central ...``: the central operator's commands.

They work on the central server's directory directly (its database and CA key), not over
the admin API: whoever runs them on the central server's machine can read the CA key in that
directory anyway, so going through the API would add a key to manage and no protection.
Remote officers use the admin API (``/admin/...``, API keys with roles) instead. Each change
is recorded in the audit trail as ``cli:<OS user>``. The running server sees a change at its
next request (it reads the database for every global configuration and for every
administrator's request).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

from xroad_hub.federation import ADMIN_ROLES
from xroad_hub.node.admin import key_digest
from xroad_hub.protocol.identifiers import parse_member_id
from xroad_hub.protocol.registration import REQUEST_ID, RegistrationError, anchor_hash

__all__ = ["add_central_commands", "run_central_command"]


def add_central_commands(sub: Any) -> None:
    central = sub.add_parser(
        "central",
        help="the central server: members, registration requests, CA, global configuration",
    )
    csub = central.add_subparsers(dest="central_command", required=True)

    def cmd(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = csub.add_parser(name, help=help, description=description)
        p.add_argument("--dir", type=Path, required=True, help="the central server's directory")
        return p

    init = cmd(
        "init", "create the central server's database, CA and configuration-signing key",
        "Creates DIR/central.sqlite (or, with --db, the tables in a PostgreSQL schema) and "
        "the keys (0600; they never leave DIR).",
    )  # fmt: skip
    init.add_argument(
        "--db", metavar="DSN",
        help="keep the database in PostgreSQL (postgresql://USER[:PASSWORD]@HOST/DB), not in "
        "DIR/central.sqlite; recorded in DIR/database.toml (0600) for the other commands",
    )  # fmt: skip
    init.add_argument(
        "--db-schema", metavar="NAME",
        help="with --db: the schema to keep the tables in, one per central server "
        "(default xroad_central)",
    )  # fmt: skip
    init.add_argument("--instance", required=True, help="the X-Road instance, e.g. TH")
    init.add_argument("--url", required=True, help="https://HOST:PORT nodes reach it at")
    init.add_argument("--validity", type=int, default=600,
                      help="seconds a global configuration stays valid (default 600)")  # fmt: skip
    member = csub.add_parser("member", help="admit and list members")
    msub = member.add_subparsers(dest="member_command", required=True)
    add = msub.add_parser("add", help="admit a member (e.g. TH/GOV/MOPH)")
    add.add_argument("member", help="INSTANCE/CLASS/CODE")
    add.add_argument("--name", required=True, help="the member's name")
    lst = msub.add_parser("list", help="list members")
    for p in (add, lst):
        p.add_argument("--dir", type=Path, required=True, help="the central server's directory")
    group = csub.add_parser(
        "group",
        help="global groups: subsystems grouped centrally, granted access by providers' nodes",
    )
    gsub = group.add_subparsers(dest="group_command", required=True)
    gadd = gsub.add_parser("add", help="a global group (empty, or with members)")
    gadd.add_argument("code")
    gadd.add_argument("members", nargs="*", metavar="SUBSYSTEM")
    gmem = gsub.add_parser("add-member", help="add subsystems to a global group")
    gmem.add_argument("code")
    gmem.add_argument("members", nargs="+", metavar="SUBSYSTEM")
    grem = gsub.add_parser("remove-member", help="remove subsystems from a global group")
    grem.add_argument("code")
    grem.add_argument("members", nargs="+", metavar="SUBSYSTEM")
    gdel = gsub.add_parser("remove", help="remove a global group")
    gdel.add_argument("code")
    glist = gsub.add_parser("list", help="the global groups and their members")
    for p in (gadd, gmem, grem, gdel, glist):
        p.add_argument("--dir", type=Path, required=True, help="the central server's directory")
    anchor = cmd("anchor", "write the configuration anchor a node is started from")
    anchor.add_argument("-o", "--output", type=Path, required=True, help="anchor file to write")
    run = cmd("run", "serve the global configuration, management and admin APIs (HTTPS)")
    run.add_argument("--listen", metavar="HOST:PORT", help="default: the host and port of --url")
    reqs = cmd("requests", "list registration requests (pending unless --all)")
    reqs.add_argument("--all", action="store_true", help="every request, decided ones too")
    approve = cmd("approve", "approve a request: issue its certificates, register it")
    approve.add_argument("id")
    decline = cmd("decline", "decline a request, with a reason")
    decline.add_argument("id")
    decline.add_argument("--reason", required=True)
    cmd("certs", "list issued certificates (serial, SHA-256, whose) and revocations")
    revoke = cmd(
        "revoke", "revoke a certificate, or a node's or member's certificates, for good",
        "The next global configuration lists what was revoked and since when; every node "
        "refuses it within one refresh. What was signed before still verifies. A revocation "
        "cannot be undone: a node whose auth certificate is revoked is out for good (its "
        "agency enrolls a new node, under another code); a revoked signing certificate is "
        "replaced with 'node keys rotate --sign'.",
    )  # fmt: skip
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--cert", help="a certificate's serial or SHA-256 (see 'central certs')")
    target.add_argument("--node", help="a node id, e.g. TH/GOV/MOPH/hub1")
    target.add_argument("--member", help="a member id, e.g. TH/GOV/MOPH")
    revoke.add_argument(
        "--what", choices=("auth", "sign", "checkpoint", "client", "all"), default="all",
        help="with --node/--member: the auth (TLS), signing, checkpoint or client TLS "
        "('central client-cert') certificates, or all (default; with --node, its client "
        "subsystems' are not included)",
    )  # fmt: skip
    revoke.add_argument("--reason", required=True, help="why: kept in the audit trail")
    key = cmd(
        "admin-key", "make an API key for the admin API (printed once; the DB keeps its hash)",
        "It takes effect at once, also for a running 'central run' (which reads its "
        "administrators from the database at each request); a new key for the same name "
        "replaces the old one.",
    )  # fmt: skip
    key.add_argument("--name", required=True, help="the administrator's name")
    key.add_argument("--role", action="append", required=True, choices=sorted(ADMIN_ROLES))
    cmd("audit", "print the administration audit trail and check its hash chain")
    ccert = cmd(
        "client-cert", "issue a client system's TLS certificate from its CSR (mTLS clients)",
        "For a subsystem a registered node hosts: the client system makes its key and CSR "
        "where it runs (the key never comes here); the certificate (clientAuth only, CN = "
        "the subsystem) is then registered on the node by the node's operator.",
    )  # fmt: skip
    ccert.add_argument("subsystem", help="INSTANCE/CLASS/MEMBER/SUBSYSTEM")
    ccert.add_argument("--csr", type=Path, required=True, help="the client's CSR (PEM)")
    ccert.add_argument("-o", "--output", type=Path, required=True, help="certificate to write")


def run_central_command(args: argparse.Namespace) -> int:
    from xroad_hub.central.server import CentralDir, CentralServer, init_central, serve
    from xroad_hub.central.store import verify_audit

    c = args.central_command
    if c == "init":
        if args.db_schema and not args.db:
            raise SystemExit("--db-schema needs --db")
        d = init_central(
            args.dir, args.instance, args.url, args.validity, db=args.db, db_schema=args.db_schema
        )
        print(f"central server of {args.instance} initialised in {d.root}")
        print(f"next: xroad-hub central member add ... --dir {d.root}; "
              f"xroad-hub central anchor --dir {d.root} -o anchor.json")  # fmt: skip
        return 0
    if c == "run":
        host = port = None
        if args.listen:
            h, _, p = args.listen.rpartition(":")
            host, port = h or None, int(p)
        serve(args.dir, host, port)
        return 0
    if c == "admin-key":
        store = CentralDir(args.dir).open_store()
        try:
            secret = secrets.token_urlsafe(32)
            store.add_admin(args.name, key_digest(secret), args.role, _operator())
        finally:
            store.close()
        print(f"API key of {args.name} (shown once; give it to them, keep it out of shells' "
              f"history):\n  {secret}")  # fmt: skip
        return 0
    server = CentralServer(args.dir)
    try:
        return _on_server(server, args, verify_audit)
    finally:
        server.close()


def _operator() -> str:
    from xroad_hub.central.server import _local_operator

    return _local_operator()


def _on_server(server: Any, args: argparse.Namespace, verify_audit: Any) -> int:
    c = args.central_command
    if c == "member":
        if args.member_command == "list":
            for m, n in server.store.members().items():
                print(f"{m}\t{n}")
            return 0
        member = str(parse_member_id(args.member))
        if not member.startswith(server.instance + "/"):
            raise RegistrationError("Malformed", f"{member} is not of instance {server.instance}")
        server.store.add_member(member, args.name, _operator())
        print(f"member {member} ({args.name}) admitted")
        return 0
    if c == "group":
        g = args.group_command
        if g == "list":
            for code, members in sorted(server.global_groups().items()):
                print(f"{code}\t{', '.join(sorted(str(m) for m in members)) or '(no members)'}")
            return 0
        if g == "add" and args.code in server.global_groups():
            raise RegistrationError("Duplicate", f"global group {args.code} exists already", 409)
        members = server.change_group(
            args.code, _operator(),
            add=tuple(args.members) if g in ("add", "add-member") else (),
            remove=tuple(args.members) if g == "remove-member" else (),
            delete=g == "remove",
        )  # fmt: skip
        state = "removed" if g == "remove" else f"{len(members)} member(s)"
        print(f"global group {args.code}: {state}; in the next global configuration")
        return 0
    if c == "anchor":
        args.output.write_bytes(server.anchor())
        print(f"anchor written to {args.output}")
        print("its hash, for the node's operator to compare by phone:")
        print(f"  {anchor_hash(server.signer_cert.public_bytes(_der()))}")
        return 0
    if c == "requests":
        rows = server.store.requests(None if args.all else "SUBMITTED")
        if not rows:
            print("no pending requests" if not args.all else "no requests")
        for r in rows:
            what = r.client or r.address or ""
            extra = f"  reason: {r.reason}" if r.reason else ""
            print(f"{r.id}\t{r.state}\t{r.type}\t{r.server}\t{what}\t{r.received_at}{extra}")
            if r.fingerprint and r.state == "SUBMITTED":
                # Anyone can file for any admitted member: only the member's word on these
                # keys (read by phone from its 'node init') tells its request from another's.
                print(f"\tkeys: {r.fingerprint}  (approve only if {r.server.rsplit('/', 1)[0]}"
                      " reads you the same)")  # fmt: skip
        return 0
    if c == "approve":
        row = server.approve(_request_id(args.id), _operator())
        print(f"request {row.id} ({row.type} {row.client or row.server}) approved; it is in "
              "the next global configuration")  # fmt: skip
        return 0
    if c == "decline":
        row = server.decline(_request_id(args.id), _operator(), args.reason)
        print(f"request {row.id} declined: {row.reason}")
        return 0
    if c == "client-cert":
        from cryptography.hazmat.primitives import serialization

        cert = server.issue_client_cert(args.subsystem, args.csr.read_bytes(), _operator())
        args.output.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        print(f"TLS client certificate of {args.subsystem} written to {args.output}")
        return 0
    if c == "certs":
        for r in server.store.certs():
            state = f"REVOKED {r.revoked_at} ({r.reason})" if r.revoked_at else "valid"
            print(f"{r.serial}\t{r.purpose}\t{r.subject}\t{r.sha256}\t{r.issued_at}\t{state}")
        return 0
    if c == "revoke":
        rows = server.revoke(
            _operator(), args.reason, cert=args.cert, node=args.node, member=args.member,
            what=args.what,
        )  # fmt: skip
        for r in rows:
            print(f"revoked {r.purpose} certificate {r.serial} of {r.subject} "
                  f"(sha256 {r.sha256}) at {r.revoked_at}")  # fmt: skip
        print("nodes refuse it from their next global-configuration refresh; this is final")
        return 0
    if c == "audit":
        entries = server.store.audit_entries()
        for e in entries:
            print(f"{e.seq}\t{e.at}\t{e.admin}\t{e.action}\t{e.detail}")
        verify_audit(entries)
        print(f"audit trail: {len(entries)} entries, hash chain intact")
        return 0
    print(f"xroad-hub: unknown central command {c}", file=sys.stderr)
    return 2


def _der() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER


def _request_id(text: str) -> int:
    """A request id as the central server counts them (a larger number is no request, not
    a crash in the database driver)."""
    if not REQUEST_ID.fullmatch(text):
        raise RegistrationError(
            "Malformed", f"{text!r} is not a request id (a number of up to 18 digits; "
            "'xroad-hub central requests' lists them)",
        )  # fmt: skip
    return int(text)
