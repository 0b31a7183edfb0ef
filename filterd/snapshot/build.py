"""Build a snapshot version from CSV inputs and publish it atomically.

The inputs are streamed: read in big blocks, split into lines by hand (the
``csv`` module is several times slower; it is used only for lines that carry
quotes), numbers normalized with :func:`filterd.numbers.normalize` and
collected per sender in ``array('Q')`` buffers that are flushed into roaring
bitmaps with one ``update()`` call. Nothing is published unless every row of
every input is good.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pyroaring import BitMap64

from filterd.errors import InvalidNumber, SnapshotError
from filterd.numbers import normalize
from filterd.snapshot import format as fmt
from filterd.snapshot.errors import SnapshotInputError

__all__ = ["build_snapshot", "prune_versions"]

log = logging.getLogger(__name__)

_BLOCK = 4 << 20  # bytes read per step: large blocks amortize the per-block Python work
_FLUSH = 1 << 16  # numbers buffered per sender before one bitmap.update()
_STALE_TMP_S = 3600.0  # a temp dir older than this is a crashed build, safe to remove

Progress = Callable[[str], None]


@dataclass(slots=True)
class _Input:
    """What the manifest records about one input file."""

    kind: str
    path: Path
    sha256: str = ""
    bytes: int = 0
    rows: int = 0


@dataclass(slots=True)
class _Collector:
    """Numbers per key in small array buffers, folded into bitmaps in bulk."""

    bitmaps: dict[str, BitMap64] = field(default_factory=dict)
    buffers: dict[str, array[int]] = field(default_factory=dict)

    def buffer(self, key: str) -> array[int]:
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = array("Q")
            self.bitmaps[key] = BitMap64()
        return buf

    def flush(self, key: str) -> None:
        buf = self.buffers[key]
        self.bitmaps[key].update(buf)
        del buf[:]

    def finish(self) -> dict[str, BitMap64]:
        for key in self.buffers:
            self.flush(key)
        self.buffers.clear()
        for bitmap in self.bitmaps.values():
            bitmap.run_optimize()
            bitmap.shrink_to_fit()
        return self.bitmaps


def _raw_blocks(path: Path, record: _Input) -> Iterator[bytes]:
    """Decompressed blocks of ``path``; hashes the raw bytes into ``record`` on the way."""
    digest = hashlib.sha256()
    gz = path.name.endswith(".gz")
    inflater = zlib.decompressobj(wbits=31) if gz else None
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


def _lines(path: Path, record: _Input) -> Iterator[tuple[int, list[str]]]:
    """(number of the first line, decoded lines) per block; the last line may lack '\\n'."""
    tail = b""
    lineno = 1
    for data in _raw_blocks(path, record):
        data = tail + data
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        if cut:
            yield lineno, _decode(path, data[:cut], lineno).split("\n")[:-1]
            lineno += data.count(b"\n", 0, cut)
    if tail:
        yield lineno, [_decode(path, tail, lineno)]


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


def _read_rows(
    record: _Input,
    columns: tuple[str, ...],
    progress: Progress | None,
) -> Iterator[tuple[int, list[list[str]]]]:
    """Yield (first line number, rows of the wanted columns) per block, header checked.

    A blank line yields an empty row so that line numbers stay right.
    """
    path = record.path
    want: list[int] = []
    last_report = time.monotonic()
    started = last_report
    for first, lines in _lines(path, record):
        if not want:
            header = [c.strip().lstrip("\ufeff").strip().lower() for c in _split(lines[0])]
            for name in columns:
                if name not in header:
                    raise SnapshotInputError(str(path), 1, f"missing column {name!r} in header")
                want.append(header.index(name))
            lines = lines[1:]
            first += 1
        width = max(want) + 1
        rows: list[list[str]] = []
        for offset, line in enumerate(lines):
            parts = _split(line)
            if len(parts) < width:
                if not line.strip():
                    rows.append([])  # blank line: skipped, but keeps the numbering
                    continue
                raise SnapshotInputError(str(path), first + offset, "missing column")
            rows.append([parts[i] for i in want])
        record.rows += sum(1 for r in rows if r)
        yield first, rows
        now = time.monotonic()
        if progress is not None and now - last_report >= 1.0:
            last_report = now
            rate = record.rows / max(now - started, 1e-9)
            progress(f"{record.kind}: {path.name}: {record.rows:,} rows ({rate:,.0f} rows/s)")


def _read_pairs(
    path: Path, kind: str, country_code: str, progress: Progress | None
) -> tuple[_Input, dict[str, BitMap64]]:
    """Read a ``sender,recipient`` input into one bitmap per (trimmed) sender."""
    record = _Input(kind, path)
    collector = _Collector()
    # Bound to locals: this loop runs once per input row.
    buffer = collector.buffer
    norm = normalize
    for first, rows in _read_rows(record, ("sender", "recipient"), progress):
        for offset, row in enumerate(rows):
            if not row:
                continue
            sender = row[0].strip()
            if not sender:
                raise SnapshotInputError(str(path), first + offset, "empty sender")
            try:
                number = norm(row[1].strip(), country_code)
            except InvalidNumber as exc:
                raise SnapshotInputError(
                    str(path), first + offset, f"bad recipient {row[1].strip()!r}: {exc}"
                ) from exc
            buf = buffer(sender)
            buf.append(number)
            if len(buf) >= _FLUSH:
                collector.flush(sender)
    return record, collector.finish()


def _read_numbers(
    path: Path, kind: str, country_code: str, progress: Progress | None
) -> tuple[_Input, BitMap64]:
    """Read a ``recipient`` input (do-not-disturb) into one bitmap."""
    record = _Input(kind, path)
    collector = _Collector()
    buf = collector.buffer("")
    for first, rows in _read_rows(record, ("recipient",), progress):
        for offset, row in enumerate(rows):
            if not row:
                continue
            try:
                buf.append(normalize(row[0].strip(), country_code))
            except InvalidNumber as exc:
                raise SnapshotInputError(
                    str(path), first + offset, f"bad recipient {row[0].strip()!r}: {exc}"
                ) from exc
            if len(buf) >= _FLUSH:
                collector.flush("")
    return record, collector.finish()[""]


class _DataFile:
    """A ``.roar`` file being written: chunks appended, hashed on the way, fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._hash = hashlib.sha256()
        self.size = 0

    def write_bitmap(self, bitmap: BitMap64) -> list[list[int]]:
        chunks: list[list[int]] = []
        for piece in fmt.split_chunks(bitmap):
            data = piece.serialize()
            self._f.write(data)
            self._hash.update(data)
            chunks.append([self.size, len(data), len(piece)])
            self.size += len(data)
        return chunks

    def write_raw(self, data: bytes) -> None:
        self._f.write(data)
        self._hash.update(data)
        self.size += len(data)

    def close(self) -> dict[str, object]:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return {"bytes": self.size, "sha256": self._hash.hexdigest()}


