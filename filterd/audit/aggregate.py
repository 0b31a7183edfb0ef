"""Streaming counts over audit records, and the detection of block bursts.

Memory is bounded by what is counted, not by the records read: counters by
reason, hour and snapshot version are small; the per-sender counters grow
with the number of distinct senders (thousands for a carrier, not
millions), and the per-sender hourly counts kept for the HTML report with
distinct senders times active hours.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from filterd.audit.optouts import FirstBlocks
from filterd.audit.reader import NO_LATE
from filterd.audit.records import AuditRecord, sender_of
from filterd.audit.timeutil import HourBuckets

#: The sender shown for a record whose value has no readable sender
#: (values on the invalid topic may not be JSON at all).
NO_SENDER = "(none)"


class Seen:
    """The earliest and latest timestamps of the records counted."""

    __slots__ = ("first_ms", "last_ms")

    def __init__(self) -> None:
        self.first_ms: int | None = None
        self.last_ms: int | None = None

    def add(self, ts_ms: int) -> None:
        """Take one timestamp into account."""
        if self.first_ms is None or ts_ms < self.first_ms:
            self.first_ms = ts_ms
        if self.last_ms is None or ts_ms > self.last_ms:
            self.last_ms = ts_ms

    def merge(self, other: Seen) -> None:
        """Take another set of records' span into account."""
        for ts in (other.first_ms, other.last_ms):
            if ts is not None:
                self.add(ts)


class SenderCount(NamedTuple):
    """One row of the top-senders list."""

    sender: str
    total: int
    by_reason: dict[str, int]


class Summary:
    """Counts of audit records: by reason, sender, local hour and snapshot.

    ``sender_hours=True`` also keeps blocked counts per sender per hour, for
    burst detection in the HTML report.
    """

    def __init__(self, buckets: HourBuckets, *, sender_hours: bool = False) -> None:
        self.buckets = buckets
        self.total = 0
        self.by_reason: Counter[str] = Counter()
        self.by_sender: dict[str, Counter[str]] = {}
        self.by_hour: Counter[int] = Counter()
        self.by_snapshot: Counter[str] = Counter()
        #: declared category -> reason -> count, for messages decided as marketing
        #: because their text carried a marketing marker (step 2).
        self.by_declared_category: dict[str, Counter[str]] = {}
        #: sender -> such messages (for the report's consent-evidence section).
        self.declared_by_sender: Counter[str] = Counter()
        #: hour key -> reason -> count, for the chart over time.
        self.hour_reason: dict[int, Counter[str]] = {}
        #: sender -> hour key -> count, only with ``sender_hours=True``.
        self.sender_hours: dict[str, Counter[int]] | None = {} if sender_hours else None
        #: Records stamped in the range that the read's late margin missed.
        self.late = NO_LATE
        #: The earliest and latest record timestamps counted (None before any).
        self.seen = Seen()
        #: Per live change named by a block: its first block (the opt-outs honoured).
        self.first_blocks = FirstBlocks()

    def add_batch(self, records: Iterable[AuditRecord]) -> None:
        """Count a batch of records."""
        # Bound to locals once per batch: this loop runs for every record of
        # a possibly month-long topic.
        by_reason = self.by_reason
        by_sender = self.by_sender
        by_hour = self.by_hour
        by_snapshot = self.by_snapshot
        hour_reason = self.hour_reason
        sender_hours = self.sender_hours
        hour_of = self.buckets.hour
        count = 0
        # The span seen, as locals: no call per record for it.
        lo = hi = None
        for record in records:
            count += 1
            ts = record.timestamp_ms
            if lo is None or ts < lo:
                lo = ts
            if hi is None or ts > hi:
                hi = ts
            reason = record.reason
            sender = sender_of(record.value) or NO_SENDER
            hour = hour_of(ts)
            by_reason[reason] += 1
            per_sender = by_sender.get(sender)
            if per_sender is None:
                per_sender = by_sender[sender] = Counter()
            per_sender[reason] += 1
            by_hour[hour] += 1
            by_snapshot[record.snapshot] += 1
            if record.declared_category is not None:
                declared = self.by_declared_category.get(record.declared_category)
                if declared is None:
                    declared = self.by_declared_category[record.declared_category] = Counter()
                declared[reason] += 1
                self.declared_by_sender[sender] += 1
            per_hour = hour_reason.get(hour)
            if per_hour is None:
                per_hour = hour_reason[hour] = Counter()
            per_hour[reason] += 1
            if sender_hours is not None:
                hours = sender_hours.get(sender)
                if hours is None:
                    hours = sender_hours[sender] = Counter()
                hours[hour] += 1
        self.total += count
        if lo is not None and hi is not None:
            self.seen.add(lo)
            self.seen.add(hi)

    def top_senders(self, n: int | None = None) -> list[SenderCount]:
        """Senders by blocked count, highest first (ties by sender id)."""
        rows = [
            SenderCount(sender, sum(reasons.values()), _sorted_counts(reasons))
            for sender, reasons in self.by_sender.items()
        ]
        rows.sort(key=lambda row: (-row.total, row.sender))
        return rows if n is None else rows[:n]

    def hours(self) -> list[int]:
        """Every hour key from the first to the last seen, gaps included."""
        if not self.by_hour:
            return []
        return list(range(min(self.by_hour), max(self.by_hour) + 1))

    def to_json(self, top: int | None = 20) -> dict[str, object]:
        """The JSON form of ``filterd audit summary --format json``."""
        label = self.buckets.label
        return {
            "total": self.total,
            "by_reason": _sorted_counts(self.by_reason),
            "by_sender": [
                {"sender": row.sender, "total": row.total, "by_reason": row.by_reason}
                for row in self.top_senders(top)
            ],
            "by_hour": {label(h): self.by_hour[h] for h in sorted(self.by_hour)},
            "by_snapshot": dict(sorted(self.by_snapshot.items())),
            "by_declared_category": {
                category: _sorted_counts(reasons)
                for category, reasons in sorted(self.by_declared_category.items())
            },
        }


