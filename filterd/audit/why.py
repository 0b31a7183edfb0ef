"""``filterd audit why``: find one message and prove its decision.

The message is looked up by id in the output topics (a message may appear
more than once after an at-least-once restart, always with the same
decision); each sighting shows its route, reason, snapshot version and
source. When the deciding snapshot version is still on disk, the stored
value is decided again against it with the service's own decision function,
and the answer says whether the decision reproduces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from filterd.audit.reader import KafkaParams, ProgressCallback, RangeReader
from filterd.audit.records import MISSING, AuditRecord, event_fields
from filterd.audit.timeutil import TimeRange
from filterd.changes import BadChange, Change, ChangeRef, Overlay, parse_change
from filterd.changes.feed import accept_methods
from filterd.changes.watermark import watermark_of
from filterd.errors import InvalidNumber, SnapshotError
from filterd.router import Decider, Policy, SnapshotView, decide_value

if TYPE_CHECKING:
    from filterd.snapshot.granted import GrantedRow


class Redecision(NamedTuple):
    """The outcome of deciding a found message again."""

    #: The snapshot version the message was decided with.
    snapshot: str
    #: Whether that version could be loaded from the snapshot root.
    available: bool
    route: str | None
    reason: str | None
    #: True when (route, reason) equal the recorded ones; None if not re-decided.
    reproduces: bool | None
    #: Why it could not be re-decided, if it could not.
    error: str | None


def matching(records: Iterable[AuditRecord], message_id: str) -> list[AuditRecord]:
    """The records whose event id is ``message_id``."""
    # A cheap byte test skips almost every record without parsing it. It is
    # exact: a JSON string holding the id contains its UTF-8 bytes unless it
    # uses escapes, and values with a backslash are always parsed.
    needle = message_id.encode()
    found: list[AuditRecord] = []
    for record in records:
        value = record.value
        if not value or (needle not in value and b"\\" not in value):
            continue
        if event_fields(value).id == message_id:
            found.append(record)
    return found


async def find_message(
    params: KafkaParams,
    topics: Sequence[str],
    message_id: str,
    time_range: TimeRange,
    *,
    progress: ProgressCallback | None = None,
    late_ms: int = 0,
) -> list[AuditRecord]:
    """Every output record of ``message_id`` in ``topics`` within the range."""
    found: list[AuditRecord] = []
    async with RangeReader(
        params, topics, time_range, progress=progress, late_ms=late_ms
    ) as reader:
        async for batch in reader.batches():
            found.extend(matching(batch, message_id))
    return found


SnapshotLoader = Callable[[Path, str], SnapshotView]


def snapshot_loader(public_key: str = "", country_code: str | None = None) -> SnapshotLoader:
    """Load versions as the service would: signed by ``public_key``'s key when one is set,
    built for ``country_code``."""
    # Imported on first use: only a re-decision needs the snapshot reader.
    from filterd.snapshot import load_snapshot
    from filterd.snapshot.signing import verifier_for

    verifier = verifier_for(public_key)

    def load(root: Path, version: str) -> SnapshotView:
        snapshot: SnapshotView = load_snapshot(
            root, version, verifier=verifier, country_code=country_code
        )
        return snapshot

    return load


def _default_loader(root: Path, version: str) -> SnapshotView:
    return snapshot_loader()(root, version)


class Redecider:
    """Re-decides records against the snapshot versions that decided them,
    loading each version once."""

    def __init__(
        self, root: Path, policy: Policy, loader: SnapshotLoader = _default_loader
    ) -> None:
        self._root = root
        self._policy = policy
        self._loader = loader
        self._cache: dict[str, SnapshotView | SnapshotError] = {}

    def _snapshot(self, version: str) -> SnapshotView | SnapshotError:
        cached = self._cache.get(version)
        if cached is None:
            try:
                cached = self._loader(self._root, version)
            except SnapshotError as exc:
                cached = exc
            self._cache[version] = cached
        return cached

    def redecide(
        self, record: AuditRecord, changes: Sequence[tuple[ChangeRef, Change]] | None = None
    ) -> Redecision:
        """Decide ``record.value`` again against its snapshot version; with ``changes``
        (the change that decided it and those before it in its partition,
        :func:`changes_up_to`), against that snapshot with them applied, at the record's time."""
        version = record.snapshot
        if version == MISSING or not version:
            return Redecision(version, False, None, None, None, "record has no snapshot version")
        snapshot = self._snapshot(version)
        if isinstance(snapshot, SnapshotError):
            return Redecision(version, False, None, None, None, f"not available: {snapshot}")
        if changes is None:
            route, reason = decide_value(record.value, snapshot, self._policy)
        else:
            manifest = getattr(snapshot, "manifest", None)
            manifest = manifest if isinstance(manifest, dict) else None
            overlay = Overlay(accept_methods(manifest))
            if record.change is not None:
                overlay.watermark = watermark_of(manifest, record.change.rsplit("/", 2)[0])
            overlay.extend(changes)
            decider = Decider(snapshot, self._policy, overlay=overlay)
            route, reason = decider.decide(record.value, record.timestamp_ms)
        reproduces = (route, reason) == (record.route, record.reason)
        return Redecision(version, True, route, reason, reproduces, None)


