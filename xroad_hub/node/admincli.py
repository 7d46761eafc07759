"""``xroad-hub node ...``: an administrator's commands against a node's admin API."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from xroad_hub.federation import ADMIN_ROLES
from xroad_hub.listen import is_loopback_host
from xroad_hub.node.admin import key_digest

__all__ = ["KEY_ENV", "add_node_commands", "run_node_command"]

KEY_ENV = "XROAD_HUB_ADMIN_KEY"


def add_node_commands(sub: Any) -> None:
    """Adds ``node maintenance``, ``node slo`` and ``node admin-key`` to the CLI's subcommands."""
    node = sub.add_parser(
        "node", help="one organisation's node: enroll it, run it, administer it (admin API)"
    )
    node_sub = node.add_subparsers(dest="node_command", required=True)
    maint = node_sub.add_parser(
        "maintenance",
        help="switch a node's maintenance mode on or off",
        description="In maintenance mode the node refuses new exchanges (X-Road error "
        "Server.ClientProxy.Maintenance or Server.ServerProxy.Maintenance, HTTP 503) and its "
        "health check answers 503. Needs the system-administrator role; the change is "
        "recorded in the node's admin audit trail.",
    )
    maint.add_argument("state", choices=["on", "off", "status"])
    maint.add_argument(
        "--admin", required=True, metavar="URL", help="the node's admin API ('admin' in "
        "endpoints.json), e.g. http://127.0.0.1:5590"
    )  # fmt: skip
    maint.add_argument("--message", help="with on: why, shown to clients and in health")
    slo = node_sub.add_parser(
        "slo",
        help="service-level objectives: error-budget burn per service, alerts firing",
        description="Asks the node's admin API (GET ADMIN/slo; roles monitor, security-officer "
        "or system-administrator) and prints, per service with an objective, the burn rates "
        "over 1 h and 5 min (alert at 14.4, as Google's SRE workbook has it) and the error "
        "budget left. Exits 1 while an alert fires.",
    )
    slo.add_argument("--admin", required=True, metavar="URL", help="the node's admin API URL")
    slo.add_argument("--json", action="store_true", help="print the JSON answer")
    for command in (maint, slo):
        command.add_argument(
            "--key-file",
            type=Path,
            help=f"file holding the administrator's API key (default: ${KEY_ENV})",
        )
        command.add_argument(
            "--root-ca",
            type=Path,
            default=Path("certs/ca/root.cert.pem"),
            help="federation root certificate, for an https admin URL",
        )
    key = node_sub.add_parser(
        "admin-key",
        help="make a new administrator API key and print its [[node.admin]] entry",
        description="Prints the key once (give it to the administrator) and the entry for "
        "the node's section of the federation file, which holds only the key's SHA-256.",
    )
    key.add_argument("--name", required=True, help="the administrator's name, e.g. alice")
    key.add_argument(
        "--role",
        action="append",
        required=True,
        choices=sorted(ADMIN_ROLES),
        help="a role of the key (repeat for several)",
    )
    trail = node_sub.add_parser(
        "trail",
        help="verify and print the node's administration audit trail",
        description="Checks every change recorded in NODEDIR/data/admin-audit.jsonl: each line "
        "must name the hash of the one before it and carry the node's signature (its checkpoint "
        "key). Prints the changes (who, when, what) and the trail's head; exits 1, naming the "
        "first bad line, when an entry was edited, deleted, inserted or forged. Compare the head "
        "with one you kept earlier to see that no change was cut off the end.",
    )
    trail.add_argument("--dir", type=Path, required=True, help="the node's directory")
    trail.add_argument(
        "--cert", type=Path, help="the node's checkpoint certificate, from a copy you trust "
        "(default: the one in the node's directory)"
    )  # fmt: skip
    trail.add_argument("--quiet", action="store_true", help="only the summary")
    upgrade = node_sub.add_parser(
        "upgrade-log",
        help="upgrade a version 4 message log to version 5 (the node must be stopped)",
        description="Version 5 stores each entry's leaf hash instead of its leaf, which is "
        "rebuilt from the entry's columns (about half the bytes per exchange). Writes the "
        "upgraded log beside the old one, entry by entry, keeping an entry only if its columns "
        "give exactly the leaf stored with it, so the tree, its root and every checkpoint stay "
        "as they were; then keeps the old log, unchanged, for audit (a file as FILE.v4, a "
        "PostgreSQL schema as SCHEMA_v4) and puts the new one in its place. Stops, changing "
        "nothing, at the first entry whose columns do not give its leaf (the log was altered: "
        "check it with 'audit verify' of the version that wrote it).",
    )
    upgrade.add_argument(
        "log", metavar="LOG", help="the node's message log: NODEDIR/data/messagelog.sqlite, or "
        "its PostgreSQL database (postgresql://...)"
    )  # fmt: skip
    upgrade.add_argument("--schema", help="with a PostgreSQL log: the schema holding it")
    upgrade.add_argument("--node", help="with a PostgreSQL log: the node whose log it is")
    from xroad_hub.node.enroll import add_enroll_commands

    add_enroll_commands(node_sub)  # node init, node enroll, node client (issue 12)
    from xroad_hub.node.noderun import add_run_command

    add_run_command(node_sub)  # node run --dir
    from xroad_hub.node.rotation import add_keys_commands

    add_keys_commands(node_sub)  # node keys rotate|activate
    from xroad_hub.node.servicecli import add_service_commands

    add_service_commands(node_sub)  # node service, access, group, clients, settings, status


