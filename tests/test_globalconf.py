"""Global configuration: signed by the registry, verified against the anchor, and it expires."""

from __future__ import annotations

import base64
import datetime as dt

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.pki import generate_key, issue_cert, make_root_ca
from xroad_hub.protocol.globalconf import (
    GlobalConf,
    GlobalConfError,
    NodeEntry,
    sign_globalconf,
    verify_globalconf,
)
from xroad_hub.protocol.identifiers import MemberId, NodeId, SubsystemId
from xroad_hub.protocol.message import canonical

DGA = MemberId("TH", "GOV", "DGA")
DOPA = MemberId("TH", "GOV", "DOPA")
PORTAL = SubsystemId("TH", "GOV", "DGA", "citizenportal")
POPULATION = SubsystemId("TH", "GOV", "DOPA", "population")
FP1, FP2 = "a" * 64, "b" * 64


@pytest.fixture(scope="module")
def pki():
    ca_key, ca_cert = make_root_ca("TH federation root CA")
    key = generate_key()
    anchor = issue_cert(ca_key, ca_cert, "TH global configuration signer", key, purpose="sign")
    return ca_cert, key, anchor


def _conf(ca_cert: x509.Certificate, *, expires_in: dt.timedelta = dt.timedelta(minutes=10)):
    now = dt.datetime.now(dt.UTC)  # at the test, not at import: a long suite outlasts 10 min
    return GlobalConf(
        instance="TH",
        serial=7,
        generated_at=now,
        expires_at=now + expires_in,
        members={DGA: "Digital Government Agency", DOPA: "Department of Provincial Admin"},
        nodes=(
            NodeEntry(NodeId(DGA, "hub1"), "127.0.0.1:8443", FP1, frozenset({PORTAL, DGA})),
            NodeEntry(NodeId(DOPA, "hub2"), "127.0.0.1:9443", FP2, frozenset({POPULATION})),
        ),
        trusted_cas_der=(ca_cert.public_bytes(serialization.Encoding.DER),),
    )


def _resign(doc: dict, payload: bytes, key: ec.EllipticCurvePrivateKey | None) -> bytes:
    out = dict(doc, payload=base64.b64encode(payload).decode())
    if key is not None:
        out["signature"] = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    return orjson.dumps(out)


def test_round_trip(pki) -> None:
    ca_cert, key, anchor = pki
    conf = _conf(ca_cert)
    got = verify_globalconf(sign_globalconf(conf, key), anchor)
    assert got == conf
    assert got.trusted_cas[0] == ca_cert
    assert not got.expired()


def test_signed_document_shape(pki) -> None:
    ca_cert, key, _ = pki
    conf = _conf(ca_cert)
    doc = orjson.loads(sign_globalconf(conf, key))
    assert doc["alg"] == "ES256"
    assert base64.b64decode(doc["payload"]) == canonical(conf.to_dict())


def test_tampered_payload_refused(pki) -> None:
    ca_cert, key, anchor = pki
    doc = orjson.loads(sign_globalconf(_conf(ca_cert), key))
    d = orjson.loads(base64.b64decode(doc["payload"]))
    d["nodes"][1]["address"] = "evil.example:443"
    with pytest.raises(GlobalConfError, match="signature"):
        verify_globalconf(_resign(doc, canonical(d), None), anchor)


def test_tampered_signature_refused(pki) -> None:
    ca_cert, key, anchor = pki
    doc = orjson.loads(sign_globalconf(_conf(ca_cert), key))
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[-1] ^= 1
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(GlobalConfError):
        verify_globalconf(orjson.dumps(doc), anchor)


def test_signed_by_another_key_refused(pki) -> None:
    ca_cert, _, anchor = pki
    with pytest.raises(GlobalConfError, match="signature"):
        verify_globalconf(sign_globalconf(_conf(ca_cert), generate_key()), anchor)


def test_expired_refused(pki) -> None:
    ca_cert, key, anchor = pki
    data = sign_globalconf(_conf(ca_cert, expires_in=dt.timedelta(seconds=-1)), key)
    with pytest.raises(GlobalConfError, match="expired"):
        verify_globalconf(data, anchor)


