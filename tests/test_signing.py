"""Member signatures: accepted only from a leaf signing cert of a trusted CA naming the member."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from xroad_hub.pki import generate_key, issue_cert, make_root_ca
from xroad_hub.protocol.identifiers import MemberId
from xroad_hub.protocol.signing import (
    MessageSigner,
    SignatureError,
    SignatureVerifier,
    cert_fingerprint,
)

DOPA = MemberId("TH", "GOV", "DOPA")
DBD = MemberId("TH", "GOV", "DBD")
NOW = dt.datetime.now(dt.UTC)
DATA = b'{"body_sha512":"abc","kind":"request"}'


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return make_root_ca("TH federation root CA")


@pytest.fixture(scope="module")
def other_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    # Same subject name as the trusted CA: only the signature can tell them apart.
    return make_root_ca("TH federation root CA")


def _signer(ca, member: MemberId, *, purpose: str = "sign", cn: str | None = None, **kw):
    key = generate_key()
    cert = issue_cert(ca[0], ca[1], cn or str(member), key, purpose=purpose, **kw)
    return MessageSigner(member, key, _der(cert))


def _custom_cert(
    ca,
    public_key,
    *,
    cn: str = str(DOPA),
    ca_flag: bool | None = False,
    key_usage: x509.KeyUsage | None = None,
) -> bytes:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca[1].subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
    )
    if ca_flag is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True
        )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return _der(builder.sign(ca[0], hashes.SHA256()))


def _usage(**on: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        ),
        False,
    )
    flags.update(on)
    return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)


def _sig(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A signature in the wire format, made with any key (the certificate is not used)."""
    return MessageSigner(DOPA, key, b"").sign(DATA)


def _refused(verifier: SignatureVerifier, *args, match: str, **kw) -> None:
    with pytest.raises(SignatureError, match=match):
        verifier.verify(*args, **kw)


