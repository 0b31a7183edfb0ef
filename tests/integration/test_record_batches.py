"""filterd's own producer batches (filterd/records.py) through the real broker.

aiokafka's producer sends them (plain, idempotent, each compression, inside a
transaction); a consumer reads every record back with its key, value, timestamp and
headers, in order. A broker that refused a batch (a bad CRC, a wrong length, a
transactional batch outside a transaction) fails the send.
"""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from filterd.records import CODECS, RecordBatch, encode_headers
from tests.support.kafka import drain

pytestmark = pytest.mark.kafka

RECORDS = [
    (1_795_000_000_000 + i, None if i % 4 == 0 else b"k%d" % i, b"v" * (i % 300),
     [("filterd-route", b"deliver"), ("filterd-source", b"in/0/%d" % i)][: i % 3])
    for i in range(700)
]  # fmt: skip


async def _send(producer: AIOKafkaProducer, topic: str, transactional: bool, codec: str) -> int:
    """Send RECORDS in batches of at most 16 KiB; the number of batches."""
    batches = [RecordBatch(16_384, CODECS[codec], transactional)]
    for ts, key, value, headers in RECORDS:
        if not batches[-1].append(ts, key, value, encode_headers(headers), len(headers)):
            batches.append(RecordBatch(16_384, CODECS[codec], transactional))
            assert batches[-1].append(ts, key, value, encode_headers(headers), len(headers))
    futures = [await producer.send_batch(b, topic, partition=0) for b in batches]
    for future in futures:
        await future
    return len(batches)


@pytest.mark.parametrize(
    ("codec", "mode"),
    [("none", "plain"), ("none", "idempotent"), ("none", "transaction"), ("gzip", "plain"),
     ("lz4", "idempotent"), ("zstd", "transaction"), ("snappy", "plain")],
)  # fmt: skip
async def test_batches_round_trip_through_the_broker(
    kafka_bootstrap: str, new_topic, codec: str, mode: str
) -> None:  # type: ignore[no-untyped-def]
    topic = await new_topic(partitions=1)
    options: dict[str, object] = {
        "bootstrap_servers": kafka_bootstrap,
        "compression_type": None if codec == "none" else codec,
        "enable_idempotence": mode != "plain",
    }
    if mode == "transaction":
        options["transactional_id"] = f"{topic}-tx"
    producer = AIOKafkaProducer(**options)
    await producer.start()
    try:
        if mode == "transaction":
            async with producer.transaction():
                sent = await _send(producer, topic, True, codec)
        else:
            sent = await _send(producer, topic, False, codec)
    finally:
        await producer.stop()
    assert sent > 3  # several batches, each full up to its limit

    got = await drain(kafka_bootstrap, topic, expected=len(RECORDS))
    assert [(r.timestamp, r.key, r.value, list(r.headers)) for r in got] == RECORDS
    assert [r.offset for r in got] == list(range(len(RECORDS)))
