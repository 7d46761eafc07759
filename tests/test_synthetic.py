"""The seeded synthetic Thai data: deterministic, valid ids, Thai script, consistent houses,
and the generator script prints what the demo backends serve."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from xroad_hub.demo.synthetic import (
    REFERENCE_DATE,
    companies,
    demo_people,
    house_id_check_digit,
    house_registrations,
    is_valid_house_id,
    people,
    population,
)
from xroad_hub.protocol.thaiid import is_valid

SEED = 2569
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "generate_thai_data.py"
THAI = re.compile(r"[\u0e00-\u0e7f]")


@pytest.fixture(scope="module")
def persons() -> list:
    return demo_people(SEED, 200)


@pytest.fixture(scope="module")
def registry(persons: list):
    return population(SEED, persons)


def test_existing_generators_are_unchanged() -> None:
    # DBD, DOL and RD demo data (and their tests) derive from these exact values.
    first = people(SEED, 1)[0]
    assert (first.citizen_id, first.given_name_en, first.birth_date) == (
        "1295593938365",
        "Kamon",
        "1995-10-23",
    )
    company = companies(SEED, 1, people(SEED, 400))[0]
    assert (company.juristic_id, company.directors) == (
        "0105744622488",
        ("1552806801307", "1653418399986"),
    )
    assert demo_people(SEED, 200) == people(SEED, 400)


def test_same_seed_same_data(persons: list, registry) -> None:
    assert demo_people(SEED, 200) == persons
    assert population(SEED, persons) == registry
    assert house_registrations(SEED, persons) == list(registry.houses)
    other = population(SEED + 1, demo_people(SEED + 1, 200))
    assert other.citizens[0] != registry.citizens[0]


def test_every_id_is_valid_and_unique(persons: list, registry) -> None:
    cids = [c.citizen_id for c in registry.citizens]
    assert len(set(cids)) == len(cids)
    assert all(is_valid(cid) and cid.startswith("1") for cid in cids)
    house_ids = [h.house_id for h in registry.houses]
    assert len(set(house_ids)) == len(house_ids)
    assert all(is_valid_house_id(h) for h in house_ids)
    jids = [c.juristic_id for c in companies(SEED, 200, persons)]
    assert len(set(jids)) == len(jids)
    assert all(is_valid(j) for j in jids)


def test_house_id_check_digit() -> None:
    # 1 0 0 4 0 0 0 0 0 1, weights 11..2: 11 + 4*8 + 1*2 = 45; 45 mod 11 = 1; 11 - 1 = 10 -> 0
    assert house_id_check_digit("1004000001") == 0
    assert is_valid_house_id("10040000010")
    assert not is_valid_house_id("10040000011")
    assert not is_valid_house_id("1004000001")
    with pytest.raises(ValueError):
        house_id_check_digit("10040000a1")


def test_names_and_addresses_in_thai_with_transliterations(registry) -> None:
    for c in registry.citizens:
        p = c.person
        for text in (c.title_th, p.given_name_th, p.family_name_th, p.address_th):
            assert THAI.search(text), text
        for text in (c.title_en, p.given_name_en, p.family_name_en, p.address_en):
            assert text.isascii() and text.strip(), text
        assert c.sex in {"male", "female"} and c.nationality == "THA"
    for h in registry.houses:
        a = h.address
        for text in (
            a.road_th,
            a.subdistrict_th,
            a.district_th,
            a.province_th,
            h.address.line_th(),
        ):
            assert THAI.search(text), text
        for text in (a.road_en, a.subdistrict_en, a.district_en, a.province_en, a.line_en()):
            assert text.isascii(), text
        assert re.fullmatch(r"[0-9]{5}", a.postcode)
        assert (a.soi_th is None) == (a.soi_en is None)


def test_house_registrations_are_consistent_with_people(persons: list, registry) -> None:
    by_id = {c.citizen_id: c for c in registry.citizens}
    # The given people come first, in order, unchanged.
    assert [c.person for c in registry.citizens[: len(persons)]] == persons
    homes = Counter(m.citizen_id for h in registry.houses for m in h.members)
    for c in registry.citizens:
        # Everyone alive lives in exactly one house; the dead in none.
        assert homes[c.citizen_id] == (1 if c.status == "alive" else 0), c
        assert (c.death_date is None) == (c.status == "alive")
    assert Counter(c.status for c in registry.citizens)["deceased"] > 0
    for h in registry.houses:
        roles = [m.role for m in h.members]
        assert roles[0] == "head" and roles.count("head") == 1
        assert h.house_id[:4] in {"1001", "1004", "1006", "1007", "1017", "1030"}
        for m in h.members:
            person = by_id[m.citizen_id].person
            # The house is the person's own address: same number, road and district.
            assert person.address_th.startswith(f"{h.address.house_no} ถนน{h.address.road_th} ")
            assert f"เขต{h.address.district_th} " in person.address_th
            assert f"{h.address.district_en} District" in person.address_en
            moved_in = date.fromisoformat(m.moved_in)
            assert date.fromisoformat(person.birth_date) <= moved_in <= REFERENCE_DATE
        head = by_id[h.members[0].citizen_id]
        assert head.title_en in {"Mr.", "Mrs.", "Miss"}  # an adult
    assert max(len(h.members) for h in registry.houses) > 2


def test_dbd_directors_are_in_the_population_registry(persons: list, registry) -> None:
    known = {c.citizen_id for c in registry.citizens if c.status == "alive"}
    for company in companies(SEED, 200, persons):
        assert set(company.directors) <= known


def test_titles_follow_sex_and_age(registry) -> None:
    for c in registry.citizens:
        born = date.fromisoformat(c.person.birth_date)
        child = born > REFERENCE_DATE.replace(year=REFERENCE_DATE.year - 15)
        if c.sex == "male":
            assert c.title_th == ("เด็กชาย" if child else "นาย")
        elif child:
            assert c.title_th == "เด็กหญิง"
        else:
            assert c.title_th in {"นาง", "นางสาว"}


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, check=True, timeout=120
    )


def test_script_help_explains() -> None:
    out = _run("--help").stdout.decode()
    for word in ("--seed", "--count", "--out", "house_registrations", "dopa_app"):
        assert word in out


def test_script_prints_what_the_backends_serve(tmp_path: Path) -> None:
    data = json.loads(_run("--seed", str(SEED), "--count", "5").stdout.decode("utf-8"))
    persons = demo_people(SEED, 5)
    registry = population(SEED, persons)
    assert [p["citizen_id"] for p in data["people"]] == [c.citizen_id for c in registry.citizens]
    assert data["people"][0]["given_name_th"] == persons[0].given_name_th
    assert [h["house_id"] for h in data["house_registrations"]] == [
        h.house_id for h in registry.houses
    ]
    assert [c["juristic_id"] for c in data["companies"]] == [
        c.juristic_id for c in companies(SEED, 5, persons)
    ]
    out = tmp_path / "thai.json"
    _run("--seed", str(SEED), "--count", "5", "--compact", "--out", str(out))
    assert json.loads(out.read_text("utf-8")) == data
