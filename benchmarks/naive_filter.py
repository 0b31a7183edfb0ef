"""The naive filter: what a team writes first, for comparison.

Same work as filterd — the same snapshot, the same policy, the same decision
function (:class:`filterd.router.Decider`, built once, as ``filterd run`` does), the
same three output topics and the same four headers — in the obvious shape from
aiokafka's README: iterate the consumer one message at a time, decide it,
``await producer.send(...)`` it, and commit. Client settings come from the same
config file as filterd's, so only the plumbing differs.

It stays at-least-once like filterd: the offsets are committed once the sends
before them are acknowledged, every ``[batch] max_records`` messages (committing
after every message would be a strawman, not what a team ships).

    python -m benchmarks.naive_filter --config run.toml
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks._common import consumer_kwargs, producer_kwargs, run_variant, variant_config
from filterd.config import Config
from filterd.router import Decider

log = logging.getLogger("benchmarks.naive_filter")


async def filter_loop(config: Config, stop: asyncio.Event) -> int:
    """Decide and route ``topics.input`` message by message until ``stop`` is set."""
    from filterd.snapshot import load_snapshot

    snapshot = load_snapshot(config.snapshot.root)
    decider = Decider(snapshot, config.policy)
    version = snapshot.version.encode()
    topics = {
        "deliver": config.topics.deliver,
        "block": config.topics.block,
        "invalid": config.topics.invalid,
    }
    producer = AIOKafkaProducer(**producer_kwargs(config))
    consumer = AIOKafkaConsumer(config.topics.input, **consumer_kwargs(config))
    await producer.start()
    await consumer.start()
    commit_every = config.batch.max_records
    pending: list[asyncio.Future[object]] = []
    handled = 0
    started = time.monotonic()

    async def commit() -> None:
        # Positions of the messages already handed out; their sends must land first.
        await asyncio.gather(*pending)
        pending.clear()
        await consumer.commit()

    async def consume() -> None:
        nonlocal handled
        async for msg in consumer:
            route, reason = decider.decide(msg.value)
            headers = [
                ("filterd-route", route.encode()),
                ("filterd-reason", reason.encode()),
                ("filterd-snapshot", version),
                ("filterd-source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
            ]
            # The default partitioner hashes the key, as most code leaves it.
            fut = await producer.send(topics[route], msg.value, key=msg.key, headers=headers)
            pending.append(fut)
            handled += 1
            if len(pending) >= commit_every:
                await commit()

    task = asyncio.ensure_future(consume())
    try:
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if task.done():
            task.result()  # re-raise a crash of the loop
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await commit()
    finally:
        await consumer.stop()
        await producer.stop()
        log.info("naive filter routed %d records in %.1f s", handled, time.monotonic() - started)
    return handled


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.naive_filter --config F``: run until SIGTERM."""
    return run_variant(filter_loop, variant_config("naive_filter", __doc__, argv))


if __name__ == "__main__":
    raise SystemExit(main())
