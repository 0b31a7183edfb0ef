"""Consent evidence kept per row on disk: when and how each consent was granted.

The decision needs only whether a (sender, recipient) pair holds a consent that
counts, so ``granted_at`` never enters the filter's memory. An auditor asking
"when did this recipient consent to this sender, and how?" needs it per row: the
build writes ``granted.csv.gz`` into the version: the consents input itself,
gzipped, when it has only columns filterd reads; else only its ``sender,recipient,
method,granted_at,expires_at`` columns (further input columns may hold other
personal data, which the version does not keep). Its size and SHA-256 are in the manifest's
``files`` (so a signed manifest covers it); the service never reads it.

:func:`find_granted` answers for one pair by streaming the file once (under a
second of CPU per million rows): it skips the parts without the sender's text,
parses only the lines that hold it, normalizes only the recipients of that
sender's rows, and checks the file's SHA-256 on the way, so an altered file is
reported rather than believed.

Partial: the file is not sorted or indexed, so a lookup reads the whole file;
a per-sender index would make it a seek.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import shutil
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

import orjson

from filterd.errors import InvalidNumber, SnapshotError
from filterd.numbers import normalize
from filterd.snapshot.format import sha256_file

if TYPE_CHECKING:
    from filterd.changes.model import Change, ChangeRef

__all__ = [
    "CHANGE_COLUMNS",
    "GRANTED",
    "GRANTED_CHANGES",
    "GRANTED_COLUMNS",
    "GrantedRow",
    "append_change_rows",
    "find_granted",
    "lookup_granted",
    "write_granted",
]

#: The file's name in a version directory.
GRANTED = "granted.csv.gz"
#: Its header.
GRANTED_COLUMNS: tuple[str, ...] = ("sender", "recipient", "method", "granted_at", "expires_at")
#: The evidence of the consents that came as live changes (``snapshot compact``).
GRANTED_CHANGES = "granted-changes.csv.gz"
#: Its header: the consent's fields, then the change's ``topic/partition/offset`` and its
#: ``id`` and ``source``.
CHANGE_COLUMNS: tuple[str, ...] = (*GRANTED_COLUMNS, "max_per_day", "change", "id", "source")
#: The consents-file columns filterd reads; a file with only these is copied whole.
_KNOWN_COLUMNS = frozenset((*GRANTED_COLUMNS, "max_per_day"))
_CHUNK = 1 << 20
#: zlib level of the copy: 1 compresses ~100 MB/s with ~5x on consents files (6 is
#: ~20 % smaller and three times slower, in the build's critical path).
_LEVEL = 1


class GrantedRow(NamedTuple):
    """One consent row of the input, as the input spelt it (sender trimmed)."""

    sender: str
    recipient: str
    method: str
    granted_at: str
    expires_at: str
    #: The row's line in the consents file (the header is line 1). In a file of
    #: other columns, where only some were kept, a row whose quoted field spanned
    #: lines (a bad row) shifts the numbers of the rows after it. For a consent that
    #: came as a live change: its line in :data:`GRANTED_CHANGES`.
    line: int
    #: For a consent that came as a live change, the change (``topic/partition/offset``);
    #: else "".
    change: str = ""


def _open_text(path: Path, encoding: str) -> IO[str]:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def _names(header: list[str]) -> list[str]:
    # As the build reads a header: trimmed, lower case, no byte order mark.
    return [c.strip().lstrip("\ufeff").strip().lower() for c in header]


def write_granted(src: Path, dest: Path, encoding: str = "utf-8") -> dict[str, object] | None:
    """Write the evidence file of consents input ``src`` to ``dest`` (fsynced); return its
    ``files`` entry (bytes, sha256, encoding), or None when ``src`` has no ``granted_at``
    column (nothing is written).

    A file whose columns are all ones filterd reads is kept whole: a ``.gz`` input
    is copied as it is, another one gzipped on the way (no parsing; its content is
    then the input byte for byte, whose SHA-256 the manifest holds). A file with
    other columns (names, addresses...) has only :data:`GRANTED_COLUMNS` copied,
    parsed and written again as UTF-8. Runs after the build has read and checked
    ``src``: rows the build refused as bad are kept too (``rejects.csv`` lists them).
    """
    with _open_text(src, encoding) as text:
        header = _names(next(csv.reader(text), []))
        if "granted_at" not in header:
            return None
        if set(header) <= _KNOWN_COLUMNS:
            text.close()
            _copy(src, dest)
        else:
            encoding = "utf-8"
            _project(text, header, dest)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)  # durable before the version is renamed into place
    finally:
        os.close(fd)
    sha256, size = sha256_file(dest)
    return {"bytes": size, "sha256": sha256, "encoding": encoding}


def _copy(src: Path, dest: Path) -> None:
    """``src`` gzipped into ``dest`` (copied as is when it is gzipped already)."""
    if src.name.endswith(".gz"):
        shutil.copyfile(src, dest)
        return
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, 31)  # 31: the gzip format
    with open(src, "rb") as f, open(dest, "wb") as out:
        while data := f.read(_CHUNK):
            out.write(packer.compress(data))
        out.write(packer.flush())


def _project(text: IO[str], header: list[str], dest: Path) -> None:
    """Only :data:`GRANTED_COLUMNS` of the rest of ``text``, as a gzipped UTF-8 CSV, one
    line per input line."""
    # A missing optional column reads as the empty string (one past the last field).
    width = len(header)
    wanted = [header.index(c) if c in header else width for c in GRANTED_COLUMNS]
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_LEVEL, mtime=0) as packed,
    ):
        out = io.TextIOWrapper(packed, encoding="utf-8", newline="")
        out.write(",".join(GRANTED_COLUMNS) + "\n")
        tail = ""
        while chunk := text.read(_CHUNK):
            chunk = tail + chunk
            cut = chunk.rfind("\n") + 1
            tail, chunk = chunk[cut:], chunk[:cut]
            if chunk:
                out.write(_project_lines(chunk, wanted, width))
        if tail:
            out.write(_project_lines(tail + "\n", wanted, width))
        out.flush()
        out.detach()


def _project_lines(text: str, wanted: list[int], width: int) -> str:
    """The ``wanted`` columns of complete lines (each ending in a newline)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    lines.pop()  # the empty string after the last newline
    if '"' not in text and set(map(str.count, lines, repeat(","))) == {width - 1}:
        # No quoting and every line of the header's width: split and slice in C.
        fields = ",".join(lines).split(",")
        empty = [""] * len(lines)
        columns = [fields[i::width] if i < width else empty for i in wanted]
        line = ",".join(["{}"] * len(wanted)) + "\n"
        return "".join(map(line.format, *columns))
    # Quoted fields, short or blank lines: the csv module, row by row.
    need = max(wanted) + 1
    pick = itemgetter(*wanted)
    rows = [row + [""] * (need - len(row)) for row in csv.reader(lines)]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(map(pick, rows))
    return buf.getvalue()


