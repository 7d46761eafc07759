"""RFC 3161 time-stamps: requests, tokens and their verification, without any I/O.

Theory of operation. A requester hashes its data (here: a log checkpoint) and sends the TSA a
``TimeStampReq`` holding the hash (the *message imprint*), optionally a random nonce, and
whether it wants the TSA certificate back. The TSA answers with a ``TimeStampResp``: a status
and, when granted, a *time-stamp token*, which is a CMS ``SignedData`` whose signed content
(eContentType id-ct-TSTInfo) is a ``TSTInfo``: policy, the imprint echoed back, a serial
number, the generation time and the nonce. The TSA does not sign the TSTInfo directly: it signs
the DER of the *signed attributes*, which bind everything else:

- ``contentType`` = id-ct-TSTInfo, and ``messageDigest`` = hash of the TSTInfo bytes;
- ``signingCertificateV2`` (RFC 5035 / RFC 5816): the hash of the TSA certificate, so that
  a token cannot be passed off as signed under another certificate of the same key
  (``openssl ts -verify`` refuses tokens without it);
- ``signingTime``, informative only: the time that counts is the TSTInfo's ``genTime``.

Verifying therefore walks the same chain backwards: status granted -> imprint equals the hash
of our data -> nonce echoed -> messageDigest equals the hash of the TSTInfo -> the signature
over the signed attributes verifies with the TSA certificate's key -> that certificate is the
one named by the ESS cert id, is a time-stamping certificate (critical extendedKeyUsage that
is exactly id-kp-timeStamping, RFC 3161 section 2.3) and chains to a trusted root at genTime.
Checking the chain at genTime, not now, is what makes a token outlive its TSA certificate.

ASN.1 is built and parsed with asn1crypto (types from its ``tsp`` and ``cms`` modules);
cryptography does the signatures and the path validation. Everything asn1crypto or
cryptography raise while reading untrusted bytes is turned into ``TimestampError`` here.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xroad_hub.errors import HubError

__all__ = [
    "QUERY_TYPE",
    "REPLY_TYPE",
    "Digest",
    "PkiStatus",
    "TimestampError",
    "TimestampInfo",
    "digest_request",
    "issue_token",
    "issue_tsa_cert",
    "make_request",
    "read_status",
    "verify_response",
]

# RFC 3161 section 3.4: the media types of a time-stamp query and reply over HTTP.
QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"

# Hashes accepted in imprints and signatures. SHA-1 and MD5 are refused on purpose: a
# collision lets one token stand for two documents.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
_TIME_STAMPING = ExtendedKeyUsageOID.TIME_STAMPING
_GRANTED = frozenset({"granted", "granted_with_mods"})


class TimestampError(HubError, ValueError):
    """A time-stamp request, response or token that is refused, malformed or not valid.

    ``fail_info`` holds the TSA's PKIFailureInfo names (``bad_alg``, ...) when the TSA itself
    rejected the request; it is empty for failures found by the verifier.
    """

    def __init__(self, message: str, *, fail_info: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.fail_info = fail_info


@dataclass(frozen=True, slots=True)
class Digest:
    """A precomputed message imprint: hash name (``sha256``, ``sha384``, ``sha512``) and value."""

    name: str
    value: bytes

    def __post_init__(self) -> None:
        if _DIGEST_SIZES.get(self.name) != len(self.value):
            raise TimestampError(f"not a {self.name} digest of {len(self.value)} bytes")

    @classmethod
    def of(cls, data: bytes, name: str = "sha256") -> Digest:
        if name not in _HASHES:
            raise TimestampError(f"unsupported hash {name!r}")
        return cls(name, hashlib.new(name, data).digest())


@dataclass(frozen=True, slots=True)
class PkiStatus:
    """The status part of a TimeStampResp."""

    status: str
    fail_info: frozenset[str]
    text: str | None

    @property
    def granted(self) -> bool:
        return self.status in _GRANTED


@dataclass(frozen=True, slots=True)
class TimestampInfo:
    """What a verified token attests: ``digest`` existed at ``gen_time`` (per ``tsa_cert``)."""

    gen_time: datetime
    serial: int
    policy: str
    tsa_cert: x509.Certificate
    nonce: int | None
    digest: Digest


# asn1crypto's TimeStampResp makes the token mandatory, but RFC 3161 omits it when the
# request is refused; this variant reads and writes both kinds of response.
class _TimeStampResp(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


# asn1crypto parses lazily and, on hostile input, fails with any of these (an AttributeError
# when a field holds a universal type of the wrong kind).
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)


def _parse(spec: Any, der: bytes, what: str, *, full: bool = True) -> Any:
    """Load ``der`` as ``spec``; with ``full``, parse every field now, so that no malformed
    field is discovered later. (Not for whole responses: asn1crypto re-encodes every
    algorithm identifier it converts, which costs ~0.2 s for a token with a certificate.)"""
    try:
        value = spec.load(der, strict=True)
        if full:
            value.native  # noqa: B018 - forces the full parse
    except _ASN1_ERRORS as exc:
        raise TimestampError(f"malformed {what}: {exc}") from exc
    return value


def _load_cert(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        # cryptography only warns about some invalid certificates (a serial that is not
        # positive, ...); a certificate in a token is either valid or refused.
        warnings.simplefilter("error", CryptographyDeprecationWarning)
        try:
            return x509.load_der_x509_certificate(der)
        except (ValueError, CryptographyDeprecationWarning) as exc:
            raise TimestampError(f"malformed certificate in the token: {exc}") from exc


# --- the TSA certificate -------------------------------------------------------------------


def issue_tsa_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    days: int = 825,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """Issue a time-stamping certificate from the federation CA (``pki.make_root_ca``).

    RFC 3161 section 2.3: the extendedKeyUsage must be critical and hold only timeStamping;
    OpenSSL additionally insists that keyUsage, if present, allow nothing but
    digitalSignature and nonRepudiation.
    """
    now = datetime.now(UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xroad-hub development federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([_TIME_STAMPING]), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )


# --- requests --------------------------------------------------------------------------------


def digest_request(digest: Digest, *, nonce: int | None = None, cert_req: bool = True) -> bytes:
    """A DER TimeStampReq for an already computed digest."""
    req: dict[str, Any] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {"algorithm": digest.name},
            "hashed_message": digest.value,
        },
        "cert_req": cert_req,
    }
    if nonce is not None:
        req["nonce"] = nonce
    return bytes(tsp.TimeStampReq(req).dump())


def make_request(data: bytes, *, nonce: int | None = None, cert_req: bool = True) -> bytes:
    """A DER TimeStampReq whose message imprint is SHA-256(data)."""
    return digest_request(Digest.of(data), nonce=nonce, cert_req=cert_req)


# --- the TSA side ----------------------------------------------------------------------------


class _Refusal(Exception):
    def __init__(self, fail_info: str, text: str) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text


def _read_request(request_der: bytes, policy_oid: str) -> tsp.TimeStampReq:
    try:
        req = _parse(tsp.TimeStampReq, request_der, "TimeStampReq")
    except TimestampError as exc:
        raise _Refusal("bad_request", "malformed TimeStampReq") from exc
    if req["version"].native != "v1":
        raise _Refusal("bad_request", "unsupported TimeStampReq version")
    algorithm = req["message_imprint"]["hash_algorithm"]
    name = algorithm["algorithm"].native
    if name not in _HASHES:
        raise _Refusal("bad_alg", f"unsupported hash algorithm {name}")
    if algorithm["parameters"].native is not None:
        raise _Refusal("bad_request", "hash algorithm parameters must be absent or NULL")
    if len(req["message_imprint"]["hashed_message"].native) != _DIGEST_SIZES[name]:
        raise _Refusal("bad_request", f"message imprint is not a {name} digest")
    requested = req["req_policy"].native
    if requested is not None and requested != policy_oid:
        raise _Refusal("unaccepted_policy", f"policy {requested} is not offered")
    if req["extensions"].native:
        raise _Refusal("unaccepted_extensions", "no request extensions are supported")
    return req


def _imprint(req: tsp.TimeStampReq) -> dict[str, Any]:
    """The request's imprint, rebuilt from the checked fields only (never copied as parsed:
    lenient parsing could carry extra elements into our signed TSTInfo)."""
    imprint = req["message_imprint"]
    return {
        "hash_algorithm": {"algorithm": imprint["hash_algorithm"]["algorithm"].native},
        "hashed_message": imprint["hashed_message"].native,
    }


def _refusal_response(refusal: _Refusal) -> bytes:
    status = {"status": "rejection", "status_string": [refusal.text]}
    status["fail_info"] = tsp.PKIFailureInfo({refusal.fail_info})
    return bytes(_TimeStampResp({"status": status}).dump())


def _attribute(kind: str, value: object) -> cms.CMSAttribute:
    return cms.CMSAttribute({"type": kind, "values": [value]})


def issue_token(
    request_der: bytes,
    tsa_key: ec.EllipticCurvePrivateKey,
    tsa_cert: x509.Certificate,
    *,
    policy_oid: str,
    serial: int,
    now: datetime,
) -> bytes:
    """Answer a DER TimeStampReq with a DER TimeStampResp.

    A well-formed request is granted: the token is signed with ECDSA-with-SHA256 and holds
    the TSA certificate if the request asked for it. A request the TSA cannot honour gets a
    response of status rejection whose failInfo says why (badAlg, badRequest,
    unacceptedPolicy, unacceptedExtensions). ``serial`` must be unique per TSA; ``now``
    must be timezone-aware (it is written, to the second, as genTime).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if tsa_key.public_key().public_bytes(pem, spki) != tsa_cert.public_key().public_bytes(
        pem, spki
    ):
        # A mismatch would yield tokens that no one can verify: a configuration error.
        raise ValueError("the TSA key does not belong to the TSA certificate")
    try:
        req = _read_request(request_der, policy_oid)
    except _Refusal as refusal:
        return _refusal_response(refusal)

    tst_info: dict[str, Any] = {
        "version": "v1",
        "policy": policy_oid,
        "message_imprint": _imprint(req),
        "serial_number": serial,
        # Whole seconds: DER forbids trailing zeros in fractions; seconds are what we promise.
        "gen_time": now.astimezone(UTC).replace(microsecond=0),
    }
    if req["nonce"].native is not None:
        tst_info["nonce"] = req["nonce"].native
    content = bytes(tsp.TSTInfo(tst_info).dump())

    cert_der = tsa_cert.public_bytes(serialization.Encoding.DER)
    cert = asn1_x509.Certificate.load(cert_der)
    ess_cert_id = {
        # hash_algorithm left out: its default, SHA-256, must not be encoded in DER.
        "cert_hash": hashlib.sha256(cert_der).digest(),
        "issuer_serial": {
            "issuer": [asn1_x509.GeneralName(name="directory_name", value=cert.issuer)],
            "serial_number": cert.serial_number,
        },
    }
    signed_attrs = cms.CMSAttributes(
        [
            _attribute("content_type", "tst_info"),
            _attribute("signing_time", cms.Time(name="utc_time", value=tst_info["gen_time"])),
            _attribute("message_digest", hashlib.sha256(content).digest()),
            _attribute("signing_certificate_v2", {"certs": [ess_cert_id]}),
        ]
    )
    # The signature covers the attributes encoded as a SET OF (tag 0x31), not as the [0]
    # IMPLICIT field they occupy in SignerInfo (RFC 5652 section 5.4).
    signature = tsa_key.sign(signed_attrs.dump(), ec.ECDSA(hashes.SHA256()))
    signer_info = {
        "version": "v1",
        # issuerAndSerialNumber, not subjectKeyIdentifier: OpenSSL's TS code reads tokens
        # through its PKCS#7 layer, which only knows the former.
        "sid": cms.SignerIdentifier(
            name="issuer_and_serial_number",
            value={"issuer": cert.issuer, "serial_number": cert.serial_number},
        ),
        "digest_algorithm": {"algorithm": "sha256"},
        "signed_attrs": signed_attrs,
        "signature_algorithm": {"algorithm": "sha256_ecdsa"},
        "signature": signature,
    }
    signed_data: dict[str, Any] = {
        "version": "v3",  # eContentType is not id-data (RFC 5652 section 5.1)
        "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": {
            "content_type": "tst_info",
            "content": core.ParsableOctetString(content),
        },
        "signer_infos": [signer_info],
    }
    if req["cert_req"].native:
        signed_data["certificates"] = [cms.CertificateChoices(name="certificate", value=cert)]
    token = cms.ContentInfo({"content_type": "signed_data", "content": signed_data})
    return bytes(
        _TimeStampResp({"status": {"status": "granted"}, "time_stamp_token": token}).dump()
    )


