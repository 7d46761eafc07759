"""Users of the case service: ES256 bearer tokens from the federation's identity provider.

Citizens and officers never log in here; the identity provider (issuer ``thaid``) vouches for
them with a short-lived token addressed to this subsystem. Only the provider's public key is
configured, so a compromise of the case service cannot mint identities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .thaiid import is_valid

__all__ = ["Actor", "AuthError", "TokenVerifier", "load_idp_key"]

Role = Literal["citizen", "officer"]
ROLES: tuple[Role, ...] = ("citizen", "officer")

# Officer ids are the provider's staff identifiers; keep them to a safe, loggable alphabet.
_OFFICER_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
# Clock skew tolerated between the identity provider and this host.
LEEWAY_SECONDS = 30


class AuthError(Exception):
    """The request carries no usable token; ``reason`` is safe to log and to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Actor:
    """Who acts: a citizen (sub = her citizen id) or an officer (sub = staff id)."""

    sub: str
    role: Role

    @property
    def is_officer(self) -> bool:
        return self.role == "officer"

    @property
    def loggable(self) -> str:
        """Who acted, for operational logs: an officer by staff id (officials answer for
        what they do); a citizen only by role, since her id is personal data (the case
        number and its history say whose case it is, to those allowed to see them)."""
        return self.sub if self.is_officer else "citizen"


def load_idp_key(path: Path) -> ec.EllipticCurvePublicKey:
    """The identity provider's P-256 public key from a PEM file (ES256 needs exactly that)."""
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the identity provider's public key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: ES256 needs an EC P-256 public key")
    return key


class TokenVerifier:
    def __init__(
        self,
        key: ec.EllipticCurvePublicKey,
        *,
        issuer: str,
        audience: str,
        max_lifetime: int = 3600,
    ) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._max_lifetime = max_lifetime

    def actor(self, authorization: str | None) -> Actor:
        """The actor named by an ``Authorization: Bearer ...`` header value, or AuthError."""
        if not authorization:
            raise AuthError("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        try:
            claims = jwt.decode(
                token.strip(),
                self._key,
                # Pinning the algorithm defeats alg=none and HMAC-with-public-key confusion.
                algorithms=["ES256"],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("token is not addressed to this service (aud)") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("token was not issued by the trusted identity provider") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("token signature is not valid") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise AuthError("exp and iat must be numeric dates")
        # A long-lived token is a standing credential; the federation allows at most an hour.
        if exp - iat > self._max_lifetime:
            raise AuthError(f"token lifetime exceeds {self._max_lifetime} seconds")
        role, sub = claims.get("role"), claims["sub"]
        if role not in ROLES:
            raise AuthError("token has no valid role (citizen or officer)")
        if not isinstance(sub, str):
            raise AuthError("sub must be a string")
        if role == "citizen" and not is_valid(sub):
            raise AuthError("a citizen's sub must be her 13-digit citizen id")
        if role == "officer" and not _OFFICER_ID.match(sub):
            raise AuthError("an officer's sub must be 1-64 letters, digits, '.', '_' or '-'")
        return Actor(sub=sub, role=role)