def test_expiry_boundary_with_explicit_now(pki) -> None:
    ca_cert, key, anchor = pki
    conf = _conf(ca_cert)
    data = sign_globalconf(conf, key)
    just_before = conf.expires_at - dt.timedelta(microseconds=1)
    assert verify_globalconf(data, anchor, now=just_before) == conf
    with pytest.raises(GlobalConfError, match="expired"):
        verify_globalconf(data, anchor, now=conf.expires_at)
    assert conf.expired(conf.expires_at)
    assert not conf.expired(just_before)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'"x"',
        b"{}",
        b'{"alg":"ES256","payload":"!!!","signature":""}',
        b'{"alg":"ES256","payload":"e30=","signature":"%%%"}',
        b'{"alg":"ES256","payload":"e30="}',
        b'{"alg":"ES256","payload":1,"signature":"e30="}',
    ],
)
def test_not_a_signed_document(pki, data: bytes) -> None:
    with pytest.raises(GlobalConfError):
        verify_globalconf(data, pki[2])


@pytest.mark.parametrize("alg", ["none", "HS256", "es256", None])
def test_other_algorithms_refused(pki, alg) -> None:
    ca_cert, key, anchor = pki
    doc = orjson.loads(sign_globalconf(_conf(ca_cert), key))
    doc["alg"] = alg
    with pytest.raises(GlobalConfError, match="algorithm"):
        verify_globalconf(orjson.dumps(doc), anchor)


def test_signed_but_malformed_content_refused(pki) -> None:
    ca_cert, key, anchor = pki
    doc = orjson.loads(sign_globalconf(_conf(ca_cert), key))
    d = orjson.loads(base64.b64decode(doc["payload"]))
    d["nodes"][0]["clients"].append("TH/GOV/bad_id")
    with pytest.raises(GlobalConfError, match="malformed"):
        verify_globalconf(_resign(doc, canonical(d), key), anchor)
    del d["members"]
    with pytest.raises(GlobalConfError, match="malformed"):
        verify_globalconf(_resign(doc, canonical(d), key), anchor)


@pytest.mark.parametrize("key", ["expires_at", "generated_at"])
def test_a_time_without_a_zone_is_refused(pki, key: str) -> None:
    """Read as local time, a zoneless expiry would expire at different instants on nodes in
    different zones (and compare with aware datetimes would raise)."""
    ca_cert, key_, anchor = pki
    doc = orjson.loads(sign_globalconf(_conf(ca_cert), key_))
    d = orjson.loads(base64.b64decode(doc["payload"]))
    d[key] = dt.datetime.fromisoformat(d[key]).replace(tzinfo=None).isoformat()
    with pytest.raises(GlobalConfError, match=f"{key} .* carries no time zone"):
        verify_globalconf(_resign(doc, canonical(d), key_), anchor)


def test_signed_non_json_payload_is_globalconf_error(pki) -> None:
    ca_cert, key, anchor = pki
    doc = orjson.loads(sign_globalconf(_conf(ca_cert), key))
    with pytest.raises(GlobalConfError):
        verify_globalconf(_resign(doc, b"not json at all", key), anchor)


def test_lookups(pki) -> None:
    ca_cert, key, anchor = pki
    conf = verify_globalconf(sign_globalconf(_conf(ca_cert), key), anchor)
    hub1, hub2 = conf.nodes
    assert conf.node_hosting(PORTAL) is hub1
    assert conf.node_hosting(DGA) is hub1
    assert conf.node_hosting(POPULATION) is hub2
    assert conf.node_hosting(SubsystemId("TH", "GOV", "DOPA", "other")) is None
    assert conf.node_hosting(DOPA) is None  # the member itself is not hosted, its subsystem is
    assert conf.node_by_cert(FP1) is hub1
    assert conf.node_by_cert(FP2) is hub2
    assert conf.node_by_cert("c" * 64) is None
    assert conf.node_by_cert(FP1.upper()) is None  # fingerprints are matched exactly
    assert conf.node(NodeId(DOPA, "hub2")) is hub2
    assert conf.node(NodeId(DOPA, "hub1")) is None
    assert conf.members[DOPA] == "Department of Provincial Admin"
