"""``xroad-hub node run --dir NODEDIR``: one organisation's node, as its own process, started
from nothing but its own directory.

What it reads there: the configuration anchor (``anchor.json``: the central server's URL and
the certificate the global configuration must be signed with), the enrollment
(``enrollment.json``: which node this is), the keys made by ``node init`` and the
certificates fetched by ``node enroll fetch`` (see node/keys.py ``NodeDirKeys``), and
``node.toml``: one ``[node]`` table with the settings of a federation file's ``[[node]]``
table except ``id``, which is the enrollment's (``peer_listen`` defaults to the address the
node enrolled with). The global configuration comes from the central server, verified
against the anchor; the central server also runs the timestamp authority (``/tsa/``) and
the witness (``/witness``) under the anchor's URL, reached over HTTPS verified against the
federation CA (``tsa_url`` in node.toml names another TSA). Logs and state go to
``NODEDIR/data`` (the settings database and the message log go to PostgreSQL instead
with ``settings_dsn`` / ``messagelog_dsn``); ``NODEDIR/endpoints.json`` says where the node
listens while it runs.
Relative paths in node.toml (OpenAPI, WSDL, flat-file exports and layouts) are NODEDIR's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from adapters.flatfile.settings import resolve_path
from xroad_hub.errors import ConfigError
from xroad_hub.federation import NodeConfig, load_table
from xroad_hub.node.keys import NodeDirKeys
from xroad_hub.protocol.registration import Anchor, RegistrationError, parse_anchor

__all__ = ["NodeDir", "add_run_command", "load_node_dir", "run_node"]

log = structlog.get_logger("xroad_hub.node.run")

SETTINGS = "node.toml"
ENDPOINTS = "endpoints.json"
_EXAMPLE = '[node]\nclient_listen = "127.0.0.1:8080"'


def add_run_command(node_sub: Any) -> None:
    run = node_sub.add_parser(
        "run",
        help="run this node from its own directory (after 'node init' and 'enroll fetch')",
        description="Starts one node, as its own process, from nothing but --dir: the anchor, "
        "the enrollment, the node's own keys and certificates, and DIR/node.toml (one [node] "
        "table with the settings of a federation file's [[node]] table, without id: the id "
        "is the enrollment's; peer_listen defaults to the address the node enrolled with). "
        "The global configuration is downloaded from the central server and verified against "
        "the anchor; checkpoints are co-signed by the central server's witness and "
        "timestamped by its timestamp authority. Runs until SIGTERM or Ctrl-C, then finishes "
        "in-flight exchanges, writes a final checkpoint and stops.",
    )
    run.add_argument("--dir", type=Path, required=True, help="the node's directory")
    run.add_argument(
        "--refresh-interval",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how often to download the global configuration (default 60)",
    )


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError(text)  # argparse: "invalid _seconds value"; named below
    return value


_seconds.__name__ = "positive number of seconds"


@dataclass(frozen=True, slots=True)
class NodeDir:
    """What a node's directory says, checked before anything starts."""

    root: Path
    anchor: Anchor
    config: NodeConfig
    keys: NodeDirKeys

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def central_tls(self) -> ssl.SSLContext:
        """HTTPS to the central server: its certificate is issued by the federation CA the
        enrollment fetched, for the host of the anchor's URL."""
        return ssl.create_default_context(cafile=str(self.keys.root_ca))