def run_node_command(args: argparse.Namespace) -> int:
    if args.node_command == "admin-key":
        return _admin_key(args)
    if args.node_command == "trail":
        return _trail(args)
    if args.node_command == "upgrade-log":
        return _upgrade_log(args.log, args.schema, args.node)
    if args.node_command == "keys":
        from xroad_hub.node.rotation import run_keys_command

        return run_keys_command(args)
    if args.node_command == "run":
        from xroad_hub.node.noderun import run_node

        return run_node(args)
    if args.node_command in ("init", "enroll", "client"):
        from xroad_hub.node.enroll import run_enroll_command

        return run_enroll_command(args)
    from xroad_hub.node.servicecli import SERVICE_COMMANDS, run_service_command

    if args.node_command in SERVICE_COMMANDS:
        return run_service_command(args)
    try:
        key = _read_key(args.key_file)
        if args.node_command == "slo":
            from xroad_hub.node.slo import print_slo

            return print_slo(args.admin, key, as_json=args.json, root_ca=args.root_ca)
        if args.state == "status":
            answer = _call(args, "GET", "/maintenance", key, None)
        else:
            body: dict[str, Any] = {"enabled": args.state == "on"}
            if args.message:
                body["message"] = args.message
            answer = _call(args, "POST", "/maintenance", key, body)
    except _Failed as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        return 2
    state = "on" if answer.get("maintenance") else "off"
    note = f" ({answer['message']})" if answer.get("message") else ""
    print(f"maintenance mode: {state}{note}")
    return 0


class _Failed(Exception):
    pass


