"""Loading exports, sans-I/O: fixed width, CSV/TSV, DBF; broken records; whole-file rejection."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from adapters.flatfile.dataset import Dataset, DataVersion
from adapters.flatfile.errors import ExportRejected
from adapters.flatfile.fixedwidth import FixedColumns
from adapters.flatfile.layout import parse_layout
from adapters.flatfile.loader import LoadResult, from_wire, load_export, resolve_layout, to_wire
from xroad_hub.protocol.thaiid import with_check_digit

CIDS = [with_check_digit(f"1101700203{i:02d}") for i in range(20)]
NAME = "พิมพ์ชนก สุขสวัสดิ์"  # combining vowels and tone marks must survive byte for byte

FIXED: dict[str, Any] = {
    "format": "fixed",
    "encoding": "tis-620",
    "record_length": 60,
    "keys": ["deed_no", "owner"],
    "field": [
        {"name": "deed_no", "start": 1, "width": 6, "required": True},
        {"name": "owner", "start": 7, "width": 13, "type": "citizen_id"},
        {"name": "name", "start": 20, "width": 24},
        {"name": "issued", "start": 44, "width": 8, "type": "date", "era": "BE"},
        {"name": "value", "start": 52, "width": 6, "type": "zoned", "scale": 2},
        {"name": "rai", "start": 58, "width": 3, "type": "integer"},
    ],
}


def fixed_record(
    i: int, *, owner: str | None = None, issued: str = "25670115", name: str = NAME
) -> bytes:
    rec = (
        f"{i:06d}".encode()
        + (owner or CIDS[i % len(CIDS)]).encode()
        + name.encode("tis-620").ljust(24)
        + issued.encode()
        + b"01234E"
        + b"  7"
    )
    assert len(rec) == 60
    return rec


def load(data: bytes, layout: dict[str, Any], **kw: Any) -> tuple[LoadResult, Dataset]:
    lay = parse_layout(layout)
    result = load_export(data, lay, lay.keys, **kw)
    version = DataVersion("x", result.sha256, "", "", len(data), result.valid, result.broken_count)
    return result, Dataset(data, resolve_layout(data, lay), result, version)


def test_fixed_width_crlf_fast_path_and_exact_thai() -> None:
    data = b"".join(fixed_record(i) + b"\r\n" for i in range(10))
    result, ds = load(data, FIXED)
    assert result.framing.stride == 62 and result.valid == 10 and result.broken_count == 0
    rec = ds.record(3)
    assert rec == {
        "deed_no": "000003",
        "owner": CIDS[3],
        "name": NAME,
        "issued": "2024-01-15",
        "value": "123.45",
        "rai": 7,
    }
    assert ds.query({"owner": CIDS[3]}, 0, 10, 100).records == [rec]
    assert ds.query({"deed_no": "000009"}, 0, 10, 100).total == 1


@pytest.mark.parametrize("term", [b"\n", b""])
def test_fixed_width_lf_and_block_files(term: bytes) -> None:
    layout = {**FIXED, "terminator": "lf" if term else "none"}
    data = b"".join(fixed_record(i) + term for i in range(5))
    result, ds = load(data, layout)
    assert result.valid == 5 and ds.record(4)["deed_no"] == "000004"


@pytest.mark.parametrize("term", [b"\r\n", b"\n"])
def test_fixed_width_line_breaks_out_of_place_are_reported_though_the_size_fits(
    term: bytes,
) -> None:
    """A file whose size is a whole number of records may still have a record one byte
    short (the next one byte long) or a line feed inside a record: its records are cut at
    the line breaks and the wrong ones reported, never served at the wrong offsets."""
    layout = {**FIXED, "terminator": "auto"}
    lines = [fixed_record(i) for i in range(40)]
    lines[2], lines[3] = lines[2][:-1], lines[3] + b"7"
    data = term.join(lines) + term
    result, ds = load(data, layout, max_bad_share=0.5)
    report = {b.line: b.reason for b in result.broken}
    assert report == {
        3: "record is 59 bytes; the layout says 60",
        4: "record is 61 bytes; the layout says 60",
    }
    assert ds.record(4)["deed_no"] == "000004" and result.valid == 38

    lines = [fixed_record(i) for i in range(40)]
    lines[5] = lines[5][:20] + b"\n" + lines[5][21:]  # same size, terminators in place
    result, ds = load(term.join(lines) + term, layout, max_bad_share=0.5)
    assert result.framing.stride == 0  # cut at the line breaks
    assert [b.line for b in result.broken][:2] == [6, 7]
    assert ds.query({"deed_no": "000005"}, 0, 10, 100).total == 0
    assert ds.record(4)["deed_no"] == "000004"


def test_broken_records_reported_per_record_never_served() -> None:
    bad_check = CIDS[0][:12] + str((int(CIDS[0][12]) + 1) % 10)
    lines = [fixed_record(i) for i in range(40)]
    lines[3] = fixed_record(3, owner=bad_check)
    lines[5] = fixed_record(5, issued="25670230")
    lines[7] = fixed_record(7).replace(NAME.encode("tis-620")[:2], b"\xdb\xfe")
    lines[9] = fixed_record(9).replace(b"  7", b" x7")
    lines[11] = lines[11][:-1] + b"\x91"  # a cp874 quote in a TIS-620 file: wrong label
    lines[13] = fixed_record(13)[:50]  # a short record
    data = b"\n".join(lines) + b"\n"
    result, ds = load(data, FIXED, max_bad_share=0.5)
    report = {b.line: (b.field, b.reason) for b in result.broken}
    assert report[4] == ("owner", "check digit does not match")
    assert report[6][0] == "issued" and "does not exist" in report[6][1]
    assert report[8][0] == "name" and "0xDB" in report[8][1]
    assert report[10] == ("rai", "not an integer")
    assert report[12][0] is None or report[12][0] == "rai"
    assert report[14] == (None, "record is 50 bytes; the layout says 60")
    assert result.valid == 40 - 6
    assert ds.query({"deed_no": "000003"}, 0, 10, 100).total == 0  # broken: not served
    assert ds.query({"deed_no": "000004"}, 0, 10, 100).total == 1


def test_strided_numeric_columns_fitting_their_shape_or_not_are_judged_by_their_syntax() -> None:
    """Numeric columns of a strided fixed-width file are first checked byte position by
    byte position (``ValueType.shape``); values outside the shape, valid or not, are still
    judged by the syntax, with the same reports."""
    rai = [b"007", b"-07", b"+12", b"  7", b"07-", b"0-7", b"1 2", b"-  ", b"   ", b"999"]
    value = [b"01234E", b"01234}", b"01234p", b"  123{", b"0123}4", b"01234E"]
    lines = [fixed_record(i) for i in range(60)]
    for i, r in enumerate(rai):
        lines[i] = lines[i][:-3] + r
    for i, v in enumerate(value):
        lines[20 + i] = lines[20 + i][:51] + v + lines[20 + i][57:]
    data = b"\r\n".join(lines) + b"\r\n"
    result, ds = load(data, FIXED, max_bad_share=0.5)
    assert result.framing.stride == 62
    report = {b.line: (b.field, b.reason) for b in result.broken}
    assert report == {
        6: ("rai", "not an integer"),
        7: ("rai", "not an integer"),
        8: ("rai", "not an integer"),
        25: ("value", "not a zoned number"),
    }
    assert [ds.record(i)["rai"] for i in (0, 1, 2, 3, 4, 8, 9)] == [7, -7, 12, 7, -7, None, 999]
    assert [ds.record(20 + i)["value"] for i in (0, 1, 2, 3)] == [
        "123.45",
        "-123.40",
        "-123.40",
        "12.30",
    ]

    # One value out of the shape among values in it: the column is judged by its syntax.
    lines = [fixed_record(i)[:-3] + (b"0-7" if i == 30 else b"-07") for i in range(60)]
    result, _ = load(b"\r\n".join(lines) + b"\r\n", FIXED, max_bad_share=0.5)
    assert [(b.line, b.field, b.reason) for b in result.broken] == [(31, "rai", "not an integer")]


def test_strided_numeric_column_that_fits_its_shape_is_never_cut_into_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The point of the shape: a million ``bytes`` objects not built (issue 15)."""
    cut: list[str] = []
    column_fn = FixedColumns._column_fn

    def spy(self: FixedColumns, first: int, size: int) -> Any:
        column = column_fn(self, first, size)
        return lambda name: cut.append(name) or column(name)

    monkeypatch.setattr(FixedColumns, "_column_fn", spy)
    lines = [fixed_record(i)[:-3] + b"007" for i in range(60)]
    result, _ = load(b"\r\n".join(lines) + b"\r\n", FIXED)
    assert result.valid == 60 and result.broken_count == 0
    assert "value" not in cut and "rai" not in cut and "owner" in cut


