"""CSV and TSV exports: header mapping, rows in batches for validation, decoding one row.

Rows are parsed with the standard library's ``csv`` module (quoted fields may hold
delimiters and line breaks). Lines are cut on LF in the raw bytes and in the decoded text
alike, which correspond one to one for every supported charset, so each row's byte span is
known without re-encoding anything: a row is served by decoding only its own bytes again.
Chunks without quotes (``_bare_plain``, ``_plain_fields``) are split as bytes and never
decoded at load; other chunks are decoded with undecodable bytes kept as surrogates, so the
row and field that hold them can be reported either way.
"""

from __future__ import annotations

import csv
from array import array
from collections.abc import Iterator
from dataclasses import replace
from itertools import accumulate, chain, compress, repeat
from operator import add

from .charsets import BOM_UTF8, Charset
from .errors import ExportRejected
from .frame import Batch, Broken, Framing
from .layout import Field, Layout, check_field_name
from .values import value_type

__all__ = ["CsvReader", "csv_frame", "resolve_csv_fields"]

_CHUNK = 4 * 1024 * 1024  # decode this many bytes at a time (a str of Thai text is 2x)


def _body_start(buf: bytes, charset: Charset) -> int:
    return len(BOM_UTF8) if charset.name == "utf-8" and buf.startswith(BOM_UTF8) else 0


def _lines(text: str) -> list[str]:
    """Lines with their LF kept, cut on LF only (``str.splitlines`` also cuts on VT, FS, ...)."""
    parts = text.split("\n")
    last = parts.pop()
    out = [p + "\n" for p in parts]
    if last:
        out.append(last)
    return out


def _ascii(char: str) -> bytes | None:
    return char.encode("ascii") if char.isascii() else None


def _reader(lines: Iterator[str] | list[str], layout: Layout):  # type: ignore[no-untyped-def]
    return csv.reader(lines, delimiter=layout.delimiter, quotechar=layout.quotechar)


