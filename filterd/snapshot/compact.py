"""``filterd snapshot compact``: fold the live changes into a new snapshot version.

A compacted version is the current version plus every change of ``[topics] changes`` from
its change watermark up to the end offsets taken when compaction starts (read_committed),
applied in offset order per partition. Its manifest carries the new watermark (the next
offset per partition it folded in): a running filterd that swaps to it drops those changes
from memory and keeps the rest (:meth:`filterd.changes.overlay.Overlay.rebase`).

What a change does is defined once, by :class:`~filterd.changes.overlay.Overlay`: the
changes are applied to an overlay exactly as the running service applies them, and the
overlay's per-number deltas are then folded into the version's bitmaps and terms the way
the decision reads a snapshot under an overlay
(:func:`~filterd.changes.overlay.consent_with`). The property
tests compare decisions of (old version + overlay) with (compacted version + empty
overlay), pair by pair.

The new version is written by the build's code (same files, same manifest, signed with
``sign_key``) and published through the build's guards (:mod:`filterd.snapshot.publish`).

A sender left with no consent, opt-out or terms (all revoked or cleared), or named by a
change only, has no sender line: the manifest's ``senders_without_numbers`` keeps it known,
so its messages get ``no-consent`` after compaction as before it.

Consent evidence: the current version's ``granted.csv.gz`` is carried over as it is, and
each folded ``consent`` change gets a row in ``granted-changes.csv.gz`` (the base's rows
carried, the new ones appended as a further gzip member) with the change's
``topic/partition/offset``, ``id`` and ``source``, so ``filterd snapshot evidence`` answers
for consents that came as changes too.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import shutil
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pyroaring import BitMap64

from filterd.changes.model import CONSENT, BadChange, Change, ChangeRef, parse_change
from filterd.changes.overlay import (
    CONSENT_UNCHANGED,
    NO_ACCEPTED,
    SET,
    UNCHANGED,
    Overlay,
    PairConsent,
    consent_with,
)
from filterd.changes.watermark import MANIFEST_KEY, manifest_entry, watermark_of
from filterd.config import Config
from filterd.delivery import client_topic_partitions
from filterd.errors import SnapshotError
from filterd.snapshot import format as fmt
from filterd.snapshot.build import _Consents, _write_version, place_version
from filterd.snapshot.errors import SnapshotCorrupt
from filterd.snapshot.evidence import DEFAULT_ACCEPT_METHODS, SenderTerms
from filterd.snapshot.granted import GRANTED, GRANTED_CHANGES, append_change_rows
from filterd.snapshot.inputs import Rejects
from filterd.snapshot.load import _hash_files, _read_manifest, schedules_of, terms_record
from filterd.snapshot.publish import DEFAULT_MAX_DROP
from filterd.snapshot.signing import Verifier, verifier_for
from filterd.snapshot.store import FOREVER, NO_CAP, CapSchedule, simple_cap

__all__ = [
    "VersionData", "compact_snapshot", "fold_changes", "read_changes",
    "read_version", "write_compacted",
]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class VersionData:
    """A version's contents in a form that can be changed and written again."""

    version: str
    manifest: dict[str, object]
    consents: dict[str, BitMap64] = field(default_factory=dict)
    optouts: dict[str, BitMap64] = field(default_factory=dict)
    #: Per sender: number -> (until, cap schedule), as the version's terms records hold them.
    terms: dict[str, dict[int, tuple[int, CapSchedule]]] = field(default_factory=dict)
    global_optouts: BitMap64 = field(default_factory=BitMap64)
    dnd: BitMap64 = field(default_factory=BitMap64)
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Every sender the version knows (its sender lines and its senders without numbers),
    #: plus those the folded changes named: kept known even when left without numbers.
    known: set[str] = field(default_factory=set)

    @property
    def accept(self) -> tuple[str, ...]:
        methods = self.manifest.get("accept_methods")
        if isinstance(methods, list):
            return tuple(str(m) for m in methods)
        return DEFAULT_ACCEPT_METHODS


