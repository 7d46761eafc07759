"""Loading one export: validate every record, build the key indexes, decide accept/reject.

Pure computation over ``bytes`` (no file access), so it runs the same inline, in a thread or
in the worker process (``worker.py``), and is tested with plain function calls. The result
travels from the worker as a JSON head plus the index blobs (``to_wire``/``from_wire``);
the serving process keeps its own copy of the file's bytes and checks by SHA-256 that both
processes looked at the same ones.

Rules: a record is broken when any published or key field fails its type (syntax, calendar
date, check digit, undecodable bytes, blank where required) or the framing (wrong length,
wrong column count). Broken records are reported (line, field, reason) and never served.
More than ``max_bad_share`` broken records, or none valid, rejects the whole export.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Container
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from .charsets import Charset
from .csvfile import CsvFrame, resolve_csv_fields
from .dbf import dbf_fields, dbf_framing, deletion_problems, parse_header
from .errors import ExportRejected
from .fixedwidth import FixedColumns, frame_fixed, text_problems
from .frame import JOIN, Batch, Broken, Column, Framing, failing_values
from .index import KeyIndex, build_index
from .layout import Field, Layout

__all__ = ["LoadResult", "from_wire", "load_export", "resolve_layout", "to_wire"]


@dataclass(slots=True)
class LoadResult:
    framing: Framing
    indexes: dict[str, KeyIndex]
    records: int  # physical records, deleted DBF records included
    valid: int  # served
    deleted: int = 0
    broken_count: int = 0
    broken: list[Broken] = field(default_factory=list)  # the first ``report_limit``, by line
    sha256: str = ""


def resolve_layout(buf: bytes, layout: Layout) -> Layout:
    """The layout with the file's own structure applied (CSV header, DBF field table)."""
    if layout.format == "csv":
        return layout.with_fields(resolve_csv_fields(buf, layout))
    if layout.format == "dbf":
        return layout.with_fields(dbf_fields(parse_header(buf), layout))
    return layout