def test_bad_share_rejects_the_whole_file() -> None:
    lines = [fixed_record(i, issued="99999999" if i < 3 else "25670101") for i in range(100)]
    data = b"\n".join(lines) + b"\n"
    load(data, FIXED, max_bad_share=0.03)  # 3 % is still accepted
    with pytest.raises(ExportRejected, match="3 of 100 records are broken") as exc:
        load(data, FIXED, max_bad_share=0.02)
    assert exc.value.broken_count == 3 and len(exc.value.broken) == 3


def test_half_written_and_empty_files_rejected() -> None:
    data = b"".join(fixed_record(i) + b"\n" for i in range(5))
    with pytest.raises(ExportRejected, match="half-written"):
        load(data[:-30], FIXED)
    with pytest.raises(ExportRejected, match="half-written"):
        load(data[:-30], {**FIXED, "terminator": "none"})
    with pytest.raises(ExportRejected, match="no valid record"):
        load(b"", FIXED)


def test_utf8_fixed_width_catches_characters_cut_by_a_field_boundary() -> None:
    layout = {
        "format": "fixed",
        "encoding": "utf-8",
        "record_length": 9,
        "keys": ["a"],
        "field": [{"name": "a", "start": 1, "width": 3}, {"name": "b", "start": 4, "width": 6}],
    }
    good = "ก".encode() + "ขค".encode()  # 3 + 6 bytes
    cut = b"x" + "ก".encode() + "ขค".encode()[:5]  # field a ends inside a character
    result, ds = load(good + b"\n" + cut + b"\n", layout, max_bad_share=0.5)
    assert ds.record(0) == {"a": "ก", "b": "ขค"}
    assert [(b.line, b.field) for b in result.broken] == [(2, "a")]


