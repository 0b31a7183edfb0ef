"""The batch loop of ``filterd run``: fetch, decide, produce, acknowledge, commit.

:class:`BatchLoop` is built from everything it needs, already started: the
consumer, the delivery (producers and commits), the output topics, the
metrics and a source of snapshot leases. :class:`~filterd.service.Service`
owns the lifecycle (start-up, signals, shutdown) and builds one once Kafka is
reachable; tests drive one with fakes.

A batch takes one :class:`~filterd.snapshot.Lease` on the snapshot in force
and keeps it until the batch is acknowledged and committed (or dropped), so
every record of it, retries included, is decided by that one version, and a
version swapped out meanwhile is emptied only after that.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from filterd.acls import not_authorized
from filterd.config import Config
from filterd.delivery import Delivery, Submitted
from filterd.errors import BrokerError, FilterdError
from filterd.limits import LimitRules, PartitionLimits
from filterd.pipeline import (
    HeaderCache,
    OutputTopics,
    PartitionOutput,
    Timestamps,
    decide_partition,
)
from filterd.router import Decider, Outcome, Policy

if TYPE_CHECKING:
    from filterd.changes.feed import ChangeFeed
    from filterd.changes.replies import Replies
    from filterd.snapshot import Lease

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
_Todo = list[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]

#: Loop turns given to the producer's sender after a batch is handed over: one
#: to drain it into a produce task, one for that task to write the request.
_SENDER_STEPS = 2


class Consumer(Protocol):
    """What the loop uses of aiokafka's AIOKafkaConsumer."""

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Batch: ...

    def assignment(self) -> set[TopicPartition]: ...

    def highwater(self, tp: TopicPartition) -> int | None: ...


class Leases(Protocol):
    """Where a batch gets the snapshot version it is decided by (SnapshotWatcher)."""

    def lease(self) -> Lease: ...


class LoopMetrics(Protocol):
    """What the loop reports (:class:`filterd.metrics.Metrics`, or :class:`NoMetrics`)."""

    def record_batch(
        self, counts: Mapping[tuple[str, str], int], records: int, seconds: float
    ) -> None: ...

    def observe_end_to_end(
        self, timestamps_ms: Sequence[int | None], acked_at: float | None = None
    ) -> int: ...

    def set_lag(self, topic: str, partition: int, lag: int) -> None: ...

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None: ...

    def produce_error(self, count: int = 1) -> None: ...

    def recipients_without_plus(self, count: int) -> None: ...

    def rebalance(self) -> None: ...

    def commit(self) -> None: ...

    def record_limits(
        self, would_block: Mapping[str, int], foreign_keys: int, unusable_times: int
    ) -> None: ...

    def set_limits_state(self, live_counters: int, restore_seconds: float) -> None: ...

    def record_capped_senders(self, counts: Mapping[str, int]) -> None: ...


class NoMetrics:
    """Metrics disabled (``[metrics] enabled = false``): every report is dropped."""

    def record_batch(
        self, counts: Mapping[tuple[str, str], int], records: int, seconds: float
    ) -> None:
        return None

    def observe_end_to_end(
        self, timestamps_ms: Sequence[int | None], acked_at: float | None = None
    ) -> int:
        return 0

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        return None

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        return None

    def produce_error(self, count: int = 1) -> None:
        return None

    def recipients_without_plus(self, count: int) -> None:
        return None

    def rebalance(self) -> None:
        return None

    def commit(self) -> None:
        return None

    def record_limits(
        self, would_block: Mapping[str, int], foreign_keys: int, unusable_times: int
    ) -> None:
        return None

    def set_limits_state(self, live_counters: int, restore_seconds: float) -> None:
        return None

    def record_capped_senders(self, counts: Mapping[str, int]) -> None:
        return None


@dataclass(slots=True)
class _Work:
    """One fetched batch, decided by one snapshot version."""

    batch: Batch
    lease: Lease
    decider: Decider
    headers: HeaderCache
    #: The partition assignment it was fetched under (BatchLoop.generation).
    generation: int
    started: float
    todo: _Todo
    decided: list[PartitionOutput] = field(default_factory=list)
    #: Recipients of the batch that looked like E.164 without "+" (first decision only).
    without_plus: int = 0
    #: When the batch was read (epoch ms): the time of records without a usable timestamp.
    read_ms: int = -1


def _newest(batch: Batch) -> int:
    """The newest record time of a batch (epoch ms)."""
    return max((r.timestamp for records in batch.values() for r in records), default=0)


