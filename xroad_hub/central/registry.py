"""Central registry: publishes the federation's signed global configuration.

It reads the federation file and the certificates (node authentication certificates become
fingerprints, the root CA becomes the trusted CA) and serves ``GET /globalconf``: a document
signed with the configuration-signing key that expires after the configured validity. Each
download is signed afresh, so a node that keeps refreshing never holds an expired copy while
the registry is reachable.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from xroad_hub.central.witness import Witness, witness_routes
from xroad_hub.federation import FederationConfig
from xroad_hub.pki import PkiLayout, load_cert, load_ed25519_key, load_private_key
from xroad_hub.protocol.checkpoint import NoteSigner
from xroad_hub.protocol.globalconf import GlobalConf, NodeEntry, Revocation, sign_globalconf
from xroad_hub.protocol.signing import cert_fingerprint

__all__ = ["Registry"]

log = structlog.get_logger("xroad_hub.central.registry")


class Registry:
    def __init__(
        self, fed: FederationConfig, pki: PkiLayout, witness_state: Path | None = None
    ) -> None:
        self.fed = fed
        self._key = load_private_key(pki.globalconf_signer.key)
        der = serialization.Encoding.DER
        self._root_der = load_cert(pki.root_ca.cert).public_bytes(der)
        auth = {n.id: load_cert(pki.node_auth(str(n.id)).cert).public_bytes(der) for n in fed.nodes}
        self._nodes = tuple(
            NodeEntry(
                id=n.id,
                address=f"{n.peer_listen[0]}:{n.peer_listen[1]}",
                auth_cert_sha256=cert_fingerprint(auth[n.id]),
                clients=frozenset(n.hosted),
                auth_cert_der=auth[n.id],
            )
            for n in fed.nodes
        )
        # Serials increase across restarts (as the central server's): a node refuses a lower
        # serial than it accepted before. Each download is signed afresh, so milliseconds.
        self._serial = 0
        # Revocations the development registry publishes (tests add to it; the central
        # server's come from its database): a node whose auth certificate is here is left out.
        self.revocations: list[Revocation] = []
        witness_key = pki.registry_witness
        self.witness = Witness(
            NoteSigner(f"{fed.instance}/registry", load_ed25519_key(witness_key.key)),
            [load_cert(pki.root_ca.cert)],
            witness_state,
        )
        self.witness_cert = load_cert(witness_key.cert).public_bytes(der)

    def current(self, now: datetime | None = None) -> GlobalConf:
        now = now or datetime.now(UTC)
        self._serial = max(self._serial + 1, int(time.time() * 1000))
        revoked = {r.cert_sha256 for r in self.revocations}
        return GlobalConf(
            instance=self.fed.instance,
            serial=self._serial,
            generated_at=now,
            expires_at=now + timedelta(seconds=self.fed.registry.globalconf_validity),
            members=dict(self.fed.members),
            nodes=tuple(n for n in self._nodes if n.auth_cert_sha256 not in revoked),
            trusted_cas_der=(self._root_der,),
            monitoring_client=self.fed.registry.monitoring_client,
            revocations=tuple(self.revocations),
            groups=self.fed.global_groups,
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/globalconf", self._globalconf)
        app.router.add_routes(witness_routes(self.witness, self.witness_cert))
        return app

    async def _globalconf(self, request: web.Request) -> web.Response:
        conf = self.current()
        return web.Response(
            body=sign_globalconf(conf, self._key),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