def test_cert_fingerprint_is_sha256_hex() -> None:
    assert cert_fingerprint(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_member_signature_accepted(ca) -> None:
    s = _signer(ca, DOPA)
    v = SignatureVerifier([ca[1]])
    v.verify(DATA, s.sign(DATA), s.cert_der, DOPA)
    # and again, now from the certificate cache
    v.verify(DATA, s.sign(DATA), s.cert_der, DOPA)


def test_accepted_among_several_trusted_cas(ca, other_ca) -> None:
    s = _signer(ca, DOPA)
    SignatureVerifier([other_ca[1], ca[1]]).verify(DATA, s.sign(DATA), s.cert_der, DOPA)


def test_tampered_data_refused(ca) -> None:
    s = _signer(ca, DOPA)
    sig = s.sign(DATA)
    v = SignatureVerifier([ca[1]])
    _refused(v, DATA + b" ", sig, s.cert_der, DOPA, match="does not verify")
    _refused(v, DATA.replace(b"abc", b"abd"), sig, s.cert_der, DOPA, match="does not verify")


def test_tampered_signature_refused(ca) -> None:
    s = _signer(ca, DOPA)
    sig = bytearray(s.sign(DATA))
    sig[-1] ^= 1
    _refused(SignatureVerifier([ca[1]]), DATA, bytes(sig), s.cert_der, DOPA, match="verify")


@pytest.mark.parametrize(
    ("garbage", "match"),
    [
        (b"", "truncated"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x01\x00" + b"x" * 70, "does not verify"),
        (b"\x00\x00\x00\x05\x00\x00\x00\x01\x00" + b"x" * 70, "audit path"),
        (b"\x00\x00\x00\x00\x00\x01\x00\x00\x00" + b"x" * 70, "malformed"),
    ],
)
def test_garbage_signature_refused(ca, garbage: bytes, match: str) -> None:
    s = _signer(ca, DOPA)
    _refused(SignatureVerifier([ca[1]]), DATA, garbage, s.cert_der, DOPA, match=match)


def test_batch_signature_covers_each_message(ca) -> None:
    s = _signer(ca, DOPA)
    items = [f"message {i}".encode() for i in range(13)]
    sigs = s.sign_batch(items)
    verifier = SignatureVerifier([ca[1]])
    for item, sig in zip(items, sigs, strict=True):
        verifier.verify(item, sig, s.cert_der, DOPA)
    # Every message has its own audit path; another message's path does not fit.
    with pytest.raises(SignatureError):
        verifier.verify(items[0], sigs[1], s.cert_der, DOPA)
    with pytest.raises(SignatureError):
        verifier.verify(b"message 13", sigs[12], s.cert_der, DOPA)


def test_batch_root_is_verified_once_per_verifier(ca, monkeypatch) -> None:
    s = _signer(ca, DOPA)
    items = [bytes([i]) * 10 for i in range(8)]
    sigs = s.sign_batch(items)
    verifier = SignatureVerifier([ca[1]])
    verifier.verify(items[0], sigs[0], s.cert_der, DOPA)  # warms the certificate cache
    counted: list[int] = []
    key_type = type(verifier._cache[s.cert_der].key)
    original = key_type.verify
    monkeypatch.setattr(
        key_type, "verify", lambda self, *a: counted.append(1) or original(self, *a)
    )
    for item, sig in zip(items[1:], sigs[1:], strict=True):
        verifier.verify(item, sig, s.cert_der, DOPA)
    assert counted == []  # the root was verified with the first message


def test_signature_by_another_member_than_expected_refused(ca) -> None:
    s = _signer(ca, DBD)
    _refused(SignatureVerifier([ca[1]]), DATA, s.sign(DATA), s.cert_der, DOPA, match="signed by")


def test_signature_with_a_key_other_than_the_certs_refused(ca) -> None:
    dopa, dbd = _signer(ca, DOPA), _signer(ca, DBD)
    _refused(SignatureVerifier([ca[1]]), DATA, dbd.sign(DATA), dopa.cert_der, DOPA, match="verify")


def test_cert_from_another_ca_with_same_name_refused(ca, other_ca) -> None:
    s = _signer(other_ca, DOPA)
    assert x509.load_der_x509_certificate(s.cert_der).issuer == ca[1].subject
    _refused(SignatureVerifier([ca[1]]), DATA, s.sign(DATA), s.cert_der, DOPA, match="trusted CA")


def test_no_trusted_cas_refuses_everything(ca) -> None:
    s = _signer(ca, DOPA)
    _refused(SignatureVerifier([]), DATA, s.sign(DATA), s.cert_der, DOPA, match="trusted CA")


def test_ca_cert_itself_refused(ca) -> None:
    ca_key, ca_cert = ca
    sig = _sig(ca_key)
    _refused(SignatureVerifier([ca_cert]), DATA, sig, _der(ca_cert), DOPA, match="CA certificate")


def test_leaf_marked_ca_refused_even_with_signing_usage(ca) -> None:
    key = generate_key()
    der = _custom_cert(ca, key.public_key(), ca_flag=True, key_usage=_usage(digital_signature=True))
    sig = _sig(key)
    _refused(SignatureVerifier([ca[1]]), DATA, sig, der, DOPA, match="CA certificate")


def test_expired_cert_refused(ca) -> None:
    s = _signer(
        ca,
        DOPA,
        not_before=NOW - dt.timedelta(days=10),
        not_after=NOW - dt.timedelta(days=1),
    )
    _refused(SignatureVerifier([ca[1]]), DATA, s.sign(DATA), s.cert_der, DOPA, match="expired")


def test_not_yet_valid_cert_refused(ca) -> None:
    s = _signer(
        ca,
        DOPA,
        not_before=NOW + dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=10),
    )
    _refused(SignatureVerifier([ca[1]]), DATA, s.sign(DATA), s.cert_der, DOPA, match="expired")


def test_cache_does_not_bypass_expiry(ca) -> None:
    s = _signer(ca, DOPA, days=1)
    v = SignatureVerifier([ca[1]])
    sig = s.sign(DATA)
    v.verify(DATA, sig, s.cert_der, DOPA)
    later = NOW + dt.timedelta(days=2)
    _refused(v, DATA, sig, s.cert_der, DOPA, now=later, match="expired")


def test_tls_purpose_cert_naming_a_member_is_accepted_since_it_has_digital_signature(ca) -> None:
    # The verifier only demands digitalSignature or contentCommitment key usage; a "tls"
    # certificate has digitalSignature, so it signs messages as well as a "sign" one would
    # if a CA issued it with a member CN. (devpki never does: its TLS CNs are node or
    # subsystem ids, see the next test.)
    s = _signer(ca, DOPA, purpose="tls")
    SignatureVerifier([ca[1]]).verify(DATA, s.sign(DATA), s.cert_der, DOPA)


def test_tls_cert_as_devpki_issues_it_refused_since_cn_is_not_a_member(ca) -> None:
    s = _signer(ca, DOPA, purpose="tls", cn="TH/GOV/DOPA/hub2")
    _refused(
        SignatureVerifier([ca[1]]), DATA, s.sign(DATA), s.cert_der, DOPA, match="name a member"
    )


@pytest.mark.parametrize("cn", ["TH/GOV/DOPA/population", "TH/GOV", "TH/GOV/DO_PA", "anything"])
def test_cn_not_a_member_id_refused(ca, cn: str) -> None:
    s = _signer(ca, DOPA, cn=cn)
    _refused(
        SignatureVerifier([ca[1]]), DATA, s.sign(DATA), s.cert_der, DOPA, match="name a member"
    )


def test_key_usage_without_signing_refused(ca) -> None:
    key = generate_key()
    der = _custom_cert(ca, key.public_key(), key_usage=_usage(key_encipherment=True))
    sig = _sig(key)
    _refused(SignatureVerifier([ca[1]]), DATA, sig, der, DOPA, match="key usage")


def test_content_commitment_alone_is_enough(ca) -> None:
    key = generate_key()
    der = _custom_cert(ca, key.public_key(), key_usage=_usage(content_commitment=True))
    sig = _sig(key)
    SignatureVerifier([ca[1]]).verify(DATA, sig, der, DOPA)


@pytest.mark.parametrize(
    ("ca_flag", "usage"), [(None, _usage(digital_signature=True)), (False, None)]
)
def test_missing_extensions_refused(ca, ca_flag, usage) -> None:
    key = generate_key()
    der = _custom_cert(ca, key.public_key(), ca_flag=ca_flag, key_usage=usage)
    sig = _sig(key)
    _refused(SignatureVerifier([ca[1]]), DATA, sig, der, DOPA, match="extensions")


def test_non_ec_key_refused(ca) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    der = _custom_cert(ca, key.public_key(), key_usage=_usage(digital_signature=True))
    _refused(SignatureVerifier([ca[1]]), DATA, key.sign(DATA), der, DOPA, match="EC key")


def test_garbage_cert_refused(ca) -> None:
    _refused(SignatureVerifier([ca[1]]), DATA, b"sig", b"\x30\x03abc", DOPA, match="DER")


def test_refused_cert_is_not_cached(ca, other_ca) -> None:
    s = _signer(other_ca, DOPA)
    v = SignatureVerifier([ca[1]])
    for _ in range(2):
        _refused(v, DATA, s.sign(DATA), s.cert_der, DOPA, match="trusted CA")
