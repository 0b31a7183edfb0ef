"""Masking of recipient numbers in audit output.

PIPL asks to minimise personal data: an evidence file needs to show *that*
a recipient was messaged and lets a case be matched to a complaint, not the
full number. ``+86138****5678`` keeps the country code, the first three
national digits (the operator prefix in China) and the last four.
"""

from __future__ import annotations

from filterd.errors import InvalidNumber
from filterd.numbers import normalize

#: Shown for a recipient that cannot be normalized.
FULLY_MASKED = "****"

# E.164 country codes are prefix-free: 1 and 7 are the one-digit codes,
# these are the two-digit ones (ITU-T E.164 list), every other is three.
# A string reads as the list it is copied from.
_TWO_DIGIT_CODES = frozenset(
    (  # noqa: SIM905
        "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 "
        "60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98"
    ).split()
)


def country_code_of(digits: str) -> str:
    """The E.164 country code at the start of normalized ``digits``."""
    if digits[:1] in ("1", "7"):
        return digits[:1]
    if digits[:2] in _TWO_DIGIT_CODES:
        return digits[:2]
    return digits[:3]


def mask_digits(digits: str) -> str:
    """Mask normalized E.164 digits: ``8613812345678`` -> ``+86138****5678``.

    Always four stars, so the mask does not reveal how many digits it hides.
    National numbers of 10 digits or more keep their first three and last
    four digits; shorter ones keep only their last four (last two below 7
    digits), so at least three digits are always hidden.
    """
    cc = country_code_of(digits)
    national = digits[len(cc) :]
    n = len(national)
    if n >= 10:
        head, tail = 3, 4
    elif n >= 7:
        head, tail = 0, 4
    else:
        head, tail = 0, 2
    return f"+{cc}{national[:head]}****{national[n - tail :]}"


def mask_recipient(raw: str | None, country_code: str = "86") -> str:
    """Normalize a recipient as the decision does, then mask it; a recipient
    that cannot be normalized is masked completely."""
    if raw is None:
        return FULLY_MASKED
    try:
        digits = str(normalize(raw, country_code))
    except InvalidNumber:
        return FULLY_MASKED
    return mask_digits(digits)


def full_recipient(raw: str | None, country_code: str = "86") -> str:
    """The recipient in E.164 (``--unmask``); the raw text if it cannot be
    normalized, so the evidence shows what was sent."""
    if raw is None:
        return ""
    try:
        return f"+{normalize(raw, country_code)}"
    except InvalidNumber:
        return raw
