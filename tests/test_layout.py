"""The package's wings import each other only as ARCHITECTURE.md says (no cycle, a pure core).

Every import statement of xroad_hub/ and adapters/ is read (function-level imports too), and
each is mapped to the wing of the module it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT_MODULES = {"errors", "logs", "pki", "streams", "packaged", "privatefile", "listen"}

# Which wings each wing may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "root": set(),
    "protocol": {"root"},
    "messagelog": {"protocol", "root"},
    "adapters": {"protocol", "root"},
    "config": {"adapters", "protocol", "root"},
    "node": {"protocol", "messagelog", "adapters", "config", "root"},
    "central": {"protocol", "messagelog", "node", "config", "root"},
    "dev": {"protocol", "messagelog", "config", "root"},
    "demo": {"*"},
    "cli": {"*"},
}


def _wing(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "adapters":
        return "adapters"
    if len(parts) == 1 or parts[1] == "__init__":
        return "root"
    name = parts[1]
    if name == "federation":
        return "config"
    if name in ("cli", "__main__"):
        return "cli"
    if name in ROOT_MODULES:
        return "root"
    return name


def _imports() -> list[tuple[str, str, str]]:
    """(importing file, imported module, its wing) for every import of the two packages."""
    found = []
    for base in ("xroad_hub", "adapters"):
        for path in (REPO / base).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            package = list(rel.parts[:-1])
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        prefix = package[: len(package) - node.level + 1]
                        names = [".".join([*prefix, node.module] if node.module else prefix)]
                    else:
                        names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in ("xroad_hub", "adapters"):
                        found.append((str(rel), name, _wing(name)))
    return found


def test_wings_import_only_what_architecture_allows() -> None:
    wrong = []
    for file, module, target in _imports():
        source = _wing(file.replace("/", "."))
        allowed = ALLOWED[source]
        if target != source and "*" not in allowed and target not in allowed:
            wrong.append(f"{file} ({source}) imports {module} ({target})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_imports() -> None:
    # A checker that found nothing would pass anything.
    imports = _imports()
    assert len(imports) > 300
    assert ("xroad_hub/node/provider", "xroad_hub.protocol.access", "protocol") in imports
