"""Authentication of client information systems at their own node.

Each client subsystem is registered on its node with one connection type:

- ``mtls``: HTTPS with a client certificate whose SHA-256 equals the registered one;
- ``jwt``:  a short-lived ES256 token signed with the subsystem's own key, sent as
  ``Authorization: Bearer``; issuer = the subsystem, audience = the node id, lifetime at most
  five minutes, and each token id (jti) is accepted once (a captured token cannot be replayed);
- ``http``: plain HTTP from a loopback address, for development only.

Default deny: a subsystem not registered here, or a request that does not satisfy its type,
is refused. X-Road-Client must name the authenticated subsystem, so nobody acts as another.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import XRoadError
from .identifiers import ClientId

__all__ = ["MAX_TOKEN_LIFETIME", "ClientAuthenticator", "ClientRegistration", "Credentials"]

MAX_TOKEN_LIFETIME = 300  # seconds
_LEEWAY = 10  # seconds of clock skew tolerated between a client and its node


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    id: ClientId
    auth: str
    cert_sha256: str | None = None
    jwt_key: ec.EllipticCurvePublicKey | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the transport saw of the caller."""

    remote_ip: str
    tls: bool
    cert_sha256: str | None
    bearer: str | None


def _ssl_fail(message: str) -> XRoadError:
    return XRoadError.client_proxy("SslAuthenticationFailed", message)


def _token_fail(message: str) -> XRoadError:
    # The client sent a token that is not acceptable: its own fault, so a Client.* fault.
    return XRoadError.client("AuthenticationFailed", message)


class ClientAuthenticator:
    def __init__(self, node_id: str, registrations: list[ClientRegistration]) -> None:
        self._node_id = node_id
        self._regs = {r.id: r for r in registrations}
        self._seen_jti: dict[str, float] = {}
        self._next_purge = 0.0

    def authenticate(self, client: ClientId, creds: Credentials) -> ClientRegistration:
        reg = self._regs.get(client)
        if reg is None:
            raise XRoadError.client_proxy(
                "UnknownMember", f"client {client} is not registered at this node"
            )
        if reg.auth == "http":
            if not ipaddress.ip_address(creds.remote_ip).is_loopback:
                raise _ssl_fail(f"{client} may only connect over plain HTTP from loopback")
        elif reg.auth == "mtls":
            if not creds.tls or creds.cert_sha256 is None:
                raise _ssl_fail(f"{client} must connect over HTTPS with its client certificate")
            if creds.cert_sha256 != reg.cert_sha256:
                raise _ssl_fail(
                    f"the TLS client certificate is not the one registered for {client}"
                )
        elif reg.auth == "jwt":
            if not creds.tls:
                # A bearer token in clear text can be read and used first by anyone between.
                raise _token_fail(f"{client} must send its token over HTTPS")
            self._check_token(reg, creds.bearer)
        else:  # pragma: no cover - the federation loader admits only the three types
            raise _ssl_fail(f"unknown connection type for {client}")
        return reg

    def _check_token(self, reg: ClientRegistration, bearer: str | None) -> None:
        if not bearer:
            raise _token_fail(f"{reg.id} must send 'Authorization: Bearer <token>'")
        assert reg.jwt_key is not None
        try:
            claims = jwt.decode(
                bearer,
                reg.jwt_key,
                algorithms=["ES256"],  # pinned: alg=none and HS/RS confusion never apply
                audience=self._node_id,
                issuer=str(reg.id),
                leeway=_LEEWAY,
                options={"require": ["exp", "iat", "jti", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _token_fail("token expired; request a new one") from exc
        except jwt.InvalidAudienceError as exc:
            raise _token_fail(f"token audience must be this node, {self._node_id}") from exc
        except jwt.InvalidIssuerError as exc:
            raise _token_fail(f"token issuer must be the client subsystem {reg.id}") from exc
        except jwt.InvalidTokenError as exc:
            raise _token_fail(f"invalid token: {exc}") from exc
        if int(claims["exp"]) - int(claims["iat"]) > MAX_TOKEN_LIFETIME:
            raise _token_fail(f"token lifetime exceeds {MAX_TOKEN_LIFETIME} s")
        jti = f"{reg.id}|{claims['jti']}"
        now = time.time()
        self._purge(now)
        if jti in self._seen_jti:
            raise _token_fail("token already used (replay refused); use a new token id")
        self._seen_jti[jti] = float(claims["exp"]) + _LEEWAY

    def _purge(self, now: float) -> None:
        # Expired tokens are refused on their own, so their ids need not be remembered.
        if now < self._next_purge:
            return
        self._seen_jti = {k: v for k, v in self._seen_jti.items() if v > now}
        self._next_purge = now + 30
