"""Seeded synthetic Thai data: the same seed always gives the same people and companies.

``people`` and ``companies`` feed the DBD registry and the DOL/RD exports; ``population``
adds what the DOPA population registry knows on top of the same people: title, sex,
civil status, house registrations (ทะเบียนบ้าน) and the household members who live with
them. Each generator has its own seeded random stream, so adding one never changes what
another produces. Synthetic data only: no real person's data anywhere.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from datetime import date, timedelta

from xroad_hub.protocol.thaiid import with_check_digit

__all__ = [
    "REFERENCE_DATE",
    "Address",
    "Citizen",
    "Company",
    "HouseMember",
    "HouseRegistration",
    "Person",
    "Population",
    "companies",
    "demo_people",
    "house_id_check_digit",
    "house_registrations",
    "is_valid_house_id",
    "people",
    "population",
]

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


def demo_people(seed: int, count: int) -> list[Person]:
    """The people behind ``count`` demo companies: the DBD registry draws its directors and
    DOL its title-deed owners from exactly these, so DOPA serves them too."""
    return people(seed, 2 * count)


# --- The population registry's view (DOPA) ------------------------------------------------

# "Today" for the registry: ages, titles and moved-in dates are relative to it, not to the
# clock, so that the same seed gives the same data on any day (1 January B.E. 2569).
REFERENCE_DATE = date(2026, 1, 1)

# Sex of the given names in _GIVEN (Thai civil registration records it; titles follow it).
_SEX = {
    "สมชาย": "male",
    "สมศรี": "female",
    "มาลี": "female",
    "วิชัย": "male",
    "ประเสริฐ": "male",
    "สุดา": "female",
    "อรุณ": "male",
    "กมล": "male",
    "นภา": "female",
    "ธนากร": "male",
    "พิมพ์ชนก": "female",
    "ณัฐพล": "male",
}
# Extra given names for household members only; _GIVEN stays as it is, since people()
# draws from it and its output must not change.
_GIVEN_HOUSEHOLD = {
    "male": [
        *((th, en) for th, en in _GIVEN if _SEX[th] == "male"),
        ("กิตติพงษ์", "Kittiphong"),
        ("อนันต์", "Anan"),
        ("ชนินทร์", "Chanin"),
        ("ภูมิพัฒน์", "Phumiphat"),
    ],
    "female": [
        *((th, en) for th, en in _GIVEN if _SEX[th] == "female"),
        ("ศิริพร", "Siriphon"),
        ("วรรณา", "Wanna"),
        ("ปิยะนุช", "Piyanut"),
        ("ชนิดา", "Chanida"),
    ],
}
# (Thai, English) titles by sex: child under 15, adult, married woman.
_TITLES = {
    ("male", "child"): ("เด็กชาย", "Master"),
    ("male", "adult"): ("นาย", "Mr."),
    ("female", "child"): ("เด็กหญิง", "Miss"),
    ("female", "adult"): ("นางสาว", "Miss"),
    ("female", "married"): ("นาง", "Mrs."),
}
_PROVINCE = ("กรุงเทพมหานคร", "Bangkok")
_ROAD = ("สุขุมวิท", "Sukhumvit")
# Per district of _DISTRICTS (by English name): DOPA district code (the first four digits
# of a house id: province 10 + district), postcode and sub-districts (แขวง).
_DISTRICT_INFO: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "Phra Nakhon": (
        "1001",
        "10200",
        [
            ("พระบรมมหาราชวัง", "Phra Borom Maha Ratchawang"),
            ("วังบูรพาภิรมย์", "Wang Burapha Phirom"),
            ("วัดราชบพิธ", "Wat Ratchabophit"),
            ("สำราญราษฎร์", "Samran Rat"),
            ("ศาลเจ้าพ่อเสือ", "San Chao Pho Suea"),
            ("เสาชิงช้า", "Sao Chingcha"),
            ("บวรนิเวศ", "Bowon Niwet"),
            ("ตลาดยอด", "Talat Yot"),
            ("ชนะสงคราม", "Chana Songkhram"),
            ("บ้านพานถม", "Ban Phan Thom"),
            ("บางขุนพรหม", "Bang Khun Phrom"),
            ("วัดสามพระยา", "Wat Sam Phraya"),
        ],
    ),
    "Bang Rak": (
        "1004",
        "10500",
        [
            ("มหาพฤฒาราม", "Maha Phruettharam"),
            ("สีลม", "Si Lom"),
            ("สุริยวงศ์", "Suriyawong"),
            ("บางรัก", "Bang Rak"),
            ("สี่พระยา", "Si Phraya"),
        ],
    ),
    "Pathum Wan": (
        "1007",
        "10330",
        [
            ("รองเมือง", "Rong Mueang"),
            ("วังใหม่", "Wang Mai"),
            ("ปทุมวัน", "Pathum Wan"),
            ("ลุมพินี", "Lumphini"),
        ],
    ),
    "Chatuchak": (
        "1030",
        "10900",
        [
            ("ลาดยาว", "Lat Yao"),
            ("เสนานิคม", "Sena Nikhom"),
            ("จันทรเกษม", "Chan Kasem"),
            ("จอมพล", "Chom Phon"),
            ("จตุจักร", "Chatuchak"),
        ],
    ),
    "Huai Khwang": (
        "1017",
        "10310",
        [("ห้วยขวาง", "Huai Khwang"), ("บางกะปิ", "Bang Kapi"), ("สามเสนนอก", "Sam Sen Nok")],
    ),
    "Bang Kapi": ("1006", "10240", [("คลองจั่น", "Khlong Chan"), ("หัวหมาก", "Hua Mak")]),
}
# Village numbers (หมู่) are only used in the outer districts, which were rural once.
_OUTER = frozenset({"Bang Kapi", "Chatuchak"})
# How _address() writes a person's address in English: house number and district.
_ADDRESS_EN = re.compile(r"(\d+) Sukhumvit Road, (.+) District, Bangkok")


@dataclass(frozen=True, slots=True)
class Citizen:
    """A person as the population registry knows them."""

    person: Person
    title_th: str
    title_en: str
    sex: str  # "male" | "female"
    status: str  # "alive" | "deceased"
    death_date: str | None = None
    nationality: str = "THA"  # ISO 3166-1 alpha-3; ids starting with 1 are Thai by birth

    @property
    def citizen_id(self) -> str:
        return self.person.citizen_id

    def as_dict(self) -> dict[str, object]:
        return {
            **self.person.as_dict(),
            "title_th": self.title_th,
            "title_en": self.title_en,
            "sex": self.sex,
            "status": self.status,
            "death_date": self.death_date,
            "nationality": self.nationality,
        }


@dataclass(frozen=True, slots=True)
class Address:
    """A house registration address; every _th/_en pair is the same place in both scripts.
    Names are bare (no ถนน/แขวง/เขต or Road/District): ``line_th``/``line_en`` add them."""

    house_no: str
    moo: str | None
    soi_th: str | None
    soi_en: str | None
    road_th: str
    road_en: str
    subdistrict_th: str
    subdistrict_en: str
    district_th: str
    district_en: str
    province_th: str
    province_en: str
    postcode: str

    def line_th(self) -> str:
        parts = [self.house_no]
        if self.moo:
            parts.append(f"หมู่ {self.moo}")
        if self.soi_th:
            parts.append(f"ซอย{self.soi_th}")
        parts += [
            f"ถนน{self.road_th}",
            f"แขวง{self.subdistrict_th}",
            f"เขต{self.district_th}",
            self.province_th,
            self.postcode,
        ]
        return " ".join(parts)

    def line_en(self) -> str:
        first = self.house_no + (f" Moo {self.moo}" if self.moo else "")
        rest = [
            f"{self.road_en} Road",
            f"{self.subdistrict_en} Subdistrict",
            f"{self.district_en} District",
            f"{self.province_en} {self.postcode}",
        ]
        if self.soi_en:
            rest.insert(0, f"Soi {self.soi_en}")
        # "884 Soi Sukhumvit 21, Sukhumvit Road, ..." but "884 Moo 3, Soi Sukhumvit 21, ..."
        sep = ", " if self.moo else " "
        return first + sep + ", ".join(rest)


@dataclass(frozen=True, slots=True)
class HouseMember:
    citizen_id: str
    role: str  # "head" (เจ้าบ้าน) | "resident" (ผู้อาศัย)
    moved_in: str  # ISO date; a child born into the house moved in on its birthday


@dataclass(frozen=True, slots=True)
class HouseRegistration:
    house_id: str  # 11 digits: district code, running number, check digit
    address: Address
    members: tuple[HouseMember, ...]  # the head first

    def member(self, citizen_id: str) -> HouseMember | None:
        return next((m for m in self.members if m.citizen_id == citizen_id), None)

    def as_dict(self) -> dict[str, object]:
        return {
            "house_id": self.house_id,
            "address": asdict(self.address),
            "address_line_th": self.address.line_th(),
            "address_line_en": self.address.line_en(),
            "members": [asdict(m) for m in self.members],
        }


@dataclass(frozen=True, slots=True)
class Population:
    """Everyone the registry knows: the given people first, in their order, then their
    household members; deceased people keep their record but live in no house."""

    citizens: tuple[Citizen, ...]
    houses: tuple[HouseRegistration, ...]


def house_id_check_digit(first10: str) -> int:
    """The last digit of a synthetic house id, by the citizen id's rule over 10 digits
    (weights 11..2); this is the demo's convention, not a published DOPA algorithm."""
    if len(first10) != 10 or not first10.isascii() or not first10.isdigit():
        raise ValueError("need exactly 10 ASCII digits")
    total = sum(int(d) * (11 - i) for i, d in enumerate(first10))
    return (11 - total % 11) % 10


