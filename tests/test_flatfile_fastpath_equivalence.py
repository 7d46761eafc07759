"""Whole-column fast paths of the flat-file loader against the value-by-value paths.

Every fast path (``CsvFrame._bare_plain``, ``ValueType.joined_fits``, date and id
``suspects``, ``_Validator.joined_keys``, the index's unpadded join) is only a shortcut:
with all of them switched off the loader must accept and reject the same files, report the
same (line, field, reason), serve the same record spans and build byte-identical indexes.
Seeded exports mix what the shortcuts must hand back: line breaks other than LF (a lone CR,
VT, FF, FS-RS, NEL in cp874, CRLF mixed with LF), the ``\\x1f`` separator of the old joins,
signs, overpunch, padding, Thai digits, impossible and leap days, wrong check digits,
padded and repeating keys, chunk boundaries anywhere (a tiny ``_CHUNK``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from adapters.flatfile import csvfile, index, loader, values
from adapters.flatfile.errors import ExportRejected
from adapters.flatfile.layout import parse_layout
from xroad_hub.protocol.thaiid import with_check_digit

LAYOUT: dict[str, Any] = {
    "format": "csv",
    "keys": ["code", "owner"],
    "field": [
        {"name": "code", "required": True},
        {"name": "owner", "type": "citizen_id"},
        {"name": "count", "type": "integer"},
        {"name": "amount", "type": "decimal", "scale": 2},
        {"name": "zoned", "type": "zoned"},
        {"name": "issued", "type": "date", "format": "DD/MM/YYYY", "era": "BE"},
        {"name": "seen", "type": "date", "format": "YYYYMMDD", "era": "CE", "required": True},
    ],
}
COLUMNS = ["code", "owner", "count", "amount", "zoned", "issued", "seen", "note"]
ODD = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", " ", "\x00", "๑", '"']


def _value(rnd: random.Random, column: str, bad: float) -> str:
    """A value of ``column``, now and then a wrong or odd one."""
    y, m, d = rnd.randint(2400, 2600), rnd.randint(1, 12), rnd.randint(1, 28)
    if rnd.random() < bad:
        m, d = rnd.choice([(2, 29), (2, 30), (4, 31), (0, 1), (13, 1), (1, 0), (1, 32), (0, 0)])
        y = rnd.choice([y, 2567, 2566, 2299, 2700, 2701, 0])
    if column == "code":
        value = rnd.choice(["A", "B", "C"]) if rnd.random() < 0.5 else f"K{rnd.randint(0, 500)}"
    elif column == "owner":
        value = with_check_digit(f"{rnd.randint(1, 8)}{rnd.randint(0, 10**11 - 1):011d}")
        if rnd.random() < bad:
            value = rnd.choice([value[:12] + str((int(value[12]) + 1) % 10), value[:12], ""])
    elif column == "count":
        value = rnd.choice([str(rnd.randint(-999, 999)), f"+{rnd.randint(0, 9)}", "0"])
    elif column == "amount":
        value = rnd.choice(
            [str(rnd.randint(-9999, 9999)), f"{rnd.randint(0, 99)}.{rnd.randint(0, 9)}"]
        )
    elif column == "zoned":
        value = str(rnd.randint(0, 999)) + rnd.choice("0{}AJpy")
    elif column == "issued":
        value = f"{d:02d}/{m:02d}/{y:04d}"
    elif column == "seen":
        value = f"{y - 543:04d}{m:02d}{d:02d}" if y else "00000000"
    else:
        value = rnd.choice(["", "บางรัก", "x y", "๑๒๓"])
    if rnd.random() < bad:
        i = rnd.randint(0, len(value))
        value = value[:i] + rnd.choice(ODD) + value[i:]
    if rnd.random() < bad:
        value = rnd.choice([" " + value, value + " ", "", "-", value + "-"])
    if rnd.random() < bad / 50:
        value += "\r"  # a CR alone: the csv module refuses the file
    return value


def _export(seed: int) -> tuple[bytes, dict[str, Any]]:
    rnd = random.Random(seed)
    encoding = rnd.choice(["cp874", "tis-620", "utf-8"])
    bad = rnd.choice([0.0, 0.002, 0.02, 0.1])
    eol = rnd.choice(["\n", "\r\n", "mixed"])
    lines = [",".join(COLUMNS)]
    for _ in range(rnd.choice([1, 2, 40, 400])):
        row = [_value(rnd, c, bad).replace(",", "") for c in COLUMNS]
        if rnd.random() < bad / 4:
            row = row[:-1] if rnd.random() < 0.5 else [*row, "x"]
        lines.append(",".join(row))
    text = "".join(line + (rnd.choice(["\n", "\r\n"]) if eol == "mixed" else eol) for line in lines)
    data = text.encode(encoding, "replace")
    if rnd.random() < 0.2:
        data = data.rstrip(b"\r\n")
    return data, {**LAYOUT, "encoding": encoding, "require_final_newline": False}


def _load(data: bytes, spec: dict[str, Any]) -> tuple[Any, ...]:
    """What a load decides and serves, comparable as a whole."""
    lay = parse_layout(spec)  # after the patches: types take their suspects from here
    try:
        res = loader.load_export(data, lay, lay.keys, max_bad_share=1.0)
    except ExportRejected as exc:
        return ("rejected", exc.reason, list(exc.broken), exc.broken_count)
    spans = [res.framing.span(i) for i in range(res.framing.count)]
    blobs = {name: (ix.width, ix.blob) for name, ix in res.indexes.items()}
    return ("ok", res.records, res.valid, res.broken_count, res.broken, spans, blobs)


def _slow_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shortcut off: the value-by-value paths the shortcuts stand in for."""
    monkeypatch.setattr(csvfile.CsvFrame, "_bare_plain", lambda self, chunk, skeleton=None: None)
    monkeypatch.setattr(loader, "_joined_fits", lambda f, col, joined: False)
    monkeypatch.setattr(values.DateFormat, "suspects", lambda self, joined, n, sep: None)
    monkeypatch.setattr(values, "_id_suspects", lambda joined, n, sep: None)
    monkeypatch.setattr(loader._Validator, "joined_keys", lambda self, batch, f, skip: None)
    monkeypatch.setattr(
        index, "_padded", lambda keys, width, longest, pad: b"".join(map(pad, keys))
    )


@pytest.mark.parametrize("chunk", [97, 1000, 1 << 22])
def test_fast_paths_decide_report_and_serve_as_the_slow_paths(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(csvfile, "_CHUNK", chunk)
    monkeypatch.setattr(index, "_SAMPLE", 8)  # repeating keys take the grouped path
    exports = [_export(seed) for seed in range(60)]
    taken: list[bool] = []
    bare_plain = csvfile.CsvFrame._bare_plain

    def spy(self: csvfile.CsvFrame, chunk: bytes, skeleton: bytes | None = None) -> Any:
        out = bare_plain(self, chunk, skeleton)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(csvfile.CsvFrame, "_bare_plain", spy)
    fast = [_load(data, spec) for data, spec in exports]
    assert taken.count(True) > 20 and taken.count(False) > 5  # both ways were compared
    _slow_paths(monkeypatch)
    slow = [_load(data, spec) for data, spec in exports]
    for seed, (f, s) in enumerate(zip(fast, slow, strict=True)):
        assert f == s, f"seed {seed}"
    assert sum(f[0] == "ok" and f[3] > 0 for f in fast) > 10  # some reports compared
    assert sum(f[0] == "ok" and f[3] == 0 for f in fast) > 5  # and clean files
