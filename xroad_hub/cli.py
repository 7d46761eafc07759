"""``xroad-hub``: the command line of the hub."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import jwt

from .clientauth import MAX_TOKEN_LIFETIME
from .devpki import ensure_pki
from .federation import ConfigError, load_federation
from .identifiers import parse_subsystem_id
from .logs import configure_logging
from .pki import PkiLayout, load_private_key

DEFAULT_CONFIG = Path("config/demo-federation.toml")
DEFAULT_CERTS = Path("certs")
DEFAULT_DATA = Path("var/demo")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"federation file (default: {DEFAULT_CONFIG})",
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

    pki = sub.add_parser("pki", help="development PKI of the federation")
    pki_sub = pki.add_subparsers(dest="pki_command", required=True)
    init = pki_sub.add_parser(
        "init", help="generate missing keys and certificates (existing ones are kept)"
    )
    _common(init)

    up = sub.add_parser(
        "up",
        help="run the federation: demo backends, central registry and every node",
        description="Runs until Ctrl-C or SIGTERM, then stops cleanly (in-flight exchanges "
        "finish, logs are flushed). Writes DATA_DIR/endpoints.json.",
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
        help="print a short-lived JWT for a client subsystem registered with auth=jwt",
        description="The token is signed with the subsystem's own key from the certs "
        "directory, addressed to its node, and valid for one request.",
    )
    _common(token)
    token.add_argument(
        "client", help="client subsystem, e.g. TH/GOV/DGA/citizenportal (or an auditor's name)"
    )
    token.add_argument(
        "--auditor",
        action="store_true",
        help="CLIENT is an auditor: a token for --node's audit API",
    )
    token.add_argument("--node", help="with --auditor: the node id whose audit API to use")
    token.add_argument(
        "--ttl", type=int, default=60, help=f"lifetime in seconds (at most {MAX_TOKEN_LIFETIME})"
    )
    audit = sub.add_parser("audit", help="verify message logs (auditors)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check a node's whole message log offline",
        description="Checks every entry (sequence, leaf, digests, certificates, signatures) "
        "with nothing but the log file and the federation root certificate, prints the "
        "Merkle root, names every bad entry and exits 1 if anything is wrong.",
    )
    verify.add_argument("log", type=Path, help="the node's messagelog.sqlite")
    verify.add_argument(
        "--tree-only",
        action="store_true",
        help="check sequence, tree and checkpoints only (much faster); without "
        "it every entry's digests and signatures are checked too",
    )
    _root_ca(verify)
    export = audit_sub.add_parser(
        "export",
        help="write the evidence bundle of one exchange",
        description="Writes one file proving one exchange: the signed request and answer, "
        "the log leaf, its inclusion proof and the node's signed checkpoint.",
    )
    export.add_argument("message_id", metavar="MESSAGE-ID", help="the exchange's X-Road-Id")
    export.add_argument("log", type=Path, help="the node's messagelog.sqlite")
    export.add_argument("-o", "--output", type=Path, help="bundle file (default: MESSAGE-ID.json)")
    export.add_argument("--leaf-index", type=int, help="which entry, if the id occurs twice")
    bundle = audit_sub.add_parser(
        "verify-bundle",
        help="verify an evidence bundle with nothing but the federation root certificate",
    )
    bundle.add_argument("bundle", type=Path)
    _root_ca(bundle)
    search = audit_sub.add_parser(
        "search",
        help="search a node's message log (JSON lines, one entry each, without bodies)",
        description="All filters combine (AND). Times are ISO 8601. Pages follow leaf order: "
        "pass the printed --after value to get the next page.",
    )
    search.add_argument("log", type=Path, help="the node's messagelog.sqlite")
    for name in ("client", "service", "user-id", "issue", "message-id", "subject", "role",
                 "error-type"):  # fmt: skip
        search.add_argument(f"--{name}")
    search.add_argument("--status", type=int)
    search.add_argument("--since", type=datetime.fromisoformat, help="from this time on")
    search.add_argument("--until", type=datetime.fromisoformat, help="before this time")
    search.add_argument("--limit", type=int, default=100, help="page size (default 100)")
    search.add_argument("--after", type=int, default=-1, help="leaf index the page starts after")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    if args.command == "audit":
        return {
            "verify": _audit_verify, "export": _audit_export, "verify-bundle": _verify_bundle,
            "search": _audit_search,
        }[args.audit_command](args)  # fmt: skip
    try:
        fed = load_federation(args.config)
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
        if args.command == "up":
            return asyncio.run(_up(fed, args))
    except (ConfigError, FileExistsError, FileNotFoundError) as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        if isinstance(exc, FileNotFoundError):
            print("hint: run 'xroad-hub pki init' to generate the development PKI", file=sys.stderr)
        return 2
    return 1


def _token(fed, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    layout = PkiLayout(args.certs_dir)
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
    ttl = max(1, min(args.ttl, MAX_TOKEN_LIFETIME))
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + ttl,
              "jti": str(uuid.uuid4())}  # fmt: skip
    print(jwt.encode(claims, key, algorithm="ES256"))
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    import base64

    from cryptography import x509

    from .audit import verify_log

    if not args.log.is_file():
        print(f"xroad-hub: no log file at {args.log}", file=sys.stderr)
        return 2
    root = x509.load_pem_x509_certificate(args.root_ca.read_bytes())
    show = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\r{done}/{total} entries checked", end="", file=sys.stderr, flush=True)

    report = verify_log(args.log, [root], progress=progress, entries=not args.tree_only)
    if show:
        print(file=sys.stderr)
    for finding in report.findings:
        print(f"BAD {finding}")
    root = base64.b64encode(report.root).decode()
    verdict = "OK" if report.ok else f"{len(report.findings)} problem(s)"
    print(
        f"{report.entries} entries, {report.checkpoints} checkpoints "
        f"({report.witnessed} witnessed, {report.timestamped} timestamped), root {root}: "
        f"{verdict}"
    )
    return 0 if report.ok else 1


def _audit_search(args: argparse.Namespace) -> int:
    from .audit import search_log
    from .messagelog.search import SearchFilter

    query = SearchFilter(
        since=args.since, until=args.until, client=args.client, service=args.service,
        user_id=args.user_id, issue=args.issue, message_id=args.message_id,
        status=args.status, role=args.role, error_type=args.error_type, subject=args.subject,
    )  # fmt: skip
    try:
        rows, next_after = search_log(args.log, query, limit=args.limit, after=args.after)
    except (ValueError, OSError) as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    if next_after is not None:
        print(f"more: --after {next_after}", file=sys.stderr)
    return 0


def _audit_export(args: argparse.Namespace) -> int:
    from .evidence import EvidenceError, export_bundle

    try:
        data = export_bundle(args.log, args.message_id, args.leaf_index)
    except (EvidenceError, OSError) as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        return 2
    out = args.output or Path(f"{args.message_id}.json")
    out.write_bytes(data)
    print(f"evidence for {args.message_id} written to {out}")
    return 0


def _verify_bundle(args: argparse.Namespace) -> int:
    from cryptography import x509

    from .evidence import EvidenceError, verify_bundle

    root = x509.load_pem_x509_certificate(args.root_ca.read_bytes())
    try:
        leaf = verify_bundle(args.bundle.read_bytes(), [root])
    except (EvidenceError, OSError) as exc:
        print(f"NOT VERIFIED: {exc}")
        return 1
    print(
        f"VERIFIED: {leaf['role']} node logged {leaf['client']} -> {leaf['service']} "
        f"(id {leaf['message_id']}, user {leaf['user_id']}, issue {leaf['issue']}, "
        f"status {leaf['status']}); checkpoint timestamped "
        f"{leaf.get('_timestamped_at', 'no (no timestamp in the bundle)')}"
    )
    return 0


async def _up(fed, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from .runner import Federation

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
