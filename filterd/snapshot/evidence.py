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
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import compress
from pathlib import Path

from pyroaring import BitMap64

from filterd.errors import InvalidNumber, SnapshotError
from filterd.numbers import normalize
from filterd.snapshot.inputs import (
    InputFile,
    Progress,
    _Buffers,
    _locate_bad_row,
    _NeedsRescan,
    _rows,
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
        for i in sorted(special):
            self._add_special(
                senders[i],
                recipients[i],
                methods[i] if methods is not None else "",
                expiries[i] if expiries is not None else "",
                caps[i] if caps is not None else "",
            )

    def _add_special(self, sender: str, recipient: str, method: str, expiry: str, cap: str) -> None:
        key = sender.strip()
        if not key:
            raise _NeedsRescan
        try:
            number = normalize(recipient.strip(), self.country_code)
            until = parse_expiry(expiry.strip()) if expiry.strip() else FOREVER
            per_day = parse_max_per_day(cap.strip()) if cap.strip() else 0
        except (InvalidNumber, ValueError) as exc:
            raise _NeedsRescan from exc
        method = method.strip()
        if self.method_column and method not in self.accept:
            self.refused[(key, method)] += 1
            until, per_day = REFUSED_ONLY, 0
        elif until == FOREVER and not per_day:
            # Plain after all (white space around an accepted method, say).
            self.plain.bitmaps.setdefault(key, BitMap64()).add(number)
            return
        entry = self._special.get(key)
        if entry is None:
            entry = self._special[key] = (array("Q"), array("q"), array("I"))
        entry[0].append(number)
        entry[1].append(until)
        entry[2].append(per_day)

    def finish(self) -> tuple[dict[str, BitMap64], dict[str, SenderTerms]]:
        """Plain bitmaps and terms per trimmed sender.

        A number with an accepted consent that never expires is in the plain
        bitmap; it keeps a terms entry only for its ``max_per_day``.
        """
        bitmaps = self.plain.finish()
        terms: dict[str, SenderTerms] = {}
        for sender, (numbers, untils, caps) in self._special.items():
            plain = bitmaps.get(sender)
            out = SenderTerms(array("Q"), array("q"), array("I"))
            order = sorted(range(len(numbers)), key=numbers.__getitem__)
            added = BitMap64()
            last = -1
            for i in order:
                number, until, cap = numbers[i], untils[i], caps[i]
                if number == last:
                    # Several rows for one pair: the longest validity, the smallest cap.
                    if until > out.until[-1]:
                        out.until[-1] = until
                    if cap and (not out.caps[-1] or cap < out.caps[-1]):
                        out.caps[-1] = cap
                    continue
                last = number
                out.numbers.append(number)
                out.until.append(until)
                out.caps.append(cap)
            keep = bytearray(len(out.numbers))
            for j, number in enumerate(out.numbers):
                if plain is not None and number in plain:
                    out.until[j] = FOREVER
                if out.until[j] == FOREVER:
                    added.add(number)
                    keep[j] = 1 if out.caps[j] else 0
                else:
                    keep[j] = 1
            if added:
                if plain is None:
                    bitmaps[sender] = added
                else:
                    plain |= added
                bitmaps[sender].run_optimize()
                bitmaps[sender].shrink_to_fit()
            if keep.count(0):
                out = SenderTerms(
                    array("Q", compress(out.numbers, keep)),
                    array("q", compress(out.until, keep)),
                    array("I", compress(out.caps, keep)),
                )
            if out.numbers:
                terms[sender] = out
        return bitmaps, terms


def read_consents(
    path: Path,
    country_code: str,
    accept: Iterable[str],
    progress: Progress | None,
) -> tuple[InputFile, ConsentRows, dict[str, BitMap64], dict[str, SenderTerms]]:
    """Read a consents input with its optional evidence columns.

    Returns the input's record, the rows' bookkeeping (refused counts, whether a
    ``method`` column was there), the plain bitmaps and the terms per sender.
    """
    record = InputFile("consents", Path(path))
    rows = ConsentRows(country_code, accept)
    present: list[str] = []
    columns = ("sender", "recipient")
    try:
        for _first, _lines, cols in _rows(record, columns, progress, EVIDENCE_COLUMNS, present):
            rows.method_column = "method" in present
            rows.add_block(present, cols)
        rows.method_column = "method" in present
        bitmaps, terms = rows.finish()
    except _NeedsRescan:
        _locate_bad_row(record, columns, country_code, EVIDENCE_COLUMNS, _row_problem)
        raise SnapshotError("not reached") from None  # _locate_bad_row always raises
    return record, rows, bitmaps, terms
