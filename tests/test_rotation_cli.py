"""Key rotation and revocation through the programs, each its own process: the central
server runs as ``xroad-hub central run``; the node rotates with ``node keys rotate`` and
``activate``; the operator approves and revokes with the CLI; the global configuration
downloaded from the central server (verified against the anchor) shows each step."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xroad_hub.protocol.identifiers import parse_node_id
from xroad_hub.protocol.signing import cert_fingerprint

from .test_enroll import MOPH, _globalconf, central, hub

pytestmark = pytest.mark.slow
__all__ = ["central"]  # the fixture, imported for this module's tests

NODE = f"{MOPH}/hub1"


def _sha(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _listed(url: str, anchor: Path) -> str | None:
    entry = _globalconf(url, anchor).node(parse_node_id(NODE))
    return None if entry is None else entry.auth_cert_sha256


def test_rotate_both_keys_then_revoke(central: tuple[Path, str, Path], tmp_path: Path) -> None:
    cdir, url, anchor = central
    ndir = tmp_path / "moph"
    hub("node", "init", "--anchor", anchor, "--member", MOPH, "--code", "hub1", "--dir", ndir)
    hub("central", "approve", "1", "--dir", cdir)
    hub("node", "enroll", "fetch", "--dir", ndir)
    old_auth, old_sign = _sha(ndir / "auth.cert.pem"), _sha(ndir / "sign.cert.pem")
    assert _listed(url, anchor) == old_auth

    # Auth key: new key and CSR in the node's directory, request filed, nothing switched yet.
    out = hub("node", "keys", "rotate", "--auth", "--dir", ndir).stdout
    assert "rotation request 2" in out
    assert stat.S_IMODE((ndir / "auth.new.key.pem").stat().st_mode) == 0o600
    again = hub("node", "keys", "rotate", "--auth", "--dir", ndir, check=False)
    assert again.returncode == 2 and "pending" in again.stderr and "Traceback" not in again.stderr
    assert hub("node", "keys", "activate", "--auth", "--dir", ndir, check=False).returncode == 3
    assert "certRotation" in hub("central", "requests", "--dir", cdir).stdout
    hub("central", "approve", "2", "--dir", cdir)
    assert "APPROVED" in hub("node", "keys", "activate", "--dir", ndir).stdout
    new_auth = _sha(ndir / "auth.cert.pem")
    assert new_auth != old_auth and _listed(url, anchor) == new_auth
    assert stat.S_IMODE((ndir / "auth.key.pem").stat().st_mode) == 0o600
    assert not (ndir / "auth.new.key.pem").exists()
    retired = sorted(p.name for p in (ndir / "retired").iterdir())
    assert len(retired) == 2 and all(n.startswith("auth-") for n in retired)

    # Signing key: signed by the new auth key now, and the current signing key.
    hub("node", "keys", "rotate", "--sign", "--dir", ndir)
    hub("central", "approve", "3", "--dir", cdir)
    hub("node", "keys", "activate", "--sign", "--dir", ndir)
    assert _sha(ndir / "sign.cert.pem") != old_sign
    certs = hub("central", "certs", "--dir", cdir).stdout
    # Two of each, the old ones not revoked by a rotation.
    assert certs.count("\tauth\t") == certs.count("\tsign\t") == 2 and "REVOKED" not in certs

    # The old signing certificate revoked: listed with its time; the node stays.
    out = hub("central", "revoke", "--cert", old_sign, "--reason", "retired key", "--dir", cdir)
    assert "revoked sign certificate" in out.stdout
    conf = _globalconf(url, anchor)
    (rev,) = conf.revocations
    assert (rev.cert_sha256, rev.kind, rev.subject) == (old_sign, "sign", MOPH)
    assert _listed(url, anchor) == new_auth
    done = hub("central", "revoke", "--cert", old_sign, "--reason", "x", "--dir", cdir,
               check=False)  # fmt: skip
    assert done.returncode == 2 and "revoked already" in done.stderr
    assert "Traceback" not in done.stderr

    # The node revoked altogether: out of the configuration, and it can rotate no more.
    hub("central", "revoke", "--node", NODE, "--reason", "decommissioned", "--dir", cdir)
    conf = _globalconf(url, anchor)
    assert conf.node(parse_node_id(NODE)) is None
    assert {r.cert_sha256 for r in conf.revocations} >= {old_auth, new_auth, old_sign}
    done = hub("node", "keys", "rotate", "--auth", "--dir", ndir, check=False)
    assert done.returncode == 2 and "not a registered node" in done.stderr
    assert not (ndir / "auth.new.key.pem").exists()  # a refused request keeps no key
    audit = hub("central", "audit", "--dir", cdir).stdout
    assert audit.count("certificate.revoke") == 2 and "hash chain intact" in audit
