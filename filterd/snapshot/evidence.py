"""Reading the consents input with its evidence: method, expiry and frequency.

Most consent rows are plain: an accepted method, no ``expires_at``, no
``max_per_day``. They take the bulk path of :mod:`filterd.snapshot.inputs`
(one bitmap per sender, no Python step per field). The rest are picked out of
each block with C-level scans (a membership test per method, the truthiness of
the other fields) and read one by one: their recipients normalized, their
expiry parsed, their method checked against the accepted ones. Per sender
they become parallel arrays (number, valid until, max per day) that
:func:`ConsentRows.finish` sorts, merges per number and returns beside the
plain bitmaps, with a count of refused rows per sender and method.

A row's method is compared exactly after trimming white space. A method that
is not accepted (a known word such as ``default-registration``, or any other
word) makes the row a refused consent: kept, so that the decision can say
``consent-not-explicit``, and counted. A file without a ``method`` column has
every row accepted (:attr:`ConsentRows.method_column` says so).
"""

from __future__ import annotations

import operator
import re
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress, repeat
from operator import add, and_, eq, lshift, ne, or_, rshift, sub
from pathlib import Path
from typing import Literal

from pyroaring import BitMap64

from filterd.errors import InvalidNumber
from filterd.numbers import normalize
from filterd.snapshot.inputs import (
    InputFile,
    Progress,
    Rejects,
    _Buffers,
    _NeedsRescan,
    _refused_on_rereading,
    _rows,
    _slow_rows,
)
from filterd.snapshot.store import FOREVER, REFUSED_ONLY, CapSchedule, cap_schedule, simple_cap

__all__ = [
    "DEFAULT_ACCEPT_METHODS",
    "KNOWN_METHODS",
    "ConsentRows",
    "SenderTerms",
    "parse_accept_methods",
    "parse_expiry",
    "parse_max_per_day",
    "read_consents",
]

#: PIPL art. 14 (voluntary, explicit, informed): the methods accepted by default.
DEFAULT_ACCEPT_METHODS: tuple[str, ...] = ("explicit", "double-opt-in", "written")
#: Every method word filterd knows; the others (art. 23: a third party needs its own
#: consent) are refused unless ``--accept-methods`` names them.
KNOWN_METHODS: tuple[str, ...] = (
    *DEFAULT_ACCEPT_METHODS, "default-registration", "pre-ticked", "bundled-terms", "third-party",
)  # fmt: skip
#: The optional columns read, in this order.
EVIDENCE_COLUMNS: tuple[str, ...] = ("method", "expires_at", "max_per_day")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_PER_DAY = re.compile(r"[1-9][0-9]{0,8}")
_EXPIRIES_KEPT = 100_000  # parsed expiry times remembered at most


def parse_accept_methods(text: str) -> tuple[str, ...]:
    """``--accept-methods``: comma-separated known method words; raises ValueError."""
    methods = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not methods:
        raise ValueError("no method given")
    unknown = [m for m in methods if m not in KNOWN_METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r} (known: {', '.join(KNOWN_METHODS)})")
    return methods


