"""Client information system authentication at its own node: http, mtls and jwt, default deny."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from xroad_hub.errors import XRoadError
from xroad_hub.node.clientauth import (
    MAX_TOKEN_LIFETIME,
    ClientAuthenticator,
    ClientRegistration,
    Credentials,
)
from xroad_hub.node.usedtokens import SQLiteUsedTokens
from xroad_hub.pki import generate_key
from xroad_hub.protocol.identifiers import MemberId, SubsystemId

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


_STORES: list[SQLiteUsedTokens] = []


@pytest.fixture(autouse=True)
async def _close_stores() -> AsyncIterator[None]:
    yield
    while _STORES:
        store = _STORES.pop()
        await store.close()
        shutil.rmtree(store.path.parent, ignore_errors=True)


def _auth(store: SQLiteUsedTokens | None = None) -> ClientAuthenticator:
    if store is None:
        # The node's durable store, in a directory of its own for each authenticator.
        store = SQLiteUsedTokens(Path(tempfile.mkdtemp()) / "used-tokens.sqlite")
        _STORES.append(store)
    return ClientAuthenticator(
        NODE,
        [
            ClientRegistration(DEV, "http"),
            ClientRegistration(MTLS, "mtls", cert_sha256=CERT_FP),
            ClientRegistration(JWT, "jwt", jwt_key=JWT_KEY.public_key()),
            ClientRegistration(JWT2, "jwt", jwt_key=JWT2_KEY.public_key()),
        ],
        store,
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


async def _fails(auth: ClientAuthenticator, client, creds: Credentials, code: str) -> XRoadError:
    with pytest.raises(XRoadError) as info:
        await auth.authenticate(client, creds)
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
async def test_unregistered_client_refused(client) -> None:
    auth = _auth()
    err = await _fails(auth, client, _creds(), "Server.ClientProxy.UnknownMember")
    assert err.status == 500


# --- http -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.8.9.10", "::1"])
async def test_http_from_loopback_ok(ip: str) -> None:
    reg = await _auth().authenticate(DEV, _creds(ip))
    assert reg.id == DEV
    assert reg.auth == "http"


@pytest.mark.parametrize("ip", ["10.0.0.1", "192.168.1.2", "8.8.8.8", "::2", "0.0.0.0"])
async def test_http_from_elsewhere_refused(ip: str) -> None:
    await _fails(_auth(), DEV, _creds(ip), SSL_FAILED)


# --- mtls -----------------------------------------------------------------------------------


async def test_mtls_right_fingerprint_ok() -> None:
    reg = await _auth().authenticate(MTLS, _creds("10.1.2.3", tls=True, cert=CERT_FP))
    assert reg.id == MTLS


async def test_mtls_without_cert_refused() -> None:
    await _fails(_auth(), MTLS, _creds("10.1.2.3", tls=True), SSL_FAILED)


async def test_mtls_without_tls_refused_even_with_fingerprint() -> None:
    await _fails(_auth(), MTLS, _creds("127.0.0.1", tls=False, cert=CERT_FP), SSL_FAILED)


@pytest.mark.parametrize("cert", ["0" * 64, hashlib.sha256(b"other").hexdigest(), ""])
async def test_mtls_wrong_cert_refused(cert: str) -> None:
    await _fails(_auth(), MTLS, _creds("10.1.2.3", tls=True, cert=cert), SSL_FAILED)


async def test_mtls_client_cannot_use_plain_loopback() -> None:
    await _fails(_auth(), MTLS, _creds("127.0.0.1"), SSL_FAILED)


# --- jwt ------------------------------------------------------------------------------------


async def test_jwt_valid_ok() -> None:
    reg = await _auth().authenticate(JWT, _creds("203.0.113.5", tls=True, bearer=_token()))
    assert reg.id == JWT


async def test_jwt_valid_at_max_lifetime_ok() -> None:
    now = int(time.time())
    token = _token(iat=now, exp=now + MAX_TOKEN_LIFETIME)
    await _auth().authenticate(JWT, _creds(tls=True, bearer=token))


async def test_jwt_missing_bearer_refused() -> None:
    await _fails(_auth(), JWT, _creds(), TOKEN_FAILED)
    await _fails(_auth(), JWT, _creds(tls=True, bearer=""), TOKEN_FAILED)


async def test_jwt_replay_refused() -> None:
    auth = _auth()
    token = _token()
    await auth.authenticate(JWT, _creds(tls=True, bearer=token))
    err = await _fails(auth, JWT, _creds(tls=True, bearer=token), TOKEN_FAILED)
    assert "replay" in err.message


async def test_jwt_same_jti_in_a_new_token_refused() -> None:
    auth = _auth()
    jti = str(uuid.uuid4())
    await auth.authenticate(JWT, _creds(tls=True, bearer=_token(jti=jti)))
    await _fails(
        auth, JWT, _creds(tls=True, bearer=_token(jti=jti, exp=int(time.time()) + 90)), TOKEN_FAILED
    )


async def test_jwt_fresh_jti_accepted_after_use() -> None:
    auth = _auth()
    await auth.authenticate(JWT, _creds(tls=True, bearer=_token()))
    await auth.authenticate(JWT, _creds(tls=True, bearer=_token()))


async def test_jwt_ids_are_per_client() -> None:
    auth = _auth()
    await auth.authenticate(JWT, _creds(tls=True, bearer=_token(jti="shared")))
    await auth.authenticate(
        JWT2, _creds(tls=True, bearer=_token(JWT2_KEY, client=JWT2, jti="shared"))
    )


async def test_jwt_failed_token_does_not_burn_its_jti() -> None:
    auth = _auth()
    await _fails(
        auth, JWT, _creds(tls=True, bearer=_token(jti="j1", aud="elsewhere")), TOKEN_FAILED
    )
    await auth.authenticate(JWT, _creds(tls=True, bearer=_token(jti="j1")))


async def test_jwt_expired_refused() -> None:
    now = int(time.time())
    err = await _fails(
        _auth(), JWT, _creds(tls=True, bearer=_token(iat=now - 120, exp=now - 60)), TOKEN_FAILED
    )
    assert "expired" in err.message


async def test_jwt_issued_in_the_future_refused() -> None:
    now = int(time.time())
    await _fails(
        _auth(), JWT, _creds(tls=True, bearer=_token(iat=now + 3600, exp=now + 3660)), TOKEN_FAILED
    )


async def test_jwt_wrong_audience_refused() -> None:
    err = await _fails(
        _auth(), JWT, _creds(tls=True, bearer=_token(aud="TH/GOV/DGA/hub2")), TOKEN_FAILED
    )
    assert "audience" in err.message


async def test_jwt_wrong_issuer_refused() -> None:
    err = await _fails(_auth(), JWT, _creds(tls=True, bearer=_token(iss=str(JWT2))), TOKEN_FAILED)
    assert "issuer" in err.message


async def test_jwt_token_of_another_client_refused() -> None:
    # JWT2's own valid token presented for JWT: wrong key and wrong issuer.
    token = _token(JWT2_KEY, client=JWT2)
    await _fails(_auth(), JWT, _creds(tls=True, bearer=token), TOKEN_FAILED)


async def test_jwt_signed_with_another_key_refused() -> None:
    await _fails(_auth(), JWT, _creds(tls=True, bearer=_token(generate_key())), TOKEN_FAILED)


async def test_jwt_alg_none_refused() -> None:
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(_claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.{_b64url(b'x')}"):
        await _fails(_auth(), JWT, _creds(tls=True, bearer=token), TOKEN_FAILED)


async def test_jwt_hs256_with_public_key_as_secret_refused() -> None:
    # Algorithm confusion: HMAC keyed with the (public) verification key bytes.
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(_claims()).encode())
    signing_input = f"{header}.{payload}".encode()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
        secret = JWT_KEY.public_key().public_bytes(encoding, spki)
        sig = _b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())
        await _fails(
            _auth(), JWT, _creds(tls=True, bearer=f"{header}.{payload}.{sig}"), TOKEN_FAILED
        )


async def test_jwt_lifetime_over_limit_refused() -> None:
    now = int(time.time())
    token = _token(iat=now, exp=now + MAX_TOKEN_LIFETIME + 1)
    err = await _fails(_auth(), JWT, _creds(tls=True, bearer=token), TOKEN_FAILED)
    assert "lifetime" in err.message


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "iss", "aud"])
async def test_jwt_missing_required_claim_refused(claim: str) -> None:
    await _fails(_auth(), JWT, _creds(tls=True, bearer=_token(**{claim: None})), TOKEN_FAILED)


@pytest.mark.parametrize("bearer", ["garbage", "a.b.c", "..", "Bearer x"])
async def test_jwt_garbage_refused(bearer: str) -> None:
    await _fails(_auth(), JWT, _creds(tls=True, bearer=bearer), TOKEN_FAILED)


async def test_token_failures_are_client_faults() -> None:
    err = await _fails(_auth(), JWT, _creds(tls=True, bearer="garbage"), TOKEN_FAILED)
    assert err.status == 400


async def test_jwt_over_plain_http_is_refused_even_from_loopback() -> None:
    err = await _fails(_auth(), JWT, _creds("127.0.0.1", tls=False, bearer=_token()), TOKEN_FAILED)
    assert "HTTPS" in err.message


# --- spent token ids survive the authenticator (a restart of the node) ---------------------


async def test_jwt_replay_refused_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "used-tokens.sqlite"
    store = SQLiteUsedTokens(path)
    token = _token()
    await _auth(store).authenticate(JWT, _creds(tls=True, bearer=token))
    await store.close()
    restarted = SQLiteUsedTokens(path)
    _STORES.append(restarted)
    err = await _fails(_auth(restarted), JWT, _creds(tls=True, bearer=token), TOKEN_FAILED)
    assert "replay" in err.message


async def test_jwt_refused_when_its_use_cannot_be_recorded(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SQLiteUsedTokens(tmp_path / "file" / "used-tokens.sqlite")
    await _fails(
        _auth(store), JWT, _creds(tls=True, bearer=_token()), "Server.ClientProxy.InternalError"
    )


# --- identify: the transport credential alone, before a body naming the client is read -----


async def test_identify_without_any_credential_is_refused() -> None:
    for creds in (_creds("10.0.0.1"), _creds("10.0.0.1", tls=True), _creds(tls=True)):
        with pytest.raises(XRoadError) as info:
            await _auth().identify(creds)
        assert info.value.code == SSL_FAILED


async def test_identify_proves_what_the_credential_proves() -> None:
    auth = _auth()
    assert (await auth.identify(_creds())).clients == {DEV}
    office = await auth.identify(_creds("10.1.2.3", tls=True, cert=CERT_FP))
    assert office.clients == {MTLS}
    portal = await auth.identify(_creds("10.1.2.3", tls=True, bearer=_token()))
    assert portal.clients == {JWT}
    assert auth.confirm(portal, JWT, _creds(tls=True)).id == JWT
    # The message may not name another client than the credential proved.
    with pytest.raises(XRoadError) as info:
        auth.confirm(portal, JWT2, _creds(tls=True, bearer="x"))
    assert info.value.code == TOKEN_FAILED
    with pytest.raises(XRoadError) as info:
        auth.confirm(office, DEV, _creds("10.1.2.3", tls=True, cert=CERT_FP))
    assert info.value.code == SSL_FAILED
    with pytest.raises(XRoadError) as info:
        auth.confirm(office, SubsystemId("TH", "GOV", "DGA", "nobody"), _creds())
    assert info.value.code == "Server.ClientProxy.UnknownMember"


async def test_identify_spends_the_token() -> None:
    auth = _auth()
    token = _token()
    await auth.identify(_creds(tls=True, bearer=token))
    with pytest.raises(XRoadError, match="replay"):
        await auth.identify(_creds(tls=True, bearer=token))


async def test_http_clients_only_over_plain_http() -> None:
    # HTTPS is where credentials are checked; "http" registration means plain HTTP only.
    await _fails(_auth(), DEV, _creds("127.0.0.1", tls=True), SSL_FAILED)
    with pytest.raises(XRoadError):
        await _auth().identify(_creds("127.0.0.1", tls=True))
