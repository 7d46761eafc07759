"""Revocation end to end, with the nodes of the test federation in this process (over real
TLS) and the development registry publishing the revocations: every node refuses exchanges
with a revoked authentication or signing certificate within one refresh, with an X-Road
error naming the revocation on both sides, and keeps serving everything else."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from xroad_hub.central.registry import Registry
from xroad_hub.dev.testing import TestFederationSpec, free_port
from xroad_hub.messagelog.audit import verify_log
from xroad_hub.messagelog.evidence import (
    EvidenceError,
    export_bundle,
    load_revocations,
    verify_bundle,
)
from xroad_hub.node.batching import BatchSigner
from xroad_hub.pki import generate_key, issue_cert, load_cert, load_private_key
from xroad_hub.protocol.globalconf import Revocation
from xroad_hub.protocol.identifiers import parse_member_id
from xroad_hub.protocol.signing import MessageSigner, cert_fingerprint

from .conftest import Fed, start_federation
from .sqlite_db import sqlite_db

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
ECHO = "/r1/TH/GOV/DBD/registry/echo"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}
REFRESH = 0.3


@pytest.fixture
async def quick(tmp_path, echo_backend: str) -> AsyncIterator[Fed]:
    f = await start_federation(
        tmp_path, TestFederationSpec(backend_url=echo_backend, validity=30, refresh=REFRESH)
    )
    yield f
    await f.federation.stop()


def _registry(fed: Fed) -> Registry:
    registry = fed.federation.registry
    assert registry is not None
    return registry


def _revoke(fed: Fed, kind: str, subject: str) -> Revocation:
    paths = fed.pki.node_auth(subject) if kind == "auth" else fed.pki.member_sign(subject)
    der = load_cert(paths.cert).public_bytes(_der())
    revocation = Revocation(cert_fingerprint(der), kind, subject, datetime.now(UTC))
    _registry(fed).revocations.append(revocation)
    return revocation


def _der():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER


async def _call(http, fed: Fed) -> tuple[int, str | None, str]:
    async with http.get(fed.url(DGA) + ECHO, headers=DEV) as r:
        body = await r.read()
        message = orjson.loads(body).get("message", "") if r.headers.get("X-Road-Error") else ""
        return r.status, r.headers.get("X-Road-Error"), message


async def _until_refused(
    http, fed: Fed, error: str, limit: float, meanwhile: tuple[str, ...] = ()
) -> tuple[float, str]:
    """Seconds until the exchange is refused with ``error``, and the error's message;
    ``meanwhile``: refusals that may come first (the other node heard of it first)."""
    started = time.monotonic()
    while True:
        status, got, message = await _call(http, fed)
        if got == error:
            return time.monotonic() - started, message
        assert status == 200 or got in meanwhile, (status, got, message)
        assert time.monotonic() - started < limit, f"not refused within {limit} s"
        await asyncio.sleep(0.02)


# Within one refresh, with slack for a machine busy with other tests.
LIMIT = REFRESH + 1.5


async def _hold_configuration(fed: Fed, node: str, monkeypatch) -> None:
    """The node keeps the configuration it has (downloads fail; it is valid for 30 s)."""
    gc = fed.federation.nodes[node].globalconf
    monkeypatch.setattr(gc, "url", f"http://127.0.0.1:{free_port()}/globalconf")
    await asyncio.sleep(REFRESH * 2)  # a refresh already under way ends


async def _until_known(fed: Fed, node: str, revocation: Revocation) -> None:
    gc = fed.federation.nodes[node].globalconf
    for _ in range(200):
        conf = gc.current()
        if conf is not None and revocation in conf.revocations:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{node} never saw the revocation")


async def test_revoked_provider_node_is_refused_within_one_refresh(quick: Fed, http) -> None:
    assert (await _call(http, quick))[:2] == (200, None)
    _revoke(quick, "auth", DBD)
    # The revoked node itself may hear of it first and refuse to serve; the client's node
    # must then still refuse within one refresh, naming the revocation.
    took, message = await _until_refused(
        http, quick, "Server.ClientProxy.UnknownMember", limit=LIMIT,
        meanwhile=("Server.ServerProxy.SslAuthenticationFailed",),
    )  # fmt: skip
    # Gone from routing, and the client is told why.
    assert "authentication certificate of node TH/GOV/DBD/hub1" in message
    assert "revoked at" in message
    print(f"refused {took:.2f} s after the revocation (refresh every {REFRESH} s)")


async def test_provider_refuses_a_revoked_client_node(quick: Fed, http, monkeypatch) -> None:
    # The client's node has not heard of its own revocation (its downloads fail); the
    # provider's node has, and refuses its TLS connection.
    await _hold_configuration(quick, DGA, monkeypatch)
    revocation = _revoke(quick, "auth", DGA)
    await _until_known(quick, DBD, revocation)
    status, error, message = await _call(http, quick)
    assert (status, error) == (500, "Server.ServerProxy.SslAuthenticationFailed")
    assert "authentication certificate of node TH/GOV/DGA/hub1" in message
    assert "revoked" in message


async def test_revoked_node_refuses_to_send_itself(quick: Fed, http) -> None:
    """Once it knows, the revoked node says so itself (before, its peers refuse it)."""
    revocation = _revoke(quick, "auth", DGA)
    await _until_known(quick, DGA, revocation)
    await _until_known(quick, DBD, revocation)
    status, error, message = await _call(http, quick)
    assert (status, error) == (500, "Server.ClientProxy.SslAuthenticationFailed"), message
    assert message.startswith("this node: the authentication certificate of node " + DGA)


async def test_request_signed_by_a_revoked_certificate_is_refused(
    quick: Fed, http, monkeypatch
) -> None:
    await _hold_configuration(quick, DGA, monkeypatch)
    revocation = _revoke(quick, "sign", "TH/GOV/DGA")
    await _until_known(quick, DBD, revocation)
    status, error, message = await _call(http, quick)
    assert (status, error) == (500, "Server.ServerProxy.CertValidation"), message
    assert "request's signing certificate" in message
    assert "signing certificate of member TH/GOV/DGA" in message


async def test_client_node_refuses_to_sign_with_its_revoked_certificate(quick: Fed, http) -> None:
    _revoke(quick, "sign", "TH/GOV/DGA")
    took, message = await _until_refused(
        http, quick, "Server.ClientProxy.CertValidation", limit=LIMIT,
        meanwhile=("Server.ServerProxy.CertValidation",),
    )  # fmt: skip
    assert "this node's signing certificate of TH/GOV/DGA" in message
    print(f"refused {took:.2f} s after the revocation (refresh every {REFRESH} s)")


async def test_answer_signed_by_a_revoked_certificate_is_refused(
    quick: Fed, http, monkeypatch
) -> None:
    # The provider's node has not heard of the revocation of its member's signing
    # certificate and signs with it; the client's node has, and refuses the answer.
    await _hold_configuration(quick, DBD, monkeypatch)
    revocation = _revoke(quick, "sign", "TH/GOV/DBD")
    await _until_known(quick, DGA, revocation)
    status, error, message = await _call(http, quick)
    assert (status, error) == (500, "Server.ClientProxy.CertValidation"), message
    assert "answer's signing certificate" in message


async def test_provider_refuses_to_serve_with_its_revoked_signing_certificate(
    quick: Fed, http, monkeypatch
) -> None:
    await _hold_configuration(quick, DGA, monkeypatch)
    revocation = _revoke(quick, "sign", "TH/GOV/DBD")
    await _until_known(quick, DBD, revocation)
    status, error, message = await _call(http, quick)
    assert (status, error) == (500, "Server.ServerProxy.CertValidation"), message
    assert "provider's node's signing certificate" in message


async def test_other_exchanges_go_on(quick: Fed, http) -> None:
    """Revoking one member's signing certificate stops its exchanges only: BMA's node,
    another member's, still gets its answers from the same provider."""
    _revoke(quick, "sign", "TH/GOV/DGA")
    await _until_refused(
        http, quick, "Server.ClientProxy.CertValidation", limit=LIMIT,
        meanwhile=("Server.ServerProxy.CertValidation",),
    )  # fmt: skip
    async with http.get(
        quick.url("TH/GOV/BMA/hub1", "client_tls") + "/r1/TH/GOV/DBD/registry/restricted",
        headers={"X-Road-Client": "TH/GOV/BMA/licensing"},
        ssl=quick.client_ssl("TH/GOV/BMA/licensing"),
    ) as r:
        assert r.status == 200


