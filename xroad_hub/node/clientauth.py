"""Authentication of client information systems at their own node.

Each client subsystem is registered on its node with one connection type:

- ``mtls``: HTTPS with a client certificate whose SHA-256 equals the registered one;
- ``jwt``:  a short-lived ES256 token signed with the subsystem's own key, sent as
  ``Authorization: Bearer``; issuer = the subsystem, audience = the node id, lifetime at most
  five minutes, and each token id (jti) is accepted once (a captured token cannot be replayed,
  also not after a restart or at another process of the node: usedtokens.py);
- ``http``: plain HTTP (not HTTPS) from a loopback address, for development only.

Default deny: a subsystem not registered here, or a request that does not satisfy its type,
is refused. X-Road-Client must name the authenticated subsystem, so nobody acts as another.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from xroad_hub.errors import ProtocolError, XRoadError
from xroad_hub.node.usedtokens import TokenStoreError, UsedTokenStore
from xroad_hub.protocol.globalconf import Revocation
from xroad_hub.protocol.identifiers import ClientId, parse_client_id

__all__ = [
    "MAX_TOKEN_LIFETIME",
    "Caller",
    "ClientAuthenticator",
    "ClientRegistration",
    "Credentials",
]

MAX_TOKEN_LIFETIME = 300  # seconds
_LEEWAY = 10  # seconds of clock skew tolerated between a client and its node


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    id: ClientId
    auth: str
    cert_sha256: str | None = None
    jwt_key: ec.EllipticCurvePublicKey | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """The client subsystems one request's transport credential proves (usually one; every
    client registered with auth = "http" for plain HTTP from loopback)."""

    clients: frozenset[ClientId]

    @property
    def key(self) -> str:
        """Whose budget the request spends (per-client limits)."""
        if len(self.clients) == 1:
            # The common caller, asked on every request: no generator, list and sort.
            for client in self.clients:
                return str(client)
        return "|".join(sorted(str(c) for c in self.clients))


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
    def __init__(
        self,
        node_id: str,
        registrations: list[ClientRegistration],
        used_tokens: UsedTokenStore,
        revoked: Callable[[str], Revocation | None] = lambda _sha256: None,
    ) -> None:
        """``revoked``: the revocation of a certificate (by SHA-256) in the global
        configuration in force: a client certificate revoked at the central server
        authenticates nobody, whatever the node's registration of it says."""
        self._node_id = node_id
        self._regs = {r.id: r for r in registrations}
        self._used = used_tokens
        self._revoked = revoked

    def _refuse_revoked(self, creds: Credentials) -> None:
        if creds.tls and creds.cert_sha256 is not None:
            revocation = self._revoked(creds.cert_sha256)
            if revocation is not None:
                raise _ssl_fail(
                    f"the TLS client certificate is revoked: {revocation.describe()}; the"
                    " client system needs a new one ('xroad-hub central client-cert')"
                )

    def replace(self, registrations: list[ClientRegistration]) -> None:
        """The hosted clients changed (node/services.py): every request from now on is
        authenticated against these, whole; one in flight keeps what it was admitted with."""
        self._regs = {r.id: r for r in registrations}

    async def authenticate(self, client: ClientId, creds: Credentials) -> ClientRegistration:
        """The caller is ``client`` (named before the body is read, e.g. X-Road-Client)."""
        self._refuse_revoked(creds)
        reg = self._regs.get(client)
        if reg is None:
            raise XRoadError.client_proxy(
                "UnknownMember", f"client {client} is not registered at this node"
            )
        if reg.auth == "jwt" and creds.tls and creds.bearer:
            await self._check_token(reg, creds.bearer)
            return reg
        if not self._proves(reg, creds):
            raise _refusal(reg, creds)
        return reg

    async def identify(self, creds: Credentials) -> Caller:
        """The client subsystems the transport credential proves, before any body is read
        (SOAP names its client inside the body); a caller proving none is refused here, so
        an unauthenticated peer costs the node no body to read or parse."""
        self._refuse_revoked(creds)
        proven = {r.id for r in self._regs.values() if r.auth != "jwt" and self._proves(r, creds)}
        if creds.bearer and creds.tls:
            reg = self._jwt_issuer(creds.bearer)
            await self._check_token(reg, creds.bearer)
            proven.add(reg.id)
        if not proven:
            raise _ssl_fail(
                "no credential of a client registered at this node: connect over HTTPS with the"
                " client's registered certificate or bearer token (plain HTTP is accepted only"
                ' from loopback, for clients registered with auth = "http")'
            )
        return Caller(frozenset(proven))

    def confirm(self, caller: Caller, client: ClientId, creds: Credentials) -> ClientRegistration:
        """The client a message names (read after ``identify``) is one the credential proved."""
        reg = self._regs.get(client)
        if reg is None:
            raise XRoadError.client_proxy(
                "UnknownMember", f"client {client} is not registered at this node"
            )
        if client not in caller.clients:
            raise _refusal(reg, creds)
        return reg

    def _proves(self, reg: ClientRegistration, creds: Credentials) -> bool:
        """Transport-level proof of an http or mtls client (jwt: see _check_token)."""
        if reg.auth == "http":
            # Plain HTTP from this host, as registered; not HTTPS, where credentials belong.
            return not creds.tls and _is_loopback(creds.remote_ip)
        if reg.auth == "mtls":
            return (
                creds.tls
                and creds.cert_sha256 is not None
                and (creds.cert_sha256 == reg.cert_sha256)
            )
        return False

    def _jwt_issuer(self, bearer: str) -> ClientRegistration:
        try:
            issuer = jwt.decode(bearer, options={"verify_signature": False}).get("iss")
        except jwt.InvalidTokenError as exc:
            raise _token_fail(f"invalid token: {exc}") from exc
        reg = self._regs.get(_client_or_none(issuer))  # type: ignore[arg-type]
        if reg is None or reg.auth != "jwt":
            raise _token_fail("the token's issuer is not a client registered here with auth jwt")
        return reg

    async def _check_token(self, reg: ClientRegistration, bearer: str) -> None:
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
        try:
            fresh = await self._used.claim(
                f"{reg.id}|{claims['jti']}", float(claims["exp"]) + _LEEWAY
            )
        except TokenStoreError as exc:
            # Default deny: a token whose use cannot be recorded could be replayed.
            raise XRoadError.client_proxy(
                "InternalError", "the node cannot record the token's use; try again later"
            ) from exc
        if not fresh:
            raise _token_fail("token already used (replay refused); use a new token id")