def _trail(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from xroad_hub.node.admin import AdminAudit, AdminTrailBroken
    from xroad_hub.node.noderun import load_node_dir

    node_dir = load_node_dir(args.dir)
    cert_path = args.cert or node_dir.keys.checkpoint().cert
    try:
        key = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_key()
    except (OSError, ValueError) as exc:
        print(f"xroad-hub: cannot read the certificate {cert_path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(key, ed25519.Ed25519PublicKey):
        print(f"xroad-hub: {cert_path} is not a checkpoint (Ed25519) certificate", file=sys.stderr)
        return 2
    audit = AdminAudit(node_dir.data_dir / "admin-audit.jsonl", str(node_dir.config.id))
    try:
        report = audit.verify(key)
    except AdminTrailBroken as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        for e in audit.entries():
            detail = json.dumps(e["detail"], ensure_ascii=False) if "detail" in e else ""
            print(f"{e.get('seq', '-')}\t{e.get('at')}\t{e.get('admin')}\t{e.get('action')}"
                  f"\t{detail}")  # fmt: skip
    older = f", {report.unchained} older unchained" if report.unchained else ""
    print(
        f"admin trail of {node_dir.config.id}: {report.entries} entries{older}, chain and "
        f"signatures intact; head {report.head}"
    )
    return 0


def _upgrade_log(log: str, schema: str | None, node: str | None) -> int:
    from xroad_hub.messagelog.postgres import is_dsn
    from xroad_hub.messagelog.reader import LogReadError
    from xroad_hub.messagelog.source import log_schema
    from xroad_hub.messagelog.upgrade import (
        UpgradeError,
        upgrade_postgres_log,
        upgrade_sqlite_log,
    )

    def progress(done: int, total: int) -> None:
        print(f"upgraded {done} of {total} entries", file=sys.stderr)

    try:
        if not is_dsn(log):
            kept = str(upgrade_sqlite_log(Path(log), progress))
        else:
            try:
                schema = log_schema(log, schema=schema, node=node)
            except LogReadError as exc:
                print(f"xroad-hub: {exc}", file=sys.stderr)
                return 2
            kept = "schema " + upgrade_postgres_log(log, schema, progress)
            log = f"schema {schema}"
    except UpgradeError as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        return 1
    print(f"{log} is a version 5 log now; the version 4 log is kept as {kept}")
    return 0


def _admin_key(args: argparse.Namespace) -> int:
    key = secrets.token_urlsafe(32)
    roles = ", ".join(f'"{r}"' for r in sorted(set(args.role)))
    print(f"API key (shown once; keep it secret, e.g. in ${KEY_ENV}):\n  {key}\n")
    print("Add to the node's section of the federation file, then restart the node:")
    print(f'  [[node.admin]]\n  name = "{args.name}"\n  key_sha256 = "{key_digest(key)}"')
    print(f"  roles = [{roles}]")
    return 0


def _read_key(path: Path | None) -> str:
    # Never a command-line argument: other local users see those in the process list.
    if path is not None:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _Failed(f"cannot read the key file {path}: {exc.strerror}") from exc
    else:
        key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise _Failed(f"no API key: give --key-file FILE or set {KEY_ENV}")
    if not key.isascii() or not key.isprintable() or " " in key:
        # Else http.client's refusal quotes the header, and with it the key, to the terminal.
        raise _Failed("the API key holds spaces, control or non-ASCII characters; it must be"
                      " the one line 'xroad-hub node admin-key' printed")  # fmt: skip
    return key


def _call(
    args: argparse.Namespace,
    method: str,
    path: str,
    key: str,
    body: dict[str, Any] | bytes | None,
) -> dict[str, Any]:
    url = args.admin.rstrip("/") + path
    parts = urlsplit(url)
    if parts.scheme != "https" and not (
        parts.scheme == "http" and is_loopback_host(parts.hostname or "")
    ):
        # The key would cross the network in clear text (the node itself serves plain HTTP
        # on loopback only, but the key is sent before any answer).
        raise _Failed(f"--admin {args.admin}: use https:// (plain http:// only to a loopback"
                      " address, e.g. http://127.0.0.1:PORT)")  # fmt: skip
    context = None
    if url.startswith("https://"):
        try:
            context = ssl.create_default_context(cafile=str(args.root_ca))
        except OSError as exc:
            raise _Failed(f"cannot read the root certificate {args.root_ca} (--root-ca)") from exc
        # The host name is checked: the node's certificate names the host it enrolled with
        # (and localhost, 127.0.0.1); the key must not go to another holder of a CA cert.
    request = urllib.request.Request(
        url,
        method=method,
        data=body if body is None or isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        # No proxy from the environment: a plain-HTTP hop to loopback through one would hand
        # the key to the proxy in clear text.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        with opener.open(request, timeout=10) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        hint = {401: "; check the key (--key-file or $XROAD_HUB_ADMIN_KEY)"}.get(exc.code, "")
        raise _Failed(f"the admin API refused: HTTP {exc.code}: {reason}{hint}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        if isinstance(why, ssl.SSLCertVerificationError):
            raise _Failed(
                f"the admin API at {args.admin} did not prove it is that host: "
                f"{why.verify_message}; use the host name in the node's certificate (its "
                "enrolled address, localhost or 127.0.0.1) and the federation's --root-ca"
            ) from exc
        raise _Failed(
            f"cannot reach the admin API at {args.admin}: {why}; is the node running with"
            " admin_listen set?"
        ) from exc
