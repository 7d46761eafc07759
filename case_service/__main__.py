"""``python -m case_service``: run the BMA licensing case service as its own process."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path

import structlog
from aiohttp import web

from .app import create_app
from .config import ConfigError, Settings, load_settings, parse_listen
from .logs import configure_logging

log = structlog.get_logger("case_service")

DESCRIPTION = """\
The Bangkok Metropolitan Administration's licensing case service (X-Road client subsystem
TH/GOV/BMA/licensing). A citizen applies for a food-business licence with her citizen id and
her company's juristic id; the service fetches every piece of evidence through BMA's hub node
(identity, house registration, company registration, tax clearance, title deed), keeps only
references and digests, lets her preview and confirm, and lets officers decide within the
legal processing time (SLA). Evidence about the company is fetched only once its registration
names her as a director; otherwise the application is refused.

Users authenticate with ES256 bearer tokens of the identity provider (issuer 'thaid', audience
the client id, role citizen or officer); mint demo tokens with
'xroad-hub token --citizen ID --audience TH/GOV/BMA/licensing'. Settings come from --config
(TOML), then flags; flags win.
"""

EPILOG = """\
Quick start (repository root):
  xroad-hub pki init                 # writes certs/, the files the example config names
  python -m case_service --config case_service/config.example.toml

TOML keys: listen, db, node_url, client_id, user_id_prefix, agency_prefix, fetch_timeout,
cache_entries; [tls] cert, key, ca; [server] cert, key; [idp] public_key, issuer,
max_token_lifetime; [case_types.<code>] title, number_prefix, sla_days, purpose, legal_basis,
evidence = {type = "citizen_id"|"juristic_id"}. See case_service/config.example.toml.

Routes (JSON; all but /health need 'Authorization: Bearer TOKEN'):
  GET  /health                                  public
  GET  /evidence-types                          citizen, officer
  POST /cases {citizen_id, juristic_id}         citizen: apply (201; 403 not-a-director)
  GET  /cases, GET /cases/{no}[?payload=0]      citizen (own cases), officer
  POST /cases/{no}/confirm | /withdraw          citizen (own case)
  POST /cases/{no}/evidence/{type}/retry        citizen (own case), officer
  POST /cases/{no}/decision {decision, reason}  officer
  GET  /officer/cases | /officer/overdue | /officer/stats     officer
Errors are {"error": CODE, "message": TEXT}: 400 invalid-request, 401 unauthenticated,
403 forbidden | not-a-director, 404 not-found, 409 illegal-transition. Shapes, statuses and
rules: case_service/README.md.

The case database is created 0600 (its directory 0700); it holds citizens' cases.
Stops cleanly on SIGTERM or Ctrl-C: requests in flight finish, the database is closed.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m case_service",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1:8600)")
    p.add_argument("--db", type=Path, help="SQLite file (default var/case-service/cases.db)")
    p.add_argument(
        "--node-url",
        help="BMA's hub node, client side (default https://127.0.0.1:8444; http:// for loopback)",
    )
    p.add_argument("--client-id", help="X-Road client subsystem (default TH/GOV/BMA/licensing)")
    p.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS to the node")
    p.add_argument("--tls-key", type=Path, help="its private key")
    p.add_argument("--tls-ca", type=Path, help="CA that signed the node's server certificate")
    p.add_argument("--server-cert", type=Path, help="serve HTTPS with this certificate")
    p.add_argument("--server-key", type=Path, help="... and this key")
    p.add_argument("--idp-public-key", type=Path, help="identity provider's ES256 public key")
    p.add_argument("--idp-issuer", help="expected token issuer (default thaid)")
    p.add_argument(
        "--sla-days", type=int, help="legal processing time of a food-business licence, days"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {
        "db_path": args.db,
        "node_url": args.node_url,
        "client_id": args.client_id,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_ca": args.tls_ca,
        "server_cert": args.server_cert,
        "server_key": args.server_key,
        "idp_public_key": args.idp_public_key,
        "idp_issuer": args.idp_issuer,
        "sla_days": args.sla_days,
    }
    if args.listen:
        overrides["listen_host"], overrides["listen_port"] = parse_listen(args.listen)
    return load_settings(args.config, **overrides)


def _server_ssl(settings: Settings) -> ssl.SSLContext | None:
    if settings.server_cert is None or settings.server_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.server_cert), str(settings.server_key))
    return ctx


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    tls = _server_ssl(settings)
    site = web.TCPSite(runner, settings.listen_host, settings.listen_port, ssl_context=tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
        scheme = "https" if tls else "http"
        log.info(
            "case_service.listening",
            url=f"{scheme}://{settings.listen_host}:{settings.listen_port}",
            node_url=settings.node_url,
            client_id=settings.client_id,
        )
        await stop.wait()
        log.info("case_service.stopping")
    finally:
        # Stops accepting, lets handlers in flight finish, then runs cleanup (db, hub).
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("case_service.stopped")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, json=args.log_json)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"case_service: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings))
    except (OSError, ValueError) as exc:
        # Port in use, unreadable key files: say so plainly instead of a traceback.
        log.error("case_service.failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
