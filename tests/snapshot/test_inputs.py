"""The bulk number conversion of the builder gives exactly what normalize() gives."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from filterd.errors import InvalidNumber
from filterd.numbers import normalize
from filterd.snapshot.inputs import convert_numbers

plain = st.one_of(
    st.from_regex(r"\A\+[1-9][0-9]{7,14}\Z"),
    st.from_regex(r"\A00[1-9][0-9]{7,14}\Z"),
    st.from_regex(r"\A0?[1-9][0-9]{5,12}\Z"),
)
odd = st.text(alphabet=st.sampled_from(list("0123456789+ -.()x\t\r²٣")), max_size=18)
country_codes = st.sampled_from(["86", "1", "44", "852"])


def _reference(raws: list[str], cc: str) -> Counter[int] | None:
    try:
        return Counter(normalize(r.strip(), cc) for r in raws)
    except InvalidNumber:
        return None


@given(st.lists(st.one_of(plain, odd), max_size=40), country_codes)
def test_bulk_conversion_equals_normalize(raws: list[str], cc: str) -> None:
    expected = _reference(raws, cc)
    if expected is None:
        with pytest.raises(InvalidNumber):
            list(convert_numbers(raws, cc))
    else:
        assert Counter(convert_numbers(raws, cc)) == expected


@given(st.lists(plain, min_size=1, max_size=40), country_codes)
def test_plain_forms_take_the_fast_path(raws: list[str], cc: str) -> None:
    expected = _reference(raws, cc)
    assume(expected is not None)  # some national lengths do not fit a country code
    result = convert_numbers(raws, cc)
    assert not isinstance(result, list)  # the slow path returns a list
    assert Counter(result) == expected
