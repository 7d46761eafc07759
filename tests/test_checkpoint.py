"""Checkpoints as C2SP signed notes."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.protocol.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteSigner,
    NoteVerifier,
    open_note,
    sign_note,
)

ROOT = hashlib.sha256(b"some tree").digest()


def _signer(name: str = "TH/GOV/DBD/hub1") -> NoteSigner:
    return NoteSigner(name.replace("/", "."), ed25519.Ed25519PrivateKey.generate())


def test_checkpoint_text_round_trip() -> None:
    cp = Checkpoint("xroad-hub/TH/GOV/DBD/hub1", 42, ROOT)
    assert cp.text() == f"xroad-hub/TH/GOV/DBD/hub1\n42\n{base64.b64encode(ROOT).decode()}\n"
    assert Checkpoint.parse(cp.text()) == cp


@pytest.mark.parametrize(
    "text",
    [
        "origin\n42\n",
        "origin\n042\n" + base64.b64encode(ROOT).decode() + "\n",
        "origin\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
        "origin\n1\n" + base64.b64encode(b"short").decode() + "\n",
        "origin\n1\nnot base64!\n",
        "\n1\n" + base64.b64encode(ROOT).decode() + "\n",
        "origin\n\u00b2\n" + base64.b64encode(ROOT).decode() + "\n",  # digits, not ASCII
        "origin\n\u0661\u0662\n" + base64.b64encode(ROOT).decode() + "\n",
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(text)


def test_signed_note_verifies_and_names_its_signers() -> None:
    node, witness = _signer("node"), _signer("witness")
    text = Checkpoint("origin", 7, ROOT).text()
    note = sign_note(text, node, witness)
    assert note.startswith(text + "\n\u2014 node ")
    got, names = open_note(note, [node.verifier, witness.verifier])
    assert got == text
    assert names == ["node", "witness"]
    # Unknown co-signers are skipped, a known one is enough.
    assert open_note(note, [witness.verifier])[1] == ["witness"]


def test_tampered_note_fails() -> None:
    node = _signer("node")
    note = sign_note(Checkpoint("origin", 7, ROOT).text(), node)
    forged = note.replace("\n7\n", "\n8\n", 1)
    with pytest.raises(CheckpointError, match="does not verify"):
        open_note(forged, [node.verifier])
    with pytest.raises(CheckpointError, match="no known key"):
        open_note(note, [_signer("node").verifier])  # same name, other key


def test_verifier_key_string_round_trip() -> None:
    # Many keys: base64 key material often holds '+', the field separator.
    for _ in range(64):
        v = _signer("node").verifier
        assert NoteVerifier.from_vkey(v.vkey()).vkey() == v.vkey()
    _, key_id, blob = v.vkey().split("+", 2)
    with pytest.raises(CheckpointError, match="key id"):
        NoteVerifier.from_vkey(f"other+{key_id}+{blob}")


def test_note_text_rules() -> None:
    with pytest.raises(CheckpointError):
        sign_note("no newline", _signer())
    with pytest.raises(CheckpointError):
        sign_note("blank\n\nline\n", _signer())
    with pytest.raises(CheckpointError):
        NoteSigner("has space", ed25519.Ed25519PrivateKey.generate())
