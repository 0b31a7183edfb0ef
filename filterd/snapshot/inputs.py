"""Streaming the CSV inputs of a build into roaring bitmaps, fast.

Pure-Python CSV parsing is the bottleneck of a build, so the common case never
touches a Python function per field: blocks of a few MiB are split into lines
and fields with ``str.split`` in list comprehensions; recipients are kept as
raw strings per sender and converted in bulk when a buffer fills: one regular
expression over the joined strings proves every one of them is already in a
plain form (``+E164``, ``00E164``, national with or without trunk 0), and then
``map(int, ...)`` turns them into numbers in C. The result is identical to
:func:`filterd.numbers.normalize` (the tests check that); anything else (separators,
white space, quotes, a bad number) falls back to ``normalize`` per value, and a
row that is really bad is then located by re-reading the file slowly, to
report its file and line. Duplicate rows are harmless: bitmaps are sets.
"""

from __future__ import annotations

import csv
import hashlib
import re
import time
import zlib
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, repeat
from pathlib import Path

from pyroaring import BitMap64

from filterd.errors import InvalidNumber, SnapshotError
from filterd.numbers import MAX_DIGITS, MIN_DIGITS, normalize
from filterd.snapshot.errors import SnapshotInputError

__all__ = ["InputFile", "convert_numbers", "read_numbers", "read_pairs"]

_BLOCK = 4 << 20  # bytes read per step: large blocks amortize the per-block Python work
_BUFFERED = 1 << 20  # raw strings held across all senders before converting them
_ROW_REPORT_S = 1.0  # progress lines at most this often

Progress = Callable[[str], None]


@dataclass(slots=True)
class InputFile:
    """One input file and what the manifest records about it."""

    kind: str
    path: Path
    sha256: str = ""
    bytes: int = 0
    rows: int = 0


class _NeedsRescan(Exception):
    """A bad value was found in bulk; its line is found by a slow re-read."""


# ---------------------------------------------------------------------------- bytes → lines


def _raw_blocks(record: InputFile) -> Iterator[bytes]:
    """Decompressed blocks of the file; hashes the raw bytes into ``record`` on the way."""
    path = record.path
    digest = hashlib.sha256()
    record.bytes = 0
    inflater = zlib.decompressobj(wbits=31) if path.name.endswith(".gz") else None
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally; this is a generator
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot open: {exc.strerror}") from exc
    try:
        while data := f.read(_BLOCK):
            digest.update(data)
            record.bytes += len(data)
            if inflater is None:
                yield data
                continue
            try:
                out = inflater.decompress(data)
                # A .gz file may hold several members (cat a.gz b.gz); gzip.open reads them all.
                while inflater.eof and inflater.unused_data:
                    rest = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=31)
                    out += inflater.decompress(rest)
            except zlib.error as exc:
                raise SnapshotError(f"{path}: not a valid gzip file: {exc}") from exc
            yield out
        if inflater is not None and not inflater.eof:
            raise SnapshotError(f"{path}: gzip stream is truncated")
    finally:
        f.close()
    record.sha256 = digest.hexdigest()


def _blocks(record: InputFile) -> Iterator[tuple[int, list[str]]]:
    """(number of the first line, complete decoded lines) per block."""
    tail = b""
    lineno = 1
    for data in _raw_blocks(record):
        data = tail + data
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        if cut:
            text = _decode(record.path, data[:cut], lineno)
            if "\r" in text:
                text = text.replace("\r\n", "\n")  # CRLF files take the fast path too
            lines = text.split("\n")
            lines.pop()  # the empty string after the last '\n'
            yield lineno, lines
            lineno += len(lines)
    if tail:
        yield lineno, [_decode(record.path, tail, lineno).rstrip("\r")]


