"""Helpers and fixture types for tests that use the real Kafka broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

__all__ = ["IsolationLevel", "NewGroupFactory", "NewTopicFactory", "drain", "end_offsets"]

IsolationLevel = Literal["read_committed", "read_uncommitted"]
NewGroupFactory = Callable[[], str]
"""The ``new_group`` fixture: ``new_group() -> unique group id``."""


class NewTopicFactory(Protocol):
    """The ``new_topic`` fixture: ``await new_topic(partitions=3, name=None, config=None)``
    creates a topic (replication 1) and returns its name; it is deleted after the test."""

    def __call__(
        self,
        partitions: int = 3,
        name: str | None = None,
        config: Mapping[str, str] | None = None,
    ) -> Awaitable[str]: ...


async def drain(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    # A read budget, not a cancellation: on expiry drain returns what it read instead of raising.
    timeout: float = 30.0,  # noqa: ASYNC109
    isolation_level: IsolationLevel = "read_committed",
    client_options: Mapping[str, object] | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read every partition of ``topic`` from the beginning, without a consumer group.

    ``client_options`` (e.g. ``KafkaConfig.client_options()`` of a secured broker) replace
    the plain ``bootstrap``.

    With ``expected``, reads until at least that many records have arrived (they may still be
    in flight from the code under test), then up to the end offsets of that moment, so that
    duplicates already written are returned too. Without it, reads up to the end offsets
    taken when the partitions were assigned. Either way it gives up after ``timeout`` seconds
    and returns what it has: the caller's assertion on the records then shows what is missing.

    Records come back partition by partition in offset order (partition 0 first), so
    per-partition order can be checked on the result directly.
    """
    options = dict(client_options) if client_options else {"bootstrap_servers": bootstrap}
    consumer: AIOKafkaConsumer = AIOKafkaConsumer(
        **options,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
    )
    await consumer.start()
    by_partition: dict[int, list[ConsumerRecord[bytes, bytes]]] = {}
    try:
        partitions = await _partitions(consumer, topic, timeout)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        targets: dict[TopicPartition, int] | None = None
        if expected is None:
            targets = await consumer.end_offsets(partitions)
        while time.monotonic() < deadline:
            if targets is not None and await _reached(consumer, targets):
                break
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, records in batch.items():
                by_partition.setdefault(tp.partition, []).extend(records)
            if (
                targets is None
                and expected is not None
                and sum(map(len, by_partition.values())) >= expected
            ):
                # Enough: now catch up with everything already written after them.
                targets = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return [record for p in sorted(by_partition) for record in by_partition[p]]


async def end_offsets(
    bootstrap: str, topic: str, *, isolation_level: IsolationLevel = "read_uncommitted"
) -> dict[int, int]:
    """Return ``{partition: end offset}`` of ``topic`` (the last stable offset when reading
    committed): a cheap way to count what a topic holds without reading it."""
    consumer: AIOKafkaConsumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, isolation_level=isolation_level
    )
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic, 30.0)
        offsets = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in offsets.items()}


async def _partitions(
    consumer: AIOKafkaConsumer, topic: str, budget_s: float
) -> list[TopicPartition]:
    # A topic created a moment ago may not be in this client's metadata yet.
    deadline = time.monotonic() + budget_s
    while True:
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return [TopicPartition(topic, p) for p in sorted(ids)]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topic {topic!r} has no partitions in the broker's metadata")
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)


async def _reached(consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> bool:
    # position() rather than the last record's offset: transaction markers and aborted batches
    # take offsets too and are never returned as records.
    for tp, end in targets.items():
        if await consumer.position(tp) < end:
            return False
    return True
