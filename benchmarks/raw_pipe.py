"""The raw pipe: the fastest copy this client can make on this broker.

A consume → produce loop with filterd's own client settings and batching
(``[kafka]``, ``[batch]`` and ``[producer]`` of the same config file), but no
parsing and no deciding: every record of input partition *p* is copied, key
and value unchanged, into partition *p* of ``[topics] deliver``. Like filterd it
fills one ``BatchBuilder`` per fetched partition, awaits the acks of the whole
fetch, then commits. Whatever filterd adds on top of this loop is the cost of
its work; the ratio ``filterd / raw pipe`` is the figure to chase.

    python -m benchmarks.raw_pipe --config run.toml
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from benchmarks._common import consumer_kwargs, producer_kwargs, run_variant, variant_config
from filterd.config import Config

log = logging.getLogger("benchmarks.raw_pipe")


async def copy_loop(config: Config, stop: asyncio.Event) -> int:
    """Copy ``topics.input`` to ``topics.deliver`` until ``stop`` is set; return the count."""
    producer = AIOKafkaProducer(**producer_kwargs(config))
    consumer = AIOKafkaConsumer(config.topics.input, **consumer_kwargs(config))
    await producer.start()
    await consumer.start()
    copied = 0
    started = time.monotonic()
    try:
        out = config.topics.deliver
        out_partitions = len(await producer.partitions_for(out))
        # Bound once: this is the loop whose cost is the baseline.
        getmany = consumer.getmany
        create_batch = producer.create_batch
        send_batch = producer.send_batch
        max_records = config.batch.max_records
        timeout_ms = config.batch.max_wait_ms
        while not stop.is_set():
            fetched = await getmany(timeout_ms=timeout_ms, max_records=max_records)
            if not fetched:
                continue
            acks = []
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, records in fetched.items():
                partition = tp.partition % out_partitions
                batch = create_batch()
                for r in records:
                    # The input timestamp is kept, as filterd keeps it.
                    if (
                        batch.append(timestamp=r.timestamp, key=r.key, value=r.value, headers=[])
                        is None
                    ):
                        # The builder is full (max_batch_size): ship it, start another.
                        acks.append(await send_batch(batch, out, partition=partition))
                        batch = create_batch()
                        batch.append(timestamp=r.timestamp, key=r.key, value=r.value, headers=[])
                acks.append(await send_batch(batch, out, partition=partition))
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "")
                copied += len(records)
            # At-least-once, as filterd: commit only what the broker acknowledged.
            await asyncio.gather(*acks)
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()
        log.info("raw pipe copied %d records in %.1f s", copied, time.monotonic() - started)
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.raw_pipe --config F``: run until SIGTERM."""
    return run_variant(copy_loop, variant_config("raw_pipe", __doc__, argv))


if __name__ == "__main__":
    raise SystemExit(main())
