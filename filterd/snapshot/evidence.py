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

import re
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import compress
from pathlib import Path

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
from filterd.snapshot.store import FOREVER, REFUSED_ONLY

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


class ConsentRows:
    """Consent rows of one input, plain ones in bitmaps, the others with their terms."""

    def __init__(self, country_code: str, accept: Iterable[str]) -> None:
        self.country_code = country_code
        self.accept = frozenset(accept)
        self.plain = _Buffers(country_code)
        # raw sender -> (numbers, until, caps) in input order.
        self._special: dict[str, tuple[array[int], array[int], array[int]]] = {}
        #: (trimmed sender, trimmed method) -> refused rows.
        self.refused: Counter[tuple[str, str]] = Counter()
        self.method_column = False
        self.special_rows = 0
        # expires_at text -> epoch ms: exports repeat the same few expiry times.
        self._expiries: dict[str, int] = {}

    def add_block(self, present: list[str], cols: list[list[str]]) -> None:
        senders, recipients = cols[0], cols[1]
        evidence = dict(zip(present, cols[2:], strict=True))
        methods = evidence.get("method")
        expiries = evidence.get("expires_at")
        caps = evidence.get("max_per_day")
        n = len(senders)
        # Plain rows (accepted method, empty expiry and cap) are told apart with one
        # C-level pass per column; only the others get a Python step each.
        plain = bytearray(b"\x01") * n
        special: set[int] = set()
        if methods is not None:
            ok = bytes(map(self.accept.__contains__, methods))
            if ok.count(0):
                special.update(i for i, flag in enumerate(ok) if not flag)
        for column in (expiries, caps):
            if column is not None:
                special.update(compress(range(n), column))
        if not special:
            self.plain.add_block(senders, recipients)
            return
        for i in special:
            plain[i] = 0
        self.plain.add_block(list(compress(senders, plain)), list(compress(recipients, plain)))
        self.special_rows += len(special)
        # The per-row loop of the rows with terms, written out with locals (no call
        # per row but the parsing ones): about a third of a big input comes here.
        accept, cc, refused, entries = self.accept, self.country_code, self.refused, self._special
        known_expiry = self._expiries
        check_method = self.method_column
        bitmaps = self.plain.bitmaps
        for i in sorted(special):
            key = senders[i].strip()
            expiry = expiries[i].strip() if expiries is not None else ""
            cap = caps[i].strip() if caps is not None else ""
            if not key:
                raise _NeedsRescan
            try:
                number = normalize(recipients[i].strip(), cc)
                until = FOREVER
                if expiry:
                    until = known_expiry.get(expiry, 0)
                    if not until:
                        until = known_expiry[expiry] = parse_expiry(expiry)
                per_day = parse_max_per_day(cap) if cap else 0
            except (InvalidNumber, ValueError) as exc:
                raise _NeedsRescan from exc
            if check_method and methods is not None and (m := methods[i].strip()) not in accept:
                refused[(key, m)] += 1
                until, per_day = REFUSED_ONLY, 0
            elif until == FOREVER and not per_day:
                # Plain after all (white space around an accepted method, say).
                bitmaps.setdefault(key, BitMap64()).add(number)
                continue
            entry = entries.get(key)
            if entry is None:
                entry = entries[key] = (array("Q"), array("q"), array("I"))
            entry[0].append(number)
            entry[1].append(until)
            entry[2].append(per_day)
        if len(known_expiry) > _EXPIRIES_KEPT:
            known_expiry.clear()

    def finish(self) -> tuple[dict[str, BitMap64], dict[str, SenderTerms]]:
        """Plain bitmaps and terms per trimmed sender.

        A number with an accepted consent that never expires is in the plain
        bitmap; it keeps a terms entry only for its ``max_per_day``.
        """
        bitmaps = self.plain.finish()
        terms: dict[str, SenderTerms] = {}
        for sender, (numbers, untils, caps) in self._special.items():
            out = _sorted_terms(numbers, untils, caps)
            n = len(out.numbers)
            plain = bitmaps.get(sender)
            if plain is not None:
                # A number in the plain set has an accepted consent without expiry.
                for number in BitMap64(out.numbers) & plain:
                    out.until[bisect_left(out.numbers, number)] = FOREVER
            forever = [i for i, until in enumerate(out.until) if until == FOREVER]
            if forever:
                added = BitMap64(out.numbers[i] for i in forever)
                if plain is None:
                    plain = bitmaps[sender] = added
                else:
                    plain |= added
                plain.run_optimize()
                plain.shrink_to_fit()
                # Kept in the terms only for a max_per_day.
                keep = bytearray(b"\x01") * n
                for i in forever:
                    if not out.caps[i]:
                        keep[i] = 0
                if keep.count(0):
                    out = SenderTerms(
                        array("Q", compress(out.numbers, keep)),
                        array("q", compress(out.until, keep)),
                        array("I", compress(out.caps, keep)),
                    )
            if out.numbers:
                terms[sender] = out
        return bitmaps, terms


def _sorted_terms(numbers: array[int], untils: array[int], caps: array[int]) -> SenderTerms:
    """One sender's term rows sorted by number, several rows of a number merged.

    A merged entry has the longest validity and the smallest stated cap.

    Partial, for the frequency-cap rule (another issue): the contract applies the
    smallest ``max_per_day`` of the pair's consents *valid at the message's time*;
    this keeps the smallest over all its accepted consents, expired ones included.
    """
    order = sorted(range(len(numbers)), key=numbers.__getitem__)
    out = SenderTerms(
        array("Q", map(numbers.__getitem__, order)),
        array("q", map(untils.__getitem__, order)),
        array("I", map(caps.__getitem__, order)),
    )
    if len(BitMap64(out.numbers)) == len(out.numbers):
        return out  # no number twice: the common case, no Python step per entry
    merged = SenderTerms(array("Q"), array("q"), array("I"))
    for number, until, cap in zip(out.numbers, out.until, out.caps, strict=True):
        if merged.numbers and merged.numbers[-1] == number:
            merged.until[-1] = max(merged.until[-1], until)
            if cap and (not merged.caps[-1] or cap < merged.caps[-1]):
                merged.caps[-1] = cap
            continue
        merged.numbers.append(number)
        merged.until.append(until)
        merged.caps.append(cap)
    return merged


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
