"""The pipelined batch loop: a revoke never waits on a loop parked in getmany().

aiokafka's getmany() can wait out a rebalance, and the rebalance waits for the
revoke listener, which waits for the batch in flight to be committed. The batch
in flight must therefore finish on its own, not only when the loop comes back.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition

from filterd.config import load_config
from filterd.delivery import AtLeastOnce, Submitted
from filterd.pipeline import PartitionOutput
from filterd.service import Service, _Work

TP = TopicPartition("in", 0)


class FakeConsumer:
    """First getmany() returns one batch; the next ones block like a rebalance."""

    def __init__(self) -> None:
        self.calls = 0
        self.rebalance_done = asyncio.Event()

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[str]]:
        self.calls += 1
        if self.calls == 1:
            return {TP: ["record"]}
        await self.rebalance_done.wait()
        return {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}


class FakeDelivery(AtLeastOnce):
    def __init__(self) -> None:  # no producer: nothing leaves the process
        self.acks = asyncio.Event()
        self.completed = 0

    async def submit(self, outputs: object) -> Submitted:
        return Submitted()

    async def complete(self, submitted: Submitted) -> list[PartitionOutput]:
        await self.acks.wait()  # the broker's acknowledgements
        self.completed += 1
        return []


async def test_revoke_is_not_blocked_by_a_loop_waiting_in_getmany() -> None:
    config = load_config(
        None, env={"FILTERD_METRICS_ENABLED": "false", "FILTERD_SERVICE_SHUTDOWN_TIMEOUT_S": "5"}
    )
    service = Service(config)
    consumer, delivery = FakeConsumer(), FakeDelivery()
    service._consumer = consumer  # type: ignore[assignment]
    service._delivery = delivery
    service._pipelined = True

    def decide(batch: dict[TopicPartition, list[str]]) -> _Work:
        todo = list(batch.items())
        return _Work(batch, None, None, service.generation, 0.0, todo)  # type: ignore[arg-type]

    service._decide = decide  # type: ignore[method-assign]
    loop_task = asyncio.create_task(service.main_loop())
    for _ in range(100):  # until the batch is in flight and the loop parked in getmany()
        await asyncio.sleep(0.01)
        if consumer.calls >= 2:
            break
    assert consumer.calls == 2
    assert delivery.completed == 0  # batch 1 produced, acknowledgements pending

    # The group rebalances: the revoke listener waits for the loop to drain.
    started = time.monotonic()
    revoke = asyncio.create_task(service._wait_idle())
    await asyncio.sleep(0.05)
    assert not revoke.done()  # the batch in flight is not committed yet
    delivery.acks.set()  # acknowledgements arrive; commit follows
    await asyncio.wait_for(revoke, 2)
    assert time.monotonic() - started < 2  # not the 5 s timeout
    assert delivery.completed == 1
    assert consumer.rebalance_done.is_set() is False  # getmany() is still parked

    service.should_exit = True
    consumer.rebalance_done.set()
    await asyncio.wait_for(loop_task, 2)
    assert service.batches == 1
