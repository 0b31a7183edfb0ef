"""The test harness against the real broker: topics, groups and transactions behave as the
rest of the suite assumes."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.support.kafka import NewGroupFactory, NewTopicFactory, drain, end_offsets


async def test_round_trip_keeps_keys_headers_and_partition_order(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=3)
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all") as producer:
        sent = []
        for i in range(90):
            key = f"key-{i % 11}".encode()
            value = f"value-{i}".encode()
            headers = [("seq", str(i).encode()), ("origin", b"harness")]
            meta = await producer.send_and_wait(topic, value, key=key, headers=headers)
            sent.append((meta.partition, meta.offset, key, value, headers))

    records = await drain(kafka_bootstrap, topic, expected=len(sent))

    assert {p for p, *_ in sent} == {0, 1, 2}, "the keys should spread over all partitions"
    got = [(r.partition, r.offset, r.key, r.value, list(r.headers)) for r in records]
    assert sorted(got) == sorted(sent)
    # Per partition, records come back in the order they were sent.
    by_partition: dict[int, list[bytes]] = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r.value)
    for partition, values in by_partition.items():
        assert values == [v for p, _, _, v, _ in sent if p == partition]


async def test_group_resumes_from_its_committed_offsets(
    kafka_bootstrap: str, new_topic: NewTopicFactory, new_group: NewGroupFactory
) -> None:
    topic = await new_topic(partitions=3)
    group = new_group()
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
        for i in range(60):
            await producer.send(topic, f"{i}".encode(), key=f"{i % 5}".encode())
        await producer.flush()

    def consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    first: list[tuple[int, int]] = []
    async with consumer() as c1:
        while len(first) < 25:
            batch = await c1.getmany(timeout_ms=500, max_records=7)
            first += [(r.partition, r.offset) for recs in batch.values() for r in recs]
        # Commits the positions after the records returned so far, not after what the
        # consumer may have prefetched.
        await c1.commit()
        committed = {p: await c1.committed(TopicPartition(topic, p)) for p in range(3)}

    second: list[tuple[int, int]] = []
    async with consumer() as c2:
        while len(first) + len(second) < 60:
            batch = await asyncio.wait_for(c2.getmany(timeout_ms=500), timeout=30)
            second += [(r.partition, r.offset) for recs in batch.values() for r in recs]

    assert not set(first) & set(second), "the new consumer re-read committed records"
    assert len(set(first) | set(second)) == 60
    for p in range(3):
        resumed = [o for q, o in second if q == p]
        if resumed:
            assert min(resumed) == (committed[p] or 0)


async def test_read_committed_sees_committed_transactions_only(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=3)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"harness-{uuid.uuid4().hex}"
    )
    async with producer:
        async with producer.transaction():
            for i in range(6):
                await producer.send(topic, f"committed-{i}".encode(), key=f"{i}".encode())
        await producer.begin_transaction()
        for i in range(6):
            await producer.send(topic, f"aborted-{i}".encode(), key=f"{i}".encode())
        await producer.flush()
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed-last", key=b"0")

    committed = await drain(kafka_bootstrap, topic, isolation_level="read_committed")
    uncommitted = await drain(kafka_bootstrap, topic, isolation_level="read_uncommitted")

    expected = {f"committed-{i}".encode() for i in range(6)} | {b"committed-last"}
    assert sorted(r.value for r in committed) == sorted(expected)
    # The aborted records did reach the log: only the isolation level hides them.
    assert {r.value for r in uncommitted} == expected | {f"aborted-{i}".encode() for i in range(6)}
    # Transaction markers take offsets too: the log is longer than the records it returns.
    assert sum((await end_offsets(kafka_bootstrap, topic)).values()) > len(uncommitted)
