"""``xroad-hub node init`` and ``node enroll ...``: a node joins a federation with its own keys.

    NODEDIR/anchor.json                 the configuration anchor the node was started from
    NODEDIR/auth.key.pem, auth.csr.pem  TLS authentication key (0600) and its CSR
    NODEDIR/sign.key.pem, sign.csr.pem  the owner member's signing key (0600) and its CSR
    NODEDIR/checkpoint.key.pem, .csr.pem  the node's checkpoint key (Ed25519, 0600): it signs
                                        the C2SP checkpoints over the node's message log
    NODEDIR/enrollment.json             where the enrollment stands (request id, state)
    NODEDIR/auth.cert.pem, sign.cert.pem, checkpoint.cert.pem, ca.cert.pem
                                        once approved (``enroll fetch``)
    NODEDIR/node.toml                   the node's own settings (``xroad-hub node run``)

Keys are made here and never leave NODEDIR. The node first downloads the global
configuration over HTTPS without trusting the TLS certificate (the document is signed by the
anchor's key, which is what it trusts), takes the federation CA from it, and then talks to
the management API over HTTPS verified against that CA.
"""

from __future__ import annotations

import argparse
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.pki import generate_key, load_ed25519_key, load_private_key, write_key
from xroad_hub.privatefile import write_private
from xroad_hub.protocol.globalconf import GlobalConf, GlobalConfError, verify_globalconf
from xroad_hub.protocol.identifiers import NodeId, parse_member_id, parse_subsystem_id
from xroad_hub.protocol.registration import (
    Anchor,
    RegistrationError,
    make_csr,
    new_request,
    parse_anchor,
    request_fingerprint,
    sign_request,
)

__all__ = ["add_enroll_commands", "run_enroll_command"]

_STATE = "enrollment.json"


def add_enroll_commands(node_sub: Any) -> None:
    init = node_sub.add_parser(
        "init",
        help="make this node's keys and ask the central server to register it",
        description="Verifies the anchor, generates the node's TLS authentication key, the "
        "member's signing key and the node's checkpoint key in --dir (0600, they never leave "
        "it), makes CSRs and files a registration request signed by the first two. Then: "
        "'xroad-hub node enroll fetch', and 'xroad-hub node run'.",
    )
    init.add_argument("--anchor", type=Path, required=True, help="the central server's anchor")
    init.add_argument("--anchor-hash", help="the hash the central operator read you; checked")
    init.add_argument("--member", required=True, help="the owner member, e.g. TH/GOV/MOPH")
    init.add_argument("--code", required=True, help="the node's (server) code, e.g. hub1")
    init.add_argument("--address", default="127.0.0.1:5500",
                      help="HOST:PORT other nodes reach this node at")  # fmt: skip
    enroll = node_sub.add_parser("enroll", help="resume, check or cancel an enrollment")
    enroll.add_argument("action", choices=["status", "fetch", "cancel"])
    client = node_sub.add_parser("client", help="register subsystems hosted by this node")
    csub = client.add_subparsers(dest="client_command", required=True)
    add = csub.add_parser("add", help="ask the central server to register a subsystem here")
    add.add_argument("subsystem", help="INSTANCE/CLASS/MEMBER/SUBSYSTEM of the node's owner")
    for p in (init, enroll, add):
        p.add_argument("--dir", type=Path, required=True, help="the node's directory")


def run_enroll_command(args: argparse.Namespace) -> int:
    if args.node_command == "init":
        return _init(args)
    state = _load_state(args.dir)
    if args.node_command == "client":
        return _client_add(args.dir, state, args.subsystem)
    if args.action == "cancel":
        return _cancel(args.dir, state)
    return _status(args.dir, state, fetch=args.action == "fetch")


# --- talking to the central server ------------------------------------------------------------


