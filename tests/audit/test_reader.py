"""The range reader against the real broker: exact edges, read_committed, no group."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from filterd.audit.aggregate import Summary
from filterd.audit.commands import count_topic, summarize
from filterd.audit.reader import KafkaParams, RangeReader
from filterd.audit.timeutil import HourBuckets, TimeRange
from filterd.errors import BrokerError

from .streams import BASE_MS, HOUR_MS, Routed, generate, produce

pytestmark = pytest.mark.kafka


async def read_ids(bootstrap: str, topics: list[str], time_range: TimeRange) -> list[str]:
    ids: list[str] = []
    async with RangeReader(KafkaParams(bootstrap), topics, time_range) as reader:
        async for batch in reader.batches():
            ids += [orjson.loads(r.value)["id"] for r in batch]
    return ids


def stamped(ts_list: list[int], prefix: str) -> list[Routed]:
    """One record per timestamp, id = prefix + timestamp offset from BASE_MS."""
    return [
        Routed(
            "block",
            "no-consent",
            "v1",
            f"in/0/{i}",
            ts,
            None,
            orjson.dumps({"id": f"{prefix}{ts - BASE_MS}", "sender": "s", "recipient": "1"}),
            f"{prefix}{ts - BASE_MS}",
            "s",
            "1",
            None,
        )
        for i, ts in enumerate(ts_list)
    ]


async def test_summary_over_a_range_equals_an_independent_count(
    kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic(partitions=3)
    routed = generate(6000, seed=11, step_ms=4_000)  # ~6.7 hours
    await produce(kafka_bootstrap, topic, routed)
    start, end = BASE_MS + HOUR_MS + 123, BASE_MS + 5 * HOUR_MS + 7
    summary = await summarize(
        KafkaParams(kafka_bootstrap), [topic], TimeRange(start, end), HourBuckets()
    )
    inside = [r for r in routed if start <= r.ts_ms < end]
    assert 0 < len(inside) < len(routed)
    got = summary.to_json(top=None)
    assert got["total"] == len(inside)
    assert got["by_reason"] == dict(Counter(r.reason for r in inside))
    assert {s["sender"]: s["total"] for s in got["by_sender"]} == dict(
        Counter(r.sender for r in inside)
    )
    assert got["by_snapshot"] == dict(Counter(r.snapshot for r in inside))
    assert sum(got["by_hour"].values()) == len(inside)
    assert len(got["by_hour"]) == 5  # hours 1..5 after BASE_MS, the last one partly


async def test_range_edges_are_exact(kafka_bootstrap: str, new_topic) -> None:
    topic = await new_topic(partitions=3)
    t, u = BASE_MS + 10_000, BASE_MS + 20_000
    edges = [t - 1, t, t + 1, u - 1, u, u + 1]
    # The same edge timestamps in every partition (round-robin: 3 copies of each).
    routed = stamped([ts for ts in edges for _ in range(3)], "e")
    await produce(kafka_bootstrap, topic, routed)

    ids = await read_ids(kafka_bootstrap, [topic], TimeRange(t, u))
    assert Counter(ids) == {
        f"e{t - BASE_MS}": 3,
        f"e{t + 1 - BASE_MS}": 3,
        f"e{u - 1 - BASE_MS}": 3,
    }
    assert len(await read_ids(kafka_bootstrap, [topic], TimeRange(None, None))) == 18
    assert len(await read_ids(kafka_bootstrap, [topic], TimeRange(u, None))) == 6
    assert len(await read_ids(kafka_bootstrap, [topic], TimeRange(None, t))) == 3
    assert await read_ids(kafka_bootstrap, [topic], TimeRange(u + 2, None)) == []
    assert await read_ids(kafka_bootstrap, [topic], TimeRange(t + 2, u - 1)) == []


async def test_out_of_order_timestamps_inside_the_window_are_filtered(
    kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic(partitions=1)
    b = BASE_MS
    routed = stamped([b + 10, b + 20, b + 5, b + 30, b + 40, b + 35], "o")
    await produce(kafka_bootstrap, topic, routed, partitions=1)
    async with RangeReader(KafkaParams(kafka_bootstrap), [topic], TimeRange(b + 20, b + 40)) as r:
        ids = [orjson.loads(rec.value)["id"] async for batch in r.batches() for rec in batch]
    # Offsets [1, 4) are read; the record stamped b+5 among them is outside the range.
    assert ids == ["o20", "o30"]
    assert r.skipped_out_of_range == 1


async def test_empty_topic_and_missing_topic(kafka_bootstrap: str, new_topic) -> None:
    topic = await new_topic(partitions=2)
    assert await read_ids(kafka_bootstrap, [topic], TimeRange(None, None)) == []
    with pytest.raises(BrokerError, match="does not exist"):
        await read_ids(kafka_bootstrap, [topic + "-nope"], TimeRange(None, None))


async def test_reads_committed_only_and_ends_after_transaction_markers(
    kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic(partitions=1)
    async with AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-tx"
    ) as producer:
        for n, commit in enumerate((True, False, True)):
            async with producer.transaction() if commit else _aborting(producer):
                for i in range(5):
                    value = orjson.dumps({"id": f"t{n}-{i}", "sender": "s", "recipient": "1"})
                    headers = [("filterd-reason", b"no-consent")]
                    await producer.send(topic, value, headers=headers)
    ids = await read_ids(kafka_bootstrap, [topic], TimeRange(None, None))
    assert ids == [f"t{n}-{i}" for n in (0, 2) for i in range(5)]


class _aborting:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def __aenter__(self) -> None:
        await self.producer.begin_transaction()

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.abort_transaction()


async def test_a_live_topic_read_terminates_at_the_start_end_offsets(
    kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic(partitions=2)
    await produce(kafka_bootstrap, topic, generate(400, seed=3, step_ms=10), partitions=2)
    late = generate(2000, seed=4, step_ms=1, prefix="late")
    writing, stop = asyncio.Event(), asyncio.Event()
    written = 0

    async def keep_writing() -> None:
        nonlocal written
        async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5) as producer:
            for r in late:
                await producer.send_and_wait(topic, r.value, timestamp_ms=r.ts_ms)
                written += 1
                writing.set()
                if stop.is_set():
                    return

    writer = asyncio.create_task(keep_writing())
    try:
        await writing.wait()
        summary = Summary(HourBuckets())
        async with RangeReader(KafkaParams(kafka_bootstrap), [topic], TimeRange(None, None)) as r:
            planned = sum(p.stop - p.start for p in r.ranges)
            async for batch in r.batches():
                summary.add_batch(batch)
        # The read ended while the topic was still being written to.
        assert not writer.done()
    finally:
        stop.set()
        await writer
    assert summary.total == planned >= 400
    assert 400 + written > planned


async def test_late_records_after_the_end_edge_are_caught_with_late_ms(
    kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic(partitions=1)
    b = BASE_MS
    # b+30 was stamped before the end (b+40) but written after a record stamped b+45, as
    # when one input partition lags behind another.
    await produce(kafka_bootstrap, topic, stamped([b + 10, b + 20, b + 45, b + 30, b + 90], "l"),
                  partitions=1)  # fmt: skip
    window = TimeRange(b + 10, b + 40)
    assert await read_ids(kafka_bootstrap, [topic], window) == ["l10", "l20"]
    async with RangeReader(KafkaParams(kafka_bootstrap), [topic], window, late_ms=10) as r:
        ids = [orjson.loads(rec.value)["id"] async for batch in r.batches() for rec in batch]
        assert [(p.start, p.stop) for p in r.ranges] == [(0, 4)]
    assert ids == ["l10", "l20", "l30"]


async def test_counting_a_range_reads_only_reasons_and_equals_an_independent_count(
    kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic(partitions=3)
    routed = generate(3000, seed=12, step_ms=4_000, route="deliver")
    await produce(kafka_bootstrap, topic, routed)
    start, end = BASE_MS + HOUR_MS, BASE_MS + 2 * HOUR_MS
    params = KafkaParams(kafka_bootstrap)
    inside = [r for r in routed if start <= r.ts_ms < end]
    counts = await count_topic(params, topic, TimeRange(start, end))
    assert counts.total == len(inside)
    assert counts.by_sender == Counter(r.sender for r in inside)
    assert counts.by_reason == Counter(r.reason for r in inside)
    assert counts.complete
    # The light read yields the same records and reasons as the full one.
    full, light = [], []
    for reason_only, out in ((False, full), (True, light)):
        async with RangeReader(
            params, [topic], TimeRange(start, end), reason_only=reason_only
        ) as reader:
            async for batch in reader.batches():
                out += [(r.location, r.value, r.reason) for r in batch]
    assert sorted(light) == sorted(full)
    assert len(full) == len(inside)
    limited = await count_topic(params, topic, TimeRange(start, end), limit=100)
    assert limited.total == 100
    assert not limited.complete
