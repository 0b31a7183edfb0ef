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
import builtins
import sys
import time
from array import array
from collections.abc import Collection, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import compress
from typing import Final, Generic, Literal, NamedTuple, TypeAlias, TypeVar, cast

from pyroaring import BitMap64, FrozenBitMap64

from filterd import prefilter
from filterd.snapshot import format as fmt

__all__ = [
    "FOREVER",
    "NO_CAP",
    "REFUSED_ONLY",
    "ROARING_CONTAINER_BYTES",
    "CapSchedule",
    "ConsentSnapshot",
    "ConsentTerms",
    "Counts",
    "NumberSet",
    "SenderConsent",
    "SortedNumbers",
    "cap_at",
    "cap_schedule",
    "compact",
    "containers_of",
    "drive",
    "prefer_sorted",
    "release_steps",
    "run_sliced",
    "simple_cap",
    "sorted_numbers_steps",
]

#: Bytes a CRoaring 64-bit bitmap spends per 16-bit container beyond its values
#: (the container struct, its share of the ART index, malloc headers). Measured
#: with pyroaring's BitMap64 over random mobile numbers: 13.4 bytes per number at
#: 7.5 numbers per container, 6.7 at 18, 3.8 at 47, 2.4 at 187 (the values
#: themselves take 2 bytes in an array container): about 83 bytes a container.
ROARING_CONTAINER_BYTES = 80

_T = TypeVar("_T")

#: Longest stretch of loading work between two yields to the event loop.
ASYNC_SLICE_S = 0.002


#: What the hot path needs of a set of numbers: ``number in s`` (and ``len``). In
#: practice a pyroaring ``BitMap64`` or a :class:`SortedNumbers`.
NumberSet: TypeAlias = Collection[int]


