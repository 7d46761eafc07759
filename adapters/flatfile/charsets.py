"""Declared file encodings: Thai legacy code pages and UTF-8 (with or without a BOM).

Thai exports come in TIS-620 (the national standard, mainframes) or Windows-874 (cp874,
TIS-620 plus a few punctuation marks in 0x80-0x9F). Both are single-byte, so a byte offset is
a character offset and undecodable bytes can be found with one byte-class search instead of
decoding the whole file. C1 control bytes (0x80-0x9F) count as undecodable for TIS-620: in a
file declared TIS-620 they are almost always cp874 punctuation under the wrong label, and
publishing them as control characters would not be "exactly" the text the agency holds.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from .errors import LayoutError

__all__ = ["BOM_UTF8", "Charset", "charset"]

BOM_UTF8 = codecs.BOM_UTF8

_ALIASES = {
    "tis-620": "tis-620",
    "tis620": "tis-620",
    "tis_620": "tis-620",
    "cp874": "cp874",
    "windows-874": "cp874",
    "x-windows-874": "cp874",
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "utf-8-sig": "utf-8",
}


@dataclass(frozen=True, slots=True)
class Charset:
    name: str  # canonical: tis-620, cp874 or utf-8
    codec: str  # Python codec name
    single_byte: bool
    # Single-byte charsets: a bytes pattern matching any byte that is not publishable text.
    invalid_byte: re.Pattern[bytes] | None
    # Characters that betray a bad byte in text decoded with errors="surrogateescape".
    bad_text: re.Pattern[str]
    # Single-byte charsets: every byte that is publishable text (for ``bytes.translate``).
    valid_bytes: bytes = b""

    def decode(self, data: bytes) -> str:
        return data.decode(self.codec)


def _invalid_list(codec: str, *, c1_invalid: bool) -> list[int]:
    bad = []
    for b in range(256):
        try:
            text = bytes([b]).decode(codec)
        except UnicodeDecodeError:
            bad.append(b)
            continue
        if c1_invalid and 0x80 <= ord(text) <= 0x9F:
            bad.append(b)
    return bad


def _single_byte(name: str, codec: str, *, c1_invalid: bool, bad_text: re.Pattern[str]) -> Charset:
    bad = _invalid_list(codec, c1_invalid=c1_invalid)
    pattern = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in bad) + b"]")
    valid = bytes(b for b in range(256) if b not in bad)
    return Charset(name, codec, True, pattern, bad_text, valid)


_SURROGATES = re.compile("[\udc80-\udcff]")
_CHARSETS = {
    "tis-620": _single_byte(
        "tis-620", "tis_620", c1_invalid=True, bad_text=re.compile("[\udc80-\udcff\x80-\x9f]")
    ),
    "cp874": _single_byte("cp874", "cp874", c1_invalid=False, bad_text=_SURROGATES),
    "utf-8": Charset("utf-8", "utf-8", False, None, _SURROGATES),
}


def charset(name: str) -> Charset:
    """The charset for a declared encoding name (case-insensitive aliases accepted)."""
    canonical = _ALIASES.get(name.strip().lower())
    if canonical is None:
        raise LayoutError(
            f"encoding {name!r} is not supported; use one of tis-620, cp874, utf-8 "
            "(utf-8 accepts a byte-order mark)"
        )
    return _CHARSETS[canonical]
