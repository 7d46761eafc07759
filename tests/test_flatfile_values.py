"""Field types of legacy records, sans-I/O: numbers, zoned, B.E. dates, Thai ids, charsets."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.flatfile.charsets import charset
from adapters.flatfile.errors import LayoutError
from adapters.flatfile.frame import JOIN
from adapters.flatfile.layout import parse_layout
from adapters.flatfile.values import (
    DateFormat,
    be_to_ce,
    parse_date,
    parse_decimal,
    parse_integer,
    parse_zoned,
    value_type,
)
from xroad_hub.protocol.thaiid import with_check_digit

CID = with_check_digit("110170020345")


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0000123", 123), ("  123", 123), ("-00123", -123), ("00123-", -123), ("+5", 5), ("", None)],
)
def test_integer(raw: str, value: int | None) -> None:
    assert parse_integer(raw) == value


@pytest.mark.parametrize("raw", ["12a", "1 2", "--1", "1_000", "١٢"])
def test_integer_refuses_what_int_would_accept_or_not(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_integer(raw)


@pytest.mark.parametrize(
    ("raw", "scale", "value"),
    [
        ("0012345", 2, "123.45"),
        ("-0000050", 2, "-0.50"),
        ("0000050-", 2, "-0.50"),
        ("+000012350", 2, "123.50"),
        ("00452", 1, "45.2"),
        ("1234.5", 2, "1234.5"),  # an explicit point wins over the implied one
        ("-0000000", 2, "0.00"),  # no negative zero
        ("7", 0, "7"),
        ("   ", 2, None),
    ],
)
def test_decimal_implied_and_explicit(raw: str, scale: int, value: str | None) -> None:
    assert parse_decimal(raw, scale) == value


@pytest.mark.parametrize(
    ("raw", "scale", "value"),
    [
        ("0012{", 0, "120"),
        ("0012A", 0, "121"),
        ("0012I", 0, "129"),
        ("0012}", 0, "-120"),
        ("0012J", 0, "-121"),
        ("0012R", 0, "-129"),
        ("0012p", 0, "-120"),
        ("0012y", 0, "-129"),
        ("001234", 2, "12.34"),
        ("00000618262280{", 2, "61826228.00"),
    ],
)
def test_zoned_overpunch(raw: str, scale: int, value: str) -> None:
    assert parse_zoned(raw, scale) == value


def test_zoned_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_zoned("12Z", 0)


def test_buddhist_era_dates_become_iso() -> None:
    assert be_to_ce(2567) == 2024
    be = DateFormat.compile("DDMMYYYY", "BE")
    assert parse_date("29022567", be) == "2024-02-29"  # 2024 is a leap year
    assert parse_date("00000000", be) is None
    assert parse_date("        ", be) is None
    with pytest.raises(ValueError, match=r"does not exist in B\.E\. 2566"):
        parse_date("29022566", be)
    with pytest.raises(ValueError, match="plausible Buddhist-Era"):
        parse_date("01012024", be)  # a C.E. year in a B.E. field
    slash = DateFormat.compile("DD/MM/YYYY", "BE")
    assert parse_date("31/12/2567", slash) == "2024-12-31"
    assert parse_date("00/00/0000", slash) is None
    ce = DateFormat.compile("YYYY-MM-DD", "CE")
    assert parse_date("2024-02-29", ce) == "2024-02-29"
    with pytest.raises(ValueError):
        parse_date("2024-13-01", ce)


def test_date_format_must_be_complete() -> None:
    with pytest.raises(LayoutError):
        DateFormat.compile("YYYYMM", "BE")
    with pytest.raises(LayoutError):
        DateFormat.compile("YYYYMMDD", "AD")


def test_thai_ids_checked_and_normalised() -> None:
    vt = value_type("citizen_id")
    assert vt.convert(CID) == CID
    dashed = f"{CID[0]}-{CID[1:5]}-{CID[5:10]}-{CID[10:12]}-{CID[12]}"
    assert vt.convert(dashed) == CID
    assert vt.key(dashed) == CID
    wrong = CID[:12] + str((int(CID[12]) + 1) % 10)
    with pytest.raises(ValueError, match="check digit"):
        vt.convert(wrong)
    with pytest.raises(ValueError):
        vt.convert("12345")
    assert value_type("juristic_id").convert("") is None


def test_boolean_and_keys_canonical() -> None:
    vt = value_type("boolean")
    assert (vt.convert("T"), vt.convert("n"), vt.convert("?")) == (True, False, None)
    assert value_type("integer").key("000123") == value_type("integer").key("123") == "123"
    dec = value_type("decimal", scale=2)
    assert dec.key("0012300") == dec.key("123.0") == "123"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("TIS-620", "tis-620"),
        ("tis620", "tis-620"),
        ("Windows-874", "cp874"),
        ("UTF-8-SIG", "utf-8"),
    ],
)
def test_charset_aliases(name: str, canonical: str) -> None:
    assert charset(name).name == canonical


def test_charset_invalid_bytes() -> None:
    tis = charset("tis-620")
    assert tis.invalid_byte is not None
    assert tis.invalid_byte.search(b"\xdb") and tis.invalid_byte.search(b"\x91")  # C1 too
    assert not tis.invalid_byte.search("กขค สมชาย".encode("tis-620"))
    cp = charset("cp874")
    assert cp.invalid_byte is not None
    assert not cp.invalid_byte.search("\u2013".encode("cp874"))  # en dash exists in cp874
    assert cp.invalid_byte.search(b"\xdb")
    with pytest.raises(LayoutError):
        charset("latin-1")


def test_layout_errors_name_the_problem() -> None:
    with pytest.raises(LayoutError, match="encoding must be declared"):
        parse_layout({"format": "fixed", "field": [{"name": "a", "start": 1, "width": 1}]})
    with pytest.raises(LayoutError, match="type 'money'"):
        parse_layout(
            {"format": "csv", "encoding": "utf-8", "field": [{"name": "a", "type": "money"}]}
        )
    with pytest.raises(LayoutError, match="must match"):
        parse_layout({"format": "csv", "encoding": "utf-8", "field": [{"name": "A-B"}]})
    with pytest.raises(LayoutError, match="beyond record_length"):
        parse_layout(
            {
                "format": "fixed",
                "encoding": "utf-8",
                "record_length": 4,
                "field": [{"name": "a", "start": 3, "width": 5}],
            }
        )
    with pytest.raises(LayoutError, match="not fields"):
        parse_layout(
            {"format": "csv", "encoding": "utf-8", "keys": ["b"], "field": [{"name": "a"}]}
        )


@pytest.mark.parametrize("type_name", ["integer", "decimal", "zoned"])
def test_shape_admits_only_values_the_syntax_admits(type_name: str) -> None:
    """A column that fits its type's shape is not matched against the syntax at all
    (fixed-width loads): every value made of the shape's bytes must match it."""
    import random
    import re

    vtype = value_type(type_name, scale=2)
    assert vtype.shape is not None and vtype.syntax is not None
    syntax = re.compile(vtype.syntax.encode())
    rng = random.Random(15)
    for width in range(1, 15):
        shape = vtype.shape(width)
        assert len(shape) == width
        # Each allowed byte at each position (the rest at their first allowed byte), then
        # random values across the whole product.
        values = [
            bytes(b if j == pos else shape[j][0] for j in range(width))
            for pos in range(width)
            for b in shape[pos]
        ]
        values += [bytes(rng.choice(allowed) for allowed in shape) for _ in range(2000)]
        for v in values:
            assert syntax.fullmatch(v), (type_name, v)


