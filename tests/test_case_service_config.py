"""The example configuration of the case service works with what ``scripts/demo.sh`` (the
demo workflow) and the demo federation file produce: a new user who follows the README gets
a service that starts, not a missing key. That the files exist there and are usable is
checked by tests/test_demo_workflow.py, which runs the workflow."""

from __future__ import annotations

import shutil
from pathlib import Path

from case_service.config import Settings, load_settings
from xroad_hub.demo.workflow import DEFAULT_DATA, DemoLayout
from xroad_hub.federation import load_federation

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "case_service" / "config.example.toml"
FEDERATION = REPO / "config" / "demo-federation.toml"


def example_paths(settings: Settings, data: Path) -> dict[str, tuple[Path | None, Path]]:
    """Each key path of the example: (as configured, where the demo workflow puts it)."""
    parties = DemoLayout(data).parties
    client = str(settings.client_id)
    return {
        "tls.cert": (settings.tls_cert, parties.client_tls(client).cert),
        "tls.key": (settings.tls_key, parties.client_tls(client).key),
        "tls.ca": (settings.tls_ca, parties.root_ca.cert),
        "idp.public_key": (settings.idp_public_key, parties.idp_jwt().cert),
    }


def test_example_config_uses_the_files_the_demo_makes(tmp_path: Path) -> None:
    # The repository's layout in miniature: the example where it lives (case_service/) and
    # the demo's data directory where scripts/demo.sh makes it (var/demo/, beside it).
    (tmp_path / "case_service").mkdir()
    config = tmp_path / "case_service" / EXAMPLE.name
    shutil.copy(EXAMPLE, config)
    settings = load_settings(config)
    for key, (configured, made) in example_paths(settings, tmp_path / DEFAULT_DATA).items():
        assert configured is not None and configured.resolve() == made.resolve(), key

    # The node it points at is the one hosting the subsystem, on its mutual-TLS listener.
    fed = load_federation(FEDERATION)
    (node,) = [n for n in fed.nodes if any(str(c.id) == settings.client_id for c in n.clients)]
    (client,) = [c for c in node.clients if str(c.id) == settings.client_id]
    assert client.auth == "mtls"
    assert node.client_tls_listen is not None
    host, port = node.client_tls_listen
    assert settings.node_url == f"https://{host}:{port}"