class TopicCounts:
    """Per-sender and per-reason counts of a topic read only for its totals: the
    deliver topic (the denominators of block rates) and the invalid topic.

    Memory is one counter per distinct sender and per reason, whatever the
    traffic: a day of deliver traffic streams through. ``limit`` stops counting
    after that many records (:attr:`complete` is then False and the counts are
    lower bounds).
    """

    def __init__(self, limit: int | None = None) -> None:
        self.total = 0
        self.by_sender: Counter[str] = Counter()
        self.by_reason: Counter[str] = Counter()
        #: ``filterd-would-block`` reason -> monitored deliveries.
        self.would_block: Counter[str] = Counter()
        self.limit = limit
        #: False when ``limit`` cut the read short.
        self.complete = True
        #: Records stamped in the range that the read's late margin missed.
        self.late = NO_LATE
        #: The earliest and latest record timestamps counted.
        self.seen = Seen()

    def full(self) -> bool:
        """Whether ``limit`` has been reached (the reader may stop)."""
        return self.limit is not None and self.total >= self.limit

    def add_batch(self, records: Sequence[AuditRecord]) -> None:
        """Count a batch (only up to ``limit``)."""
        if self.limit is not None and self.total + len(records) > self.limit:
            records = records[: max(0, self.limit - self.total)]
            self.complete = False
        if records:
            self.seen.add(min(r.timestamp_ms for r in records))
            self.seen.add(max(r.timestamp_ms for r in records))
        by_sender = self.by_sender
        # Only the sender is parsed out of each value, and only the header's reason read.
        by_sender.update([sender_of(r.value) or NO_SENDER for r in records])
        self.by_reason.update([r.reason for r in records])
        self.would_block.update([r.would_block for r in records if r.would_block is not None])
        self.total += len(records)


def _sorted_counts(counts: Counter[str]) -> dict[str, int]:
    """Highest count first, ties by name: stable output for diffs."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


class Burst(NamedTuple):
    """A sender whose hourly block count jumped: its worst hour."""

    sender: str
    #: Hour key of the jump (see :class:`HourBuckets`).
    hour: int
    #: Blocks in that hour.
    blocks: int
    #: Median of the blocks in the ``window`` hours before it.
    baseline: float
    #: ``count / max(baseline, 1)``.
    ratio: float


def find_bursts(
    sender_hours: dict[str, Counter[int]],
    *,
    first_hour: int,
    window: int = 6,
    min_count: int = 50,
    min_ratio: float = 5.0,
) -> list[Burst]:
    """Senders whose blocked count per hour jumped, worst first.

    A sender's hour is a burst when it has at least ``min_count`` blocks and
    at least ``min_ratio`` times the median of its counts in the ``window``
    hours before (hours without blocks count 0; a median below 1 counts as
    1). Hours before ``first_hour`` (the start of the audited data) are
    unknown, not zero, so an hour needs at least one known hour before it.
    For each sender the hour with the highest ratio is reported.
    """
    bursts: list[Burst] = []
    for sender, hours in sender_hours.items():
        best: Burst | None = None
        for hour, count in hours.items():
            if count < min_count or hour <= first_hour:
                continue
            previous = [hours.get(h, 0) for h in range(max(first_hour, hour - window), hour)]
            baseline = float(statistics.median(previous))
            ratio = count / max(baseline, 1.0)
            if ratio < min_ratio:
                continue
            candidate = Burst(sender, hour, count, baseline, ratio)
            if best is None or (ratio, count) > (best.ratio, best.blocks):
                best = candidate
        if best is not None:
            bursts.append(best)
    bursts.sort(key=lambda b: (-b.ratio, -b.blocks, b.sender))
    return bursts
