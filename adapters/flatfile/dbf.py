"""dBase III / FoxPro tables (``.dbf``): header, fields and record decoding, sans-I/O.

File structure: a 32-byte header (version, last update, record count, header length,
record length, language driver id at byte 29), 32-byte field descriptors ended by 0x0D, then
fixed-length records, each starting with a deletion flag (``' '`` live, ``'*'`` deleted), and
an optional 0x1A end-of-file byte. Character fields are decoded with the encoding declared
for the service (the language driver byte is too often wrong in exported files to trust).

Published field types: C text, N integer/decimal, F decimal, D date (YYYYMMDD, C.E.),
L logical, and FoxPro's binary I (int32), Y (currency, 4 implied decimals), B (double) and
T (date-time). Memo and general fields (M, G, P, W, Q, V) live in other files and are not
published. A layout may rename fields, pick a subset, or give a field a stricter type (for
example a C field holding citizen ids).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from decimal import Decimal

from .errors import ExportRejected
from .frame import Broken, Framing
from .layout import Field, Layout
from .values import dbf_datetime, value_type

__all__ = [
    "BINARY_DECODERS",
    "DbfField",
    "DbfHeader",
    "dbf_fields",
    "dbf_framing",
    "deletion_problems",
    "parse_header",
]

_UNPUBLISHED = set("MGPWQV0")


@dataclass(frozen=True, slots=True)
class DbfField:
    name: str
    type: str
    offset: int  # from the start of the record, after the deletion flag
    length: int
    decimals: int


@dataclass(frozen=True, slots=True)
class DbfHeader:
    version: int
    records: int
    header_length: int
    record_length: int
    language_driver: int
    fields: tuple[DbfField, ...]


def parse_header(buf: bytes) -> DbfHeader:
    """The header of a DBF file; a malformed one rejects the file."""
    if len(buf) < 33:
        raise ExportRejected("file is too short to be a DBF table")
    version = buf[0]
    records, header_length, record_length = struct.unpack_from("<IHH", buf, 4)
    if header_length < 33 or header_length > len(buf) or record_length < 1:
        raise ExportRejected("DBF header is malformed (header or record length)")
    fields = []
    offset = 1  # the deletion flag
    pos = 32
    while pos + 32 <= header_length and buf[pos] != 0x0D:
        raw = buf[pos : pos + 32]
        name = raw[:11].split(b"\x00", 1)[0].decode("ascii", "replace").strip()
        ftype = chr(raw[11])
        length, decimals = raw[16], raw[17]
        fields.append(DbfField(name, ftype, offset, length, decimals))
        offset += length
        pos += 32
    if pos >= header_length or buf[pos] != 0x0D:
        raise ExportRejected("DBF field descriptors are not terminated (0x0D)")
    if offset != record_length:
        raise ExportRejected(
            f"DBF fields add up to {offset} bytes but the header says records are {record_length}"
        )
    return DbfHeader(version, records, header_length, record_length, buf[29], tuple(fields))


def dbf_framing(buf: bytes, header: DbfHeader) -> Framing:
    """Record spans; a file shorter than its header promises is half-written."""
    need = header.header_length + header.records * header.record_length
    if len(buf) < need:
        raise ExportRejected(
            f"DBF file has {len(buf)} bytes but its header promises {header.records} records "
            f"({need} bytes): half-written"
        )
    return Framing(header.records, header.header_length, header.record_length, header.record_length)


def _output_name(name: str) -> str:
    out = re.sub(r"[^a-z0-9_]", "_", name.lower()) or "field"
    return "_" + out if out[0].isdigit() else out


def _published_type(f: DbfField) -> tuple[str, str | None, int, str]:
    """(value type, binary letter, scale, date format) of a DBF field type."""
    if f.type == "C":
        return "text", None, 0, ""
    if f.type == "N":
        return ("integer" if f.decimals == 0 else "decimal"), None, 0, ""
    if f.type == "F":
        return "decimal", None, 0, ""
    if f.type == "D":
        return "date", None, 0, "YYYYMMDD"
    if f.type == "L":
        return "boolean", None, 0, ""
    if f.type in ("I", "Y", "B", "T") and f.length == (4 if f.type == "I" else 8):
        return "binary", f.type, 0, ""
    raise ValueError(f.type)


def dbf_fields(header: DbfHeader, layout: Layout) -> tuple[Field, ...]:
    """Fields to validate and publish: the header's, renamed/retyped by the layout if any."""
    by_name = {f.name.upper(): f for f in header.fields}
    if not layout.fields:
        chosen = []
        for f in header.fields:
            if f.type in _UNPUBLISHED:
                continue
            try:
                vt, binary, _, fmt = _published_type(f)
            except ValueError:
                continue
            chosen.append(
                Field(
                    _output_name(f.name),
                    vt if binary is None else "text",
                    value_type(vt if binary is None else "text", date_format=fmt or "YYYYMMDD"),
                    start=f.offset,
                    width=f.length,
                    column=f.name,
                    binary=binary,
                )
            )
        return tuple(chosen)
    out = []
    for lf in layout.fields:
        wanted = (lf.column or lf.name).upper()
        f = by_name.get(wanted)
        if f is None:
            raise ExportRejected(f"the DBF table has no field {wanted!r} (field {lf.name!r})")
        try:
            vt, binary, _, _ = _published_type(f)
        except ValueError:
            raise ExportRejected(
                f"DBF field {f.name} of type {f.type} cannot be published"
            ) from None
        out.append(replace(lf, start=f.offset, width=f.length, column=f.name, binary=binary))
    return tuple(out)


def deletion_problems(buf: bytes, framing: Framing) -> tuple[set[int], dict[int, Broken]]:
    """Deleted records (skipped, not broken) and records whose flag byte is neither."""
    flags = buf[framing.base : framing.base + framing.count * framing.stride : framing.stride]
    deleted = {m.start() for m in re.finditer(rb"\*", flags)}
    problems = {
        m.start(): Broken(m.start() + 1, None, f"deletion flag is 0x{flags[m.start()]:02X}")
        for m in re.finditer(rb"[^ *]", flags)
    }
    return deleted, problems


def _currency(raw: bytes) -> str:
    return format(Decimal(int.from_bytes(raw, "little", signed=True)).scaleb(-4), "f")


BINARY_DECODERS = {
    "I": lambda raw: int.from_bytes(raw, "little", signed=True),
    "Y": _currency,
    "B": lambda raw: struct.unpack("<d", raw)[0],
    "T": dbf_datetime,
}
