"""Streaming the CSV inputs of a build into roaring bitmaps, fast.

Pure-Python CSV parsing is the bottleneck of a build, so the common case never
touches a Python function per field: blocks of a few MiB are split into lines
and fields with ``str.split`` in list comprehensions; a block's recipients are
converted in bulk (:func:`numbers_in_order`): two regular expressions over the
joined strings find every one of them in a plain form (``+E164``, ``00E164``,
national with or without trunk 0), and then ``map(int, ...)`` turns them into
numbers in C. The result is identical to
:func:`filterd.numbers.normalize` (the tests check that); anything else (separators,
white space, quotes, a bad number) falls back to ``normalize`` per value, and a
block with a bad row sends the input to the slow path: the file is read again
line by line, every bad row is collected with its file, line and reason
(:class:`Rejects`) and the good rows are read as before. Duplicate rows are
harmless: bitmaps are sets.

Files are read in ``encoding`` (UTF-8 by default; GBK and GB18030 exports too):
any codec that writes ``\n``, ``,`` and ``"`` as those ASCII bytes, so that
blocks can be cut at line ends before they are decoded.

A recipient without ``+`` whose digits start with the default country code
and have at least 10 more (``8613800001111`` with 86) looks like E.164 without
its ``+``. It is read as a national number, as the contract says
(``868613800001111``), and counted per input with the first few line numbers
(:attr:`InputFile.without_plus`), found with one C-level scan per block.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
import time
import zlib
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from pathlib import Path

from pyroaring import BitMap64

from filterd.errors import InvalidNumber, SnapshotError
from filterd.numbers import MAX_DIGITS, MIN_DIGITS, normalize
from filterd.snapshot.errors import BadRow, SnapshotInputError, SnapshotRowsRejected

__all__ = [
    "InputFile",
    "Rejects",
    "check_encoding",
    "numbers_in_order",
    "read_numbers",
    "read_pairs",
    "without_plus_form",
]

_BLOCK = 4 << 20  # bytes read per step: large blocks amortize the per-block Python work
_BUFFERED = 1 << 20  # raw strings held across all senders before converting them
_ROW_REPORT_S = 1.0  # progress lines at most this often
_SLOW_CHUNK = 1 << 16  # good rows handed on at once by the slow path
WITHOUT_PLUS_LINES = 5  # line numbers kept of the recipients that look like E.164 without +
QUOTE_SPANS_LINES = "a quoted field spans lines (unclosed quote?)"

Progress = Callable[[str], None]


@dataclass(slots=True)
class InputFile:
    """One input file and what the manifest records about it."""

    kind: str
    path: Path
    sha256: str = ""
    bytes: int = 0
    rows: int = 0
    encoding: str = "utf-8"
    without_plus: int = 0
    """Recipients without ``+`` that start with the country code (E.164 without ``+``?)."""
    without_plus_lines: list[int] = field(default_factory=list)
    """The first :data:`WITHOUT_PLUS_LINES` of their line numbers."""


class Rejects:
    """The bad rows of a build's inputs and how many of them a build accepts.

    The slow path of every reader adds the bad rows it finds; :meth:`check`
    raises :class:`SnapshotRowsRejected` when there are more than ``limit``.
    """

    def __init__(self, limit: int = 0) -> None:
        if limit < 0:
            raise SnapshotError("--max-rejects must be 0 or more")
        self.limit = limit
        self.rows: list[BadRow] = []

    def check(self) -> None:
        if len(self.rows) > self.limit:
            raise SnapshotRowsRejected(self.rows, self.limit)


def check_encoding(encoding: str) -> str:
    """The codec name of ``--encoding``; raises SnapshotError naming the option."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise SnapshotError(f"--encoding: unknown encoding {encoding!r}") from None
    try:
        ascii_compatible = '\n,"0+'.encode(name) == b'\n,"0+'
    except (UnicodeError, LookupError):
        ascii_compatible = False
    if not ascii_compatible:
        raise SnapshotError(
            f"--encoding: {encoding!r} does not write ASCII as ASCII (UTF-16?); not supported"
        )
    return name


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
            text = _decode(record, data[:cut], lineno)
            if "\r" in text:
                text = text.replace("\r\n", "\n")  # CRLF files take the fast path too
            lines = text.split("\n")
            lines.pop()  # the empty string after the last '\n'
            yield lineno, lines
            lineno += len(lines)
    if tail:
        yield lineno, [_decode(record, tail, lineno).rstrip("\r")]