CSV_LAYOUT: dict[str, Any] = {
    "format": "csv",
    "encoding": "cp874",
    "keys": ["juristic_id", "tax_year"],
    "field": [
        {"name": "juristic_id", "type": "juristic_id"},
        {"name": "name_th", "column": "ชื่อ"},
        {"name": "tax_year", "type": "integer"},
        {"name": "issued_on", "type": "date", "format": "DD/MM/YYYY", "era": "BE"},
        {"name": "amount", "type": "decimal"},
        {"name": "office"},
    ],
}


def csv_bytes(rows: list[list[str]], encoding: str = "cp874", header: bool = True) -> bytes:
    import csv
    import io

    out = io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\r\n")
    if header:
        w.writerow(["juristic_id", "ชื่อ", "tax_year", "issued_on", "amount", "office", "extra"])
    w.writerows(rows)
    return out.getvalue().encode(encoding, "surrogateescape")


def csv_row(i: int) -> list[str]:
    return [
        CIDS[i % len(CIDS)],
        f"บริษัท {i}, จำกัด",
        "2567",
        "15/01/2567",
        "1234.50",
        "บางรัก \u2013 1",
        "x",
    ]


def test_csv_with_header_quoted_fields_and_cp874() -> None:
    rows = [csv_row(i) for i in range(6)]
    rows[2][5] = "line one\nline two"  # a quoted line break: one record over two lines
    result, ds = load(csv_bytes(rows), CSV_LAYOUT)
    assert result.valid == 6
    assert ds.record(2)["office"] == "line one\nline two"
    rec = ds.record(3)
    assert rec == {
        "juristic_id": CIDS[3],
        "name_th": "บริษัท 3, จำกัด",
        "tax_year": 2567,
        "issued_on": "2024-01-15",
        "amount": "1234.50",
        "office": "บางรัก \u2013 1",
    }
    page = ds.query({"juristic_id": CIDS[3], "tax_year": "2567"}, 0, 10, 100)
    assert page.records == [rec]


