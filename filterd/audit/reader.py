"""Read output topics for a time range, without a consumer group.

An audit must not disturb the service or another audit: it assigns
partitions by hand (``group_id=None``), never commits, and reads
``read_committed`` because exactly-once mode writes transactionally (an
aborted write is not a decision). Timestamps are turned into offsets by the
broker (``offsets_for_times``), so reading one day of a month-long topic
fetches one day, and the end offsets are read once at the start so an audit
of a live topic terminates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from filterd.audit.records import (
    AuditRecord,
    change_of,
    declared_category_of,
    decode_headers,
    reason_and_would_block,
)
from filterd.audit.timeutil import TimeRange
from filterd.errors import BrokerError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KafkaParams:
    """How to reach the broker: plain values, so the reader does not depend
    on the config file format (``filterd.audit.commands.kafka_params`` adapts a
    loaded config)."""

    bootstrap_servers: str
    #: Extra aiokafka client keyword arguments (security settings).
    client_options: Mapping[str, object] = field(default_factory=dict)


class PartitionRange(NamedTuple):
    """The offsets of one partition that an audit reads: ``[start, stop)``."""

    topic: str
    partition: int
    start: int
    stop: int
    #: Offsets after ``stop`` read only to detect records stamped inside the
    #: range that ``late_ms`` did not reach: ``[stop, probe_stop)``.
    probe_stop: int = -1


class ReadProgress(NamedTuple):
    """Reported periodically during a read."""

    #: Offsets passed so far, over all partitions.
    done: int
    #: Offsets to pass in total (an upper bound of the records: transaction
    #: markers and aborted records take offsets too).
    total: int
    #: Records returned so far (inside the time range).
    records: int


ProgressCallback = Callable[[ReadProgress], None]


class LateRecords(NamedTuple):
    """Records stamped inside the range that the late margin did not reach."""

    #: Found just past the stop offsets; at least this many were missed.
    records: int = 0
    #: The smallest ``late_ms`` that reaches all of them; 0 when none.
    needed_ms: int = 0


#: No late record found.
NO_LATE = LateRecords()


class RangeReader:
    """Reads every record of some topics whose timestamp is in a range.

    Use as ``async with RangeReader(...) as reader: async for batch in
    reader.batches(): ...``. Per partition it starts at the first offset
    whose timestamp is ``>= start`` and stops before the first offset whose
    timestamp is ``>= end + late_ms`` (or the end offset read at start-up);
    records between whose timestamp is outside the range are skipped.

    The start is exact: no record before the start offset has a timestamp
    ``>= start``. Timestamps within a partition need not increase (the
    service copies each input record's timestamp, and one output partition
    merges several input partitions), so a record stamped before ``end`` may
    sit after the first one stamped ``>= end``; ``late_ms`` reads that much
    further to catch such records. With ``late_ms`` at least the worst
    disorder (the lag between input partitions), the end is exact too.

    With ``reason_only`` only the reason header is decoded (counting a large
    topic, such as the deliver topic, by sender and reason needs no more):
    the records' ``route``, ``snapshot`` and ``source`` are then empty strings
    (not read) and ``declared_category`` None; ``would_block`` is decoded (the
    monitored deliveries' ``filterd-would-block``).

    A margin too small is not silent: past each stop offset the reader looks
    at up to ``probe_offsets`` more offsets, counts the records stamped inside
    the range among them (``late_beyond``, not returned) and works out the
    ``late_ms`` that would have reached them (``late_needed_ms``). The count
    is a lower bound: records further on are not looked at.
    """

    def __init__(
        self,
        params: KafkaParams,
        topics: Sequence[str],
        time_range: TimeRange,
        *,
        progress: ProgressCallback | None = None,
        progress_interval_s: float = 1.0,
        max_records: int = 5000,
        late_ms: int = 0,
        probe_offsets: int = 1000,
        reason_only: bool = False,
    ) -> None:
        self._params = params
        self._reason_only = reason_only
        self._probe_offsets = probe_offsets
        self._late_ms = late_ms
        self._topics = tuple(topics)
        self._range = time_range
        self._progress = progress
        self._progress_interval_s = progress_interval_s
        self._max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        #: The plan, known after ``__aenter__``.
        self.ranges: list[PartitionRange] = []
        #: Records returned (inside the time range).
        self.records = 0
        #: Records inside the offset window but outside the time range.
        self.skipped_out_of_range = 0
        #: Records stamped inside the range found just past the stop offsets
        #: (``late_ms`` too small for them): at least this many were missed.
        self.late_beyond = 0
        #: The smallest ``late_ms`` that would have read every record counted
        #: in ``late_beyond``; 0 when there is none.
        self.late_needed_ms = 0

    async def __aenter__(self) -> RangeReader:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._params.bootstrap_servers,
            client_id="filterd-audit",
            # No group: nothing is joined, nothing committed, and the
            # service's group and offsets are never touched.
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            # An audit reads history in bulk: bigger fetches keep the broker
            # ahead of the parsing (aiokafka fetches a partition again only
            # once its buffered records are consumed), and fetch_max_bytes
            # bounds what is buffered however many partitions there are.
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
            **self._params.client_options,
        )
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise BrokerError(
                f"cannot connect to Kafka at {self._params.bootstrap_servers}: {exc}"
            ) from exc
        self._consumer = consumer
        try:
            self.ranges = await self._plan(consumer)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the consumer; safe to call twice."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _plan(self, consumer: AIOKafkaConsumer) -> list[PartitionRange]:
        tps: list[TopicPartition] = []
        try:
            available = await consumer.topics()
            for topic in self._topics:
                if topic not in available:
                    raise BrokerError(f"topic {topic!r} does not exist on the broker")
                # A consumer without subscriptions keeps no metadata of any
                # topic; tracking the topic makes the client fetch it. aiokafka
                # has no public call for this (its own subscribe does the same).
                await consumer._client.add_topic(topic)
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    raise BrokerError(f"topic {topic!r} has no partitions in the metadata")
                tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
        except KafkaError as exc:
            raise BrokerError(f"cannot read topic metadata: {exc}") from exc
        consumer.assign(tps)
        try:
            # read_committed: this is the last stable offset, so records of a
            # transaction still open are not waited for.
            ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
            if self._range.start_ms is None:
                starts: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
            else:
                starts = await self._offsets_at(consumer, tps, self._range.start_ms, ends)
            end_ms = self._range.end_ms
            if end_ms is not None:
                end_ms += self._late_ms
            stops = await self._offsets_at(consumer, tps, end_ms, ends)
        except KafkaError as exc:
            raise BrokerError(f"cannot look up offsets: {exc}") from exc
        plan = []
        for tp in tps:
            stop = min(stops[tp], ends[tp])
            probe_stop = stop
            if end_ms is not None and starts[tp] < stop:
                probe_stop = min(stop + self._probe_offsets, ends[tp])
            plan.append(PartitionRange(tp.topic, tp.partition, starts[tp], stop, probe_stop))
        logger.debug("audit read plan: %s", plan)
        return plan

    @staticmethod
    async def _offsets_at(
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        ts_ms: int | None,
        ends: dict[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        """First offset with timestamp >= ``ts_ms``; the end offset when there
        is none (or when ``ts_ms`` is None)."""
        if ts_ms is None:
            return dict(ends)
        found = await consumer.offsets_for_times({tp: max(ts_ms, 0) for tp in tps})
        return {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}

    def late(self) -> LateRecords:
        """What the probe past the stop offsets found (after ``batches``)."""
        return LateRecords(self.late_beyond, self.late_needed_ms)

    async def batches(self) -> AsyncIterator[list[AuditRecord]]:
        """Yield the records in range, in batches, partition order kept."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("RangeReader used outside 'async with'")
        time_range = self._range
        end_ms = time_range.end_ms
        stops: dict[TopicPartition, int] = {}
        #: Where each partition's read ends, the probe included.
        reads: dict[TopicPartition, int] = {}
        #: Per partition, the highest timestamp seen from the stop offset on.
        probe_max: dict[TopicPartition, int] = {}
        total = 0
        for r in self.ranges:
            tp = TopicPartition(r.topic, r.partition)
            if r.start < r.stop:
                consumer.seek(tp, r.start)
                stops[tp] = r.stop
                reads[tp] = max(r.stop, r.probe_stop)
                total += reads[tp] - r.start
            else:
                consumer.pause(tp)
        starts = {TopicPartition(r.topic, r.partition): r.start for r in self.ranges}
        finished = 0
        last_report = time.monotonic()
        while reads:
            try:
                fetched = await consumer.getmany(
                    *reads, timeout_ms=500, max_records=self._max_records
                )
            except KafkaError as exc:
                raise BrokerError(f"fetch failed: {exc}") from exc
            batch: list[AuditRecord] = []
            append = batch.append
            contains = time_range.contains
            reason_only = self._reason_only
            for tp, messages in fetched.items():
                read_stop = reads.get(tp)
                if read_stop is None:
                    continue
                stop = stops[tp]
                for msg in messages:
                    if msg.offset >= stop:
                        if msg.offset >= read_stop or end_ms is None:
                            break
                        self._probe(tp, msg.timestamp, end_ms, probe_max)
                        continue
                    if not contains(msg.timestamp):
                        self.skipped_out_of_range += 1
                        continue
                    headers = msg.headers
                    if reason_only:
                        # Counting only: the reason (and a monitored record's would-block).
                        reason, would_block = reason_and_would_block(headers)
                        route = snapshot = source = ""
                        declared = change = None
                    else:
                        route, reason, snapshot, source = decode_headers(headers)
                        declared, change = declared_category_of(headers), change_of(headers)
                        would_block = None
                    append(
                        AuditRecord(
                            msg.topic, msg.partition, msg.offset, msg.timestamp, msg.key,
                            msg.value, route, reason, snapshot, source, declared, change,
                            would_block,
                        )
                    )  # fmt: skip
            # The position, not the last record, says when a partition is
            # done: transaction markers and aborted batches take offsets but
            # yield no record, and may sit just before the stop offset.
            for tp in list(reads):
                position = await consumer.position(tp)
                if position >= reads[tp]:
                    finished += reads.pop(tp) - starts[tp]
                    consumer.pause(tp)
            self.records += len(batch)
            if batch:
                yield batch
            if self._progress is not None:
                now = time.monotonic()
                if now - last_report >= self._progress_interval_s or not reads:
                    last_report = now
                    done = finished
                    for tp in reads:
                        done += max(0, await consumer.position(tp) - starts[tp])
                    self._progress(ReadProgress(done, total, self.records))

    def _probe(
        self, tp: TopicPartition, ts_ms: int, end_ms: int, probe_max: dict[TopicPartition, int]
    ) -> None:
        """Look at one record past the stop offset (not returned)."""
        highest = max(probe_max.get(tp, ts_ms), ts_ms)
        probe_max[tp] = highest
        if self._range.contains(ts_ms):
            self.late_beyond += 1
            # The stop offset is the first stamped >= end + late_ms: every
            # record up to this one is stamped below end + needed.
            self.late_needed_ms = max(self.late_needed_ms, highest - end_ms + 1)
