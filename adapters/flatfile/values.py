"""Field types of legacy records, sans-I/O: raw text in, JSON value or canonical key out.

Every type has three faces, kept together so that load-time validation, the answer and the
query key can never disagree:

- ``syntax``: a regular expression that one raw value must match in full (ASCII only, so the
  same pattern serves ``bytes`` columns of fixed-width/DBF files and ``str`` columns of CSV);
  the loader checks a whole column with one C-level match and looks closer only on failure.
- ``convert``: raw value -> JSON value (``None`` for blank); raises ``ValueError`` with a reason
  for values the syntax cannot judge (calendar dates, check digits).
- ``key``: raw value -> canonical key text, used both when indexing and for query values, so
  ``0001234`` in the file and ``1234`` in a query meet.

Decimal and zoned values are answered as strings ("-1234.50"): JSON numbers would pass
through binary floating point in most clients and lose the exact amount.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from .errors import LayoutError

__all__ = [
    "BE_OFFSET",
    "FIELD_TYPES",
    "ValueType",
    "be_to_ce",
    "parse_date",
    "parse_decimal",
    "parse_integer",
    "parse_zoned",
    "value_type",
]

BE_OFFSET = 543  # Buddhist Era year = Common Era year + 543
# Years outside this range in a B.E. field are almost always C.E. years under the wrong label.
_BE_PLAUSIBLE = range(2300, 2701)

FIELD_TYPES = (
    "text",
    "integer",
    "decimal",
    "zoned",
    "date",
    "citizen_id",
    "juristic_id",
    "boolean",
)

_INT_SYNTAX = r" *(?:[+-]?[0-9]+|[0-9]+[+-]) *"
_DEC_SYNTAX = r" *(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)|(?:[0-9]+(?:\.[0-9]*)?)[+-]) *"
_ZONED_SYNTAX = r" *[0-9]*[0-9{}A-Rp-y] *"
_ID_SYNTAX = r" *(?:[0-9]{13}|[0-9]-[0-9]{4}-[0-9]{5}-[0-9]{2}-[0-9]) *"
_BOOL_SYNTAX = r" *[TtYyFfNn10?]? *"
_BLANK = r"[ \x00]*"

_INT_RE = re.compile(_INT_SYNTAX)
_DEC_RE = re.compile(_DEC_SYNTAX)
_ZONED_RE = re.compile(_ZONED_SYNTAX)
_ID_RE = re.compile(_ID_SYNTAX)

# Overpunched last character of a zoned number: sign and digit in one byte (IBM convention
# as it survives EBCDIC->ASCII conversion, plus the ASCII 'p'-'y' negatives of Micro Focus).
_ZONED_LAST: dict[str, tuple[int, int]] = {str(d): (1, d) for d in range(10)}
_ZONED_LAST["{"] = (1, 0)
_ZONED_LAST["}"] = (-1, 0)
_ZONED_LAST.update({chr(ord("A") + d - 1): (1, d) for d in range(1, 10)})
_ZONED_LAST.update({chr(ord("J") + d - 1): (-1, d) for d in range(1, 10)})
_ZONED_LAST.update({chr(ord("p") + d): (-1, d) for d in range(10)})


def _signed_digits(text: str) -> tuple[int, str] | None:
    s = text.strip(" \x00")
    if not s:
        return None
    sign = 1
    if s[0] in "+-":
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    elif s[-1] in "+-":
        sign, s = (-1 if s[-1] == "-" else 1), s[:-1]
    return sign, s


def parse_integer(text: str) -> int | None:
    """``"  00123"``, ``"-123"``, ``"123-"`` -> int; blank -> None."""
    if not _INT_RE.fullmatch(text):
        if not text.strip(" \x00"):
            return None
        raise ValueError("not an integer")
    signed = _signed_digits(text)
    assert signed is not None
    sign, digits = signed
    return sign * int(digits)


def _fixed(value: Decimal) -> str:
    text = format(value, "f")
    return text[1:] if text.startswith("-") and not value else text  # no "-0.00"


def parse_decimal(text: str, scale: int = 0) -> str | None:
    """A decimal as an exact string. Without a decimal point the last ``scale`` digits are
    decimals (implied point, as in fixed-width exports); an explicit point wins."""
    if not _DEC_RE.fullmatch(text):
        if not text.strip(" \x00"):
            return None
        raise ValueError("not a decimal number")
    signed = _signed_digits(text)
    assert signed is not None
    sign, digits = signed
    value = Decimal(digits) if "." in digits else Decimal(int(digits)).scaleb(-scale)
    return _fixed(value if sign > 0 else -value)


def parse_zoned(text: str, scale: int = 0) -> str | None:
    """A zoned (overpunched) number: the last character carries the sign, e.g. ``"0012J"``
    is -121 and ``"0012{"`` is +120; ``scale`` implied decimals."""
    if not _ZONED_RE.fullmatch(text):
        if not text.strip(" \x00"):
            return None
        raise ValueError("not a zoned number")
    s = text.strip(" ")
    sign, last = _ZONED_LAST[s[-1]]
    value = Decimal(int(s[:-1] + str(last)) if s[:-1] else last).scaleb(-scale)
    return _fixed(value if sign > 0 else -value)


def be_to_ce(year_be: int) -> int:
    """Buddhist Era year -> Common Era year (B.E. = C.E. + 543)."""
    return year_be - BE_OFFSET


_SUSPECTS_PER = 64  # at most one value in this many a suspect, else all are converted
_NOT_DIGIT = bytes(0 if 0x30 <= b <= 0x39 else 1 for b in range(256))
# A digit's value, and ten times it (other bytes 0: they are marked wrong anyway).
_UNITS = bytes(b - 0x30 if 0x30 <= b <= 0x39 else 0 for b in range(256))
_TENS = bytes(10 * (b - 0x30) if 0x30 <= b <= 0x39 else 0 for b in range(256))
_MONTH = bytes(b if 1 <= b <= 12 else 15 for b in range(256))  # 15: no month
# Day number -> 16 * class: 1-28 exist in every month, 29, 30, 31 in some, others in none.
_DAY_CLASS = bytes(16 * (0 if 1 <= b <= 28 else b - 28 if 29 <= b <= 31 else 4) for b in range(256))
_DAYS_IN = {1: 31, 2: 28, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


def _day_exists(code: int) -> bool:
    """Whether day class and month ``16 * class + month`` is a day of every year (so
    never the 29th of February, which leap years alone have)."""
    day_class, month = divmod(code, 16)
    return month in _DAYS_IN and day_class < 4 and 28 + day_class <= _DAYS_IN[month]


_NOT_A_DAY = bytes(0 if _day_exists(code) else 1 for code in range(256))


def _marked(wrong: int, n: int) -> list[int] | None:
    """Positions of the bytes 1 in ``wrong`` as ``n`` bytes (0 or 1 each); None when more
    than one value in ``_SUSPECTS_PER`` is marked: converting each distinct value is then
    no slower."""
    if not wrong:
        return []
    marks = wrong.to_bytes(n, "big")
    if marks.count(1) > max(64, n // _SUSPECTS_PER):
        return None
    out, i = [], marks.find(1)
    while i >= 0:
        out.append(i)
        i = marks.find(1, i + 1)
    return out


def _mask_all_but(allowed: bytes) -> bytes:
    """A ``translate`` table: 0 for the allowed bytes, 1 for every other."""
    return bytes(0 if b in allowed else 1 for b in range(256))


def _two_digits(tens: bytes, units: bytes) -> bytes:
    """Byte by byte, the two-digit numbers written by ``tens`` and ``units`` (ASCII digits):
    one integer addition of the two translated columns (99 at most: no carry)."""
    total = int.from_bytes(tens.translate(_TENS), "big") + int.from_bytes(
        units.translate(_UNITS), "big"
    )
    return total.to_bytes(len(tens), "big")


@dataclass(frozen=True, slots=True)
class DateFormat:
    """``YYYYMMDD``, ``DD/MM/YYYY``, ... in the Buddhist (``BE``) or Common (``CE``) era."""

    pattern: str
    era: str
    regex: re.Pattern[str]
    syntax: str  # for column checks: the format, a blank value, or all-zero digits
    # Byte positions in a value written exactly as the pattern (no padding): where the
    # year, month and day start, and each literal character (for ``suspects``).
    year_at: int = 0
    month_at: int = 0
    day_at: int = 0
    literals: tuple[tuple[int, bytes], ...] = ()
    length: int = 0

    @classmethod
    def compile(cls, pattern: str, era: str) -> DateFormat:
        era = era.upper()
        if era not in ("BE", "CE"):
            raise LayoutError(f"date era must be 'BE' or 'CE', not {era!r}")
        tokens = re.split(r"(YYYY|MM|DD)", pattern)
        if sorted(t for t in tokens if t in ("YYYY", "MM", "DD")) != ["DD", "MM", "YYYY"]:
            raise LayoutError(f"date format {pattern!r} needs YYYY, MM and DD exactly once")
        groups = {"YYYY": "(?P<y>[0-9]{4})", "MM": "(?P<m>[0-9]{2})", "DD": "(?P<d>[0-9]{2})"}
        zeros = {"YYYY": "0000", "MM": "00", "DD": "00"}
        body = "".join(groups.get(t, re.escape(t)) for t in tokens)
        zero = "".join(zeros.get(t, re.escape(t)) for t in tokens)
        plain = "".join(
            {"YYYY": "[0-9]{4}", "MM": "[0-9]{2}", "DD": "[0-9]{2}"}.get(t, re.escape(t))
            for t in tokens
        )
        syntax = f" *(?:{plain}|{zero}) *|{_BLANK}"
        at: dict[str, int] = {}
        literals: list[tuple[int, bytes]] = []
        pos = 0
        for t in tokens:
            if t in ("YYYY", "MM", "DD"):
                at[t] = pos
                pos += len(t)
                continue
            for ch in t:
                # A literal outside ASCII has no single byte: no vectorised check then.
                literals.append((pos, ch.encode() if ch.isascii() else b""))
                pos += 1
        return cls(
            pattern,
            era,
            re.compile(f" *{body} *"),
            syntax,
            at["YYYY"],
            at["MM"],
            at["DD"],
            tuple(literals),
            pos,
        )

    def suspects(self, joined: bytes, n: int, sep: bytes) -> list[int] | None:
        """Positions of the ``n`` values of a column joined by ``sep`` (``Batch.joined``)
        that may not be valid dates: the others are valid for sure (``parse_date``
        accepts them), found by whole-column byte passes, not by converting or hashing a
        million values. None when the column is not made of values of exactly the
        pattern's length (blanks, padding): convert them all.

        Each byte position of every value is one strided slice of the joined column.
        Per slice, ``translate`` maps each byte to 1 where it is wrong (a non-digit, an
        implausible year digit, a wrong literal) and the masks are OR-ed as big integers,
        byte by byte. Month and day numbers come from their digits the same way (tens +
        units by integer addition, no byte overflowing), and a table of (day class,
        month) codes says which days exist in which month. The 29th of February is
        always a suspect: whether its year is a leap year is left to ``parse_date``."""
        if not n:
            return []
        size = self.length
        stride = size + 1
        if len(joined) != stride * n - 1 or joined[size::stride] != sep * (n - 1):
            return None
        wrong = 0
        for k, lit in self.literals:
            if not lit:
                return None
            wrong |= int.from_bytes(joined[k::stride].translate(_mask_all_but(lit)), "big")
        y, m, d = self.year_at, self.month_at, self.day_at
        digits = [joined[k::stride] for k in (y, y + 1, y + 2, y + 3, m, m + 1, d, d + 1)]
        for column_digits in digits:
            wrong |= int.from_bytes(column_digits.translate(_NOT_DIGIT), "big")
        # Plausible years: 2300-2699 B.E. (of 2300-2700), 1000-2999 C.E. (of 1-9999).
        if self.era == "BE":
            wrong |= int.from_bytes(digits[0].translate(_mask_all_but(b"2")), "big")
            wrong |= int.from_bytes(digits[1].translate(_mask_all_but(b"3456")), "big")
        else:
            wrong |= int.from_bytes(digits[0].translate(_mask_all_but(b"12")), "big")
        month = _two_digits(digits[4], digits[5]).translate(_MONTH)
        day_class = _two_digits(digits[6], digits[7]).translate(_DAY_CLASS)
        code = int.from_bytes(day_class, "big") + int.from_bytes(month, "big")
        wrong |= int.from_bytes(code.to_bytes(n, "big").translate(_NOT_A_DAY), "big")
        return _marked(wrong, n)


def parse_date(text: str, fmt: DateFormat) -> str | None:
    """A legacy date -> ISO 8601 ``YYYY-MM-DD``; blank or all-zero -> None."""
    m = fmt.regex.fullmatch(text)
    if m is None:
        if not text.strip(" \x00"):
            return None
        raise ValueError(f"not a date in the form {fmt.pattern}")
    written, mo, d = int(m["y"]), int(m["m"]), int(m["d"])
    if written == mo == d == 0:
        return None
    y = written
    if fmt.era == "BE":
        if y not in _BE_PLAUSIBLE:
            raise ValueError(f"year {y} is not a plausible Buddhist-Era year")
        y = be_to_ce(y)
    try:
        return date(y, mo, d).isoformat()
    except ValueError:
        era = "B.E. " if fmt.era == "BE" else ""
        raise ValueError(
            f"day {d:02d} of month {mo:02d} does not exist in {era}{written}"
        ) from None


# Weighted digit sums of 4-digit groups (weights 13..2 of the check-digit rule), so a
# million ids are checked with three dict lookups each instead of twelve multiplications.
_ID_GROUPS = tuple(
    {
        f"{n:04d}": sum(int(d) * (13 - 4 * g - j) for j, d in enumerate(f"{n:04d}"))
        for n in range(10_000)
    }
    for g in range(3)
)


def _id_checks(digits: str) -> bool:
    g0, g1, g2 = _ID_GROUPS
    total = g0[digits[0:4]] + g1[digits[4:8]] + g2[digits[8:12]]
    ok = (11 - total % 11) % 10 == ord(digits[12]) - 48
    return ok


# The check-digit sum modulo 11 over the digits, a byte per value: ``10 * sum + digit``
# (at most 109) -> the sum with that digit's weight (13 .. 2) added, modulo 11; for the
# 13th digit, 0 when it is the check digit of the sum, else 1.
_TIMES_TEN = bytes(10 * b if b <= 10 else 0 for b in range(256))
_ID_STEPS = tuple(
    bytes((code // 10 + code % 10 * weight) % 11 if code < 110 else 0 for code in range(256))
    for weight in range(13, 1, -1)
)
_ID_LAST = bytes(
    0 if code < 110 and (11 - code // 10) % 10 == code % 10 else 1 for code in range(256)
)


def _id_suspects(joined: bytes, n: int, sep: bytes) -> list[int] | None:
    """Positions of the ``n`` values of a column joined by ``sep`` that may not be valid
    13-digit ids (the others are, check digit included), by whole-column passes like
    ``DateFormat.suspects``: per digit position, one strided slice; the weighted sum
    modulo 11 carried from digit to digit as a byte per value (``_ID_STEPS``). None when
    not every value is 13 bytes (blanks, dashes, padding): convert them all."""
    if not n:
        return []
    if len(joined) != 14 * n - 1 or joined[13::14] != sep * (n - 1):
        return None
    wrong = 0
    total = bytes(n)
    for k in range(13):
        digit = joined[k::14]
        wrong |= int.from_bytes(digit.translate(_NOT_DIGIT), "big")
        code = int.from_bytes(total.translate(_TIMES_TEN), "big") + int.from_bytes(
            digit.translate(_UNITS), "big"
        )
        total = code.to_bytes(n, "big").translate(_ID_STEPS[k] if k < 12 else _ID_LAST)
    return _marked(wrong | int.from_bytes(total, "big"), n)


def _parse_thai_id(text: str) -> str | None:
    s = text.strip(" \x00")
    if not s:
        return None
    if not _ID_RE.fullmatch(s):
        raise ValueError("not a 13-digit identifier")
    digits = s.replace("-", "")
    if not _id_checks(digits):
        raise ValueError("check digit does not match")
    return digits


def _parse_boolean(text: str) -> bool | None:
    s = text.strip(" \x00")
    if s in ("", "?"):
        return None
    if s in ("T", "t", "Y", "y", "1"):
        return True
    if s in ("F", "f", "N", "n", "0"):
        return False
    raise ValueError("not a logical value (T/F, Y/N, 1/0)")


def _text(text: str) -> str:
    return text


def _text_key(text: str) -> str:
    return text.strip(" \x00")


def _canonical_number(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return _fixed(Decimal(str(value)).normalize())


_DIGITS = b"0123456789"
_SIGNS = b"+-"
_ZONED_LAST_BYTES = _DIGITS + b"{}ABCDEFGHIJKLMNOPQRpqrstuvwxy"


def _signed_shape(width: int) -> tuple[bytes, ...]:
    """Digits, a sign allowed in the first byte: ``[+-]?[0-9]+`` (integer and decimal)."""
    if width < 2:
        return (_DIGITS,) * width
    return (_DIGITS + _SIGNS, *(_DIGITS,) * (width - 1))


def _zoned_shape(width: int) -> tuple[bytes, ...]:
    """Digits, the overpunched sign-and-digit in the last byte: ``[0-9]*[0-9{}A-Rp-y]``."""
    return (*(_DIGITS,) * (width - 1), _ZONED_LAST_BYTES) if width else ()


_PLUS = bytes.maketrans(b"-", b"+")
_ZONED_MARKS = _ZONED_LAST_BYTES[len(_DIGITS) :]  # the non-digit overpunched last bytes
_ZONED_MARK = bytes.maketrans(_ZONED_MARKS, b"{" * len(_ZONED_MARKS))


def _signed_joined(joined: bytes, sep: bytes) -> bool:
    """Whether every value of ``joined`` (values joined by ``sep``, which no value holds)
    is blank or ``[+-]?[0-9]+``: bytes outside digits and signs found by one
    ``translate``; a sign only first in its value (as many signs as signs after a
    separator, or at the very start) and never last (no sign before a separator or at the
    very end)."""
    if joined.translate(None, _DIGITS + _SIGNS + sep):
        return False
    if b"+" not in joined and b"-" not in joined:
        return True
    signs = joined.translate(_PLUS)
    plus = b"+"
    firsts = signs.count(sep + plus) + signs.startswith(plus)
    return signs.count(plus) == firsts and plus + sep not in signs and not signs.endswith(plus)


def _zoned_joined(joined: bytes, sep: bytes) -> bool:
    """Whether every value of ``joined`` (as in ``_signed_joined``) is blank or
    ``[0-9]*[0-9{}A-Rp-y]``: only those bytes, and an overpunched byte only last in its
    value (each followed by a separator or the very end)."""
    if joined.translate(None, _ZONED_LAST_BYTES + sep):
        return False
    marks = joined.translate(_ZONED_MARK)
    mark = b"{"
    lasts = marks.count(mark + sep) + marks.endswith(mark)
    return marks.count(mark) == lasts


@dataclass(frozen=True, slots=True)
class ValueType:
    """What a field's type does with one raw value (see the module docstring)."""

    name: str
    syntax: str | None  # None: any decodable text is valid
    convert: Callable[[str], object]
    # Whether ``convert`` can refuse a value that matches ``syntax`` (dates, check digits):
    # the loader then runs it on the column's distinct values.
    semantic: bool
    key: Callable[[str], str]
    # width -> the bytes allowed at each byte position of a value that fills its field,
    # chosen so that every value made of them matches ``syntax`` (a sufficient condition,
    # not the syntax itself). Fixed-width columns are checked against it position by
    # position on strided slices of the file, without a million ``bytes`` objects; a
    # column that does not fit is checked against ``syntax`` as before.
    shape: Callable[[int], tuple[bytes, ...]] | None = None
    # (joined column, separator) -> whether every value of a column of variable-length
    # values (CSV), joined by a separator none of them holds, matches ``syntax``: again a
    # sufficient condition, checked by a few whole-column ``translate``/``count`` passes;
    # a column that does not pass is matched against ``syntax`` value by value.
    joined_fits: Callable[[bytes, bytes], bool] | None = None
    # (column of ``bytes`` joined, values, separator) -> positions of the values
    # ``convert`` may refuse (it accepts the others for sure), found by whole-column
    # passes; None: convert them all. For types whose validity ``syntax`` cannot settle
    # (``semantic``: dates, ids).
    suspects: Callable[[bytes, int, bytes], list[int] | None] | None = None

    def __post_init__(self) -> None:
        if self.syntax is not None:
            re.compile(self.syntax)  # fail at configuration time, not at load time


