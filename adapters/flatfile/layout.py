"""Layout descriptions of legacy exports (``schemas/*.layout.toml``), sans-I/O.

A layout names the format, the declared encoding and every field: for fixed-width records
its 1-based start byte and width (as printed in mainframe record descriptions), for CSV the
header column (or position), for DBF optional type overrides of the header's own fields.
``schemas/README.md`` documents the file format; ``parse_layout`` is its only reader.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .charsets import Charset, charset
from .errors import LayoutError
from .values import FIELD_TYPES, ValueType, value_type

__all__ = ["FORMATS", "Field", "Layout", "load_layout_file", "parse_layout"]

FORMATS = ("fixed", "csv", "tsv", "dbf")
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_TERMINATORS = {"auto": None, "lf": b"\n", "crlf": b"\r\n", "none": b""}


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str
    vtype: ValueType = field(repr=False, compare=False)
    start: int = 0  # 0-based byte offset in the record (fixed width, DBF)
    width: int = 0
    column: str | None = None  # CSV header name / DBF field name
    position: int | None = None  # CSV 0-based column when the file has no header
    required: bool = False
    publish: bool = True
    binary: str | None = None  # DBF binary type letter (I, Y, B, T), decoded by dbf.py


@dataclass(frozen=True, slots=True)
class Layout:
    format: str
    encoding: Charset
    fields: tuple[Field, ...]  # empty: take every column from the file's header (CSV, DBF)
    name: str = ""
    description: str = ""
    record_length: int = 0  # fixed width: bytes per record without the terminator
    terminator: bytes | None = None  # fixed width: None = detect (LF or CRLF)
    delimiter: str = ","
    quotechar: str = '"'
    header: bool = True
    keys: tuple[str, ...] = ()
    require_final_newline: bool = True

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def with_fields(self, fields: tuple[Field, ...]) -> Layout:
        return replace(self, fields=fields)


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise LayoutError(f"{what} must be an integer >= {minimum}, not {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise LayoutError(f"{what} must be a string, not {value!r}")
    return value


def check_field_name(name: str, what: str = "field name") -> str:
    """Field names appear in query strings and JSON: lower-case identifiers only."""
    if not _NAME.fullmatch(name):
        raise LayoutError(f"{what} {name!r} must match [a-z_][a-z0-9_]* (at most 63 characters)")
    return name


def make_field(spec: Mapping[str, Any], fmt: str, index: int) -> Field:
    """One ``[[field]]`` table of a layout."""
    where = f"field #{index + 1}"
    known = {
        "name", "type", "start", "width", "column", "position", "scale", "format", "era",
        "required", "publish", "description",
    }  # fmt: skip
    unknown = set(spec) - known
    if unknown:
        raise LayoutError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    name = check_field_name(_str(spec.get("name"), f"{where}: name"), f"{where}: name")
    where = f"field {name!r}"
    type_name = _str(spec.get("type", "text"), f"{where}: type")
    if type_name not in FIELD_TYPES:
        raise LayoutError(f"{where}: type {type_name!r} is unknown; use one of {FIELD_TYPES}")
    vtype = value_type(
        type_name,
        scale=_int(spec.get("scale", 0), f"{where}: scale"),
        date_format=_str(spec.get("format", "YYYYMMDD"), f"{where}: format"),
        era=_str(spec.get("era", "CE"), f"{where}: era"),
    )
    start = width = 0
    if fmt == "fixed":
        start = _int(spec.get("start"), f"{where}: start (1-based byte position)", 1) - 1
        width = _int(spec.get("width"), f"{where}: width", 1)
    position = spec.get("position")
    if position is not None:
        position = _int(position, f"{where}: position (1-based column)", 1) - 1
    column = spec.get("column")
    if column is not None:
        column = _str(column, f"{where}: column")
    return Field(
        name=name,
        type=type_name,
        vtype=vtype,
        start=start,
        width=width,
        column=column,
        position=position,
        required=bool(spec.get("required", False)),
        publish=bool(spec.get("publish", True)),
    )


def parse_layout(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Layout:
    """A layout from its parsed TOML; ``overrides`` (format, encoding, keys) come from the
    service's own options and win over the file."""
    merged = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    known = {
        "name", "description", "format", "encoding", "record_length", "terminator",
        "delimiter", "quotechar", "header", "keys", "require_final_newline", "field",
    }  # fmt: skip
    unknown = set(merged) - known
    if unknown:
        raise LayoutError(f"unknown layout setting(s) {sorted(unknown)}; known: {sorted(known)}")
    fmt = _str(merged.get("format", ""), "format")
    if fmt not in FORMATS:
        raise LayoutError(f"format must be one of {FORMATS}, not {fmt!r}")
    if "encoding" not in merged:
        raise LayoutError("encoding must be declared (tis-620, cp874 or utf-8)")
    enc = charset(_str(merged["encoding"], "encoding"))
    raw_fields = merged.get("field", [])
    if not isinstance(raw_fields, list):
        raise LayoutError("field must be an array of tables ([[field]])")
    fields = tuple(make_field(f, fmt, i) for i, f in enumerate(raw_fields))
    names = [f.name for f in fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LayoutError(f"field names must be unique: {dupes}")

    record_length = 0
    terminator: bytes | None = None
    if fmt == "fixed":
        if not fields:
            raise LayoutError("a fixed-width layout must describe its fields ([[field]])")
        end = max(f.start + f.width for f in fields)
        record_length = _int(merged.get("record_length", end), "record_length", 1)
        if end > record_length:
            raise LayoutError(f"fields end at byte {end}, beyond record_length {record_length}")
        term = _str(merged.get("terminator", "auto"), "terminator")
        if term not in _TERMINATORS:
            raise LayoutError(f"terminator must be one of {sorted(_TERMINATORS)}")
        terminator = _TERMINATORS[term]
    delimiter = _str(merged.get("delimiter", "\t" if fmt == "tsv" else ","), "delimiter")
    quotechar = _str(merged.get("quotechar", '"'), "quotechar")
    if len(delimiter) != 1 or len(quotechar) != 1 or delimiter == quotechar:
        raise LayoutError("delimiter and quotechar must be two different single characters")
    header = bool(merged.get("header", True))
    if fmt in ("csv", "tsv") and not header:
        if not fields:
            raise LayoutError("a CSV file without a header needs its fields in the layout")
        fields = tuple(
            f if f.position is not None else replace(f, position=i) for i, f in enumerate(fields)
        )
    keys = merged.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise LayoutError("keys must be a list of field names")
    for k in keys:
        check_field_name(k, "key")
    if fields:
        missing = [k for k in keys if k not in names]
        if missing:
            raise LayoutError(f"keys {missing} are not fields of the layout")
    return Layout(
        format="csv" if fmt == "tsv" else fmt,
        encoding=enc,
        fields=fields,
        name=_str(merged.get("name", ""), "name"),
        description=_str(merged.get("description", ""), "description"),
        record_length=record_length,
        terminator=terminator,
        delimiter=delimiter,
        quotechar=quotechar,
        header=header,
        keys=tuple(keys),
        require_final_newline=bool(merged.get("require_final_newline", True)),
    )


def load_layout_file(path: Path) -> dict[str, Any]:
    """The parsed TOML of a layout file (parse it with ``parse_layout``)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LayoutError(f"cannot read layout {path}: {exc}") from exc
