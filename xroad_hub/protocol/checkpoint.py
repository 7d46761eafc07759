"""Checkpoints: signed statements of a log's tree size and root (C2SP tlog-checkpoint).

A checkpoint is the text

    <origin>\\n<tree size>\\n<base64 root hash>\\n

wrapped in a C2SP signed note: the text, a blank line, then one line per signature,
``\\u2014 <key name> <base64(key id || Ed25519 signature)>``, where the key id is the first four
bytes of SHA-256(key name || 0x0A || 0x01 || public key) and the signature covers the text.
The format is plain text so that a checkpoint can be published, witnessed (co-signed by
another party: more signature lines) and checked with tools other than ours.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.errors import HubError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "NoteSigner",
    "NoteVerifier",
    "open_note",
    "sign_note",
]

_DASH = "\u2014"
_ED25519 = b"\x01"


class CheckpointError(HubError, ValueError):
    """A checkpoint or signed note that is malformed or not validly signed."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise CheckpointError("a checkpoint is origin, size and root, each on its own line")
        origin, size, root = lines[0], lines[1], lines[2]
        # ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and "١٢"
        if (
            not origin
            or not (size.isascii() and size.isdigit())
            or (size != "0" and size[0] == "0")
        ):
            raise CheckpointError("checkpoint origin or size is malformed")
        try:
            digest = base64.b64decode(root, validate=True)
        except ValueError as exc:
            raise CheckpointError("checkpoint root is not base64") from exc
        if len(digest) != 32:
            raise CheckpointError("checkpoint root is not a SHA-256 hash")
        return cls(origin, int(size), digest)


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise CheckpointError(f"key name {name!r} must be non-empty, without spaces or '+'")


@dataclass(frozen=True, slots=True)
class NoteSigner:
    name: str
    key: ed25519.Ed25519PrivateKey

    def __post_init__(self) -> None:
        _check_name(self.name)

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.key.public_key())

    def signature_line(self, text: str) -> str:
        public = self.verifier.public_bytes
        blob = _key_id(self.name, public) + self.key.sign(text.encode())
        return f"{_DASH} {self.name} {base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    name: str
    key: ed25519.Ed25519PublicKey

    @property
    def public_bytes(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> bytes:
        return _key_id(self.name, self.public_bytes)

    def vkey(self) -> str:
        """The verifier key string ``name+hex(key id)+base64(0x01 || public key)``."""
        return (
            f"{self.name}+{self.key_id.hex()}+"
            f"{base64.b64encode(_ED25519 + self.public_bytes).decode()}"
        )

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        try:
            name, key_id, blob = vkey.split("+", 2)
            raw = base64.b64decode(blob, validate=True)
        except ValueError as exc:
            raise CheckpointError("verifier key must be name+keyid+base64 key") from exc
        if raw[:1] != _ED25519 or len(raw) != 33:
            raise CheckpointError("only Ed25519 verifier keys are supported")
        verifier = cls(name, ed25519.Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_id.hex() != key_id:
            raise CheckpointError("verifier key id does not match its name and key")
        return verifier


def sign_note(text: str, *signers: NoteSigner) -> str:
    if not text.endswith("\n") or "\n\n" in text:
        raise CheckpointError("note text must end with a newline and hold no blank line")
    return text + "\n" + "".join(s.signature_line(text) for s in signers)


def open_note(note: str, verifiers: list[NoteVerifier]) -> tuple[str, list[str]]:
    """Split a signed note; return its text and the names of the verifiers whose signatures
    verified. Raises CheckpointError if none of ``verifiers`` signed it."""
    text, sep, sigs = note.partition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise CheckpointError("not a signed note (no blank line before the signatures)")
    text += "\n"
    by_id = {(v.name, v.key_id): v for v in verifiers}
    verified: list[str] = []
    for line in sigs[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH:
            raise CheckpointError(f"malformed signature line {line[:80]!r}")
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except ValueError as exc:
            raise CheckpointError("signature is not base64") from exc
        verifier = by_id.get((parts[1], blob[:4]))
        if verifier is None:
            continue  # a signer we do not know (e.g. a witness of someone else)
        try:
            verifier.key.verify(blob[4:], text.encode())
        except InvalidSignature as exc:
            raise CheckpointError(f"signature of {verifier.name} does not verify") from exc
        verified.append(verifier.name)
    if not verified:
        raise CheckpointError("no known key signed this note")
    return text, verified