def _decode(path: Path, data: bytes, lineno: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = lineno + data.count(b"\n", 0, exc.start)
        raise SnapshotInputError(str(path), bad_line, "not UTF-8 text") from exc


def _split(line: str) -> list[str]:
    # Plain comma splitting is the fast path; quoted fields go through csv.
    if '"' in line:
        return next(csv.reader([line]), [])
    return line.split(",")


def _header(
    record: InputFile, line: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()
) -> tuple[list[int], int, list[str]]:
    """Indices of the wanted columns, the number of columns, the optional columns present.

    The indices are those of ``columns``, then those of the ``optional`` columns
    the header has, in the order of ``optional``.
    """
    names = [c.strip().lstrip("\ufeff").strip().lower() for c in _split(line)]
    want = []
    for name in columns:
        if name not in names:
            raise SnapshotInputError(str(record.path), 1, f"missing column {name!r} in header")
        want.append(names.index(name))
    present = [name for name in optional if name in names]
    want += [names.index(name) for name in present]
    return want, len(names), present


def _columns(
    record: InputFile, first: int, lines: list[str], want: list[int], width: int
) -> list[list[str]]:
    """The wanted columns of a block of lines, one list per column; blank lines dropped."""
    if not lines:
        return [[] for _ in want]
    text = ",".join(lines)
    # Every line has exactly `width` unquoted fields (commas counted per line, in C)?
    # Then split the whole block at once and take every width-th field.
    if '"' not in text and set(map(str.count, lines, repeat(","))) == {width - 1}:
        fields = text.split(",")
        return [fields[i::width] for i in want]
    out: list[list[str]] = [[] for _ in want]
    for offset, line in enumerate(lines):
        parts = _split(line)
        if len(parts) <= max(want):
            if not line.strip():
                continue  # a blank line is no row
            raise SnapshotInputError(str(record.path), first + offset, "missing column")
        for column, i in zip(out, want, strict=True):
            column.append(parts[i])
    return out


def _rows(
    record: InputFile,
    columns: tuple[str, ...],
    progress: Progress | None,
    optional: tuple[str, ...] = (),
    present: list[str] | None = None,
) -> Iterator[tuple[int, list[str], list[list[str]]]]:
    """(first line number, lines, wanted columns) per block, after the header.

    The columns are ``columns``, then the ``optional`` ones the header has,
    whose names are appended to ``present`` once the header is read.
    """
    want: list[int] = []
    width = 0
    started = last = time.monotonic()
    for first, lines in _blocks(record):
        if not want:
            if not lines:
                continue
            want, width, found = _header(record, lines[0], columns, optional)
            if present is not None:
                present += found
            lines = lines[1:]
            first += 1
        cols = _columns(record, first, lines, want, width)
        record.rows += len(cols[0])
        yield first, lines, cols
        if progress is not None and (now := time.monotonic()) - last >= _ROW_REPORT_S:
            last = now
            rate = record.rows / max(now - started, 1e-9)
            progress(f"{record.kind}: {record.path.name}: {record.rows:,} rows ({rate:,.0f}/s)")
    if not want:
        raise SnapshotInputError(str(record.path), 1, "empty file: no header row")


# ---------------------------------------------------------------------- strings → numbers


@lru_cache(maxsize=8)
def _fast_forms(country_code: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """(any line not in a plain form, international digits, national digits) patterns.

    ``[0-9]``, never ``\\d``: a str pattern's ``\\d`` matches any Unicode digit.
    """
    e164 = f"[1-9][0-9]{{{MIN_DIGITS - 1},{MAX_DIGITS - 1}}}"
    low = max(1, MIN_DIGITS - len(country_code))
    national = f"[1-9][0-9]{{{low - 1},{MAX_DIGITS - len(country_code) - 1}}}"
    intl = f"(?:\\+|00)({e164})"
    nat = f"0?({national})"
    bad = re.compile(f"^(?!{intl}$|{nat}$)", re.MULTILINE)
    return bad, re.compile(f"^{intl}$", re.MULTILINE), re.compile(f"^{nat}$", re.MULTILINE)


def convert_numbers(raws: list[str], country_code: str) -> Iterable[int]:
    """The normalized numbers of ``raws`` (any order); raises InvalidNumber on a bad one.

    Equal, as a multiset, to ``map(lambda r: normalize(r.strip(), cc), raws)``.
    """
    if not raws:
        return ()
    bad, intl, nat = _fast_forms(country_code)
    # Fields never hold '\n' (lines were split on it), so joined lines are the values.
    joined = "\n".join(raws)
    if bad.search(joined) is None:
        international = intl.findall(joined)
        national = nat.findall(joined)
        if len(international) + len(national) == len(raws):
            return chain(map(int, international), map(int, map(country_code.__add__, national)))
    # Slow path: separators, white space, or a bad value somewhere.
    return [normalize(r.strip(), country_code) for r in raws]


# --------------------------------------------------------------------------- inputs → bitmaps


class _Buffers:
    """Raw recipient strings per raw sender, converted into bitmaps in bulk."""

    def __init__(self, country_code: str) -> None:
        self.country_code = country_code
        self.raw: defaultdict[str, list[str]] = defaultdict(list)
        self.bitmaps: dict[str, BitMap64] = {}
        self.held = 0

    def add_block(self, senders: list[str], recipients: list[str]) -> None:
        raw = self.raw
        # The one per-row Python loop of a build: a dict lookup and an append.
        for sender, recipient in zip(senders, recipients, strict=True):
            raw[sender].append(recipient)
        self.held += len(senders)
        if self.held >= _BUFFERED:
            self.flush()

    def flush(self) -> None:
        cc = self.country_code
        for sender, raws in self.raw.items():
            bitmap = self.bitmaps.get(sender)
            if bitmap is None:
                bitmap = self.bitmaps[sender] = BitMap64()
            try:
                # Through an array: pyroaring takes a typed buffer faster than an iterator.
                bitmap.update(array("Q", convert_numbers(raws, cc)))
            except InvalidNumber as exc:
                raise _NeedsRescan from exc
        self.raw.clear()
        self.held = 0

    def finish(self) -> dict[str, BitMap64]:
        """Bitmaps per trimmed sender id (raw ids differing only in white space merge)."""
        self.flush()
        merged: dict[str, BitMap64] = {}
        for sender, bitmap in self.bitmaps.items():
            key = sender.strip()
            if not key:
                raise _NeedsRescan
            if key in merged:
                merged[key] |= bitmap
            else:
                merged[key] = bitmap
        for bitmap in merged.values():
            bitmap.run_optimize()
            bitmap.shrink_to_fit()
        return merged


def _locate_bad_row(
    record: InputFile,
    columns: tuple[str, ...],
    country_code: str,
    optional: tuple[str, ...] = (),
    check: Callable[[list[str], list[str]], str | None] | None = None,
) -> None:
    """Re-read the file line by line and raise SnapshotInputError at the first bad row.

    ``check`` (for the optional columns) gets the names of the optional columns
    present and their values in a row, and returns why the row is bad, or None.
    """
    path = str(record.path)
    want: list[int] = []
    present: list[str] = []
    for first, lines in _blocks(InputFile(record.kind, record.path)):
        for lineno, line in enumerate(lines, first):
            if not want:
                want, _width, present = _header(record, line, columns, optional)
                continue
            parts = _split(line)
            if len(parts) <= max(want):
                if not line.strip():
                    continue
                raise SnapshotInputError(path, lineno, "missing column")
            if len(columns) == 2 and not parts[want[0]].strip():
                raise SnapshotInputError(path, lineno, "empty sender")
            raw = parts[want[len(columns) - 1]].strip()
            try:
                normalize(raw, country_code)
            except InvalidNumber as exc:
                raise SnapshotInputError(path, lineno, f"bad recipient {raw!r}: {exc}") from exc
            if check is not None:
                reason = check(present, [parts[i] for i in want[len(columns) :]])
                if reason is not None:
                    raise SnapshotInputError(path, lineno, reason)
    raise SnapshotError(f"{path}: a value was refused but no bad row was found on re-reading")


def read_pairs(
    path: Path, kind: str, country_code: str, progress: Progress | None
) -> tuple[InputFile, dict[str, BitMap64]]:
    """Read a ``sender,recipient`` input into one bitmap per trimmed sender id."""
    record = InputFile(kind, Path(path))
    buffers = _Buffers(country_code)
    try:
        for _first, _lines, (senders, recipients) in _rows(
            record, ("sender", "recipient"), progress
        ):
            buffers.add_block(senders, recipients)
        return record, buffers.finish()
    except _NeedsRescan:
        _locate_bad_row(record, ("sender", "recipient"), country_code)
        raise  # not reached: _locate_bad_row always raises


def read_numbers(
    path: Path, kind: str, country_code: str, progress: Progress | None
) -> tuple[InputFile, BitMap64]:
    """Read a ``recipient`` input (do-not-disturb) into one bitmap."""
    record = InputFile(kind, Path(path))
    buffers = _Buffers(country_code)
    try:
        for _first, _lines, (recipients,) in _rows(record, ("recipient",), progress):
            buffers.add_block(["-"] * len(recipients), recipients)
        return record, buffers.finish().get("-", BitMap64())
    except _NeedsRescan:
        _locate_bad_row(record, ("recipient",), country_code)
        raise
