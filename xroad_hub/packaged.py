"""Files shipped inside the package: the repository's ``schemas/`` and ``config/``
directories, installed as ``xroad_hub.schemas`` and ``xroad_hub.config`` (pyproject.toml maps
them), found with importlib.resources so that an installed wheel reads the same files as a
source checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["demo_federation", "packaged_path", "schema_file", "schemas_dir"]

# Where a source checkout keeps its files, for relative paths found nowhere else.
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def schema_file(name: str) -> Path:
    """The file ``name`` (e.g. ``evidence-catalog.toml``) of ``schemas/``.

    A real path: wheels are installed unpacked, and the catalog reads schema files beside it.
    """
    return Path(str(resources.files("xroad_hub.schemas").joinpath(name)))


def schemas_dir() -> Path:
    """The package's ``schemas/`` directory itself (public layouts and descriptions)."""
    return Path(str(resources.files("xroad_hub.schemas")))


def demo_federation() -> Path:
    """The demo federation file (``config/demo-federation.toml``) shipped with the package."""
    return Path(str(resources.files("xroad_hub.config").joinpath("demo-federation.toml")))


def packaged_path(value: str) -> str:
    """The federation file documents relative layout/WSDL/OpenAPI paths as relative to the
    directory xroad-hub runs in (the repository root); run elsewhere, a path missing there is
    taken from the package's schemas (``schemas/...``, installed with the package) or the
    source checkout instead."""
    path = Path(value)
    if path.is_absolute() or "://" in value:
        return value
    here = Path.cwd() / path
    if here.exists():
        return str(here)
    if path.parts[0] == "schemas" and len(path.parts) > 1:
        return str(schema_file(str(Path(*path.parts[1:]))))
    return str(_SOURCE_ROOT / path)