@pytest.mark.parametrize("type_name", ["integer", "decimal", "zoned"])
def test_joined_fits_admits_only_columns_whose_every_value_the_syntax_admits(
    type_name: str,
) -> None:
    """A CSV column that passes ``joined_fits`` is not matched against the syntax at all:
    for random columns of values made of digits, signs, overpunched bytes, spaces and
    points, a pass means every value matches, and columns of plain numbers pass."""
    import random
    import re

    vtype = value_type(type_name, scale=2)
    assert vtype.joined_fits is not None and vtype.syntax is not None
    syntax = re.compile(vtype.syntax.encode())
    sep = b"\x1f"
    rng = random.Random(16)
    alphabet = b"0123456789" * 3 + b"+-{}AJRpy. \x00"
    passed = 0
    for _ in range(20_000):
        column = [
            bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 5)))
            for _ in range(rng.randrange(1, 4))
        ]
        if vtype.joined_fits(sep.join(column), sep):
            passed += 1
            assert all(syntax.fullmatch(v) for v in column), (type_name, column)
    assert passed > 500
    plain = [b"0012", b"", b"7", b"-0001" if type_name != "zoned" else b"0001}", b"00"]
    assert vtype.joined_fits(sep.join(plain), sep)
    # Each way out of the condition, at the start, in the middle and at the end.
    for bad in (b"1-", b"-", b"+-1", b"1 ", b"1.5", b"{1", b"1{{", b"x"):
        for column in ([bad, b"1"], [b"1", bad, b"1"], [b"1", bad]):
            if vtype.joined_fits(sep.join(column), sep):
                assert all(syntax.fullmatch(v) for v in column), (type_name, column)