def is_valid_house_id(number: str) -> bool:
    return (
        len(number) == 11
        and number.isascii()
        and number.isdigit()
        and house_id_check_digit(number[:10]) == int(number[10])
    )


def _years(n: int) -> timedelta:
    return timedelta(days=round(n * 365.25))


def _day_between(rng: random.Random, low: date, high: date) -> date:
    # An empty range (earliest after latest) gives the latest day, e.g. for someone who only
    # came of age after the last move-in day.
    if high <= low:
        return high
    return low + timedelta(days=rng.randint(0, (high - low).days))


def _title(sex: str, born: date, married: bool) -> tuple[str, str]:
    if born > REFERENCE_DATE.replace(year=REFERENCE_DATE.year - 15):  # under 15
        return _TITLES[(sex, "child")]
    if sex == "female" and married:
        return _TITLES[(sex, "married")]
    return _TITLES[(sex, "adult")]


class _Household:
    """One house around the seeded people who share an address (usually just one): the
    oldest of them is the anchor; a parent, a spouse and children may join them."""

    def __init__(self, rng: random.Random, taken: set[str], seeded: list[Person]) -> None:
        self.rng = rng
        self.taken = taken  # citizen ids in use across the whole population
        self.seeded = sorted(seeded, key=lambda p: (p.birth_date, p.citizen_id))
        self.sex = {p.citizen_id: _SEX[p.given_name_th] for p in self.seeded}
        self.married: set[str] = set()

    def _new_person(self, sex: str, family: tuple[str, str], born: date) -> Person:
        while True:
            cid = with_check_digit("1" + "".join(str(self.rng.randint(0, 9)) for _ in range(11)))
            if cid not in self.taken:
                self.taken.add(cid)
                break
        g_th, g_en = self.rng.choice(_GIVEN_HOUSEHOLD[sex])
        home = self.seeded[0]
        self.sex[cid] = sex
        return Person(
            cid, g_th, family[0], g_en, family[1], born.isoformat(), home.address_th,
            home.address_en,
        )  # fmt: skip

    def _citizen(self, p: Person, died: date | None = None) -> Citizen:
        sex = self.sex[p.citizen_id]
        t_th, t_en = _title(sex, date.fromisoformat(p.birth_date), p.citizen_id in self.married)
        if died is None:
            return Citizen(p, t_th, t_en, sex, "alive")
        return Citizen(p, t_th, t_en, sex, "deceased", died.isoformat())

    def build(self, address: Address, house_id: str) -> tuple[list[Citizen], HouseRegistration]:
        rng, anchor = self.rng, self.seeded[0]
        a_sex, a_born = self.sex[anchor.citizen_id], date.fromisoformat(anchor.birth_date)
        a_family = (anchor.family_name_th, anchor.family_name_en)

        # A parent still registered in the house of a younger anchor; some have died.
        parent: Person | None = None
        died: date | None = None
        if a_born.year >= 1975 and rng.random() < 0.25:
            p_born = a_born - timedelta(days=rng.randint(22 * 365, 38 * 365))
            parent = self._new_person(rng.choice(("male", "female")), a_family, p_born)
            self.married.add(parent.citizen_id)
            if rng.random() < 0.3:
                last = REFERENCE_DATE - timedelta(days=30)
                died = _day_between(rng, p_born + _years(45), last)
        spouse: Person | None = None
        if rng.random() < 0.6:
            s_born = min(
                a_born + timedelta(days=rng.randint(-8 * 365, 8 * 365)),
                REFERENCE_DATE - _years(20),
            )
            # A wife usually takes her husband's family name; a husband keeps his own.
            s_family = a_family if a_sex == "male" else rng.choice(_FAMILY)
            spouse = self._new_person("female" if a_sex == "male" else "male", s_family, s_born)
            self.married |= {anchor.citizen_id, spouse.citizen_id}
        children: list[Person] = []
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
            c_born = a_born + timedelta(days=rng.randint(20 * 365, 42 * 365))
            if c_born < REFERENCE_DATE - timedelta(days=30):
                sex = rng.choice(("male", "female"))
                children.append(self._new_person(sex, a_family, c_born))

        # The head (เจ้าบ้าน) is the living parent if there is one, else the anchor.
        head = parent if parent is not None and died is None else anchor
        last_move = REFERENCE_DATE - timedelta(days=180)
        head_born = date.fromisoformat(head.birth_date)
        head_in = _day_between(rng, max(head_born + _years(20), date(1980, 1, 1)), last_move)

        def born_into(p: Person) -> date:
            # Registered at birth if born after the family moved in, else moved in with it.
            return max(date.fromisoformat(p.birth_date), head_in)

        def joined(p: Person) -> date:
            adult = date.fromisoformat(p.birth_date) + _years(20)
            return _day_between(rng, max(head_in, adult), last_move)

        moved: dict[str, date] = {}
        if head is not anchor:
            moved[anchor.citizen_id] = born_into(anchor)
        for other in self.seeded[1:]:
            moved[other.citizen_id] = joined(other)
        if spouse is not None:
            moved[spouse.citizen_id] = joined(spouse)
        for child in children:
            moved[child.citizen_id] = born_into(child)
        residents = sorted(moved, key=lambda cid: (moved[cid], cid))
        members = (
            HouseMember(head.citizen_id, "head", head_in.isoformat()),
            *(HouseMember(cid, "resident", moved[cid].isoformat()) for cid in residents),
        )

        citizens = [self._citizen(p) for p in self.seeded]
        if parent is not None:
            citizens.append(self._citizen(parent, died))
        citizens += [self._citizen(p) for p in (spouse, *children) if p is not None]
        return citizens, HouseRegistration(house_id, address, members)