def test_csv_broken_rows_have_their_line_numbers() -> None:
    rows = [csv_row(i) for i in range(30)]
    rows[1][5] = "a\nb"  # shifts the lines of every later row by one
    rows[4][0] = CIDS[4][:12] + str((int(CIDS[4][12]) + 1) % 10)
    rows[6] = rows[6][:3]
    rows[8][1] = "บริษัท\udcdb"  # a byte cp874 cannot decode
    result, _ = load(csv_bytes(rows), CSV_LAYOUT, max_bad_share=0.5)
    report = {b.line: (b.field, b.reason) for b in result.broken}
    assert report[7] == ("juristic_id", "check digit does not match")  # header + 1 extra line
    assert report[9] == (None, "row has 3 columns; expected 7")
    assert report[11][0] == "name_th" and "undecodable" in report[11][1]
    assert result.valid == 27


def plain_row(i: int) -> list[str]:
    return [CIDS[i % len(CIDS)], f"บริษัท {i} จำกัด", "2567", "15/01/2567", "1234.50", "บางรัก", "7"]


@pytest.mark.parametrize("newline", [b"\r\n", b"\n", b"mixed"])
def test_csv_plain_chunks_read_as_the_csv_module_reads_them(
    monkeypatch: pytest.MonkeyPatch, newline: bytes
) -> None:
    """Chunks without quotes are split on the delimiter instead of parsed row by row; they
    must give exactly the csv module's records and report the same broken lines, also when
    plain and quoted chunks, short rows, blank lines and a last line without CRLF mix."""
    import csv
    import io

    from adapters.flatfile import csvfile

    monkeypatch.setattr(csvfile, "_CHUNK", 600)  # a handful of rows per chunk
    plain_batches = 0
    original = csvfile.CsvFrame._plain_batch

    def counting(self: csvfile.CsvFrame, *args: Any) -> Any:
        nonlocal plain_batches
        plain_batches += 1
        return original(self, *args)

    monkeypatch.setattr(csvfile.CsvFrame, "_plain_batch", counting)
    rows = [plain_row(i) for i in range(120)]
    rows[30][5] = 'บางรัก "เหนือ"'  # a quoted chunk among plain ones
    rows[60] = rows[60][:4]  # a short row: its chunk goes the csv module's way
    rows[90][1] = "บริษัท\udcdb"  # a byte cp874 cannot decode, in a plain chunk
    data = csv_bytes(rows)
    if newline == b"mixed":  # every other line ends in LF only, the others in CRLF
        lines = data.split(b"\r\n")
        data = b"".join(line + (b"\n" if i % 2 else b"\r\n") for i, line in enumerate(lines))
        newline = b"\r\n"
    else:
        data = data.replace(b"\r\n", newline)
    data = data.replace(newline, newline * 2, 1)  # a blank line after the header
    data = data[: -len(newline)]  # no line break after the last row
    fields = [*CSV_LAYOUT["field"], {"name": "extra", "type": "integer"}]  # before the CR
    layout = {**CSV_LAYOUT, "field": fields, "require_final_newline": False}
    result, ds = load(data, layout, max_bad_share=0.5)
    assert plain_batches > 5
    report = {b.line: (b.field, b.reason) for b in result.broken}
    assert report[63] == (None, "row has 4 columns; expected 7")  # header, blank line
    assert report[93][0] == "name_th" and "undecodable" in report[93][1]
    assert result.valid == 118
    text = data.decode("cp874", "surrogateescape")
    expected = [r for r in csv.reader(io.StringIO(text, newline="")) if r][1:]
    assert len(expected) == 120
    for i, row in enumerate(expected):
        if i not in (60, 90):  # broken records keep their numbers but are never served
            rec = ds.record(i)
            got = (rec["juristic_id"], rec["name_th"], rec["office"], rec["extra"])
            assert got == (row[0], row[1], row[5], int(row[6]))


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_csv_usual_chunks_judged_whole_keep_rows_lines_and_spans(
    monkeypatch: pytest.MonkeyPatch, newline: bytes
) -> None:
    """The usual chunk (no quote, every line as many fields, all LF or all CRLF) is judged
    by whole-chunk passes (``_bare_plain``): a row short of a field and another with one too
    many in the same chunk (as many delimiters in all) are still reported on their lines,
    rows are served from their own bytes, and a CR alone in a field still refuses the file
    as the csv module does."""
    from adapters.flatfile import csvfile

    monkeypatch.setattr(csvfile, "_CHUNK", 700)  # a few rows per chunk
    bare: list[bool] = []
    original = csvfile.CsvFrame._bare_plain

    def spy(self: csvfile.CsvFrame, chunk: bytes, *args: Any) -> Any:
        out = original(self, chunk, *args)
        bare.append(out is not None)
        return out

    monkeypatch.setattr(csvfile.CsvFrame, "_bare_plain", spy)
    rows = [plain_row(i) for i in range(200)]
    rows[100] = rows[100][:6]  # line 102
    rows[101] = [*rows[101], "x"]  # line 103
    rows[150][4] = "-"  # line 152: a bad value in the middle of a whole chunk
    rows[160][0] = rows[160][0][:12] + str((int(rows[160][0][12]) + 1) % 10)  # line 162
    data = csv_bytes(rows).replace(b"\r\n", newline)
    result, ds = load(data, CSV_LAYOUT, max_bad_share=0.5)
    report = [(b.line, b.field, b.reason) for b in result.broken]
    assert report == [
        (102, None, "row has 6 columns; expected 7"),
        (103, None, "row has 8 columns; expected 7"),
        (152, "amount", "not a decimal number"),
        (162, "juristic_id", "check digit does not match"),
    ]
    assert bare.count(True) > 10 and bare.count(False) >= 1
    for i in (0, 99, 102, 149, 151, 199):
        assert ds.record(i)["name_th"] == f"บริษัท {i} จำกัด", i
        start, end = result.framing.span(i)
        assert data[start:end].endswith(newline) and newline not in data[start:end][:-1]

    lone = data.replace("บริษัท 120 ".encode("cp874"), "บริษัท\r120 ".encode("cp874"))
    with pytest.raises(ExportRejected, match="CSV syntax error near line"):
        load(lone, CSV_LAYOUT)


