"""Key rotation with every program its own process: a running client node rolls its signing
key and then its auth key (``node keys rotate``, ``central approve``, ``node keys
activate``, restart of that node only); its exchanges go on with the new keys, the old
signing certificate is revoked afterwards, and the exchange signed with it before still
verifies from both nodes' logs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .separate_procs import (
    Proc,
    backend_server,
    get_ok,
    healthy,
    hub,
    make_central,
    provider_and_client_nodes,
    wait,
)
from .test_revocation_processes import DBD, HOSPITAL, MOPH, SERVICE, _call, _download

pytestmark = pytest.mark.slow

REFRESH = "1"


@pytest.fixture
def backend() -> Iterator[str]:
    with backend_server() as url:
        yield url


def _request_id(out: str) -> str:
    return out.split("rotation request ", 1)[1].split()[0]


def test_rotated_keys_keep_old_evidence_verifiable(tmp_path: Path, backend: str) -> None:
    assert SERVICE.startswith(DBD)
    cdir, central_url, anchor = make_central(tmp_path, {DBD: "DBD", MOPH: "MOPH"})
    procs: list[Proc] = []
    try:
        procs.append(Proc(tmp_path / "central.log", "central", "run", "--dir", cdir))
        wait("the central server", lambda: get_ok(f"{central_url}/globalconf"), procs)
        adir, bdir, a_health, b_client = provider_and_client_nodes(
            tmp_path, cdir, anchor, backend, provider=DBD, client=HOSPITAL, service=SERVICE
        )
        node_a = Proc(tmp_path / "dbd-node.log", "node", "run", "--dir", adir,
                      "--refresh-interval", REFRESH)  # fmt: skip
        procs.append(node_a)
        wait("node A", lambda: healthy(f"http://127.0.0.1:{a_health}"), procs)
        client_url = f"http://127.0.0.1:{b_client}"

        def start_b(n: int) -> Proc:
            node_b = Proc(tmp_path / f"moph-node-{n}.log", "node", "run", "--dir", bdir,
                          "--refresh-interval", REFRESH)  # fmt: skip
            procs.append(node_b)
            return node_b

        def exchange(what: str) -> str:
            answers: list[tuple[int, bytes, str]] = []

            def answered() -> bool:
                try:
                    answers.append(_call(client_url))
                except OSError:
                    return False
                return answers[-1][0] == 200

            wait(what, answered, procs)
            return answers[-1][2]

        node_b = start_b(1)
        first = exchange("the first exchange")
        old_sign = (bdir / "sign.cert.pem").read_bytes()

        # The signing key: rotated while the node runs, used from its restart on.
        request = _request_id(hub("node", "keys", "rotate", "--sign", "--dir", bdir))
        hub("central", "approve", request, "--dir", cdir)
        hub("node", "keys", "activate", "--sign", "--dir", bdir)
        assert (bdir / "sign.cert.pem").read_bytes() != old_sign
        assert node_b.stop() == 0, node_b.text()
        procs.remove(node_b)
        node_b = start_b(2)
        second = exchange("an exchange with the new signing key")

        # The auth key: once approved, the configuration names the new certificate, and
        # the provider refuses the old one until the node switches over and restarts.
        request = _request_id(hub("node", "keys", "rotate", "--auth", "--dir", bdir))
        hub("central", "approve", request, "--dir", cdir)
        refusal: list[dict[str, str]] = []

        def refused() -> bool:
            status, body, _ = _call(client_url)
            if status != 200:
                refusal.append(json.loads(body))
            return status != 200

        wait("the old auth certificate refused", refused, procs, timeout=15)
        assert refusal[-1]["type"] == "Server.ServerProxy.SslAuthenticationFailed", refusal
        hub("node", "keys", "activate", "--auth", "--dir", bdir)
        assert node_b.stop() == 0, node_b.text()
        procs.remove(node_b)
        node_b = start_b(3)
        exchange("an exchange with the new auth key")

        # The old signing certificate revoked later: exchanges go on.
        time.sleep(2.5)  # the later checkpoints are timestamped well before
        certs = hub("central", "certs", "--dir", cdir).splitlines()
        old_sha = next(line.split("\t")[3] for line in certs if f"\t{MOPH}\t" in line)
        hub("central", "revoke", "--cert", old_sha, "--reason", "rotated out", "--dir", cdir)
        time.sleep(2 * float(REFRESH))
        third = exchange("an exchange after the revocation of the old key")

        for p in (node_b, node_a):
            assert p.stop() == 0, p.text()
        later = tmp_path / "globalconf.json"
        later.write_bytes(_download(f"{central_url}/globalconf"))
        root = cdir / "ca.cert.pem"
        revocations = ["--globalconf", later, "--anchor", anchor]
        env = {**os.environ, "SSL_CERT_FILE": str(root)}
        for ndir in (adir, bdir):
            log = ndir / "data" / "messagelog.sqlite"
            for mid, revoked_since in ((first, True), (second, False), (third, False)):
                bundle = ndir / f"{mid}.json"
                hub("audit", "export", mid, log, "-o", bundle)
                out = hub("audit", "verify-bundle", bundle, "--root-ca", root, *revocations)
                assert out.startswith("VERIFIED"), out
                assert ("revoked since" in out) == revoked_since, out
            out = hub("audit", "verify", log, "--root-ca", root, *revocations, env=env)
            assert out.rstrip().endswith(": OK"), out
    finally:
        for p in reversed(procs):
            p.stop()
