"""The hot path: decide a fetched batch and lay it out as producer batches.

Batch in, batch out. For each input partition of a fetch, every record is
decided by one :class:`~filterd.router.Decider` (so by one snapshot version),
then appended to one producer batch per output topic
(:class:`filterd.records.RecordBatch`, sent by aiokafka's producer). There is
no per-message future, task or await: the caller submits a handful of batches
and awaits their acknowledgements together.

Headers go into a batch already encoded: the three constant headers of an
outcome once per snapshot version (:class:`HeaderCache`), the source header
from bytes prepared once per partition and the record's offset.

Partitioning: the records of input partition *p* go to partition
``p % partitions(output topic)`` of each output topic. A key's records share an
input partition, so they share an output partition and keep their order,
without hashing every key again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from filterd.limits import FUTURE_LIMIT_MS, PartitionLimits
from filterd.records import RecordBatch, encode_header, encode_headers, varint
from filterd.router import BLOCK, DELIVER, FREQUENCY_CAP, INVALID, OUTCOMES, Decider, Outcome

HEADER_ROUTE: Final = "filterd-route"
HEADER_REASON: Final = "filterd-reason"
HEADER_SNAPSHOT: Final = "filterd-snapshot"
HEADER_SOURCE: Final = "filterd-source"
#: Where step 2 decided an exempt-category message as marketing: the category it was sent with.
HEADER_DECLARED_CATEGORY: Final = "filterd-declared-category"
#: Where a live consent change decided the record: ``topic/partition/offset`` of that change.
HEADER_CHANGE: Final = "filterd-change"
#: Where monitor mode delivered a message: the block reason it would have had.
HEADER_WOULD_BLOCK: Final = "filterd-would-block"

Header = tuple[str, bytes]


class InputRecord(Protocol):
    """What the pipeline reads of a consumed record (aiokafka's ConsumerRecord)."""

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


class Builder(Protocol):
    """A producer batch of one output partition (:class:`filterd.records.RecordBatch`)."""

    def append(
        self, timestamp: int, key: bytes | None, value: bytes | None, headers: bytes,
        header_count: int,
    ) -> bool:  # fmt: skip
        """Add a record whose ``header_count`` headers are encoded in ``headers``;
        False when the batch is full."""
        ...

    def record_count(self) -> int: ...


@dataclass(slots=True, frozen=True)
class OutputTopics:
    """The three output topics and how many partitions each has."""

    deliver: str
    block: str
    invalid: str
    partitions: Mapping[str, int]
    #: The step 4 counters' changelog (partition = input partition); empty: none kept.
    counters: str = ""

    def for_route(self, route: str) -> str:
        return {DELIVER: self.deliver, BLOCK: self.block, INVALID: self.invalid}[route]


@dataclass(slots=True)
class PartitionOutput:
    """One input partition's share of a batch, decided and ready to produce."""

    topic: str
    partition: int
    #: Offsets of the first and last record decided.
    first_offset: int
    last_offset: int
    #: (output topic, output partition, builder), in submission order.
    batches: list[tuple[str, int, Builder]] = field(default_factory=list)
    counts: Counter[Outcome] = field(default_factory=Counter)
    #: Monitored deliveries by the block reason they would have had.
    would_block: Counter[str] = field(default_factory=Counter)
    #: frequency-cap blocks by sender (the top-K senders gauge, filterd.metrics).
    capped_senders: Counter[str] = field(default_factory=Counter)
    #: Records whose key is not their recipient's digits (caps are exact per partition
    #: only when producers key by recipient).
    foreign_keys: int = 0
    #: Records without a usable timestamp (negative, or over a day ahead): decided at
    #: ``read_ms`` (the time the batch was read).
    unusable_times: int = 0

    @property
    def next_offset(self) -> int:
        """The offset to commit once this output is acknowledged."""
        return self.last_offset + 1


class HeaderCache:
    """The three constant headers of each outcome, encoded once per version."""

    __slots__ = ("by_outcome", "encoded", "version")

    def __init__(self, version: str) -> None:
        self.version = version
        snapshot = (HEADER_SNAPSHOT, version.encode())
        self.by_outcome: dict[Outcome, tuple[Header, Header, Header]] = {
            o: ((HEADER_ROUTE, o.route.encode()), (HEADER_REASON, o.reason.encode()), snapshot)
            for o in OUTCOMES
        }
        #: The same three, as they stand in a record (filterd.records.encode_header).
        self.encoded: dict[Outcome, bytes] = {
            o: encode_headers(h) for o, h in self.by_outcome.items()
        }


#: The source header's name as it stands in a record (its value follows).
_SOURCE_NAME: Final = encode_header(HEADER_SOURCE, b"")[:-1]


def decide_partition(
    decider: Decider,
    headers: HeaderCache,
    topic: str,
    partition: int,
    records: Sequence[InputRecord],
    outputs: OutputTopics,
    new_builder: Callable[[], Builder],
    limits: PartitionLimits | None = None,
    read_ms: int = -1,
) -> PartitionOutput:
    """Decide ``records`` of one input partition and build their output batches.

    The records must be non-empty and in offset order, as the consumer returns
    them. Decisions are counted per outcome for the metrics and the logs.
    ``limits`` (step 4, monitor mode) are the partition's counters; ``read_ms``
    (epoch ms, -1: none) the time of a record whose timestamp is not usable.
    """
    out = PartitionOutput(topic, partition, records[0].offset, records[-1].offset)
    targets: dict[str, tuple[str, int]] = {
        route: (name, partition % outputs.partitions[name])
        for route, name in ((DELIVER, outputs.deliver), (BLOCK, outputs.block),
                            (INVALID, outputs.invalid))
    }  # fmt: skip
    builders: dict[str, Builder] = {}
    batches = out.batches
    # Compiled (mypyc), method calls on typed objects are direct C calls: no bound
    # methods held in locals here, which would turn them into generic Python calls.
    encoded = headers.encoded
    source_prefix = f"{topic}/{partition}/"
    # filterd-source is "topic/partition/offset": all but the offset encoded once here.
    prefix = source_prefix.encode()
    prefix_len = len(prefix)
    outcomes: list[Outcome] = []
    if limits is not None:
        limits.read_ms = read_ms
    would_block = out.would_block
    capped_senders = out.capped_senders
    future = read_ms + FUTURE_LIMIT_MS
    for record in records:
        # Each field read once: a record's attributes are generic lookups (aiokafka's class).
        value = record.value
        timestamp = record.timestamp
        key = record.key
        offset = record.offset
        # The record timestamp is the message's time (consent expiry, step 4), unless
        # it is negative or over a day ahead of the read time: then the read time. (A
        # topic with LogAppendTime gives the broker's append time here, always usable.)
        at = timestamp
        if read_ms >= 0 and (at < 0 or at > future):
            at = read_ms
            out.unusable_times += 1
        outcome = decider.decide(value, at)
        if limits is not None:
            outcome = limits.apply_record(decider, outcome, at, offset)
            if outcome is FREQUENCY_CAP:
                capped_senders[decider.sender] += 1
            if outcome.route != INVALID and (key is None or key != b"%d" % decider.number):
                out.foreign_keys += 1
        outcomes.append(outcome)
        digits = str(offset).encode()
        # route, reason, snapshot (encoded once per version), then filterd-source.
        hdrs = b"".join(
            (encoded[outcome], _SOURCE_NAME, varint(prefix_len + len(digits)), prefix, digits)
        )
        count = 4
        # A header of this record only: `hdrs += encode_header(NAME, value); count += 1`.
        declared = decider.declared_category
        if declared is not None:
            hdrs += encode_header(HEADER_DECLARED_CATEGORY, declared.encode())
            count += 1
        change = decider.change_ref
        if change is not None:
            hdrs += encode_header(HEADER_CHANGE, change.header())
            count += 1
        if limits is not None:
            would = limits.would_block
            if would is not None:
                hdrs += encode_header(HEADER_WOULD_BLOCK, would.encode())
                count += 1
                would_block[would] += 1
        route = outcome.route
        builder = builders.get(route)
        if builder is None or not builder.append(timestamp, key, value, hdrs, count):
            # No builder yet for this route, or the current one is full.
            builder = new_builder()
            name, out_partition = targets[route]
            builders[route] = builder
            batches.append((name, out_partition, builder))
            if not builder.append(timestamp, key, value, hdrs, count):
                raise ValueError(
                    f"record {source_prefix}{offset} does not fit an empty producer "
                    "batch: raise producer.max_batch_size above policy.max_event_bytes"
                )
    out.counts.update(outcomes)
    if limits is not None:
        limits.drop_closed()
        if outputs.counters and limits.tracking:
            _append_changelog(out, limits, outputs.counters, partition, new_builder)
    return out


def _append_changelog(
    out: PartitionOutput,
    limits: PartitionLimits,
    topic: str,
    partition: int,
    new_builder: Callable[[], Builder],
) -> None:
    """The batch's counter changes, to the changelog's partition of this input partition.

    They go with the outputs: in the same transaction in exactly-once mode, acknowledged
    before the offset commit in at-least-once mode.
    """
    # The changelog keeps no time of its own: a counter's window is in its key.
    now_ms = time.time_ns() // 1_000_000
    builder = new_builder()
    # filterd's own batch (the stream's) takes the records' bodies, encoded in C, all that
    # fit in one call; another builder takes (key, value) one at a time.
    bodies: list[bytes] = []
    records: list[tuple[bytes, bytes | None]] = []
    if isinstance(builder, RecordBatch):
        bodies = limits.changelog_bodies(out.first_offset)
        total = len(bodies)
    else:
        records = limits.changelog(out.first_offset)
        total = len(records)
    done = 0
    while done < total:
        if done:
            builder = new_builder()
        out.batches.append((topic, partition, builder))
        if isinstance(builder, RecordBatch):
            added = builder.extend(now_ms, bodies, done)
        else:
            added = done
            while added < total:
                key, value = records[added]
                if not builder.append(now_ms, key, value, b"", 0):
                    break
                added += 1
        if added == done:
            raise ValueError(f"a counter record of {topic}/{partition} does not fit a batch")
        done = added


class Timestamps(Sequence[int]):
    """A lazy view of the records' timestamps, so sampling reads only a few."""

    __slots__ = ("_records",)

    def __init__(self, records: Sequence[InputRecord]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> int:  # type: ignore[override]
        return self._records[index].timestamp

    def __iter__(self) -> Iterator[int]:
        for r in self._records:
            yield r.timestamp
