"""End to end, each program its own process: the central server runs as
``xroad-hub central run``; a new agency's node is initialised with ``xroad-hub node init``;
the operator approves with the CLI; the node fetches its certificates; the global
configuration downloaded from the central server, verified against the anchor by the
node's own globalconf code, lists the node with its auth certificate."""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xroad_hub.dev.testing import free_port
from xroad_hub.protocol.globalconf import GlobalConf, verify_globalconf
from xroad_hub.protocol.identifiers import parse_client_id, parse_node_id
from xroad_hub.protocol.registration import parse_anchor
from xroad_hub.protocol.signing import cert_fingerprint

pytestmark = pytest.mark.slow

MOPH = "TH/GOV/MOPH"


def hub(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "xroad_hub.cli", *map(str, args)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"xroad-hub {args} failed: {done.stdout}{done.stderr}")
    return done


def _globalconf(url: str, anchor: Path) -> GlobalConf:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the signature is checked
    with urllib.request.urlopen(f"{url}/globalconf", timeout=10, context=ctx) as resp:
        data = resp.read()
    return verify_globalconf(data, parse_anchor(anchor.read_bytes()).cert)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    cdir, url = tmp_path / "central", f"https://127.0.0.1:{free_port()}"
    hub("central", "init", "--dir", cdir, "--instance", "TH", "--url", url)
    hub("central", "member", "add", MOPH, "--name", "Ministry of Public Health", "--dir", cdir)
    anchor = tmp_path / "anchor.json"
    hub("central", "anchor", "--dir", cdir, "-o", anchor)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xroad_hub.cli", "central", "run", "--dir", str(cdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _globalconf(url, anchor)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"central did not start: {proc.stderr}") from None
                time.sleep(0.1)
        yield cdir, url, anchor
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def test_new_agency_joins_through_the_central_server(
    central: tuple[Path, str, Path], tmp_path: Path
) -> None:
    cdir, url, anchor = central
    ndir = tmp_path / "moph-node"
    started = time.monotonic()
    out = hub("node", "init", "--anchor", anchor, "--member", MOPH, "--code", "hub1",
              "--dir", ndir, "--address", "127.0.0.1:5600").stdout  # fmt: skip
    assert "registration request 1" in out
    for key in ("auth.key.pem", "sign.key.pem"):
        assert stat.S_IMODE((ndir / key).stat().st_mode) == 0o600
    pending = hub("central", "requests", "--dir", cdir).stdout
    assert "authCertReg" in pending and f"{MOPH}/hub1" in pending
    assert hub("node", "enroll", "fetch", "--dir", ndir, check=False).returncode == 3
    assert _globalconf(url, anchor).nodes == ()
    hub("central", "approve", "1", "--dir", cdir)
    out = hub("node", "enroll", "fetch", "--dir", ndir).stdout
    assert "APPROVED" in out
    conf = _globalconf(url, anchor)
    elapsed = time.monotonic() - started
    print(f"\nnode init -> approved, certificates fetched, in globalconf: {elapsed:.2f} s")
    auth = x509.load_pem_x509_certificate((ndir / "auth.cert.pem").read_bytes())
    node = conf.node(parse_node_id(f"{MOPH}/hub1"))
    assert node is not None and node.address == "127.0.0.1:5600"
    assert node.auth_cert_sha256 == cert_fingerprint(auth.public_bytes(serialization.Encoding.DER))
    assert (
        auth.public_key()
        == serialization.load_pem_private_key(
            (ndir / "auth.key.pem").read_bytes(), None
        ).public_key()
    )
    # The private keys never left the node's directory: nothing in central's holds them.
    key_pem = (ndir / "auth.key.pem").read_bytes()
    assert not any(key_pem in p.read_bytes() for p in cdir.iterdir() if p.is_file())

    # A subsystem, the same way: signed by the node's auth key, approved centrally.
    hub("node", "client", "add", f"{MOPH}/hospital", "--dir", ndir)
    hub("central", "approve", "2", "--dir", cdir)
    node = _globalconf(url, anchor).node(parse_node_id(f"{MOPH}/hub1"))
    assert node is not None and parse_client_id(f"{MOPH}/hospital") in node.clients

    # A second node may not take the same code, and nothing changes.
    other = hub("node", "init", "--anchor", anchor, "--member", MOPH, "--code", "hub1",
                "--dir", tmp_path / "other", check=False)  # fmt: skip
    assert other.returncode == 2 and "already registered" in other.stderr
    assert "Traceback" not in other.stderr
    assert "no pending requests" in hub("central", "requests", "--dir", cdir).stdout
    audit = hub("central", "audit", "--dir", cdir).stdout
    assert "request.approve" in audit and "hash chain intact" in audit


