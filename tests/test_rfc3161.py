"""RFC 3161 time-stamps: our TSA and verifier, each refusal, and interop with OpenSSL."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from asn1crypto import core, tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xroad_hub.central import tsa
from xroad_hub.node import timestamping
from xroad_hub.pki import PrivateKey, generate_key, issue_cert, make_root_ca
from xroad_hub.protocol import rfc3161
from xroad_hub.protocol.rfc3161 import (
    Digest,
    TimestampError,
    digest_request,
    issue_token,
    issue_tsa_cert,
    make_request,
    read_status,
    verify_response,
)

POLICY = "1.3.6.1.4.1.99999.1.1"
DATA = b"xroad-hub/TH/GOV/DGA/hub1\n42\nq1J0e2xv1b4Y3m0nB9cWq8sZf5k3pQ4v0Jx2mYk1r8c=\n"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed")


@dataclass(frozen=True)
class Pki:
    ca_key: PrivateKey
    ca: x509.Certificate
    key: PrivateKey
    cert: x509.Certificate


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_key, ca = make_root_ca("test federation root")
    key = generate_key()
    return Pki(ca_key, ca, key, issue_tsa_cert(ca_key, ca, "test TSA", key))


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(pki: Pki, request: bytes, **kw: Any) -> bytes:
    args: dict[str, Any] = {"policy_oid": POLICY, "serial": 7, "now": _now()} | kw
    return issue_token(request, pki.key, pki.cert, **args)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _tsa_cert(
    pki: Pki, key: PrivateKey, *, ekus: list[x509.ObjectIdentifier] | None, critical: bool = True
) -> x509.Certificate:
    """A TSA-like certificate with a chosen extendedKeyUsage, to probe the verifier."""
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd TSA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(pki.ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.ca_key.public_key()), False
        )
    )
    if ekus is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=critical)
    return builder.sign(pki.ca_key, hashes.SHA256())


def _tamper(response: bytes, change: Callable[[Any], None]) -> bytes:
    """Parse a granted response, let ``change`` edit its SignedData, and re-encode it."""
    resp = tsp.TimeStampResp.load(response)
    change(resp["time_stamp_token"]["content"])
    return bytes(resp.dump(force=True))


# --- round trips -----------------------------------------------------------------------------


def test_round_trip(pki: Pki) -> None:
    now = _now()
    response = _stamp(pki, make_request(DATA, nonce=12345), serial=99, now=now)
    info = verify_response(response, DATA, [pki.ca], nonce=12345)
    assert info.gen_time == now.replace(microsecond=0)
    assert (info.serial, info.policy, info.nonce) == (99, POLICY, 12345)
    assert info.tsa_cert == pki.cert
    assert info.digest == Digest("sha256", hashlib.sha256(DATA).digest())
    assert read_status(response).granted


@pytest.mark.parametrize("name", ["sha256", "sha384", "sha512"])
def test_digest_request_round_trip(pki: Pki, name: str) -> None:
    digest = Digest.of(DATA, name)
    response = _stamp(pki, digest_request(digest))
    assert verify_response(response, digest, [pki.ca]).digest == digest
    # Given the data itself, the verifier hashes it with the token's algorithm.
    assert verify_response(response, DATA, [pki.ca]).digest == digest


def test_certificate_left_out_unless_asked(pki: Pki) -> None:
    response = _stamp(pki, make_request(DATA, cert_req=False))
    with pytest.raises(TimestampError, match="neither in the token"):
        verify_response(response, DATA, [pki.ca])
    assert verify_response(response, DATA, [pki.ca], untrusted=[pki.cert]).tsa_cert == pki.cert


def test_tsa_cert_profile(pki: Pki) -> None:
    eku = pki.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    usage = pki.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and not usage.key_cert_sign


def test_issue_token_refuses_misconfiguration(pki: Pki) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        issue_token(
            make_request(DATA), generate_key(), pki.cert, policy_oid=POLICY, serial=1, now=_now()
        )
    with pytest.raises(ValueError, match="timezone"):
        _stamp(pki, make_request(DATA), now=datetime.now())  # naive: the point of the test


def test_public_surface() -> None:
    assert set(rfc3161.__all__) == {
        "QUERY_TYPE", "REPLY_TYPE", "Digest", "PkiStatus", "TimestampError", "TimestampInfo",
        "digest_request", "issue_token", "issue_tsa_cert", "make_request", "read_status",
        "verify_response",
    }  # fmt: skip
    assert set(tsa.__all__) == {
        "MAX_QUERY_BYTES", "QUERY_TYPE", "REPLY_TYPE", "SerialCounter", "TSA_POLICY", "tsa_app",
    }  # fmt: skip


# --- the TSA refuses bad requests ------------------------------------------------------------


def _request(**fields: Any) -> bytes:
    req: dict[str, Any] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {"algorithm": "sha256"},
            "hashed_message": hashlib.sha256(DATA).digest(),
        },
    } | fields
    return bytes(tsp.TimeStampReq(req).dump())


SHA1_IMPRINT = {"hash_algorithm": {"algorithm": "sha1"}, "hashed_message": b"\x00" * 20}
SHORT_IMPRINT = {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": b"\x00" * 20}
EXTENSION = {"extn_id": "1.2.3.4", "critical": False, "extn_value": b"x"}


@pytest.mark.parametrize(
    ("request_der", "fail_info"),
    [
        pytest.param(_request(message_imprint=SHA1_IMPRINT), "bad_alg", id="sha1"),
        pytest.param(b"not DER at all", "bad_request", id="garbage"),
        pytest.param(_request()[:-3], "bad_request", id="truncated"),
        pytest.param(_request() + b"\x00", "bad_request", id="trailing-bytes"),
        pytest.param(_request(version="v2"), "bad_request", id="version"),
        pytest.param(_request(message_imprint=SHORT_IMPRINT), "bad_request", id="digest-size"),
        pytest.param(_request(req_policy="1.2.3"), "unaccepted_policy", id="policy"),
        pytest.param(_request(extensions=[EXTENSION]), "unaccepted_extensions", id="extension"),
    ],
)
def test_rejections(pki: Pki, request_der: bytes, fail_info: str) -> None:
    response = _stamp(pki, request_der)
    status = read_status(response)
    assert (status.status, status.fail_info) == ("rejection", frozenset({fail_info}))
    with pytest.raises(TimestampError, match="refused") as caught:
        verify_response(response, DATA, [pki.ca])
    assert caught.value.fail_info == {fail_info}


def test_requested_policy_that_is_ours_is_granted(pki: Pki) -> None:
    assert read_status(_stamp(pki, _request(req_policy=POLICY))).granted


# --- the verifier refuses bad tokens ---------------------------------------------------------


def test_tampered_data(pki: Pki) -> None:
    response = _stamp(pki, make_request(DATA))
    with pytest.raises(TimestampError, match="message imprint mismatch"):
        verify_response(response, DATA + b"x", [pki.ca])
    with pytest.raises(TimestampError, match="message imprint mismatch"):
        verify_response(response, Digest.of(DATA, "sha512"), [pki.ca])


def test_wrong_or_missing_nonce(pki: Pki) -> None:
    with pytest.raises(TimestampError, match="nonce"):
        verify_response(_stamp(pki, make_request(DATA, nonce=1)), DATA, [pki.ca], nonce=2)
    with pytest.raises(TimestampError, match="nonce"):
        verify_response(_stamp(pki, make_request(DATA)), DATA, [pki.ca], nonce=2)


def test_signature_of_another_key(pki: Pki) -> None:
    other = generate_key()

    def resign(signed_data: Any) -> None:
        signer = signed_data["signer_infos"][0]
        attrs = bytearray(signer["signed_attrs"].dump())
        attrs[0] = 0x31
        signer["signature"] = other.sign(bytes(attrs), ec.ECDSA(hashes.SHA256()))

    response = _tamper(_stamp(pki, make_request(DATA)), resign)
    with pytest.raises(TimestampError, match="signature does not verify"):
        verify_response(response, DATA, [pki.ca])


def test_content_changed_after_signing(pki: Pki) -> None:
    def bump_serial(signed_data: Any) -> None:
        encap = signed_data["encap_content_info"]
        tst = tsp.TSTInfo.load(bytes(encap["content"]))
        tst["serial_number"] = 8
        encap["content"] = core.ParsableOctetString(tst.dump(force=True))

    response = _tamper(_stamp(pki, make_request(DATA)), bump_serial)
    with pytest.raises(TimestampError, match="messageDigest"):
        verify_response(response, DATA, [pki.ca])


def test_token_without_certificate_id(pki: Pki) -> None:
    def drop_ess(signed_data: Any) -> None:
        signer = signed_data["signer_infos"][0]
        kept = [a for a in signer["signed_attrs"] if a["type"].native != "signing_certificate_v2"]
        signer["signed_attrs"] = kept
        attrs = bytearray(signer["signed_attrs"].dump(force=True))
        attrs[0] = 0x31
        signer["signature"] = pki.key.sign(bytes(attrs), ec.ECDSA(hashes.SHA256()))

    response = _tamper(_stamp(pki, make_request(DATA)), drop_ess)
    with pytest.raises(TimestampError, match="signingCertificate"):
        verify_response(response, DATA, [pki.ca])


@pytest.mark.parametrize(
    ("ekus", "critical"),
    [
        pytest.param(None, True, id="no-eku"),
        pytest.param([ExtendedKeyUsageOID.TIME_STAMPING], False, id="non-critical"),
        pytest.param(
            [ExtendedKeyUsageOID.TIME_STAMPING, ExtendedKeyUsageOID.SERVER_AUTH], True, id="extra"
        ),
        pytest.param([ExtendedKeyUsageOID.CODE_SIGNING], True, id="other-purpose"),
    ],
)
def test_tsa_cert_without_critical_time_stamping(
    pki: Pki, ekus: list[x509.ObjectIdentifier] | None, critical: bool
) -> None:
    key = generate_key()
    cert = _tsa_cert(pki, key, ekus=ekus, critical=critical)
    response = issue_token(make_request(DATA), key, cert, policy_oid=POLICY, serial=1, now=_now())
    with pytest.raises(TimestampError, match="extendedKeyUsage"):
        verify_response(response, DATA, [pki.ca])


def test_signing_cert_is_not_a_tsa_cert(pki: Pki) -> None:
    key = generate_key()
    cert = issue_cert(pki.ca_key, pki.ca, "TH/GOV/DBD", key, purpose="sign")
    response = issue_token(make_request(DATA), key, cert, policy_oid=POLICY, serial=1, now=_now())
    with pytest.raises(TimestampError, match="extendedKeyUsage"):
        verify_response(response, DATA, [pki.ca])


def test_tsa_cert_from_another_ca(pki: Pki) -> None:
    other_ca_key, other_ca = make_root_ca("someone else's root")
    key = generate_key()
    cert = issue_tsa_cert(other_ca_key, other_ca, "rogue TSA", key)
    response = issue_token(make_request(DATA), key, cert, policy_oid=POLICY, serial=1, now=_now())
    with pytest.raises(TimestampError, match="does not chain to a trusted root"):
        verify_response(response, DATA, [pki.ca])
    assert verify_response(response, DATA, [other_ca]).tsa_cert == cert
    with pytest.raises(TimestampError, match="no trusted roots"):
        verify_response(response, DATA, [])


def _ca(
    cn: str, key: PrivateKey, issuer: tuple[PrivateKey, x509.Certificate] | None,
    ekus: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:  # fmt: skip
    """A CA that may have one CA below it (``pki.make_root_ca`` allows none)."""
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_key, issuer_name = (key, name) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if ekus is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.mark.parametrize(
    ("ekus", "ok"),
    [
        pytest.param(None, True, id="unrestricted"),
        pytest.param([ExtendedKeyUsageOID.TIME_STAMPING], True, id="time-stamping"),
        pytest.param([ExtendedKeyUsageOID.SERVER_AUTH], False, id="tls-only"),
    ],
)
def test_chain_through_an_intermediate(ekus: list[x509.ObjectIdentifier] | None, ok: bool) -> None:
    root_key, sub_key, key = generate_key(), generate_key(), generate_key()
    root = _ca("root", root_key, None)
    sub = _ca("TSA CA", sub_key, (root_key, root), ekus)
    cert = issue_tsa_cert(sub_key, sub, "TSA", key)
    response = issue_token(make_request(DATA), key, cert, policy_oid=POLICY, serial=1, now=_now())
    with pytest.raises(TimestampError, match="does not chain"):
        verify_response(response, DATA, [root])  # the intermediate is not in the token
    if ok:
        assert verify_response(response, DATA, [root], untrusted=[sub]).tsa_cert == cert
    else:
        with pytest.raises(TimestampError, match="does not chain"):
            verify_response(response, DATA, [root], untrusted=[sub])


@pytest.mark.parametrize("when", ["before", "after"])
def test_gen_time_outside_tsa_validity(pki: Pki, when: str) -> None:
    now = _now()
    start, end = (now + timedelta(days=1), now + timedelta(days=2))
    if when == "after":
        start, end = (now - timedelta(days=2), now - timedelta(days=1))
    key = generate_key()
    cert = issue_tsa_cert(pki.ca_key, pki.ca, "TSA", key, not_before=start, not_after=end)
    response = issue_token(make_request(DATA), key, cert, policy_oid=POLICY, serial=1, now=now)
    with pytest.raises(TimestampError, match="outside the TSA certificate's validity"):
        verify_response(response, DATA, [pki.ca])


def test_chain_is_checked_at_gen_time_not_now() -> None:
    # A token outlives its TSA certificate: stamped while valid, verified after expiry.
    now = _now()
    key = generate_key()
    gen_time = now - timedelta(days=2)
    # The root of the fixture is only minutes old, so this one needs an older root.
    ca_key, ca = make_root_ca("old root", days=10)
    old_root = (
        x509.CertificateBuilder(
            subject_name=ca.subject, issuer_name=ca.subject, public_key=ca_key.public_key(),
            serial_number=ca.serial_number, not_valid_before=now - timedelta(days=30),
            not_valid_after=now + timedelta(days=30), extensions=list(ca.extensions),
        ).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = issue_tsa_cert(
        ca_key, old_root, "old TSA", key, not_before=now - timedelta(days=3),
        not_after=now - timedelta(days=1),
    )  # fmt: skip
    response = issue_token(make_request(DATA), key, cert, policy_oid=POLICY, serial=1, now=gen_time)
    assert verify_response(response, DATA, [old_root]).gen_time == gen_time.replace(microsecond=0)


@pytest.mark.parametrize(
    "response",
    [b"", b"\x30\x00", b"\x30\x03\x02\x01\x00", b"junk", b"\x30\x05\x30\x03\x02\x01\x00"],
)
def test_malformed_responses(pki: Pki, response: bytes) -> None:
    with pytest.raises(TimestampError):
        verify_response(response, DATA, [pki.ca])


_P256 = bytes.fromhex("06082a8648ce3d030107")  # the OID of the curve, as in a certificate


def test_certificate_on_unknown_curve(pki: Pki) -> None:
    response = _stamp(pki, make_request(DATA))
    assert _P256 in response
    with pytest.raises(TimestampError, match="malformed"):
        verify_response(response.replace(_P256, _P256[:-1] + b"\x06"), DATA, [pki.ca])


def test_certificate_with_serial_zero(pki: Pki) -> None:
    def zero_serial(signed_data: Any) -> None:
        signed_data["certificates"][0].chosen["tbs_certificate"]["serial_number"] = 0

    response = _tamper(_stamp(pki, make_request(DATA)), zero_serial)
    with pytest.raises(TimestampError, match="malformed certificate"):
        verify_response(response, DATA, [pki.ca])


@pytest.fixture(scope="module")
def granted(pki: Pki) -> bytes:
    return _stamp(pki, make_request(DATA, nonce=5))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_damaged_responses_only_raise_timestamp_error(
    pki: Pki, granted: bytes, data: st.DataObject
) -> None:
    """Whatever the damage, the verifier answers with TimestampError, never another error."""
    damaged = bytearray(granted)
    for _ in range(data.draw(st.integers(1, 3))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(len(damaged) // 2, len(damaged)))
    with contextlib.suppress(TimestampError):
        verify_response(bytes(damaged[:cut]), DATA, [pki.ca], nonce=5)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_any_request_bytes_get_a_response(pki: Pki, request_der: bytes) -> None:
    assert read_status(_stamp(pki, request_der)).status in {"granted", "rejection"}


# --- interop with OpenSSL --------------------------------------------------------------------


def _openssl(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=10
    )


@pytest.fixture
def files(tmp_path: Path, pki: Pki) -> Path:
    (tmp_path / "root.pem").write_bytes(_pem(pki.ca))
    (tmp_path / "tsa.pem").write_bytes(_pem(pki.cert))
    (tmp_path / "checkpoint.txt").write_bytes(DATA)
    (tmp_path / "tampered.txt").write_bytes(DATA.replace(b"42", b"41"))
    return tmp_path


def _openssl_verify(tmp: Path, data: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return _openssl(
        "ts", "-verify", "-data", data, "-in", "token.tsr", "-CAfile", "root.pem",
        "-untrusted", "tsa.pem", *extra, cwd=tmp,
    )  # fmt: skip


@needs_openssl
def test_openssl_verifies_our_token(pki: Pki, files: Path) -> None:
    (files / "token.tsr").write_bytes(_stamp(pki, make_request(DATA, nonce=77)))
    ok = _openssl_verify(files, "checkpoint.txt")
    assert "Verification: OK" in ok.stdout, ok.stderr
    bad = _openssl_verify(files, "tampered.txt")
    assert bad.returncode != 0 and "Verification: OK" not in bad.stdout
    assert "message imprint mismatch" in bad.stderr


@needs_openssl
def test_openssl_also_refuses_a_non_critical_eku(pki: Pki, files: Path) -> None:
    key = generate_key()
    cert = _tsa_cert(pki, key, ekus=[ExtendedKeyUsageOID.TIME_STAMPING], critical=False)
    (files / "tsa.pem").write_bytes(_pem(cert))
    token = issue_token(make_request(DATA), key, cert, policy_oid=POLICY, serial=1, now=_now())
    (files / "token.tsr").write_bytes(token)
    result = _openssl_verify(files, "checkpoint.txt")
    assert result.returncode != 0 and "Verification: OK" not in result.stdout


@needs_openssl
def test_openssl_query_is_accepted(pki: Pki, files: Path) -> None:
    query = _openssl("ts", "-query", "-data", "checkpoint.txt", "-sha256", "-cert",
                     "-out", "request.tsq", cwd=files)  # fmt: skip
    assert query.returncode == 0, query.stderr
    request = (files / "request.tsq").read_bytes()
    nonce = tsp.TimeStampReq.load(request)["nonce"].native  # openssl adds a 64-bit nonce
    (files / "token.tsr").write_bytes(_stamp(pki, request))
    assert verify_response((files / "token.tsr").read_bytes(), DATA, [pki.ca], nonce=nonce)
    # -queryfile makes OpenSSL check the nonce and the policy too, not just the imprint.
    ok = _openssl("ts", "-verify", "-queryfile", "request.tsq", "-in", "token.tsr",
                  "-CAfile", "root.pem", "-untrusted", "tsa.pem", cwd=files)  # fmt: skip
    assert "Verification: OK" in ok.stdout, ok.stderr


_TSA_CONF = """\
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
serial = {dir}/serial
crypto_device = builtin
signer_cert = {dir}/tsa.pem
signer_key = {dir}/tsa.key
signer_digest = sha256
default_policy = {policy}
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = {ess_alg}
"""


@needs_openssl
@pytest.mark.parametrize("ess_alg", ["sha256", "sha1"])  # signingCertificateV2, V1
def test_openssl_token_verifies_with_ours(pki: Pki, files: Path, ess_alg: str) -> None:
    (files / "tsa.key").write_bytes(
        pki.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (files / "serial").write_text("01\n")  # the last serial used: the next is 2
    conf = _TSA_CONF.format(dir=files, policy=POLICY, ess_alg=ess_alg)
    (files / "openssl.cnf").write_text(conf)
    (files / "request.tsq").write_bytes(make_request(DATA, nonce=31337))
    reply = _openssl("ts", "-reply", "-config", "openssl.cnf", "-queryfile", "request.tsq",
                     "-out", "token.tsr", cwd=files)  # fmt: skip
    assert reply.returncode == 0, reply.stderr
    token = (files / "token.tsr").read_bytes()
    info = verify_response(token, DATA, [pki.ca], nonce=31337)
    assert (info.serial, info.policy, info.tsa_cert) == (2, POLICY, pki.cert)
    with pytest.raises(TimestampError, match="message imprint mismatch"):
        verify_response(token, b"other", [pki.ca])


# --- the HTTP TSA and its client -------------------------------------------------------------


@pytest.fixture(scope="module")
async def tsa_url(pki: Pki) -> AsyncIterator[str]:
    runner = web.AppRunner(tsa.tsa_app(pki.key, pki.cert, POLICY), access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    await runner.cleanup()


async def test_fetch_timestamp_over_http(
    pki: Pki, tsa_url: str, http: aiohttp.ClientSession
) -> None:
    first, info = await timestamping.fetch_timestamp(http, tsa_url, DATA, [pki.ca], timeout=5)
    assert verify_response(first, DATA, [pki.ca]) == info
    assert info.nonce is not None and info.policy == POLICY
    _, second = await timestamping.fetch_timestamp(http, tsa_url, DATA, [pki.ca], timeout=5)
    assert second.serial > info.serial and second.nonce != info.nonce


async def test_fetch_timestamp_refuses_untrusted_tsa(
    tsa_url: str, http: aiohttp.ClientSession
) -> None:
    _, other_root = make_root_ca("not our federation")
    with pytest.raises(TimestampError, match="trusted root"):
        await timestamping.fetch_timestamp(http, tsa_url, DATA, [other_root], timeout=5)


async def test_fetch_timestamp_refuses_non_tsa(
    pki: Pki, tsa_url: str, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(TimestampError, match="HTTP 404"):
        await timestamping.fetch_timestamp(http, tsa_url + "nowhere", DATA, [pki.ca], timeout=5)


async def test_tsa_http_edges(tsa_url: str, http: aiohttp.ClientSession) -> None:
    query = make_request(DATA)
    async with http.post(tsa_url, data=query, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415
    big = b"\x30" + b"\x00" * (tsa.MAX_QUERY_BYTES + 1)
    async with http.post(tsa_url, data=big, headers={"Content-Type": tsa.QUERY_TYPE}) as r:
        assert r.status == 413
    async with http.get(tsa_url) as r:
        assert r.status == 405
    # A malformed query is a protocol error: a 200 reply with status rejection.
    async with http.post(tsa_url, data=b"junk", headers={"Content-Type": tsa.QUERY_TYPE}) as r:
        assert (r.status, r.content_type) == (200, tsa.REPLY_TYPE)
        assert read_status(await r.read()).fail_info == {"bad_request"}


def test_serials_increase_even_if_the_clock_goes_back() -> None:
    ticks = iter([1000, 1000, 500, 2000])
    counter = tsa.SerialCounter(clock=lambda: next(ticks))
    assert [counter.next() for _ in range(4)] == [1000, 1001, 1002, 2000]