class _Validator:
    """Checks the fields of one batch; remembers compiled patterns across batches."""

    def __init__(self, layout: Layout, keys: tuple[str, ...]) -> None:
        self.layout = layout
        self.keys = keys
        self.bytes_columns = layout.format in ("fixed", "dbf")
        self.checked = tuple(
            f for f in layout.fields if f.binary is None and (f.publish or f.name in keys)
        )
        self.syntax = {
            f.name: (re.compile(f.vtype.syntax), re.compile(f.vtype.syntax.encode()))
            for f in self.checked
            if f.vtype.syntax is not None
        }
        # Bytes allowed per position in a column that is valid without a closer look
        # (``ValueType.shape``): only fixed-width and DBF batches can tell (``Batch.fits``),
        # and only the syntax is settled so (dates and ids are converted all the same).
        self.shapes = {
            f.name: f.vtype.shape(f.width)
            for f in self.checked
            if self.bytes_columns
            and not f.vtype.semantic
            and f.vtype.shape is not None
            and f.width > 0
        }
        # Values already found valid, per field, across batches: dates repeat a lot, and
        # each distinct value is converted once. Bounded: ids are mostly distinct.
        self.known_good: dict[str, set[bytes | str]] = {f.name: set() for f in self.checked}

    def _reason(self, f: Field, raw: bytes | str) -> str:
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        try:
            f.vtype.convert(text)
        except ValueError as exc:
            return str(exc)
        return f"not a valid {f.type}"

    def batch(self, batch: Batch) -> dict[int, Broken]:
        bad = dict(batch.problems)
        charset = self.layout.encoding
        for f in self.checked:
            col = None
            first = batch.first

            def mark(i: int, reason: str, f: Field = f, first: int = first) -> None:
                recno = first + i
                if recno not in bad:
                    bad[recno] = Broken(batch.line(recno), f.name, reason)

            if f.type == "text":
                # Fixed-width and DBF columns of a multi-byte charset are always decoded
                # here; other columns only when the batch's bytes are already in doubt.
                if (self.bytes_columns and not charset.single_byte) or batch.suspect_text:
                    col = batch.column(f.name)
                    for i, reason in _undecodable(col, charset):
                        mark(i, reason)
            else:
                shape = self.shapes.get(f.name)
                if shape is not None and batch.fits is not None and batch.fits(f.name, shape):
                    pass  # every value fits the shape, so matches the syntax
                elif not f.vtype.semantic:
                    col = batch.column(f.name)
                    if not _joined_fits(f, col, batch.joined(f.name)):
                        syntax, syntax_b = self.syntax[f.name]
                        for i in failing_values(col, syntax, syntax_b):
                            mark(i, self._reason(f, col[i]))
                else:
                    # Dates and ids: converting each distinct value checks syntax and meaning
                    # at once (a column holds few distinct dates; ids are checked once each);
                    # a column of bytes, only the values its type's ``suspects`` points at.
                    col = batch.column(f.name)
                    suspects = None
                    joined = batch.joined(f.name)
                    if f.vtype.suspects is not None and joined is not None:
                        suspects = f.vtype.suspects(joined, len(col), JOIN)
                    if suspects is not None:
                        # Only the values that may be invalid are converted.
                        values = [col[i] for i in suspects]
                        refused = self._semantic(f, values)
                        for i, v in zip(suspects, values, strict=True):
                            if v in refused:
                                mark(i, refused[v])
                    else:
                        refused = self._semantic(f, col)
                        if refused:
                            for i, v in enumerate(col):
                                if v in refused:
                                    mark(i, refused[v])
            if f.required:
                col = col if col is not None else batch.column(f.name)
                if _has_blank(col, batch.joined(f.name)):
                    for i, v in enumerate(col):
                        if not v.strip(b" \x00" if isinstance(v, bytes) else " \x00"):  # type: ignore[arg-type]
                            mark(i, "required field is blank")
        return bad

    def _semantic(self, f: Field, col: Column) -> dict[bytes | str, str]:
        """Distinct values refused by the type's conversion (calendar dates, check digits)."""
        good = self.known_good[f.name]
        if good.issuperset(col):  # once the column's values repeat: one lookup each
            return {}
        refused: dict[bytes | str, str] = {}
        for v in set(col).difference(good):
            try:
                f.vtype.convert(v.decode("latin-1") if isinstance(v, bytes) else v)
            except ValueError as exc:
                refused[v] = str(exc)
            else:
                if len(good) < _KNOWN_GOOD_MAX:
                    good.add(v)
        return refused

    def joined_keys(self, batch: Batch, f: Field, skip: Container[int]) -> bytes | None:
        """The batch's canonical keys of a text or id field joined by LF (``_KeyColumn``),
        when its raw ``bytes`` values are their own canonical keys, found by a few passes
        over the joined column: no record of the batch is skipped, no value holds a line
        feed, none starts or ends with a space or NUL (nothing to strip), and ids are
        undashed (valid ones are then 13 digits or blank, which is empty). None: ask
        ``keys_of``, value by value."""
        if skip or f.type not in ("text", "citizen_id", "juristic_id"):
            return None
        joined = batch.joined(f.name)  # JOIN is LF, as _KeyColumn keeps them
        if joined is None or joined.count(b"\n") != batch.size - 1:
            return None
        for pad in (b" ", b"\x00"):
            if pad in joined and (
                b"\n" + pad in joined
                or pad + b"\n" in joined
                or joined.startswith(pad)
                or joined.endswith(pad)
            ):
                return None
        if f.type != "text" and b"-" in joined:
            return None
        return joined

    def keys_of(self, batch: Batch, f: Field, skip: Container[int]) -> list[bytes]:
        """Canonical keys of the batch's records; b"" for records that are not indexed."""
        col = batch.column(f.name)
        if f.type in ("citizen_id", "juristic_id"):
            # The canonical id is its 13 digits: strip, and convert only the odd dashed one.
            if col and isinstance(col[0], bytes):
                stripped = list(map(bytes.strip, col, repeat(b" \x00")))  # type: ignore[arg-type]
                if set(map(len, stripped)) == {13}:  # the usual column: used as it is
                    canon = stripped
                else:
                    canon = [k if len(k) == 13 else self._id_key(f, k) for k in stripped]
            else:
                canon = [
                    k.encode() if len(k) == 13 else self._id_key(f, k)
                    for k in (v.strip(" \x00") for v in col)  # type: ignore[union-attr]
                ]
        elif f.type == "text":
            # Text keys are the value's bytes in the file's own encoding, however the batch
            # holds it (CSV rows parsed by the csv module are text, plain CSV chunks bytes).
            if col and isinstance(col[0], bytes):
                canon = list(map(bytes.strip, col, repeat(b" \x00")))  # type: ignore[arg-type]
            else:
                codec = self.layout.encoding.codec
                canon = [
                    v.strip(" \x00").encode(codec, "surrogateescape")  # type: ignore[union-attr]
                    for v in col
                ]
        else:
            mapping: dict[Any, bytes] = {}
            for v in set(col):
                try:
                    text = v.decode("latin-1") if isinstance(v, bytes) else v
                    mapping[v] = f.vtype.key(text).encode()
                except ValueError:
                    mapping[v] = b""
            canon = [mapping[v] for v in col]
        for recno in skip:
            i = recno - batch.first  # type: ignore[operator]
            if 0 <= i < len(canon):
                canon[i] = b""
        return canon

    @staticmethod
    def _id_key(f: Field, raw: bytes | str) -> bytes:
        try:
            return f.vtype.key(raw.decode("latin-1") if isinstance(raw, bytes) else raw).encode()
        except ValueError:
            return b""