def test_csv_numeric_columns_judged_whole_or_value_by_value_report_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Numeric columns of plain CSV chunks are first judged whole (``joined_fits``); a
    column with a value outside that condition, valid or not, is matched value by value,
    and a bad value in the middle of a chunk is reported on its own line."""
    from adapters.flatfile import csvfile, loader

    monkeypatch.setattr(csvfile, "_CHUNK", 4000)  # a few dozen rows per chunk
    matched: list[int] = []
    original = loader.failing_values

    def spy(column: Any, *args: Any) -> list[int]:
        matched.append(len(column))
        return original(column, *args)

    monkeypatch.setattr(loader, "failing_values", spy)
    fields = [*CSV_LAYOUT["field"], {"name": "extra", "type": "zoned", "scale": 2}]
    layout = {**CSV_LAYOUT, "field": fields}
    rows = [plain_row(i) for i in range(200)]
    for i, row in enumerate(rows):
        row[4] = f"{-i if i % 7 == 0 else i}00"  # amounts without a point: the fast path
        row[6] = f"{i:04d}{'{' if i % 2 else 'J'}"
    result, ds = load(csv_bytes(rows), layout)
    assert (result.valid, result.broken_count) == (200, 0)
    assert matched == []  # every column judged whole
    assert [ds.record(i)["amount"] for i in (7, 8)] == ["-700", "800"]
    assert [ds.record(i)["extra"] for i in (7, 8)] == ["0.70", "-0.81"]  # 0007{, 0008J

    rows[100][2] = "25x7"  # line 102: header + 101 rows before it
    rows[101][2] = " 2567 "  # valid, outside the whole-column condition
    rows[150][4] = "1-2"
    rows[151][4] = "12.50"
    rows[152][4] = "12-"
    rows[170][6] = "{1"
    rows[171][6] = "  0012} "
    rows[199][2] = "-"  # the very last value
    result, ds = load(csv_bytes(rows), layout, max_bad_share=0.5)
    report = [(b.line, b.field, b.reason) for b in result.broken]
    assert report == [
        (102, "tax_year", "not an integer"),
        (152, "amount", "not a decimal number"),
        (172, "extra", "not a zoned number"),
        (201, "tax_year", "not an integer"),
    ]
    assert matched  # the columns with odd values were matched value by value
    assert ds.record(101)["tax_year"] == 2567
    assert [ds.record(i)["amount"] for i in (151, 152)] == ["12.50", "-12"]
    assert ds.record(171)["extra"] == "-1.20"


def test_csv_dates_judged_whole_report_each_bad_day_on_its_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Date columns of plain chunks are converted only where a whole-column pass finds a
    value that may be wrong (``DateFormat.suspects``): days that do not exist are still
    reported on their own lines with ``parse_date``'s reasons, a leap day is accepted in a
    leap year only, and a column with blanks or many bad days is converted value by value
    with the same reports."""
    from adapters.flatfile import csvfile

    monkeypatch.setattr(csvfile, "_CHUNK", 2000)
    rows = [plain_row(i) for i in range(300)]
    rows[10][3] = "29/02/2567"  # 2024: a leap year
    rows[11][3] = "29/02/2566"  # line 13
    rows[150][3] = "31/04/2567"  # line 152
    rows[151][3] = "15/13/2567"  # line 153
    rows[152][3] = "15/01/1999"  # line 154: not a B.E. year
    rows[153][3] = "00/00/0000"  # no date
    result, ds = load(csv_bytes(rows), CSV_LAYOUT, max_bad_share=0.5)
    expected = [
        (13, "issued_on", "day 29 of month 02 does not exist in B.E. 2566"),
        (152, "issued_on", "day 31 of month 04 does not exist in B.E. 2567"),
        (153, "issued_on", "day 15 of month 13 does not exist in B.E. 2567"),
        (154, "issued_on", "year 1999 is not a plausible Buddhist-Era year"),
    ]
    assert [(b.line, b.field, b.reason) for b in result.broken] == expected
    assert ds.record(10)["issued_on"] == "2024-02-29" and ds.record(153)["issued_on"] is None
    rows[200][3] = ""  # a blank: this chunk's column is converted value by value
    for i in range(250, 300):
        rows[i][3] = "30/02/2567"  # many bad days in a row
    result, ds = load(csv_bytes(rows), CSV_LAYOUT, max_bad_share=0.5)
    report = [(b.line, b.field, b.reason) for b in result.broken]
    assert report[:4] == expected and len(report) == 54
    reason = "day 30 of month 02 does not exist in B.E. 2567"
    assert report[4:] == [(line, "issued_on", reason) for line in range(252, 302)]
    assert ds.record(200)["issued_on"] is None