# --- verification ----------------------------------------------------------------------------


def _load_response(response_der: bytes) -> tuple[PkiStatus, Any]:
    resp = _parse(_TimeStampResp, response_der, "TimeStampResp", full=False)
    try:
        info = resp["status"]
        text = info["status_string"].native
        status = PkiStatus(
            status=str(info["status"].native),
            fail_info=frozenset(info["fail_info"].native or ()),
            text="; ".join(text) if text else None,
        )
    except _ASN1_ERRORS as exc:
        raise TimestampError(f"malformed PKIStatusInfo: {exc}") from exc
    return status, resp["time_stamp_token"]


def read_status(response_der: bytes) -> PkiStatus:
    """The status of a DER TimeStampResp, without verifying its token."""
    return _load_response(response_der)[0]


def _hash_name(algorithm: algos.DigestAlgorithm, what: str) -> str:
    name = str(algorithm["algorithm"].native)
    if name not in _HASHES:
        raise TimestampError(f"{what} uses unsupported hash {name}")
    return name


def _attributes(signer_info: cms.SignerInfo) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for attribute in signer_info["signed_attrs"]:
        kind = str(attribute["type"].native)
        if kind in found:
            raise TimestampError(f"signed attribute {kind} appears twice")
        found[kind] = list(attribute["values"])
    for kind in ("content_type", "message_digest"):
        if len(found.get(kind, [])) != 1:
            raise TimestampError(f"token lacks a single-valued {kind} signed attribute")
    return found


