"""Loading a snapshot version from disk, with full validation, in bounded pieces.

Loading is written once, as a generator that yields after every bounded piece
of work (one sender-table line, one bitmap chunk). :func:`load_snapshot` runs
it straight through; :func:`load_snapshot_async` runs it in time slices on the
event loop, so a big snapshot never stalls the stream for long: pyroaring
holds the GIL while it deserializes, so a worker thread would not help, but
small pieces do. Hashing the files (hashlib drops the GIL) happens in a thread.

A snapshot either loads completely and passes every check, or raises
:class:`SnapshotError`; nothing is ever half-applied.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import sys
from array import array
from collections.abc import Generator
from datetime import datetime
from pathlib import Path
from typing import cast

import orjson
from pyroaring import BitMap64

from filterd import prefilter
from filterd.errors import SnapshotError
from filterd.snapshot import format as fmt
from filterd.snapshot.errors import SignatureError, SnapshotCorrupt, SnapshotNotFound
from filterd.snapshot.signing import Verifier
from filterd.snapshot.store import (
    _EMPTY,
    REFUSED_ONLY,
    CapSchedule,
    ConsentSnapshot,
    ConsentTerms,
    Counts,
    NumberSet,
    SenderConsent,
    containers_of,
    drive,
    prefer_sorted,
    run_sliced,
    sorted_numbers_steps,
    terms_steps,
)

__all__ = [
    "load_snapshot", "load_snapshot_async", "schedules_of", "terms_record", "verify_snapshot",
]  # fmt: skip


# ----------------------------------------------------------------------------------------
# validation helpers


def _read_manifest(vdir: Path, version: str, verifier: Verifier | None = None) -> dict[str, object]:
    """Read and schema-check ``manifest.json``; raises SnapshotCorrupt.

    With a ``verifier``, the manifest's bytes must carry a valid signature first
    (:class:`~filterd.snapshot.errors.SignatureError` otherwise): the manifest holds the
    hash of every other file, so this signs the whole version.
    """
    path = vdir / fmt.MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotCorrupt(
            version, [f"{fmt.MANIFEST}: missing (half-written or not a snapshot)"]
        ) from None
    except OSError as exc:
        raise SnapshotCorrupt(version, [f"{fmt.MANIFEST}: unreadable: {exc}"]) from exc
    if verifier is not None:
        verifier.verify(vdir, version, raw)
    try:
        manifest = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SnapshotCorrupt(version, [f"{fmt.MANIFEST}: not valid JSON: {exc}"]) from exc
    problems = _manifest_problems(manifest, version)
    if problems:
        raise SnapshotCorrupt(version, problems)
    assert isinstance(manifest, dict)
    return manifest


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _chunk_list_ok(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(c, list) and len(c) == 3 and all(_is_int(x) for x in c) for c in value
    )


def _manifest_problems(manifest: object, version: str) -> list[str]:
    m = fmt.MANIFEST
    if not isinstance(manifest, dict):
        return [f"{m}: not a JSON object"]
    if manifest.get("format") != fmt.FORMAT_NAME:
        return [f"{m}: format is {manifest.get('format')!r}, expected {fmt.FORMAT_NAME!r}"]
    format_version = manifest.get("format_version")
    if format_version not in fmt.SUPPORTED_VERSIONS or isinstance(format_version, bool):
        return [
            f"{m}: format_version {format_version!r} is not supported "
            f"(this filterd reads {', '.join(map(str, fmt.SUPPORTED_VERSIONS))}):"
            " upgrade filterd to load it"
        ]
    problems = []
    if manifest.get("version") != version:
        problems.append(f"{m}: version {manifest.get('version')!r} != directory {version!r}")
    if _parse_time(manifest.get("created_at")) is None:
        problems.append(f"{m}: created_at missing or not an RFC 3339 UTC time")
    counts = manifest.get("counts")
    names = Counts._fields if format_version != 1 else ("senders", "consents", "optouts", "dnd")
    if not isinstance(counts, dict) or not all(_is_int(counts.get(k)) for k in names):
        problems.append(f"{m}: counts must hold {', '.join(names)}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        problems.append(f"{m}: files missing")
    else:
        for name in fmt.data_files(format_version):
            entry = files.get(name)
            if not (
                isinstance(entry, dict)
                and _is_int(entry.get("bytes"))
                and isinstance(entry.get("sha256"), str)
            ):
                problems.append(f"{m}: no size and sha256 for {name}")
    if not _chunk_list_ok(manifest.get("dnd_chunks")):
        problems.append(f"{m}: dnd_chunks must be a list of [offset, length, cardinality]")
    if format_version != 1 and not _chunk_list_ok(manifest.get("global_optout_chunks")):
        problems.append(
            f"{m}: global_optout_chunks must be a list of [offset, length, cardinality]"
        )
    return problems


def _hash_files(vdir: Path, manifest: dict[str, object]) -> tuple[dict[str, bytes], list[str]]:
    """Read every data file, check size and sha256; (contents, problems).

    The bytes checked are the bytes then deserialized, so a file changed under
    the loader cannot slip through. Runs in a worker thread for the async load.
    """
    files = manifest["files"]
    assert isinstance(files, dict)
    contents: dict[str, bytes] = {}
    problems: list[str] = []
    for name in fmt.data_files(manifest["format_version"]):
        expected = files[name]
        try:
            data = (vdir / name).read_bytes()
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        except OSError as exc:
            problems.append(f"{name}: unreadable: {exc.strerror}")
            continue
        if len(data) != expected["bytes"]:
            problems.append(
                f"{name}: size {len(data)} != {expected['bytes']} in manifest"
                " (truncated or altered)"
            )
        elif hashlib.sha256(data).hexdigest() != expected["sha256"]:
            problems.append(f"{name}: sha256 mismatch (altered)")
        contents[name] = data
    return contents, problems


# A loading step yields None after each bounded piece of work and returns the snapshot.
_Steps = Generator[None, None, ConsentSnapshot]


def _load_bitmap(
    data: bytes,
    name: str,
    chunks: list[list[int]],
    what: str,
    problems: list[str],
    positions: dict[str, int],
) -> Generator[None, None, tuple[NumberSet, int]]:
    """Deserialize range-partitioned chunks one by one into the cheaper in-memory form.

    Yields after every chunk-sized piece of work. Nothing here touches the whole
    bitmap in one call (``len``, statistics, ``to_array`` or freeing a big
    bitmap each walk all its containers with the GIL held): counts come from
    the chunks, and the sparse-or-dense choice from the chunks' statistics.
    Returns (numbers, how many).
    """
    view = memoryview(data)
    pieces: list[BitMap64] = []
    last_max = -1
    containers = total = payload = 0
    for offset, length, cardinality in chunks:
        # Chunks must tile each file in index order: no gaps, no overlap, nothing extra.
        if offset != positions.get(name, 0):
            problems.append(f"{name}: chunk index does not tile the file at byte {offset}")
            return _EMPTY, 0
        positions[name] = offset + length
        if offset + length > len(data):
            problems.append(f"{name}: chunk of {what} at {offset}+{length} beyond end of file")
            return _EMPTY, 0
        try:
            # A memoryview slice avoids copying the chunk; pyroaring reads any buffer.
            piece = BitMap64.deserialize(cast(bytes, view[offset : offset + length]))
        except (ValueError, IndexError, OverflowError, MemoryError) as exc:
            problems.append(f"{name}: chunk of {what} at {offset} does not deserialize: {exc}")
            return _EMPTY, 0
        if len(piece) != cardinality or not piece:
            problems.append(f"{name}: chunk of {what} at {offset} has {len(piece)} values")
            return _EMPTY, 0
        if piece.min() <= last_max:
            problems.append(f"{name}: chunks of {what} overlap or are out of order")
            return _EMPTY, 0
        last_max = piece.max()
        piece_containers, piece_payload = containers_of(piece)
        containers += piece_containers
        payload += piece_payload
        total += cardinality
        pieces.append(piece)
        yield
    if not pieces:
        return _EMPTY, 0
    # Pieces are consumed one by one (pop), so each is freed in its own step:
    # freeing them all at once would be a long GIL-holding stretch again.
    pieces.reverse()
    if prefer_sorted(total, pieces[-1].min(), last_max, containers, payload):
        # Grown piece by piece: big arrays are realloc'd in place (mremap), and
        # preallocating would touch every page in one step.
        values: array[int] = array("Q")
        while pieces:
            values.extend(pieces.pop().to_array())
            yield
        numbers = yield from sorted_numbers_steps(values)
        del values
        return numbers, total
    # Dense enough for roaring: merge the pieces (disjoint ranges) into one bitmap.
    # No shrink_to_fit(): deserialized containers are exact-sized already.
    acc = pieces.pop()
    while pieces:
        acc |= pieces.pop()
        yield
    return cast(NumberSet, acc), total


_TERMS_STEP = 1 << 16  # numbers checked per loading step


def _load_terms(
    data: bytes,
    entry: object,
    what: str,
    problems: list[str],
    positions: dict[str, int],
    schedules_allowed: bool = True,
) -> Generator[None, None, tuple[ConsentTerms | None, int]]:
    """A sender's terms record (docs/snapshot-format.md "terms.bin"); (terms, consents).

    ``consents`` counts the numbers that are consents of their own (not also in
    the plain set). Returns (None, 0) when the sender has no terms or on a problem.
    A record of format version 3 (``schedules_allowed``) may end with cap schedules.
    """
    name = fmt.TERMS
    if entry == [] or entry is None:
        return None, 0
    if not (isinstance(entry, list) and len(entry) == 3 and all(_is_int(x) for x in entry)):
        problems.append(f"{fmt.SENDERS}: terms of {what} is not [offset, length, count]")
        return None, 0
    offset, length, count = entry
    if offset != positions.get(name, 0) or offset + length > len(data):
        problems.append(f"{name}: terms of {what} at {offset}+{length} do not tile the file")
        return None, 0
    positions[name] = offset + length
    rows = (length - 20 * count) // 20 if length > 20 * count else 0
    if (
        count == 0
        or length not in (16 * count, 20 * count + 20 * rows)
        or (rows and not schedules_allowed)
    ):
        problems.append(f"{name}: terms of {what}: {length} bytes for {count} numbers")
        return None, 0
    numbers, until, caps, (s_numbers, s_until, s_caps) = terms_record(data, offset, length, count)
    # Sorted and distinct, checked in C a slice at a time (slices overlap by one).
    for a in range(0, count, _TERMS_STEP):
        piece = numbers[a : a + _TERMS_STEP + 1]
        if BitMap64(piece).to_array() != piece:
            problems.append(f"{name}: terms of {what}: numbers not sorted and distinct")
            return None, 0
        yield
    if min(until) < REFUSED_ONLY:
        problems.append(f"{name}: terms of {what}: a validity below {REFUSED_ONLY}")
        return None, 0
    schedules = schedules_of(numbers, caps, s_numbers, s_until, s_caps)
    if isinstance(schedules, str):
        problems.append(f"{name}: terms of {what}: {schedules}")
        return None, 0
    terms = yield from terms_steps(numbers, until, caps, schedules)
    return terms, len(terms.numbers)


def terms_record(
    data: bytes, offset: int, length: int, count: int
) -> tuple[array[int], array[int], array[int], tuple[array[int], array[int], array[int]]]:
    """The arrays of a terms record of ``length`` bytes (docs/snapshot-format.md
    "terms.bin"): numbers, until, caps (empty when none is stated) and the cap schedules'
    rows (numbers, until, caps)."""
    rows = (length - 20 * count) // 20 if length > 20 * count else 0
    capped = count if length >= 20 * count else 0
    parts = [array(code) for code in "QqIQqI"]
    at = offset
    for part, n in zip(parts, (count, count, capped, rows, rows, rows), strict=True):
        size = part.itemsize * n
        part.frombytes(data[at : at + size])
        at += size
        if sys.byteorder != "little":
            part.byteswap()
    return parts[0], parts[1], parts[2], (parts[3], parts[4], parts[5])


def schedules_of(
    numbers: array[int],
    caps: array[int],
    s_numbers: array[int],
    s_until: array[int],
    s_caps: array[int],
) -> dict[int, CapSchedule] | str:
    """The cap schedules of a terms record's rows (few: checked one by one), or why they
    are bad: per number, validities and caps strictly ascending, the first cap the entry's."""
    schedules: dict[int, list[tuple[int, int]]] = {}
    last = -1
    for number, until, cap in zip(s_numbers, s_until, s_caps, strict=True):
        if number < last:
            return "cap schedules not sorted by number"
        last = number
        steps = schedules.setdefault(number, [])
        if cap == 0 or until < 0:
            return f"cap schedule of {number}: a step without a cap or a validity"
        if steps and (until <= steps[-1][0] or cap <= steps[-1][1]):
            return f"cap schedule of {number} not ascending"
        steps.append((until, cap))
    for number, steps in schedules.items():
        i = bisect.bisect_left(numbers, number)
        if i == len(numbers) or numbers[i] != number or not caps or caps[i] != steps[0][1]:
            return f"cap schedule of {number} does not match its entry"
    return {number: tuple(steps) for number, steps in schedules.items()}