def _write_version(
    tmp: Path,
    version: str,
    created_at: datetime,
    country_code: str,
    inputs: list[_Input],
    consents: dict[str, BitMap64],
    optouts: dict[str, BitMap64],
    dnd: BitMap64,
) -> None:
    files: dict[str, dict[str, object]] = {}
    consent_file = _DataFile(tmp / fmt.CONSENTS)
    optout_file = _DataFile(tmp / fmt.OPTOUTS)
    sender_file = _DataFile(tmp / fmt.SENDERS)
    empty = BitMap64()
    n_consents = n_optouts = 0
    senders = sorted(consents.keys() | optouts.keys())
    for sender in senders:
        c = consents.get(sender, empty)
        o = optouts.get(sender, empty)
        n_consents += len(c)
        n_optouts += len(o)
        entry = {
            "id": sender,
            "consents": consent_file.write_bitmap(c),
            "optouts": optout_file.write_bitmap(o),
        }
        sender_file.write_raw(fmt.dumps(entry) + b"\n")
    files[fmt.CONSENTS] = consent_file.close()
    files[fmt.OPTOUTS] = optout_file.close()
    files[fmt.SENDERS] = sender_file.close()
    dnd_file = _DataFile(tmp / fmt.DND)
    dnd_chunks = dnd_file.write_bitmap(dnd)
    files[fmt.DND] = dnd_file.close()
    manifest = {
        "format": fmt.FORMAT_NAME,
        "format_version": fmt.FORMAT_VERSION,
        "version": version,
        "created_at": fmt.utc_timestamp(created_at),
        "country_code": country_code,
        "counts": {
            "senders": len(senders),
            "consents": n_consents,
            "optouts": n_optouts,
            "dnd": len(dnd),
        },
        "files": files,
        "dnd_chunks": dnd_chunks,
        "chunk_max_containers": fmt.CHUNK_MAX_CONTAINERS,
        "inputs": [
            {
                "kind": i.kind,
                "path": str(i.path),
                "bytes": i.bytes,
                "sha256": i.sha256,
                "rows": i.rows,
            }
            for i in inputs
        ],
    }
    # The manifest is written last: a directory without one is a half-written version.
    with open(tmp / fmt.MANIFEST, "wb") as f:
        f.write(fmt.dumps(manifest) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    fmt.fsync_dir(tmp)


def build_snapshot(
    root: Path,
    consents: Path,
    optouts: Path | None = None,
    dnd: Path | None = None,
    *,
    keep: int = 5,
    country_code: str = "86",
    progress: Progress | None = None,
    now: datetime | None = None,
) -> str:
    """Build a new snapshot version under ``root`` from CSV inputs, publish it, return its name.

    ``consents`` and ``optouts`` need ``sender`` and ``recipient`` columns,
    ``dnd`` a ``recipient`` column (found by header name; other columns are
    ignored). Files ending in ``.gz`` are gunzipped while streaming. A bad row
    raises :class:`SnapshotInputError` naming file and line, and nothing is
    published. After publishing, only the newest ``keep`` versions are kept.
    ``country_code`` is the default for national numbers in the inputs;
    ``progress`` receives a status line at most about once a second.
    """
    if keep < 1:
        raise SnapshotError("keep must be at least 1")
    root = Path(root)
    started = time.monotonic()
    created_at = now or datetime.now(UTC)
    inputs: list[_Input] = []
    record, consent_maps = _read_pairs(Path(consents), "consents", country_code, progress)
    inputs.append(record)
    optout_maps: dict[str, BitMap64] = {}
    if optouts is not None:
        record, optout_maps = _read_pairs(Path(optouts), "optouts", country_code, progress)
        inputs.append(record)
    dnd_map = BitMap64()
    if dnd is not None:
        record, dnd_map = _read_numbers(Path(dnd), "dnd", country_code, progress)
        inputs.append(record)

    root.mkdir(parents=True, exist_ok=True)
    version = fmt.new_version(root, created_at)
    tmp = root / f"{fmt.TMP_PREFIX}{version}"
    tmp.mkdir()
    try:
        _write_version(
            tmp, version, created_at, country_code, inputs, consent_maps, optout_maps, dnd_map
        )
        os.rename(tmp, root / version)
        fmt.fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fmt.publish_pointer(root, version)
    removed = prune_versions(root, keep)
    log.info(
        "snapshot %s published: %d senders, %d rows in %.1fs, %d old versions removed",
        version,
        len(consent_maps.keys() | optout_maps.keys()),
        sum(i.rows for i in inputs),
        time.monotonic() - started,
        len(removed),
    )
    return version


def prune_versions(root: Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` versions (never the current one); return them.

    Temp directories of crashed builds older than an hour go too; younger ones
    may belong to a build in progress.
    """
    current = fmt.current_version(root)
    versions = fmt.list_versions(root)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
    for version in doomed:
        shutil.rmtree(root / version, ignore_errors=True)
    cutoff = time.time() - _STALE_TMP_S
    for name in os.listdir(root):
        path = root / name
        if name.startswith(fmt.TMP_PREFIX) and path.is_dir() and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
    if doomed:
        fmt.fsync_dir(root)
    return doomed


def stderr_progress(line: str) -> None:
    """Progress sink for the CLI: one status line on stderr."""
    print(line, file=sys.stderr, flush=True)
