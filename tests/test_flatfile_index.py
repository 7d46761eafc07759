"""Key indexes: whichever way an index is built (ranking repeating keys, sorting distinct ones),
a lookup finds every record of a key, in file order, and nothing for unkeyed records."""

from __future__ import annotations

import random

import pytest

from adapters.flatfile.index import build_index, iter_keys


def _expected(keys: list[bytes]) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = {}
    for recno, key in enumerate(keys):
        if key:
            out.setdefault(key, []).append(recno)
    return out


def _keys(kind: str) -> list[bytes]:
    rng = random.Random(kind)
    if kind == "few":  # land office codes: a handful of values over many records
        return [rng.choice([b"1001", b"1002", b"2001", b""]) for _ in range(20_000)]
    if kind == "many":  # deed numbers: mostly distinct
        return [b"%d" % rng.randrange(10**7) if rng.random() > 0.01 else b"" for _ in range(20_000)]
    if kind == "in-order":  # deed numbers of a registry's export, ascending, some twice
        return [b""] * 10 + [b"%08d" % (i - i % 7 // 6) for i in range(20_000)]
    if kind == "repeating":  # owners' citizen ids: thousands of people, several deeds each
        people = [b"%013d" % rng.randrange(10**13) for _ in range(2000)]
        return [rng.choice(people) if rng.random() > 0.01 else b"" for _ in range(20_000)]
    # Few distinct keys at the head of the file, many after it: the head is not the file.
    return [b"0001"] * 5000 + [b"%06d" % i for i in range(5000)]


@pytest.mark.parametrize("kind", ["few", "many", "in-order", "repeating", "few-then-many"])
def test_every_record_of_a_key_is_found_in_file_order(kind: str) -> None:
    keys = _keys(kind)
    index = build_index(keys)
    expected = _expected(keys)
    assert len(index) == sum(map(len, expected.values()))
    assert list(iter_keys(index)) == sorted(expected)
    for key in list(expected)[:300]:
        assert index.records(key) == expected[key], key
        assert index.count(key) == len(expected[key])
    assert index.records(b"") == [] and index.count(b"nosuchkey") == 0
