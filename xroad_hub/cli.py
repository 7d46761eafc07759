"""``xroad-hub``: the command line of the hub."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import jwt

from xroad_hub.central.centralcli import add_central_commands, run_central_command
from xroad_hub.dev.devpki import ensure_pki
from xroad_hub.errors import HubError, ProtocolError, Unavailable, XRoadError
from xroad_hub.federation import ConfigError, FederationConfig, load_federation
from xroad_hub.logs import configure_logging
from xroad_hub.messagelog.reader import LogReadError
from xroad_hub.node.admincli import add_node_commands, run_node_command
from xroad_hub.node.clientauth import MAX_TOKEN_LIFETIME
from xroad_hub.packaged import demo_federation
from xroad_hub.pki import IDP_MAX_LIFETIME, TRACKER_MAX_LIFETIME, PkiLayout, load_private_key
from xroad_hub.protocol.identifiers import parse_subsystem_id
from xroad_hub.protocol.thaiid import is_valid

if TYPE_CHECKING:
    from cryptography import x509

    from xroad_hub.messagelog.reader import LogReader
    from xroad_hub.protocol.globalconf import Revocation

DEFAULT_CONFIG = Path("config/demo-federation.toml")
DEFAULT_CERTS = Path("certs")
DEFAULT_DATA = Path("var/demo")


# 'pki init' and 'up' simulate a federation on one machine: the agencies' private keys and
# the CA's lie side by side. Tests and benchmarks use them; no deployment should.
_DEV_ONLY = (
    "For development and tests only: it makes every agency's private keys, and the root CA "
    "key, on one machine, which no federation of separate agencies may do. Agencies run "
    "'xroad-hub central ...' and 'xroad-hub node init/run' instead (scripts/demo.sh shows "
    "the workflow)."
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        help=f"federation file (default: {DEFAULT_CONFIG} if there is one here, else the demo "
        "federation shipped with xroad-hub)",
    )
    p.add_argument(
        "--certs-dir",
        type=Path,
        default=DEFAULT_CERTS,
        help=f"key material directory (default: {DEFAULT_CERTS})",
    )


def _root_ca(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root-ca",
        type=Path,
        default=DEFAULT_CERTS / "ca" / "root.cert.pem",
        help="federation root certificate (default: certs/ca/root.cert.pem)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xroad-hub",
        description="Signed, logged, access-controlled data exchange between agencies "
        "(X-Road REST r1).",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    sub = parser.add_subparsers(dest="command", required=True)

    pki = sub.add_parser(
        "pki",
        help="DEVELOPMENT/TESTS ONLY: every key of a federation made on one machine",
        description=_DEV_ONLY,
    )
    pki_sub = pki.add_subparsers(dest="pki_command", required=True)
    init = pki_sub.add_parser(
        "init",
        help="DEVELOPMENT/TESTS ONLY: generate missing keys and certificates of every agency",
        description=_DEV_ONLY,
    )
    _common(init)

    up = sub.add_parser(
        "up",
        help="DEVELOPMENT/TESTS ONLY: a whole federation file in one process (registry, "
        "every node, demo backends) on the development PKI",
        description=_DEV_ONLY + " 'up' runs every node of the federation file in this one "
        "process until Ctrl-C or SIGTERM, then stops cleanly (in-flight exchanges finish, "
        "logs are flushed). Writes DATA_DIR/endpoints.json.",
    )
    _common(up)
    up.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"where nodes keep their logs (default: {DEFAULT_DATA})",
    )

    token = sub.add_parser(
        "token",
        help="print a short-lived JWT: a client subsystem's (auth=jwt), an auditor's, or the "
        "demo identity provider's for a citizen or an officer",
        description="A client token is signed with the subsystem's own key from the certs "
        "directory (the federation run by scripts/demo.sh keeps each client system's, "
        "auditor's and the identity provider's key under var/demo: --certs-dir var/demo), "
        "addressed to its node, and valid for one request. --citizen/--officer "
        "print a token of the demo identity provider (ThaID stand-in, issuer 'thaid'): claims "
        "sub, role, aud (--audience), iat, exp, jti; a node's data tracker accepts citizen "
        f"tokens of at most {TRACKER_MAX_LIFETIME} s, a case service up to "
        f"{IDP_MAX_LIFETIME} s.",
    )
    _common(token)
    token.add_argument(
        "client",
        nargs="?",
        help="client subsystem, e.g. TH/GOV/DGA/citizenportal (or an auditor's name)",
    )
    token.add_argument(
        "--auditor",
        action="store_true",
        help="CLIENT is an auditor: a token for --node's audit API",
    )
    token.add_argument("--node", help="with --auditor: the node id whose audit API to use")
    person = token.add_mutually_exclusive_group()
    person.add_argument("--citizen", metavar="ID", help="identity token for this citizen ID")
    person.add_argument("--officer", metavar="NAME", help="identity token for this officer")
    token.add_argument(
        "--audience",
        metavar="AUD",
        help="with --citizen/--officer: who the token is for (a node id for the data tracker, "
        "e.g. TH/GOV/DOPA/hub1, or a case service)",
    )
    token.add_argument(
        "--ttl",
        type=int,
        help=f"lifetime in seconds (client and auditor tokens: default 60, at most "
        f"{MAX_TOKEN_LIFETIME}; identity tokens: default {TRACKER_MAX_LIFETIME}, at most "
        f"{IDP_MAX_LIFETIME})",
    )
    tracker = sub.add_parser(
        "tracker",
        help="show a citizen who read her data: asks every node's data tracker",
        description="Mints a citizen token with the demo identity provider's key (--certs-dir "
        "var/demo for the federation of scripts/demo.sh), asks the "
        "data tracker of every node of the federation file that has audit_listen (HTTPS, "
        "checked against the federation root CA), and prints the merged entries, oldest "
        "first. Exits 1 if a node could not be asked (what the others said is printed).",
    )
    _common(tracker)
    tracker.add_argument("--citizen", metavar="ID", required=True, help="her citizen ID")
    tracker.add_argument("--json", action="store_true", help="print JSON instead of a table")
    demo = sub.add_parser(
        "demo",
        help="play the whole once-only story end to end on a fresh federation",
        description="Starts a fresh demo federation (config/demo-federation.toml copied onto "
        "free ports; for speed its nodes run in one process on a development PKI of its own, "
        "unlike scripts/demo.sh's) and the BMA case service in a work directory, then plays the "
        "Thai once-only scenario: a citizen applies uploading nothing, the evidence comes from "
        "DOPA, DBD, DOL and RD through the hub, she previews and confirms, an officer approves, "
        "a request without a purpose is refused, she reads her data tracker, and every node's "
        "log is verified offline (one timestamp also with openssl, if installed). Prints one "
        "line per event; exits 0 only if every step worked. Needs nothing but free loopback "
        "(127.0.0.1) ports: it runs next to 'xroad-hub up' without touching it.",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        help="an empty (or new) directory for keys, logs and databases; it is kept "
        "(default: a fresh temporary directory, removed afterwards unless --keep)",
    )
    demo.add_argument(
        "--keep", action="store_true", help="keep the temporary work directory to inspect it"
    )
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="show the components' log lines on stderr at the level of xroad-hub's own "
        "--log-level option (default without --verbose: warnings only)",
    )
    audit = sub.add_parser("audit", help="verify message logs (auditors)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check a node's whole message log offline",
        description="Checks every entry (sequence, leaf, digests, certificates, signatures, "
        "subject index) and every checkpoint with nothing but the log file and the federation "
        "root certificate, prints the Merkle root, names every bad entry and exits 1 if "
        "anything is wrong, including entries no witness-co-signed checkpoint covers. With "
        "--witness (or --witness-checkpoint) the log is also compared with the witness's own "
        "latest checkpoint of the node, which catches a log rewritten with its checkpoints.",
    )
    _log_argument(verify, node=False)
    verify.add_argument(
        "--tree-only",
        action="store_true",
        help="check sequence, leaf hashes, tree, subject index and checkpoints only (much "
        "faster); without it every entry's bodies and signatures are checked too",
    )
    verify.add_argument(
        "--witness",
        metavar="URL",
        help="the registry (e.g. http://127.0.0.1:8000, 'registry' in endpoints.json): fetch "
        "its witness's latest co-signed checkpoint of the node and check the log against it",
    )
    verify.add_argument(
        "--witness-checkpoint",
        metavar="FILE",
        type=Path,
        action="append",
        default=[],
        help="a witness checkpoint saved earlier (the registry's JSON answer to "
        "GET /witness?origin=xroad-hub/NODE); may be repeated",
    )
    verify.add_argument(
        "--node",
        help="the node whose log this is, e.g. TH/GOV/DBD/hub1 (default: the one its "
        "checkpoints name); with a PostgreSQL log, also where its schema is",
    )
    verify.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long entries may wait for a witnessed checkpoint before that is a "
        "problem (default 3600; raise it to check an older copy of a log)",
    )
    verify.add_argument(
        "--jobs",
        type=_jobs,
        default=min(_cpus(), 8),
        metavar="N",
        help="processes checking the entries of a large log (default: the CPUs this "
        f"command may use, at most 8: {min(_cpus(), 8)} here; on PostgreSQL each is a "
        "connection); 1 checks it in this process alone. The findings are the same",
    )
    _root_ca(verify)
    _revocation_arguments(verify)
    export = audit_sub.add_parser(
        "export",
        help="write the evidence bundle of one exchange",
        description="Writes one file proving one exchange: the signed request and answer, "
        "the log leaf, its inclusion proof, the node's checkpoint co-signed by the witness "
        "and timestamped, and the signed global configuration showing the node hosted the "
        "exchange's client or provider.",
    )
    export.add_argument("message_id", metavar="MESSAGE-ID", help="the exchange's X-Road-Id")
    _log_argument(export)
    export.add_argument("-o", "--output", type=Path, help="bundle file (default: MESSAGE-ID.json)")
    export.add_argument("--leaf-index", type=int, help="which entry, if the id occurs twice")
    bundle = audit_sub.add_parser(
        "verify-bundle",
        help="verify an evidence bundle with nothing but the federation root certificate",
        description="Prints VERIFIED and what is proven, or NOT VERIFIED and every missing "
        "or wrong piece (exit 1).",
    )
    bundle.add_argument("bundle", type=Path)
    _root_ca(bundle)
    _revocation_arguments(bundle)
    search = audit_sub.add_parser(
        "search",
        help="search a node's message log (JSON lines, one entry each, without bodies)",
        description="All filters combine (AND). Times are ISO 8601. Pages follow leaf order: "
        "pass the printed --after value to get the next page.",
    )
    _log_argument(search)
    for name in ("client", "service", "user-id", "issue", "message-id", "subject", "role",
                 "error-type"):  # fmt: skip
        search.add_argument(f"--{name}")
    search.add_argument("--status", type=int)
    search.add_argument("--since", type=datetime.fromisoformat, help="from this time on")
    search.add_argument("--until", type=datetime.fromisoformat, help="before this time")
    search.add_argument("--limit", type=int, default=100, help="page size (default 100)")
    search.add_argument("--after", type=int, default=-1, help="leaf index the page starts after")
    add_node_commands(sub)
    add_central_commands(sub)
    return parser


def _revocation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--globalconf",
        type=Path,
        metavar="FILE",
        help="a signed global configuration downloaded since (GET /globalconf of the central "
        "server): a signature by a certificate it lists as revoked counts only if the "
        "exchange was timestamped before the revocation",
    )
    parser.add_argument(
        "--anchor",
        type=Path,
        metavar="FILE",
        help="with --globalconf: the configuration anchor (anchor.json) or the signer's "
        "PEM certificate it is checked with (verify-bundle: default the bundle's signer)",
    )


def _load_revocations(
    args: argparse.Namespace, signer_der: bytes | None = None
) -> tuple[Revocation, ...] | None:
    """The revocations of --globalconf, checked with --anchor (or ``signer_der``); ()
    without --globalconf; None (after saying why) if they cannot be used."""
    from cryptography import x509

    from xroad_hub.messagelog.evidence import EvidenceError, load_revocations
    from xroad_hub.protocol.registration import RegistrationError, parse_anchor

    if args.globalconf is None:
        return ()
    roots = _load_root_ca(args.root_ca)
    try:
        if args.anchor is not None:
            data = args.anchor.read_bytes()
            signer = (
                x509.load_pem_x509_certificate(data)
                if data.lstrip().startswith(b"-----BEGIN")
                else parse_anchor(data).cert
            )
        elif signer_der is not None:
            signer = x509.load_der_x509_certificate(signer_der)
        else:
            print("xroad-hub: --globalconf needs --anchor FILE (the configuration anchor or "
                  "the signer's certificate) to check it", file=sys.stderr)  # fmt: skip
            return None
        return load_revocations(args.globalconf.read_bytes(), signer, roots or [])
    except OSError as exc:
        print(f"xroad-hub: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
    except (EvidenceError, RegistrationError, ValueError) as exc:
        print(f"xroad-hub: the revocations cannot be used: {exc}", file=sys.stderr)
    return None


def _log_argument(parser: argparse.ArgumentParser, *, node: bool = True) -> None:
    parser.add_argument(
        "log",
        help="the node's messagelog.sqlite, or its PostgreSQL database (postgresql://...; "
        "the node's schema is found from --node or --schema, or is the database's only log)",
    )
    parser.add_argument(
        "--schema", help="with a PostgreSQL log: the schema holding it (e.g. node_th_gov_dbd_hub1)"
    )
    if node:  # ``audit verify`` has a --node of its own, which picks the schema too
        parser.add_argument("--node", help="with a PostgreSQL log: the node whose log to read")


def _open_log(args: argparse.Namespace) -> LogReader | None:
    """The reader of the log the user named, or None after saying what to pass instead."""
    from xroad_hub.messagelog.source import open_reader

    try:
        return open_reader(args.log, schema=args.schema, node=args.node)
    except LogReadError as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        print(f"hint: {_hint(exc, args)}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    # The one boundary of the command line: a user's mistake is a message and a hint, never
    # a traceback. Anything else escaping is a bug and keeps its traceback.
    try:
        return _run(args)
    except (HubError, FileExistsError, FileNotFoundError, sqlite3.Error) as exc:
        print(f"xroad-hub: {_message(exc)}", file=sys.stderr)
        print(f"hint: {_hint(exc, args)}", file=sys.stderr)
        return 2


def _message(exc: BaseException) -> str:
    if isinstance(exc, XRoadError | ProtocolError):
        return exc.message
    if isinstance(exc, sqlite3.Error):
        return f"cannot read the message log: {exc}"
    return str(exc)


def _cpus() -> int:
    """CPUs this process may run on (its affinity, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if not 1 <= jobs <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes from 1 to 256")
    return jobs


def _hint(exc: BaseException, args: argparse.Namespace) -> str:
    """What to do next, by the kind of mistake."""
    if isinstance(exc, FileNotFoundError) and args.command in ("token", "tracker"):
        return (
            "the keys are where scripts/demo.sh made them: --certs-dir var/demo (or, for "
            "development only, where 'xroad-hub pki init' made them)"
        )
    if isinstance(exc, FileNotFoundError) and args.command != "audit":
        return "run 'xroad-hub pki init' to generate the development PKI (development only)"
    if isinstance(exc, ProtocolError | XRoadError):
        return (
            "identifiers are INSTANCE/CLASS/MEMBER[/SUBSYSTEM] of A-Z a-z 0-9 ' ( ) + , - . = ?,"
            " e.g. TH/GOV/DGA/devportal"
        )
    if isinstance(exc, Unavailable):
        return "nothing you typed was wrong: once the database answers again, run the same command"
    if isinstance(exc, ConfigError) and args.command == "node":
        return (
            f"fix {getattr(args, 'dir', 'NODEDIR')}/node.toml (one [node] table), or place the "
            "file named above; see 'xroad-hub node run --help'"
        )
    if isinstance(exc, ConfigError):
        return f"fix the federation file ({getattr(args, 'config', 'the --config file')})"
    if isinstance(exc, sqlite3.Error | FileNotFoundError | LogReadError):
        return (
            "name a node's messagelog.sqlite (in the data directory of 'xroad-hub up'), or its"
            " PostgreSQL database (postgresql://...) with --node or --schema"
        )
    return f"see 'xroad-hub {args.command} --help'"


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return _demo(args)
    if args.command == "node":
        return run_node_command(args)
    if args.command == "central":
        return run_central_command(args)
    if args.command == "audit":
        return {
            "verify": _audit_verify, "export": _audit_export, "verify-bundle": _verify_bundle,
            "search": _audit_search,
        }[args.audit_command](args)  # fmt: skip
    if args.command == "token" and (args.citizen or args.officer):
        # The identity provider is not part of the federation: no federation file needed.
        return _idp_token(args)
    fed = _federation(args)
    if args.command == "pki":
        created = ensure_pki(fed, args.certs_dir)
        print(
            f"{len(created)} files created in {args.certs_dir}"
            if created
            else f"PKI in {args.certs_dir} is complete; nothing created"
        )
        return 0
    if args.command == "token":
        return _token(fed, args)
    if args.command == "tracker":
        return _tracker(fed, args)
    if args.command == "up":
        return asyncio.run(_up(fed, args))
    return 1


def _federation(args: argparse.Namespace) -> FederationConfig:
    """The federation file named by --config; without one, ./config/demo-federation.toml (a
    source checkout), else the demo federation shipped in the package, whose layout, OpenAPI
    and WSDL paths then come from the package too, so that it runs from any directory."""
    if args.config is None:
        from xroad_hub.demo.runner import with_packaged_paths

        args.config = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else demo_federation()
        return with_packaged_paths(load_federation(args.config))
    return load_federation(args.config)


def _token(fed, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    layout = PkiLayout(args.certs_dir)
    if not args.client:
        print("xroad-hub: name a client subsystem or auditor, or use --citizen/--officer",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.audience:
        print("xroad-hub: --audience is for --citizen/--officer tokens", file=sys.stderr)
        return 2
    if args.auditor:
        # An auditor's token, for one node's audit API; reusable within its lifetime.
        if args.client not in fed.auditors:
            print(f"xroad-hub: no auditor {args.client!r} in {args.config}", file=sys.stderr)
            return 2
        if not args.node:
            print("xroad-hub: say which node's audit API the token is for (--node)",
                  file=sys.stderr)  # fmt: skip
            return 2
        issuer, audience = f"auditor:{args.client}", str(fed.node(args.node).id)
        key = load_private_key(layout.auditor_jwt(args.client).key)
    else:
        client = parse_subsystem_id(args.client)
        node = fed.node_of_client(client)
        reg = next(c for c in node.clients if c.id == client)
        if reg.auth != "jwt":
            print(f"xroad-hub: {client} authenticates with {reg.auth}, not jwt", file=sys.stderr)
            return 2
        issuer, audience = str(client), str(node.id)
        key = load_private_key(layout.client_jwt(str(client)).key)
    ttl = max(1, min(60 if args.ttl is None else args.ttl, MAX_TOKEN_LIFETIME))
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + ttl,
              "jti": str(uuid.uuid4())}  # fmt: skip
    print(jwt.encode(claims, key, algorithm="ES256"))
    return 0


# Officer names end up in X-Road-UserId and in logs: keep them short and plain.
_OFFICER = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def _idp_token(args: argparse.Namespace) -> int:
    """A token of the demo identity provider for a citizen or an officer."""
    from xroad_hub.node.trackerapi import mint_idp_token

    if args.client or args.auditor or args.node:
        print("xroad-hub: --citizen/--officer tokens take no CLIENT, --auditor or --node",
              file=sys.stderr)  # fmt: skip
        return 2
    if not args.audience:
        print("xroad-hub: say who the token is for (--audience)", file=sys.stderr)
        return 2
    ttl = TRACKER_MAX_LIFETIME if args.ttl is None else args.ttl
    if not 1 <= ttl <= IDP_MAX_LIFETIME:
        print(f"xroad-hub: --ttl must be 1..{IDP_MAX_LIFETIME} seconds", file=sys.stderr)
        return 2
    if args.citizen is not None:
        role, subject = "citizen", args.citizen.strip()
        if not is_valid(subject):
            print(f"xroad-hub: {subject!r} is not a valid citizen ID: 13 digits whose last is "
                  "the check digit", file=sys.stderr)  # fmt: skip
            return 2
    else:
        role, subject = "officer", args.officer.strip()
        if not _OFFICER.fullmatch(subject):
            print("xroad-hub: an officer name is 1-64 of A-Z a-z 0-9 . _ @ -", file=sys.stderr)
            return 2
    key = load_private_key(PkiLayout(args.certs_dir).idp_jwt().key)
    print(mint_idp_token(key, subject=subject, role=role, audience=args.audience, ttl=ttl))
    return 0


def _tracker(fed, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    """Ask every node's data tracker on the citizen's behalf, merge, print."""
    import ssl
    import urllib.error
    import urllib.request

    from xroad_hub.node.trackerapi import mint_idp_token

    citizen = args.citizen.strip()
    if not is_valid(citizen):
        print(f"xroad-hub: {citizen!r} is not a valid citizen ID: 13 digits whose last is the "
              "check digit", file=sys.stderr)  # fmt: skip
        return 2
    layout = PkiLayout(args.certs_dir)
    key = load_private_key(layout.idp_jwt().key)
    ctx = ssl.create_default_context(cafile=str(layout.root_ca.cert))
    nodes = [n for n in fed.nodes if n.audit_listen is not None]
    entries: list[dict[str, object]] = []
    failed = 0
    for node in nodes:
        host, port = node.audit_listen
        host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        # One token per node: its audience is that node, and it is reused while paging.
        token = mint_idp_token(key, subject=citizen, role="citizen", audience=str(node.id),
                               ttl=60)  # fmt: skip
        after: int | None = -1
        try:
            while after is not None:
                req = urllib.request.Request(
                    f"https://{host}:{port}/tracker/accesses?limit=1000&after={after}",
                    headers={"Authorization": f"Bearer {token}"},
                )
                with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                    page = json.loads(resp.read())
                entries.extend(page["entries"])
                after = page["next_after"]
        except urllib.error.HTTPError as exc:
            failed += 1
            print(f"xroad-hub: node {node.id} refused: HTTP {exc.code} "
                  f"{exc.read()[:300].decode(errors='replace')}", file=sys.stderr)  # fmt: skip
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            failed += 1
            print(f"xroad-hub: node {node.id} could not be asked: {exc}", file=sys.stderr)
    entries.sort(key=lambda e: (str(e["at"]), str(e["node"]), int(e["leaf_index"])))  # type: ignore[call-overload]
    if args.json:
        print(json.dumps(entries, ensure_ascii=False, indent=2))
    else:
        _print_accesses(citizen, entries, len(nodes) - failed)
    return 1 if failed else 0


def _print_accesses(citizen: str, entries: list[dict[str, object]], asked: int) -> None:
    if not entries:
        print(f"No agency read data about {citizen} (data trackers of {asked} node(s) asked).")
        return
    head = ("when (UTC)", "agency", "client", "official", "service", "evidence", "case",
            "purpose", "legal basis", "result", "message id")  # fmt: skip
    keys = ("agency", "client", "official", "service", "evidence_type", "issue", "purpose",
            "legal_basis")  # fmt: skip
    rows = []
    for e in entries:
        result = f"refused ({e['refusal']})" if e["refusal"] else f"answered {e['status']}"
        when = str(e["at"])[:19].replace("T", " ")
        rows.append([when, *(e[k] for k in keys), result, e["message_id"]])
    # Long free text (agency names, purposes) is cut; the result and the id never are.
    cells = [[_cell(v, 40 if i < len(head) - 2 else 200) for i, v in enumerate(row)]
             for row in [head, *rows]]  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(entries)} access(es) to data about {citizen}, from {asked} node(s)")


def _cell(value: object, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _audit_verify(args: argparse.Namespace) -> int:
    reader = _open_log(args)
    if reader is None:
        return 2
    with reader:
        roots = _load_root_ca(args.root_ca)
        if roots is None:
            return 2
        return _verify_with(args, reader, roots)


def _verify_with(args: argparse.Namespace, reader: LogReader, roots: list[x509.Certificate]) -> int:
    import base64

    from xroad_hub.messagelog.audit import (
        fetch_witness_checkpoint,
        iso_utc,
        load_witness_checkpoint,
        log_node,
        verify_log,
    )

    node = args.node or log_node(reader)
    witnesses = []
    try:
        witnesses += [load_witness_checkpoint(f) for f in args.witness_checkpoint]
        if args.witness:
            if node is None:
                print("xroad-hub: the log's checkpoints do not say which node wrote it; "
                      "name it with --node NODE-ID", file=sys.stderr)  # fmt: skip
                return 2
            fetched = fetch_witness_checkpoint(args.witness, node)
            if fetched is not None:
                witnesses.append(fetched)
            else:
                print(f"xroad-hub: the witness at {args.witness} has co-signed no checkpoint "
                      f"of {node}", file=sys.stderr)  # fmt: skip
    except (OSError, ValueError) as exc:
        print(f"xroad-hub: no witness checkpoint: {exc}; check --witness (the registry's "
              "URL) or --witness-checkpoint (a saved answer of GET /witness)",
              file=sys.stderr)  # fmt: skip
        return 2
    show = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\r{done}/{total} entries checked", end="", file=sys.stderr, flush=True)

    revocations = _load_revocations(args)
    if revocations is None:
        return 2
    report = verify_log(
        reader, roots, progress=progress, entries=not args.tree_only,
        witnesses=witnesses, node=args.node, grace=args.grace, revocations=revocations,
        jobs=args.jobs,
    )  # fmt: skip
    if show:
        print(file=sys.stderr)
    for finding in report.findings:
        print(f"BAD {finding}")
    for w in witnesses:
        print(f"compared with the witness checkpoint from {w.source}")
    if not witnesses:
        print("NOTE not compared with the witness's own checkpoint of the node (--witness "
              "REGISTRY-URL): a log rewritten with its checkpoints shows only there")  # fmt: skip
    if report.uncovered and report.uncovered_since is not None and report.covered:
        print(
            f"NOTE {report.uncovered} newest entries (from {report.covered} on, since "
            f"{iso_utc(report.uncovered_since)}) are not yet covered by a witnessed checkpoint"
        )
    root = base64.b64encode(report.root).decode()
    verdict = "OK" if report.ok else f"{len(report.findings)} problem(s)"
    plural = "es" if report.workers > 1 else ""
    shared = f" (checked by {report.workers} worker process{plural})" if report.workers else ""
    print(
        f"{report.entries} entries, {report.checkpoints} checkpoints ({report.witnessed} "
        f"witnessed, {report.timestamped} timestamped), root {root}: {verdict}{shared}"
    )
    return 0 if report.ok else 1


def _audit_search(args: argparse.Namespace) -> int:
    from xroad_hub.messagelog.audit import iso_utc, search_log
    from xroad_hub.messagelog.reader import LogReadError
    from xroad_hub.messagelog.search import SearchFilter

    query = SearchFilter(
        since=args.since, until=args.until, client=args.client, service=args.service,
        user_id=args.user_id, issue=args.issue, message_id=args.message_id,
        status=args.status, role=args.role, error_type=args.error_type, subject=args.subject,
    )  # fmt: skip
    reader = _open_log(args)
    if reader is None:
        return 2
    try:
        with reader:
            rows, next_after = search_log(reader, query, limit=args.limit, after=args.after)
    except (ValueError, OSError) as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        return 2
    except LogReadError as exc:
        print(f"xroad-hub: {reader.name} cannot be searched ({exc}); is it a node's "
              "messagelog.sqlite?", file=sys.stderr)  # fmt: skip
        return 2
    for row in rows:
        # Times as ISO 8601 UTC, the form --since and --until take.
        for key in ("started_at", "finished_at"):
            if isinstance(row.get(key), int | float):
                row[key] = iso_utc(row[key])
        print(json.dumps(row, ensure_ascii=False))
    if not rows:
        # On stderr: stdout stays JSON lines (empty), for scripts.
        print("no entry matched" + (f" after leaf {args.after}" if args.after >= 0 else ""),
              file=sys.stderr)  # fmt: skip
    if next_after is not None:
        print(f"more: --after {next_after}", file=sys.stderr)
    return 0


def _audit_export(args: argparse.Namespace) -> int:
    from xroad_hub.messagelog.evidence import EvidenceError, export_bundle
    from xroad_hub.privatefile import write_private

    reader = _open_log(args)
    if reader is None:
        return 2
    try:
        with reader:
            data = export_bundle(reader, args.message_id, args.leaf_index)
    except (EvidenceError, OSError) as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        return 2
    out = args.output or Path(f"{args.message_id}.json")
    write_private(out, data)  # the bundle names the citizen whose data was exchanged
    print(f"evidence for {args.message_id} written to {out}")
    return 0


def _load_root_ca(path: Path) -> list[x509.Certificate] | None:
    """The federation root certificate at ``path``, or None after saying what to pass."""
    from cryptography import x509

    try:
        return [x509.load_pem_x509_certificate(path.read_bytes())]
    except OSError as exc:
        problem = f"cannot read the federation root certificate {path}: {exc.strerror or exc}"
    except ValueError:
        problem = f"{path} is not a PEM certificate"
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    print(
        f"xroad-hub: {problem}{where}\n"
        "hint: pass --root-ca PATH, the federation's root CA certificate: "
        "certs/ca/root.cert.pem where 'xroad-hub pki init' ran, or the copy the federation "
        "published",
        file=sys.stderr,
    )
    return None


def _bundle_signer(data: bytes) -> bytes | None:
    """The configuration signer's certificate a bundle carries (checked by verify_bundle
    and by load_revocations against the root), to check a later configuration with."""
    import base64

    import orjson

    try:
        return base64.b64decode(orjson.loads(data)["globalconf"]["signer_cert"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _verify_bundle(args: argparse.Namespace) -> int:
    from xroad_hub.messagelog.evidence import EvidenceError, verify_bundle
    from xroad_hub.messagelog.evidence import iso_utc as _iso

    roots = _load_root_ca(args.root_ca)
    if roots is None:
        return 2
    try:
        data = args.bundle.read_bytes()
        revocations = _load_revocations(args, _bundle_signer(data))
        if revocations is None:
            return 2
        proof = verify_bundle(data, roots, revocations)
    except OSError as exc:
        print(f"xroad-hub: cannot read {args.bundle}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except EvidenceError as exc:
        print("NOT VERIFIED:")
        for problem in exc.problems:
            print(f"  - {problem}")
        return 1
    leaf = proof.leaf
    print(
        f"VERIFIED: {proof.node} ({leaf['role']} side) logged {leaf['client']} -> "
        f"{leaf['service']} (id {leaf['message_id']}, user {leaf['user_id']}, issue "
        f"{leaf['issue']}, status {leaf['status']})\n"
        f"  request signed by the client's member at {_iso(proof.request_signed_at)}"
        + (", answer signed by the provider's member" if leaf.get("response_meta_sha256") else "")
        + f"\n  checkpoint co-signed by {proof.witness}, timestamped "
        f"{_iso(proof.timestamped_at)}\n"
        f"  {proof.node} hosted the {leaf['role']} per the signed global configuration "
        f"(serial {proof.globalconf_serial}, issued {_iso(proof.globalconf_generated_at)})"
    )
    whose = {"client": "in the request signed by the client's member",
             "provider": "in the answer signed by the provider's member"}  # fmt: skip
    for subject, by in proof.subjects_signed_by.items():
        print(
            f"  subject {subject}: "
            + (
                f"named {whose[by]}"
                if by
                else "NOT PROVED (the body that named it was purged; only the node says so)"
            )
        )
    for line in proof.revoked_later:
        print(f"  revoked since, still valid for this exchange: {line}")
    if proof.subjects_signed_by:
        print(
            "  not proved: that the subjects are what the service took as whom the exchange "
            "concerns (the provider node's locators are not signed)"
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Play the demo story; 0 only if every step worked."""
    import shutil
    import tempfile

    from xroad_hub.demo.story import play

    if not args.verbose:
        # The story is the output; the components' routine events would drown it.
        configure_logging("warning")
    if args.workdir is not None:
        workdir, remove = args.workdir, False
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            # A used directory holds old keys, logs and cases: the story needs a fresh start.
            print(f"xroad-hub: {workdir} is not an empty directory; name a new or empty one",
                  file=sys.stderr)  # fmt: skip
            return 2
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir, remove = Path(tempfile.mkdtemp(prefix="xroad-hub-demo-")), not args.keep
    try:
        ok = asyncio.run(play(workdir, sys.stdout))
    finally:
        if remove:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")
    return 0 if ok else 1


async def _up(fed, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from xroad_hub.demo.runner import Federation

    created = ensure_pki(fed, args.certs_dir)
    if created:
        print(
            f"generated {len(created)} missing key/certificate files in {args.certs_dir}",
            file=sys.stderr,
        )
    federation = Federation(fed, args.certs_dir, args.data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await federation.start()
    print(
        f"federation up; endpoints in {args.data_dir / 'endpoints.json'}; Ctrl-C stops",
        file=sys.stderr,
    )
    try:
        await stop.wait()
    finally:
        await federation.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
