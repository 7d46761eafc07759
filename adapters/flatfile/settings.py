"""A flat-file service's options (the ``[[node.service]]`` table with ``adapter = "flatfile"``).

    source           export file, or directory of dated exports (newest name wins)
    pattern          directory sources: glob of export names (default "*")
    layout           layout file (schemas/*.layout.toml); optional for CSV with a header
                     and for DBF, which then publish every column as the file describes it
    format, encoding override or replace the layout's
    keys             indexed fields; queries may use only these (the first one is the key
                     of GET /records/{key}); default: the layout's keys
    max_bad_share    share of broken records above which a new file is rejected (0.01)
    reload_interval  seconds between checks for a new export (5; 0 = load once)
    settle_seconds   a changed file is loaded only once it is this old (1): a file still
                     being written in place keeps changing and is not read half-way
    page_size, max_page_size, max_candidates   paging and query-breadth limits
    loader           "auto" (default), "inline" or "process": where a file is validated and
                     indexed; "auto" uses a worker process from 4 MiB up, so a big load never
                     holds the node's interpreter lock for longer than a request can wait
    report_limit     broken records kept per version for GET /_report (1000)

Relative paths are resolved against ``base_dir`` (default: the working directory, like the
CLI's own defaults); ``xroad-hub up`` first makes a relative ``source`` absolute under its
data directory (exports are runtime data, like message logs).
``generate`` and ``seed`` are read by the demo runner (``xroad_hub/runner.py``), not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LayoutError
from .layout import Layout, check_field_name, load_layout_file, parse_layout

__all__ = ["OPTIONS", "FlatFileSettings", "resolve_path"]

OPTIONS = frozenset({
    "source", "pattern", "layout", "format", "encoding", "keys", "max_bad_share",
    "reload_interval", "settle_seconds", "page_size", "max_page_size", "max_candidates",
    "loader", "report_limit", "generate", "seed", "description",
})  # fmt: skip
PROCESS_THRESHOLD = 4 * 1024 * 1024


def resolve_path(value: str, base_dir: Path | None) -> Path:
    """An option's path: absolute as given, otherwise relative to ``base_dir``."""
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _number(
    options: Mapping[str, Any], name: str, default: float, low: float, high: float
) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise LayoutError(f"{name} must be a number from {low:g} to {high:g}, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class FlatFileSettings:
    source: Path
    pattern: str | None  # set: ``source`` is a directory of exports
    layout_data: dict[str, Any]  # parsed layout TOML with the service's overrides merged in
    layout: Layout
    keys: tuple[str, ...]
    max_bad_share: float = 0.01
    reload_interval: float = 5.0
    settle_seconds: float = 1.0
    page_size: int = 20
    max_page_size: int = 100
    max_candidates: int = 10_000
    loader: str = "auto"
    report_limit: int = 1000
    description: str = ""

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], base_dir: Path | None = None
    ) -> FlatFileSettings:
        """Validate a service's options; ``LayoutError`` names what to change."""
        unknown = set(options) - OPTIONS
        if unknown:
            raise LayoutError(f"unknown option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
        if not isinstance(options.get("source"), str) or not options["source"]:
            raise LayoutError("source (the export file or directory) is required")
        source = resolve_path(options["source"], base_dir)
        pattern = options.get("pattern")
        if pattern is not None and (not isinstance(pattern, str) or "/" in pattern or not pattern):
            raise LayoutError("pattern must be a file-name glob such as 'titledeeds-*.txt'")
        data: dict[str, Any] = {}
        if options.get("layout") is not None:
            data = load_layout_file(resolve_path(str(options["layout"]), base_dir))
        overrides = {k: options.get(k) for k in ("format", "encoding")}
        if options.get("keys") is not None:
            overrides["keys"] = options["keys"]
        layout = parse_layout(data, overrides)
        keys = layout.keys
        if not keys:
            raise LayoutError("keys must name at least one field to index (in the layout or here)")
        for k in keys:
            check_field_name(k, "key")
        loader = options.get("loader", "auto")
        if loader not in ("auto", "inline", "process"):
            raise LayoutError("loader must be 'auto', 'inline' or 'process'")
        page_size = int(_number(options, "page_size", 20, 1, 10_000))
        return cls(
            source=source,
            pattern=pattern,
            layout_data={**data, **{k: v for k, v in overrides.items() if v is not None}},
            layout=layout,
            keys=keys,
            max_bad_share=_number(options, "max_bad_share", 0.01, 0, 1),
            reload_interval=_number(options, "reload_interval", 5, 0, 86_400),
            settle_seconds=_number(options, "settle_seconds", 1, 0, 3_600),
            page_size=page_size,
            max_page_size=int(
                _number(options, "max_page_size", max(100, page_size), page_size, 10_000)
            ),
            max_candidates=int(_number(options, "max_candidates", 10_000, 1, 10_000_000)),
            loader=loader,
            report_limit=int(_number(options, "report_limit", 1000, 0, 1_000_000)),
            description=str(options.get("description", "")),
        )
