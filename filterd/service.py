"""``filterd run``: the stream service.

The lifecycle follows uvicorn's Server: :meth:`Service.run` picks the event
loop, :meth:`serve` installs signal handlers and runs :meth:`startup` →
:meth:`main_loop` → :meth:`shutdown`. Signal handlers only set flags; a second
signal skips the graceful wait. Every step is bounded by a timeout.

Fail closed: nothing is consumed until a valid consent snapshot is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, KafkaError
from prometheus_client import CollectorRegistry

from filterd import __version__, native
from filterd.config import Config
from filterd.delivery import AtLeastOnce, Delivery, ExactlyOnce, Submitted
from filterd.errors import BrokerError
from filterd.http import Health, HealthServer
from filterd.metrics import LoopLagMonitor, Metrics
from filterd.pipeline import (
    HeaderCache,
    OutputTopics,
    PartitionOutput,
    Timestamps,
    decide_partition,
)
from filterd.router import ROUTES, Decider, Outcome, Policy
from filterd.snapshot import ConsentSnapshot, SnapshotWatcher

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
_Todo = list[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]

#: Loop turns given to the producer's sender after a batch is handed over: one
#: to drain it into a produce task, one for that task to write the request.
_SENDER_STEPS = 2


@dataclass(slots=True)
class _Work:
    """One fetched batch, decided by one snapshot version."""

    batch: Batch
    decider: Decider
    headers: HeaderCache
    #: The partition assignment it was fetched under (Service.generation).
    generation: int
    started: float
    todo: _Todo
    decided: list[PartitionOutput] = field(default_factory=list)


class Service:
    """One filterd stream process: a consumer-group member routing batches."""

    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.policy = Policy.from_config(config.policy)
        self.health = Health()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics: Metrics | None = Metrics(self.registry) if config.metrics.enabled else None
        self.should_exit = False
        self.force_exit = False
        self.counts: Counter[Outcome] = Counter()
        self.batches = 0
        #: Counts partition assignments; a batch retried across one is dropped.
        self.generation = 0
        self.started_at = time.monotonic()
        self.watcher = SnapshotWatcher(
            config.snapshot.root,
            config.snapshot.poll_interval_s,
            on_swap=self._on_swap,
            on_refused=self._on_refused,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._delivery: Delivery | None = None
        self._outputs: OutputTopics | None = None
        self._decider: Decider | None = None
        self._headers: HeaderCache | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_requested = False
        self._pipelined = False
        #: The main loop is deciding or producing a batch.
        self._busy = False
        #: Acknowledgement and commit of the batch in flight (pipelined mode).
        self._finishing: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(self.serve())

    async def serve(self, *, install_signals: bool = True) -> int:
        """Start, route until asked to stop, shut down; return the exit code.

        ``install_signals=False`` leaves signal handling to the caller (tests
        and embedders stop the service by setting :attr:`should_exit`).
        """
        if install_signals:
            self._install_signal_handlers()
        async with contextlib.AsyncExitStack() as stack:
            try:
                await self.startup(stack)
            except BrokerError as exc:
                log.error("start-up failed: %s", exc)
                return 1
            code = 0
            if not self.should_exit:
                try:
                    await self.main_loop()
                except Exception:
                    # A bug, not bad input (that is routed as invalid): stop
                    # without committing what is in flight, exit non-zero so the
                    # supervisor or orchestrator restarts the process.
                    log.exception("stream stopped by an unexpected error")
                    code = 1
            await self.shutdown()
        return code

    async def startup(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        if self.metrics is not None:
            server = HealthServer(
                self.health, self.registry, host=cfg.metrics.host, port=cfg.metrics.port
            )
            await stack.enter_async_context(server)
            monitor = LoopLagMonitor(self.metrics, on_tick=self.health.beat)
            await stack.enter_async_context(monitor)
        await stack.enter_async_context(self.watcher)
        if not await self._wait_for_snapshot():
            return
        consumer = AIOKafkaConsumer(
            **cfg.kafka.client_options(),
            group_id=cfg.kafka.group_id,
            enable_auto_commit=False,
            # A new group must start from the oldest record: nothing skipped.
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_bytes=cfg.batch.fetch_max_bytes,
            max_partition_fetch_bytes=cfg.batch.max_partition_fetch_bytes,
            fetch_max_wait_ms=cfg.batch.fetch_max_wait_ms,
            session_timeout_ms=cfg.kafka.session_timeout_ms,
            heartbeat_interval_ms=cfg.kafka.heartbeat_interval_ms,
            max_poll_interval_ms=cfg.kafka.max_poll_interval_ms,
        )
        mode = ExactlyOnce if cfg.delivery.mode == "exactly-once" else AtLeastOnce
        delivery: Delivery = mode(cfg, consumer)
        self._pipelined = cfg.batch.pipelined and delivery.pipelines
        await self._retry_until_started("producer", delivery.start)
        stack.push_async_callback(self._bounded, "producer", delivery.stop)
        self._delivery = delivery
        self._outputs = await self._output_topics(delivery)
        await self._retry_until_started("consumer", consumer.start)
        stack.push_async_callback(self._bounded, "consumer", consumer.stop)
        consumer.subscribe([cfg.topics.input], listener=_Rebalance(self))
        self._consumer = consumer
        log.info(
            "filterd %s started ◆ %s → %s | %s | %s ◆ group %s ◆ snapshot %s ◆ %s ◆ %s",
            __version__, cfg.topics.input, cfg.topics.deliver, cfg.topics.block,
            cfg.topics.invalid, cfg.kafka.group_id, self.health.snapshot_version,
            cfg.delivery.mode, f"hot path {native.hot_path()}",
        )  # fmt: skip

    async def main_loop(self) -> None:
        consumer, delivery = self._consumer, self._delivery
        assert consumer is not None
        assert delivery is not None
        timeout_ms = self.config.batch.max_wait_ms
        max_records = self.config.batch.max_records
        # Pipelined (at-least-once, batch.pipelined): batch N's acknowledgements
        # and commit are awaited by a task of their own while this loop fetches
        # and decides batch N+1. N+1 is handed to the producer only once that
        # task is done, so output order and the commit rule are those of the
        # sequential loop. The task finishes on its own even while getmany()
        # waits out a rebalance, so a revoke never waits on this loop.
        while not self.should_exit:
            try:
                batch: Batch = await consumer.getmany(
                    timeout_ms=0 if self._finishing else timeout_ms, max_records=max_records
                )
            except KafkaError as exc:
                log.warning("fetch failed, retrying: %r", exc)
                await self._await_finishing()
                await asyncio.sleep(self.config.service.retry_backoff_s)
                continue
            self.health.fetched()
            if not batch:
                # Nothing to overlap with: finish the batch in flight now.
                await self._await_finishing()
                continue
            self._busy = True
            self._idle.clear()
            try:
                work = self._decide(batch)
                await self._await_finishing()
                # (A batch decided before a rebalance that completed meanwhile is
                # dropped: positions were reset to the committed offsets.)
                if work.generation == self.generation:
                    submitted = await delivery.submit(work.decided)
                    if self._pipelined and not self._drain_requested and not self.should_exit:
                        self._finishing = asyncio.create_task(self._finish(work, submitted))
                        self._finishing.add_done_callback(self._update_idle)
                        # Let the producer's sender task write the request now,
                        # before the next batch keeps the loop busy deciding.
                        for _ in range(_SENDER_STEPS):
                            await asyncio.sleep(0)
                    else:
                        await self._finish(work, submitted)
            finally:
                self._busy = False
                self._update_idle()
        await self._await_finishing()

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

    async def shutdown(self) -> None:
        self.health.stopping = True
        routed = {route: 0 for route in ROUTES}
        for outcome, n in self.counts.items():
            routed[outcome.route] += n
        total = sum(routed.values())
        elapsed = time.monotonic() - self.started_at
        log.info(
            "shutdown ◆ %d records in %d batches ◆ %s ◆ %.1fs",
            total, self.batches, " ".join(f"{r} {n}" for r, n in routed.items()), elapsed,
        )  # fmt: skip

    # -- the batch -----------------------------------------------------------

    def _decide(self, batch: Batch) -> _Work:
        """Decide every partition of ``batch`` by one snapshot version."""
        decider, headers = self._current_decider()
        todo = [(tp, records) for tp, records in batch.items() if records]
        work = _Work(batch, decider, headers, self.generation, time.perf_counter(), todo)
        work.decided = self._decide_partitions(work, todo)
        return work

    def _decide_partitions(self, work: _Work, todo: _Todo) -> list[PartitionOutput]:
        delivery, outputs = self._delivery, self._outputs
        assert delivery is not None
        assert outputs is not None
        return [
            decide_partition(
                work.decider, work.headers, tp.topic, tp.partition, records, outputs,
                functools.partial(delivery.new_builder, tp),
            )
            for tp, records in todo
        ]  # fmt: skip

    async def _finish(self, work: _Work, submitted: Submitted) -> None:
        """Acknowledge and commit ``work``, retrying what failed; then count it."""
        consumer, delivery = self._consumer, self._delivery
        assert consumer is not None
        assert delivery is not None
        failed = await delivery.complete(submitted)
        todo, decided = work.todo, work.decided
        counts: Counter[Outcome] = Counter()
        while True:
            failed_keys = {(o.topic, o.partition) for o in failed}
            for out in decided:
                if (out.topic, out.partition) not in failed_keys:
                    counts.update(out.counts)
            if not failed:
                break
            if self.metrics is not None:
                self.metrics.produce_error(sum(sum(o.counts.values()) for o in failed))
            if self.should_exit:
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
            # Retry only partitions still ours, with the same snapshot version,
            # so a retried record gets the same decision.
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
        if self.metrics is not None:
            seconds = time.perf_counter() - work.started
            batch = work.batch
            records = sum(len(r) for r in batch.values())
            # An Outcome is a (route, reason) tuple: the counter is the mapping it takes.
            by_reason = cast("Mapping[tuple[str, str], int]", counts)
            self.metrics.record_batch(by_reason, records, seconds)
            for tp, recs in batch.items():
                if recs:
                    self.metrics.observe_end_to_end(Timestamps(recs))
                    high = consumer.highwater(tp)
                    if high is not None:
                        self.metrics.set_lag(tp.topic, tp.partition, high - recs[-1].offset - 1)
            if counts:
                self.metrics.commit()

    def _current_decider(self) -> tuple[Decider, HeaderCache]:
        # Read the snapshot once per batch: the whole batch is decided by one
        # version, and a swap takes effect from the next batch on.
        snapshot = self.watcher.current
        assert snapshot is not None, "consuming without a snapshot"
        if self._decider is None or self._decider.snapshot is not snapshot:
            self._decider = Decider(snapshot, self.policy)
            self._headers = HeaderCache(snapshot.version)
        assert self._headers is not None
        return self._decider, self._headers

    # -- helpers -------------------------------------------------------------

    async def _wait_for_snapshot(self) -> bool:
        root = self.config.snapshot.root
        waited = 0.0
        while self.watcher.current is None:
            if self.should_exit:
                return False
            if waited % 30 == 0:
                log.warning(
                    "not ready: no valid consent snapshot under %s; consuming nothing", root
                )
            await asyncio.sleep(0.5)
            waited += 0.5
        return True

    async def _output_topics(self, delivery: Delivery) -> OutputTopics:
        t = self.config.topics
        partitions: dict[str, int] = {}
        for name in (t.deliver, t.block, t.invalid):
            try:
                count = await asyncio.wait_for(delivery.partitions_for(name), 30)
            except (KafkaError, TimeoutError) as exc:
                raise BrokerError(f"cannot read metadata of topic {name!r}: {exc!r}") from exc
            if not count:
                raise BrokerError(f"output topic {name!r} does not exist; create it first")
            partitions[name] = count
        return OutputTopics(t.deliver, t.block, t.invalid, partitions)

    async def _retry_until_started(
        self, what: str, start: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        deadline = time.monotonic() + self.config.service.startup_timeout_s
        while True:
            try:
                await start()
                return
            except (KafkaConnectionError, KafkaError, OSError) as exc:
                if self.should_exit or time.monotonic() > deadline:
                    servers = self.config.kafka.bootstrap_servers
                    raise BrokerError(f"{what} could not connect to {servers}: {exc!r}") from exc
                log.warning("%s not connected yet (%r); retrying", what, exc)
                await asyncio.sleep(self.config.service.retry_backoff_s)

    async def _bounded(self, what: str, stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        timeout = 0.5 if self.force_exit else self.config.service.shutdown_timeout_s
        try:
            await asyncio.wait_for(stop(), timeout)
        except TimeoutError:
            log.warning("%s did not stop within %.1fs", what, timeout)
        except Exception as exc:  # shutdown goes on whatever one part does
            log.warning("%s stopped with an error: %r", what, exc)

    async def _wait_idle(self) -> None:
        # A pipelined loop is never idle under steady load: ask it to finish the
        # batch in flight and the one in hand without starting another.
        self._drain_requested = True
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.service.shutdown_timeout_s)
        except TimeoutError:
            log.warning("batch still in flight at rebalance; its partitions will be redone")
        finally:
            self._drain_requested = False

    def _on_swap(self, snapshot: ConsentSnapshot, seconds: float) -> None:
        self.health.snapshot_version = snapshot.version
        if self.metrics is not None:
            self.metrics.snapshot_loaded(
                snapshot.version, snapshot.consents, snapshot.created_at.timestamp(), seconds
            )

    def _on_refused(self, version: str, error: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.snapshot_refused()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Finish the batch in flight before partitions move; track the assignment."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        service = self.service
        await service._wait_idle()
        if service._delivery is not None:
            await service._delivery.revoked(revoked)
        if service.metrics is not None:
            service.metrics.forget_partitions((tp.topic, tp.partition) for tp in revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        service = self.service
        service.generation += 1
        if service._delivery is not None:
            await service._delivery.assigned(assigned)
        service.health.assigned = bool(assigned)
        if service.metrics is not None:
            service.metrics.rebalance()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships for every platform we run on
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