# --- evidence: what was signed before a revocation still verifies -------------------------


async def _exchange(http, fed: Fed, mid: str) -> int:
    async with http.get(fed.url(DGA) + ECHO, headers={**DEV, "X-Road-Id": mid}) as r:
        await r.read()
        return r.status


def _copy_log(fed: Fed, node: str, target: Path) -> Path:
    with sqlite_db(fed.federation.nodes[node].runtime.log.path) as a, sqlite_db(target) as b:
        a.backup(b)
    return target


async def test_bundles_signed_before_a_revocation_verify_and_after_do_not(
    quick: Fed, http, monkeypatch, tmp_path: Path
) -> None:
    roots = [load_cert(quick.pki.root_ca.cert)]
    dga = quick.federation.nodes[DGA]
    registry_url = dga.globalconf.url
    await _hold_configuration(quick, DGA, monkeypatch)
    before, after = f"before-{uuid.uuid4().hex}", f"after-{uuid.uuid4().hex}"
    assert await _exchange(http, quick, before) == 200
    await dga.checkpointer.checkpoint()  # timestamped before the revocation
    await asyncio.sleep(1.1)  # timestamps are to the second
    revocation = _revoke(quick, "sign", "TH/GOV/DGA")
    await _until_known(quick, DBD, revocation)
    # DGA has not heard of it and still signs; DBD refuses; DGA logs what it signed.
    assert await _exchange(http, quick, after) == 500
    await dga.checkpointer.checkpoint()
    log = _copy_log(quick, DGA, tmp_path / "dga.sqlite")
    async with http.get(registry_url) as r:  # what the registry publishes since
        later = await r.read()
    signer = load_cert(quick.pki.globalconf_signer.cert)
    revocations = load_revocations(later, signer, roots)
    assert revocation in revocations

    old, new = export_bundle(log, before), export_bundle(log, after)
    # Without the later configuration both verify: the revocation is what tells them apart.
    verify_bundle(new, roots)
    proof = verify_bundle(old, roots, revocations)
    assert len(proof.revoked_later) == 1 and "TH/GOV/DGA" in proof.revoked_later[0]
    with pytest.raises(EvidenceError) as err:
        verify_bundle(new, roots, revocations)
    assert "signing certificate of member TH/GOV/DGA" in str(err.value)
    assert "after the revocation" in str(err.value)

    # The whole log: only the entry signed after the revocation is named.
    report = verify_log(log, roots, revocations=revocations)
    bad = [f for f in report.findings if "revoked" in f.problem]
    assert [f.leaf_index for f in bad] == [_leaf_of(log, after)], report.findings
    unaware = verify_log(log, roots)
    assert not [f for f in unaware.findings if "revoked" in f.problem]

    # The same from the command line, with the later configuration saved to a file.
    (tmp_path / "gc.json").write_bytes(later)
    for mid, code, verdict in ((before, 0, "VERIFIED"), (after, 1, "NOT VERIFIED")):
        out = tmp_path / f"{mid}.json"
        out.write_bytes(export_bundle(log, mid))
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "xroad_hub.cli", "audit", "verify-bundle", str(out),
             "--root-ca", str(quick.pki.root_ca.cert), "--globalconf", str(tmp_path / "gc.json"),
             "--anchor", str(quick.pki.globalconf_signer.cert)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == code, done.stdout + done.stderr
        assert done.stdout.startswith(verdict + ":"), done.stdout
        assert "revoked" in done.stdout