def parse_expiry(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 date-time with offset, rounded up; raises ValueError.

    Rounding up keeps "valid while ``expires_at`` is later than the message's
    time" exact for message times in whole milliseconds.
    """
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("no UTC offset")
    return -((_EPOCH - moment) // _MS)


def parse_max_per_day(text: str) -> int:
    """A positive integer of at most 9 digits; raises ValueError."""
    if not _MAX_PER_DAY.fullmatch(text):
        raise ValueError("not a positive integer")
    return int(text)


def _row_problem(present: list[str], values: list[str]) -> str | None:
    """Why the evidence columns of a row are bad, or None (for the slow re-read)."""
    for name, raw in zip(present, values, strict=True):
        value = raw.strip()
        if not value or name == "method":
            continue
        try:
            if name == "expires_at":
                parse_expiry(value)
            else:
                parse_max_per_day(value)
        except ValueError:
            what = (
                "an ISO 8601 date-time with offset"
                if name == "expires_at"
                else ("a positive integer")
            )
            return f"bad {name} {raw!r}: expected {what}"
    return None


@dataclass(slots=True)
class SenderTerms:
    """One sender's consents with terms, sorted by number, one entry per number."""

    numbers: array[int]
    """Sorted distinct numbers (``Q``)."""
    until: array[int]
    """Epoch ms an accepted consent is valid up to (``q``), FOREVER or REFUSED_ONLY."""
    caps: array[int]
    """Smallest ``max_per_day`` of the accepted consents (``I``, 0: none)."""
    schedules: dict[int, CapSchedule] = field(default_factory=dict)
    """Number -> its cap schedule, for the few pairs whose cap changes with time (a capped
    consent expires before the pair's last accepted one); the others' cap is ``caps``."""


#: bytes.translate table: 0 <-> 1 (a row mask's complement).
_FLIP = bytes([1, 0]) + bytes(range(2, 256))


def _or_masks(a: bytes, b: bytes) -> bytes:
    """The element-wise OR of two 0/1 row masks of the same length, in C."""
    n = len(a)
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(n, "little")


def _and_masks(a: bytes, b: bytes) -> bytes:
    """The element-wise AND of two 0/1 row masks of the same length, in C."""
    n = len(a)
    return (int.from_bytes(a, "little") & int.from_bytes(b, "little")).to_bytes(n, "little")


# Bit positions of one terms entry packed into a Python int for the one sort of
# :meth:`ConsentRows.finish`: sender index | number | until + 1 | cap. The number
# fits 64 bits, ``until + 1`` too (REFUSED_ONLY becomes 0, FOREVER 2**63), the cap 32.
_UNTIL_AT = 32
_NUMBER_AT = _UNTIL_AT + 64
_SENDER_AT = _NUMBER_AT + 64
_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


class ConsentRows:
    """Consent rows of one input, plain ones in bitmaps, the others with their terms.

    The rows with terms are handled a column at a time, with no Python step per
    row: they are picked out with row masks (bytes of 0/1, combined as big
    integers), their recipients normalized by a C-level ``map``, their expiry and
    cap texts parsed once per distinct text, and appended to four flat arrays
    (sender index, number, until, cap) that :meth:`finish` sorts once and cuts
    per sender.
    """

    def __init__(self, country_code: str, accept: Iterable[str]) -> None:
        self.country_code = country_code
        self.accept = frozenset(accept)
        self.plain = _Buffers(country_code)
        # The rows with terms, in input order: trimmed sender -> index, and the columns.
        self._ids: dict[str, int] = {}
        self._sids: array[int] = array("I")
        self._numbers: array[int] = array("Q")
        self._untils: array[int] = array("q")
        self._caps: array[int] = array("I")
        #: (trimmed sender, trimmed method) -> refused rows.
        self.refused: Counter[tuple[str, str]] = Counter()
        self.method_column = False
        self.special_rows = 0
        # Trimmed text -> value: exports repeat the same few expiry times and caps.
        self._expiries: dict[str, int] = {"": FOREVER}
        self._per_day: dict[str, int] = {"": 0}

    def add_block(self, present: list[str], cols: list[list[str]]) -> None:
        senders, recipients = cols[0], cols[1]
        evidence = dict(zip(present, cols[2:], strict=True))
        methods = evidence.get("method")
        expiries = evidence.get("expires_at")
        caps = evidence.get("max_per_day")
        n = len(senders)
        # Plain rows (accepted method, empty expiry and cap) are told apart with one
        # C-level pass per column: a row mask each, OR-ed as big integers.
        special = bytes(n)
        if methods is not None:
            ok = bytes(map(self.accept.__contains__, methods))
            if ok.count(0):
                special = ok.translate(_FLIP)
        for column in (expiries, caps):
            if column is not None:
                special = _or_masks(special, bytes(map(bool, column)))
        if not special.count(1):
            self.plain.add_block(senders, recipients)
            return
        plain = special.translate(_FLIP)
        self.plain.add_block(list(compress(senders, plain)), list(compress(recipients, plain)))
        keys = list(map(str.strip, compress(senders, special)))
        m = len(keys)
        self.special_rows += m
        if "" in keys:
            raise _NeedsRescan
        try:
            # The compiled normalize mapped in C: faster here than the bulk regex.
            cc = repeat(self.country_code)
            numbers = array("Q", map(normalize, map(str.strip, compress(recipients, special)), cc))
        except InvalidNumber as exc:
            raise _NeedsRescan from exc
        untils = _parsed(expiries, special, m, self._expiries, parse_expiry, "q")
        per_day = _parsed(caps, special, m, self._per_day, parse_max_per_day, "I")
        if self.method_column and methods is not None:
            trimmed = list(map(str.strip, compress(methods, special)))
            ok = bytes(map(self.accept.__contains__, trimmed))
            if ok.count(0):
                refused = ok.translate(_FLIP)
                self.refused.update(
                    zip(compress(keys, refused), compress(trimmed, refused), strict=True)
                )
                # Refused rows have no validity and no cap: a loop over them alone.
                for i in compress(range(m), refused):
                    untils[i] = REFUSED_ONLY
                    per_day[i] = 0
        # Plain after all (white space around an accepted method, say): no expiry, no cap.
        after_all = _and_masks(
            bytes(map(FOREVER.__eq__, untils)), bytes(map(operator.not_, per_day))
        )
        if after_all.count(1):
            bitmaps = self.plain.bitmaps
            for key, number in zip(
                compress(keys, after_all), compress(numbers, after_all), strict=True
            ):
                bitmaps.setdefault(key, BitMap64()).add(number)
            keep = after_all.translate(_FLIP)
            keys = list(compress(keys, keep))
            numbers = array("Q", compress(numbers, keep))
            untils = array("q", compress(untils, keep))
            per_day = array("I", compress(per_day, keep))
        ids = self._ids
        for key in set(keys).difference(ids):
            ids[key] = len(ids)
        self._sids.extend(map(ids.__getitem__, keys))
        self._numbers.extend(numbers)
        self._untils.extend(untils)
        self._caps.extend(per_day)

    def finish(self) -> tuple[dict[str, BitMap64], dict[str, SenderTerms]]:
        """Plain bitmaps and terms per trimmed sender.

        A number with an accepted consent that never expires is in the plain
        bitmap; it keeps a terms entry only for its ``max_per_day``.
        """
        bitmaps = self.plain.finish()
        sids, numbers, untils, caps, scheduled = _sorted_entries(
            self._sids, self._numbers, self._untils, self._caps
        )
        self._sids, self._numbers, self._untils = array("I"), array("Q"), array("q")
        self._caps = array("I")
        by_sid: dict[int, dict[int, CapSchedule]] = {}
        for key, schedule in scheduled.items():
            by_sid.setdefault(key >> 64, {})[key & _MASK64] = schedule
        terms: dict[str, SenderTerms] = {}
        end = 0
        for sid, sender in enumerate(self._ids):
            start, end = end, bisect_left(sids, sid + 1, end)
            schedules = by_sid.get(sid, {})
            out = SenderTerms(numbers[start:end], untils[start:end], caps[start:end], schedules)
            plain = bitmaps.get(sender)
            if plain is not None:
                # A number in the plain set has an accepted consent without expiry: a cap
                # of its expiring consents ends before the pair's validity does.
                both = bytes(map(plain.__contains__, out.numbers))
                for i in compress(range(len(both)), both):
                    until, cap = out.until[i], out.caps[i]
                    if cap and until != FOREVER and out.numbers[i] not in schedules:
                        schedules[out.numbers[i]] = ((until, cap),)
                    out.until[i] = FOREVER
            forever = bytes(map(FOREVER.__eq__, out.until))
            if forever.count(1):
                added = BitMap64(array("Q", compress(out.numbers, forever)))
                if plain is None:
                    plain = bitmaps[sender] = added
                else:
                    plain |= added
                plain.run_optimize()
                plain.shrink_to_fit()
                # Kept in the terms only for a max_per_day.
                keep = _or_masks(forever.translate(_FLIP), bytes(map(bool, out.caps)))
                if keep.count(0):
                    out = SenderTerms(
                        array("Q", compress(out.numbers, keep)),
                        array("q", compress(out.until, keep)),
                        array("I", compress(out.caps, keep)),
                        schedules,
                    )
            if out.numbers:
                terms[sender] = out
        return bitmaps, terms


def _parsed(
    column: list[str] | None,
    rows: bytes,
    m: int,
    known: dict[str, int],
    parse: Callable[[str], int],
    typecode: Literal["q", "I"],
) -> array[int]:
    """The parsed values of a column's ``rows`` (trimmed; empty is ``known[""]``).

    Each distinct text is parsed once (``known`` remembers it); a bad one raises
    :class:`_NeedsRescan`.
    """
    if column is None:
        return array(typecode, [known[""]]) * m
    texts = list(map(str.strip, compress(column, rows)))
    for text in set(texts).difference(known):
        try:
            known[text] = parse(text)
        except ValueError as exc:
            raise _NeedsRescan from exc
    values = array(typecode, map(known.__getitem__, texts))
    if len(known) > _EXPIRIES_KEPT:
        empty = known[""]
        known.clear()
        known[""] = empty
    return values


def _sorted_entries(
    sids: array[int], numbers: array[int], untils: array[int], caps: array[int]
) -> tuple[array[int], array[int], array[int], array[int], dict[int, CapSchedule]]:
    """The terms entries sorted by (sender index, number), several rows of a pair merged.

    One sort of the entries packed into Python integers (built and taken apart
    with C-level ``map``), no Python step per entry. A merged entry has the
    longest validity and, as its cap, the one that stands while the pair is valid
    (:func:`~filterd.snapshot.store.simple_cap`); where the cap changes with time
    (a capped consent expires before the pair's last one) the smallest, and the
    pair's :data:`~filterd.snapshot.store.CapSchedule` is in the returned dict,
    keyed ``sender index << 64 | number``.
    """
    high = map(or_, map(lshift, sids, repeat(_SENDER_AT)), map(lshift, numbers, repeat(_NUMBER_AT)))
    low = map(or_, map(lshift, map(add, untils, repeat(1)), repeat(_UNTIL_AT)), caps)
    packed = sorted(map(or_, high, low))
    pairs = list(map(rshift, packed, repeat(_NUMBER_AT)))
    s_out = array("I", map(rshift, pairs, repeat(_SENDER_AT - _NUMBER_AT)))
    n_out = array("Q", map(and_, pairs, repeat(_MASK64)))
    until_plus_1 = map(and_, map(rshift, packed, repeat(_UNTIL_AT)), repeat(_MASK64))
    u_out = array("q", map(sub, until_plus_1, repeat(1)))
    c_out = array("I", map(and_, packed, repeat(_MASK32)))
    del packed
    schedules: dict[int, CapSchedule] = {}
    # Entries of the same pair are neighbours, the longest validity last.
    repeats = list(compress(range(1, len(pairs)), map(eq, pairs[1:], pairs)))
    if not repeats:
        return s_out, n_out, u_out, c_out, schedules
    # An entry is kept when the next one is another pair's: the last of its pair's entries.
    keep = bytes(map(ne, pairs, pairs[1:])) + b"\x01"
    # Only a pair with a capped entry before its last can need more than that last entry's
    # cap: a few, found in C; each handled once, from its last entry.
    lasts: set[int] = set()
    for i in compress(repeats, map(c_out.__getitem__, map(sub, repeats, repeat(1)))):
        while not keep[i]:
            i += 1
        lasts.add(i)
    for last in sorted(lasts):
        first = last
        while first and pairs[first - 1] == pairs[last]:
            first -= 1
        caps_of = c_out[first : last + 1]
        # Most often the consent valid longest states the smallest cap: that one stands.
        if caps_of[-1] and caps_of[-1] == min(c for c in caps_of if c):
            continue
        schedule = cap_schedule(zip(u_out[first : last + 1], caps_of, strict=True))
        cap = simple_cap(schedule, u_out[last])
        if cap < 0:
            schedules[pairs[last]] = schedule
            cap = schedule[0][1]
        c_out[last] = cap
    return (
        array("I", compress(s_out, keep)),
        array("Q", compress(n_out, keep)),
        array("q", compress(u_out, keep)),
        array("I", compress(c_out, keep)),
        schedules,
    )


def read_consents(
    path: Path,
    country_code: str,
    accept: Iterable[str],
    progress: Progress | None,
    rejects: Rejects | None = None,
    encoding: str = "utf-8",
) -> tuple[InputFile, ConsentRows, dict[str, BitMap64], dict[str, SenderTerms]]:
    """Read a consents input with its optional evidence columns.

    Returns the input's record, the rows' bookkeeping (refused counts, whether a
    ``method`` column was there), the plain bitmaps and the terms per sender.
    Bad rows go to ``rejects`` and are left out; without ``rejects`` a bad row
    raises :class:`~filterd.snapshot.errors.SnapshotRowsRejected` once the file is read.
    """
    record = InputFile("consents", Path(path), encoding=encoding)
    rejected = Rejects() if rejects is None else rejects
    columns = ("sender", "recipient")
    try:
        rows = ConsentRows(country_code, accept)
        present: list[str] = []
        for _first, _lines, cols in _rows(
            record, columns, progress, EVIDENCE_COLUMNS, present, country_code
        ):
            rows.method_column = "method" in present
            rows.add_block(present, cols)
        rows.method_column = "method" in present
        bitmaps, terms = rows.finish()
    except _NeedsRescan:
        rows = ConsentRows(country_code, accept)
        present = []
        try:
            for cols in _slow_rows(
                record, columns, country_code, rejected, EVIDENCE_COLUMNS, _row_problem, present
            ):
                rows.method_column = "method" in present
                rows.add_block(present, cols)
            rows.method_column = "method" in present
            bitmaps, terms = rows.finish()
        except _NeedsRescan:
            raise _refused_on_rereading(record) from None
    if rejects is None:
        rejected.check()
    return record, rows, bitmaps, terms