_KNOWN_GOOD_MAX = 200_000


def _joined_fits(f: Field, col: Column, joined: bytes | None) -> bool:
    """Whether every value of a numeric column is valid by its type's ``joined_fits``: the
    column joined once (``Batch.joined``, or here for text) and judged by a few C passes,
    not by a regular expression over a million values. False says nothing (the column is
    then matched value by value)."""
    fits = f.vtype.joined_fits
    if fits is None or not col:
        return False
    if joined is None:
        text = "\n".join(col)  # type: ignore[arg-type]
        if not text.isascii():
            return False
        joined = text.encode("ascii")
    # A value holding the separator would pass as two values: the count rules it out.
    return joined.count(JOIN) == len(col) - 1 and fits(joined, JOIN)


def _undecodable(col: Column, charset: Charset) -> list[tuple[int, str]]:
    """(position, reason) of the values of a text column that hold bytes the charset
    cannot decode: ``bytes`` values (fixed width, DBF, plain CSV chunks) are checked
    against the charset, text decoded with surrogate escapes for the escapes."""
    if not col:
        return []
    if not isinstance(col[0], bytes):
        return [
            (i, f"undecodable bytes for {charset.name}")
            for i, v in enumerate(col)
            if charset.bad_text.search(v)  # type: ignore[arg-type]
        ]
    if charset.invalid_byte is not None:
        return [
            (i, f"undecodable bytes for {charset.name}")
            for i, v in enumerate(col)
            if charset.invalid_byte.search(v)  # type: ignore[arg-type]
        ]
    out = []
    try:
        b"\x1f".join(col).decode(charset.codec)  # type: ignore[arg-type]
    except UnicodeDecodeError:
        for i, v in enumerate(col):
            try:
                v.decode(charset.codec)  # type: ignore[union-attr]
            except UnicodeDecodeError as exc:
                out.append((i, f"undecodable bytes at byte {exc.start + 1} for utf-8"))
    return out


