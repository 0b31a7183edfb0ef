"""The one input producer of the harness, with one partitioning rule: Kafka's default.

A keyed record goes to ``murmur2(key) & 0x7fffffff % partitions``, as the Java client's
default partitioner (and ``filterd loadgen``) put it, so a key's records land where any
other producer would put them. Kafka spreads unkeyed records as it likes; here record
number ``i`` of a run goes to ``i % partitions``, so that runs are reproducible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaProducer

from filterd.loadgen.produce import murmur2

Headers = Sequence[tuple[str, bytes]]
Key = bytes | None
Outgoing = tuple[Key, bytes | None] | tuple[Key, bytes | None, int | None, Headers]
"""(key, value) or (key, value, timestamp ms, headers)."""


def partition_for(key: bytes | None, index: int, partitions: int) -> int:
    """The partition of record number ``index`` of a run with this ``key``."""
    if key is None:
        return index % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def bulk_producer(bootstrap: str, *, acks: int | str = 1) -> AIOKafkaProducer:
    """Large batches, no compression: writing the input is not what a test measures."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=acks,
        linger_ms=0,
        max_batch_size=1 << 20,
        max_request_size=4 * 1024 * 1024,
    )


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Outgoing],
    partitions: int,
    *,
    acks: int | str = 1,
) -> int:
    """Write ``records`` into ``topic`` as fast as possible and wait for every ack.

    Built with ``BatchBuilder`` straight into per-partition batches (in order within each):
    a few microseconds per record, so 500k records take seconds, not minutes. Returns the
    number written.
    """
    producer = bulk_producer(bootstrap, acks=acks)
    await producer.start()
    written = 0
    try:
        futures: list[asyncio.Future[object]] = []
        batches = [producer.create_batch() for _ in range(partitions)]
        for i, record in enumerate(records):
            key, value = record[0], record[1]
            timestamp, headers = (record[2], list(record[3])) if len(record) == 4 else (None, [])
            p = partition_for(key, i, partitions)
            args = {"key": key, "value": value, "timestamp": timestamp, "headers": headers}
            if batches[p].append(**args) is None:
                batches[p].close()
                futures.append(await producer.send_batch(batches[p], topic, partition=p))
                batches[p] = producer.create_batch()
                if batches[p].append(**args) is None:
                    raise ValueError(f"record {i} is larger than a whole batch")
            written += 1
        for p, batch in enumerate(batches):
            if batch.record_count():
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return written
