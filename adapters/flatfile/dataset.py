"""One published version of an export: its bytes, indexes and provenance. Immutable.

The adapter swaps whole ``Dataset`` objects: a request that started on one version finishes
on it, even while the next version is being loaded or after it replaced this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .csvfile import CsvReader
from .dbf import BINARY_DECODERS
from .errors import QueryError
from .fixedwidth import FixedReader
from .frame import Broken
from .index import KeyIndex
from .layout import Field, Layout
from .loader import LoadResult

__all__ = ["DataVersion", "Dataset", "Page"]


@dataclass(frozen=True, slots=True)
class DataVersion:
    """Which file, with which content, loaded when: named in every answer."""

    file: str  # the file's name only: where the agency keeps it is not the client's business
    sha256: str
    modified_at: str  # ISO 8601, UTC
    loaded_at: str  # ISO 8601, UTC
    size: int
    records: int  # served (valid) records
    broken: int

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "modified_at": self.modified_at,
            "loaded_at": self.loaded_at,
            "size": self.size,
            "records": self.records,
            "broken": self.broken,
        }


@dataclass(frozen=True, slots=True)
class Page:
    records: list[dict[str, object]]
    total: int
    offset: int
    limit: int


class Dataset:
    """Raw bytes + record spans + key indexes; records are decoded only when answered."""

    def __init__(
        self, buf: bytes, layout: Layout, result: LoadResult, version: DataVersion
    ) -> None:
        self.buf = buf
        self.layout = layout  # resolved: the file's header applied
        self.result = result
        self.version = version
        self.framing = result.framing
        self.indexes: dict[str, KeyIndex] = result.indexes
        self.fields: dict[str, Field] = {f.name: f for f in layout.fields}
        self._reader: FixedReader | CsvReader = (
            CsvReader(layout)
            if layout.format == "csv"
            else FixedReader(layout, dict(BINARY_DECODERS))  # type: ignore[arg-type]
        )
        # Text keys are indexed in the file's own encoding, so the million keys are never
        # decoded; query values are encoded the same way instead.
        self._key_codec = layout.encoding.codec

    @property
    def nbytes(self) -> int:
        """Memory this version holds: the file's bytes, its indexes and its record spans."""
        bounds = self.framing.bounds
        spans = len(bounds) * bounds.itemsize if bounds is not None else 0
        return len(self.buf) + sum(ix.nbytes for ix in self.indexes.values()) + spans

    @property
    def broken(self) -> list[Broken]:
        return self.result.broken

    def record(self, recno: int) -> dict[str, object]:
        start, end = self.framing.span(recno)
        return self._reader.decode(self.buf[start:end])

    def key(self, name: str, value: str) -> bytes:
        """The canonical index key of a query value; QueryError if the value is invalid."""
        f = self.fields[name]
        if f.type == "text":
            try:
                return value.strip(" \x00").encode(self._key_codec)
            except UnicodeEncodeError:
                return b"\xff" * (self.indexes[name].width + 1)  # cannot be in the file
        try:
            return f.vtype.key(value).encode()
        except ValueError as exc:
            raise QueryError(
                400, "invalid_value", f"{name}: {exc}", field=name, type=f.type
            ) from None

    def query(self, criteria: dict[str, str], offset: int, limit: int, max_candidates: int) -> Page:
        """Records matching every ``field=value`` of ``criteria`` (all indexed fields).

        One field: the page is cut straight out of the index. Several: the field with the
        fewest matches gives the candidates, the others' record sets are intersected with
        them; a query whose narrowest field still matches more than ``max_candidates``
        records is refused rather than materialised.
        """
        keys = {name: self.key(name, value) for name, value in criteria.items()}
        counts = {name: self.indexes[name].count(k) for name, k in keys.items()}
        narrowest = min(counts, key=counts.__getitem__)
        index = self.indexes[narrowest]
        if len(keys) == 1:
            total = counts[narrowest]
            recnos = index.records(keys[narrowest], offset, offset + limit)
        else:
            if counts[narrowest] > max_candidates:
                raise QueryError(
                    400,
                    "query_too_broad",
                    f"{narrowest}={criteria[narrowest]!r} alone matches {counts[narrowest]} "
                    f"records; combine it with a more selective field (at most "
                    f"{max_candidates} candidates)",
                )
            matches = set(index.records(keys[narrowest]))
            for name, k in keys.items():
                if name != narrowest and matches:
                    if counts[name] <= max_candidates:
                        matches.intersection_update(self.indexes[name].records(k))
                    else:
                        matches = {r for r in matches if self._holds(r, name, k)}
            ordered = sorted(matches)
            total = len(ordered)
            recnos = ordered[offset : offset + limit]
        return Page([self.record(r) for r in recnos], total, offset, limit)

    def _holds(self, recno: int, name: str, key: bytes) -> bool:
        """Whether record ``recno`` has canonical ``key`` in field ``name`` (candidates only)."""
        start, end = self.framing.span(recno)
        f = self.fields[name]
        raw: Any = self._reader.raw(self.buf[start:end], f)
        if f.type == "text":
            text = raw.decode(self._key_codec) if isinstance(raw, bytes) else raw
            return text.strip(" \x00").encode(self._key_codec) == key
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        return f.vtype.key(text).encode() == key
