"""The on-disk snapshot format: layout, names, manifest schema, and durable writes.

Everything a writer in another language needs is in docs/snapshot-format.md;
this module is the Python reference of that document. In short::

    ROOT/current                    text file: the current version name + "\\n"
    ROOT/<version>/manifest.json    counts, sizes and sha256 of every file, inputs
    ROOT/<version>/senders.jsonl    one JSON object per sender: chunk index
    ROOT/<version>/consents.roar    concatenated portable roaring64 chunks
    ROOT/<version>/optouts.roar     idem
    ROOT/<version>/dnd.roar         idem; its chunk index is in the manifest
    ROOT/<version>/global-optouts.roar  opt-outs of every sender (``*``), idem
    ROOT/<version>/terms.bin        per sender: consents with expiry, refused method or cap
    ROOT/<version>/refused.json     refused consent rows per sender and method (and .csv)

A bitmap is stored as one or more *chunks*, each a standard portable 64-bit
roaring bitmap, range-partitioned (every value of a chunk is below every value
of the next) and bounded to :data:`CHUNK_MAX_CONTAINERS` containers, so a
reader can deserialize a big bitmap in pieces without stalling (pyroaring
holds the GIL while it deserializes).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import orjson
from pyroaring import BitMap64

from filterd.snapshot.errors import SnapshotNotFound

FORMAT_NAME = "filterd-consent-snapshot"
#: The newest format version written: 3 where a terms record has cap schedules, else 2.
FORMAT_VERSION = 3
#: Versions this reader loads: 1 has no terms, no global opt-outs and no refused report;
#: 2 no cap schedules in terms.bin.
SUPPORTED_VERSIONS = (1, 2, 3)

CURRENT = "current"
#: Written by ``filterd snapshot rollback``: the older version the operator chose to go back to.
ROLLBACK = "rollback.json"
MANIFEST = "manifest.json"
SENDERS = "senders.jsonl"
CONSENTS = "consents.roar"
OPTOUTS = "optouts.roar"
DND = "dnd.roar"
GLOBAL_OPTOUTS = "global-optouts.roar"
TERMS = "terms.bin"
REFUSED_JSON = "refused.json"
REFUSED_CSV = "refused.csv"
#: The bad input rows a build left out (``--max-rejects``); only in a version that has some.
REJECTS_CSV = "rejects.csv"
#: Manifest field: the senders a version knows without any number (optional).
SENDERS_WITHOUT_NUMBERS = "senders_without_numbers"
DATA_FILES_V1 = (SENDERS, CONSENTS, OPTOUTS, DND)
DATA_FILES = (*DATA_FILES_V1, GLOBAL_OPTOUTS, TERMS, REFUSED_JSON, REFUSED_CSV)


def data_files(format_version: object) -> tuple[str, ...]:
    """The data files a version of this format version has (checksummed in its manifest)."""
    return DATA_FILES_V1 if format_version == 1 else DATA_FILES


#: Upper bound of 16-bit containers per chunk. Deserializing a sparse container
#: costs ~0.5-5 µs with the GIL held (more while the heap grows), merging one into
#: a bitmap ~1-3 µs, so 256 keeps one piece of loading work near 1 ms
#: (docs/snapshot-format.md).
CHUNK_MAX_CONTAINERS = 256

#: Version names: UTC time to the second, then 6 random hex digits.
VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
TMP_PREFIX = ".tmp-"


class Chunk(NamedTuple):
    """Where one portable roaring64 chunk lives inside a ``.roar`` file."""

    offset: int
    """Byte offset of the chunk in the file."""
    length: int
    """Byte length of the serialized chunk."""
    cardinality: int
    """Number of values in the chunk."""


def new_version(root: Path, now: datetime | None = None) -> str:
    """Return a fresh version name that sorts after every version under ``root``.

    The name carries the UTC time to the second; if a version with the same or
    a later second already exists (two builds in one second, or a clock step
    back), the time part is moved one second past it, so names always sort in
    publication order. The random suffix makes concurrent builds unique.
    """
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    stamp = moment.strftime("%Y%m%dT%H%M%SZ")
    existing = list_versions(root)
    if existing and existing[-1][:16] >= stamp:
        last = datetime.strptime(existing[-1][:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        stamp = datetime.fromtimestamp(last.timestamp() + 1, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def list_versions(root: Path) -> list[str]:
    """Version directories under ``root``, oldest first (names sort in time order)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if VERSION_RE.match(n) and (root / n).is_dir())


