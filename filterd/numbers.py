"""Phone number normalization: every recipient becomes the integer of its E.164 digits.

One function, :func:`normalize`, is used by the snapshot builder, the event path
and the offline replay, so a number means the same thing everywhere (docs/contract.md,
"Numbers"). It runs once per event, so it is written for speed: the common
forms take a fast path, separators are dropped with C-level ``str.replace``
and the checks are C-level string methods. ``str.isdigit`` alone would accept
non-ASCII digits ('²', Arabic-Indic digits, fullwidth digits) that ``int()``
then happily converts, so every string is checked with ``isascii`` first. A
non-ASCII string is NFKC-normalized first (the contract's step 0: full-width
digits and ``＋`` become ASCII); only what that leaves non-ASCII is refused.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from filterd.errors import InvalidNumber

__all__ = ["MAX_DIGITS", "MIN_DIGITS", "looks_without_plus", "normalize", "without_plus_ranges"]

#: E.164 allows at most 15 digits; fewer than 8 is no routable mobile number.
MIN_DIGITS: Final = 8
MAX_DIGITS: Final = 15

# len("+" + digits) -> the smallest valid number of that many digits (no leading zero).
_INTERNATIONAL_FLOOR: Final[dict[int, int]] = {
    n + 1: 10 ** (n - 1) for n in range(MIN_DIGITS, MAX_DIGITS + 1)
}


def normalize(raw: str, country_code: str = "86") -> int:
    """Return the E.164 digits of ``raw`` as an integer, or raise :class:`InvalidNumber`.

    Rules (docs/contract.md): Unicode NFKC; remove spaces, ``-``, ``.``, ``(`` and ``)``;
    ``+DIGITS`` and ``00DIGITS`` are international; any other all-digit string is national:
    ``country_code`` + the digits, with one leading trunk ``0`` removed. The
    result must be 8 to 15 ASCII digits, not starting with 0.

    ``country_code`` is the operator's default country calling code (config
    ``policy.default_country_code``), digits only, validated by the config.
    """
    # Fast paths for the forms nearly every event uses, free of separators:
    # "+8613812345678", "13812345678", "013812345678", "008613812345678". They
    # accept only what the general path below accepts too, and leave anything
    # else to it.
    if raw.isascii():
        first = raw[:1]
        if first == "+":
            # int() reads the sign and digits in C. It also takes "_" between
            # digits and surrounding white space, which the rules do not; those
            # leave fewer digits than characters, so the value falls below the
            # floor for its length and the general path decides.
            floor = _INTERNATIONAL_FLOOR.get(len(raw))
            if floor is not None:
                try:
                    number = int(raw)
                except ValueError:
                    pass
                else:
                    if number >= floor:
                        return number
        elif raw.isdigit():
            if first != "0":
                digits = country_code + raw
            elif raw[1:2] != "0":
                digits = country_code + raw[1:]  # one trunk zero
            else:
                digits = raw[2:]  # 00: international
            if MIN_DIGITS <= len(digits) <= MAX_DIGITS and digits[0] != "0":
                return int(digits)
    if not raw.isascii():
        # Step 0: full-width digits, "＋" and the ideographic space become ASCII.
        raw = unicodedata.normalize("NFKC", raw)
    # Chained replace() is C-level and ~3x faster than str.translate here.
    s = raw.replace(" ", "").replace("-", "").replace(".", "").replace("(", "").replace(")", "")
    if not s.isascii():
        # Non-ASCII digits would pass isdigit() and int(); never accept them.
        raise InvalidNumber("not ASCII digits")
    if s[:1] == "+":
        digits = s[1:]
    elif s[:2] == "00":
        digits = s[2:]
    elif s.isdigit():
        digits = country_code + (s[1:] if s[0] == "0" else s)
    elif not s:
        raise InvalidNumber("empty")
    else:
        raise InvalidNumber("not digits")
    if not digits.isdigit():
        raise InvalidNumber("not digits" if digits else "no digits after prefix")
    return _e164(digits)


def _e164(digits: str) -> int:
    """The checks every path ends with: ``digits`` are ASCII digits already."""
    n = len(digits)
    if n < MIN_DIGITS:
        raise InvalidNumber("too short")
    if n > MAX_DIGITS:
        raise InvalidNumber("too long")
    if digits[0] == "0":
        raise InvalidNumber("leading zero")
    return int(digits)


def without_plus_ranges(country_code: str) -> tuple[tuple[int, int], ...]:
    """The ranges of normalized national numbers that look like E.164 without ``+``.

    A national number whose digits start with ``country_code`` and have at least
    10 more (``8613800001111`` with 86) is read as ``country_code`` + the digits
    (``868613800001111``), as the contract says, but probably lost its ``+``.
    Normalized, such numbers are the code twice and 10 or more digits: one
    (low, high) range per length up to 15 digits.
    """
    twice = country_code * 2
    return tuple(
        (int(twice + "0" * rest), int(twice + "9" * rest))
        for rest in range(10, MAX_DIGITS - len(twice) + 1)
    )


def looks_without_plus(number: int, raw: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    """Whether ``raw``, normalized to ``number``, was given as E.164 without its ``+``.

    ``ranges`` are :func:`without_plus_ranges`; a number in them came from the
    national path unless ``raw`` has a ``+`` or a leading ``0`` (``00``, trunk).
    """
    for low, high in ranges:
        if low <= number <= high:
            first = unicodedata.normalize("NFKC", raw.lstrip()[:1])
            return first not in ("+", "0")
    return False