def _fetch_globalconf(anchor: Anchor) -> GlobalConf:
    # Bootstrap: the document's signature, not TLS, is what is trusted here.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    data = _http("GET", anchor.globalconf_url, None, insecure)
    try:
        return verify_globalconf(data, anchor.cert)
    except GlobalConfError as exc:
        raise RegistrationError(
            "BadGlobalConf", f"the global configuration from {anchor.central_url} does not "
            f"verify with the anchor: {exc}",
        ) from exc  # fmt: skip


def _context(conf: GlobalConf) -> ssl.SSLContext:
    ca = b"".join(c for c in conf.trusted_cas_der)
    return ssl.create_default_context(cadata=ca)


def _http(
    method: str, url: str, body: bytes | None, ctx: ssl.SSLContext, token: str | None = None
) -> bytes:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15, context=ctx) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            doc = json.loads(exc.read())
            code, message = doc.get("error", "Refused"), doc.get("message", exc.reason)
        except ValueError:
            code, message = "Refused", exc.reason
        raise RegistrationError(code, f"the central server refused: {message}", exc.code) from exc
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise RegistrationError(
            "Unreachable", f"cannot reach the central server at {url}: {why}; is it running "
            "and is the anchor's URL reachable from here?",
        ) from exc  # fmt: skip


class _Session:
    def __init__(self, anchor: Anchor) -> None:
        self.anchor = anchor
        self.conf = _fetch_globalconf(anchor)
        self.ctx = _context(self.conf)

    def post(self, signed: bytes) -> dict[str, Any]:
        url = f"{self.anchor.central_url}/management/requests"
        return dict(json.loads(_http("POST", url, signed, self.ctx)))

    def status(self, request_id: int, token: str | None) -> dict[str, Any]:
        """A request's state: the central server shows it to the holder of the token it
        gave when the request was filed."""
        url = f"{self.anchor.central_url}/management/requests/{request_id}"
        return dict(json.loads(_http("GET", url, None, self.ctx, token)))


# --- local state ---------------------------------------------------------------------------------


def _load_state(root: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((root / _STATE).read_text()))
    except FileNotFoundError:
        raise RegistrationError(
            "NoEnrollment", f"{root} holds no enrollment; start one with 'xroad-hub node init'"
        ) from None


def _save_state(root: Path, state: dict[str, Any]) -> None:
    write_private(root / _STATE, json.dumps(state, indent=2).encode() + b"\n")


def _anchor_of(root: Path) -> Anchor:
    return parse_anchor((root / "anchor.json").read_bytes())


def _file_auth_reg(root: Path, session: _Session, state: dict[str, Any]) -> None:
    auth = load_private_key(root / "auth.key.pem")
    sign = load_private_key(root / "sign.key.pem")
    server = NodeId(parse_member_id(state["member"]), state["code"])
    request = new_request(
        "authCertReg", session.anchor.instance, server,
        address=state["address"],
        auth_csr=(root / "auth.csr.pem").read_text(),
        sign_csr=(root / "sign.csr.pem").read_text(),
        checkpoint_csr=(root / "checkpoint.csr.pem").read_text(),
    )  # fmt: skip
    answer = session.post(sign_request(request, {"auth": auth, "sign": sign}))
    state.update(request_id=int(answer["requestId"]), state=str(answer["state"]),
                 status_token=str(answer.get("statusToken", "")))  # fmt: skip
    _save_state(root, state)


