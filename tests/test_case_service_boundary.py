"""The case service is a separate system: it must not reach into the hub's code.

It may only use the hub's public HTTP protocol. These tests check that statically (every
module's imports) and dynamically (what importing it loads), and that it runs as its own
process: ``--help``, start, serve, stop cleanly on SIGTERM.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from case_service.devidp import generate_keypair, mint_token

from .case_service_fakes import FakeEvidenceHub

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "case_service"
FORBIDDEN = ("xroad_hub", "adapters")
CITIZEN = "1101700203450"
JURISTIC = "0105550123451"


def _env() -> dict[str, str]:
    # The package is imported from the working tree, whether or not it is installed.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _forbidden_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
        ):
            # Dynamic imports by a literal name count as imports too.
            names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            names = [n for n in names if isinstance(n, str)]
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                found.append(f"{path.name}:{node.lineno}: {name}")
    return found


def test_no_module_imports_the_hub() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 8  # the scan really covers the package
    offending = [hit for m in modules for hit in _forbidden_imports(m)]
    assert offending == []


def test_the_scan_would_catch_an_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import json\nfrom xroad_hub.protocol.thaiid import is_valid\nimport adapters.rest\n"
        "__import__('xroad_hub.protocol.rest')\nfrom . import store\n",
        encoding="utf-8",
    )
    assert len(_forbidden_imports(sample)) == 3


def test_importing_the_service_loads_no_hub_code() -> None:
    code = (
        "import sys, pkgutil, importlib, json\n"
        "import case_service.app\n"
        "import case_service\n"
        "for m in pkgutil.iter_modules(case_service.__path__, 'case_service.'):\n"
        "    if m.name != 'case_service.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "import case_service.__main__\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded = json.loads(out.stdout)
    assert "case_service.app" in loaded
    assert [m for m in loaded if m.split(".")[0] in FORBIDDEN] == []


def test_help_explains_the_service() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "case_service", "--help"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    text = out.stdout
    for words in (
        "TH/GOV/BMA/licensing",
        "--node-url",
        "--tls-cert",
        "--idp-public-key",
        "--sla-days",
        "POST /cases",
        "SIGTERM",
    ):
        assert words in text, words


def test_bad_configuration_exits_2_with_a_message(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "case_service", "--db", str(tmp_path / "x.db")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "idp.public_key is required" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _line_with(
    stream: asyncio.StreamReader, event: str, seen: list[str]
) -> dict[str, object]:
    while True:
        raw = await asyncio.wait_for(stream.readline(), 60)  # a guard against hangs only
        if not raw:
            raise AssertionError(f"process ended before {event!r}; output: {seen}")
        line = raw.decode("utf-8", "replace")
        seen.append(line)
        with_json = line.strip()
        if with_json.startswith("{"):
            record: dict[str, object] = json.loads(with_json)
            if record.get("event") == event:
                return record


async def test_process_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "idp")
    hub = FakeEvidenceHub()
    await hub.start()
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "case_service",
        "--listen",
        f"127.0.0.1:{port}",
        "--db",
        str(tmp_path / "cases.db"),
        "--node-url",
        hub.url,
        "--idp-public-key",
        str(pub_path),
        "--log-json",
        cwd=ROOT,
        env=_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        await _line_with(proc.stderr, "case_service.listening", seen)
        token = mint_token(key_path.read_bytes(), sub=CITIZEN, role="citizen")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{port}/cases",
                json={"citizen_id": CITIZEN, "juristic_id": JURISTIC},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            assert resp.status == 201
            case = await resp.json()
        assert case["status"] == "evidence-complete"
        proc.send_signal(signal.SIGTERM)
        await _line_with(proc.stderr, "case_service.stopped", seen)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        rest = await proc.stderr.read()
        seen.append(rest.decode("utf-8", "replace"))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await hub.close()
    output = "".join(seen)
    # Events as data; the bearer token and the payloads never reach the log.
    assert token not in output
    assert "สมหญิง" not in output
    assert '"event": "evidence.fetched"' in output


@pytest.mark.parametrize("argv", [["--listen", "nonsense"], ["--sla-days", "0"]])
def test_bad_flags_are_refused(argv: list[str], tmp_path: Path) -> None:
    _, pub = generate_keypair(tmp_path / "idp")
    out = subprocess.run(
        [sys.executable, "-m", "case_service", "--idp-public-key", str(pub), *argv],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "configuration error" in out.stderr