class BatchLoop:
    """Routes fetched batches until ``should_exit()`` says stop.

    ``pipelined`` (at-least-once, ``batch.pipelined``): batch N's
    acknowledgements and commit are awaited by a task of their own while the
    loop fetches and decides batch N+1. It is ignored when the delivery cannot
    pipeline (exactly-once).
    """

    def __init__(
        self,
        config: Config,
        consumer: Consumer,
        delivery: Delivery,
        outputs: OutputTopics,
        metrics: LoopMetrics,
        snapshots: Leases,
        *,
        policy: Policy,
        should_exit: Callable[[], bool],
        on_fetch: Callable[[], None] = lambda: None,
        changes: ChangeFeed | None = None,
        replies: Replies | None = None,
        restore: Callable[
            [list[int]], Awaitable[Mapping[int, Iterable[tuple[bytes | None, bytes | None]]]]
        ]
        | None = None,
    ) -> None:
        self.config = config
        self.consumer = consumer
        self.delivery = delivery
        self.outputs = outputs
        self.metrics = metrics
        self.snapshots = snapshots
        self.policy = policy
        self.should_exit = should_exit
        self.on_fetch = on_fetch
        #: The live consent changes (None: the snapshot alone decides).
        self.changes = changes
        #: MO replies turned into changes (None: ``[topics] inbound`` is off).
        self.replies = replies
        self.pipelined = config.batch.pipelined and delivery.pipelines
        self.counts: Counter[Outcome] = Counter()
        self.batches = 0
        #: Counts partition assignments; a batch retried across one is dropped.
        self.generation = 0
        self._decider: Decider | None = None
        self._headers: HeaderCache | None = None
        #: Step 4: the rules, and the counters of each assigned input partition.
        self._rules = LimitRules(policy)
        self.limits: dict[TopicPartition, PartitionLimits] = {}
        #: Reads changelog partitions (filterd.counters.read_changelog); None: no changelog.
        self.restore = restore
        #: Seconds the last restore on assignment took, and counters it restored.
        self.restore_seconds = 0.0
        self.restored_counters = 0
        # Clear while an assignment restores counters: the consumer may hand out records
        # of the new partitions before the rebalance listener returns, and none may be
        # decided before its partition's counters are back.
        self._restored = asyncio.Event()
        #: Why the loop must stop (a failed counters restore); raised by run().
        self.fatal: FilterdError | None = None
        self._restored.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_requested = False
        #: The loop is deciding or producing a batch.
        self._busy = False
        #: Acknowledgement and commit of the batch in flight (pipelined mode).
        self._finishing: asyncio.Task[None] | None = None

    async def run(self) -> None:
        consumer = self.consumer
        timeout_ms = self.config.batch.max_wait_ms
        max_records = self.config.batch.max_records
        # Pipelined (at-least-once, batch.pipelined): batch N's acknowledgements
        # and commit are awaited by a task of their own while this loop fetches
        # and decides batch N+1. N+1 is handed to the producer only once that
        # task is done, so output order and the commit rule are those of the
        # sequential loop. The task finishes on its own even while getmany()
        # waits out a rebalance, so a revoke never waits on this loop.
        while not self.should_exit():
            if self.delivery.fatal is not None:
                raise self.delivery.fatal
            if self.fatal is not None:
                raise self.fatal
            try:
                batch: Batch = await consumer.getmany(
                    timeout_ms=0 if self._finishing else timeout_ms, max_records=max_records
                )
            except KafkaError as exc:
                denied = not_authorized(exc, self.config)
                if denied is not None:
                    raise denied from None
                log.warning("fetch failed, retrying: %r", exc)
                await self._await_finishing()
                await asyncio.sleep(self.config.service.retry_backoff_s)
                continue
            self.on_fetch()
            if not batch:
                # Nothing to overlap with: finish the batch in flight now.
                await self._await_finishing()
                continue
            # The assignment this batch was fetched under: a batch fetched before a
            # rebalance is dropped (its records are fetched again from the commit).
            generation = self.generation
            if not self._restored.is_set():
                await self._restored.wait()
            if self.fatal is not None:
                # The restore failed: nothing is decided on counters that start from zero.
                raise self.fatal
            self._busy = True
            self._idle.clear()
            try:
                await self._route(batch, generation)
            finally:
                self._busy = False
                self._update_idle()
        await self._await_finishing()

    async def _route(self, batch: Batch, generation: int | None = None) -> None:
        if self.changes is not None:
            # Never decide on stale consent: every change appended up to 1 s before the
            # newest record's time is applied first (filterd.changes.feed), on top of the
            # snapshot the batch will be decided by (no await between here and _decide).
            lease = self.snapshots.lease()
            try:
                self.changes.rebase(lease.snapshot)
            finally:
                lease.release()
            if not await self.changes.wait_fresh(_newest(batch), self.should_exit):
                return  # stopping: the batch is not decided, so not committed
        work = self._decide(batch, generation)
        handed_over = False
        try:
            await self._await_finishing()
            # (A batch decided before a rebalance that completed meanwhile is
            # dropped: positions were reset to the committed offsets.)
            if work.generation != self.generation:
                return
            submitted = await self.delivery.submit(work.decided)
            if self.pipelined and not self._drain_requested and not self.should_exit():
                self._finishing = asyncio.create_task(self._finish(work, submitted))
                self._finishing.add_done_callback(self._update_idle)
                handed_over = True
                # Let the producer's sender task write the request now,
                # before the next batch keeps the loop busy deciding.
                for _ in range(_SENDER_STEPS):
                    await asyncio.sleep(0)
            else:
                handed_over = True
                await self._finish(work, submitted)
        finally:
            if not handed_over:
                work.lease.release()

    async def _await_finishing(self) -> None:
        """Wait for the batch in flight to be acknowledged and committed (re-raises a bug)."""
        task = self._finishing
        if task is not None:
            try:
                await task
            finally:
                self._finishing = None
                self._update_idle()

    def _update_idle(self, _task: object = None) -> None:
        """Idle: no batch being decided or produced, none waiting for its commit."""
        if not self._busy and (self._finishing is None or self._finishing.done()):
            self._idle.set()
        else:
            self._idle.clear()

    async def wait_idle(self) -> None:
        """Let the batch in hand and the one in flight finish (at a rebalance)."""
        # A pipelined loop is never idle under steady load: ask it to finish the
        # batch in flight and the one in hand without starting another.
        self._drain_requested = True
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.service.shutdown_timeout_s)
        except TimeoutError:
            log.warning("batch still in flight at rebalance; its partitions will be redone")
        finally:
            self._drain_requested = False

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batch in flight before partitions move."""
        await self.wait_idle()
        await self.delivery.revoked(revoked)
        # A partition's counters move with it (its next owner restores them).
        for tp in revoked:
            self.limits.pop(tp, None)
        self.metrics.forget_partitions((tp.topic, tp.partition) for tp in revoked)

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        self.generation += 1
        # A partition's counters are rebuilt from the changelog before any of its records
        # is decided: run() waits for _restored, cleared from the start of the assignment.
        self._restored.clear()
        try:
            await self.delivery.assigned(assigned)
            # Counters belong to input partitions; an inbound (MO reply) partition has none.
            inbound = self.replies.inbound if self.replies is not None else None
            inputs = {tp for tp in assigned if tp.topic != inbound}
            if self.restore is not None and inputs:
                try:
                    await self._restore(inputs)
                except (KafkaError, OSError, FilterdError) as exc:
                    # Counters go on from what was delivered, never from zero: without
                    # them the process stops (a restart retries the restore).
                    self.fatal = (
                        not_authorized(exc, self.config) if isinstance(exc, KafkaError) else None
                    ) or (
                        exc
                        if isinstance(exc, FilterdError)
                        else BrokerError(f"restoring counters failed: {exc!r}")
                    )
        finally:
            self._restored.set()
        self.metrics.rebalance()

    async def _restore(self, assigned: set[TopicPartition]) -> None:
        assert self.restore is not None
        started = time.perf_counter()
        logs = await self.restore(sorted(tp.partition for tp in assigned))
        restored = 0
        for tp in assigned:
            limits = PartitionLimits(self._rules)
            limits.tracking = True
            restored += limits.restore(logs.get(tp.partition, ()))
            self.limits[tp] = limits
        self.restore_seconds = time.perf_counter() - started
        self.restored_counters = restored
        log.info(
            "restored %d counters of %d partitions in %.2fs",
            restored, len(assigned), self.restore_seconds,
        )  # fmt: skip

    # -- the batch -----------------------------------------------------------

    def _decide(self, batch: Batch, generation: int | None = None) -> _Work:
        """Decide every partition of ``batch`` by one snapshot version."""
        # One lease per batch: the whole batch is decided by one version, and a
        # swap takes effect from the next batch on.
        lease = self.snapshots.lease()
        try:
            snapshot = lease.snapshot
            if self._decider is None or self._decider.snapshot is not snapshot:
                overlay = None
                if self.changes is not None:
                    overlay = self.changes.rebase(snapshot)
                self._decider = Decider(snapshot, self.policy, overlay=overlay)
                self._headers = HeaderCache(snapshot.version)
            assert self._headers is not None
            todo = [(tp, records) for tp, records in batch.items() if records]
            work = _Work(
                batch, lease, self._decider, self._headers,
                self.generation if generation is None else generation,
                time.perf_counter(), todo, read_ms=time.time_ns() // 1_000_000,
            )  # fmt: skip
            before = self._decider.without_plus
            work.decided = self._decide_partitions(work, todo)
            work.without_plus = self._decider.without_plus - before
        except BaseException:
            lease.release()
            raise
        return work

    def partition_limits(self, tp: TopicPartition) -> PartitionLimits:
        """The counters of input partition ``tp`` (new ones on its first batch)."""
        found = self.limits.get(tp)
        if found is None:
            found = self.limits[tp] = PartitionLimits(self._rules)
            found.tracking = self.restore is not None
        return found

    def _decide_partitions(self, work: _Work, todo: _Todo) -> list[PartitionOutput]:
        delivery, outputs, replies = self.delivery, self.outputs, self.replies
        return [
            replies.convert(
                tp.topic, tp.partition, records, functools.partial(delivery.new_builder, tp)
            )
            if replies is not None and tp.topic == replies.inbound
            else decide_partition(
                work.decider, work.headers, tp.topic, tp.partition, records, outputs,
                functools.partial(delivery.new_builder, tp), self.partition_limits(tp),
                work.read_ms,
            )
            for tp, records in todo
        ]  # fmt: skip

    async def _finish(self, work: _Work, submitted: Submitted) -> None:
        """Acknowledge and commit ``work``, retrying what failed; then count it."""
        try:
            await self._complete(work, submitted)
        finally:
            work.lease.release()

    async def _complete(self, work: _Work, submitted: Submitted) -> None:
        consumer, delivery, metrics = self.consumer, self.delivery, self.metrics
        failed = await delivery.complete(submitted)
        todo, decided = work.todo, work.decided
        counts: Counter[Outcome] = Counter()
        while True:
            failed_keys = {(o.topic, o.partition) for o in failed}
            for out in decided:
                if (out.topic, out.partition) not in failed_keys:
                    counts.update(out.counts)
                    limits = self.limits.get(TopicPartition(out.topic, out.partition))
                    if limits is not None:
                        limits.committed(out.next_offset)
                    if out.would_block or out.foreign_keys or out.unusable_times:
                        metrics.record_limits(out.would_block, out.foreign_keys, out.unusable_times)
                    if out.capped_senders:
                        metrics.record_capped_senders(out.capped_senders)
            if not failed:
                break
            metrics.produce_error(sum(sum(o.counts.values()) for o in failed))
            if self.should_exit():
                # Nothing of these partitions was committed: the next owner
                # (or this process after a restart) decides them again.
                log.warning(
                    "shutting down with %d partitions unproduced; not committed", len(failed)
                )
                break
            await asyncio.sleep(self.config.service.retry_backoff_s)
            if self.generation != work.generation:
                # The group rebalanced meanwhile: positions were reset to the
                # committed offsets, so these records are fetched again.
                log.warning("rebalanced while retrying: %d partitions left to refetch", len(failed))
                break
            # Retry only partitions still ours, with the same snapshot version
            # (the batch's lease keeps it intact), so a retried record gets the
            # same decision.
            assignment = consumer.assignment()
            todo = [
                (tp, r)
                for tp, r in todo
                if (tp.topic, tp.partition) in failed_keys and tp in assignment
            ]
            if not todo:
                break
            decided = self._decide_partitions(work, todo)
            failed = await delivery.deliver(decided)
        self.counts.update(counts)
        self.batches += 1
        seconds = time.perf_counter() - work.started
        batch = work.batch
        records = sum(len(r) for r in batch.values())
        # An Outcome is a (route, reason) tuple: the counter is the mapping it takes.
        by_reason = cast("Mapping[tuple[str, str], int]", counts)
        metrics.record_batch(by_reason, records, seconds)
        if work.without_plus:
            metrics.recipients_without_plus(work.without_plus)
        for tp, recs in batch.items():
            if recs:
                metrics.observe_end_to_end(Timestamps(recs))
                high = consumer.highwater(tp)
                if high is not None:
                    metrics.set_lag(tp.topic, tp.partition, high - recs[-1].offset - 1)
        if counts:
            metrics.commit()
        metrics.set_limits_state(
            sum(limits.live() for limits in self.limits.values()), self.restore_seconds
        )