def _terms_count(entry: object) -> int:
    """Entries of a sender's terms record, as its index says (checked by _load_terms)."""
    return entry[2] if isinstance(entry, list) and len(entry) == 3 else 0


def _load_steps(
    vdir: Path, version: str, manifest: dict[str, object], contents: dict[str, bytes]
) -> _Steps:
    problems: list[str] = []
    counts_m = manifest["counts"]
    assert isinstance(counts_m, dict)
    senders: dict[str, SenderConsent] = {}
    n_consents = n_optouts = n_terms = 0
    positions: dict[str, int] = {}  # where the next chunk of each file must start
    lines = contents[fmt.SENDERS].split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            problems.append(f"{fmt.SENDERS}:{lineno}: not valid JSON")
            break
        sender = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(sender, str) or not sender or sender != sender.strip():
            problems.append(f"{fmt.SENDERS}:{lineno}: bad sender id")
            break
        if sender in senders:
            problems.append(f"{fmt.SENDERS}:{lineno}: duplicate sender {sender!r}")
            break
        members: list[NumberSet] = []
        sizes: list[int] = []
        for key, name in (("consents", fmt.CONSENTS), ("optouts", fmt.OPTOUTS)):
            chunks = entry.get(key)
            if not _chunk_list_ok(chunks):
                problems.append(f"{fmt.SENDERS}:{lineno}: {key} is not a chunk list")
                break
            numbers, size = yield from _load_bitmap(
                contents[name], name, chunks, f"sender {sender!r}", problems, positions
            )
            members.append(numbers)
            sizes.append(size)
        if problems:
            break
        terms, special = yield from _load_terms(
            contents.get(fmt.TERMS, b""), entry.get("terms"), f"sender {sender!r}", problems,
            positions, manifest["format_version"] == 3,
        )  # fmt: skip
        if problems:
            break
        if not sizes[0] and not sizes[1] and terms is None:
            problems.append(f"{fmt.SENDERS}:{lineno}: sender {sender!r} has no numbers")
            break
        optout_filter = yield from prefilter.filter_steps(members[1], sizes[1])
        senders[sender] = SenderConsent(members[0], members[1], optout_filter, terms)
        n_terms += _terms_count(entry.get("terms"))
        n_consents += sizes[0] + special
        n_optouts += sizes[1]
        yield
    n_listed = len(senders)
    if not problems:
        # Senders a version knows without any number (a compaction whose changes revoked or
        # cleared all of theirs): known, so decided by rules 1-4 (no-consent), not
        # unknown-sender. Not counted in counts.senders (the sender lines).
        known = manifest.get(fmt.SENDERS_WITHOUT_NUMBERS, [])
        if not isinstance(known, list):
            problems.append(f"{fmt.MANIFEST}: {fmt.SENDERS_WITHOUT_NUMBERS} is not a list")
            known = []
        for sender in known:
            if not isinstance(sender, str) or not sender or sender != sender.strip():
                problems.append(f"{fmt.MANIFEST}: {fmt.SENDERS_WITHOUT_NUMBERS}: bad sender id")
                break
            if sender in senders:
                problems.append(
                    f"{fmt.MANIFEST}: {fmt.SENDERS_WITHOUT_NUMBERS}: sender {sender!r} "
                    f"is in {fmt.SENDERS} too"
                )
                break
        else:
            for sender in known:
                senders[sender] = SenderConsent(_EMPTY, _EMPTY, b"", None)
    dnd_chunks = manifest["dnd_chunks"]
    assert isinstance(dnd_chunks, list)
    dnd: NumberSet = _EMPTY
    n_dnd = 0
    if not problems:
        dnd, n_dnd = yield from _load_bitmap(
            contents[fmt.DND], fmt.DND, dnd_chunks, "dnd", problems, positions
        )
    global_optouts: NumberSet = _EMPTY
    n_global = 0
    global_chunks = manifest.get("global_optout_chunks", [])
    assert isinstance(global_chunks, list)
    if not problems and global_chunks:
        global_optouts, n_global = yield from _load_bitmap(
            contents[fmt.GLOBAL_OPTOUTS], fmt.GLOBAL_OPTOUTS, global_chunks, "global opt-outs",
            problems, positions,
        )  # fmt: skip
    if not problems:
        for name in (fmt.CONSENTS, fmt.OPTOUTS, fmt.DND, fmt.GLOBAL_OPTOUTS, fmt.TERMS):
            unindexed = len(contents.get(name, b"")) - positions.get(name, 0)
            if unindexed:
                problems.append(f"{name}: {unindexed} bytes not indexed")
        found = Counts(n_listed, n_consents, n_optouts, n_dnd, n_global, n_terms)
        expected = Counts(*(counts_m.get(k, 0) for k in Counts._fields))
        if found != expected:
            problems.append(
                f"{fmt.MANIFEST}: counts {expected._asdict()} but files hold {found._asdict()}"
            )
    if problems:
        raise SnapshotCorrupt(version, problems)
    files = manifest["files"]
    assert isinstance(files, dict)
    created_at = _parse_time(manifest["created_at"])
    assert created_at is not None
    return ConsentSnapshot(
        version=version,
        created_at=created_at,
        senders=senders,
        dnd_numbers=dnd,
        counts=found,
        bytes=sum(int(files[n]["bytes"]) for n in fmt.data_files(manifest["format_version"]))
        + (vdir / fmt.MANIFEST).stat().st_size,
        manifest=manifest,
        global_optouts=global_optouts,
        global_optout_filter=(yield from prefilter.filter_steps(global_optouts, n_global)),
    )