def test_declined_and_cancelled_enrollments(
    central: tuple[Path, str, Path], tmp_path: Path
) -> None:
    cdir, url, anchor = central
    ndir = tmp_path / "n"
    hub("node", "init", "--anchor", anchor, "--member", MOPH, "--code", "hub2", "--dir", ndir)
    hub("central", "decline", "1", "--reason", "address not ours", "--dir", cdir)
    done = hub("node", "enroll", "status", "--dir", ndir, check=False)
    assert done.returncode == 1 and "address not ours" in done.stdout
    assert _globalconf(url, anchor).nodes == ()
    hub("node", "enroll", "cancel", "--dir", ndir)
    assert not (ndir / "auth.key.pem").exists()
    # Start over; cancel while pending: the central server marks it, the code is free again.
    hub("node", "init", "--anchor", anchor, "--member", MOPH, "--code", "hub2", "--dir", ndir)
    assert "request 2 cancelled" in hub("node", "enroll", "cancel", "--dir", ndir).stdout
    assert "CANCELLED" in hub("central", "requests", "--all", "--dir", cdir).stdout
    hub("node", "init", "--anchor", anchor, "--member", MOPH, "--code", "hub2", "--dir", ndir)


def test_unknown_member_and_tampered_anchor(
    central: tuple[Path, str, Path], tmp_path: Path
) -> None:
    cdir, _, anchor = central
    done = hub("node", "init", "--anchor", anchor, "--member", "TH/GOV/NOBODY", "--code", "x",
               "--dir", tmp_path / "n", check=False)  # fmt: skip
    assert done.returncode == 2 and "not a member" in done.stderr
    assert not (tmp_path / "n" / "auth.key.pem").exists()
    doc = orjson.loads(anchor.read_bytes())
    doc["verification_cert_sha256"] = "0000 " * 15 + "0000"
    bad = tmp_path / "bad-anchor.json"
    bad.write_bytes(orjson.dumps(doc))
    done = hub("node", "init", "--anchor", bad, "--member", MOPH, "--code", "x",
               "--dir", tmp_path / "m", check=False)  # fmt: skip
    assert done.returncode == 2 and "does not match its hash" in done.stderr
    assert "no pending requests" in hub("central", "requests", "--dir", cdir).stdout
    assert os.path.exists(cdir / "central.sqlite")


def test_the_node_keeps_the_anchor_it_checked(
    central: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """The anchor file is read once: one swapped after its hash was checked (a shared,
    writable download directory) is not what the node then trusts for every configuration."""
    import argparse

    from xroad_hub.node.enroll import _init
    from xroad_hub.pki import generate_key, issue_cert, make_root_ca
    from xroad_hub.protocol.globalconf import signer_name
    from xroad_hub.protocol.registration import build_anchor

    _, _, anchor = central
    checked = anchor.read_bytes()
    # The attacker's own configuration signer, in an anchor consistent with itself.
    _, fake_ca = make_root_ca("attacker")
    fake = issue_cert(generate_key(), fake_ca, signer_name("TH"), generate_key(), purpose="sign")
    swapped = build_anchor("TH", parse_anchor(checked).central_url, fake)

    class Swapping(type(anchor)):  # type: ignore[misc]
        reads = 0

        def read_bytes(self) -> bytes:
            Swapping.reads += 1
            return checked if Swapping.reads == 1 else swapped

    node = tmp_path / "n"
    args = argparse.Namespace(
        anchor=Swapping(anchor), anchor_hash=parse_anchor(checked).hash, member=MOPH,
        code="hub9", address="127.0.0.1:5500", dir=node,
    )  # fmt: skip
    assert _init(args) == 0
    assert (node / "anchor.json").read_bytes() == checked
