"""Thai 13-digit citizen and juristic-person identifiers and their check digit."""

from __future__ import annotations

__all__ = ["check_digit", "is_valid", "with_check_digit"]


def check_digit(first12: str) -> int:
    """d13 = (11 - sum(d_i * (14 - i) for i = 1..12) mod 11) mod 10."""
    if len(first12) != 12 or not first12.isascii() or not first12.isdigit():
        raise ValueError("need exactly 12 ASCII digits")
    total = sum(int(d) * (13 - i) for i, d in enumerate(first12))
    return (11 - total % 11) % 10


def with_check_digit(first12: str) -> str:
    return first12 + str(check_digit(first12))


def is_valid(number: str) -> bool:
    return (
        len(number) == 13
        and number.isascii()
        and number.isdigit()
        and check_digit(number[:12]) == int(number[12])
    )