def load_snapshot(
    root: Path,
    version: str | None = None,
    *,
    verifier: Verifier | None = None,
    country_code: str | None = None,
) -> ConsentSnapshot:
    """Load and fully validate a snapshot version (default: the current one).

    Raises :class:`SnapshotNotFound` when there is none, :class:`SnapshotCorrupt`
    (with every problem found) when any check fails, :class:`SignatureError` when a
    ``verifier`` is given and the version is not signed by its key. Blocking: use
    :func:`load_snapshot_async` on a running event loop.
    """
    root = Path(root)
    version = fmt.resolve_version(root, version)
    vdir = root / version
    manifest = _read_manifest(vdir, version, verifier)
    check_country_code(manifest, version, country_code)
    contents, problems = _hash_files(vdir, manifest)
    if problems:
        raise SnapshotCorrupt(version, problems)
    return drive(_load_steps(vdir, version, manifest, contents))


async def load_snapshot_async(
    root: Path,
    version: str | None = None,
    *,
    verifier: Verifier | None = None,
    country_code: str | None = None,
) -> ConsentSnapshot:
    """Like :func:`load_snapshot`, without stalling the running event loop.

    File reading and hashing run in a worker thread; deserializing runs on the
    loop in slices of about :data:`ASYNC_SLICE_S`, each a bounded piece; so does the
    signature check (one Ed25519 verification, ~0.1 ms).
    """
    root = Path(root)
    version = fmt.resolve_version(root, version)
    vdir = root / version
    manifest = await asyncio.to_thread(_read_manifest, vdir, version, verifier)
    check_country_code(manifest, version, country_code)
    contents, problems = await asyncio.to_thread(_hash_files, vdir, manifest)
    if problems:
        raise SnapshotCorrupt(version, problems)
    return await run_sliced(_load_steps(vdir, version, manifest, contents))


def check_country_code(manifest: dict[str, object], version: str, country_code: str | None) -> None:
    """Refuse a version whose national numbers were read with another country code.

    A snapshot built for 86 used where national numbers mean 91 would match no national
    recipient at all: every marketing message blocked, silently.
    """
    built_for = manifest.get("country_code")
    if country_code is None or built_for is None or built_for == country_code:
        return
    raise SnapshotError(
        f"version {version} was built for country code {built_for}, this filterd reads "
        f"national numbers as {country_code} ([policy] default_country_code): rebuild it "
        f"with --country-code {country_code}, or fix the config"
    )


def verify_snapshot(
    root: Path, version: str | None = None, *, verifier: Verifier | None = None
) -> list[str]:
    """Every problem of a snapshot version (default: current); an empty list means valid.

    Runs the full load: manifest schema, sizes and checksums, deserialization
    of every chunk, the chunk index and the counts.
    """
    try:
        load_snapshot(root, version, verifier=verifier)
    except SnapshotCorrupt as exc:
        return list(exc.problems)
    except (SnapshotNotFound, SignatureError) as exc:
        return [str(exc)]
    return []
