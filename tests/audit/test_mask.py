from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filterd.audit.mask import (
    FULLY_MASKED,
    country_code_of,
    full_recipient,
    mask_digits,
    mask_recipient,
)


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("+8613812345678", "+86138****5678"),
        ("13812345678", "+86138****5678"),
        ("138-1234-5678", "+86138****5678"),
        ("008613812345678", "+86138****5678"),
        ("+14155551234", "+1415****1234"),
        ("+4915123456789", "+49151****6789"),
        ("+85291234567", "+852****4567"),  # Hong Kong: 8 national digits keep only the tail
        ("not a number", FULLY_MASKED),
        ("12", FULLY_MASKED),
        (None, FULLY_MASKED),
    ],
)
def test_mask_recipient(raw: str | None, masked: str) -> None:
    assert mask_recipient(raw, "86") == masked


def test_full_recipient_is_e164_or_the_raw_text() -> None:
    assert full_recipient("138 1234 5678", "86") == "+8613812345678"
    assert full_recipient("garbage", "86") == "garbage"
    assert full_recipient(None, "86") == ""


def test_country_codes() -> None:
    assert [
        country_code_of(d)
        for d in (
            "14155551234",
            "79161234567",
            "8613812345678",
            "85291234567",
            "35312345678",
            "4412345678",
        )
    ] == [
        "1",
        "7",
        "86",
        "852",
        "353",
        "44",
    ]


@given(st.from_regex(r"[1-9][0-9]{7,14}", fullmatch=True))
def test_a_mask_hides_at_least_three_digits_and_keeps_the_country(digits: str) -> None:
    masked = mask_digits(digits)
    assert re.fullmatch(r"\+[0-9]+\*{4}[0-9]*", masked)
    shown = masked.replace("+", "").replace("*", "")
    assert len(digits) - len(shown) >= 3
    assert masked.startswith("+" + country_code_of(digits))
    head, tail = masked[1:].split("****")
    assert digits.startswith(head)
    assert digits.endswith(tail)
