"""Where a node finds its key material: the development PKI, or its own enrolled directory.

A node needs: its TLS authentication key and certificate, a signing key and certificate per
member it signs for, its checkpoint key (Ed25519) and certificate, the trusted root CA, the
configuration anchor (the certificate that signs the global configuration), and the public
keys of the client systems, auditors and identity provider it accepts. ``NodeKeys`` says
that; two layouts implement it:

- ``DevPkiKeys``: the one-machine development PKI of ``xroad-hub pki init`` (``xroad-hub
  up`` and the tests), where every agency's keys lie side by side.
- ``NodeDirKeys``: a node's own directory after ``xroad-hub node init`` and ``node enroll
  fetch`` (``xroad-hub node run``), holding its own keys only::

      anchor.json                         the configuration anchor
      ca.cert.pem                         the federation CA (from the enrollment)
      auth.key.pem, auth.cert.pem         TLS authentication
      sign.key.pem, sign.cert.pem         the owner member's signing key
      checkpoint.key.pem, .cert.pem       checkpoint key (Ed25519)
      clients/<subsystem>/tls.cert.pem    a client system's certificate (auth = "mtls")
      clients/<subsystem>/jwt.pub.pem     a client system's JWT key (auth = "jwt")
      auditors/<name>/jwt.pub.pem         an auditor the audit API accepts
      idp/thaid/jwt.pub.pem               the citizens' identity provider (audit API)
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Protocol

from cryptography import x509

from xroad_hub.errors import ConfigError
from xroad_hub.pki import IDP_NAME, CertPaths, PkiLayout, load_cert
from xroad_hub.protocol.registration import parse_anchor

__all__ = ["DevPkiKeys", "NodeDirKeys", "NodeKeys"]


class NodeKeys(Protocol):
    """The key material of one node (paths: the TLS contexts load files themselves)."""

    @property
    def root_ca(self) -> Path:
        """The trusted root CA certificate (PEM)."""
        ...

    def anchor(self) -> x509.Certificate:
        """The certificate the global configuration must be signed with."""
        ...

    def auth(self) -> CertPaths: ...
    def checkpoint(self) -> CertPaths: ...
    def member_sign(self, member: str) -> CertPaths: ...
    def client_tls(self, subsystem: str) -> Path: ...
    def client_jwt(self, subsystem: str) -> Path: ...
    def auditor_jwt(self, name: str) -> Path: ...
    def idp_jwt(self) -> Path: ...
    def private_dirs(self) -> tuple[Path, ...]:
        """Where private keys of this layout lie (no service may read there)."""
        ...


class DevPkiKeys:
    """A node's view of the development PKI (``xroad-hub pki init``)."""

    def __init__(self, pki: PkiLayout, node_id: str) -> None:
        self.pki = pki
        self.node_id = node_id

    @property
    def root_ca(self) -> Path:
        return self.pki.root_ca.cert

    def anchor(self) -> x509.Certificate:
        return load_cert(self.pki.globalconf_signer.cert)

    def auth(self) -> CertPaths:
        return self.pki.node_auth(self.node_id)

    def checkpoint(self) -> CertPaths:
        return self.pki.node_checkpoint(self.node_id)

    def member_sign(self, member: str) -> CertPaths:
        return self.pki.member_sign(member)

    def client_tls(self, subsystem: str) -> Path:
        return self.pki.client_tls(subsystem).cert

    def client_jwt(self, subsystem: str) -> Path:
        return self.pki.client_jwt(subsystem).cert

    def auditor_jwt(self, name: str) -> Path:
        return self.pki.auditor_jwt(name).cert

    def idp_jwt(self) -> Path:
        return self.pki.idp_jwt().cert

    def private_dirs(self) -> tuple[Path, ...]:
        # All of it: every member's signing key, the CA's and the configuration signer's
        # lie side by side here, not only this node's own.
        return (self.pki.root,)


class NodeDirKeys:
    """A node's own directory (see the module docstring); only the owner member's signing
    key is there, so a node signs for its owner and the owner's subsystems only."""

    def __init__(self, root: Path, owner: str) -> None:
        self.root = root
        self.owner = owner
        # The public keys a node operator places for the systems it accepts.
        self._others = PkiLayout(root)

    @property
    def root_ca(self) -> Path:
        return self.root / "ca.cert.pem"

    @cached_property
    def _anchor(self) -> x509.Certificate:
        return parse_anchor((self.root / "anchor.json").read_bytes()).cert

    def anchor(self) -> x509.Certificate:
        return self._anchor

    def _pair(self, name: str) -> CertPaths:
        return CertPaths(self.root / f"{name}.key.pem", self.root / f"{name}.cert.pem")

    def auth(self) -> CertPaths:
        return self._pair("auth")

    def checkpoint(self) -> CertPaths:
        return self._pair("checkpoint")

    def member_sign(self, member: str) -> CertPaths:
        if member != self.owner:
            raise ConfigError(
                f"{self.root} holds the signing key of {self.owner} only, not of {member}: "
                f"a node hosts its owner's subsystems (node.toml names a subsystem of {member})"
            )
        return self._pair("sign")

    def _placed(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise ConfigError(f"{what} is not in the node's directory; place it at {path}")
        return path

    def client_tls(self, subsystem: str) -> Path:
        return self._placed(
            self._others.client_tls(subsystem).cert, f"the TLS certificate of client {subsystem}"
        )

    def client_jwt(self, subsystem: str) -> Path:
        return self._placed(
            self._others.client_jwt(subsystem).cert, f"the JWT public key of client {subsystem}"
        )

    def auditor_jwt(self, name: str) -> Path:
        return self._placed(self._others.auditor_jwt(name).cert, f"auditor {name}'s JWT key")

    def idp_jwt(self) -> Path:
        return self._placed(
            self._others.idp_jwt().cert,
            f"the identity provider's ({IDP_NAME}) public key, which the data tracker of the "
            "audit listener needs,",
        )

    def private_dirs(self) -> tuple[Path, ...]:
        return (self.root,)

    def auditors(self) -> tuple[str, ...]:
        """The auditors whose keys were placed in the directory."""
        base = self.root / "auditors"
        if not base.is_dir():
            return ()
        return tuple(sorted(p.name for p in base.iterdir() if (p / "jwt.pub.pem").exists()))
