"""Number normalization (docs/contract.md, Numbers): every accepted and rejected form."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from filterd.errors import InvalidNumber
from filterd.numbers import normalize

SEPARATORS = " -.()"
e164 = st.from_regex(r"\A[1-9][0-9]{7,14}\Z")
country_codes = st.from_regex(r"\A[1-9][0-9]{0,2}\Z")


def _reference(raw: str, cc: str) -> int | None:
    """An independent, regex-based reading of the same rules; None means invalid."""
    s = re.sub(r"[ \-.()]", "", unicodedata.normalize("NFKC", raw))
    if (m := re.fullmatch(r"\+([0-9]*)", s)) or (m := re.fullmatch(r"00([0-9]*)", s)):
        digits = m.group(1)
    elif re.fullmatch(r"[0-9]+", s):
        digits = cc + re.sub(r"^0", "", s)
    else:
        return None
    if not re.fullmatch(r"[1-9][0-9]{7,14}", digits):
        return None
    return int(digits)


@st.composite
def with_separators(draw: st.DrawFn, text: str) -> str:
    """``text`` with separators sprinkled between (and around) its characters."""
    out = []
    for ch in text:
        out.append(draw(st.text(alphabet=SEPARATORS, max_size=2)))
        out.append(ch)
    out.append(draw(st.text(alphabet=SEPARATORS, max_size=2)))
    return "".join(out)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+8613812345678", 8613812345678),
        ("008613812345678", 8613812345678),
        ("13812345678", 8613812345678),
        ("013812345678", 8613812345678),
        ("+86 138-1234-5678", 8613812345678),
        ("(0)138.1234.5678", 8613812345678),
        ("+1 (415) 555-0100", 14155550100),
        # Step 0, NFKC: full-width digits, plus sign and spaces (a CJK input method's).
        ("＋８６　１３８１２３４５６７８", 8613812345678),
        ("+86138１２３45678", 8613812345678),
        ("１３８１２３４５６７８", 8613812345678),
        ("+861381234567²", 8613812345672),  # NFKC reads a superscript two as 2
    ],
)
def test_known_forms(raw: str, expected: int) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("  - ", "empty"),
        ("+", "no digits"),
        ("00", "no digits"),
        ("1381234567x", "not digits"),
        ("+86138abc5678", "not digits"),
        ("+8613812345678\t", "not digits"),
        ("++8613812345678", "not digits"),
        # int() accepts these; the fast path must not.
        ("+86_138_1234_5678", "not digits"),
        ("+8613812345678\n", "not digits"),
        ("+ 8613812345678\x0c", "not digits"),
        ("13812345678_", "not digits"),
        ("+1234567", "too short"),
        ("+1234567890123456", "too long"),
        ("+0123456789", "leading zero"),
        ("000123456789", "leading zero"),
        ("+٨٦١٣٨١٢٣٤٥٦٧٨", "not ASCII"),  # Arabic-Indic digits
    ],
)
def test_rejected_forms(raw: str, reason: str) -> None:
    with pytest.raises(InvalidNumber, match=reason):
        normalize(raw)


@given(digits=e164, data=st.data())
def test_plus_form(digits: str, data: st.DataObject) -> None:
    raw = data.draw(with_separators("+" + digits))
    assert normalize(raw) == int(digits)


@given(digits=e164, data=st.data())
def test_double_zero_form(digits: str, data: st.DataObject) -> None:
    raw = data.draw(with_separators("00" + digits))
    assert normalize(raw, "44") == int(digits)


@given(national=st.from_regex(r"\A[1-9][0-9]{5,11}\Z"), cc=country_codes, trunk=st.booleans())
def test_national_form(national: str, cc: str, trunk: bool) -> None:
    assume(8 <= len(cc + national) <= 15)
    raw = ("0" if trunk else "") + national
    assert normalize(raw, cc) == int(cc + national)


@given(st.from_regex(r"\A\+[1-9][0-9]{15,20}\Z"))
def test_too_long_rejected(raw: str) -> None:
    with pytest.raises(InvalidNumber, match="too long"):
        normalize(raw)


@given(st.from_regex(r"\A\+[1-9][0-9]{0,6}\Z"))
def test_too_short_rejected(raw: str) -> None:
    with pytest.raises(InvalidNumber, match="too short"):
        normalize(raw)


@given(
    st.text(
        alphabet=st.sampled_from(
            [*list("0123456789+ -.()_"), "a", "Z", "\t", "\n", "\x0c", "²", "٣", "１", "\xa0", "#"]
        ),
        max_size=20,
    ),
    country_codes,
)
def test_matches_reference(raw: str, cc: str) -> None:
    expected = _reference(raw, cc)
    if expected is None:
        with pytest.raises(InvalidNumber):
            normalize(raw, cc)
    else:
        assert normalize(raw, cc) == expected


@given(st.text(max_size=30))
def test_any_text_is_a_number_or_invalid(raw: str) -> None:
    try:
        value = normalize(raw)
    except InvalidNumber:
        return
    assert 10_000_000 <= value < 10**15
    assert value == _reference(raw, "86")
