"""Flat-file adapter: legacy exports (fixed width, CSV/TSV, DBF) as read-only query services.

Modules, sans-I/O core first: ``charsets`` (TIS-620, cp874, UTF-8), ``values`` (field types:
numbers, zoned, Buddhist-Era dates, Thai ids), ``layout`` (layout files), ``fixedwidth``,
``csvfile``, ``dbf`` (formats), ``frame`` (records and batches), ``index`` (sorted key
indexes), ``loader`` (validate + index one export), ``dataset`` (one published version),
``api`` (the REST interface). The I/O shell: ``source`` (finding and reading exports),
``worker`` (loading in a separate process), ``settings`` and ``adapter`` (hot reload).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapter import FlatFileAdapter
    from .api import ServiceView, answer
    from .dataset import Dataset, DataVersion
    from .errors import ExportRejected, LayoutError, QueryError
    from .frame import Broken
    from .layout import Field, Layout, parse_layout
    from .loader import LoadResult, load_export
    from .settings import FlatFileSettings

# Where each exported name lives: imported on first use, so that reading the adapter's
# settings (the federation configuration does, for every CLI command) does not load the
# loaders, the index and the REST view.
_EXPORTS = {
    "Broken": "frame",
    "DataVersion": "dataset",
    "Dataset": "dataset",
    "ExportRejected": "errors",
    "Field": "layout",
    "FlatFileAdapter": "adapter",
    "FlatFileSettings": "settings",
    "Layout": "layout",
    "LayoutError": "errors",
    "LoadResult": "loader",
    "QueryError": "errors",
    "ServiceView": "api",
    "answer": "api",
    "load_export": "loader",
    "parse_layout": "layout",
}


__all__ = [
    "Broken",
    "DataVersion",
    "Dataset",
    "ExportRejected",
    "Field",
    "FlatFileAdapter",
    "FlatFileSettings",
    "Layout",
    "LayoutError",
    "LoadResult",
    "QueryError",
    "ServiceView",
    "answer",
    "load_export",
    "parse_layout",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
