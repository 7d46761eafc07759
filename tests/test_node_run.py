"""A new agency joins a running federation, every program its own process: the central server
(``xroad-hub central run``, also the timestamp authority and the witness) and each node
(``xroad-hub node run --dir``, started from nothing but its own directory). The provider's
node and the central server are never restarted: the provider learns the newcomer from its
next global-configuration refresh. Both logs then verify offline against the central CA,
with checkpoints co-signed by the central server's witness and timestamped by its TSA."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from xroad_hub.dev.testing import free_port
from xroad_hub.node.admin import key_digest

from .separate_procs import (
    Proc,
    add_client,
    backend_server,
    enroll,
    get_ok,
    healthy,
    hub,
    init_node,
    make_central,
    r1_get,
    wait,
)

pytestmark = pytest.mark.slow

DBD, MOPH = "TH/GOV/DBD", "TH/GOV/MOPH"
SERVICE = f"{DBD}/registry/companies"
HOSPITAL = f"{MOPH}/hospital"
REFRESH = "1"  # seconds between global-configuration downloads of the nodes


def _call(client_url: str) -> tuple[int, bytes, str]:
    """One r1 request of the hospital to A's service."""
    return r1_get(client_url, SERVICE, HOSPITAL)


def _refused(ndir: Path, *expected: str) -> None:
    """``node run`` refuses to start, with a message and a hint, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "xroad_hub.cli", "node", "run", "--dir", str(ndir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "hint:" in done.stderr, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


@pytest.fixture
def backend() -> Iterator[str]:
    with backend_server() as url:
        yield url


def test_new_agency_joins_a_running_federation(tmp_path: Path, backend: str) -> None:
    # Short validity and refresh: the provider must pick the newcomer up within seconds.
    cdir, central_url, anchor = make_central(
        tmp_path, {DBD: "Department of Business Development"}, validity=30
    )
    for name in ("tsa", "witness"):
        assert stat.S_IMODE((cdir / f"{name}.key.pem").stat().st_mode) == 0o600
    procs: list[Proc] = []
    try:
        central = Proc(tmp_path / "central.log", "central", "run", "--dir", cdir)
        procs.append(central)

        # The running federation: provider node A, enrolled the same way, serving a REST
        # service whose access rights already name the newcomer's subsystem.
        adir, a_peer, a_health = tmp_path / "dbd-node", free_port(), free_port()
        wait("the central server", lambda: get_ok(f"{central_url}/globalconf"), procs)
        _refused(adir, "holds no enrollment", "xroad-hub node init")
        request = init_node(anchor, adir, DBD, a_peer)
        # Half-way: the node says which command completes the enrollment.
        _refused(adir, "no authentication certificate yet", "node enroll fetch --dir")
        hub("central", "approve", request, "--dir", cdir)
        hub("node", "enroll", "fetch", "--dir", adir)
        _refused(adir, "node.toml is missing", "[node]")
        (adir / "node.toml").write_text('[node]\nid = "TH/GOV/DBD/other"\n')
        _refused(adir, "takes no id", f"{DBD}/hub1")
        add_client(cdir, adir, f"{DBD}/registry")
        # Its admin API on all interfaces: HTTPS with its enrolled certificate.
        a_admin, admin_key = free_port(), "the-admin-key"
        (adir / "node.toml").write_text(
            f'[node]\nhealth_listen = "127.0.0.1:{a_health}"\ncheckpoint_interval = 1\n'
            f'admin_listen = "0.0.0.0:{a_admin}"\n'
            f'[[node.admin]]\nname = "ops"\nkey_sha256 = "{key_digest(admin_key)}"\n'
            'roles = ["system-administrator"]\n'
            f'[[node.service]]\nid = "{SERVICE}"\nurl = "{backend}/companies"\n'
            f'allow = ["{HOSPITAL}"]\nanswer_subject = []\n'
        )
        node_a = Proc(tmp_path / "dbd-node.log", "node", "run", "--dir", adir,
                       "--refresh-interval", REFRESH)  # fmt: skip
        procs.append(node_a)
        wait("node A", lambda: healthy(f"http://127.0.0.1:{a_health}"), procs)
        a_pid = node_a.proc.pid
        # The admin CLI checks the host name of the node's certificate, not only its CA.
        key_file = tmp_path / "admin.key"
        key_file.write_text(admin_key)
        admin = ["node", "maintenance", "status", "--key-file", key_file,
                 "--root-ca", cdir / "ca.cert.pem", "--admin"]  # fmt: skip
        assert "maintenance mode: off" in hub(*admin, f"https://127.0.0.1:{a_admin}")
        wrong = subprocess.run(
            [sys.executable, "-m", "xroad_hub.cli", *map(str, admin),
             f"https://127.0.0.2:{a_admin}"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert wrong.returncode == 2 and "did not prove it is that host" in wrong.stderr

        # The newcomer joins: every command it takes, timed from 'node init'.
        bdir, b_peer, b_client = tmp_path / "moph-node", free_port(), free_port()
        hub("central", "member", "add", MOPH, "--name", "Ministry of Public Health",
            "--dir", cdir)  # fmt: skip
        started = time.monotonic()
        enroll(cdir, anchor, bdir, MOPH, HOSPITAL, b_peer)
        enrolled = time.monotonic()
        for key in ("auth", "sign", "checkpoint"):
            assert stat.S_IMODE((bdir / f"{key}.key.pem").stat().st_mode) == 0o600
        (bdir / "node.toml").write_text(
            f'[node]\nclient_listen = "127.0.0.1:{b_client}"\ncheckpoint_interval = 1\n'
            f'[[node.client]]\nid = "{HOSPITAL}"\nauth = "http"\n'
        )
        node_b = Proc(tmp_path / "moph-node.log", "node", "run", "--dir", bdir,
                       "--refresh-interval", REFRESH)  # fmt: skip
        procs.append(node_b)
        client_url = f"http://127.0.0.1:{b_client}"
        answers: list[tuple[int, bytes, str]] = []

        def exchanged() -> bool:
            try:
                answers.append(_call(client_url))
            except (urllib.error.URLError, OSError):
                return False
            return answers[-1][0] == 200

        wait("the first exchange", exchanged, procs)
        elapsed = time.monotonic() - started
        _, body, message_id = answers[-1]
        assert json.loads(body) == {"company": "0105536000011", "status": "active"}
        print(f"\njoin of {MOPH}: node init -> first exchange in {elapsed:.1f} s "
              f"(7 commands: node init, approve, enroll fetch, client add, approve, node run, "
              f"first request; {len(answers)} request(s) until A refreshed); enrollment "
              f"{enrolled - started:.1f} s, node run to first answer "
              f"{time.monotonic() - enrolled:.1f} s")  # fmt: skip
        # Nothing else was restarted.
        assert node_a.alive() and node_a.proc.pid == a_pid and central.alive()
        assert f"{MOPH}/hub1" in node_b.text() and f"{DBD}/hub1" in node_a.text()

        # Stopped with SIGTERM, both write a final checkpoint, witnessed and timestamped.
        for p in (node_b, node_a):
            assert p.stop() == 0, p.text()
        env = {**os.environ, "SSL_CERT_FILE": str(cdir / "ca.cert.pem")}
        for ndir in (adir, bdir):
            out = hub("audit", "verify", ndir / "data" / "messagelog.sqlite",
                      "--root-ca", cdir / "ca.cert.pem", "--witness", central_url,
                      env=env)  # fmt: skip
            assert out.rstrip().endswith(": OK"), out
            assert "compared with the witness checkpoint" in out, out
            summary = out.strip().splitlines()[-1]
            assert summary.startswith("1 entries"), summary
            assert " 0 witnessed" not in summary and " 0 timestamped" not in summary, summary
            # One exchange's evidence, with nothing but the central server's CA certificate.
            bundle = ndir / "evidence.json"
            hub("audit", "export", message_id, ndir / "data" / "messagelog.sqlite",
                "-o", bundle)  # fmt: skip
            out = hub("audit", "verify-bundle", bundle, "--root-ca", cdir / "ca.cert.pem")
            assert out.startswith("VERIFIED") and "co-signed by TH/registry" in out, out
    finally:
        for p in reversed(procs):
            p.stop()


def test_node_settings_are_the_node_table_without_id(tmp_path: Path) -> None:
    """node.toml is read by the federation file's loader: the same keys and errors; the id
    and the default peer address come from the enrollment, relative paths from NODEDIR."""
    from xroad_hub.errors import ConfigError
    from xroad_hub.node.noderun import load_settings

    settings = tmp_path / "node.toml"
    settings.write_text(
        '[node]\nclient_listen = "127.0.0.1:8080"\n'
        f'[[node.service]]\nid = "{SERVICE}"\nurl = "http://127.0.0.1:9/x"\n'
        'answer_subject = []\nopenapi = "companies.json"\n'
    )
    cfg = load_settings(tmp_path, f"{DBD}/hub1", "127.0.0.1:5500")
    assert str(cfg.id) == f"{DBD}/hub1" and cfg.peer_listen == ("127.0.0.1", 5500)
    assert cfg.services[0].openapi == str(tmp_path.resolve() / "companies.json")
    settings.write_text('[node]\nclient_listen = "127.0.0.1:8080"\ntimout = 3\n')
    with pytest.raises(ConfigError, match=r"node.toml: \[node\]: unknown key 'timout'"):
        load_settings(tmp_path, f"{DBD}/hub1", "127.0.0.1:5500")
    settings.write_text('[node]\n[registry]\nlisten = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match=r"one \[node\] table only \(not registry\)"):
        load_settings(tmp_path, f"{DBD}/hub1", "127.0.0.1:5500")


def test_node_run_refuses_private_keys_others_can_read(tmp_path: Path) -> None:
    """An enrolled directory whose key became group- or world-readable is not used."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from xroad_hub.errors import ConfigError
    from xroad_hub.node.noderun import load_node_dir
    from xroad_hub.pki import generate_key, issue_cert, make_root_ca, write_cert, write_key
    from xroad_hub.protocol.globalconf import signer_name
    from xroad_hub.protocol.registration import build_anchor

    ca_key, ca = make_root_ca("TH central server CA")
    signer = issue_cert(ca_key, ca, signer_name("TH"), generate_key(), purpose="sign")
    (tmp_path / "anchor.json").write_bytes(build_anchor("TH", "https://127.0.0.1:4001", signer))
    (tmp_path / "enrollment.json").write_text(
        json.dumps({"member": DBD, "code": "hub1", "address": "127.0.0.1:5500"})
    )
    write_cert(tmp_path / "ca.cert.pem", ca)
    for name, key, purpose in (("auth", generate_key(), "tls"), ("sign", generate_key(), "sign"),
                               ("checkpoint", ed25519.Ed25519PrivateKey.generate(),
                                "checkpoint")):  # fmt: skip
        write_key(tmp_path / f"{name}.key.pem", key)
        write_cert(tmp_path / f"{name}.cert.pem", issue_cert(ca_key, ca, DBD, key, purpose=purpose))
    (tmp_path / "node.toml").write_text("[node]\n")
    assert str(load_node_dir(tmp_path).config.id) == f"{DBD}/hub1"
    (tmp_path / "sign.key.pem").chmod(0o644)
    with pytest.raises(ConfigError, match=r"sign\.key\.pem is readable by other users"):
        load_node_dir(tmp_path)