class SortedNumbers:
    """A sorted set of numbers, bucketed by their high bits; read-only by contract.

    The sparse sets (too few numbers per roaring container for a bitmap to pay
    off) are kept here. A number ``n`` falls in bucket ``(n >> shift) - first``;
    ``starts`` holds where each bucket begins in ``lows``, which keeps only the
    low 16, 32 or 64 bits of each number, sorted. Inside one bucket every number
    shares the bits from ``shift`` up, so the low bits alone order and identify
    it. A lookup is one bucket computation and a bisect over about
    :data:`NUMBERS_PER_BUCKET` entries instead of the whole array: the cost of
    ``number in s`` drops from ~20 probes to ~3, and memory from 8 bytes a number
    to 2-4 (+ 4 bytes per bucket). The width and the shift are chosen per set
    for the least memory (:func:`sorted_numbers_steps`).
    """

    __slots__ = (
        "_first", "_high", "_len", "_lowbytes", "_lows", "_lowsize", "_mask", "_nbuckets",
        "_shift", "_startbytes", "_starts", "_startsize",
    )  # fmt: skip

    def __init__(
        self, lows: array[int], starts: array[int], shift: int, first: int, width: int
    ) -> None:
        # Held once, as bytes. The compiled build reads the bytes directly
        # (:func:`_find`); the interpreted one bisects typed views of them with
        # C-level bisect, so only it keeps the views (two memoryviews are ~400
        # bytes, more than the numbers of a small sender).
        self._lowbytes: bytes = lows.tobytes()
        self._startbytes: bytes = starts.tobytes()
        self._lowsize: int = lows.itemsize
        self._startsize: int = starts.itemsize
        self._lows: memoryview | None = None if _COMPILED else self._low_view()
        self._starts: memoryview | None = None if _COMPILED else self._start_view()
        self._shift: int = shift
        self._first: int = first
        self._nbuckets: int = len(starts) - 1
        self._mask: int = (1 << width) - 1
        self._high: int = ~self._mask  # the bits a bucket's prefix supplies
        self._len: int = len(lows)

    @classmethod
    def from_sorted(cls, values: array[int]) -> SortedNumbers:
        """Index sorted, distinct uint64 ``values`` in one go (tools and tests)."""
        return drive(sorted_numbers_steps(values))

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        return self.rank(number) >= 0

    def rank(self, number: int) -> int:
        """The rank of ``number`` in the set (0 is the smallest), or -1 when it is absent."""
        b = (number >> self._shift) - self._first
        if 0 <= b < self._nbuckets:
            low = number & self._mask
            if _COMPILED:
                return _find(
                    self._lowbytes, self._lowsize, self._startbytes, self._startsize, b, low
                )
            starts = self._starts
            lows = self._lows
            assert starts is not None  # kept when interpreted
            assert lows is not None
            hi = starts[b + 1]
            i = bisect.bisect_left(lows, low, starts[b], hi)
            return i if i < hi and lows[i] == low else -1
        return -1

    def __len__(self) -> int:
        return self._len

    def _low_view(self) -> memoryview:
        return memoryview(self._lowbytes).cast(_UNSIGNED[self._lowsize])

    def _start_view(self) -> memoryview:
        return memoryview(self._startbytes).cast(_UNSIGNED[self._startsize])

    def __iter__(self) -> Iterator[int]:
        starts, lows, high = self._start_view(), self._low_view(), self._high
        for b in range(self._nbuckets):
            prefix = ((self._first + b) << self._shift) & high
            for rank in range(starts[b], starts[b + 1]):
                yield prefix | lows[rank]

    def __getitem__(self, rank: int) -> int:
        """The number of this rank (0 is the smallest)."""
        if rank < 0:
            rank += self._len
        if not 0 <= rank < self._len:
            raise IndexError("SortedNumbers index out of range")
        b = bisect.bisect_right(self._start_view(), rank) - 1
        size = self._lowsize
        low = int.from_bytes(self._lowbytes[rank * size : (rank + 1) * size], sys.byteorder)
        return (((self._first + b) << self._shift) & self._high) | low

    def __repr__(self) -> str:
        return (
            f"SortedNumbers(<{self._len} numbers, {self._nbuckets} buckets,"
            f" {self._lowsize * 8}-bit>)"
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the numbers and the bucket index."""
        return len(self._lowbytes) + len(self._startbytes)


#: This module runs compiled (mypyc, filterd/native.py) on a little-endian machine:
#: lookups then read the stored bytes directly, with no Python object per probe.
_COMPILED: Final = not __file__.endswith((".py", ".pyc")) and sys.byteorder == "little"


def _word(buf: bytes, index: int, size: int) -> int:
    """The little-endian unsigned integer of ``size`` bytes at item ``index`` of ``buf``."""
    j = index * size
    if size == 2:
        return buf[j] | buf[j + 1] << 8
    if size == 4:
        return buf[j] | buf[j + 1] << 8 | buf[j + 2] << 16 | buf[j + 3] << 24
    value = 0
    for k in range(j + size - 1, j - 1, -1):
        value = value << 8 | buf[k]
    return value


def _find(lows: bytes, lowsize: int, starts: bytes, startsize: int, bucket: int, low: int) -> int:
    """The rank of ``low`` among the sorted low words of ``bucket`` (-1: absent).

    A binary search over the raw bytes.

    The same search as the interpreted path's ``bisect_left``, written out so that
    the compiled build runs it on machine integers (~10x faster than bisecting a
    sequence of Python ints); interpreted, it would be the slower of the two.
    """
    lo = _word(starts, bucket, startsize)
    end = _word(starts, bucket + 1, startsize)
    hi = end
    while lo < hi:
        mid = (lo + hi) >> 1
        if _word(lows, mid, lowsize) < low:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < end and _word(lows, lo, lowsize) == low else -1


#: Buckets are sized for about this many numbers each (a 3-probe bisect).
NUMBERS_PER_BUCKET = 8
# Stored widths of the low bits, with their typecodes (``array`` and ``memoryview``
# alike); 64 bits always fits.
_WIDTHS: Final[tuple[tuple[int, Literal["H", "I", "Q"]], ...]] = (
    (16, "H"), (32, "I"), (64, "Q"),
)  # fmt: skip
# Item size -> the unsigned typecode of that size (bucket starts use "I" or "Q" too).
_UNSIGNED: Final = {width // 8: typecode for width, typecode in _WIDTHS}
# How many numbers one loading step copies or indexes.
_STEP_NUMBERS = 1 << 16


def _layout(first_value: int, last_value: int, n: int) -> tuple[int, int, int, int]:
    """(width, shift, first bucket, number of buckets) with the least memory for this set."""
    target = max(1, -(-n // NUMBERS_PER_BUCKET))
    best: tuple[int, int, int, int, int] | None = None
    for width, typecode in _WIDTHS:
        # The smallest shift that brings the buckets down to the target, but
        # never above the width: the stored low bits must cover the bucket.
        shift = 0
        while shift < width and (last_value >> shift) - (first_value >> shift) + 1 > target:
            shift += 1
        nbuckets = (last_value >> shift) - (first_value >> shift) + 1
        cost = n * array(typecode).itemsize + 4 * (nbuckets + 1)
        if best is None or cost < best[0]:
            best = (cost, width, shift, first_value >> shift, nbuckets)
    assert best is not None
    return best[1], best[2], best[3], best[4]


def sorted_numbers_steps(values: array[int]) -> Generator[None, None, SortedNumbers]:
    """Index sorted, distinct uint64 ``values``; yields between bounded pieces of work.

    No Python-level work per number: the low bits are cut out of the array's
    bytes by C-level slicing, and the bucket starts are found with one bisect
    per non-empty bucket.
    """
    n = len(values)
    if n == 0:
        return SortedNumbers(array("H"), array("I", [0]), 0, 0, 16)
    width, shift, first, nbuckets = _layout(values[0], values[-1], n)
    typecode = dict(_WIDTHS)[width]
    if width == 64:
        lows = values
    else:
        # Each uint64 read as 64 / width words; the low word is the first one on
        # a little-endian machine, the last on a big-endian one.
        words = 64 // width
        pick = 0 if sys.byteorder == "little" else words - 1
        lows = array(typecode)
        view = memoryview(values)
        for a in range(0, n, _STEP_NUMBERS):
            piece = array(typecode)
            piece.frombytes(view[a : a + _STEP_NUMBERS].cast("B"))
            lows.extend(piece[pick::words])
            yield
        view.release()
    starts = array("I" if n < 1 << 32 else "Q", bytes(4 if n < 1 << 32 else 8) * (nbuckets + 1))
    one = array(starts.typecode, [0])
    i = 0
    filled = -1  # every bucket up to this one has its start
    steps = 0
    while i < n:
        b = (values[i] >> shift) - first
        if b == filled + 1:
            starts[b] = i
        else:  # empty buckets before b start (and end) where b starts
            one[0] = i
            starts[filled + 1 : b + 1] = one * (b - filled)
        filled = b
        i = bisect.bisect_left(values, (first + b + 1) << shift, i)
        steps += 1
        if not steps & 1023:
            yield
    one[0] = n
    starts[filled + 1 :] = one * (nbuckets - filled)
    return SortedNumbers(lows, starts, shift, first, width)


class _Done(Generic[_T]):
    """A step generator's return value, once it has finished."""

    __slots__ = ("value",)

    def __init__(self, value: _T) -> None:
        self.value = value


def _advance(steps: Generator[None, None, _T]) -> _Done[_T] | None:
    """Run one step; the result once the generator has returned, else None."""
    try:
        next(steps)
    except StopIteration as done:
        return _Done(done.value)
    return None


def drive(steps: Generator[None, None, _T]) -> _T:
    """Run a step generator to the end at once (for tools, not the event loop)."""
    while (done := _advance(steps)) is None:
        pass
    return done.value


# pyroaring's stubs declare __contains__(int), narrower than Collection's (object).
_EMPTY = cast(NumberSet, FrozenBitMap64())


#: ``until`` of a pair that has an accepted consent without expiry.
FOREVER: Final = (1 << 63) - 1
#: ``until`` of a pair whose consents are all of methods the build did not accept.
REFUSED_ONLY: Final = -1


#: A pair's ``max_per_day`` over time (docs/contract.md step 4: with several valid consents
#: for a pair, the smallest applies): ``((until, cap), ...)``, ``until`` in epoch ms
#: (:data:`FOREVER` for no expiry) and ``cap`` both strictly ascending. At a message's time
#: t the first step with ``until`` > t gives the cap; none: 0 (none stated). It is the
#: Pareto front of the pair's accepted consents that state one: a consent whose cap is not
#: below that of one valid at least as long never decides, and is left out.
CapSchedule: TypeAlias = tuple[tuple[int, int], ...]
#: No accepted consent of the pair states a ``max_per_day``.
NO_CAP: Final[CapSchedule] = ()


def cap_schedule(consents: Iterable[tuple[int, int]]) -> CapSchedule:
    """The :data:`CapSchedule` of accepted consents given as (until, cap), cap 0 for none.

    Merging is the steps of the union: ``cap_schedule((*a, *b))``, idempotent.
    """
    out: list[tuple[int, int]] = []
    best = 0
    # Longest validity first; of equal ones the smallest cap first.
    for until, cap in sorted(consents, key=_longest_first):
        if cap > 0 and (not best or cap < best):
            out.append((until, cap))
            best = cap
    out.reverse()
    return tuple(out)


def _longest_first(step: tuple[int, int]) -> tuple[int, int]:
    return -step[0], step[1]


def cap_at(schedule: CapSchedule, at_ms: int) -> int:
    """The ``max_per_day`` at ``at_ms`` (0: none stated by a consent valid then)."""
    for until, cap in schedule:
        if until > at_ms:
            return cap
    return 0


def simple_cap(schedule: CapSchedule, until: int) -> int:
    """The one cap that stands for ``schedule`` while the pair is valid (``until``: its
    latest accepted validity), 0 for none; -1 when the cap changes with time (a capped
    consent expires before the pair's last one)."""
    if not schedule:
        return 0
    if len(schedule) == 1 and schedule[0][0] == until:
        return schedule[0][1]
    return -1


class ConsentTerms:
    """A sender's consents that are not plain: expiring, refused, or with a ``max_per_day``.

    Most consents are accepted, never expire and state no frequency: they are only
    numbers in :attr:`SenderConsent.consents`. The others are here, in tables sized
    by their counts:

    * ``numbers`` (a :class:`SortedNumbers`) and ``until`` at the same rank: the
      pairs with no accepted consent that never expires, and up to when one of
      their accepted consents is valid: ``until * scale`` epoch milliseconds, or
      ``refused`` when the pair only has consents of methods not accepted;
    * ``cap_numbers`` and ``caps``: the pairs whose accepted consents state a
      ``max_per_day``, and the smallest one (for the frequency-cap rule);
    * ``schedules``: the few pairs whose cap changes with time (:data:`CapSchedule`, a
      capped consent that expires before another of the pair); the others'
      cap is in ``caps`` for as long as the pair is valid.

    ``until`` holds 4-byte seconds (``scale`` 1000, ``refused`` 0) when every
    validity is a whole second, as exports nearly always have it, else 8-byte
    milliseconds (``scale`` 1, ``refused`` :data:`REFUSED_ONLY`).
    """

    __slots__ = ("cap_numbers", "caps", "numbers", "refused", "scale", "schedules", "until")

    def __init__(
        self,
        numbers: SortedNumbers,
        until: array[int],
        cap_numbers: SortedNumbers,
        caps: array[int],
        scale: int = 1,
        refused: int = REFUSED_ONLY,
        schedules: dict[int, CapSchedule] | None = None,
    ) -> None:
        self.numbers = numbers
        self.until = until
        self.cap_numbers = cap_numbers
        self.caps = caps
        self.scale = scale
        self.refused = refused
        self.schedules: dict[int, CapSchedule] = {} if schedules is None else schedules

    @classmethod
    def of(
        cls,
        numbers: array[int],
        until: array[int],
        caps: array[int],
        schedules: dict[int, CapSchedule] | None = None,
    ) -> ConsentTerms:
        """From parallel arrays of sorted numbers, validities (ms) and caps, and the pairs
        whose cap changes with time (tools, tests)."""
        return drive(terms_steps(numbers, until, caps, schedules))

    def until_ms(self, rank: int) -> int:
        """``until`` of this rank in epoch ms, or :data:`REFUSED_ONLY`."""
        value = self.until[rank]
        return REFUSED_ONLY if value == self.refused else value * self.scale

    def max_per_day(self, number: int, at_ms: int) -> int:
        """The pair's ``max_per_day`` at ``at_ms``: the smallest stated by its accepted
        consents valid then (0: none stated, or no such pair here)."""
        i = self.cap_numbers.rank(number)
        if i < 0:
            return 0
        if self.schedules:
            found = self.schedules.get(number)
            if found is not None:
                return cap_at(found, at_ms)
        return self.caps[i]

    def cap_schedule(self, number: int) -> CapSchedule:
        """The pair's :data:`CapSchedule` (:data:`NO_CAP` for none stated)."""
        i = self.cap_numbers.rank(number)
        if i < 0:
            return NO_CAP
        found = self.schedules.get(number)
        if found is not None:
            return found
        j = self.numbers.rank(number)
        return ((self.until_ms(j) if j >= 0 else FOREVER, self.caps[i]),)

    @property
    def nbytes(self) -> int:
        """Bytes held by the numbers and their terms."""
        return (
            self.numbers.nbytes + self.until.itemsize * len(self.until)
            + self.cap_numbers.nbytes + self.caps.itemsize * len(self.caps)
            + sum(20 * len(s) for s in self.schedules.values())
        )  # fmt: skip


#: Entries per step of :func:`terms_steps`.
_TERMS_STEP = 1 << 16
_MAX_SECONDS = (1 << 32) - 1


def terms_steps(
    numbers: array[int],
    until: array[int],
    caps: array[int],
    schedules: dict[int, CapSchedule] | None = None,
) -> Generator[None, None, ConsentTerms]:
    """Index a sender's terms (sorted distinct ``numbers``; ``until`` in ms, FOREVER for a
    pair in the plain set, REFUSED_ONLY; ``caps``, 0 for none, or empty; ``schedules`` of
    the pairs whose cap changes with time); yields between bounded pieces of work."""
    n = len(numbers)
    timed: array[int] = array("Q")
    timed_until: array[int] = array("q")
    capped: array[int] = array("Q")
    capped_values: array[int] = array("I")
    whole = True
    for a in range(0, n, _TERMS_STEP):
        piece = until[a : a + _TERMS_STEP]
        keep = bytes(map(FOREVER.__ne__, piece))
        timed.extend(compress(numbers[a : a + _TERMS_STEP], keep))
        timed_until.extend(compress(piece, keep))
        if caps:
            some = bytes(map(bool, caps[a : a + _TERMS_STEP]))
            capped.extend(compress(numbers[a : a + _TERMS_STEP], some))
            capped_values.extend(compress(caps[a : a + _TERMS_STEP], some))
        yield
    # Whole seconds (and no validity at or before the epoch) fit 4 bytes: the rule.
    for a in range(0, len(timed_until), _TERMS_STEP):
        piece = timed_until[a : a + _TERMS_STEP]
        if whole and not all(
            u == REFUSED_ONLY or (u % 1000 == 0 and 0 < u <= _MAX_SECONDS * 1000) for u in piece
        ):
            whole = False
        yield
    scale, refused = 1, REFUSED_ONLY
    if whole:
        seconds: array[int] = array("I")
        for a in range(0, len(timed_until), _TERMS_STEP):
            piece = timed_until[a : a + _TERMS_STEP]
            seconds.extend(0 if u == REFUSED_ONLY else u // 1000 for u in piece)
            yield
        timed_until, scale, refused = seconds, 1000, 0
    if capped_values and max(capped_values) < 1 << 16:
        capped_values = array("H", capped_values)  # most stated frequencies are small
    timed_numbers = yield from sorted_numbers_steps(timed)
    cap_numbers = yield from sorted_numbers_steps(capped)
    return ConsentTerms(
        timed_numbers, timed_until, cap_numbers, capped_values, scale, refused, schedules
    )


class SenderConsent(NamedTuple):
    """One sender's numbers. The sets support ``number in x`` for an int E.164 number."""

    consents: NumberSet
    """Numbers with an accepted consent to this sender that never expires."""
    optouts: NumberSet
    """Numbers that opted out of this sender (wins over consent)."""
    optout_filter: bytes
    """:mod:`filterd.prefilter` of ``optouts``: the inline "surely not opted out"."""
    terms: ConsentTerms | None = None
    """The other consents (expiring, refused, capped); None when there are none."""

    @classmethod
    def of(
        cls, consents: NumberSet, optouts: NumberSet, terms: ConsentTerms | None = None
    ) -> SenderConsent:
        """An entry with its opt-out filter built at once (tools and tests)."""
        return cls(consents, optouts, prefilter.build(optouts), terms)


class Counts(NamedTuple):
    """Distinct counts of a snapshot, as in its manifest."""

    senders: int
    consents: int
    """Distinct (sender, number) pairs with at least one consent row, of any method."""
    optouts: int
    dnd: int
    global_optouts: int = 0
    """Numbers opted out of every sender (sender ``*``)."""
    terms: int = 0
    """Pairs with consent terms (expiring, refused or capped), see :class:`ConsentTerms`."""


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
    global_optouts: NumberSet = _EMPTY
    """Numbers opted out of every sender (sender ``*`` in the opt-outs input)."""
    global_optout_filter: builtins.bytes = b""  # (the field ``bytes`` shadows the type here)
    """:mod:`filterd.prefilter` of ``global_optouts``."""

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
        """Whether ``number`` has an accepted consent to ``sender`` that never expires."""
        entry = self.senders.get(sender.strip())
        return entry is not None and number in entry.consents

    def consent_until(self, sender: str, number: int) -> int | None:
        """Epoch ms up to which an accepted consent of the pair is valid.

        :data:`FOREVER` for one that never expires, :data:`REFUSED_ONLY` when the
        pair only has consents of methods not accepted, None for no consent at all.
        """
        entry = self.senders.get(sender.strip())
        if entry is None:
            return None
        if number in entry.consents:
            return FOREVER
        if entry.terms is not None and (i := entry.terms.numbers.rank(number)) >= 0:
            return entry.terms.until_ms(i)
        return None

    def max_per_day(self, sender: str, number: int, at_ms: int) -> int:
        """The pair's ``max_per_day`` at ``at_ms`` from its accepted consents valid then
        (0: none stated)."""
        entry = self.senders.get(sender.strip())
        if entry is None or entry.terms is None:
            return 0
        return entry.terms.max_per_day(number, at_ms)

    def opted_out(self, sender: str, number: int) -> bool:
        """Whether ``number`` opted out of ``sender``, or of every sender."""
        if number in self.global_optouts:
            return True
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
            "country_code": self.manifest.get("country_code"),
            "senders": self.counts.senders,
            "consents": self.counts.consents,
            "optouts": self.counts.optouts,
            "dnd": self.counts.dnd,
            "global_optouts": self.counts.global_optouts,
            "consent_terms": self.counts.terms,
            "bytes": self.bytes,
            "format_version": self.manifest.get("format_version"),
            "accept_methods": self.manifest.get("accept_methods"),
            "method_column": self.manifest.get("method_column"),
            "refused_rows": self.manifest.get("refused_rows"),
            "inputs": self.manifest.get("inputs"),
            "checksums_verified": True,
        }


def prefer_sorted(count: int, first: int, last: int, containers: int, payload: int) -> bool:
    """Whether :class:`SortedNumbers` holds these numbers in fewer bytes than the bitmap.

    ``count`` numbers from ``first`` to ``last``; the bitmap has ``containers``
    16-bit containers holding ``payload`` bytes of values (``get_statistics``:
    the ``n_bytes_*_containers``). A random set needs ~190 numbers per container
    before the bitmap is the smaller (~2.3 bytes a number either way then); runs
    and full containers make it smaller much sooner.
    """
    if count == 0:
        return False
    width, _shift, _first, nbuckets = _layout(first, last, count)
    as_sorted = count * (width // 8) + 4 * (nbuckets + 1)
    return as_sorted <= payload + ROARING_CONTAINER_BYTES * containers


def containers_of(bitmap: BitMap64) -> tuple[int, int]:
    """(16-bit containers, bytes of values in them) of a bitmap, from its statistics."""
    stats = bitmap.get_statistics()
    payload = (
        stats["n_bytes_array_containers"] + stats["n_bytes_run_containers"]
        + stats["n_bytes_bitset_containers"]
    )  # fmt: skip
    return stats["n_containers"], payload


def compact(bitmap: BitMap64) -> NumberSet:
    """The in-memory form the loader chooses for ``bitmap`` (:func:`prefer_sorted`).

    Uses whole-bitmap calls: for tools and benchmarks, not for the event loop.
    """
    if not bitmap:
        return _EMPTY
    if prefer_sorted(len(bitmap), bitmap.min(), bitmap.max(), *containers_of(bitmap)):
        return SortedNumbers.from_sorted(bitmap.to_array())
    return cast(NumberSet, bitmap)


def release_steps(snapshot: ConsentSnapshot) -> Generator[None, None, None]:
    """Empty a snapshot nobody uses any more in bounded pieces; yields between pieces.

    Freeing a big sparse bitmap walks all its containers with the GIL held
    (~20 ms for 3 M numbers), so big bitmaps are emptied range by range first.
    Only for a snapshot no reader can reach: it is left empty.
    """
    senders = snapshot.senders
    while senders:
        yield from _empty_sender(senders.popitem()[1])
        yield
    yield from _empty_bitmap(snapshot.dnd_numbers)
    yield from _empty_bitmap(snapshot.global_optouts)


def _empty_sender(entry: SenderConsent) -> Generator[None, None, None]:
    for numbers in (entry.consents, entry.optouts):
        yield from _empty_bitmap(numbers)


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
    while (done := _advance(steps)) is None:
        if clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + ASYNC_SLICE_S
    return done.value