def _init(args: argparse.Namespace) -> int:
    root: Path = args.dir
    # Read once: the bytes kept are the bytes checked, even if the file is replaced meanwhile.
    anchor_bytes = args.anchor.read_bytes()
    anchor = parse_anchor(anchor_bytes, args.anchor_hash)
    print(f"anchor of {anchor.instance} at {anchor.central_url}; its hash:\n  {anchor.hash}")
    if args.anchor_hash is None:
        print("  (compare it with the central operator's, or pass --anchor-hash)")
    member = parse_member_id(args.member)
    if member.instance != anchor.instance:
        raise RegistrationError("Malformed", f"{member} is not of instance {anchor.instance}")
    node = NodeId(member, args.code)
    parse_subsystem_id(f"{member}/{args.code}")  # the code must be a valid identifier part
    if (root / _STATE).exists() or (root / "auth.key.pem").exists():
        raise RegistrationError(
            "Exists", f"{root} already holds an enrollment or keys; see 'xroad-hub node "
            f"enroll status --dir {root}' (or 'enroll cancel' to start over)",
        )  # fmt: skip
    session = _Session(anchor)  # before making keys: a wrong anchor or URL costs nothing
    if member not in session.conf.members:
        raise RegistrationError(
            "UnknownMember", f"{member} is not a member of {anchor.instance}; ask the central "
            "operator to admit it (xroad-hub central member add)",
        )  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    write_private(root / "anchor.json", anchor_bytes)
    for name, cn in (("auth", str(node)), ("sign", str(member))):
        key = generate_key()
        write_key(root / f"{name}.key.pem", key)
        csr = make_csr(key, cn)
        (root / f"{name}.csr.pem").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    checkpoint = ed25519.Ed25519PrivateKey.generate()
    write_key(root / "checkpoint.key.pem", checkpoint)
    csr = make_csr(checkpoint, str(node))
    (root / "checkpoint.csr.pem").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    state: dict[str, Any] = {"member": str(member), "code": args.code,
                             "address": args.address, "state": "UNSENT"}  # fmt: skip
    _save_state(root, state)
    _file_auth_reg(root, session, state)
    print(f"registration request {state['request_id']} for {node} filed; the central "
          f"operator approves it (xroad-hub central approve {state['request_id']}), then run "
          f"'xroad-hub node enroll fetch --dir {root}'")  # fmt: skip
    fingerprint = request_fingerprint(
        *((root / f"{n}.csr.pem").read_text() for n in ("auth", "sign", "checkpoint"))
    )
    print(f"the request's keys, for the central operator to compare by phone before approving:"
          f"\n  {fingerprint}")  # fmt: skip
    return 0


def _status(root: Path, state: dict[str, Any], *, fetch: bool) -> int:
    session = _Session(_anchor_of(root))
    if state.get("state") == "UNSENT":  # init stopped before the central server answered
        _file_auth_reg(root, session, state)
        print(f"registration request {state['request_id']} filed")
    answer = session.status(int(state["request_id"]), state.get("status_token"))
    state["state"] = answer["state"]
    _save_state(root, state)
    node = f"{state['member']}/{state['code']}"
    for sub, rid in sorted(state.get("clients", {}).items()):
        sub_state = session.status(int(rid), state.get("client_tokens", {}).get(sub))["state"]
        print(f"subsystem {sub}: request {rid} {sub_state}")
    if answer["state"] == "DECLINED":
        print(f"request {answer['requestId']} for {node} was DECLINED: "
              f"{answer.get('reason', '')}; 'enroll cancel' to start over")  # fmt: skip
        return 1
    if answer["state"] != "APPROVED":
        print(f"request {answer['requestId']} for {node} is {answer['state']}")
        return 0 if not fetch else 3
    if fetch:
        _write_certs(root, answer, session.conf)
    listed = session.conf.node(NodeId(parse_member_id(state["member"]), state["code"]))
    where = "in" if listed else "not yet in"
    print(f"request {answer['requestId']} for {node} is APPROVED; certificates in {root}; "
          f"the node is {where} the global configuration")  # fmt: skip
    return 0


def _write_certs(root: Path, answer: dict[str, Any], conf: GlobalConf) -> None:
    """Write the issued certificates, after checking they are for this node's own keys,
    issued by the CA the signed global configuration names."""
    ca = federation_ca(answer, conf)
    certs = answer.get("certificates", {})
    checked = {}
    for name in ("auth", "sign", "checkpoint"):
        if name not in certs:
            raise RegistrationError(
                "WrongCertificate", f"the central server issued no {name} certificate for this "
                "node; ask its operator (the request may predate checkpoint enrollment)",
            )  # fmt: skip
        cert = x509.load_pem_x509_certificate(str(certs[name]).encode())
        path = root / f"{name}.key.pem"
        mine = (load_ed25519_key if name == "checkpoint" else load_private_key)(path).public_key()
        if cert.public_key() != mine:
            raise RegistrationError(
                "WrongCertificate", f"the {name} certificate issued is not for this node's key"
            )
        check_issued_by(cert, ca, name)
        checked[name] = cert
    for name, cert in checked.items():  # all checked before any is written
        (root / f"{name}.cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "ca.cert.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))


