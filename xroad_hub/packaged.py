"""Files shipped inside the package: the repository's ``schemas/`` directory, installed as
``xroad_hub.schemas`` (pyproject.toml maps it), found with importlib.resources so that an
installed wheel reads the same files as a source checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["schema_file"]


def schema_file(name: str) -> Path:
    """The file ``name`` (e.g. ``evidence-catalog.toml``) of ``schemas/``.

    A real path: wheels are installed unpacked, and the catalog reads schema files beside it.
    """
    return Path(str(resources.files("xroad_hub.schemas").joinpath(name)))