def _refusal(reg: ClientRegistration, creds: Credentials) -> XRoadError:
    """Why the credential does not authenticate ``reg`` (what the caller must change)."""
    client = reg.id
    if reg.auth == "http":
        return _ssl_fail(f"{client} may only connect over plain HTTP from loopback")
    if reg.auth == "mtls":
        if not creds.tls or creds.cert_sha256 is None:
            return _ssl_fail(f"{client} must connect over HTTPS with its client certificate")
        return _ssl_fail(f"the TLS client certificate is not the one registered for {client}")
    if reg.auth == "jwt":
        if not creds.tls:
            # A bearer token in clear text can be read and used first by anyone between.
            return _token_fail(f"{client} must send its token over HTTPS")
        if not creds.bearer:
            return _token_fail(f"{client} must send 'Authorization: Bearer <token>'")
        return _token_fail(f"token issuer must be the client subsystem {client}")
    return _ssl_fail(f"unknown connection type for {client}")  # pragma: no cover


def _client_or_none(value: object) -> ClientId | None:
    try:
        return parse_client_id(str(value)) if isinstance(value, str) else None
    except ProtocolError:
        return None


@functools.lru_cache(maxsize=256)
def _is_loopback(ip: str) -> bool:
    # Asked on every request of an http client, from the few addresses of this host.
    return ipaddress.ip_address(ip).is_loopback