def _decode(record: InputFile, data: bytes, lineno: int) -> str:
    try:
        return data.decode(record.encoding)
    except UnicodeDecodeError as exc:
        if lineno == 1 and b"\n" not in data[: exc.start]:
            raise SnapshotInputError(
                str(record.path), 1, f"header is not {_encoding_name(record)} text"
            ) from exc
        raise _NeedsRescan from exc  # the slow path reports each line that is not


def _encoding_name(record: InputFile) -> str:
    return "UTF-8" if record.encoding in ("utf-8", "utf_8") else record.encoding


def _lines(record: InputFile) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, decoded line or None when it is not text, raw line) one by one."""
    tail = b""
    lineno = 1
    encoding = record.encoding
    for data in _raw_blocks(record):
        data = tail + data
        raw_lines = data.split(b"\n")
        tail = raw_lines.pop()
        for raw in raw_lines:
            raw = raw.removesuffix(b"\r")
            try:
                yield lineno, raw.decode(encoding), raw
            except UnicodeDecodeError:
                yield lineno, None, raw
            lineno += 1
    if tail:
        raw = tail.removesuffix(b"\r")
        try:
            yield lineno, raw.decode(encoding), raw
        except UnicodeDecodeError:
            yield lineno, None, raw


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


def _columns(lines: list[str], want: list[int], width: int) -> list[list[str]]:
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
    for line in lines:
        if line.count('"') & 1:
            raise _NeedsRescan  # a quoted field spanning lines: reported by the slow path
        parts = _split(line)
        if len(parts) <= max(want):
            if not line.strip():
                continue  # a blank line is no row
            raise _NeedsRescan  # a missing column: reported by the slow path
        for column, i in zip(out, want, strict=True):
            column.append(parts[i])
    return out


@lru_cache(maxsize=8)
def without_plus_form(country_code: str) -> re.Pattern[str] | None:
    """The plain national form that looks like E.164 without ``+`` (one value per line).

    The country code's digits and at least 10 more, as long as the national
    number stays valid: ``86`` and 10 or 11 digits with 86. None when no valid
    national number can look like that.
    """
    most = MAX_DIGITS - 2 * len(country_code)
    if most < 10:
        return None
    return re.compile(f"^{country_code}[0-9]{{10,{most}}}$", re.MULTILINE)


def _count_without_plus(
    record: InputFile,
    form: re.Pattern[str],
    prefix: str,
    first: int,
    lines: list[str],
    recipients: list[str],
    index: int,
) -> None:
    """Count the block's recipients in ``form``, in C; find line numbers only if some are."""
    joined = "\n" + "\n".join(recipients)
    if prefix not in joined:
        return  # the common case: no recipient starts with the country code
    found = len(form.findall(joined))
    if not found:
        return
    record.without_plus += found
    if len(record.without_plus_lines) >= WITHOUT_PLUS_LINES:
        return
    for offset, line in enumerate(lines):
        parts = _split(line)
        if len(parts) > index and form.match(parts[index]):
            record.without_plus_lines.append(first + offset)
            if len(record.without_plus_lines) >= WITHOUT_PLUS_LINES:
                return


def _rows(
    record: InputFile,
    columns: tuple[str, ...],
    progress: Progress | None,
    optional: tuple[str, ...] = (),
    present: list[str] | None = None,
    country_code: str = "",
) -> Iterator[tuple[int, list[str], list[list[str]]]]:
    """(first line number, lines, wanted columns) per block, after the header.

    The columns are ``columns``, then the ``optional`` ones the header has,
    whose names are appended to ``present`` once the header is read. With a
    ``country_code``, recipients that look like E.164 without ``+`` are counted.
    """
    want: list[int] = []
    width = 0
    form = without_plus_form(country_code) if country_code else None
    recipient = columns.index("recipient")
    prefix = "\n" + country_code
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
        cols = _columns(lines, want, width)
        record.rows += len(cols[0])
        if form is not None and cols[recipient]:
            _count_without_plus(
                record, form, prefix, first, lines, cols[recipient], want[recipient]
            )
        yield first, lines, cols
        if progress is not None and (now := time.monotonic()) - last >= _ROW_REPORT_S:
            last = now
            rate = record.rows / max(now - started, 1e-9)
            progress(f"{record.kind}: {record.path.name}: {record.rows:,} rows ({rate:,.0f}/s)")
    if not want:
        raise SnapshotInputError(str(record.path), 1, "empty file: no header row")


# ---------------------------------------------------------------------- strings → numbers