def _find_signer(sid: cms.SignerIdentifier, certs: Sequence[x509.Certificate]) -> x509.Certificate:
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
            ours = sid.chosen
            if (
                parsed.serial_number == ours["serial_number"].native
                and parsed.issuer == ours["issuer"]
            ):
                return cert
        else:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ski.value.digest == sid.chosen.native:
                return cert
    raise TimestampError("the TSA certificate is neither in the token nor among those given")


def _check_signature(
    signer_info: cms.SignerInfo, signed_attrs: bytes, cert: x509.Certificate, digest_name: str
) -> None:
    algorithm = signer_info["signature_algorithm"]
    kind = algorithm.signature_algo
    # ecdsa-with-SHAxxx names its hash; it must agree with the SignerInfo digest algorithm.
    if algorithm["algorithm"].native not in ("ecdsa", "rsassa_pkcs1v15"):
        sig_hash = algorithm.hash_algo
        if sig_hash != digest_name:
            raise TimestampError(f"signature hash {sig_hash} differs from digest {digest_name}")
    signed = bytearray(signed_attrs)
    signed[0] = 0x31  # back from [0] IMPLICIT to SET OF: what the TSA signed
    hash_algorithm = _HASHES[digest_name]()
    key = cert.public_key()
    signature = signer_info["signature"].native
    try:
        if kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, bytes(signed), ec.ECDSA(hash_algorithm))
        elif kind == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, bytes(signed), padding.PKCS1v15(), hash_algorithm)
        else:
            raise TimestampError(f"unsupported signature algorithm {kind} for this TSA key")
    except InvalidSignature as exc:
        raise TimestampError("the token's signature does not verify with the TSA key") from exc