class _Hashing(io.RawIOBase):
    """A binary file read through while hashing every byte."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._f.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.digest.update(data)
        self.size += n
        return n


class _Match:
    """Tells whether a line of the evidence file is a row of one (sender, number)."""

    def __init__(self, header: list[str], sender: str, number: int, country_code: str) -> None:
        width = len(header)
        # A column the file lacks reads as "" (one past the last field, padded).
        self.at = [header.index(c) if c in header else width for c in (*GRANTED_COLUMNS, "change")]
        self.need = max(self.at) + 1
        self.sender = sender
        self.number = number
        self.country_code = country_code

    def line(self, line: str, lineno: int, found: list[GrantedRow]) -> None:
        """Append the line's row to ``found`` when it is one of the pair."""
        row = next(csv.reader([line]), [])
        at = self.at
        if len(row) <= max(at[0], at[1]) or row[at[0]].strip() != self.sender:
            return
        try:
            if normalize(row[at[1]].strip(), self.country_code) != self.number:
                return
        except InvalidNumber:
            return
        row += [""] * (self.need + 1 - len(row))
        found.append(
            GrantedRow(
                self.sender, row[at[1]], row[at[2]], row[at[3]], row[at[4]], lineno, row[at[5]]
            )
        )


def find_granted(
    vdir: Path,
    sender: str,
    number: int,
    country_code: str,
    expected: dict[str, object] | None = None,
    name: str = GRANTED,
) -> list[GrantedRow]:
    """The consent rows of (``sender``, ``number``) in evidence file ``name`` (default
    :data:`GRANTED`) of version directory ``vdir``.

    ``number`` is the normalized recipient (:func:`filterd.numbers.normalize`);
    ``country_code`` the version's, for the rows' national numbers. With
    ``expected`` (the manifest's ``files`` entry) the file's size and SHA-256 are
    checked, and a mismatch raises :class:`SnapshotError` naming it.
    Raises :class:`SnapshotError` when the version has no evidence file.
    """
    path = Path(vdir) / name
    sender = sender.strip()
    encoding = str((expected or {}).get("encoding", "utf-8"))
    found: list[GrantedRow] = []
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise SnapshotError(f"{vdir.name}: no {name}") from None
    with raw:
        hashing = _Hashing(raw)
        with io.TextIOWrapper(
            gzip.GzipFile(fileobj=io.BufferedReader(hashing, _CHUNK), mode="rb"),
            encoding=encoding,
            newline="",
        ) as text:
            header = _names(next(csv.reader([text.readline()]), []))
            match = _Match(header, sender, number, country_code)
            # Whole chunks without the sender's text are skipped in C; only the lines
            # holding it are parsed. A sender that CSV would quote is looked for in all.
            quick = bool(sender) and not any(c in sender for c in '",\r\n')
            lineno = 1  # the header's
            tail = ""
            while chunk := text.read(_CHUNK):
                chunk = tail + chunk
                cut = chunk.rfind("\n") + 1
                tail, chunk = chunk[cut:], chunk[:cut]
                if quick and sender not in chunk:
                    lineno += chunk.count("\n")
                    continue
                lines = chunk.split("\n")
                lines.pop()  # the empty string after the last newline
                for j, line in enumerate(lines, lineno + 1):
                    if not quick or sender in line:
                        match.line(line, j, found)
                lineno += len(lines)
            if tail:
                match.line(tail, lineno + 1, found)
            # The gzip trailer is read; what is left (nothing, in a file as written) too.
            while hashing.read(_CHUNK):
                pass
    altered = expected is not None and (
        hashing.size != expected.get("bytes")
        or hashing.digest.hexdigest() != expected.get("sha256")
    )
    if altered:
        raise SnapshotError(
            f"{vdir.name}/{name}: size or sha256 differs from the manifest (altered)"
        )
    return found