def load_node_dir(root: Path) -> NodeDir:
    """Read and check a node's directory; a missing or half-done enrollment is a
    RegistrationError naming the command that completes it."""
    if not (root / "anchor.json").exists() or not (root / "enrollment.json").exists():
        raise RegistrationError(
            "NoEnrollment", f"{root} holds no enrollment; start one with 'xroad-hub node init "
            f"--anchor ANCHOR --member INSTANCE/CLASS/CODE --code CODE --dir {root}'",
        )  # fmt: skip
    anchor = parse_anchor((root / "anchor.json").read_bytes())
    try:
        state = dict(json.loads((root / "enrollment.json").read_text()))
        member, code, address = str(state["member"]), str(state["code"]), str(state["address"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistrationError(
            "NoEnrollment", f"{root}/enrollment.json is unreadable ({exc}); 'xroad-hub node "
            f"enroll cancel --dir {root}' and start over",
        ) from exc  # fmt: skip
    keys = NodeDirKeys(root, member)
    fetch = f"'xroad-hub node enroll fetch --dir {root}'"
    for what, paths in (("authentication", keys.auth()), ("signing", keys.member_sign(member))):
        if not paths.key.exists():
            raise RegistrationError(
                "NoEnrollment", f"the {what} key {paths.key} is missing; this directory's "
                f"enrollment is broken: 'xroad-hub node enroll cancel --dir {root}' and start over",
            )  # fmt: skip
        if not paths.cert.exists():
            raise RegistrationError(
                "NotRegistered", f"node {member}/{code} has no {what} certificate yet (request "
                f"{state.get('request_id', '?')} is {state.get('state', 'not sent')}); once the "
                f"central operator approved it, run {fetch}",
            )  # fmt: skip
    checkpoint = keys.checkpoint()
    if not checkpoint.key.exists() or not checkpoint.cert.exists():
        raise RegistrationError(
            "NotRegistered", f"node {member}/{code} has no checkpoint key and certificate "
            f"({checkpoint.cert.name}): it was enrolled before checkpoint keys were; enroll it "
            "again in a new directory ('xroad-hub node init') with a new code",
        )  # fmt: skip
    if not keys.root_ca.exists():
        raise RegistrationError("NotRegistered", f"{keys.root_ca} is missing; run {fetch}")
    for paths in (keys.auth(), keys.member_sign(member), checkpoint):
        # As ssh does: a key others could read may have been copied; say so, do not use it.
        if paths.key.stat().st_mode & 0o077:
            raise ConfigError(
                f"the private key {paths.key} is readable by other users; make it the node "
                f"operator's alone (chmod 600 {paths.key}) and consider it compromised if "
                "others could have read it"
            )
    return NodeDir(root, anchor, load_settings(root, f"{member}/{code}", address), keys)


def load_settings(root: Path, node_id: str, address: str) -> NodeConfig:
    """``root/node.toml``: one [node] table, read by the federation file's own loader."""
    path = root / SETTINGS
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: the node's own settings, one [node] table, e.g.\n{_EXAMPLE}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if set(data) != {"node"} or not isinstance(data["node"], dict):
        extra = sorted(set(data) - {"node"})
        raise ConfigError(
            f"{path}: holds one [node] table only"
            + (f" (not {', '.join(extra)})" if extra else "")
            + f", e.g.\n{_EXAMPLE}"
        )
    table = dict(data["node"])
    if "id" in table:
        raise ConfigError(
            f"{path}: [node] takes no id: this node is {node_id}, as enrolled; remove the id"
        )
    table["id"] = node_id
    table.setdefault("peer_listen", address)
    try:
        return _relative_to(root, load_table(NodeConfig, table, "[node]"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _relative_to(root: Path, cfg: NodeConfig) -> NodeConfig:
    """Files node.toml names by a relative path (OpenAPI documents, WSDL files, flat-file
    exports and layouts) are in the node's directory, wherever the node is started from."""

    def path(value: str | None) -> str | None:
        if value is None or "://" in value:
            return value
        return str(resolve_path(value, root.resolve()))

    services = []
    for s in cfg.services:
        options = dict(s.options)
        for name in ("source", "layout") if s.adapter == "flatfile" else ():
            if isinstance(options.get(name), str):
                options[name] = path(options[name])
        services.append(replace(s, options=options, openapi=path(s.openapi)))
    soap = tuple(replace(s, wsdl=path(s.wsdl) or s.wsdl) for s in cfg.soap_services)
    dirs = tuple(str(resolve_path(d, root.resolve())) for d in cfg.service_file_dirs)
    return replace(cfg, services=tuple(services), soap_services=soap, service_file_dirs=dirs)


def run_node(args: Any) -> int:
    node_dir = load_node_dir(args.dir)
    node_id = str(node_dir.config.id)
    # Every line this process logs names the node (the node's own tasks bind it too).
    with structlog.contextvars.bound_contextvars(node=node_id):
        return asyncio.run(_serve(node_dir, args.refresh_interval))


async def _serve(node_dir: NodeDir, refresh_interval: float) -> int:
    from xroad_hub.node.node import Node  # here: the node's parser needs none of it

    cfg, central = node_dir.config, node_dir.anchor.central_url
    node = Node(
        cfg,
        node_dir.keys,
        node_dir.anchor.globalconf_url,
        node_dir.data_dir,
        refresh_interval=refresh_interval,
        witness_url=f"{central}/witness",
        auditors=node_dir.keys.auditors(),
        tsa_url=cfg.tsa_url or f"{central}/tsa/",
        central_tls=node_dir.central_tls(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    urls = await node.start()
    endpoints = node_dir.root / ENDPOINTS
    endpoints.write_text(json.dumps({"node": str(cfg.id), **urls}, indent=2) + "\n")
    print(f"node {cfg.id} up (central server {central}); listening: "
          + ", ".join(f"{role} {url}" for role, url in urls.items())
          + "; Ctrl-C stops", file=sys.stderr)  # fmt: skip
    try:
        await stop.wait()
    finally:
        endpoints.unlink(missing_ok=True)
        await node.stop()
    return 0