def _leaf_of(log: Path, mid: str) -> int:
    with sqlite_db(log) as db:
        return int(db.execute("SELECT leaf_index FROM exchange WHERE message_id = ?", (mid,))
                   .fetchone()[0])  # fmt: skip


async def test_rotated_signing_key_keeps_old_bundles_verifiable(
    quick: Fed, http, monkeypatch, tmp_path: Path
) -> None:
    """The member's signing key rolled (a new key, certified by the CA; in this process the
    node's signer is swapped, as a restart after 'node keys activate' would): old bundles
    still verify, and keep verifying once the old certificate is revoked."""
    roots = [load_cert(quick.pki.root_ca.cert)]
    dga = quick.federation.nodes[DGA]
    member = parse_member_id("TH/GOV/DGA")
    old_der = dga.runtime.signers[member].cert_der
    first, second, third = (f"rot{i}-{uuid.uuid4().hex}" for i in range(3))
    assert await _exchange(http, quick, first) == 200
    await dga.checkpointer.checkpoint()

    new_key = generate_key()
    ca_key = load_private_key(quick.pki.root_ca.key)
    new_cert = issue_cert(ca_key, load_cert(quick.pki.root_ca.cert), str(member), new_key,
                          purpose="sign")  # fmt: skip
    new_der = new_cert.public_bytes(_der())
    monkeypatch.setitem(
        dga.runtime.signers, member, BatchSigner(MessageSigner(member, new_key, new_der))
    )
    assert await _exchange(http, quick, second) == 200
    await dga.checkpointer.checkpoint()
    await asyncio.sleep(1.1)  # timestamps are to the second

    # The old certificate revoked later: exchanges with the new key go on.
    revocation = Revocation(cert_fingerprint(old_der), "sign", str(member), datetime.now(UTC))
    _registry(quick).revocations.append(revocation)
    await _until_known(quick, DBD, revocation)
    await _until_known(quick, DGA, revocation)
    assert await _exchange(http, quick, third) == 200
    await dga.checkpointer.checkpoint()

    log = _copy_log(quick, DGA, tmp_path / "dga.sqlite")
    async with http.get(_registry_url(quick)) as r:
        revocations = load_revocations(await r.read(), load_cert(quick.pki.globalconf_signer.cert),
                                       roots)  # fmt: skip
    signed_with = {}
    for mid in (first, second, third):
        bundle = export_bundle(log, mid)
        proof = verify_bundle(bundle, roots, revocations)
        signed_with[mid] = orjson.loads(bundle)["request"]["cert"]
        assert bool(proof.revoked_later) == (mid == first), (mid, proof.revoked_later)
    assert signed_with[first] != signed_with[second] == signed_with[third]
    report = verify_log(log, roots, revocations=revocations)
    assert report.ok, report.findings


