"""SortedNumbers: the bucketed sparse set answers exactly like a plain set, in every layout."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from filterd.snapshot import store
from filterd.snapshot.store import SortedNumbers, drive, sorted_numbers_steps

# Clustered sets exercise the 16- and 32-bit layouts, wide ones the 64-bit one.
base = st.sampled_from([10**7, 8613800000000, 4915100000000, 10**15 - 10**10])
offsets = st.sampled_from([2**8, 2**16, 2**20, 2**33, 10**10])


def _build(values: set[int]) -> SortedNumbers:
    return SortedNumbers.from_sorted(array("Q", sorted(values)))


@settings(max_examples=150, deadline=None)
@given(base=base, spread=offsets, data=st.data())
def test_membership_iteration_and_rank_match_a_set(
    base: int, spread: int, data: st.DataObject
) -> None:
    offsets_drawn = data.draw(st.lists(st.integers(0, spread), max_size=400))
    values = {base + o for o in offsets_drawn}
    numbers = _build(values)
    ordered = sorted(values)
    assert len(numbers) == len(values)
    assert list(numbers) == ordered
    for rank in range(0, len(ordered), 7):
        assert numbers[rank] == ordered[rank]
    # Members, their neighbours, bucket edges and numbers far outside.
    probes = {v + d for v in ordered for d in (-1, 0, 1)}
    probes |= {base - 1, base + spread + 1, 0, 2**64, 2**64 + base}
    probes |= {base + (1 << k) for k in range(0, 40)}
    for p in probes:
        assert (p in numbers) == (p in values), p


@pytest.mark.parametrize(
    ("values", "bits"),
    [
        (range(8613800000000, 8613800000000 + 60_000, 3), 16),  # dense cluster: 2 bytes each
        (range(8613000000000, 8620000000000, 7_000_000), 32),  # spread over a country's range
        ([10**7, 10**14 + 7, 5 * 10**14 + 3], 64),  # different countries, few numbers
    ],
)
def test_layout_keeps_few_bytes_per_number(values: range | list[int], bits: int) -> None:
    numbers = _build(set(values))
    assert f"{bits}-bit" in repr(numbers)
    per_number = numbers.nbytes / len(numbers)
    assert per_number <= bits / 8 + (8 if bits == 64 else 1), per_number
    assert all(v in numbers for v in values)


def test_indexing_yields_in_bounded_steps() -> None:
    values = array("Q", range(8613800000000, 8613800000000 + 400_000 * 13, 13))
    steps = sorted_numbers_steps(values)
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            numbers = done.value
            break
        count += 1
    # ~400k numbers in 64k-number copy steps plus index steps: many yields, not one.
    assert count >= 6
    assert 8613800000000 + 13 * 1234 in numbers
    assert 8613800000000 + 13 * 1234 + 1 not in numbers


def test_empty_set() -> None:
    numbers = drive(sorted_numbers_steps(array("Q")))
    assert len(numbers) == 0
    assert 8613812345678 not in numbers
    assert list(numbers) == []
    with pytest.raises(IndexError):
        numbers[0]


@settings(max_examples=100, deadline=None)
@given(base=base, spread=offsets, data=st.data())
def test_byte_search_matches_a_set(base: int, spread: int, data: st.DataObject) -> None:
    """The compiled build's byte-level search, called directly in either build."""
    values = {base + o for o in data.draw(st.lists(st.integers(0, spread), max_size=300))}
    numbers = _build(values)
    shift, first, mask = numbers._shift, numbers._first, numbers._mask
    for p in {v + d for v in values for d in (-1, 0, 1)} | {base, base + spread}:
        b = (p >> shift) - first
        if not 0 <= b < numbers._nbuckets:
            assert p not in values
            continue
        found = store._find(
            numbers._lowbytes, numbers._lowsize, numbers._startbytes, numbers._startsize,
            b, p & mask,
        )  # fmt: skip
        assert (found >= 0) == (p in values), p
        if found >= 0:
            assert numbers[found] == p  # the rank, which the consent terms index by
            assert numbers.rank(p) == found


@pytest.mark.parametrize("size", [2, 4, 8])
def test_word_reads_little_endian(size: int) -> None:
    values = [0, 1, 2 ** (8 * size) - 1, 0x0102030405060708 % 2 ** (8 * size)]
    buf = array({2: "H", 4: "I", 8: "Q"}[size], values).tobytes()
    if store.sys.byteorder != "little":
        pytest.skip("the byte search is used on little-endian machines only")
    assert [store._word(buf, i, size) for i in range(len(values))] == values


@pytest.mark.parametrize(
    ("values", "sorted_form"),
    [
        (range(8613800000000, 8613800000000 + 2000 * 3277, 3277), True),  # ~20 per container
        (range(8613800000000, 8613800000000 + 100_000), False),  # one run
        (range(8613800000000, 8613800000000 + 2 * 65536, 2), False),  # full bitset containers
        ([8613800000000], True),
    ],
)
def test_the_smaller_in_memory_form_is_chosen(values: range | list[int], sorted_form: bool) -> None:
    bitmap = BitMap64(values)
    bitmap.run_optimize()
    containers, payload = store.containers_of(bitmap)
    chosen = store.compact(bitmap)
    assert isinstance(chosen, SortedNumbers) is sorted_form
    assert store.prefer_sorted(len(bitmap), bitmap.min(), bitmap.max(), containers, payload) is (
        sorted_form
    )
    as_sorted = SortedNumbers.from_sorted(bitmap.to_array())
    as_bitmap = payload + store.ROARING_CONTAINER_BYTES * containers
    assert (as_sorted.nbytes <= as_bitmap) is sorted_form
    assert list(chosen) == list(values)
