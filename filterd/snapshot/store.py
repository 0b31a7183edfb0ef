"""The in-memory consent store: an immutable snapshot and its number sets.

:mod:`filterd.snapshot.load` builds a :class:`ConsentSnapshot` from a version
on disk (with full validation); this module holds the types the hot path reads,
and the helpers that do bounded pieces of work on the event loop
(:func:`run_sliced`) and free a retired snapshot without a long stall
(:func:`release_steps`).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from array import array
from collections.abc import Callable, Collection, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, TypeAlias, TypeVar, cast

from pyroaring import BitMap64, FrozenBitMap64

from filterd.snapshot import format as fmt

__all__ = [
    "ConsentSnapshot",
    "Counts",
    "NumberSet",
    "SenderConsent",
    "SortedNumbers",
    "compact",
    "release_steps",
    "run_sliced",
]

#: A bitmap averaging fewer values than this per 16-bit container costs more
#: than ~10 bytes per number in CRoaring (2 bytes per value plus ~60-80 bytes of
#: structures per container), so it is kept as a sorted uint64 array instead:
#: 8 bytes per number, at the price of a slower (bisect) lookup. Random numbers
#: spread over the 7e9-wide Chinese mobile range reach 8 per container only
#: above ~850k numbers, so big senders stay bitmaps and the tail goes to arrays.
SPARSE_VALUES_PER_CONTAINER = 8

_T = TypeVar("_T")

#: Longest stretch of loading work between two yields to the event loop.
ASYNC_SLICE_S = 0.002


#: What the hot path needs of a set of numbers: ``number in s`` (and ``len``). In
#: practice a pyroaring ``BitMap64`` or a :class:`SortedNumbers`.
NumberSet: TypeAlias = Collection[int]


class SortedNumbers:
    """A sorted set of numbers in a uint64 array (8 bytes per number); read-only by contract."""

    __slots__ = ("_values",)

    def __init__(self, values: array[int]) -> None:
        self._values = values

    # Composition, not an array subclass: bisect over a subclass measured 3x slower.
    def __contains__(
        self, number: object, _bisect: Callable[..., int] = bisect.bisect_left
    ) -> bool:
        values = self._values
        i = _bisect(values, number)
        return i < len(values) and values[i] == number

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[int]:
        return iter(self._values)

    def __getitem__(self, rank: int) -> int:
        """The number of this rank (0 is the smallest)."""
        return self._values[rank]

    def __repr__(self) -> str:
        return f"SortedNumbers(<{len(self._values)} numbers>)"

    @property
    def nbytes(self) -> int:
        """Bytes held by the values."""
        return self._values.itemsize * len(self._values)


# pyroaring's stubs declare __contains__(int), narrower than Collection's (object).
_EMPTY = cast(NumberSet, FrozenBitMap64())


class SenderConsent(NamedTuple):
    """One sender's numbers. Both support ``number in x`` for an int E.164 number."""

    consents: NumberSet
    """Numbers that consented to this sender."""
    optouts: NumberSet
    """Numbers that opted out of this sender (wins over consent)."""


class Counts(NamedTuple):
    """Distinct counts of a snapshot, as in its manifest."""

    senders: int
    consents: int
    optouts: int
    dnd: int


@dataclass(frozen=True, slots=True, eq=False)
class ConsentSnapshot:
    """One loaded snapshot version; read-only, shared by every reader.

    The hot path reads ``senders`` and ``dnd_numbers`` directly; the methods
    are the same lookups for everyone else. Sender ids are keys after
    trimming white space.
    """

    version: str
    created_at: datetime
    """When the version was built (UTC)."""
    senders: dict[str, SenderConsent]
    dnd_numbers: NumberSet
    counts: Counts
    bytes: int
    """Total size of the version's files on disk."""
    manifest: dict[str, object]

    @property
    def consents(self) -> int:
        """Number of distinct (sender, number) consents."""
        return self.counts.consents

    @property
    def optouts(self) -> int:
        """Number of distinct (sender, number) opt-outs."""
        return self.counts.optouts

    @property
    def dnd_count(self) -> int:
        """Number of numbers on the do-not-disturb list."""
        return self.counts.dnd

    def known_sender(self, sender: str) -> bool:
        """Whether the sender has at least one consent or opt-out in this snapshot."""
        return sender.strip() in self.senders

    def consented(self, sender: str, number: int) -> bool:
        """Whether ``number`` consented to ``sender``."""
        entry = self.senders.get(sender.strip())
        return entry is not None and number in entry.consents

    def opted_out(self, sender: str, number: int) -> bool:
        """Whether ``number`` opted out of ``sender``."""
        entry = self.senders.get(sender.strip())
        return entry is not None and number in entry.optouts

    def dnd(self, number: int) -> bool:
        """Whether ``number`` is on the do-not-disturb list."""
        return number in self.dnd_numbers

    def summary(self) -> dict[str, object]:
        """The JSON summary ``filterd snapshot inspect`` prints."""
        return {
            "version": self.version,
            "created_at": fmt.utc_timestamp(self.created_at),
            "senders": self.counts.senders,
            "consents": self.counts.consents,
            "optouts": self.counts.optouts,
            "dnd": self.counts.dnd,
            "bytes": self.bytes,
            "format_version": self.manifest.get("format_version"),
            "inputs": self.manifest.get("inputs"),
            "checksums_verified": True,
        }


def compact(bitmap: BitMap64) -> NumberSet:
    """The in-memory form the loader chooses for ``bitmap`` (SPARSE_VALUES_PER_CONTAINER).

    Uses whole-bitmap calls: for tools and benchmarks, not for the event loop.
    """
    if not bitmap:
        return _EMPTY
    if len(bitmap) < SPARSE_VALUES_PER_CONTAINER * bitmap.get_statistics()["n_containers"]:
        return SortedNumbers(bitmap.to_array())
    return cast(NumberSet, bitmap)


def release_steps(snapshot: ConsentSnapshot) -> Generator[None, None, None]:
    """Empty a snapshot nobody uses any more in bounded pieces; yields between pieces.

    Freeing a big sparse bitmap walks all its containers with the GIL held
    (~20 ms for 3 M numbers), so big bitmaps are emptied range by range first.
    Only for a snapshot no reader can reach: it is left empty.
    """
    senders = snapshot.senders
    while senders:
        _sender, entry = senders.popitem()
        for numbers in entry:
            yield from _empty_bitmap(numbers)
        del entry
        yield
    yield from _empty_bitmap(snapshot.dnd_numbers)


def _empty_bitmap(numbers: NumberSet) -> Generator[None, None, None]:
    if not isinstance(numbers, BitMap64) or not numbers:
        return
    # 2**24 values span 256 containers: one chunk's worth of work per step.
    step = 1 << 24
    low, high = numbers.min(), numbers.max() + 1
    while low < high:
        numbers.remove_range(low, min(high, low + step))
        low += step
        yield


async def run_sliced(steps: Generator[None, None, _T]) -> _T:
    """Drive a step generator on the running loop, yielding to it every ASYNC_SLICE_S."""
    clock = time.perf_counter
    deadline = clock() + ASYNC_SLICE_S
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: _T = done.value
            return result
        if clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + ASYNC_SLICE_S
