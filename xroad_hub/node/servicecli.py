"""``xroad-hub node service|access|group|settings|status``: the service administrator's
commands, each one call of the node's admin API (serviceadmin.py) with the administrator's
key (admincli.py's handling: --key-file or $XROAD_HUB_ADMIN_KEY, never an argument)."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from xroad_hub.privatefile import write_private

__all__ = ["SERVICE_COMMANDS", "add_service_commands", "run_service_command"]

SERVICE_COMMANDS = ("service", "access", "group", "clients", "settings", "status")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", required=True, metavar="URL", help="the node's admin API URL")
    p.add_argument("--key-file", type=Path, help="file holding the service administrator's key")
    p.add_argument(
        "--root-ca",
        type=Path,
        default=Path("certs/ca/root.cert.pem"),
        help="federation root certificate, for an https admin URL",
    )
    p.add_argument("--json", action="store_true", help="print the JSON answer")


def add_service_commands(node_sub: Any) -> None:
    service = node_sub.add_parser(
        "service",
        help="register and manage the node's services (role service-administrator)",
        description="Changes take effect at once, without a restart, and are recorded in the "
        "node's admin audit trail.",
    )
    ss = service.add_subparsers(dest="service_command", required=True)
    add = ss.add_parser(
        "add",
        help="register services from an OpenAPI document, a WSDL or a flat-file layout",
        description="REST: every operation of the OpenAPI 3 (JSON) document becomes a service "
        "code (its operationId, or one --code for all), served at --url, and getOpenAPI "
        "serves the document. SOAP: every operation of the WSDL (bridge: a plain SOAP "
        "service; passthrough: an X-Road SOAP service). Flat file: --layout and --file. "
        "Nothing is registered when any of it cannot be served.",
    )
    add.add_argument("--provider", required=True, help="the subsystem, e.g. TH/GOV/DOL/deeds")
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--openapi", metavar="FILE|URL", help="OpenAPI 3 document (JSON)")
    what.add_argument("--wsdl", metavar="FILE|URL", help="the SOAP service's WSDL")
    what.add_argument("--layout", metavar="FILE", help="a flat-file layout (schemas/...toml)")
    add.add_argument("--url", help="the backend's URL (REST: required; SOAP: default from WSDL)")
    add.add_argument("--mode", choices=["bridge", "passthrough"], default="bridge")
    add.add_argument("--file", metavar="PATH", help="flat file: the export file or folder")
    add.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="flat file: a further option (format, delimiter, encoding...)",
    )
    add.add_argument("--code", help="one service code for the whole OpenAPI document")
    add.add_argument("--version", dest="service_version", help="the service's version, e.g. v1")
    add.add_argument("--timeout", type=float)
    add.add_argument(
        "--allow", action="append", default=[], metavar="SUBSYSTEM|group:NAME|global:CODE",
        help="grant access at once (repeat)",
    )  # fmt: skip
    add.add_argument("--purpose", action="append", default=[], help="a purpose served (repeat)")
    add.add_argument("--legal-basis", action="append", default=[],
                     help="a legal basis served under (repeat)")  # fmt: skip
    add.add_argument(
        "--subject", action="append", default=[], metavar="LOCATOR",
        help="where a request names its data subject: path:N, query:NAME, body:NAME",
    )  # fmt: skip
    add.add_argument(
        "--answer-subject", action="append", default=[], metavar="LOCATOR",
        help="where answers name persons: json:PATH or xml:ELEMENT (repeat), or 'none'",
    )  # fmt: skip
    for name, helptext in (
        ("list", "the node's services"),
        ("show", "one service: its settings, access rights and version"),
        ("enable", "serve a disabled service again"),
        ("remove", "take a service away"),
    ):
        p = ss.add_parser(name, help=helptext)
        if name != "list":
            p.add_argument("id", help="the service, e.g. TH/GOV/DOL/deeds/getDeed")
    disable = ss.add_parser("disable", help="refuse a service (clients get ServiceDisabled)")
    disable.add_argument("id")
    disable.add_argument("--message", default="service is disabled by its provider")
    setp = ss.add_parser("set", help="change a service's backend URL, timeout or purposes")
    setp.add_argument("id")
    setp.add_argument("--url")
    setp.add_argument("--timeout", type=float)
    setp.add_argument("--purpose", action="append", help="the purposes served (replaces)")
    setp.add_argument("--legal-basis", action="append",
                      help="the legal bases served under (replaces)")  # fmt: skip
    setp.add_argument("--subject", action="append", metavar="LOCATOR",
                      help="where requests name their data subject (replaces)")  # fmt: skip
    setp.add_argument("--answer-subject", action="append", metavar="LOCATOR",
                      help="where answers name persons (replaces; 'none': nobody)")  # fmt: skip
    refresh = ss.add_parser("refresh", help="read a service's changed WSDL or OpenAPI again")
    refresh.add_argument("id")
    refresh.add_argument(
        "--from", dest="from_file", metavar="FILE",
        help="the changed document (default: the node reads it from where it was registered)",
    )  # fmt: skip

    access = node_sub.add_parser("access", help="access rights to the node's services")
    acs = access.add_subparsers(dest="access_command", required=True)
    for name in ("grant", "revoke"):
        p = acs.add_parser(name, help=f"{name} an access right to one service code")
        p.add_argument("id", help="the service")
        p.add_argument(
            "to",
            help="a subsystem (TH/GOV/DGA/portal), a local group (group:NAME) or a global"
            " group of the global configuration (global:CODE)",
        )
    alist = acs.add_parser("list", help="the access rights (of one service)")
    alist.add_argument("--service")

    group = node_sub.add_parser("group", help="the node's local groups of subsystems")
    gs = group.add_subparsers(dest="group_command", required=True)
    gadd = gs.add_parser("add", help="a new, empty local group")
    gadd.add_argument("name")
    gadd.add_argument("--description", default="")
    gs.add_parser("list", help="the local groups")
    for name in ("show", "remove"):
        gs.add_parser(name, help=f"{name} a local group").add_argument("name")
    for name in ("add-member", "remove-member"):
        p = gs.add_parser(name, help=f"{name.replace('-', ' ')}s to/from a local group")
        p.add_argument("name")
        p.add_argument("members", nargs="+", metavar="SUBSYSTEM")

    clients = node_sub.add_parser(
        "clients",
        help="the client subsystems this node hosts and how they connect",
        description="(node client add registers a subsystem at the central server; these "
        "commands set how the node authenticates it: mtls with its TLS certificate, jwt with "
        "its public key, http from loopback only.)",
    )
    cs = clients.add_subparsers(dest="clients_command", required=True)
    cs.add_parser("list", help="the hosted clients")
    for name in ("show", "remove"):
        cs.add_parser(name, help=f"{name} a hosted client").add_argument("id")
    for name in ("add", "set"):
        p = cs.add_parser(name, help=f"{name} a hosted client's connection settings")
        p.add_argument("id", help="the subsystem, e.g. TH/GOV/DGA/portal")
        p.add_argument("--auth", choices=["mtls", "jwt", "http"], required=name == "add")
        p.add_argument("--cert", type=Path, help="mtls: its TLS certificate (PEM)")
        p.add_argument("--jwt-key", type=Path, help="jwt: its public key (PEM)")
        p.add_argument("--default-purpose")
        p.add_argument("--default-legal-basis")

    settings = node_sub.add_parser(
        "settings", help="export or import the node's settings (backup; keys excluded)"
    )
    sts = settings.add_subparsers(dest="settings_command", required=True)
    sts.add_parser("export", help="write the settings to a file (0600)").add_argument(
        "--out", type=Path, required=True
    )
    sts.add_parser("import", help="replace the node's settings by an export's").add_argument(
        "file", type=Path
    )
    status = node_sub.add_parser("status", help="the node's services, rights and groups")
    subcommands = [*ss.choices.values(), *acs.choices.values(), *gs.choices.values(),
                   *cs.choices.values()]  # fmt: skip
    for parser in [*subcommands, *sts.choices.values(), status]:
        _common(parser)


def _q(service_id: str) -> str:
    return quote(service_id, safe="/")


def _document(location: str, kind: str, body: dict[str, Any]) -> None:
    """A local file is sent (the node may run elsewhere); a URL the node reads itself."""
    if urlsplit(location).scheme in ("http", "https"):
        body[f"{kind}_url"] = location
        return
    from xroad_hub.node.admincli import _Failed

    try:
        body[kind] = Path(location).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Failed(f"cannot read {location}: {exc}") from exc
    body["source"] = str(Path(location).resolve())


def _pem(path: Path) -> str:
    from xroad_hub.node.admincli import _Failed

    try:
        return Path(path).read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        # A DER file (.cer, .der) is the usual mistake: say how to make the PEM one.
        raise _Failed(
            f"{path} is not a PEM file (a DER certificate or key?); convert it, e.g."
            f" openssl x509 -inform der -in {path} -out {Path(path).with_suffix('.pem')}"
        ) from exc


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | bytes | None]:
    """(method, path, body) of the admin API call a command makes."""
    cmd = args.node_command
    if cmd == "status":
        return "GET", "/settings/status", None
    if cmd == "settings":
        if args.settings_command == "export":
            return "GET", "/settings/export", None
        return "POST", "/settings/import", Path(args.file).read_bytes()
    if cmd == "group":
        g = args.group_command
        if g == "add":
            return "POST", "/settings/groups", {"name": args.name, "description": args.description}
        if g == "list":
            return "GET", "/settings/groups", None
        if g == "show":
            return "GET", f"/settings/groups/{args.name}", None
        if g == "remove":
            return "DELETE", f"/settings/groups/{args.name}", None
        key = "add" if g == "add-member" else "remove"
        return "PATCH", f"/settings/groups/{args.name}", {key: args.members}
    if cmd == "clients":
        c = args.clients_command
        if c == "list":
            return "GET", "/settings/clients", None
        if c == "show":
            return "GET", f"/settings/clients/{_q(args.id)}", None
        if c == "remove":
            return "DELETE", f"/settings/clients/{_q(args.id)}", None
        body = {"id": args.id} if c == "add" else {}
        if args.auth:
            body["auth"] = args.auth
        for key, path in (("cert", args.cert), ("jwt_key", args.jwt_key)):
            if path is not None:
                body[key] = _pem(path)
        for key, value in (("default_purpose", args.default_purpose),
                           ("default_legal_basis", args.default_legal_basis)):  # fmt: skip
            if value is not None:
                body[key] = value
        if c == "add":
            return "POST", "/settings/clients", body
        return "PATCH", f"/settings/clients/{_q(args.id)}", body
    if cmd == "access":
        a = args.access_command
        if a == "list":
            query = f"?service={quote(args.service)}" if args.service else ""
            return "GET", f"/settings/access{query}", None
        path = "/settings/access" + ("/revoke" if a == "revoke" else "")
        return "POST", path, {"service": args.id, "to": args.to}
    s = args.service_command
    if s == "list":
        return "GET", "/settings/services", None
    if s == "show":
        return "GET", f"/settings/services/{_q(args.id)}", None
    if s == "remove":
        return "DELETE", f"/settings/services/{_q(args.id)}", None
    if s in ("enable", "disable"):
        patch: dict[str, Any] = {"disabled": s == "disable"}
        if s == "disable":
            patch["disabled_notice"] = args.message
        return "PATCH", f"/settings/services/{_q(args.id)}", patch
    if s == "set":
        answer = [] if args.answer_subject == ["none"] else args.answer_subject
        patch = {k: v for k, v in (("url", args.url), ("timeout", args.timeout),
                                   ("purposes", args.purpose), ("subject", args.subject),
                                   ("legal_bases", args.legal_basis),
                                   ("answer_subject", answer)) if v is not None}  # fmt: skip
        return "PATCH", f"/settings/services/{_q(args.id)}", patch
    if s == "refresh":
        body: dict[str, Any] = {"service": args.id}
        if args.from_file:
            probe: dict[str, Any] = {}
            _document(args.from_file, "document", probe)
            body["document"] = probe.get("document")
        return "POST", "/settings/refresh", body
    body = {"provider": args.provider, "allow": args.allow}
    answer = args.answer_subject
    if answer != ["none"]:
        if answer:
            body["answer_subject"] = answer
    else:
        body["answer_subject"] = []
    if args.openapi:
        _document(args.openapi, "openapi", body)
    elif args.wsdl:
        _document(args.wsdl, "wsdl", body)
        body["mode"] = args.mode
    else:
        # Read by the node; a path that exists here is sent absolute (the CLI usually runs
        # on the node's machine, from another working directory).
        body["layout"] = _absolute(args.layout)
        body["file"] = _absolute(args.file) if args.file else None
        body["options"] = {k: _option_value(v) for k, _, v in
                           (o.partition("=") for o in args.option if "=" in o)}  # fmt: skip
    for key, value in (("url", args.url), ("code", args.code), ("version", args.service_version),
                       ("timeout", args.timeout)):  # fmt: skip
        if value is not None:
            body[key] = value
    if args.purpose:
        body["purposes"] = args.purpose
    if args.legal_basis:
        body["legal_bases"] = args.legal_basis
    if args.subject:
        body["subject"] = args.subject
    return "POST", "/settings/services", body


def run_service_command(args: argparse.Namespace) -> int:
    from xroad_hub.node.admincli import _call, _Failed, _read_key

    try:
        key = _read_key(args.key_file)
        method, path, body = _request(args)
        answer = _call(args, method, path, key, body)
        if args.node_command == "settings" and args.settings_command == "export":
            write_private(args.out, json.dumps(answer, indent=1).encode())
            print(f"settings of {answer.get('node')} written to {args.out} (keys excluded)")
            return 0
    except _Failed as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"xroad-hub: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=1))
        return 0
    _print(args, answer)
    return 0


def _print(args: argparse.Namespace, answer: dict[str, Any]) -> None:
    if "registered" in answer or "refreshed" in answer:
        services = answer.get("registered") or answer.get("refreshed") or []
        verb = "registered" if "registered" in answer else "refreshed"
        print(f"{verb} {len(services)} service(s):")
        for s in services:
            _service(s)
        return
    if "services" in answer and isinstance(answer["services"], list):
        for s in answer["services"]:
            state = "disabled" if s["disabled"] else "enabled"
            print(f"{s['service']}  {s.get('version') or '-'}  {s['adapter']}  {state}"
                  f"  rights:{len(_rights(s))}")  # fmt: skip
        return
    if "service" in answer and "adapter" in answer:
        _service(answer)
        return
    if "access" in answer:
        for right in answer["access"]:
            print(f"{right['service']}  ->  {right['to']}")
        return
    if "groups" in answer and isinstance(answer["groups"], list):
        for g in answer["groups"]:
            print(f"{g['name']}  {len(g['members'])} member(s)  {g['description']}")
        return
    if "clients" in answer and isinstance(answer["clients"], list):
        for c in answer["clients"]:
            print(f"{c['client']}  {c['auth']}  {c.get('cert_sha256') or ''}")
        return
    if "client" in answer and "auth" in answer:
        extra = f"  certificate SHA-256 {answer['cert_sha256']}" if answer["cert_sha256"] else ""
        print(f"{answer['client']}: {answer['auth']}{extra}")
        return
    if "settings_database" in answer:  # node status
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(answer["by_adapter"].items()))
        print(f"node {answer['node']}: {answer['services']} service(s) ({kinds or 'none'}),"
              f" {answer['access_rights']} access right(s)")  # fmt: skip
        print(f"  disabled: {', '.join(answer['disabled']) or '(none)'}")
        groups = answer["groups"]
        print("  local groups: " + (", ".join(f"{g} ({n})" for g, n in sorted(groups.items()))
                                    or "(none)"))  # fmt: skip
        clients = answer["clients"]
        print("  hosted clients: " + (", ".join(f"{c} ({a})" for c, a in sorted(clients.items()))
                                      or "(none)"))  # fmt: skip
        print(f"  settings database: {answer['settings_database']}")
        return
    if "members" in answer:
        print(f"group {answer['name']}: {', '.join(answer['members']) or '(no members)'}")
        return
    print(json.dumps(answer, indent=1))


def _service(s: dict[str, Any]) -> None:
    state = "DISABLED: " + str(s.get("disabled_notice")) if s.get("disabled") else "enabled"
    print(f"  {s['service']}  version {s.get('version') or '-'}  ({s['adapter']}, {state})")
    if s.get("endpoints"):
        print(f"    operations: {', '.join(s['endpoints'])}")
    print(f"    purposes: {', '.join(s['purposes']) or '(any)'}")
    if s.get("legal_bases"):
        print(f"    legal bases: {'; '.join(s['legal_bases'])}")
    print(f"    request subject: {', '.join(s['subject']) or '(none)'}")
    print(f"    answer subject: {', '.join(s['answer_subject']) or '(answers name nobody)'}")
    rights = _rights(s)
    print(f"    access: {', '.join(rights) or '(nobody yet: node access grant)'}")
    for call in s.get("call", []):
        print(f"    clients call: <their node>{call}")


def _rights(s: dict[str, Any]) -> list[str]:
    return (
        s["allow"]
        + [f"group:{g}" for g in s["groups"]]
        + [f"global:{g}" for g in s.get("global_groups", [])]
    )


def _option_value(text: str) -> Any:
    """``--option KEY=VALUE``: a number or boolean as in the node.toml table it stands for
    (reload_interval=5, max_bad_share=0.01, header=true), anything else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _absolute(path: str) -> str:
    local = Path(path)
    return str(local.resolve()) if local.exists() else path