def _registry_url(fed: Fed) -> str:
    return f"{fed.endpoints['registry']}/globalconf"


async def test_a_revoked_client_certificate_authenticates_nobody(quick: Fed, http) -> None:
    """A client system's TLS certificate revoked at the central server is refused by its
    node within one refresh, with the error of a failed client authentication, though the
    node's registration of the client still names it; other clients go on."""
    office, url = "TH/GOV/DGA/officeapp", quick.url(DGA, "client_tls") + ECHO
    ctx = quick.client_ssl(office)

    async def as_office() -> tuple[int, str | None, str]:
        async with http.get(url, headers={"X-Road-Client": office}, ssl=ctx) as r:
            return r.status, r.headers.get("X-Road-Error"), await r.text()

    assert (await as_office())[0] == 200
    der = load_cert(quick.pki.client_tls(office).cert).public_bytes(_der())
    revocation = Revocation(cert_fingerprint(der), "client", office, datetime.now(UTC))
    _registry(quick).revocations.append(revocation)
    await _until_known(quick, DGA, revocation)
    status, error, text = await as_office()
    assert status != 200 and error == "Server.ClientProxy.SslAuthenticationFailed", text
    assert "TLS client certificate of subsystem TH/GOV/DGA/officeapp" in text
    assert (await _call(http, quick))[:2] == (200, None)  # the other clients go on