def test_csv_keys_taken_whole_or_value_by_value_index_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Key columns of plain chunks are taken joined as they are when no value needs
    stripping or converting (``joined_keys``); chunks with a padded key, a dashed id or a
    broken record go value by value. Every record is found by its canonical key either way,
    and broken ones by none."""
    from adapters.flatfile import csvfile, loader

    monkeypatch.setattr(csvfile, "_CHUNK", 1500)  # a dozen rows or so per chunk
    taken: list[bool] = []
    original = loader._Validator.joined_keys

    def spy(self: Any, *args: Any) -> bytes | None:
        joined = original(self, *args)
        taken.append(joined is not None)
        return joined

    monkeypatch.setattr(loader._Validator, "joined_keys", spy)
    layout = {**CSV_LAYOUT, "keys": ["juristic_id", "office"]}
    rows = [plain_row(i) for i in range(200)]
    for i, row in enumerate(rows):
        row[0] = with_check_digit(f"0105500{i:05d}")
        row[5] = f"สาขา {i % 5}"  # a space inside the key: nothing to strip
    cid = rows[40][0]
    rows[40][0] = f"{cid[0]}-{cid[1:5]}-{cid[5:10]}-{cid[10:12]}-{cid[12]}"
    rows[60][5] = " สาขา 1"
    rows[61][5] = "สาขา 1\x00"
    rows[80][0] = f" {rows[80][0]} "
    rows[100][2] = "bad"  # broken: its chunk's keys go value by value
    rows[120][5] = ""  # a blank key: not indexed
    rows[121][0] = ""
    result, ds = load(csv_bytes(rows), layout, max_bad_share=0.5)
    assert [(b.line, b.field) for b in result.broken] == [(102, "tax_year")]
    for i in (0, 40, 80, 99, 101, 199):
        page = ds.query({"juristic_id": with_check_digit(f"0105500{i:05d}")}, 0, 5, 10)
        assert page.total == 1 and page.records[0]["name_th"] == f"บริษัท {i} จำกัด", i
    assert ds.query({"juristic_id": with_check_digit("010550000100")}, 0, 5, 10).total == 0
    offices = {k: ds.query({"office": f"สาขา {k}"}, 0, 1, 1000).total for k in range(5)}
    # 100 broken and 120 blank are not indexed; 60 is " สาขา 1", 61 "สาขา 1" and a NUL
    assert offices == {0: 37, 1: 41, 2: 40, 3: 40, 4: 40}
    assert taken.count(True) > 10 and taken.count(False) >= 5


@pytest.mark.parametrize("encoding", ["cp874", "utf-8"])
def test_csv_thai_text_key_finds_rows_of_plain_and_quoted_chunks(
    monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """Plain chunks are indexed from their undecoded bytes, quoted ones from the csv
    module's text: a Thai key must find its records in both, and nothing for text the
    file's charset cannot even hold."""
    from adapters.flatfile import csvfile

    monkeypatch.setattr(csvfile, "_CHUNK", 600)
    rows = [plain_row(i) for i in range(120)]
    for i in range(0, 120, 3):
        rows[i][5] = "บางกะปิ"
    rows[30][1] = 'บริษัท "คำพูด" จำกัด'  # quotes: this chunk goes through the csv module
    layout = {**CSV_LAYOUT, "encoding": encoding, "keys": ["office"]}
    result, ds = load(csv_bytes(rows, encoding), layout)
    assert result.valid == 120
    page = ds.query({"office": " บางกะปิ "}, 0, 100, 1000)
    assert page.total == 40
    assert [r["name_th"] for r in page.records][9:12] == [
        "บริษัท 27 จำกัด",
        'บริษัท "คำพูด" จำกัด',
        "บริษัท 33 จำกัด",
    ]
    assert ds.query({"office": "บางรัก"}, 0, 100, 1000).total == 80
    assert ds.query({"office": "\u2603"}, 0, 10, 1000).total == 0


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_csv_single_column_skips_blank_lines_as_the_csv_module_does(newline: str) -> None:
    data = newline.join(["id", "1", "", "2", ""]).encode()
    layout = {"format": "csv", "encoding": "utf-8", "keys": ["id"]}
    result, ds = load(data, layout)
    assert (result.valid, result.broken_count) == (2, 0)
    assert ds.query({"id": "2"}, 0, 5, 10).records == [{"id": "2"}]


