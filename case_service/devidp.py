"""A development stand-in for the federation's identity provider (issuer ``thaid``).

The real provider signs user tokens with a key the case service never sees. For the demo and
tests this module makes a P-256 key pair and mints ES256 tokens of the same shape:

    python -m case_service.devidp keygen var/idp
    python -m case_service.devidp token --key var/idp/idp.key.pem --sub 1101700203450 \
        --role citizen
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["ISSUER", "generate_keypair", "mint_token"]

ISSUER = "thaid"
AUDIENCE = "TH/GOV/BMA/licensing"


def generate_keypair(directory: Path) -> tuple[Path, Path]:
    """Write ``idp.key.pem`` (private, mode 0600) and ``idp.pub.pem``; keep existing ones."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / "idp.key.pem", directory / "idp.pub.pem"
    if key_path.exists() and pub_path.exists():
        return key_path, pub_path
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created with 0600 from the start, so the private key is never readable by others.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_path, pub_path


def mint_token(
    private_key: ec.EllipticCurvePrivateKey | bytes,
    *,
    sub: str,
    role: str,
    audience: str = AUDIENCE,
    issuer: str = ISSUER,
    lifetime: int = 900,
    now: float | None = None,
) -> str:
    """An ES256 token for ``sub`` acting as ``role``, valid ``lifetime`` seconds from ``now``."""
    if isinstance(private_key, bytes):
        loaded = serialization.load_pem_private_key(private_key, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("ES256 needs an EC P-256 private key")
        private_key = loaded
    iat = int(time.time() if now is None else now)
    claims = {"iss": issuer, "aud": audience, "sub": sub, "role": role}
    claims |= {"iat": iat, "exp": iat + lifetime}
    return jwt.encode(claims, private_key, algorithm="ES256")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m case_service.devidp",
        description="Development identity provider: key pair and ES256 user tokens. "
        "Never use for real users.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    kg = sub.add_parser("keygen", help="write idp.key.pem and idp.pub.pem into DIR")
    kg.add_argument("directory", type=Path)
    tk = sub.add_parser("token", help="print a token for one user")
    tk.add_argument("--key", type=Path, required=True, help="the provider's private key (PEM)")
    tk.add_argument("--sub", required=True, help="citizen id or officer id")
    tk.add_argument("--role", required=True, choices=["citizen", "officer"])
    tk.add_argument("--audience", default=AUDIENCE)
    tk.add_argument("--lifetime", type=int, default=900, help="seconds (at most 3600)")
    args = parser.parse_args(argv)
    if args.command == "keygen":
        key_path, pub_path = generate_keypair(args.directory)
        print(f"private key: {key_path}\npublic key:  {pub_path}")
        return 0
    token = mint_token(
        args.key.read_bytes(),
        sub=args.sub,
        role=args.role,
        audience=args.audience,
        lifetime=args.lifetime,
    )
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
