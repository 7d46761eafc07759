"""Generate the development PKI a federation file needs, only where it is missing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.federation import FederationConfig
from xroad_hub.pki import (
    AnyPrivateKey,
    CertPaths,
    PkiLayout,
    generate_key,
    issue_cert,
    load_cert,
    load_private_key,
    make_root_ca,
    write_cert,
    write_key,
    write_public_key,
)
from xroad_hub.protocol.globalconf import signer_name
from xroad_hub.protocol.rfc3161 import issue_tsa_cert

__all__ = ["ensure_pki"]

log = structlog.get_logger("xroad_hub.pki")


def ensure_pki(fed: FederationConfig, certs_dir: Path) -> list[Path]:
    """Create every missing key and certificate; return what was created.

    Existing material is kept as it is. A half-present pair (key without certificate or the
    reverse) is an error: silently re-keying it would break whoever pinned the old one.
    """
    layout = PkiLayout(certs_dir)
    created: list[Path] = []

    root = layout.root_ca
    _refuse_half_pair(root)
    if not root.exist():
        key, cert = make_root_ca(f"{fed.instance} federation root CA")
        write_key(root.key, key)
        write_cert(root.cert, cert)
        created += [root.key, root.cert]
    ca_key, ca_cert = load_private_key(root.key), load_cert(root.cert)

    def jwt_pair(paths: CertPaths) -> None:
        _refuse_half_pair(paths)
        if not paths.exist():
            key = generate_key()
            write_key(paths.key, key)
            write_public_key(paths.cert, key)
            created.extend([paths.key, paths.cert])

    def leaf(
        paths: CertPaths,
        cn: str,
        purpose: str,
        make_key: Callable[[], AnyPrivateKey] = generate_key,
    ) -> None:
        _refuse_half_pair(paths)
        if paths.exist():
            return
        key = make_key()
        write_key(paths.key, key)
        write_cert(paths.cert, issue_cert(ca_key, ca_cert, cn, key, purpose=purpose))
        created.extend([paths.key, paths.cert])

    leaf(layout.globalconf_signer, signer_name(fed.instance), "sign")
    leaf(
        layout.registry_witness, f"{fed.instance}/registry", "checkpoint",
        ed25519.Ed25519PrivateKey.generate,
    )  # fmt: skip
    tsa = layout.tsa
    _refuse_half_pair(tsa)
    if not tsa.exist():
        key = generate_key()
        write_key(tsa.key, key)
        write_cert(
            tsa.cert, issue_tsa_cert(ca_key, ca_cert, f"{fed.instance} timestamp authority", key)
        )
        created.extend([tsa.key, tsa.cert])
    for member in fed.members:
        leaf(layout.member_sign(str(member)), str(member), "sign")
    for node in fed.nodes:
        leaf(layout.node_auth(str(node.id)), str(node.id), "tls")
        leaf(
            layout.node_checkpoint(str(node.id)), str(node.id), "checkpoint",
            ed25519.Ed25519PrivateKey.generate,
        )  # fmt: skip
        for client in node.clients:
            if client.auth == "mtls":
                leaf(layout.client_tls(str(client.id)), str(client.id), "client-tls")
            elif client.auth == "jwt":
                jwt_pair(layout.client_jwt(str(client.id)))
    for auditor in fed.auditors:
        jwt_pair(layout.auditor_jwt(auditor))
    # The demo's citizen identity provider (a ThaID stand-in): nodes trust its public key for
    # citizens' data-tracker tokens, 'xroad-hub token --citizen/--officer' signs with it.
    jwt_pair(layout.idp_jwt())
    for path in created:
        log.info("pki.created", path=str(path))
    return created


def _refuse_half_pair(paths: CertPaths) -> None:
    if paths.key.exists() != paths.cert.exists():
        present = paths.key if paths.key.exists() else paths.cert
        raise FileExistsError(
            f"{present} exists without its pair; remove it (or restore the other file) and "
            "run again; keys are never overwritten silently"
        )
