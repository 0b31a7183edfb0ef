"""``produce_events`` against the real broker: everything arrives, keyed as documented."""

from __future__ import annotations

import collections
from pathlib import Path

import orjson
from aiokafka.partitioner import murmur2

from filterd.loadgen import iter_labelled_events, write_dataset
from filterd.loadgen.produce import produce_events
from tests.support.kafka import NewTopicFactory, drain
from tests.support.reference import ref_normalize


async def test_produced_records_arrive_keyed_by_recipient(
    kafka_bootstrap: str, new_topic: NewTopicFactory, tmp_path: Path
) -> None:
    dataset = write_dataset(tmp_path, senders=20, recipients=5000, consents=10_000, seed=21)
    events = list(iter_labelled_events(dataset, 5000, seed=21, bad_rate=0.02))
    topic = await new_topic(partitions=3)

    stats = await produce_events(
        kafka_bootstrap, topic, [(e.key, e.value) for e in events], rate=None
    )

    assert stats.sent == 5000
    assert stats.nbytes == sum(len(e.value) + len(e.key or b"") for e in events)
    records = await drain(kafka_bootstrap, topic, expected=5000)
    assert collections.Counter(r.value for r in records) == collections.Counter(
        e.value for e in events
    )
    order: dict[bytes, list[bytes]] = collections.defaultdict(list)
    for record in records:
        assert record.value is not None
        if record.key is None:
            assert record.value in {e.value for e in events if e.route == "invalid"}
            continue
        # The key is the recipient's normalized digits, partitioned like the Java client.
        recipient = orjson.loads(record.value)["recipient"]
        assert record.key == str(ref_normalize(recipient)).encode()
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 3
        order[record.key].append(record.value)
    # One recipient's messages keep their generation order.
    generated: dict[bytes, list[bytes]] = collections.defaultdict(list)
    for e in events:
        if e.key is not None:
            generated[e.key].append(e.value)
    assert order == generated
    assert {r.partition for r in records} == {0, 1, 2}


async def test_paced_produce_sends_everything(
    kafka_bootstrap: str, new_topic: NewTopicFactory, tmp_path: Path
) -> None:
    dataset = write_dataset(tmp_path, senders=5, recipients=1000, consents=2000, seed=2)
    events = [(e.key, e.value) for e in iter_labelled_events(dataset, 600, seed=2, bad_rate=0)]
    topic = await new_topic(partitions=3)

    stats = await produce_events(kafka_bootstrap, topic, events, rate=2000.0, profile="double11")

    # No wall-clock assertion (shared machine): pacing only shapes when records go.
    assert stats.sent == 600
    records = await drain(kafka_bootstrap, topic, expected=600)
    assert sorted(r.value for r in records) == sorted(v for _, v in events)
