"""The step 4 counters' changelog topic: created when missing, read back on assignment.

Like a Kafka Streams state store's changelog: a compacted topic with one partition per
input partition, holding each counter's latest value (:mod:`filterd.limits`). The batch
loop writes a batch's counter changes with the batch's outputs (in the same transaction
in exactly-once mode) and, when it is assigned an input partition, rebuilds that
partition's counters from the changelog partition before deciding any of its records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from filterd.config import Config
from filterd.delivery import client_topic_partitions
from filterd.errors import BrokerError
from filterd.topics import counters_spec, create

log = logging.getLogger(__name__)

Changelog = list[tuple[bytes | None, bytes | None]]


async def ensure_counters_topic(config: Config, input_partitions: int) -> int:
    """Create the changelog topic when it is missing; return its partition count.

    It must have at least the input topic's partitions (a counter's partition is its
    input partition's number).
    """
    name = config.topics.counters_topic
    created = await create(
        config.kafka.client_options(), {name: counters_spec(input_partitions)}, ready_timeout_s=30
    )
    if created.get(name):
        log.info("created the counters changelog %s (%d partitions)", name, input_partitions)
    return input_partitions


async def read_changelog(
    config: Config, partitions: Iterable[int], timeout_s: float = 120.0
) -> dict[int, Changelog]:
    """Each changelog partition's records, from the first to the last committed one."""
    name = config.topics.counters_topic
    tps = [TopicPartition(name, p) for p in partitions]
    result: dict[int, Changelog] = {tp.partition: [] for tp in tps}
    if not tps:
        return result
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        **config.kafka.client_options(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=config.batch.max_partition_fetch_bytes,
        fetch_max_bytes=config.batch.fetch_max_bytes,
    )
    await consumer.start()
    try:
        # One metadata question first: a missing READ raises here (the fetcher would only
        # log it, and the counters would start from zero), a missing topic is 0.
        if not await client_topic_partitions(consumer._client, name):
            raise BrokerError(
                f"restoring counters: the changelog {name!r} does not exist "
                "(`filterd topics create --config FILE` creates it)"
            )
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        # One fetch even of empty partitions: a missing READ (WRITE implies DESCRIBE, so the
        # metadata answers) shows only as a fetch error, raised by getmany.
        if not left:
            await consumer.getmany(*tps, timeout_ms=200, max_records=1)
        while left:
            if time.monotonic() - started > timeout_s:
                raise BrokerError(f"restoring counters from {name}: not read in {timeout_s:.0f}s")
            batch = await consumer.getmany(*left, timeout_ms=500, max_records=100_000)
            for tp, records in batch.items():
                result[tp.partition].extend((r.key, r.value) for r in records)
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return result
