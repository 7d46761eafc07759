"""Issues 12 and 13 with their state in PostgreSQL: a central server initialised with
``central init --db`` (nothing but keys in its directory) approves an enrollment while it
runs, and a node whose settings live in PostgreSQL (``settings_dsn``) registers a service
through its admin API and still serves it after a restart, with no settings file of its own.
The central server and every node are processes of their own."""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from xroad_hub.dev.testing import TEST_ADMIN_KEYS, free_port
from xroad_hub.node.admin import key_digest
from xroad_hub.node.pgsettings import settings_schema

from .separate_procs import Proc, backend_server, enroll, get_ok, healthy, hub, make_central, wait

pytest_plugins = ["tests.pg_stores"]

DBD, MOPH = "TH/GOV/DBD", "TH/GOV/MOPH"
HOSPITAL = f"{MOPH}/hospital"


@pytest.mark.slow
def test_central_and_node_settings_in_postgresql_survive_restarts(
    tmp_path: Path, pg_schema: str
) -> None:
    from tests.pg_stores import drop_schema, pg_dsn

    # Two deployments, one PostgreSQL server: the central server's schema, and the node's
    # (a per-test node code keeps its settings schema apart from other runs').
    code = f"n{pg_schema[2:10]}"
    node_schema = settings_schema(f"{DBD}/{code}")
    members = {DBD: "Department of Business Development", MOPH: "Ministry of Public Health"}
    cdir, central_url, anchor = make_central(
        tmp_path, members, init=("--db", pg_dsn(), "--db-schema", pg_schema)
    )
    assert not (cdir / "central.sqlite").exists()
    assert stat.S_IMODE((cdir / "database.toml").stat().st_mode) == 0o600
    document = tmp_path / "companies.openapi.json"
    document.write_text(json.dumps({
        "openapi": "3.0.3", "info": {"title": "Companies", "version": "1"},
        "paths": {"/companies/{id}": {"get": {"operationId": "getCompany",
                                              "responses": {"200": {"description": "ok"}}}}},
    }))  # fmt: skip
    key_file = tmp_path / "services.key"
    key_file.write_text(TEST_ADMIN_KEYS["services"][0])
    procs: list[Proc] = []
    try:
        with backend_server() as backend:
            procs.append(Proc(tmp_path / "central.log", "central", "run", "--dir", cdir))
            wait("the central server", lambda: get_ok(f"{central_url}/globalconf"), procs)
            adir, bdir = tmp_path / "dbd-node", tmp_path / "moph-node"
            a_admin, a_health, b_client = free_port(), free_port(), free_port()
            # Enrollment: node init files, the running central server's operator approves.
            enroll(cdir, anchor, adir, DBD, f"{DBD}/registry", free_port(), code)
            enroll(cdir, anchor, bdir, MOPH, HOSPITAL, free_port())
            digest = key_digest(TEST_ADMIN_KEYS["services"][0])
            (adir / "node.toml").write_text(
                f'[node]\nsettings_dsn = "{pg_dsn()}"\n'
                f'health_listen = "127.0.0.1:{a_health}"\n'
                f'admin_listen = "127.0.0.1:{a_admin}"\n'
                f'[[node.admin]]\nname = "svc"\nkey_sha256 = "{digest}"\n'
                'roles = ["service-administrator"]\n'
            )
            (bdir / "node.toml").write_text(
                f'[node]\nclient_listen = "127.0.0.1:{b_client}"\n'
                f'[[node.client]]\nid = "{HOSPITAL}"\nauth = "http"\n'
            )
            run_a = ("node", "run", "--dir", adir, "--refresh-interval", "1")
            node_a = Proc(tmp_path / "dbd-node.log", *run_a)
            procs.append(node_a)
            procs.append(Proc(tmp_path / "moph-node.log", "node", "run", "--dir", bdir,
                              "--refresh-interval", "1"))  # fmt: skip
            wait("node A", lambda: healthy(f"http://127.0.0.1:{a_health}"), procs)
            out = hub("node", "service", "add", "--admin", f"http://127.0.0.1:{a_admin}",
                      "--key-file", key_file, "--provider", f"{DBD}/registry",
                      "--openapi", document, "--url", backend, "--answer-subject", "none",
                      "--allow", HOSPITAL)  # fmt: skip
            assert f"{DBD}/registry/getCompany" in out, out
            path = f"/r1/{DBD}/registry/getCompany/companies/0105536000011"

            def served() -> bool:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{b_client}{path}", headers={"X-Road-Client": HOSPITAL}
                )
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        return resp.status == 200
                except (urllib.error.URLError, OSError):
                    return False

            wait("the hospital's first answer", served, procs)
            # The node restarted: the service comes back from PostgreSQL, the only place
            # it was ever written (node.toml declares none, no settings file exists).
            node_a.stop()
            procs.remove(node_a)
            assert not served()
            started = time.monotonic()
            procs.append(Proc(tmp_path / "dbd-node-2.log", *run_a))
            wait("the answer after node A's restart", served, procs)
            print(f"\nnode A restarted -> serving again: {time.monotonic() - started:.2f} s")
            assert not list(adir.rglob("node-settings.sqlite"))
            with psycopg.connect(pg_dsn()) as conn:
                keys = conn.execute(
                    f'SELECT key FROM "{node_schema}".settings WHERE kind = %s', ("service",)
                ).fetchall()
                approved = conn.execute(
                    f'SELECT count(*) FROM "{pg_schema}".requests WHERE state = %s',
                    ("APPROVED",),
                ).fetchone()
            assert any("getCompany" in k for (k,) in keys), keys
            assert approved is not None and approved[0] >= 4  # two nodes, two subsystems
            for log in tmp_path.glob("*.log"):  # the DSN is the same with or without one
                assert pg_dsn() not in log.read_text(errors="replace"), log
    finally:
        for p in reversed(procs):
            p.stop()
        drop_schema(node_schema)