def test_csv_without_layout_takes_the_header_and_utf8_bom() -> None:
    data = "\ufeffid,name\r\n1,สมชาย\r\n2,สมศรี\r\n".encode()
    lay = parse_layout({"format": "csv", "encoding": "utf-8", "keys": ["id"]})
    result = load_export(data, lay, ("id",))
    ds = Dataset(data, resolve_layout(data, lay), result, DataVersion("x", "", "", "", 0, 2, 0))
    assert ds.query({"id": "2"}, 0, 5, 10).records == [{"id": "2", "name": "สมศรี"}]


def test_tsv_with_layout_and_no_header() -> None:
    data = "1\tก\n2\tข\n".encode("tis-620")
    layout = {
        "format": "tsv",
        "encoding": "tis-620",
        "header": False,
        "keys": ["no"],
        "field": [{"name": "no", "type": "integer"}, {"name": "letter"}],
    }
    _, ds = load(data, layout)
    assert ds.query({"no": "02"}, 0, 5, 10).records == [{"no": 2, "letter": "ข"}]


def test_csv_missing_column_and_half_written_rejected() -> None:
    with pytest.raises(ExportRejected, match="no column 'amount'"):
        load("juristic_id,ชื่อ,tax_year,issued_on\r\n".encode("cp874"), CSV_LAYOUT)
    data = csv_bytes([csv_row(0), csv_row(1)])
    with pytest.raises(ExportRejected, match="half-written"):
        load(data[:-5], CSV_LAYOUT)


# ---- DBF: a minimal dBase III writer, independent of the reader under test --------------


def write_dbf(
    fields: list[tuple[str, str, int, int]],
    rows: list[tuple[bytes, ...]],
    deleted: set[int] = frozenset(),
    *,
    count: int | None = None,
) -> bytes:  # type: ignore[assignment]
    header_len = 32 + 32 * len(fields) + 1
    record_len = 1 + sum(f[2] for f in fields)
    head = struct.pack(
        "<BBBBIHH20x",
        0x03,
        124,
        11,
        21,
        len(rows) if count is None else count,
        header_len,
        record_len,
    )
    head = head[:29] + b"\x7c" + head[30:]  # language driver: Thai cp874
    for name, ftype, length, decimals in fields:
        head += struct.pack("<11sc4xBB14x", name.encode(), ftype.encode(), length, decimals)
    head += b"\x0d"
    body = b""
    for i, row in enumerate(rows):
        body += (b"*" if i in deleted else b" ") + b"".join(
            v.ljust(f[2]) if f[1] == "C" else v.rjust(f[2]) if f[1] in "NF" else v
            for v, f in zip(row, fields, strict=True)
        )
    return head + body + b"\x1a"