def current_version(root: Path) -> str | None:
    """The version the ``current`` pointer names, or None when nothing is published."""
    try:
        text = (Path(root) / CURRENT).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotNotFound(f"{root}/{CURRENT} is unreadable: {exc}") from exc
    if not VERSION_RE.match(text):
        raise SnapshotNotFound(f"{root}/{CURRENT} does not name a version: {text[:40]!r}")
    return text


def resolve_version(root: Path, version: str | None) -> str:
    """``version`` if given (checked), else the current one; raises SnapshotNotFound."""
    if version is None:
        version = current_version(root)
        if version is None:
            raise SnapshotNotFound(f"no snapshot published under {root} (no {CURRENT} file)")
    elif not VERSION_RE.match(version):
        raise SnapshotNotFound(f"not a snapshot version name: {version!r}")
    if not (Path(root) / version).is_dir():
        raise SnapshotNotFound(f"snapshot {version} not found under {root}")
    return version


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_pointer(root: Path, version: str) -> None:
    """Atomically point ``ROOT/current`` at ``version`` (write, fsync, rename, fsync dir)."""
    tmp = root / f"{CURRENT}.tmp"
    with open(tmp, "wb") as f:
        f.write(version.encode("ascii") + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT)
    fsync_dir(root)


def sha256_file(path: Path, block: int = 1 << 20) -> tuple[str, int]:
    """(hex sha256, size) of a file, read in blocks (hashlib drops the GIL on big updates)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while data := f.read(block):
            h.update(data)
            size += len(data)
    return h.hexdigest(), size


def split_chunks(bitmap: BitMap64) -> Iterator[BitMap64]:
    """Cut ``bitmap`` into range-partitioned bitmaps of bounded size.

    Every chunk spans at most :data:`CHUNK_MAX_CONTAINERS` 16-bit containers,
    which bounds both its bytes and the time to deserialize it. The work stays
    in C: slices of the sorted value array, checked with ``get_statistics``.
    """
    if not bitmap:
        return  # an empty bitmap has no chunks
    if len(bitmap) <= CHUNK_MAX_CONTAINERS:
        yield bitmap  # cannot span more containers than it has values
        return
    total = bitmap.get_statistics()["n_containers"]
    if total <= CHUNK_MAX_CONTAINERS:
        yield bitmap
        return
    values = bitmap.to_array()
    n = len(values)
    # Values per chunk if containers were evenly filled; halved where they are not.
    step = max(1, n * CHUNK_MAX_CONTAINERS // total)
    start = 0
    while start < n:
        size = step
        while True:
            piece = BitMap64(values[start : start + size])
            if piece.get_statistics()["n_containers"] <= CHUNK_MAX_CONTAINERS or size == 1:
                break
            size //= 2
        yield piece
        start += size


def utc_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds, as written in ``created_at``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(obj: object) -> bytes:
    """JSON as the snapshot files hold it (sorted keys, so a rebuild is comparable)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def write_rollback(root: Path, version: str, previous: str | None) -> Path:
    """Record that ``version`` is published on purpose although older (``snapshot rollback``)."""
    body = {"version": version, "from": previous, "at": utc_timestamp(datetime.now(UTC))}
    path = root / ROLLBACK
    tmp = root / f"{TMP_PREFIX}{ROLLBACK}"
    tmp.write_bytes(dumps(body))
    os.replace(tmp, path)
    fsync_dir(root)
    return path


def read_rollback(root: Path) -> tuple[str, bytes] | None:
    """The version the last ``snapshot rollback`` went back to, with the marker's bytes."""
    try:
        raw = (root / ROLLBACK).read_bytes()
        body = orjson.loads(raw)
    except (OSError, orjson.JSONDecodeError):
        return None
    version = body.get("version") if isinstance(body, dict) else None
    return (version, raw) if isinstance(version, str) else None
