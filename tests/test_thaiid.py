"""Thai 13-digit identifiers: d13 = (11 - (sum_{i=1..12} d_i * (14 - i)) mod 11) mod 10."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xroad_hub.protocol.thaiid import check_digit, is_valid, with_check_digit

# Worked by hand; weights are 13, 12, ..., 2 for d1..d12.
KNOWN = [
    # 1 1 0 1 7 0 0 2 0 3 4 5:
    # 13+12+0+10+63+0+0+12+0+12+12+10 = 144; 144 mod 11 = 1; (11-1) mod 10 = 0
    ("110170020345", 0),
    # 1 2 3 4 5 6 7 8 9 0 1 2:
    # 13+24+33+40+45+48+49+48+45+0+3+4 = 352; 352 mod 11 = 0; (11-0) mod 10 = 1
    ("123456789012", 1),
    # all zeros: sum 0; (11-0) mod 10 = 1
    ("000000000000", 1),
    # 1 0 0 0 0 0 0 0 0 0 0 0: 13; 13 mod 11 = 2; 11-2 = 9
    ("100000000000", 9),
    # 0 ... 0 1: weight 2; 2 mod 11 = 2; 11-2 = 9
    ("000000000001", 9),
    # 0 ... 0 5: 10; 10 mod 11 = 10; 11-10 = 1
    ("000000000005", 1),
    # 0 ... 0 1 0: weight 3; 3 mod 11 = 3; 11-3 = 8
    ("000000000010", 8),
    # 3 1 0 0 6 0 0 4 4 5 5 7:
    # 39+12+0+0+54+0+0+24+20+20+15+14 = 198; 198 mod 11 = 0; (11-0) mod 10 = 1
    ("310060044557", 1),
    # 9 x 12: 9 * (13+12+...+2) = 9 * 90 = 810; 810 mod 11 = 7; 11-7 = 4
    ("999999999999", 4),
    # 0 ... 0 1 at d11 (weight 3) and d12 = 4 (weight 2): 3+8 = 11; 11 mod 11 = 0 -> 1
    ("000000000014", 1),
    # 0 ... 0 6: 12; 12 mod 11 = 1; (11-1) mod 10 = 0
    ("000000000006", 0),
]


@pytest.mark.parametrize(("first12", "digit"), KNOWN)
def test_known_check_digits(first12: str, digit: int) -> None:
    assert check_digit(first12) == digit
    assert with_check_digit(first12) == first12 + str(digit)
    assert is_valid(first12 + str(digit))


@pytest.mark.parametrize(("first12", "digit"), KNOWN)
def test_every_other_check_digit_rejected(first12: str, digit: int) -> None:
    for wrong in set(range(10)) - {digit}:
        assert not is_valid(first12 + str(wrong))


def test_user_id_example_from_the_protocol_notes_is_not_a_valid_number() -> None:
    # The X-Road-UserId used in README and tests is a valid citizen id; one digit off is not.
    assert is_valid("1101700203450")
    assert not is_valid("1101700203451")
    assert is_valid("1101700203450")


@pytest.mark.parametrize(
    "number",
    [
        "",
        "110170020345",  # 12 digits
        "11017002034500",  # 14 digits
        "110170020345O",  # letter O
        "11017002034 0",
        " 1101700203450",
        "1101700203450 ",
        "-101700203450",
        "+101700203450",
        "1-1017-00203-45-0",
        # Thai digits (str.isdigit() is True for them)
        "\u0e51\u0e51\u0e50\u0e51\u0e57\u0e50\u0e50\u0e52\u0e50\u0e53\u0e54\u0e55\u0e50",
        "\uff11101700203450",  # full-width 1
        "1101700203450\n",
    ],
)
def test_is_valid_rejects_malformed(number: str) -> None:
    assert not is_valid(number)


@pytest.mark.parametrize(
    "first12",
    ["", "11017002034", "1101700203456", "11017002034a", "\u0661" * 12, "1101700203 5"],
)
def test_check_digit_needs_12_ascii_digits(first12: str) -> None:
    with pytest.raises(ValueError):
        check_digit(first12)


def _weighted_sum(digits: str) -> int:
    return sum(int(digits[i - 1]) * (14 - i) for i in range(1, 13))


def _formula(first12: str) -> int:
    return (11 - _weighted_sum(first12) % 11) % 10


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_matches_formula(first12: str) -> None:
    digit = check_digit(first12)
    assert digit == _formula(first12)
    assert with_check_digit(first12) == first12 + str(digit)
    assert is_valid(first12 + str(digit))


@settings(max_examples=100, deadline=None, database=None)
@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_single_digit_changes(first12: str) -> None:
    """A changed d1..d12 is detected, except where the scheme itself cannot see it.

    The weighted sum changes by w * delta (w = 14 - i, 1 <= |delta| <= 9), which is 0 mod 11
    only for d3 (w = 11): a d3 change is never detected. Elsewhere the residue mod 11 changes,
    and the only residues that fold onto the same check digit are 0 and 10 (both give 1).
    """
    number = with_check_digit(first12)
    old = _weighted_sum(number) % 11
    for pos in range(12):
        for new in "0123456789":
            if new == number[pos]:
                continue
            changed = number[:pos] + new + number[pos + 1 :]
            expected = pos == 2 or {old, _weighted_sum(changed) % 11} == {0, 10}
            assert is_valid(changed) is expected, (number, changed)