def federation_ca(answer: dict[str, Any], conf: GlobalConf) -> x509.Certificate:
    """The CA of a status answer, if the signed global configuration names it. The anchor's
    hash does not cover the central server's URL, and every node's certificate chains to
    the federation CA: whoever answers at a tampered anchor's URL could otherwise hand the
    node a root of its own (its witness, timestamps and client certificates trusted)."""
    try:
        ca = x509.load_pem_x509_certificate(str(answer["ca"]).encode())
    except (KeyError, ValueError) as exc:
        raise RegistrationError("WrongCertificate", "the answer holds no CA certificate") from exc
    if ca.public_bytes(serialization.Encoding.DER) not in conf.trusted_cas_der:
        raise RegistrationError(
            "WrongCertificate", "the CA certificate in the answer is not the one the signed "
            "global configuration names: whatever answers at the anchor's URL is not the "
            "central server; check the URL in the anchor with the central operator",
        )  # fmt: skip
    return ca


def check_issued_by(cert: x509.Certificate, ca: x509.Certificate, name: str) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise RegistrationError(
            "WrongCertificate", f"the {name} certificate is not issued by the federation's CA"
        ) from exc


def _cancel(root: Path, state: dict[str, Any]) -> int:
    if state.get("state") == "APPROVED" or (root / "auth.cert.pem").exists():
        raise RegistrationError(
            "Approved", "this node's registration was approved; it cannot be cancelled: "
            "the central operator revokes a registered node (xroad-hub central revoke --node)",
        )  # fmt: skip
    if "request_id" in state:
        session = _Session(_anchor_of(root))
        server = NodeId(parse_member_id(state["member"]), state["code"])
        answer = session.status(int(state["request_id"]), state.get("status_token"))
        if answer["state"] == "SUBMITTED":
            # Signed by the auth key of the request itself: the central server knows it from
            # the request's CSR, so nobody else can cancel it.
            request = new_request(
                "cancel", session.anchor.instance, server, request_id=str(state["request_id"])
            )
            session.post(sign_request(request, {"auth": load_private_key(root / "auth.key.pem")}))
            print(f"request {state['request_id']} cancelled at the central server")
    for name in ("auth.key.pem", "auth.csr.pem", "sign.key.pem", "sign.csr.pem",
                 "checkpoint.key.pem", "checkpoint.csr.pem", _STATE):  # fmt: skip
        (root / name).unlink(missing_ok=True)
    print(f"enrollment in {root} cancelled; its keys are deleted; 'xroad-hub node init' starts "
          "over")  # fmt: skip
    return 0


def _client_add(root: Path, state: dict[str, Any], subsystem: str) -> int:
    if not (root / "auth.cert.pem").exists():
        raise RegistrationError(
            "NotRegistered", "this node is not registered yet; 'xroad-hub node enroll fetch' "
            "once its request is approved",
        )  # fmt: skip
    client = parse_subsystem_id(subsystem)
    session = _Session(_anchor_of(root))
    server = NodeId(parse_member_id(state["member"]), state["code"])
    request = new_request("clientReg", session.anchor.instance, server, client=str(client))
    auth = load_private_key(root / "auth.key.pem")
    answer = session.post(sign_request(request, {"auth": auth}))
    state.setdefault("clients", {})[str(client)] = int(answer["requestId"])
    state.setdefault("client_tokens", {})[str(client)] = str(answer.get("statusToken", ""))
    _save_state(root, state)
    print(f"request {answer['requestId']} to host {client} on {server} filed; the central "
          "operator approves it")  # fmt: skip
    return 0