@lru_cache(maxsize=8)
def _fast_forms(country_code: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(international digits, national digits) patterns, one value per line.

    ``[0-9]``, never ``\\d``: a str pattern's ``\\d`` matches any Unicode digit.
    """
    e164 = f"[1-9][0-9]{{{MIN_DIGITS - 1},{MAX_DIGITS - 1}}}"
    low = max(1, MIN_DIGITS - len(country_code))
    national = f"[1-9][0-9]{{{low - 1},{MAX_DIGITS - len(country_code) - 1}}}"
    intl = f"(?:\\+|00)({e164})"
    nat = f"0?({national})"
    return re.compile(f"^{intl}$", re.MULTILINE), re.compile(f"^{nat}$", re.MULTILINE)


def _numbers() -> array[int]:
    return array("Q")


def numbers_in_order(raws: list[str], country_code: str) -> array[int]:
    """The normalized numbers of ``raws``, in their order; raises InvalidNumber on a bad one.

    Equal to ``[normalize(r.strip(), cc) for r in raws]``. Two ``findall`` calls
    over the joined strings cut out the digits of the plain forms (``+E164`` or
    ``00E164``; national with or without trunk 0); when they found every value,
    ``map(int, ...)`` converts them and C-level iteration puts the two forms back
    in input order: a value is international exactly when it starts with ``+``
    or ``00`` (no plain national form does). Anything else (separators, white
    space, a bad value) falls back to ``normalize`` per value.
    """
    if not raws:
        return array("Q")
    intl, nat = _fast_forms(country_code)
    # Fields never hold '\n' (lines were split on it), so the joined lines are the
    # values. A match is a whole line, and no line matches both forms (only the
    # international one starts with '+' or "00"): when the matches are as many as
    # the values, every value is in a plain form.
    joined = "\n".join(raws)
    international = intl.findall(joined)
    national = nat.findall(joined)
    if len(international) + len(national) == len(raws):
        if not national:
            return array("Q", map(int, international))
        if not international:
            return array("Q", map(int, map(country_code.__add__, national)))
        forms = (
            iter(map(int, map(country_code.__add__, national))),
            iter(map(int, international)),
        )
        which = map(str.startswith, raws, repeat(("+", "00")))
        return array("Q", map(next, map(forms.__getitem__, which)))
    return array("Q", [normalize(r.strip(), country_code) for r in raws])


# --------------------------------------------------------------------------- inputs → bitmaps


class _Buffers:
    """Numbers per raw sender, added to bitmaps in bulk.

    A block's recipients are converted at once, in order (:func:`numbers_in_order`:
    a few regular-expression passes over the whole block), and only then spread
    over the senders: converting per sender at every flush cost a join and three
    searches per sender and flush, which grew with the number of senders.
    """

    def __init__(self, country_code: str) -> None:
        self.country_code = country_code
        self.raw: defaultdict[str, array[int]] = defaultdict(_numbers)
        self.bitmaps: dict[str, BitMap64] = {}
        self.held = 0

    def add_block(self, senders: list[str], recipients: list[str]) -> None:
        try:
            numbers = numbers_in_order(recipients, self.country_code)
        except InvalidNumber as exc:
            raise _NeedsRescan from exc
        raw = self.raw
        # The one per-row Python loop of a build: a dict lookup and an append.
        for sender, number in zip(senders, numbers, strict=True):
            raw[sender].append(number)
        self.held += len(senders)
        if self.held >= _BUFFERED:
            self.flush()

    def flush(self) -> None:
        for sender, numbers in self.raw.items():
            bitmap = self.bitmaps.get(sender)
            if bitmap is None:
                self.bitmaps[sender] = BitMap64(numbers)
            else:
                # From an array: pyroaring takes a typed buffer faster than an iterator.
                bitmap.update(numbers)
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


def _slow_rows(
    record: InputFile,
    columns: tuple[str, ...],
    country_code: str,
    rejects: Rejects,
    optional: tuple[str, ...] = (),
    check: Callable[[list[str], list[str]], str | None] | None = None,
    present: list[str] | None = None,
) -> Iterator[list[list[str]]]:
    """Re-read the file line by line: the good rows' wanted columns, in chunks.

    Every bad row goes to ``rejects`` with its line and reason; ``record``'s
    counts are those of the good rows. ``check`` (for the optional columns) gets
    the names of the optional columns present and their values in a row, and
    returns why the row is bad, or None.
    """
    path = str(record.path)
    record.rows = record.without_plus = 0
    record.without_plus_lines.clear()
    form = without_plus_form(country_code)
    pairs = len(columns) == 2
    at = len(columns) - 1  # the recipient's index in the wanted columns
    want: list[int] = []
    found: list[str] = []
    out: list[list[str]] = []
    quote_opened = 0  # the line of a quoted field that spans lines and is still open
    not_text = f"not {_encoding_name(record)} text"
    for lineno, line, raw in _lines(InputFile(record.kind, record.path, encoding=record.encoding)):
        if line is None:
            if not want:
                raise SnapshotInputError(path, lineno, f"header is {not_text}")
            shown = raw.decode(record.encoding, "backslashreplace")
            rejects.rows.append(BadRow(path, lineno, not_text, shown))
            continue
        if not want:
            want, _width, found = _header(record, line, columns, optional)
            if present is not None:
                present += found
            out = [[] for _ in want]
            continue
        reason = None
        if quote_opened:
            if line.count('"') & 1:
                reason = f"closes the quoted field opened on line {quote_opened}"
                quote_opened = 0
            else:
                reason = f"inside the quoted field opened on line {quote_opened}"
        elif line.count('"') & 1:
            reason = QUOTE_SPANS_LINES
            quote_opened = lineno
        else:
            parts = _split(line)
            if len(parts) <= max(want):
                if not line.strip():
                    continue  # a blank line is no row
                reason = "missing column"
            elif pairs and not parts[want[0]].strip():
                reason = "empty sender"
            else:
                value = parts[want[at]].strip()
                try:
                    normalize(value, country_code)
                except InvalidNumber as exc:
                    reason = f"bad recipient {value!r}: {exc}"
                else:
                    if check is not None:
                        reason = check(found, [parts[i] for i in want[len(columns) :]])
                    if reason is None and form is not None and form.match(value):
                        record.without_plus += 1
                        if len(record.without_plus_lines) < WITHOUT_PLUS_LINES:
                            record.without_plus_lines.append(lineno)
        if reason is not None:
            rejects.rows.append(BadRow(path, lineno, reason, line))
            continue
        for column, i in zip(out, want, strict=True):
            column.append(parts[i])
        record.rows += 1
        if len(out[0]) >= _SLOW_CHUNK:
            yield out
            out = [[] for _ in want]
    if not want:
        raise SnapshotInputError(path, 1, "empty file: no header row")
    if out[0]:
        yield out


def _refused_on_rereading(record: InputFile) -> SnapshotError:
    """The error when the slow path finds no bad row where the fast path refused a value.

    Fail closed: the two paths disagree, which is a bug, and nothing is published.
    """
    return SnapshotError(
        f"{record.path}: a value was refused but no bad row was found on re-reading"
    )


def _read_bitmaps(
    record: InputFile,
    columns: tuple[str, ...],
    country_code: str,
    progress: Progress | None,
    rejects: Rejects | None,
) -> dict[str, BitMap64]:
    """Bitmaps per trimmed sender (``sender,recipient``), or under ``-`` (``recipient``).

    Bad rows go to ``rejects``, and are left out; without ``rejects`` a bad row
    raises :class:`SnapshotRowsRejected` once the file is read.
    """
    rejected = Rejects() if rejects is None else rejects

    def add(buffers: _Buffers, cols: list[list[str]]) -> None:
        buffers.add_block(cols[0] if len(cols) == 2 else ["-"] * len(cols[0]), cols[-1])

    try:
        buffers = _Buffers(country_code)
        for _first, _lines, cols in _rows(record, columns, progress, country_code=country_code):
            add(buffers, cols)
        bitmaps = buffers.finish()
    except _NeedsRescan:
        buffers = _Buffers(country_code)
        try:
            for cols in _slow_rows(record, columns, country_code, rejected):
                add(buffers, cols)
            bitmaps = buffers.finish()
        except _NeedsRescan:
            raise _refused_on_rereading(record) from None
    if rejects is None:
        rejected.check()
    return bitmaps


def read_pairs(
    path: Path,
    kind: str,
    country_code: str,
    progress: Progress | None,
    rejects: Rejects | None = None,
    encoding: str = "utf-8",
) -> tuple[InputFile, dict[str, BitMap64]]:
    """Read a ``sender,recipient`` input into one bitmap per trimmed sender id.

    Bad rows go to ``rejects``, and are left out; without ``rejects`` a bad row
    raises :class:`SnapshotRowsRejected` once the file is read.
    """
    record = InputFile(kind, Path(path), encoding=encoding)
    columns = ("sender", "recipient")
    return record, _read_bitmaps(record, columns, country_code, progress, rejects)


def read_numbers(
    path: Path,
    kind: str,
    country_code: str,
    progress: Progress | None,
    rejects: Rejects | None = None,
    encoding: str = "utf-8",
) -> tuple[InputFile, BitMap64]:
    """Read a ``recipient`` input (do-not-disturb) into one bitmap; bad rows as in read_pairs."""
    record = InputFile(kind, Path(path), encoding=encoding)
    bitmaps = _read_bitmaps(record, ("recipient",), country_code, progress, rejects)
    return record, bitmaps.get("-", BitMap64())