def lookup_granted(root: Path, version: str, sender: str, recipient: str) -> list[GrantedRow]:
    """The consent rows of (``sender``, ``recipient``) in ``version`` under ``root``.

    ``recipient`` is normalized with the version's country code, as the decision
    normalizes it; the file is checked against the manifest. Raises
    :class:`SnapshotError` (version or file missing, file altered) or
    :class:`~filterd.errors.InvalidNumber`.
    """
    vdir = Path(root) / version
    try:
        manifest = orjson.loads((vdir / "manifest.json").read_bytes())
    except FileNotFoundError:
        raise SnapshotError(f"snapshot version {version} is not under {root}") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SnapshotError(f"{version}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise SnapshotError(f"{version}: unreadable manifest")
    country_code = str(manifest.get("country_code", "86"))
    files = manifest.get("files")
    entries = {
        name: entry
        for name in (GRANTED, GRANTED_CHANGES)
        if isinstance(entry := (files.get(name) if isinstance(files, dict) else None), dict)
    }
    if not entries:
        raise SnapshotError(
            f"{version}: no per-row consent evidence (the consents file had no granted_at "
            "column, or the version was built by an older filterd)"
        )
    number = normalize(recipient.strip(), country_code)
    return [
        row
        for name, entry in entries.items()
        for row in find_granted(vdir, sender, number, country_code, entry, name)
    ]


def _iso_ms(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def append_change_rows(
    base: Path | None, dest: Path, changes: Iterable[tuple[ChangeRef, Change]]
) -> dict[str, object] | None:
    """Write :data:`GRANTED_CHANGES` to ``dest``: the file ``base`` (a previous version's,
    or None) with one row per ``consent`` change of ``changes`` appended as a further gzip
    member (fsynced): its sender, recipient (``+`` and the digits), method, ``ts`` as
    ``granted_at`` and ``expires_at`` (ISO 8601 UTC), ``max_per_day``, the change's
    ``topic/partition/offset``, ``id`` and ``source``. Returns the file's ``files`` entry,
    or None when there is neither a base nor a row."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    if base is None:
        out.writerow(CHANGE_COLUMNS)
    n = 0
    for ref, change in changes:
        if change.op != "consent":
            continue
        out.writerow((
            change.sender, f"+{change.number}", change.method or "", _iso_ms(change.ts),
            _iso_ms(change.expires_ms), change.max_per_day or "",
            f"{ref.topic}/{ref.partition}/{ref.offset}", change.id or "", change.source or "",
        ))  # fmt: skip
        n += 1
    if base is None and not n:
        return None
    if base is not None:
        shutil.copyfile(base, dest)
    with open(dest, "ab") as f:
        if n or base is None:
            f.write(gzip.compress(buf.getvalue().encode(), _LEVEL, mtime=0))
        f.flush()
        os.fsync(f.fileno())
    sha256, size = sha256_file(dest)
    return {"bytes": size, "sha256": sha256, "encoding": "utf-8"}
