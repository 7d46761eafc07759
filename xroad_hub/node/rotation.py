"""``xroad-hub node keys rotate|activate``: a node rolls its auth or signing key.

    NODEDIR/auth.new.key.pem, auth.new.csr.pem   the new key (0600) and its CSR, while the
    NODEDIR/sign.new.key.pem, sign.new.csr.pem   rotation request is pending
    NODEDIR/retired/                             the keys and certificates replaced (0700)

``rotate`` makes the new key in NODEDIR and files a ``certRotation`` request signed by the
node's current auth key, by the new key and (when not revoked) by the current signing key,
so the central server knows it comes from the holder of both keys, not a thief of one.
The central operator approves it as any request. ``activate`` fetches the certificate,
checks it is for the new key and switches the files over; the node uses the new key from
its next start. The old signing certificate is not revoked by a rotation: what it signed
keeps verifying, and the operator may revoke it later without breaking evidence that was
timestamped before.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xroad_hub.node.enroll import (
    _anchor_of,
    _load_state,
    _save_state,
    _Session,
    check_issued_by,
    federation_ca,
)
from xroad_hub.pki import generate_key, load_private_key, write_key
from xroad_hub.privatefile import write_private
from xroad_hub.protocol.identifiers import NodeId, parse_member_id
from xroad_hub.protocol.registration import RegistrationError, make_csr, new_request, sign_request
from xroad_hub.protocol.signing import cert_fingerprint

__all__ = ["add_keys_commands", "run_keys_command"]

_PEM = serialization.Encoding.PEM


def add_keys_commands(node_sub: Any) -> None:
    keys = node_sub.add_parser("keys", help="rotate this node's auth or signing key")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = ksub.add_parser(
        "rotate",
        help="make a new key and ask the central server to certify it",
        description="Generates the new key in --dir (0600), makes its CSR and files a "
        "rotation request signed by the current and the new keys. After the central "
        "operator approves it: 'xroad-hub node keys activate'.",
    )
    activate = ksub.add_parser(
        "activate", help="fetch the new certificate and switch to the new key"
    )
    for p in (rotate, activate):
        which = p.add_mutually_exclusive_group(required=p is rotate)
        which.add_argument("--auth", dest="purpose", action="store_const", const="auth",
                           help="the TLS authentication key")  # fmt: skip
        which.add_argument("--sign", dest="purpose", action="store_const", const="sign",
                           help="the owner member's signing key")  # fmt: skip
        p.add_argument("--dir", type=Path, required=True, help="the node's directory")


def run_keys_command(args: argparse.Namespace) -> int:
    root: Path = args.dir
    state = _load_state(root)
    if not (root / "auth.cert.pem").exists():
        raise RegistrationError(
            "NotRegistered", "this node is not registered yet: nothing to rotate; 'xroad-hub "
            "node enroll fetch' once its registration is approved",
        )  # fmt: skip
    if args.keys_command == "rotate":
        return _rotate(root, state, args.purpose)
    pending = state.get("rotations", {})
    purposes = [args.purpose] if args.purpose else sorted(pending)
    if not purposes:
        print("no key rotation is pending; start one with 'xroad-hub node keys rotate'")
        return 0
    return max(_activate(root, state, p) for p in purposes)


def _rotate(root: Path, state: dict[str, Any], purpose: str) -> int:
    pending = state.get("rotations", {}).get(purpose)
    if pending is not None or (root / f"{purpose}.new.key.pem").exists():
        raise RegistrationError(
            "Pending", f"a rotation of the {purpose} key is pending (request "
            f"{(pending or {}).get('request_id', '?')}); 'xroad-hub node keys activate "
            f"--{purpose} --dir {root}' once it is approved",
        )  # fmt: skip
    other = next((p for p in state.get("rotations", {}) if p != purpose), None)
    if other is not None:
        # A rotation is signed with both current keys; once the other one's is approved the
        # central server's current key is one this node does not use until it activates it.
        raise RegistrationError(
            "Pending", f"the rotation of the {other} key is not finished; 'xroad-hub node keys "
            f"activate --{other} --dir {root}' once it is approved, then rotate the {purpose} key",
        )  # fmt: skip
    session = _Session(_anchor_of(root))
    server = NodeId(parse_member_id(state["member"]), state["code"])
    auth = load_private_key(root / "auth.key.pem")
    signers = {"auth": auth}
    # The current signing key signs too, whichever key is rolled, unless its certificate is
    # revoked (then the central server accepts the auth key's word alone, as it does not
    # trust the old key).
    cert = x509.load_pem_x509_certificate((root / "sign.cert.pem").read_bytes())
    if session.conf.revoked(cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))):
        print("the current signing certificate is revoked: the request is signed by the "
              "auth key and the new key only")  # fmt: skip
    else:
        signers["sign"] = load_private_key(root / "sign.key.pem")
    key = generate_key()
    cn = str(server) if purpose == "auth" else state["member"]
    csr = make_csr(key, cn).public_bytes(_PEM).decode()
    request = new_request("certRotation", session.anchor.instance, server, purpose=purpose, csr=csr)
    signed = sign_request(request, {**signers, "new": key})
    # The key is on disk before the central server can approve a certificate for it.
    write_key(root / f"{purpose}.new.key.pem", key)
    write_private(root / f"{purpose}.new.csr.pem", csr.encode())
    try:
        answer = session.post(signed)
    except RegistrationError:  # refused (or unreachable): no key is kept
        _forget(root, state, purpose)
        raise
    state.setdefault("rotations", {})[purpose] = {
        "request_id": int(answer["requestId"]),
        "status_token": str(answer.get("statusToken", "")),
    }
    _save_state(root, state)
    print(f"rotation request {answer['requestId']} of {server}'s {purpose} key filed; the "
          f"central operator approves it (xroad-hub central approve {answer['requestId']}), "
          f"then run 'xroad-hub node keys activate --{purpose} --dir {root}'")  # fmt: skip
    return 0


def _activate(root: Path, state: dict[str, Any], purpose: str) -> int:
    pending = state.get("rotations", {}).get(purpose)
    if pending is None:
        raise RegistrationError(
            "NoRotation", f"no rotation of the {purpose} key is pending; start one with "
            f"'xroad-hub node keys rotate --{purpose} --dir {root}'",
        )  # fmt: skip
    session = _Session(_anchor_of(root))
    answer = session.status(int(pending["request_id"]), pending.get("status_token"))
    rid = answer["requestId"]
    if answer["state"] in ("DECLINED", "CANCELLED"):
        _forget(root, state, purpose)
        print(f"rotation request {rid} was {answer['state']}: {answer.get('reason', '')}; "
              "the new key is deleted, the current one stays in use")  # fmt: skip
        return 1
    if answer["state"] != "APPROVED":
        print(f"rotation request {rid} of the {purpose} key is {answer['state']}")
        return 3
    cert = x509.load_pem_x509_certificate(str(answer["certificates"][purpose]).encode())
    new_key = load_private_key(root / f"{purpose}.new.key.pem")
    if cert.public_key() != new_key.public_key():
        raise RegistrationError(
            "WrongCertificate", f"the {purpose} certificate issued is not for the new key"
        )
    check_issued_by(cert, federation_ca(answer, session.conf), purpose)
    retired = root / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    old = x509.load_pem_x509_certificate((root / f"{purpose}.cert.pem").read_bytes())
    tag = f"{purpose}-{old.serial_number:x}"
    # The old key and certificate are kept aside (0600, in the node's directory), never
    # used again: the certificate names what older evidence was signed with.
    os.replace(root / f"{purpose}.key.pem", retired / f"{tag}.key.pem")
    os.replace(root / f"{purpose}.cert.pem", retired / f"{tag}.cert.pem")
    os.replace(root / f"{purpose}.new.key.pem", root / f"{purpose}.key.pem")
    os.replace(root / f"{purpose}.new.csr.pem", root / f"{purpose}.csr.pem")
    (root / f"{purpose}.cert.pem").write_bytes(cert.public_bytes(_PEM))
    del state["rotations"][purpose]
    _save_state(root, state)
    print(f"rotation request {rid} APPROVED: the new {purpose} key and certificate are in "
          f"{root} (the old ones in {retired}); restart the node to use them")  # fmt: skip
    return 0


def _forget(root: Path, state: dict[str, Any], purpose: str) -> None:
    for name in (f"{purpose}.new.key.pem", f"{purpose}.new.csr.pem"):
        (root / name).unlink(missing_ok=True)
    state.get("rotations", {}).pop(purpose, None)
    _save_state(root, state)