DBF_FIELDS = [
    ("OWNER_ID", "C", 13, 0),
    ("NAME", "C", 30, 0),
    ("AREA", "N", 8, 2),
    ("RAI", "N", 4, 0),
    ("ISSUED", "D", 8, 0),
    ("ACTIVE", "L", 1, 0),
    ("COUNT", "I", 4, 0),
]


def dbf_row(i: int, name: str = "สมชาย ใจดี") -> tuple[bytes, ...]:
    return (
        CIDS[i].encode(),
        name.encode("cp874"),
        b"12.50",
        str(i).encode(),
        b"20240229",
        b"T" if i % 2 else b"F",
        struct.pack("<i", -i),
    )


def test_dbf_header_types_and_deleted_records() -> None:
    data = write_dbf(DBF_FIELDS, [dbf_row(i) for i in range(5)], deleted={1})
    layout = {"format": "dbf", "encoding": "cp874", "keys": ["owner_id"]}
    result, ds = load(data, layout)
    assert (result.records, result.deleted, result.valid) == (5, 1, 4)
    assert ds.query({"owner_id": CIDS[1]}, 0, 5, 10).total == 0  # deleted: not served
    assert ds.query({"owner_id": CIDS[3]}, 0, 5, 10).records == [
        {
            "owner_id": CIDS[3],
            "name": "สมชาย ใจดี",
            "area": "12.50",
            "rai": 3,
            "issued": "2024-02-29",
            "active": True,
            "count": -3,
        }
    ]


def test_dbf_with_layout_retypes_and_reports() -> None:
    rows = [dbf_row(i) for i in range(6)]
    rows[2] = (b"1234567890123", *rows[2][1:])  # check digit wrong
    rows[4] = (rows[4][0], b"\xdb" + rows[4][1][1:], *rows[4][2:])
    layout = {
        "format": "dbf",
        "encoding": "cp874",
        "keys": ["owner"],
        "field": [
            {"name": "owner", "column": "OWNER_ID", "type": "citizen_id"},
            {"name": "name"},
        ],
    }
    result, ds = load(write_dbf(DBF_FIELDS, rows), layout, max_bad_share=0.5)
    assert [(b.line, b.field) for b in result.broken] == [(3, "owner"), (5, "name")]
    assert ds.record(0) == {"owner": CIDS[0], "name": "สมชาย ใจดี"}


def test_dbf_half_written_rejected() -> None:
    data = write_dbf(DBF_FIELDS, [dbf_row(i) for i in range(3)], count=10)
    with pytest.raises(ExportRejected, match="half-written"):
        load(data, {"format": "dbf", "encoding": "cp874", "keys": ["owner_id"]})


def test_wire_form_roundtrip() -> None:
    rows = [csv_row(i) for i in range(4)]
    data = csv_bytes(rows)
    lay = parse_layout(CSV_LAYOUT)
    result = load_export(data, lay, lay.keys)
    back = from_wire(to_wire(result))
    assert back.framing.span(2) == result.framing.span(2)
    assert back.indexes["tax_year"].records(b"2567") == [0, 1, 2, 3]
    with pytest.raises(ExportRejected, match="nope"):
        from_wire(to_wire(ExportRejected("nope")))


def test_csv_unclosed_quote_before_a_long_line_is_refused_not_looped_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An odd quote followed by more than a chunk without a line break: the chunker must
    still reach the end of the file (it once found the same line break forever)."""
    from adapters.flatfile import csvfile

    monkeypatch.setattr(csvfile, "_CHUNK", 8)
    data = b'k,t,n\n"a,b,c\n' + b"x" * 40 + b"\n1,2,3\n"
    layout = {
        "format": "csv",
        "encoding": "utf-8",
        "keys": ["k"],
        "field": [{"name": "k"}, {"name": "t"}, {"name": "n"}],
    }
    with pytest.raises(ExportRejected):
        load(data, layout)
