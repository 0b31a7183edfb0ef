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

from filterd.audit.records import AuditRecord, declared_category_of, decode_headers
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
    ) -> None:
        self._params = params
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
        plan = [
            PartitionRange(tp.topic, tp.partition, starts[tp], min(stops[tp], ends[tp]))
            for tp in tps
        ]
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

    async def batches(self) -> AsyncIterator[list[AuditRecord]]:
        """Yield the records in range, in batches, partition order kept."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("RangeReader used outside 'async with'")
        time_range = self._range
        stops: dict[TopicPartition, int] = {}
        total = 0
        for r in self.ranges:
            tp = TopicPartition(r.topic, r.partition)
            if r.start < r.stop:
                consumer.seek(tp, r.start)
                stops[tp] = r.stop
                total += r.stop - r.start
            else:
                consumer.pause(tp)
        starts = {TopicPartition(r.topic, r.partition): r.start for r in self.ranges}
        finished = 0
        last_report = time.monotonic()
        while stops:
            try:
                fetched = await consumer.getmany(
                    *stops, timeout_ms=500, max_records=self._max_records
                )
            except KafkaError as exc:
                raise BrokerError(f"fetch failed: {exc}") from exc
            batch: list[AuditRecord] = []
            append = batch.append
            contains = time_range.contains
            for tp, messages in fetched.items():
                stop = stops.get(tp)
                if stop is None:
                    continue
                for msg in messages:
                    if msg.offset >= stop:
                        break
                    if not contains(msg.timestamp):
                        self.skipped_out_of_range += 1
                        continue
                    route, reason, snapshot, source = decode_headers(msg.headers)
                    append(
                        AuditRecord(
                            msg.topic,
                            msg.partition,
                            msg.offset,
                            msg.timestamp,
                            msg.key,
                            msg.value,
                            route,
                            reason,
                            snapshot,
                            source,
                            declared_category_of(msg.headers),
                        )
                    )
            # The position, not the last record, says when a partition is
            # done: transaction markers and aborted batches take offsets but
            # yield no record, and may sit just before the stop offset.
            for tp in list(stops):
                position = await consumer.position(tp)
                if position >= stops[tp]:
                    finished += stops.pop(tp) - starts[tp]
                    consumer.pause(tp)
            self.records += len(batch)
            if batch:
                yield batch
            if self._progress is not None:
                now = time.monotonic()
                if now - last_report >= self._progress_interval_s or not stops:
                    last_report = now
                    done = finished
                    for tp in stops:
                        done += max(0, await consumer.position(tp) - starts[tp])
                    self._progress(ReadProgress(done, total, self.records))
