"""A wheel built from the repository runs where the source tree is not: every package is in
it, and the evidence catalog, its JSON Schemas, the export layouts, the demo's WSDL and the
demo federation come from the installed package (importlib.resources), not from a checkout:
``xroad-hub demo`` plays the whole story from an empty directory.

The wheel is built from a copy of the tracked files, installed with --no-deps into a fresh
virtual environment whose dependencies come from the running one (no network), and run
from an empty directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .repo_copy import ROOT, copy_tracked

pytestmark = pytest.mark.slow

PACKAGE_ROOTS = ("xroad_hub", "adapters", "case_service")

# Run inside the fresh environment: everything here needs packaged files.
CHECK = r"""
import sys
from pathlib import Path

import xroad_hub
from xroad_hub.protocol.catalog import DEFAULT_CATALOG, load_catalog
from xroad_hub.demo.dopa import NAMESPACE, population_service
from xroad_hub.demo.synthetic import demo_people, population
from xroad_hub.packaged import schema_file
from adapters.flatfile.layout import load_layout_file, parse_layout

venv = Path(sys.prefix).resolve()
for path in (Path(xroad_hub.__file__), DEFAULT_CATALOG):
    assert venv in path.resolve().parents, f"{path} is not from the installed wheel"
catalog = load_catalog()
assert catalog.types(), "the packaged catalog has no evidence types"
for name in ("dol-titledeeds.layout.toml", "rd-taxclearance.layout.toml"):
    parse_layout(load_layout_file(schema_file(name)))
assert schema_file("dbd-registry.openapi.json").is_file()

people = population(1, demo_people(1, 2))
service = population_service(people)
cid = people.citizens[0].citizen_id
request = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    f'xmlns:p="{NAMESPACE}"><s:Body><p:getPerson><p:citizenId>{cid}</p:citizenId>'
    "</p:getPerson></s:Body></s:Envelope>"
).encode()
status, answer = service.handle(request)
assert status == 200 and cid.encode() in answer, answer
print("wheel ok:", len(catalog.types()), "evidence types")
"""


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_wheel_installs_and_runs_without_the_source_tree(tmp_path: Path) -> None:
    source = copy_tracked(tmp_path / "src")
    dist = tmp_path / "dist"
    _run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", dist, source, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = dist.glob("xroad_hub-*.whl")

    # Every package of the source tree is in the wheel (pyproject.toml lists them by hand).
    packages = {
        str(p.parent.relative_to(ROOT)).replace(os.sep, ".")
        for top in PACKAGE_ROOTS
        for p in (ROOT / top).rglob("__init__.py")
    }
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    shipped = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("__init__.py")}
    assert packages <= shipped, f"packages missing from the wheel: {packages - shipped}"
    for data in (
        "xroad_hub/schemas/evidence-catalog.toml",
        "xroad_hub/schemas/evidence/identity.schema.json",
        "xroad_hub/demo/dopa.wsdl",
        "xroad_hub/config/demo-federation.toml",
    ):
        assert data in names

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    # The dependencies come from the running environment, after the venv's own packages (a
    # plain path entry: its .pth files, such as an editable install's finder, are not run).
    fresh_site = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                      cwd=tmp_path).strip()  # fmt: skip
    Path(fresh_site, "deps-from-test-env.pth").write_text(sysconfig.get_path("purelib") + "\n")

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert "wheel ok" in _run(python, "-c", CHECK, cwd=empty, env=env)
    xroad_hub = venv / "bin" / "xroad-hub"
    assert "usage" in _run(xroad_hub, "--help", cwd=empty, env=env)
    # Without --config and without ./config, the commands take the packaged demo federation.
    assert "files created in certs" in _run(xroad_hub, "pki", "init", cwd=empty, env=env)
    # The whole demo story (federation, case service, every exchange, offline verification)
    # runs from the installed wheel alone.
    story = _run(xroad_hub, "demo", "--workdir", tmp_path / "demo", cwd=empty, env=env)
    assert "DEMO OK" in story, story[-3000:]