def _bitmap(data: bytes, chunks: object) -> BitMap64:
    result = BitMap64()
    view = memoryview(data)
    for offset, length, _count in cast(list[list[int]], chunks):
        result |= BitMap64.deserialize(cast(bytes, view[offset : offset + length]))
    return result


def _terms(data: bytes, entry: object) -> dict[int, tuple[int, CapSchedule]]:
    """A sender's terms record: number -> (until, its cap schedule)."""
    if not entry:
        return {}
    offset, length, count = cast(list[int], entry)
    numbers, until, caps, rows = terms_record(data, offset, length, count)
    schedules = schedules_of(numbers, caps, *rows)
    if isinstance(schedules, str):
        raise ValueError(schedules)
    if not caps:
        caps = array("I", bytes(4 * count))
    return {
        n: (u, schedules.get(n) or (((u, c),) if c else NO_CAP))
        for n, u, c in zip(numbers, until, caps, strict=True)
    }


def read_version(root: Path, version: str, verifier: Verifier | None = None) -> VersionData:
    """Read a version's files (sizes and hashes checked against its manifest, its signature
    with ``verifier``); raises :class:`SnapshotCorrupt`."""
    vdir = Path(root) / version
    manifest = _read_manifest(vdir, version, verifier)
    contents, problems = _hash_files(vdir, manifest)
    if problems:
        raise SnapshotCorrupt(version, problems)
    data = VersionData(version, manifest)
    try:
        for line in contents[fmt.SENDERS].splitlines():
            entry = orjson.loads(line)
            sender = entry["id"]
            data.consents[sender] = _bitmap(contents[fmt.CONSENTS], entry["consents"])
            data.optouts[sender] = _bitmap(contents[fmt.OPTOUTS], entry["optouts"])
            terms = _terms(contents.get(fmt.TERMS, b""), entry.get("terms"))
            if terms:
                data.terms[sender] = terms
            data.known.add(sender)
        data.known.update(cast(list[str], manifest.get(fmt.SENDERS_WITHOUT_NUMBERS, [])))
        data.dnd = _bitmap(contents[fmt.DND], manifest["dnd_chunks"])
        data.global_optouts = _bitmap(
            contents.get(fmt.GLOBAL_OPTOUTS, b""), manifest.get("global_optout_chunks", [])
        )
        report = contents.get(fmt.REFUSED_CSV, b"").decode()
        for row in csv.DictReader(io.StringIO(report)):
            data.refused[(row["sender"], row["method"])] += int(row["rows"])
    except (ValueError, KeyError, TypeError, IndexError, OverflowError) as exc:
        raise SnapshotCorrupt(version, [f"unreadable: {exc!r}"]) from exc
    return data


def _flag(bitmap: BitMap64, number: int, flag: int) -> None:
    if flag == SET:
        bitmap.add(number)
    elif flag != UNCHANGED:
        bitmap.discard(number)


def fold_changes(
    data: VersionData, overlay: Overlay, changes: Iterable[tuple[ChangeRef, Change]] = ()
) -> None:
    """Fold the overlay's facts into ``data`` (in place); the refused ``consent`` changes of
    ``changes`` (those the overlay applied) are added to the refused report."""
    empty: dict[int, tuple[int, CapSchedule]] = {}
    data.known.update(overlay.senders)
    for fact in overlay.facts():
        number, sender = fact.number, fact.sender
        if not sender:
            _flag(data.global_optouts, number, fact.optout)
            _flag(data.dnd, number, fact.dnd)
            continue
        if fact.optout != UNCHANGED:
            _flag(data.optouts.setdefault(sender, BitMap64()), number, fact.optout)
        if fact.consent == CONSENT_UNCHANGED:
            continue
        plain = data.consents.setdefault(sender, BitMap64())
        terms = data.terms.get(sender, empty)
        if number in plain:
            before: PairConsent = (FOREVER, True, terms.get(number, (FOREVER, NO_CAP))[1])
        elif number in terms:
            until, schedule = terms[number]
            before = (until, True, schedule)
        else:
            before = (NO_ACCEPTED, False, NO_CAP)
        until, any_row, schedule = consent_with(before, fact.consent, fact.rows)
        plain.discard(number)
        if terms is not empty:
            terms.pop(number, None)
        if not any_row:
            continue
        if until == FOREVER:
            plain.add(number)
        if until != FOREVER or schedule:
            data.terms.setdefault(sender, {})[number] = (until, schedule)
    accept = overlay.accept
    for ref, change in changes:
        if ref.offset < overlay.watermark.get(ref.partition, 0):
            continue
        if change.op == CONSENT and change.method is not None and change.method not in accept:
            data.refused[(change.sender, change.method)] += 1