#: Reasons decided by the pair's consent rows: ``why`` shows their evidence.
CONSENT_REASONS = frozenset({"consent", "consent-expired", "consent-not-explicit"})


class ConsentEvidence(NamedTuple):
    """The consent rows (``granted_at``, method, expiry) behind a decision."""

    rows: list[GrantedRow]
    #: Why they could not be read, if they could not.
    error: str | None = None


def consent_evidence(root: Path, record: AuditRecord) -> ConsentEvidence | None:
    """The deciding version's consent rows of the record's (sender, recipient), for a
    record decided by a consent; None for other reasons."""
    if record.reason not in CONSENT_REASONS or record.snapshot in (MISSING, ""):
        return None
    # Imported on first use, as the snapshot reader is.
    from filterd.snapshot.granted import lookup_granted

    fields = event_fields(record.value)
    if fields.sender is None or fields.recipient is None:
        return ConsentEvidence([], "the value has no sender or recipient")
    try:
        return ConsentEvidence(
            lookup_granted(root, record.snapshot, fields.sender, fields.recipient)
        )
    except (SnapshotError, InvalidNumber) as exc:
        return ConsentEvidence([], str(exc))


async def changes_up_to(
    params: KafkaParams, where: str, country_code: str
) -> list[tuple[ChangeRef, Change]]:
    """The changes of ``where``'s partition (``topic/partition/offset``) up to and including
    it: every change of a recipient is in one partition, so these are all the changes that can
    bear on a record it decided. Malformed ones are skipped, as the stream skips them."""
    topic, partition_text, offset_text = where.rsplit("/", 2)
    tp = TopicPartition(topic, int(partition_text))
    last = int(offset_text)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=params.bootstrap_servers, enable_auto_commit=False,
        isolation_level="read_committed", **params.client_options,
    )  # fmt: skip
    await consumer.start()
    found: list[tuple[ChangeRef, Change]] = []
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) <= last and await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                if record.offset > last:
                    break
                try:
                    change = parse_change(record.value, country_code)
                except BadChange:
                    continue
                found.append((ChangeRef(topic, tp.partition, record.offset), change))
    finally:
        await consumer.stop()
    return found


class Sighting(NamedTuple):
    """One found record of the message, with its re-decision."""

    record: AuditRecord
    redecision: Redecision
    #: For a record decided by a consent, the consent rows of the pair.
    evidence: ConsentEvidence | None = None

    def to_json(self, recipient: str) -> dict[str, object]:
        """JSON form for ``why --format json``."""
        record, again = self.record, self.redecision
        fields = event_fields(record.value)
        return {
            "id": fields.id,
            "sender": fields.sender,
            "recipient": recipient,
            "category": fields.category,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp_ms,
            "route": record.route,
            "reason": record.reason,
            "snapshot": record.snapshot,
            "source": record.source,
            "change": record.change,
            "redecision": {
                "available": again.available,
                "route": again.route,
                "reason": again.reason,
                "reproduces": again.reproduces,
                "error": again.error,
            },
            "consent_evidence": None
            if self.evidence is None
            else {
                "rows": [{**row._asdict(), "recipient": recipient} for row in self.evidence.rows],
                "error": self.evidence.error,
            },
        }
