"""Seeded synthetic Thai data: the same seed always gives the same people and companies."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from datetime import date, timedelta

from ..thaiid import with_check_digit

__all__ = ["Company", "Person", "companies", "people"]

# (Thai, transliteration)
_GIVEN = [
    ("สมชาย", "Somchai"),
    ("สมศรี", "Somsri"),
    ("มาลี", "Malee"),
    ("วิชัย", "Wichai"),
    ("ประเสริฐ", "Prasert"),
    ("สุดา", "Suda"),
    ("อรุณ", "Arun"),
    ("กมล", "Kamon"),
    ("นภา", "Napha"),
    ("ธนากร", "Thanakorn"),
    ("พิมพ์ชนก", "Phimchanok"),
    ("ณัฐพล", "Nattaphon"),
]
_FAMILY = [
    ("ใจดี", "Jaidee"),
    ("สุขสวัสดิ์", "Suksawat"),
    ("ศรีสุข", "Srisuk"),
    ("วงศ์ใหญ่", "Wongyai"),
    ("รัตนพันธ์", "Rattanaphan"),
    ("บุญมา", "Boonma"),
    ("ทองดี", "Thongdee"),
    ("แก้วมณี", "Kaewmanee"),
]
_DISTRICTS = [
    ("พระนคร", "Phra Nakhon"),
    ("บางรัก", "Bang Rak"),
    ("ปทุมวัน", "Pathum Wan"),
    ("จตุจักร", "Chatuchak"),
    ("ห้วยขวาง", "Huai Khwang"),
    ("บางกะปิ", "Bang Kapi"),
]
_BUSINESS = [
    ("ครัวคุณแม่", "Khrua Khun Mae"),
    ("อาหารไทยสยาม", "Siam Thai Food"),
    ("ข้าวมันไก่ประตูน้ำ", "Pratunam Chicken Rice"),
    ("ก๋วยเตี๋ยวเรือ", "Boat Noodles"),
    ("ขนมหวานบ้านสวน", "Baan Suan Desserts"),
    ("กาแฟดอยช้าง", "Doi Chang Coffee"),
]


@dataclass(frozen=True, slots=True)
class Person:
    citizen_id: str
    given_name_th: str
    family_name_th: str
    given_name_en: str
    family_name_en: str
    birth_date: str
    address_th: str
    address_en: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Company:
    juristic_id: str
    name_th: str
    name_en: str
    registered_on: str
    capital_thb: int
    status: str
    address_th: str
    address_en: str
    directors: tuple[str, ...]  # citizen ids

    def as_dict(self, people_by_id: dict[str, Person]) -> dict[str, object]:
        d = asdict(self)
        d["directors"] = [
            {
                "citizen_id": cid,
                "name_th": f"{people_by_id[cid].given_name_th} {people_by_id[cid].family_name_th}",
                "name_en": f"{people_by_id[cid].given_name_en} {people_by_id[cid].family_name_en}",
            }
            for cid in self.directors
        ]
        return d


def _address(rng: random.Random) -> tuple[str, str]:
    no = rng.randint(1, 999)
    dist_th, dist_en = rng.choice(_DISTRICTS)
    return (
        f"{no} ถนนสุขุมวิท เขต{dist_th} กรุงเทพมหานคร",
        f"{no} Sukhumvit Road, {dist_en} District, Bangkok",
    )


def people(seed: int, count: int) -> list[Person]:
    rng = random.Random(f"people:{seed}")
    out, seen = [], set()
    while len(out) < count:
        # First digit 1: Thai nationals registered at birth.
        cid = with_check_digit("1" + "".join(str(rng.randint(0, 9)) for _ in range(11)))
        if cid in seen:
            continue
        seen.add(cid)
        (g_th, g_en), (f_th, f_en) = rng.choice(_GIVEN), rng.choice(_FAMILY)
        born = date(1960, 1, 1) + timedelta(days=rng.randint(0, 40 * 365))
        a_th, a_en = _address(rng)
        out.append(Person(cid, g_th, f_th, g_en, f_en, born.isoformat(), a_th, a_en))
    return out


def companies(seed: int, count: int, directors_from: list[Person]) -> list[Company]:
    rng = random.Random(f"companies:{seed}")
    out, seen = [], set()
    while len(out) < count:
        # 0105: a Bangkok-registered limited company.
        jid = with_check_digit("0105" + "".join(str(rng.randint(0, 9)) for _ in range(8)))
        if jid in seen:
            continue
        seen.add(jid)
        b_th, b_en = rng.choice(_BUSINESS)
        a_th, a_en = _address(rng)
        registered = date(2000, 1, 1) + timedelta(days=rng.randint(0, 24 * 365))
        directors = tuple(p.citizen_id for p in rng.sample(directors_from, rng.randint(1, 3)))
        out.append(
            Company(
                jid,
                f"บริษัท {b_th} จำกัด",
                f"{b_en} Co., Ltd.",
                registered.isoformat(),
                rng.choice([1_000_000, 2_000_000, 5_000_000]),
                "active",
                a_th,
                a_en,
                directors,
            )
        )
    return out