def _sender_terms(terms: Mapping[int, tuple[int, CapSchedule]]) -> SenderTerms:
    numbers = array("Q", sorted(terms))
    until = array("q", (terms[n][0] for n in numbers))
    caps = array("I")
    schedules: dict[int, CapSchedule] = {}
    for n, u in zip(numbers, until, strict=True):
        schedule = terms[n][1]
        cap = simple_cap(schedule, u)
        if cap < 0:
            schedules[n] = schedule
            cap = schedule[0][1]
        caps.append(cap)
    return SenderTerms(numbers, until, caps, schedules)


def write_compacted(
    root: Path,
    data: VersionData,
    topic: str,
    watermark: Mapping[int, int],
    changes: int,
    *,
    now: datetime | None = None,
    sign_key: Path | None = None,
    publish: bool = True,
    max_drop: float = DEFAULT_MAX_DROP,
    force: bool = False,
    keep: int = 5,
    evidence: Iterable[tuple[ChangeRef, Change]] = (),
) -> str:
    """Write ``data`` as a new version under ``root`` with ``watermark`` of ``topic`` and
    publish it through the guards (unless ``publish`` is false); return its name. The
    ``consent`` changes of ``evidence`` (the folded ones) get a row each in the version's
    consent evidence (:data:`~filterd.snapshot.granted.GRANTED_CHANGES`)."""
    root = Path(root)
    created_at = now or datetime.now(UTC)
    manifest = data.manifest
    # A sender without any number has no sender line: the manifest lists it as known.
    senders = {
        s for s in data.consents.keys() | data.optouts.keys() | data.terms.keys()
        if data.consents.get(s) or data.optouts.get(s) or data.terms.get(s)
    }  # fmt: skip
    without_numbers = sorted(data.known - senders)
    bitmaps = {s: b for s, b in data.consents.items() if s in senders}
    optouts = {s: b for s, b in data.optouts.items() if s in senders}
    terms = {s: _sender_terms(t) for s, t in data.terms.items() if t}
    consent_set = _Consents(
        bitmaps, terms, data.refused, data.accept, bool(manifest.get("method_column", True))
    )
    files = manifest.get("files")
    extra: dict[str, object] = {
        MANIFEST_KEY: manifest_entry(topic, watermark),
        "compacted_from": {"version": data.version, "changes": changes},
        "inputs": manifest.get("inputs", []),
        "rejected_rows": manifest.get("rejected_rows", {"total": 0, "max_rejects": 0}),
    }
    if without_numbers:
        extra[fmt.SENDERS_WITHOUT_NUMBERS] = without_numbers
    # Files of the base version that stay as they are: consent evidence, rows left out.
    carried = {
        name: entry
        for name, entry in (files.items() if isinstance(files, dict) else ())
        if name in (GRANTED, fmt.REJECTS_CSV) and isinstance(entry, dict)
    }
    country_code = str(manifest.get("country_code", ""))
    # The base's evidence of consents that came as changes, with the folded ones appended.
    had = isinstance(files, dict) and isinstance(files.get(GRANTED_CHANGES), dict)
    base_changes = root / data.version / GRANTED_CHANGES if had else None

    def write(tmp: Path, version: str) -> None:
        for name in carried:
            shutil.copyfile(root / data.version / name, tmp / name)
        written = dict(carried)
        entry = append_change_rows(base_changes, tmp / GRANTED_CHANGES, evidence)
        if entry is not None:
            written[GRANTED_CHANGES] = entry
        _write_version(
            tmp, version, created_at, country_code, [], consent_set, optouts,
            data.global_optouts, data.dnd, Rejects(0), carried=written, extra=extra,
        )  # fmt: skip

    version, _removed = place_version(
        root, created_at, write, sign_key=sign_key, publish=publish, max_drop=max_drop,
        force=force, keep=keep,
    )  # fmt: skip
    return version


