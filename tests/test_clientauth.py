"""Client information system authentication at its own node: http, mtls and jwt, default deny."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from xroad_hub.clientauth import (
    MAX_TOKEN_LIFETIME,
    ClientAuthenticator,
    ClientRegistration,
    Credentials,
)
from xroad_hub.errors import XRoadError
from xroad_hub.identifiers import MemberId, SubsystemId
from xroad_hub.pki import generate_key

NODE = "TH/GOV/DGA/hub1"
DEV = SubsystemId("TH", "GOV", "DGA", "devtool")
MTLS = SubsystemId("TH", "GOV", "DGA", "backoffice")
JWT = SubsystemId("TH", "GOV", "DGA", "citizenportal")
JWT2 = SubsystemId("TH", "GOV", "DGA", "mobileapp")
CERT_FP = hashlib.sha256(b"backoffice client cert").hexdigest()

JWT_KEY = generate_key()
JWT2_KEY = generate_key()

SSL_FAILED = "Server.ClientProxy.SslAuthenticationFailed"
TOKEN_FAILED = "Client.AuthenticationFailed"


def _auth() -> ClientAuthenticator:
    return ClientAuthenticator(
        NODE,
        [
            ClientRegistration(DEV, "http"),
            ClientRegistration(MTLS, "mtls", cert_sha256=CERT_FP),
            ClientRegistration(JWT, "jwt", jwt_key=JWT_KEY.public_key()),
            ClientRegistration(JWT2, "jwt", jwt_key=JWT2_KEY.public_key()),
        ],
    )


def _creds(
    ip: str = "127.0.0.1", *, tls: bool = False, cert: str | None = None, bearer: str | None = None
) -> Credentials:
    return Credentials(remote_ip=ip, tls=tls, cert_sha256=cert, bearer=bearer)


def _claims(client: SubsystemId = JWT, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": str(client),
        "aud": NODE,
        "iat": now,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _token(key=JWT_KEY, **overrides: object) -> str:
    client = overrides.pop("client", JWT)
    return jwt.encode(_claims(client, **overrides), key, algorithm="ES256")  # type: ignore[arg-type]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _fails(auth: ClientAuthenticator, client, creds: Credentials, code: str) -> XRoadError:
    with pytest.raises(XRoadError) as info:
        auth.authenticate(client, creds)
    assert info.value.code == code
    return info.value


# --- registration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "client",
    [
        SubsystemId("TH", "GOV", "DGA", "unknown"),
        MemberId("TH", "GOV", "DGA"),
        SubsystemId("TH", "GOV", "DOPA", "devtool"),
    ],
)
def test_unregistered_client_refused(client) -> None:
    auth = _auth()
    err = _fails(auth, client, _creds(), "Server.ClientProxy.UnknownMember")
    assert err.status == 500


# --- http -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.8.9.10", "::1"])
def test_http_from_loopback_ok(ip: str) -> None:
    reg = _auth().authenticate(DEV, _creds(ip))
    assert reg.id == DEV
    assert reg.auth == "http"


@pytest.mark.parametrize("ip", ["10.0.0.1", "192.168.1.2", "8.8.8.8", "::2", "0.0.0.0"])
def test_http_from_elsewhere_refused(ip: str) -> None:
    _fails(_auth(), DEV, _creds(ip), SSL_FAILED)


# --- mtls -----------------------------------------------------------------------------------


def test_mtls_right_fingerprint_ok() -> None:
    reg = _auth().authenticate(MTLS, _creds("10.1.2.3", tls=True, cert=CERT_FP))
    assert reg.id == MTLS


def test_mtls_without_cert_refused() -> None:
    _fails(_auth(), MTLS, _creds("10.1.2.3", tls=True), SSL_FAILED)


def test_mtls_without_tls_refused_even_with_fingerprint() -> None:
    _fails(_auth(), MTLS, _creds("127.0.0.1", tls=False, cert=CERT_FP), SSL_FAILED)


@pytest.mark.parametrize("cert", ["0" * 64, hashlib.sha256(b"other").hexdigest(), ""])
def test_mtls_wrong_cert_refused(cert: str) -> None:
    _fails(_auth(), MTLS, _creds("10.1.2.3", tls=True, cert=cert), SSL_FAILED)


def test_mtls_client_cannot_use_plain_loopback() -> None:
    _fails(_auth(), MTLS, _creds("127.0.0.1"), SSL_FAILED)


# --- jwt ------------------------------------------------------------------------------------


def test_jwt_valid_ok() -> None:
    reg = _auth().authenticate(JWT, _creds("203.0.113.5", tls=True, bearer=_token()))
    assert reg.id == JWT


def test_jwt_valid_at_max_lifetime_ok() -> None:
    now = int(time.time())
    token = _token(iat=now, exp=now + MAX_TOKEN_LIFETIME)
    _auth().authenticate(JWT, _creds(tls=True, bearer=token))


def test_jwt_missing_bearer_refused() -> None:
    _fails(_auth(), JWT, _creds(), TOKEN_FAILED)
    _fails(_auth(), JWT, _creds(tls=True, bearer=""), TOKEN_FAILED)


def test_jwt_replay_refused() -> None:
    auth = _auth()
    token = _token()
    auth.authenticate(JWT, _creds(tls=True, bearer=token))
    err = _fails(auth, JWT, _creds(tls=True, bearer=token), TOKEN_FAILED)
    assert "replay" in err.message


def test_jwt_same_jti_in_a_new_token_refused() -> None:
    auth = _auth()
    jti = str(uuid.uuid4())
    auth.authenticate(JWT, _creds(tls=True, bearer=_token(jti=jti)))
    _fails(
        auth, JWT, _creds(tls=True, bearer=_token(jti=jti, exp=int(time.time()) + 90)), TOKEN_FAILED
    )


def test_jwt_fresh_jti_accepted_after_use() -> None:
    auth = _auth()
    auth.authenticate(JWT, _creds(tls=True, bearer=_token()))
    auth.authenticate(JWT, _creds(tls=True, bearer=_token()))


def test_jwt_ids_are_per_client() -> None:
    auth = _auth()
    auth.authenticate(JWT, _creds(tls=True, bearer=_token(jti="shared")))
    auth.authenticate(JWT2, _creds(tls=True, bearer=_token(JWT2_KEY, client=JWT2, jti="shared")))


def test_jwt_failed_token_does_not_burn_its_jti() -> None:
    auth = _auth()
    _fails(auth, JWT, _creds(tls=True, bearer=_token(jti="j1", aud="elsewhere")), TOKEN_FAILED)
    auth.authenticate(JWT, _creds(tls=True, bearer=_token(jti="j1")))


def test_jwt_expired_refused() -> None:
    now = int(time.time())
    err = _fails(
        _auth(), JWT, _creds(tls=True, bearer=_token(iat=now - 120, exp=now - 60)), TOKEN_FAILED
    )
    assert "expired" in err.message


def test_jwt_issued_in_the_future_refused() -> None:
    now = int(time.time())
    _fails(
        _auth(), JWT, _creds(tls=True, bearer=_token(iat=now + 3600, exp=now + 3660)), TOKEN_FAILED
    )


def test_jwt_wrong_audience_refused() -> None:
    err = _fails(_auth(), JWT, _creds(tls=True, bearer=_token(aud="TH/GOV/DGA/hub2")), TOKEN_FAILED)
    assert "audience" in err.message


def test_jwt_wrong_issuer_refused() -> None:
    err = _fails(_auth(), JWT, _creds(tls=True, bearer=_token(iss=str(JWT2))), TOKEN_FAILED)
    assert "issuer" in err.message


def test_jwt_token_of_another_client_refused() -> None:
    # JWT2's own valid token presented for JWT: wrong key and wrong issuer.
    token = _token(JWT2_KEY, client=JWT2)
    _fails(_auth(), JWT, _creds(tls=True, bearer=token), TOKEN_FAILED)


def test_jwt_signed_with_another_key_refused() -> None:
    _fails(_auth(), JWT, _creds(tls=True, bearer=_token(generate_key())), TOKEN_FAILED)


def test_jwt_alg_none_refused() -> None:
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(_claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.{_b64url(b'x')}"):
        _fails(_auth(), JWT, _creds(tls=True, bearer=token), TOKEN_FAILED)


def test_jwt_hs256_with_public_key_as_secret_refused() -> None:
    # Algorithm confusion: HMAC keyed with the (public) verification key bytes.
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(_claims()).encode())
    signing_input = f"{header}.{payload}".encode()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
        secret = JWT_KEY.public_key().public_bytes(encoding, spki)
        sig = _b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())
        _fails(_auth(), JWT, _creds(tls=True, bearer=f"{header}.{payload}.{sig}"), TOKEN_FAILED)


def test_jwt_lifetime_over_limit_refused() -> None:
    now = int(time.time())
    token = _token(iat=now, exp=now + MAX_TOKEN_LIFETIME + 1)
    err = _fails(_auth(), JWT, _creds(tls=True, bearer=token), TOKEN_FAILED)
    assert "lifetime" in err.message


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "iss", "aud"])
def test_jwt_missing_required_claim_refused(claim: str) -> None:
    _fails(_auth(), JWT, _creds(tls=True, bearer=_token(**{claim: None})), TOKEN_FAILED)


@pytest.mark.parametrize("bearer", ["garbage", "a.b.c", "..", "Bearer x"])
def test_jwt_garbage_refused(bearer: str) -> None:
    _fails(_auth(), JWT, _creds(tls=True, bearer=bearer), TOKEN_FAILED)


def test_token_failures_are_client_faults() -> None:
    err = _fails(_auth(), JWT, _creds(tls=True, bearer="garbage"), TOKEN_FAILED)
    assert err.status == 400


def test_jwt_over_plain_http_is_refused_even_from_loopback() -> None:
    err = _fails(_auth(), JWT, _creds("127.0.0.1", tls=False, bearer=_token()), TOKEN_FAILED)
    assert "HTTPS" in err.message
