"""Producer settings derived from the config."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from filterd.config import load_config
from filterd.delivery import producer_options


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
async def test_every_accepted_compression_builds_a_producer(codec: str) -> None:
    # aiokafka checks at construction that the codec's library is installed.
    options = producer_options(load_config(None, env={"FILTERD_PRODUCER_COMPRESSION_TYPE": codec}))
    assert options["compression_type"] == (None if codec == "none" else codec)
    producer = AIOKafkaProducer(**options)
    await producer.stop()  # never started: closes cleanly without a broker


def test_acks_and_batching_come_from_the_config() -> None:
    cfg = load_config(
        None,
        env={"FILTERD_PRODUCER_ACKS": "1", "FILTERD_PRODUCER_LINGER_MS": "0",
             "FILTERD_PRODUCER_MAX_BATCH_SIZE": "65536"},
    )  # fmt: skip
    options = producer_options(cfg)
    assert (options["acks"], options["linger_ms"], options["max_batch_size"]) == (1, 0, 65536)
    assert producer_options(load_config(None, env={}))["acks"] == "all"
