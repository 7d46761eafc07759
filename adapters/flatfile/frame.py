"""How an export's bytes are cut into records, and the per-batch view the loader validates.

Theory of operation. The raw file is kept as one ``bytes`` object; a record is a span of it,
either arithmetic (fixed width and DBF: ``base + i * stride``) or listed (CSV rows and
fixed-width files whose lines are not all the same length: start/end pairs in an ``array``).
Nothing is decoded at load except what validation needs: whole columns are checked with one
regular-expression match over the joined column (C speed), and only a column that fails is
looked at value by value. Each format module yields ``Batch`` objects of consecutive records
with their raw columns; ``loader.py`` validates and indexes them without knowing the format.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["BATCH", "JOIN", "Batch", "Broken", "Framing"]

BATCH = 65536  # records per batch: bounds the loader's transient lists
# Joins a column of ``bytes`` for whole-column checks: never a byte of a valid number, date
# or id, nor of a CSV value outside quotes. A value that holds it anyway (a fixed-width or
# DBF field) fails those checks, or is caught by them counting it, and is looked at alone.
JOIN = b"\n"


@dataclass(frozen=True, slots=True, order=True)
class Broken:
    """One broken record: its 1-based line (DBF: record number), the field, the reason."""

    line: int
    field: str | None
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Framing:
    """Where record ``i`` lies in the raw bytes (see the module docstring)."""

    count: int
    base: int = 0
    stride: int = 0  # > 0: arithmetic spans of ``length`` bytes
    length: int = 0
    bounds: array[int] | None = None  # else: start, end pairs

    def span(self, i: int) -> tuple[int, int]:
        if self.stride:
            start = self.base + i * self.stride
            return start, start + self.length
        assert self.bounds is not None
        return self.bounds[2 * i], self.bounds[2 * i + 1]

    def to_wire(self) -> tuple[dict[str, int], bytes]:
        head = {"count": self.count, "base": self.base, "stride": self.stride}
        head["length"] = self.length
        return head, (self.bounds.tobytes() if self.bounds is not None else b"")

    @classmethod
    def from_wire(cls, head: dict[str, int], blob: bytes) -> Framing:
        bounds = None
        if not head["stride"]:
            bounds = array("Q")
            bounds.frombytes(blob)
        return cls(head["count"], head["base"], head["stride"], head["length"], bounds)


Column = Sequence[bytes] | Sequence[str]


@dataclass(slots=True)
class Batch:
    """Records ``first .. first + size - 1`` of one export, as the loader sees them."""

    first: int
    size: int
    column: Callable[[str], Column]  # field name -> raw values of this batch
    problems: dict[int, Broken] = field(default_factory=dict)  # recno -> framing problem
    # recno -> 1-based line, when lines and records do not correspond one to one
    line_of: Callable[[int], int] | None = None
    # Bytes the charset cannot decode are somewhere in the batch: text fields are to be
    # checked value by value (CSV; fixed width and DBF are checked over the whole file).
    suspect_text: bool = False
    # (field name, allowed bytes per byte position) -> whether every value of the batch is
    # made of them, found without building the column; None where records are not strided.
    fits: Callable[[str, tuple[bytes, ...]], bool] | None = None
    _joined: dict[str, bytes | None] = field(default_factory=dict)

    def line(self, recno: int) -> int:
        return self.line_of(recno) if self.line_of is not None else recno + 1

    def joined(self, name: str) -> bytes | None:
        """The values of a column of ``bytes`` joined by LF (``JOIN``), made once per batch
        for all the whole-column checks and the keys; None for a column of text, or none
        at all."""
        if name not in self._joined:
            col = self.column(name)
            ok = bool(col) and isinstance(col[0], bytes)
            self._joined[name] = JOIN.join(col) if ok else None  # type: ignore[arg-type]
        return self._joined[name]


_SAMPLE = 1024  # values looked at before hashing a whole column
_SEP = "\x1f"  # ASCII unit separator: joins a column for one whole-column match


def failing_values(
    column: Column, syntax: re.Pattern[str], syntax_b: re.Pattern[bytes]
) -> list[int]:
    """Positions in ``column`` whose value does not match ``syntax`` in full.

    Columns with few distinct values are judged value by distinct value. Otherwise, one
    fullmatch over the joined column; the separator count is checked too, so a value that
    itself contains the separator cannot make the joined text match by accident.
    """
    if not column:
        return []
    # A sample says whether the whole column is worth hashing: amounts of money are
    # nearly all distinct, and their set was built only to be thrown away. (A column of a
    # thousand values repeating still shows repeats in a sample of a thousand.)
    sample = column[:_SAMPLE]
    if len(set(sample)) * 10 < len(sample) * 9:
        distinct = set(column)
        if len(distinct) * 4 <= len(column):
            # Few distinct values (codes, small amounts): judge each once.
            pattern = syntax_b if isinstance(column[0], bytes) else syntax
            bad = {v for v in distinct if not pattern.fullmatch(v)}  # type: ignore[arg-type]
            return [i for i, v in enumerate(column) if v in bad] if bad else []
    if isinstance(column[0], bytes):
        sep_b = _SEP.encode()
        joined_b = sep_b.join(column)  # type: ignore[arg-type]
        whole_b = re.compile(
            b"(?:" + syntax_b.pattern + b")(?:" + sep_b + b"(?:" + syntax_b.pattern + b"))*"
        )
        if joined_b.count(sep_b) == len(column) - 1 and whole_b.fullmatch(joined_b):
            return []
        return [i for i, v in enumerate(column) if not syntax_b.fullmatch(v)]  # type: ignore[arg-type]
    joined = _SEP.join(column)  # type: ignore[arg-type]
    whole = re.compile(f"(?:{syntax.pattern})(?:{_SEP}(?:{syntax.pattern}))*")
    if joined.count(_SEP) == len(column) - 1 and whole.fullmatch(joined):
        return []
    return [i for i, v in enumerate(column) if not syntax.fullmatch(v)]  # type: ignore[arg-type]