def _house_address(rng: random.Random, person: Person) -> Address:
    match = _ADDRESS_EN.fullmatch(person.address_en)
    if match is None:
        raise ValueError(f"not an address people() writes: {person.address_en!r}")
    house_no, district_en = match.groups()
    district_th = next(th for th, en in _DISTRICTS if en == district_en)
    _, postcode, subdistricts = _DISTRICT_INFO[district_en]
    sub_th, sub_en = rng.choice(subdistricts)
    moo = str(rng.randint(1, 12)) if district_en in _OUTER and rng.random() < 0.3 else None
    soi = rng.choice((None, rng.randint(1, 101)))
    return Address(
        house_no=house_no,
        moo=moo,
        soi_th=None if soi is None else f"{_ROAD[0]} {soi}",
        soi_en=None if soi is None else f"{_ROAD[1]} {soi}",
        road_th=_ROAD[0],
        road_en=_ROAD[1],
        subdistrict_th=sub_th,
        subdistrict_en=sub_en,
        district_th=district_th,
        district_en=district_en,
        province_th=_PROVINCE[0],
        province_en=_PROVINCE[1],
        postcode=postcode,
    )


def population(seed: int, people: list[Person]) -> Population:
    """The population registry for ``people`` (as given by ``people()``/``demo_people()``):
    each person lives in the house at their own address, people who share an address share
    the house, and generated relatives fill the households. Same seed and people, same
    result; every citizen id and house id has a valid check digit."""
    taken = {p.citizen_id for p in people}
    by_address: dict[str, list[Person]] = {}
    for p in people:
        by_address.setdefault(p.address_en, []).append(p)
    house_ids: set[str] = set()
    seeded: dict[str, Citizen] = {}
    relatives: list[Citizen] = []
    houses: list[HouseRegistration] = []
    for residents in by_address.values():
        # One stream per house, named after its first person, so that what a house holds
        # depends on its own people rather than on how many houses came before it.
        rng = random.Random(f"house:{seed}:{residents[0].citizen_id}")
        address = _house_address(rng, residents[0])
        office = _DISTRICT_INFO[address.district_en][0]
        while True:
            first10 = office + "".join(str(rng.randint(0, 9)) for _ in range(6))
            house_id = first10 + str(house_id_check_digit(first10))
            if house_id not in house_ids:
                house_ids.add(house_id)
                break
        citizens, house = _Household(rng, taken, residents).build(address, house_id)
        own = {p.citizen_id for p in residents}
        for c in citizens:
            if c.citizen_id in own:
                seeded[c.citizen_id] = c
            else:
                relatives.append(c)
        houses.append(house)
    return Population(
        citizens=(*(seeded[p.citizen_id] for p in people), *relatives), houses=tuple(houses)
    )


def house_registrations(seed: int, people: list[Person]) -> list[HouseRegistration]:
    """The houses of ``population(seed, people)``, in the order of their first person."""
    return list(population(seed, people).houses)
