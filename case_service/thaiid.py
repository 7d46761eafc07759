"""Thai 13-digit identifiers (citizen and juristic ids), checked here rather than by the hub.

The case service is a separate system that talks to the hub only over HTTP, so it carries its
own copy of the rule: d13 = (11 - (sum of d_i * (14 - i) for i = 1..12) mod 11) mod 10.
Rejecting a mistyped id here saves five exchanges that could only fail (or, worse, fetch
someone else's records) and gives the citizen an answer she can act on.
"""

from __future__ import annotations

import re

__all__ = ["InvalidThaiId", "check_digit", "is_valid", "normalise", "validate"]

# How registries write an id: 13 digits, often grouped with dashes or spaces (1-1017-00203-45-0).
_WRITTEN_ID = re.compile(r"[0-9][0-9\- ]*[0-9]")


class InvalidThaiId(ValueError):
    """The value is not a valid 13-digit Thai identifier; the message says why."""


def check_digit(first12: str) -> int:
    """The check digit that completes the 12 leading digits ``first12``."""
    if len(first12) != 12 or not first12.isascii() or not first12.isdigit():
        raise InvalidThaiId("the check digit is computed from exactly 12 ASCII digits")
    total = sum(int(d) * (13 - i) for i, d in enumerate(first12))
    return (11 - total % 11) % 10


def is_valid(value: str) -> bool:
    """True when ``value`` is 13 ASCII digits whose last digit is the right check digit."""
    try:
        validate(value)
    except InvalidThaiId:
        return False
    return True


def validate(value: object, what: str = "id") -> str:
    """``value`` itself when valid; otherwise an error naming ``what`` and the problem."""
    if not isinstance(value, str):
        raise InvalidThaiId(f"{what} must be a string of 13 digits")
    # str.isdigit accepts Thai and other non-ASCII digits; the registries hold ASCII only.
    if len(value) != 13 or not value.isascii() or not value.isdigit():
        raise InvalidThaiId(f"{what} must be exactly 13 digits (0-9), got {len(value)} characters")
    expected = check_digit(value[:12])
    if int(value[12]) != expected:
        raise InvalidThaiId(
            f"{what} {value} has a wrong check digit: the last digit should be {expected}; "
            "please check the number for typing errors"
        )
    return value


def normalise(value: object) -> str | None:
    """The 13-digit id in ``value`` as a registry writes it, or None if it is not one.

    Registries pad ids (spaces, NUL) and group their digits with dashes or spaces
    (``1-1017-00203-45-0``); none of that makes another person, so a comparison of ids from
    a registry's answer with the applicant's must go through this, the same reading the
    hub's subject index uses. Thai or other non-ASCII digits are not read as digits.
    """
    if not isinstance(value, str):
        return None
    text = value.strip(" \t\r\n\x00")
    if not text.isascii() or not _WRITTEN_ID.fullmatch(text):
        return None
    digits = text.replace("-", "").replace(" ", "")
    return digits if len(digits) == 13 else None