async def read_changes(
    config: Config, watermark: Mapping[int, int]
) -> tuple[list[tuple[ChangeRef, Change]], dict[int, int], Counter[str]]:
    """The changes of ``[topics] changes`` from ``watermark`` up to the end offsets taken
    now (read_committed), in offset order per partition; with those end offsets and the
    malformed records skipped (counted per reason, each logged with its offset)."""
    topic = config.topics.changes
    if not topic:
        raise SnapshotError("[topics] changes is empty: there is no changes topic to compact")
    consumer = AIOKafkaConsumer(
        **config.kafka.client_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    changes: list[tuple[ChangeRef, Change]] = []
    bad: Counter[str] = Counter()
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise SnapshotError(f"cannot read the changes topic {topic!r}: {exc!r}") from exc
    try:
        count = await client_topic_partitions(consumer._client, topic)
        if not count:
            raise SnapshotError(f"changes topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(tps)
        ends = {tp.partition: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
        for tp in tps:
            consumer.seek(tp, min(watermark.get(tp.partition, 0), ends[tp.partition]))
        country_code = config.policy.default_country_code
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp.partition]}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=50_000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp.partition]:
                        break
                    try:
                        change = parse_change(record.value, country_code)
                    except BadChange as exc:
                        bad[str(exc).split(" ", 1)[0]] += 1
                        log.warning(
                            "skipped malformed change %s/%d/%d: %s",
                            topic, tp.partition, record.offset, exc,
                        )  # fmt: skip
                        continue
                    changes.append((ChangeRef(topic, tp.partition, record.offset), change))
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp.partition]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    changes.sort(key=lambda item: (item[0].partition, item[0].offset))
    return changes, ends, bad


def compact_snapshot(
    config: Config,
    root: Path,
    *,
    base: str | None = None,
    sign_key: Path | None = None,
    publish: bool = True,
    max_drop: float = DEFAULT_MAX_DROP,
    force: bool = False,
    keep: int | None = None,
    now: datetime | None = None,
    check_signature: bool = True,
) -> str:
    """Write and publish a new version: ``base`` (default: the current version) plus the
    changes up to now, with its watermark. Returns the new version's name. The base must be
    signed when the config names a public key, unless ``check_signature`` is false (a
    version just built from files by the caller)."""
    started = time.monotonic()
    root = Path(root)
    base = fmt.resolve_version(root, base)
    verifier = verifier_for(config.snapshot.public_key) if check_signature else None
    data = read_version(root, base, verifier)
    topic = config.topics.changes
    old = watermark_of(data.manifest, topic)
    changes, ends, bad = asyncio.run(read_changes(config, old))
    overlay = Overlay(data.accept)
    overlay.watermark = dict(old)
    overlay.extend(changes)
    fold_changes(data, overlay, changes)
    watermark = {p: max(end, old.get(p, 0)) for p, end in ends.items()}
    version = write_compacted(
        root, data, topic, watermark, len(changes), now=now, sign_key=sign_key,
        publish=publish, max_drop=max_drop, force=force,
        keep=config.snapshot.keep_versions if keep is None else keep,
        evidence=changes,
    )  # fmt: skip
    log.info(
        "snapshot %s: %s plus %d changes (%d malformed skipped%s), watermark %s, in %.1fs",
        version, base, len(changes), sum(bad.values()),
        "".join(f", {n} {why}" for why, n in sorted(bad.items())),
        manifest_entry(topic, watermark)["offsets"], time.monotonic() - started,
    )  # fmt: skip
    return version