def suspects_of(suspects: Any, column: list[bytes]) -> list[int] | None:
    """``suspects`` of a column joined as ``Batch.joined`` joins it."""
    return suspects(JOIN.join(column), len(column), JOIN)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("pattern", "era"), [("YYYYMMDD", "BE"), ("DDMMYYYY", "BE"), ("DD/MM/YYYY", "CE")]
)
def test_date_suspects_leave_out_only_values_parse_date_accepts(
    pattern: str, era: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A date column is converted only at its ``suspects``: every value left out must be
    a date ``parse_date`` accepts, and the usual valid dates are left out."""
    import random
    from datetime import date, timedelta

    from adapters.flatfile import values
    from adapters.flatfile.values import DateFormat

    monkeypatch.setattr(values, "_SUSPECTS_PER", 1)  # a verdict however many suspects

    fmt = DateFormat.compile(pattern, era)
    rng = random.Random(17)
    offset = 543 if era == "BE" else 0

    def written(day: date) -> bytes:
        y, m, d = f"{day.year + offset:04d}", f"{day.month:02d}", f"{day.day:02d}"
        return pattern.replace("YYYY", y).replace("MM", m).replace("DD", d).encode()

    days = [date(1900, 1, 1) + timedelta(days=rng.randrange(60_000)) for _ in range(3000)]
    valid = [written(d) for d in days if (d.month, d.day) != (2, 29)]
    assert suspects_of(fmt.suspects, valid) == []
    # The 29th of February is left to parse_date (leap years), the rest still judged whole.
    leap = [*valid[:100], written(date(2024, 2, 29)), *valid[100:200], written(date(2023, 3, 1))]
    assert suspects_of(fmt.suspects, leap) == [100]
    # Each byte of valid dates replaced by any other, and edge days of every month.
    odd = []
    for _ in range(3000):
        v = bytearray(rng.choice(valid))
        v[rng.randrange(len(v))] = rng.choice(b"0123456789/-x ")
        odd.append(bytes(v))
    for year in (1900, 2000, 2023, 2024, 2156, 2157, 1756, 1757):
        for month in range(0, 14):
            for day in (0, 28, 29, 30, 31, 32):
                text = pattern.replace("YYYY", f"{year + offset:04d}")
                odd.append(text.replace("MM", f"{month:02d}").replace("DD", f"{day:02d}").encode())
    odd.append(written(date(2024, 1, 1)).replace(b"2", b"0"))  # all-zero parts
    column = valid + odd
    rng.shuffle(column)
    suspects = suspects_of(fmt.suspects, column)
    assert suspects is not None
    left_out = set(range(len(column))).difference(suspects)
    for i in left_out:
        assert parse_date(column[i].decode("latin-1"), fmt) is not None, column[i]
    refused = 0
    for v in odd:
        try:
            parse_date(v.decode("latin-1"), fmt)
        except ValueError:
            refused += 1
    assert refused > 500 and len(suspects) >= refused
    # Not the pattern's length everywhere (a blank, padding): no verdict, all converted.
    assert suspects_of(fmt.suspects, [*valid[:10], b""]) is None
    assert suspects_of(fmt.suspects, [*valid[:10], b" " + valid[0]]) is None
    assert suspects_of(fmt.suspects, []) == []


def test_id_suspects_leave_out_only_ids_with_their_check_digit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An id column is converted only at its ``suspects``: every value left out is a
    13-digit id whose check digit matches; valid ids are left out, every wrong check digit
    and non-digit is a suspect."""
    import random

    from adapters.flatfile import values

    monkeypatch.setattr(values, "_SUSPECTS_PER", 1)
    vtype = value_type("citizen_id")
    assert vtype.suspects is not None
    rng = random.Random(18)
    valid = [
        with_check_digit("".join(rng.choice("0123456789") for _ in range(12))).encode()
        for _ in range(5000)
    ]
    assert suspects_of(vtype.suspects, valid) == []
    odd = [v[:12] + str((int(v[12:]) + rng.randrange(1, 10)) % 10).encode() for v in valid[:2000]]
    for v in valid[:2000]:
        b = bytearray(v)
        b[rng.randrange(13)] = rng.choice(b"0123456789x- ")
        odd.append(bytes(b))
    column = valid + odd
    rng.shuffle(column)
    suspects = suspects_of(vtype.suspects, column)
    assert suspects is not None
    refused = set()
    for i, v in enumerate(column):
        try:
            vtype.convert(v.decode())
        except ValueError:
            refused.add(i)
    assert len(refused) > 2000 and refused <= set(suspects)
    # A blank or a dashed id: no verdict, all converted.
    assert suspects_of(vtype.suspects, [*valid[:5], b"", valid[6]]) is None
    assert suspects_of(vtype.suspects, [*valid[:5], b"1-2345-67890-12-1"]) is None
