"""The example configuration of the case service works with what ``xroad-hub pki init`` and
the demo federation file produce: a new user who follows the README gets a service that
starts, not a missing key."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from case_service.auth import load_idp_key
from case_service.config import load_settings
from case_service.hub import client_ssl_context
from xroad_hub.cli import main as xroad_hub_main
from xroad_hub.federation import load_federation
from xroad_hub.pki import PkiLayout

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "case_service" / "config.example.toml"
FEDERATION = REPO / "config" / "demo-federation.toml"


def test_example_config_uses_the_files_pki_init_writes(tmp_path: Path) -> None:
    # The repository's layout in miniature: the example where it lives (case_service/) and
    # the PKI where `xroad-hub pki init` writes it by default (certs/, beside it).
    (tmp_path / "case_service").mkdir()
    config = tmp_path / "case_service" / EXAMPLE.name
    shutil.copy(EXAMPLE, config)
    certs = tmp_path / "certs"
    assert (
        xroad_hub_main(["pki", "init", "--config", str(FEDERATION), "--certs-dir", str(certs)]) == 0
    )

    settings = load_settings(config)
    layout = PkiLayout(certs)
    tls = layout.client_tls(settings.client_id)
    configured = {
        "tls.cert": settings.tls_cert,
        "tls.key": settings.tls_key,
        "tls.ca": settings.tls_ca,
        "idp.public_key": settings.idp_public_key,
    }
    written = {
        "tls.cert": tls.cert,
        "tls.key": tls.key,
        "tls.ca": layout.root_ca.cert,
        "idp.public_key": layout.idp_jwt().cert,
    }
    for key, path in configured.items():
        assert path is not None and path.resolve() == written[key].resolve(), key
        assert path.is_file(), (key, path)

    # And they are usable as the service uses them: the identity provider's key loads, the
    # client certificate is the licensing subsystem's, issued by the root the CA names.
    load_idp_key(written["idp.public_key"])
    assert isinstance(client_ssl_context(tls.cert, tls.key, layout.root_ca.cert), ssl.SSLContext)
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    root = x509.load_pem_x509_certificate(layout.root_ca.cert.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == settings.client_id and cert.issuer == root.subject

    # The node it points at is the one hosting the subsystem, on its mutual-TLS listener.
    fed = load_federation(FEDERATION)
    (node,) = [n for n in fed.nodes if any(str(c.id) == settings.client_id for c in n.clients)]
    (client,) = [c for c in node.clients if str(c.id) == settings.client_id]
    assert client.auth == "mtls"
    assert node.client_tls_listen is not None
    host, port = node.client_tls_listen
    assert settings.node_url == f"https://{host}:{port}"