class _KeyColumn:
    """The keys of one field, held between the batches as one joined ``bytes`` per batch.

    A batch's keys are slices of its parsed fields; kept as they are, the live keys of a
    million CSV rows sat among the freed objects of every other field, all over the heap,
    and the index's passes over them (hashing, packing, sorting) ran 2-3x slower than over
    keys allocated together. Joined, they take a tenth of the memory, and split at the end
    they are fresh objects side by side. A batch whose keys hold the separator itself
    (a quoted line break) keeps its list.
    """

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes | list[bytes]] = []

    def add(self, keys: list[bytes]) -> None:
        joined = b"\n".join(keys)
        self.parts.append(joined if joined.count(b"\n") == len(keys) - 1 else keys)

    def add_joined(self, joined: bytes) -> None:
        """Keys already joined by LF, none holding one (``_Validator.joined_keys``)."""
        self.parts.append(joined)

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        while self.parts:
            part = self.parts.pop(0)
            out.extend(part.split(b"\n") if isinstance(part, bytes) else part)
        return out


def _has_blank(col: Column, joined: bytes | None) -> bool:
    """Whether any value may be blank, at C speed: with spaces and NULs deleted from the
    joined column (``Batch.joined`` for ``bytes``), a blank value leaves two separators
    together (or one at an end). A value holding the separator itself may say yes wrongly,
    never no wrongly: the caller then looks at each value."""
    if not col:
        return False
    if joined is not None:
        left = joined.translate(None, b" \x00")
        return not left or JOIN * 2 in left or JOIN in (left[:1], left[-1:])
    text = "\x1f".join(col).replace(" ", "").replace("\x00", "")  # type: ignore[arg-type]
    return not text or "\x1f\x1f" in text or "\x1f" in (text[:1], text[-1:])


def _frame(buf: bytes, layout: Layout) -> tuple[Any, Framing | None, set[int]]:
    """Batches of the export, its framing when known up front, and deleted records."""
    if layout.format == "fixed":
        framing, problems = frame_fixed(buf, layout)
        for recno, b in text_problems(buf, framing, layout, layout.encoding).items():
            problems.setdefault(recno, b)
        return FixedColumns(buf, framing, layout.fields).batches(problems), framing, set()
    if layout.format == "dbf":
        header = parse_header(buf)
        framing = dbf_framing(buf, header)
        deleted, problems = deletion_problems(buf, framing)
        for recno, b in text_problems(buf, framing, layout, layout.encoding).items():
            if recno not in deleted:
                problems.setdefault(recno, b)
        return FixedColumns(buf, framing, layout.fields).batches(problems), framing, deleted
    return CsvFrame(buf, layout), None, set()


