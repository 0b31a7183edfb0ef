"""A one-hash Bloom filter over a sender's opt-outs: "surely not" in a few bytecodes.

Every marketing event from a known sender must be checked against the sender's
opt-outs before anything else (docs/contract.md: opted-out wins), and nearly every
such check finds nothing. A full lookup in a number set is a Python-level call
(~0.5 µs); this filter answers "surely not opted out" for ~94 % of those checks
with one bit test the decision loop does inline, and sends the rest to the real
set. It never answers "no" for an opt-out, so a decision never changes.

Layout: ``bits`` is a power of two with at least :data:`BITS_PER_NUMBER` bits
per opt-out; number *n* sets bit ``slot(n) = (n ^ (n >> 21)) & (bits - 1)``,
bit *i* being ``filter[i >> 3] >> (i & 7) & 1``. The xor folds high digits into
the low bits, so numbers that share their last digits still spread. An empty
filter (``b""``) means the sender has no opt-out at all. The decision loop in
:mod:`filterd.router` repeats the slot formula inline; keep the two alike (the
tests decide against the real sets to hold them together).

Memory: 16 bits per opt-out (2 bytes, ~6 % false positives).
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Iterable
from itertools import islice

__all__ = ["BITS_PER_NUMBER", "build", "filter_steps", "may_contain", "slot"]

BITS_PER_NUMBER = 16
_MIN_BITS = 64
# Numbers added between two yields of filter_steps.
_STEP = 4096


def slot(number: int, bits: int) -> int:
    """The bit of ``number`` in a filter of ``bits`` bits (a power of two)."""
    return (number ^ (number >> 21)) & (bits - 1)


def _empty_table(count: int) -> bytearray:
    bits = _MIN_BITS
    while bits < BITS_PER_NUMBER * count:
        bits <<= 1
    return bytearray(bits >> 3)


def _fill(table: bytearray, numbers: Iterable[int]) -> None:
    mask = (len(table) << 3) - 1
    for n in numbers:
        i = (n ^ (n >> 21)) & mask
        table[i >> 3] |= 1 << (i & 7)


def filter_steps(numbers: Iterable[int], count: int) -> Generator[None, None, bytes]:
    """Build the filter of ``count`` numbers; yields every few thousand numbers."""
    if count == 0:
        return b""
    table = _empty_table(count)
    it = iter(numbers)
    while chunk := list(islice(it, _STEP)):
        _fill(table, chunk)
        yield
    return bytes(table)


def build(numbers: Collection[int]) -> bytes:
    """The filter of ``numbers`` in one go (tools, tests, small in-memory sets)."""
    if not numbers:
        return b""
    table = _empty_table(len(numbers))
    _fill(table, numbers)
    return bytes(table)


def may_contain(table: bytes, number: int) -> bool:
    """False when ``number`` is surely not in the set ``table`` was built from."""
    if not table:
        return False
    i = slot(number, len(table) << 3)
    return bool(table[i >> 3] >> (i & 7) & 1)
