"""A revoked node is refused within one refresh, every program its own process: the central
server (``xroad-hub central run``) and two nodes (``xroad-hub node run --dir``). The central
operator revokes the client's node with ``xroad-hub central revoke``; nothing is restarted;
from the provider's next global-configuration refresh on, the client's exchanges are
refused with an X-Road error naming the revocation, while the exchange made before still
verifies offline and what the revoked node signed since does not."""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
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
    r1_get,
    wait,
)

pytestmark = pytest.mark.slow

DBD, MOPH = "TH/GOV/DBD", "TH/GOV/MOPH"
SERVICE = f"{DBD}/registry/companies"
HOSPITAL = f"{MOPH}/hospital"
REFRESH = 1.0  # seconds between global-configuration downloads of the provider's node
# The client's node refreshes rarely: it has not heard of its own revocation when it next
# calls, so it is the provider's node that must refuse it (TLS), and the client's log then
# holds requests signed after the revocation.
CLIENT_REFRESH = 20.0


@pytest.fixture
def backend() -> Iterator[str]:
    with backend_server() as url:
        yield url


def _call(client_url: str) -> tuple[int, bytes, str]:
    """One r1 request of the hospital to DBD's service."""
    return r1_get(client_url, SERVICE, HOSPITAL)


def _download(url: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the document is signed
    with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
        return bytes(resp.read())


def test_revoked_node_is_refused_within_one_refresh(tmp_path: Path, backend: str) -> None:
    cdir, central_url, anchor = make_central(tmp_path, {DBD: "DBD", MOPH: "MOPH"})
    procs: list[Proc] = []
    try:
        procs.append(Proc(tmp_path / "central.log", "central", "run", "--dir", cdir))
        wait("the central server", lambda: get_ok(f"{central_url}/globalconf"), procs)
        adir, bdir, a_health, b_client = provider_and_client_nodes(
            tmp_path, cdir, anchor, backend, provider=DBD, client=HOSPITAL, service=SERVICE
        )
        node_a = Proc(tmp_path / "dbd-node.log", "node", "run", "--dir", adir,
                       "--refresh-interval", str(REFRESH))  # fmt: skip
        node_b = Proc(tmp_path / "moph-node.log", "node", "run", "--dir", bdir,
                       "--refresh-interval", str(CLIENT_REFRESH))  # fmt: skip
        procs += [node_a, node_b]
        wait("node A", lambda: healthy(f"http://127.0.0.1:{a_health}"), procs)
        client_url = f"http://127.0.0.1:{b_client}"
        answers: list[tuple[int, bytes, str]] = []

        def answered() -> bool:
            try:
                answers.append(_call(client_url))
            except OSError:
                return False
            return answers[-1][0] == 200

        wait("the first exchange", answered, procs)
        before = answers[-1][2]
        time.sleep(2.5)  # the exchange is in a checkpoint timestamped well before

        out = hub("central", "revoke", "--node", f"{MOPH}/hub1", "--reason",
                  "agency left the federation", "--dir", cdir)  # fmt: skip
        assert "revoked auth certificate" in out and "revoked sign certificate" in out
        revoked_at = time.monotonic()
        refusals: list[tuple[int, dict[str, str]]] = []

        def refused() -> bool:
            status, body, _ = _call(client_url)
            if status == 200:
                return False
            refusals.append((status, json.loads(body)))
            return True

        wait("the refusal", refused, procs, timeout=REFRESH + 10)
        took = time.monotonic() - revoked_at
        status, error = refusals[-1]
        print(f"\nrevoked node refused {took:.2f} s after 'central revoke' (provider's node "
              f"refreshes every {REFRESH:g} s): {error['type']}")  # fmt: skip
        # The provider refuses the client node's TLS certificate (on a machine so slow that
        # the client's node refreshed first, that node refuses to sign itself).
        by_provider = error["type"] == "Server.ServerProxy.SslAuthenticationFailed"
        assert by_provider or error["type"] == "Server.ClientProxy.CertValidation", error
        assert "revoked at" in error["message"] and MOPH in error["message"], error
        assert took <= REFRESH + 2.0, took  # one refresh, and the time to download it
        for _ in range(3):  # and from now on every time
            status, body, _ = _call(client_url)
            assert status == 500 and "revoked" in json.loads(body)["message"]
        assert all(p.alive() for p in procs)  # nothing restarted, the provider serves on
        assert healthy(f"http://127.0.0.1:{a_health}")

        for p in (node_b, node_a):
            assert p.stop() == 0, p.text()
        later = tmp_path / "globalconf.json"
        later.write_bytes(_download(f"{central_url}/globalconf"))
        root = cdir / "ca.cert.pem"
        with_revocations = ["--globalconf", later, "--anchor", anchor]
        # The exchange before the revocation: still proven, by both nodes' evidence.
        for ndir in (adir, bdir):
            bundle = ndir / "before.json"
            hub("audit", "export", before, ndir / "data" / "messagelog.sqlite", "-o", bundle)
            out = hub("audit", "verify-bundle", bundle, "--root-ca", root, *with_revocations)
            assert out.startswith("VERIFIED"), out
            assert "revoked since, still valid for this exchange" in out, out
        # Each log: only what was signed after the revocation is named (what the client's
        # node signed before it heard, and the provider served before it heard), never the
        # exchange before.
        env = {**os.environ, "SSL_CERT_FILE": str(root)}
        for ndir in (adir, bdir):
            done = hub("audit", "verify", ndir / "data" / "messagelog.sqlite", "--root-ca",
                       root, *with_revocations, check=False, env=env)  # fmt: skip
            bad = [line for line in done.splitlines() if line.startswith("BAD")]
            assert all("revoked" in line for line in bad), done
            assert not any(line.startswith("BAD entry 0:") for line in bad), done
            unaware = hub("audit", "verify", ndir / "data" / "messagelog.sqlite", "--root-ca",
                          root, env=env)  # fmt: skip
            assert unaware.rstrip().endswith(": OK"), unaware  # the revocation tells them apart
        assert bad or not by_provider, "the client's requests signed since are not named"
    finally:
        for p in reversed(procs):
            p.stop()