def load_export(
    buf: bytes,
    layout: Layout,
    keys: tuple[str, ...],
    *,
    max_bad_share: float = 0.01,
    report_limit: int = 1000,
) -> LoadResult:
    """Validate and index one export (``layout`` as configured; the file's header applies).

    Raises ``ExportRejected`` when the file as a whole cannot be published.
    """
    layout = resolve_layout(buf, layout)
    names = {f.name: f for f in layout.fields}
    missing = [k for k in keys if k not in names]
    if missing:
        raise ExportRejected(f"key field(s) {missing} are not fields of the file")
    key_fields = [names[k] for k in keys]
    for f in key_fields:
        if f.binary is not None:
            raise ExportRejected(f"binary DBF field {f.name!r} cannot be a key")
    validator = _Validator(layout, keys)
    batches, framing, deleted = _frame(buf, layout)
    csv_frame = batches if isinstance(batches, CsvFrame) else None
    if csv_frame is not None:
        batches = csv_frame.batches()

    broken: list[Broken] = []
    broken_count = 0
    # Per key field, its keys batch by batch, in record order (``_KeyColumn``).
    key_columns = {k: _KeyColumn() for k in keys}
    for batch in batches:
        bad = validator.batch(batch)
        if deleted:
            for recno in deleted.intersection(range(batch.first, batch.first + batch.size)):
                bad.pop(recno, None)
        broken_count += len(bad)
        if len(broken) < report_limit and bad:
            broken.extend(sorted(bad.values())[: report_limit - len(broken)])
        skip = bad if not deleted else {**bad, **dict.fromkeys(deleted)}
        for f in key_fields:
            joined = validator.joined_keys(batch, f, skip)
            if joined is not None:
                key_columns[f.name].add_joined(joined)
            else:
                key_columns[f.name].add(validator.keys_of(batch, f, skip))
        # Freed before the next batch is made, not after (CsvFrame.batches): the values
        # of one batch at a time, the next in the memory of the last.
        del batch
    if csv_frame is not None:
        framing = csv_frame.framing()
    assert framing is not None
    records = framing.count
    live = records - len(deleted)
    valid = live - broken_count
    if live and broken_count / live > max_bad_share:
        raise ExportRejected(
            f"{broken_count} of {live} records are broken ({broken_count / live:.2%}), more "
            f"than the accepted {max_bad_share:.2%}",
            broken=list(broken),
            broken_count=broken_count,
        )
    if valid <= 0:
        raise ExportRejected(
            "the export holds no valid record", broken=list(broken), broken_count=broken_count
        )
    indexes = {}
    for name, column in key_columns.items():
        indexes[name] = build_index(column.keys())
    return LoadResult(
        framing=framing,
        indexes=indexes,
        records=records,
        valid=valid,
        deleted=len(deleted),
        broken_count=broken_count,
        broken=broken,
        sha256=hashlib.sha256(buf).hexdigest(),
    )


# ----------------------------------------------------------------------------------------
# Wire form between the worker process and the serving process
# ----------------------------------------------------------------------------------------


def to_wire(result: LoadResult | ExportRejected) -> bytes:
    """``8-byte head length | JSON head | framing blob | index blobs``."""
    if isinstance(result, ExportRejected):
        head: dict[str, Any] = {
            "ok": False,
            "reason": result.reason,
            "broken_count": result.broken_count,
            "broken": [b.as_dict() for b in result.broken],  # type: ignore[attr-defined]
        }
        blobs: list[bytes] = []
    else:
        fhead, fblob = result.framing.to_wire()
        head = {
            "ok": True,
            "framing": fhead,
            "records": result.records,
            "valid": result.valid,
            "deleted": result.deleted,
            "broken_count": result.broken_count,
            "broken": [b.as_dict() for b in result.broken],
            "sha256": result.sha256,
            "indexes": [
                {"field": k, "width": ix.width, "bytes": ix.nbytes}
                for k, ix in result.indexes.items()
            ],
            "framing_bytes": len(fblob),
        }
        blobs = [fblob, *(ix.blob for ix in result.indexes.values())]
    data = json.dumps(head).encode()
    return len(data).to_bytes(8, "big") + data + b"".join(blobs)


def from_wire(data: bytes) -> LoadResult:
    """The worker's answer; a rejection is raised as ``ExportRejected``."""
    n = int.from_bytes(data[:8], "big")
    head = json.loads(data[8 : 8 + n])
    broken = [Broken(b["line"], b["field"], b["reason"]) for b in head["broken"]]
    if not head["ok"]:
        raise ExportRejected(head["reason"], broken=list(broken), broken_count=head["broken_count"])
    pos = 8 + n
    framing = Framing.from_wire(head["framing"], data[pos : pos + head["framing_bytes"]])
    pos += head["framing_bytes"]
    indexes = {}
    for ix in head["indexes"]:
        indexes[ix["field"]] = KeyIndex(ix["width"], data[pos : pos + ix["bytes"]])
        pos += ix["bytes"]
    return LoadResult(
        framing=framing,
        indexes=indexes,
        records=head["records"],
        valid=head["valid"],
        deleted=head["deleted"],
        broken_count=head["broken_count"],
        broken=broken,
        sha256=head["sha256"],
    )
