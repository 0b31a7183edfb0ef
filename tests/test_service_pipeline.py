"""The pipelined batch loop, driven with a fake consumer and delivery (no broker).

aiokafka's getmany() can wait out a rebalance, and the rebalance waits for the
revoke listener, which waits for the batch in flight to be committed. The batch
in flight must therefore finish on its own, not only when the loop comes back.

A batch holds a lease on the snapshot version it was decided with until it is
acknowledged: a version swapped out mid-batch is emptied only after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import TopicPartition

from filterd.config import load_config
from filterd.delivery import Submitted
from filterd.loop import BatchLoop, NoMetrics
from filterd.pipeline import OutputTopics, PartitionOutput
from filterd.snapshot import SnapshotWatcher, build_snapshot

TP = TopicPartition("in", 0)
BASE = 8613800000000
OUTPUTS = OutputTopics("deliver", "block", "invalid", {"deliver": 1, "block": 1, "invalid": 1})


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def _record(offset: int, recipient: str = f"+{BASE + 1}") -> Record:
    value = orjson.dumps({"id": f"m{offset}", "sender": "s", "recipient": recipient})
    return Record(offset, 0, None, value)


class FakeConsumer:
    """First getmany() returns one batch; the next ones block like a rebalance."""

    def __init__(self, records: list[Record] | None = None) -> None:
        self.calls = 0
        self.rebalance_done = asyncio.Event()
        self.records = records if records is not None else [_record(0), _record(1)]

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Record]]:
        self.calls += 1
        if self.calls == 1:
            return {TP: self.records}
        await self.rebalance_done.wait()
        return {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def highwater(self, tp: TopicPartition) -> int | None:
        return 2


class FakeBuilder:
    def __init__(self) -> None:
        self.records: list[bytes | None] = []

    def append(
        self, timestamp: int, key: bytes | None, value: bytes | None, headers: bytes,
        header_count: int,
    ) -> bool:  # fmt: skip
        self.records.append(value)
        return True

    def record_count(self) -> int:
        return len(self.records)


class FakeDelivery:
    """Takes every batch; its acknowledgements arrive when the test says so."""

    pipelines = True
    fatal = None

    def __init__(self) -> None:
        self.acks = asyncio.Event()
        self.completed = 0
        self.submitted: list[PartitionOutput] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def new_builder(self, tp: TopicPartition) -> FakeBuilder:
        return FakeBuilder()

    async def partitions_for(self, topic: str) -> int:
        return 1

    async def deliver(self, outputs: Sequence[PartitionOutput]) -> list[PartitionOutput]:
        return await self.complete(await self.submit(outputs))

    async def submit(self, outputs: Sequence[PartitionOutput]) -> Submitted:
        self.submitted.extend(outputs)
        return Submitted()

    async def complete(self, submitted: Submitted) -> list[PartitionOutput]:
        await self.acks.wait()  # the broker's acknowledgements
        self.completed += 1
        return []

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None: ...

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None: ...


def _build(tmp: Path, root: Path, k: int) -> str:
    """Version k: sender "s" consented by number BASE + k only."""
    path = tmp / f"c{k}.csv"
    path.write_text(f"sender,recipient\ns,+{BASE + k}\n")
    return build_snapshot(root, path, keep=100)


class CountingMetrics(NoMetrics):
    """NoMetrics that keeps what the loop reports of recipients without "+"."""

    def __init__(self) -> None:
        self.without_plus: list[int] = []

    def recipients_without_plus(self, count: int) -> None:
        self.without_plus.append(count)


class Harness:
    def __init__(
        self,
        watcher: SnapshotWatcher,
        consumer: FakeConsumer | None = None,
        metrics: NoMetrics | None = None,
    ) -> None:
        config = load_config(
            None,
            env={"FILTERD_METRICS_ENABLED": "false", "FILTERD_SERVICE_SHUTDOWN_TIMEOUT_S": "5"},
        )
        self.consumer = consumer if consumer is not None else FakeConsumer()
        self.delivery = FakeDelivery()
        self.should_exit = False
        self.loop = BatchLoop(
            config, self.consumer, self.delivery, OUTPUTS, metrics or NoMetrics(), watcher,
            policy=config.policy, should_exit=lambda: self.should_exit,
        )  # fmt: skip
        assert self.loop.pipelined

    async def until_in_flight(self) -> asyncio.Task[None]:
        """Run the loop until batch 1 is produced and the loop is parked in getmany()."""
        task = asyncio.create_task(self.loop.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if self.consumer.calls >= 2:
                break
        assert self.consumer.calls == 2
        assert self.delivery.completed == 0  # batch 1 produced, acknowledgements pending
        return task

    async def stop(self, task: asyncio.Task[None]) -> None:
        self.should_exit = True
        self.consumer.rebalance_done.set()
        await asyncio.wait_for(task, 2)


async def test_revoke_is_not_blocked_by_a_loop_waiting_in_getmany(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    _build(tmp_path, root, 1)
    async with SnapshotWatcher(root, 3600) as watcher:
        h = Harness(watcher)
        loop_task = await h.until_in_flight()

        # The group rebalances: the revoke listener waits for the loop to drain.
        revoke = asyncio.create_task(h.loop.revoked({TP}))
        await asyncio.sleep(0.05)
        assert not revoke.done()  # the batch in flight is not committed yet
        h.delivery.acks.set()  # acknowledgements arrive; commit follows
        await asyncio.wait_for(revoke, 2)  # long before the 5 s drain timeout
        assert h.delivery.completed == 1
        assert h.consumer.rebalance_done.is_set() is False  # getmany() is still parked

        await h.stop(loop_task)
        assert h.loop.batches == 1
        assert sum(h.loop.counts.values()) == 2


async def test_a_version_swapped_mid_batch_is_freed_after_the_batch(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    _build(tmp_path, root, 1)
    async with SnapshotWatcher(root, 3600) as watcher:  # no polls: the test swaps
        v1 = watcher.current
        assert v1 is not None
        h = Harness(watcher)
        loop_task = await h.until_in_flight()
        assert watcher.leases(v1) == 1  # batch 1, decided with v1, awaits its acks

        await asyncio.to_thread(_build, tmp_path, root, 2)
        await watcher.check()
        assert watcher.current is not v1  # v2 in force
        assert await watcher.release_retired() == 0  # batch 1 still holds v1
        assert v1.consented("s", BASE + 1)

        h.delivery.acks.set()  # batch 1 acknowledged and committed
        for _ in range(100):
            if h.loop.batches:
                break
            await asyncio.sleep(0.01)
        assert h.loop.batches == 1
        assert watcher.leases(v1) == 0
        assert await watcher.release_retired() == 1
        assert len(v1.senders) == 0  # emptied once its last reader finished
        assert watcher.current.consented("s", BASE + 2)  # v2 untouched
        # Batch 1 was decided by v1: number BASE + 1 had consent there.
        assert {o.reason for out in h.delivery.submitted for o in out.counts} == {"consent"}
        await h.stop(loop_task)


async def test_recipients_without_plus_reach_the_metrics_once_per_batch(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    _build(tmp_path, root, 1)
    records = [_record(0, "8613800001111"), _record(1), _record(2, "14155550100")]
    records.append(_record(3, "８６１３８００００２２２２"))
    metrics = CountingMetrics()
    async with SnapshotWatcher(root, 3600) as watcher:
        h = Harness(watcher, FakeConsumer(records), metrics)
        loop_task = await h.until_in_flight()
        assert metrics.without_plus == []  # counted with the batch, once acknowledged
        h.delivery.acks.set()
        for _ in range(100):
            if h.loop.batches:
                break
            await asyncio.sleep(0.01)
        await h.stop(loop_task)
    assert metrics.without_plus == [2]
