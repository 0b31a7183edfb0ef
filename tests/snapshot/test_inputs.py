"""The bulk number conversion of the builder gives exactly what normalize() gives."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from filterd.errors import InvalidNumber
from filterd.numbers import normalize
from filterd.snapshot import inputs
from filterd.snapshot.inputs import numbers_in_order

plain = st.one_of(
    st.from_regex(r"\A\+[1-9][0-9]{7,14}\Z"),
    st.from_regex(r"\A00[1-9][0-9]{7,14}\Z"),
    st.from_regex(r"\A0?[1-9][0-9]{5,12}\Z"),
)
odd = st.text(alphabet=st.sampled_from(list("0123456789+ -.()x\t\r²٣")), max_size=18)
country_codes = st.sampled_from(["86", "1", "44", "852"])


def _reference(raws: list[str], cc: str) -> list[int] | None:
    try:
        return [normalize(r.strip(), cc) for r in raws]
    except InvalidNumber:
        return None


@given(st.lists(st.one_of(plain, odd), max_size=40), country_codes)
def test_bulk_conversion_equals_normalize_in_order(raws: list[str], cc: str) -> None:
    expected = _reference(raws, cc)
    if expected is None:
        with pytest.raises(InvalidNumber):
            numbers_in_order(raws, cc)
    else:
        assert list(numbers_in_order(raws, cc)) == expected


@given(st.lists(plain, min_size=1, max_size=40), country_codes)
def test_plain_forms_take_the_fast_path(raws: list[str], cc: str) -> None:
    expected = _reference(raws, cc)
    assume(expected is not None)  # some national lengths do not fit a country code

    def slow_path(raw: str, country_code: str) -> int:
        raise AssertionError(f"normalize called for {raw!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inputs, "normalize", slow_path)
        assert list(numbers_in_order(raws, cc)) == expected


def test_mixed_forms_keep_their_order() -> None:
    raws = ["13800000002", "+8613800000001", "008613800000003", "013800000004", "+4412345678"]
    assert list(numbers_in_order(raws, "86")) == [
        8613800000002, 8613800000001, 8613800000003, 8613800000004, 4412345678,
    ]  # fmt: skip