def value_type(
    type_name: str, *, scale: int = 0, date_format: str = "YYYYMMDD", era: str = "CE"
) -> ValueType:
    """The behaviour of one declared field type."""
    if type_name == "text":
        return ValueType("text", None, _text, False, _text_key)
    if type_name == "integer":
        return ValueType(
            "integer",
            f"{_INT_SYNTAX}|{_BLANK}",
            parse_integer,
            False,
            lambda t: _canonical_number(parse_integer(t)),
            _signed_shape,
            _signed_joined,
        )
    if type_name in ("decimal", "zoned"):
        parse = parse_decimal if type_name == "decimal" else parse_zoned
        syntax = _DEC_SYNTAX if type_name == "decimal" else _ZONED_SYNTAX

        def convert(t: str) -> str | None:
            return parse(t, scale)

        return ValueType(
            type_name,
            f"{syntax}|{_BLANK}",
            convert,
            False,
            lambda t: _canonical_number(convert(t)),
            _signed_shape if type_name == "decimal" else _zoned_shape,
            _signed_joined if type_name == "decimal" else _zoned_joined,
        )
    if type_name == "date":
        fmt = DateFormat.compile(date_format, era)

        def convert_date(t: str) -> str | None:
            return parse_date(t, fmt)

        return ValueType(
            "date",
            fmt.syntax,
            convert_date,
            True,
            lambda t: convert_date(t) or "",
            suspects=fmt.suspects,
        )
    if type_name in ("citizen_id", "juristic_id"):
        return ValueType(
            type_name,
            f"{_ID_SYNTAX}|{_BLANK}",
            _parse_thai_id,
            True,
            lambda t: _parse_thai_id(t) or "",
            suspects=_id_suspects,
        )
    if type_name == "boolean":

        def bool_key(t: str) -> str:
            v = _parse_boolean(t)
            return "" if v is None else ("true" if v else "false")

        return ValueType("boolean", _BOOL_SYNTAX, _parse_boolean, False, bool_key)
    raise LayoutError(f"field type {type_name!r} is unknown; use one of {', '.join(FIELD_TYPES)}")


# DBF binary field types (FoxPro): fixed-size little-endian values, always syntactically valid.
def dbf_datetime(raw: bytes) -> str | None:
    """FoxPro ``T``: Julian day number and milliseconds since midnight -> ISO 8601."""
    day = int.from_bytes(raw[:4], "little", signed=True)
    ms = int.from_bytes(raw[4:8], "little", signed=True)
    if day == 0 and ms == 0:
        return None
    # Julian day 2440588 is 1970-01-01.
    moment = datetime(1970, 1, 1) + timedelta(days=day - 2440588, milliseconds=ms)
    return moment.isoformat(timespec="seconds")