def resolve_csv_fields(buf: bytes, layout: Layout) -> tuple[Field, ...]:
    """The layout's fields with their column positions; without a layout, every header column
    as a text field. A header that lacks a declared column rejects the file."""
    if not layout.header:
        return layout.fields
    start = _body_start(buf, layout.encoding)
    end = buf.find(b"\n", start)
    first = buf[start : end + 1 if end >= 0 else len(buf)]
    try:
        header = next(_reader(_lines(first.decode(layout.encoding.codec)), layout), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ExportRejected(f"the header line cannot be read: {exc}") from exc
    header = [h.strip() for h in header]
    if not header:
        raise ExportRejected("the file has no header line")
    if not layout.fields:
        fields = []
        for i, name in enumerate(header):
            try:
                check_field_name(name, "header column")
            except ValueError as exc:
                raise ExportRejected(f"{exc}; describe the file with a layout") from None
            fields.append(Field(name, "text", value_type("text"), position=i))
        return tuple(fields)
    out = []
    for f in layout.fields:
        wanted = f.column or f.name
        if wanted not in header:
            raise ExportRejected(f"the header has no column {wanted!r} (field {f.name!r})")
        out.append(replace(f, position=header.index(wanted)))
    return tuple(out)


class CsvFrame:
    """One pass over the rows, yielding one validation batch per chunk of the file and
    recording each row's byte span.

    Chunks end at a line break outside quotes (the quote characters before it are even in
    number), so no row spans two chunks. Within a chunk, rows are usually lines: then the
    whole chunk is parsed with one ``csv.reader`` call and the spans come from the line
    lengths; only a chunk where a quoted field holds a line break is walked row by row.
    """

    def __init__(self, buf: bytes, layout: Layout) -> None:
        if layout.require_final_newline and buf and not buf.endswith(b"\n"):
            raise ExportRejected(
                "the file does not end with a line break: half-written (the last row is cut off)"
            )
        self.buf = buf
        self.layout = layout
        self.fields = {f.name: f for f in layout.fields}
        self.ncols = max((f.position or 0) for f in layout.fields) + 1
        self.bounds = array("Q")
        self.count = 0
        self.expected = 0  # columns of the header line, when there is one
        # Plain chunks are split as bytes; only an ASCII delimiter and quote can be.
        self._delimiter_byte = _ascii(layout.delimiter)
        self._quote_byte = _ascii(layout.quotechar)
        # Every byte but the delimiter and LF: deleted, they leave a chunk's skeleton.
        self._skeleton_bytes = b"\n" + (self._delimiter_byte or b"")
        self._not_skeleton = bytes(b for b in range(256) if b not in self._skeleton_bytes)
        valid = layout.encoding.valid_bytes
        self._valid_not_skeleton = bytes(b for b in valid if b not in self._skeleton_bytes)
        self.first_line = 0

    def _chunks(self) -> Iterator[tuple[int, int]]:
        """(start, end) of chunks that end outside quotes. The lines before the first chunk
        (the header's: 0 or 1) are left in ``self.first_line``."""
        buf, quote = self.buf, self.layout.quotechar.encode(self.layout.encoding.codec)
        pos = _body_start(buf, self.layout.encoding)
        line = 0
        if self.layout.header:
            end = buf.find(b"\n", pos)
            end = len(buf) if end < 0 else end + 1
            try:
                head = buf[pos:end].decode(self.layout.encoding.codec)
                self.expected = len(next(_reader(_lines(head), self.layout), []))
            except (UnicodeDecodeError, csv.Error) as exc:
                raise ExportRejected(f"the header line cannot be read: {exc}") from exc
            pos, line = end, 1
        self.first_line = line
        while pos < len(buf):
            end = min(len(buf), pos + _CHUNK)
            while True:
                cut = buf.rfind(b"\n", pos, end) if end < len(buf) else len(buf) - 1
                stop = cut + 1 if cut >= pos else len(buf)
                # (Most chunks hold no quote at all: one memchr says so before a count.)
                if (
                    buf.find(quote, pos, stop) < 0
                    or buf.count(quote, pos, stop) % 2 == 0
                    or stop >= len(buf)
                ):
                    break
                # Inside a quoted field: take more, from the end looked at (growing from
                # ``stop`` found the same line break again when none follows: no end).
                end = min(len(buf), max(end, stop) + _CHUNK)
            yield pos, stop
            pos = stop

    def batches(self) -> Iterator[Batch]:
        charset, layout = self.layout.encoding, self.layout
        next_line: int | None = None  # lines before the next chunk
        for start, stop in self._chunks():
            first_line = self.first_line if next_line is None else next_line
            chunk = self.buf[start:stop]
            skeleton = None
            if charset.invalid_byte is not None:
                # One pass for two answers: the valid bytes deleted but the delimiter and LF
                # leave the undecodable bytes, if any, and else the chunk's skeleton.
                rest = chunk.translate(None, self._valid_not_skeleton)
                suspect = bool(rest.translate(None, self._skeleton_bytes))
                skeleton = None if suspect else rest
            else:
                try:
                    chunk.decode(charset.codec)
                    suspect = False
                except UnicodeDecodeError:
                    suspect = True
            bare = self._bare_plain(chunk, skeleton)
            if bare is not None:
                lengths, term, flat, width = bare
                next_line = first_line + len(lengths)
                self._extend_bounds(
                    list(accumulate(map(add, lengths, repeat(term)), initial=start))
                )
                batch = self._plain_batch(flat, width, len(lengths), first_line, suspect)
                # Held by the batch only, its values are freed with it, before the next
                # chunk is split (see ``load_export``): the next values then take their
                # place in the same order, in memory still warm.
                del bare, flat
                yield batch
                del batch
                continue
            next_line = first_line + chunk.count(b"\n")
            raw_lines = chunk.split(b"\n")
            if raw_lines[-1] == b"":
                raw_lines.pop()
            starts = list(accumulate(map(add, map(len, raw_lines), repeat(1)), initial=start))
            starts[-1] = min(starts[-1], stop)  # the last line may lack its line break
            plain = self._plain_fields(chunk, raw_lines)
            if plain is not None:
                self._extend_bounds(starts)
                yield self._plain_batch(*plain, len(raw_lines), first_line, suspect)
                continue
            text = chunk.decode(charset.codec, "surrogateescape")
            lines = text.split("\n")
            if lines[-1] == "":
                lines.pop()
            try:
                reader = _reader(lines, layout)
                rows = list(reader)
                if reader.line_num == len(rows):  # one row per line
                    keep = [bool(r) for r in rows]
                    line_idx = list(compress(range(len(rows)), keep))
                    rows = list(compress(rows, keep))
                else:
                    reader = _reader(iter(lines), layout)
                    rows, line_idx, prev = [], [], 0
                    for row in reader:
                        if row:
                            rows.append(row)
                            line_idx.append(prev)
                        prev = reader.line_num
            except csv.Error as exc:
                raise ExportRejected(f"CSV syntax error near line {first_line + 1}: {exc}") from exc
            if not rows:
                continue
            ends = [*line_idx[1:], len(lines)]
            self.bounds.extend(
                chain.from_iterable(
                    zip(
                        map(starts.__getitem__, line_idx),
                        map(starts.__getitem__, ends),
                        strict=True,
                    )
                )
            )
            yield self._batch(rows, [first_line + i for i in line_idx], suspect)

    def _extend_bounds(self, starts: list[int]) -> None:
        """(start, end) of each line: the starts interleaved with themselves shifted by one,
        by two strided array assignments instead of a million pairs."""
        n = len(starts) - 1
        line_starts = array("Q", starts)
        pairs = array("Q", bytes(2 * n * line_starts.itemsize))
        pairs[0::2] = line_starts[:-1]
        pairs[1::2] = line_starts[1:]
        self.bounds.extend(pairs)

    def _bare_plain(
        self, chunk: bytes, skeleton: bytes | None = None
    ) -> tuple[list[int], int, list[bytes], int] | None:
        """The usual chunk, plain (``_plain_fields``) and ending in a line break, its line
        breaks all LF or all CRLF, judged by whole-chunk passes, not line by line:

        - the chunk with every byte but the delimiter and LF deleted (one ``translate``) is
          its first line's delimiters and LF repeated: every line has as many fields;
        - ``bytes.splitlines`` cuts at LF, CRLF and a lone CR alike, so with as many lines
          as line feeds no CR stands alone and every CR is the first half of a CRLF: the
          bytes not in any line are then one or two per line when every line ends in LF,
          or every line in CRLF.

        ``skeleton``: the chunk's, when already made. Returns the lengths of the lines
        without their breaks, the length of each break, all fields in one flat list and
        the fields per row; None sends the chunk the general way."""
        delimiter, quote = self._delimiter_byte, self._quote_byte
        if (
            delimiter is None
            or quote is None
            or delimiter in b"\r\n"
            or not chunk.endswith(b"\n")  # the file's last line, without a break
            or quote in chunk
            or b"\0" in chunk
        ):
            return None
        if skeleton is None:
            skeleton = chunk.translate(None, self._not_skeleton)
        width = skeleton.index(b"\n") + 1  # the first line's delimiters + 1, with its LF
        rows, odd = divmod(len(skeleton), width)
        if odd or skeleton != skeleton[:width] * rows:
            return None
        if (self.expected and width != self.expected) or width < self.ncols:
            return None
        lines = chunk.splitlines()
        if len(lines) != rows or b"" in lines:  # a lone CR; a blank line (csv skips it)
            return None
        lengths = list(map(len, lines))
        term, odd = divmod(len(chunk) - sum(lengths), rows)  # bytes of line breaks per line
        if odd or term not in (1, 2):
            return None  # some lines end in CRLF, others in LF: _plain_fields
        flat = delimiter.join(lines).split(delimiter)
        assert len(flat) == rows * width, "a plain chunk splits into whole rows"
        return lengths, term, flat, width

    def _plain_fields(self, chunk: bytes, lines: list[bytes]) -> tuple[list[bytes], int] | None:
        """All fields of a plain chunk in one flat list, and the fields per row; None for
        any other chunk, which goes through ``csv.reader`` (that also reports what is wrong).

        Plain: no quote character, no NUL, no carriage return other than before a line
        feed, no blank line, and every line with the same number of fields, as many as the
        header has (or, without a header, at least as many as the layout needs). Splitting
        such a chunk on the delimiter gives exactly what ``csv.reader`` gives, at a
        fraction of its cost and without a list per row. The chunk is judged and split as
        bytes, undecoded: the delimiter and quote are ASCII, and an ASCII byte stands for
        its own character in every supported charset (in UTF-8 it is never part of a
        longer sequence). The usual chunk is judged faster by ``_bare_plain``."""
        delimiter, quote = self._delimiter_byte, self._quote_byte
        if (
            not lines
            or delimiter is None
            or quote is None
            or delimiter in b"\r\n"
            or quote in chunk
            or b"\0" in chunk
            or b"" in lines
            or b"\r" in lines
        ):
            return None
        counts = set(map(bytes.count, lines, repeat(delimiter)))
        if len(counts) != 1:
            return None
        width = counts.pop() + 1
        if (self.expected and width != self.expected) or width < self.ncols:
            return None
        if b"\r" in chunk:
            # Every CRLF a field break at once; a CR left over stands alone.
            end = -2 if chunk.endswith(b"\r\n") else -1 if chunk.endswith(b"\n") else None
            body = chunk[:end].replace(b"\r\n", delimiter)
            if b"\r" in body:
                return None
            flat = body.replace(b"\n", delimiter).split(delimiter)
        else:
            flat = delimiter.join(lines).split(delimiter)
        assert len(flat) == len(lines) * width, "a plain chunk splits into whole rows"
        return flat, width

    def _plain_batch(
        self, flat: list[bytes], width: int, rows: int, first_line: int, suspect: bool
    ) -> Batch:
        """A batch of a plain chunk (``_plain_fields``): its fields are ``bytes`` in the
        file's encoding (decoded only when a record is answered), a column is every
        ``width``-th value, sliced at C speed."""
        first = self.count
        self.count += rows
        positions = {name: f.position or 0 for name, f in self.fields.items()}

        def column(name: str) -> list[bytes]:
            # Sliced anew each time, not kept: slices kept alive until the batch is freed
            # free its values column by column, and the next chunk's values, allocated in
            # that scattered order, made every later pass over them ~1.3x slower.
            return flat[positions[name] :: width]

        return Batch(
            first,
            rows,
            column,
            line_of=lambda recno: first_line + (recno - first) + 1,
            suspect_text=suspect,
        )

    def _batch(self, rows: list[list[str]], first_lines: list[int], suspect: bool) -> Batch:
        first = self.count
        self.count += len(rows)
        problems: dict[int, Broken] = {}
        ncols, expected = self.ncols, self.expected
        for i, row in enumerate(rows):
            if len(row) < ncols or (expected and len(row) != expected):
                problems[first + i] = Broken(
                    first_lines[i] + 1,
                    None,
                    f"row has {len(row)} columns; expected {expected or ncols}",
                )
                rows[i] = row + [""] * (ncols - len(row))
        cache: dict[str, list[str]] = {}

        def column(name: str) -> list[str]:
            if name not in cache:
                pos = self.fields[name].position
                cache[name] = [r[pos] for r in rows]  # type: ignore[index]
            return cache[name]

        return Batch(
            first,
            len(rows),
            column,
            problems,
            line_of=lambda recno: first_lines[recno - first] + 1,
            suspect_text=suspect,
        )

    def framing(self) -> Framing:
        return Framing(self.count, bounds=self.bounds)


def csv_frame(buf: bytes, layout: Layout) -> CsvFrame:
    """The loader's view of a CSV export whose fields are resolved (``resolve_csv_fields``)."""
    return CsvFrame(buf, layout)


class CsvReader:
    """Decodes one row of a CSV export into its published fields."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.codec = layout.encoding.codec
        self.fields = tuple(f for f in layout.fields if f.publish)

    def raw(self, record: bytes, f: Field) -> str:
        return self.row(record)[f.position or 0]

    def row(self, record: bytes) -> list[str]:
        return next(_reader(_lines(record.decode(self.codec)), self.layout))

    def decode(self, record: bytes) -> dict[str, object]:
        row = self.row(record)
        out: dict[str, object] = {}
        for f in self.fields:
            raw = row[f.position or 0]
            out[f.name] = raw if f.type == "text" else f.vtype.convert(raw)
        return out
