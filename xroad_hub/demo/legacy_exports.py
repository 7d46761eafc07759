"""Seeded legacy exports of the demo: DOL title deeds (fixed width, TIS-620) and RD tax
clearance (CSV, cp874), matching ``schemas/dol-titledeeds.layout.toml`` and
``schemas/rd-taxclearance.layout.toml``.

Owners and companies are the DBD demo registry's own (``synthetic.people``/``companies``
with the same seed): the premises of every company has a title deed owned by its first
director, and every company has tax-clearance rows. A few records are broken on purpose
(wrong check digit, impossible date, a byte TIS-620/cp874 cannot decode) so that the
adapter's broken-record report has something to show. Synthetic data only.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

from xroad_hub.demo.synthetic import Company, Person, companies, people
from xroad_hub.privatefile import write_private

__all__ = [
    "DOL_EXPORT_NAME",
    "KINDS",
    "ensure_export",
    "rd_taxclearance_csv",
    "title_deed_lines",
    "write_atomic",
]

BE = 543
DOL_EXPORT_NAME = "titledeeds-25681121.txt"  # dated export names: newest sorts last
_RECORD = 200
# Bangkok land offices by district (province 10 + district code), as in synthetic._DISTRICTS.
_LAND_OFFICES = {
    "Phra Nakhon": "1001",
    "Bang Rak": "1004",
    "Pathum Wan": "1007",
    "Chatuchak": "1030",
    "Huai Khwang": "1017",
    "Bang Kapi": "1006",
}
_RD_OFFICE = "สำนักงานสรรพากรพื้นที่กรุงเทพมหานคร \u2013 "  # en dash: in cp874, not TIS-620


def _text(value: str, width: int) -> bytes:
    raw = value.encode("tis-620")[:width]
    return raw.ljust(width, b" ")


def _zoned(value: int, width: int) -> bytes:
    digits = str(abs(value)).rjust(width, "0")
    last = int(digits[-1])
    over = "{ABCDEFGHI"[last] if value >= 0 else "}JKLMNOPQR"[last]
    return (digits[:-1] + over).encode()


def _signed(value: int, width: int) -> bytes:
    return (("-" if value < 0 else "+") + str(abs(value)).rjust(width - 1, "0")).encode()


def _office(address_en: str) -> str:
    for district, code in _LAND_OFFICES.items():
        if district in address_en:
            return code
    return "1001"


def _deed(
    rng: random.Random, deed_no: int, owner: Person, address_th: str, address_en: str
) -> bytes:
    issued = date(1975, 1, 1) + timedelta(days=rng.randint(0, 40 * 365))
    transfer = issued + timedelta(days=rng.randint(0, 8000))
    sqwa_tenths = rng.randint(0, 999)
    record = b"".join(
        (
            str(deed_no).rjust(8, "0").encode(),
            str(rng.randint(1, 99999)).rjust(6, "0").encode(),
            str(rng.randint(1, 9999)).rjust(6, "0").encode(),
            _office(address_en).encode(),
            owner.citizen_id.encode(),
            _text(f"{owner.given_name_th} {owner.family_name_th}", 60),
            str(rng.randint(0, 12)).rjust(4, "0").encode(),
            str(rng.randint(0, 3)).encode(),
            str(sqwa_tenths).rjust(5, "0").encode(),
            f"{issued.day:02d}{issued.month:02d}{issued.year + BE}".encode(),
            f"{transfer.year + BE}{transfer.month:02d}{transfer.day:02d}".encode(),
            _zoned(rng.randint(500_000, 90_000_000) * 100, 12),
            _signed(rng.choice([0, 0, 0, 12_350, 48_000, -2_500]), 10),
            _text(address_th, 54),
            rng.choice(b"AAAAM").to_bytes(1, "big"),
        )
    )
    assert len(record) == _RECORD
    return record


def title_deed_lines(
    seed: int = 2569,
    count: int | None = None,
    *,
    owners: list[Person] | None = None,
    broken: bool = True,
) -> Iterator[bytes]:
    """Title-deed records (200 bytes, no terminator). Without ``count``: one deed for the
    premises of every DBD demo company and one for about half of the demo people."""
    persons = owners if owners is not None else people(seed, 400)
    rng = random.Random(f"titledeeds:{seed}")
    deed_no = 10_000
    produced = 0
    if count is None:
        for company in companies(seed, 200, persons):
            director = next(p for p in persons if p.citizen_id == company.directors[0])
            deed_no += rng.randint(1, 40)
            yield _broken_deed(rng, produced, broken) or _deed(
                rng, deed_no, director, company.address_th, company.address_en
            )
            produced += 1
        for person in persons:
            if rng.random() < 0.5:
                deed_no += rng.randint(1, 40)
                yield _deed(rng, deed_no, person, person.address_th, person.address_en)
        return
    for i in range(count):
        deed_no += rng.randint(1, 3)
        person = persons[rng.randrange(len(persons))]
        yield _broken_deed(rng, i, broken) or _deed(
            rng, deed_no, person, person.address_th, person.address_en
        )


def _broken_deed(rng: random.Random, i: int, broken: bool) -> bytes | None:
    """Records 7, 42 and 99 are broken on purpose (reported, never served)."""
    if not broken or i not in (7, 42, 99):
        return None
    base = bytearray(
        _deed(
            rng,
            90_000_000 + i,
            people(0, 1)[0],
            "1 ถนนราชดำเนิน เขตพระนคร กรุงเทพมหานคร",
            "Phra Nakhon",
        )
    )
    if i == 7:  # the citizen id's check digit is wrong
        base[36] = ord("0") + (base[36] - ord("0") + 1) % 10
    elif i == 42:  # 31 February 2567 B.E.
        base[107:115] = b"31022567"
    else:  # a byte that TIS-620 cannot decode, in the owner's name
        base[38] = 0xDB
    return bytes(base)


def rd_taxclearance_csv(seed: int = 2569, *, broken: bool = True) -> bytes:
    """The RD tax-clearance export of every DBD demo company for tax years 2565-2567 B.E.,
    as cp874 CSV with a header and CRLF line ends."""
    persons = people(seed, 400)
    rng = random.Random(f"taxclearance:{seed}")
    out = io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(
        [
            "juristic_id",
            "company_name_th",
            "company_name_en",
            "tax_year",
            "status",
            "status_th",
            "certificate_no",
            "issued_on",
            "valid_until",
            "outstanding_thb",
            "rd_office",
        ]
    )
    row_no = 0
    for company in companies(seed, 200, persons):
        for year in (2565, 2566, 2567):
            w.writerow(_clearance_row(rng, company, year, row_no, broken))
            row_no += 1
    return out.getvalue().encode("cp874", "surrogateescape")


def _clearance_row(
    rng: random.Random, company: Company, year: int, row_no: int, broken: bool
) -> list[str]:
    cleared = rng.random() < 0.85
    issued = date(year - BE + 1, rng.randint(1, 3), rng.randint(1, 28))
    row = [
        company.juristic_id,
        company.name_th,
        company.name_en,
        str(year),
        "CLEARED" if cleared else "OUTSTANDING",
        "ไม่มีภาษีค้างชำระ" if cleared else "มีภาษีค้างชำระ",
        f"RD-{year}-{row_no + 1:06d}" if cleared else "",
        f"{issued.day:02d}/{issued.month:02d}/{issued.year + BE}",
        f"31/12/{issued.year + BE}",
        "0.00" if cleared else f"{rng.randint(1_000, 500_000)}.{rng.randint(0, 99):02d}",
        _RD_OFFICE + rng.choice(["บางรัก", "ปทุมวัน", "จตุจักร", "ห้วยขวาง"]),
    ]
    if broken and row_no == 11:  # the juristic id's check digit is wrong
        row[0] = row[0][:12] + str((int(row[0][12]) + 1) % 10)
    elif broken and row_no == 250:  # 31 April does not exist
        row[7] = "31/04/2567"
    elif broken and row_no == 444:  # 0xDB cannot be decoded as cp874
        row[1] = row[1][:8] + "\udcdb" + row[1][8:]
    return row


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` the way nightly jobs should: a temporary name, then an atomic rename;
    mode 0600, as exports of citizens' records must be."""
    write_private(path, data)


def _dol(target: Path, seed: int) -> Path:
    # ``target`` is the export directory; a fresh clone gets one dated export in it.
    path = target / DOL_EXPORT_NAME
    write_atomic(path, b"".join(line + b"\r\n" for line in title_deed_lines(seed)))
    return path


def _rd(target: Path, seed: int) -> Path:
    write_atomic(target, rd_taxclearance_csv(seed))
    return target


KINDS = {"dol-titledeeds": _dol, "rd-taxclearance": _rd}


def ensure_export(kind: str, target: Path, seed: int = 2569) -> Path | None:
    """Generate the demo export ``kind`` at ``target`` unless something is already there
    (a directory with files in it, or the file). Returns the written path, or None."""
    if kind not in KINDS:
        raise ValueError(f"unknown demo export {kind!r}; known: {sorted(KINDS)}")
    if kind == "dol-titledeeds":
        if target.is_dir() and any(p.is_file() for p in target.iterdir()):
            return None
    elif target.exists():
        return None
    return KINDS[kind](target, seed)