def _check_ess_cert_id(attributes: dict[str, list[Any]], cert: x509.Certificate) -> None:
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    if "signing_certificate_v2" in attributes:
        first = attributes["signing_certificate_v2"][0]["certs"][0]
        name = _hash_name(first["hash_algorithm"], "the ESS certificate id")
    elif "signing_certificate" in attributes:
        # Version 1 names the certificate by SHA-1 (OpenSSL's default, many public TSAs).
        # It only identifies the certificate; the signature checked above is what binds.
        first = attributes["signing_certificate"][0]["certs"][0]
        name = "sha1"
    else:
        raise TimestampError("token lacks the signingCertificate(V2) signed attribute")
    if first["cert_hash"].native != hashlib.new(name, cert_der).digest():
        raise TimestampError("the ESS certificate id does not name the TSA certificate")


def _check_tsa_cert(cert: x509.Certificate, gen_time: datetime) -> None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        raise TimestampError("the TSA certificate has no extendedKeyUsage") from None
    if list(eku.value) != [_TIME_STAMPING] or not eku.critical:
        raise TimestampError(
            "the TSA certificate's extendedKeyUsage must be critical and only timeStamping"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and (
        not (usage.digital_signature or usage.content_commitment)
        or usage.key_encipherment
        or usage.data_encipherment
        or usage.key_agreement
        or usage.key_cert_sign
        or usage.crl_sign
    ):
        raise TimestampError("the TSA certificate's keyUsage does not allow time-stamping")
    if not cert.not_valid_before_utc <= gen_time <= cert.not_valid_after_utc:
        raise TimestampError(
            f"genTime {gen_time.isoformat()} is outside the TSA certificate's validity"
        )


_CA_EKUS = frozenset({_TIME_STAMPING, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE})


def _ca_eku(_policy: verification.Policy, _cert: x509.Certificate, eku: Any) -> None:
    # A CA may restrict what it issues for by EKU; it must then allow time-stamping.
    if eku is not None and not _CA_EKUS & set(eku):
        raise ValueError("CA certificate does not allow timeStamping")


def _check_chain(
    cert: x509.Certificate,
    intermediates: list[x509.Certificate],
    trusted_roots: list[x509.Certificate],
    at: datetime,
) -> None:
    if not trusted_roots:
        raise TimestampError("no trusted roots to verify the TSA certificate against")
    # The client verifier is cryptography's path builder without a server name. Its default
    # end-entity rules are for TLS clients (clientAuth EKU); the TSA rules were checked in
    # _check_tsa_cert, so the end entity is left to us and the CAs keep the Web PKI rules.
    ca_policy = verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _ca_eku
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(trusted_roots))
        .time(at)
        .extension_policies(
            ca_policy=ca_policy, ee_policy=verification.ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(cert, intermediates)
    except verification.VerificationError as exc:
        raise TimestampError(
            f"the TSA certificate does not chain to a trusted root: {exc}"
        ) from exc


def _verify_token(
    token: Any,
    data: bytes | Digest,
    trusted_roots: list[x509.Certificate],
    nonce: int | None,
    untrusted: Sequence[x509.Certificate],
) -> TimestampInfo:
    if isinstance(token, core.Void):
        raise TimestampError("granted response without a time-stamp token")
    if token["content_type"].native != "signed_data":
        raise TimestampError("the time-stamp token is not CMS SignedData")
    signed_data = token["content"]
    encap = signed_data["encap_content_info"]
    if encap["content_type"].native != "tst_info" or isinstance(encap["content"], core.Void):
        raise TimestampError("the token's content is not a TSTInfo")
    content = bytes(encap["content"])
    tst = _parse(tsp.TSTInfo, content, "TSTInfo")

    # 1. What was stamped: our data, under our nonce.
    imprint = tst["message_imprint"]
    imprint_name = _hash_name(imprint["hash_algorithm"], "the message imprint")
    expected = data if isinstance(data, Digest) else Digest.of(data, imprint_name)
    got = Digest(imprint_name, imprint["hashed_message"].native)
    if got != expected:
        raise TimestampError("message imprint mismatch: the token is for other data")
    if nonce is not None and tst["nonce"].native != nonce:
        raise TimestampError("the token's nonce differs from the request's")
    if tst["version"].native != "v1":
        raise TimestampError("unsupported TSTInfo version")

    # 2. Who signed it, and that the signature covers this TSTInfo.
    signer_infos = list(signed_data["signer_infos"])
    if len(signer_infos) != 1:
        raise TimestampError("a time-stamp token has exactly one signer")
    signer_info = signer_infos[0]
    if signer_info["version"].native not in ("v1", "v3"):
        raise TimestampError("unsupported SignerInfo version")
    if isinstance(signer_info["signed_attrs"], core.Void):
        raise TimestampError("token has no signed attributes")
    digest_name = _hash_name(signer_info["digest_algorithm"], "the token signature")
    # The attributes' bytes as received, taken before any field is read: asn1crypto may
    # re-encode what it has parsed, and the signature covers the original encoding.
    signed_attrs = bytes(signer_info["signed_attrs"].dump())
    attributes = _attributes(signer_info)
    if attributes["content_type"][0].native != "tst_info":
        raise TimestampError("signed contentType attribute is not id-ct-TSTInfo")
    if attributes["message_digest"][0].native != hashlib.new(digest_name, content).digest():
        raise TimestampError("signed messageDigest does not match the TSTInfo")
    embedded = [
        _load_cert(choice.chosen.dump())
        for choice in (signed_data["certificates"] or [])
        if choice.name == "certificate"
    ]
    candidates = [*embedded, *untrusted]
    cert = _find_signer(signer_info["sid"], candidates)
    _check_signature(signer_info, signed_attrs, cert, digest_name)
    _check_ess_cert_id(attributes, cert)

    # 3. Whether that signer may time-stamp, then and there.
    gen_time = tst["gen_time"].native
    _check_tsa_cert(cert, gen_time)
    _check_chain(cert, [c for c in candidates if c != cert], trusted_roots, gen_time)
    return TimestampInfo(
        gen_time=gen_time,
        serial=int(tst["serial_number"].native),
        policy=str(tst["policy"].native),
        tsa_cert=cert,
        nonce=tst["nonce"].native,
        digest=got,
    )


def verify_response(
    response_der: bytes,
    data: bytes | Digest,
    trusted_roots: list[x509.Certificate],
    *,
    nonce: int | None = None,
    untrusted: Sequence[x509.Certificate] = (),
) -> TimestampInfo:
    """Verify a DER TimeStampResp for ``data`` (bytes, or the ``Digest`` of them).

    ``nonce``: the nonce of the request, which the token must echo. ``untrusted``: further
    certificates to find the TSA certificate and its intermediates in (like ``openssl ts
    -untrusted``); needed when the request did not ask for the certificate. Raises
    TimestampError unless every check in the module docstring passes.
    """
    try:
        status, token = _load_response(response_der)
        if not status.granted:
            raise TimestampError(
                f"the TSA refused the request: {status.status}"
                f" ({', '.join(sorted(status.fail_info)) or 'no failInfo'}): {status.text}",
                fail_info=status.fail_info,
            )
        return _verify_token(token, data, trusted_roots, nonce, untrusted)
    except TimestampError:
        raise
    except (
        *_ASN1_ERRORS,
        UnsupportedAlgorithm,  # e.g. a certificate key on an unknown curve
        x509.InvalidVersion,
        x509.DuplicateExtension,
    ) as exc:
        # The one place where what our dependencies raise on malformed input (a bad
        # extension, a key on an unknown curve...) becomes our error.
        raise TimestampError(f"malformed time-stamp response: {exc}") from exc
