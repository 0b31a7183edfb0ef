"""``filterd run``: the stream service.

The lifecycle follows uvicorn's Server: :meth:`Service.run` picks the event
loop, :meth:`serve` installs signal handlers and runs :meth:`startup` →
:meth:`main_loop` → :meth:`shutdown`. Signal handlers only set flags; a second
signal skips the graceful wait. Every step is bounded by a timeout.
:meth:`startup` connects the consumer and the delivery and builds the
:class:`~filterd.loop.BatchLoop` from them; :meth:`main_loop` runs it.

Fail closed: nothing is consumed until a valid consent snapshot is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, KafkaError
from prometheus_client import CollectorRegistry

from filterd import __version__, native
from filterd.acls import not_authorized
from filterd.changes.feed import ChangeFeed, accept_methods
from filterd.changes.metrics import ChangeMetrics
from filterd.changes.overlay import Overlay
from filterd.changes.replies import Replies
from filterd.changes.watermark import watermark_of
from filterd.config import Config, policy_line
from filterd.counters import ensure_counters_topic, read_changelog
from filterd.delivery import AtLeastOnce, Delivery, ExactlyOnce
from filterd.errors import BrokerError, ConfigError, FilterdError
from filterd.http import Health, HealthServer
from filterd.logs import flush_rate_limited, json_fields
from filterd.loop import BatchLoop, LoopMetrics, NoMetrics
from filterd.metrics import LoopLagMonitor, Metrics
from filterd.pipeline import OutputTopics
from filterd.preflight import preflight
from filterd.router import ROUTES, Outcome
from filterd.snapshot import ConsentSnapshot, SnapshotWatcher
from filterd.snapshot.signing import verifier_for

log = logging.getLogger(__name__)

#: At most one "still retrying" line per this many seconds while start-up waits for Kafka.
RETRY_LOG_INTERVAL_S = 10.0

#: How often a missing input topic is looked for.
INPUT_TOPIC_POLL_S = 2.0

#: The command that creates the topics a config names.
TOPICS_CREATE = "filterd topics create --config FILE"


class Service:
    """One filterd stream process: a consumer-group member routing batches."""

    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.policy = config.policy
        self.health = Health()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics: Metrics | None = (
            Metrics(
                self.registry,
                top_capped_senders=config.metrics.top_capped_senders,
                top_capped_window_s=config.metrics.top_capped_window_s,
            )
            if config.metrics.enabled
            else None
        )
        self.should_exit = False
        self.force_exit = False
        self.started_at = time.monotonic()
        self.watcher = SnapshotWatcher(
            config.snapshot.root,
            config.snapshot.poll_interval_s,
            on_swap=self._on_swap,
            on_refused=self._on_refused,
            verifier=verifier_for(config.snapshot.public_key),
            country_code=config.policy.default_country_code,
        )
        #: The batch loop, built by :meth:`startup` once Kafka is reachable.
        self.batch_loop: BatchLoop | None = None
        #: The reader of ``[topics] changes`` (None: no live changes configured).
        self.change_feed: ChangeFeed | None = None
        #: MO replies turned into changes (None: ``[topics] inbound`` off).
        self.replies: Replies | None = None

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
            except FilterdError as exc:
                # One line: what is wrong and where (the operator fixes the config or the
                # broker); the cause chain stays in the debug log.
                log.error("start-up failed: %s", exc)
                log.debug("start-up failure", exc_info=True)
                return 1
            code = 0
            if not self.should_exit:
                try:
                    await self.main_loop()
                except FilterdError as exc:
                    # A refusal no retry fixes (a missing ACL): one line, exit non-zero.
                    log.error("stopped: %s", exc)
                    code = 1
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
        stale = native.stale_warning()
        if stale is not None:
            log.warning("%s", stale)
        if self.metrics is not None:
            server = HealthServer(
                self.health, self.registry, host=cfg.metrics.host, port=cfg.metrics.port
            )
            try:
                await stack.enter_async_context(server)
            except OSError as exc:
                where = f"{cfg.metrics.host}:{cfg.metrics.port}"
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ConfigError("metrics.port", f"cannot listen on {where}: {reason}") from None
            monitor = LoopLagMonitor(self.metrics, on_tick=self.health.beat)
            await stack.enter_async_context(monitor)
        await stack.enter_async_context(self.watcher)
        # One connection first, as the clients will make it: a wrong password or an untrusted
        # certificate stops start-up in one line instead of a minute of client retries.
        await self._retry_until_started("broker", self._preflight)
        if self.should_exit or not await self._wait_for_snapshot():
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
        # Stopped on the way out even when start() never succeeded: no unclosed clients.
        stack.push_async_callback(self._bounded, "consumer", consumer.stop)
        stack.push_async_callback(self._bounded, "producer", delivery.stop)
        await self._retry_until_started("producer", delivery.start)
        outputs = await self._output_topics(delivery)
        await self._retry_until_started("consumer", consumer.start)
        metrics: LoopMetrics = self.metrics if self.metrics is not None else NoMetrics()
        feed = await self._change_feed(stack)
        replies = None
        topics = [cfg.topics.input]
        if feed is not None and cfg.topics.inbound:
            # MO replies: consumed in the group like the input, converted into changes.
            replies = Replies(cfg, lambda: feed.partitions)
            topics.append(cfg.topics.inbound)
        self.replies = replies
        if feed is not None and self.metrics is not None:
            self.registry.register(ChangeMetrics(feed, replies))
        self.batch_loop = BatchLoop(
            cfg, consumer, delivery, outputs, metrics, self.watcher,
            policy=self.policy, should_exit=lambda: self.should_exit,
            on_fetch=self.health.fetched, changes=feed, replies=replies,
            restore=functools.partial(read_changelog, cfg),
        )  # fmt: skip
        consumer.subscribe(topics, listener=_Rebalance(self.batch_loop, self.health))
        if self.health.topic_problem is not None:
            watch = asyncio.create_task(self._await_input_topic(delivery, consumer))
            stack.push_async_callback(_cancel, watch)
        log.info("%s", policy_line(cfg.policy))
        log.info(
            "filterd %s started ◆ %s → %s | %s | %s ◆ group %s ◆ snapshot %s ◆ %s ◆ %s",
            __version__, cfg.topics.input, cfg.topics.deliver, cfg.topics.block,
            cfg.topics.invalid, cfg.kafka.group_id, self.health.snapshot_version,
            cfg.delivery.mode, f"hot path {native.build_label()}",
        )  # fmt: skip

    async def main_loop(self) -> None:
        if self.batch_loop is not None:
            await self.batch_loop.run()

    async def shutdown(self) -> None:
        self.health.stopping = True
        # Lines held back by rate limiting (bad input, internal errors) go out
        # now, with their counts, rather than die with the process.
        flush_rate_limited()
        counts: Counter[Outcome] = (
            self.batch_loop.counts if self.batch_loop is not None else Counter()
        )
        batches = self.batch_loop.batches if self.batch_loop is not None else 0
        routed = {route: 0 for route in ROUTES}
        for outcome, n in counts.items():
            routed[outcome.route] += n
        total = sum(routed.values())
        elapsed = time.monotonic() - self.started_at
        log.info(
            "shutdown ◆ %d records in %d batches ◆ %s ◆ %.1fs",
            total, batches, " ".join(f"{r} {n}" for r, n in routed.items()), elapsed,
            extra=json_fields(
                event="shutdown", records=total, batches=batches, **routed,
                elapsed_s=round(elapsed, 3),
            ),
        )  # fmt: skip

    # -- helpers -------------------------------------------------------------

    async def _change_feed(self, stack: contextlib.AsyncExitStack) -> ChangeFeed | None:
        """Start reading ``[topics] changes`` from the snapshot's watermark (none: off)."""
        topic = self.config.topics.changes
        snapshot = self.watcher.current
        if not topic or snapshot is None:
            return None
        watermark = watermark_of(snapshot.manifest, topic)
        overlay = Overlay(accept_methods(snapshot.manifest))
        feed = ChangeFeed(self.config, overlay, watermark)
        await feed.start()
        stack.push_async_callback(self._bounded, "change feed", feed.stop)
        self.health.checks.append(feed.problem)
        self.change_feed = feed
        return feed

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
        await self._check_input_topic(delivery)
        partitions: dict[str, int] = {}
        for name in (t.deliver, t.block, t.invalid):
            try:
                partitions[name] = await asyncio.wait_for(delivery.partitions_for(name), 30)
            except (KafkaError, TimeoutError) as exc:
                denied = not_authorized(exc, self.config)
                if denied is not None:
                    raise denied from None
                raise BrokerError(f"cannot read metadata of topic {name!r}: {exc!r}") from exc
        missing = [name for name, count in partitions.items() if not count]
        if len(missing) == 1:
            raise BrokerError(
                f"output topic {missing[0]!r} does not exist; create it with `{TOPICS_CREATE}`"
            )
        if missing:
            raise BrokerError(
                f"output topics {', '.join(map(repr, missing))} do not exist; create them with "
                f"`{TOPICS_CREATE}`"
            )
        counters = await self._counters_topic(delivery)
        return OutputTopics(t.deliver, t.block, t.invalid, partitions, counters)

    async def _counters_topic(self, delivery: Delivery) -> str:
        """The step 4 changelog: created when missing, with the input's partitions."""
        name = self.config.topics.counters_topic
        try:
            want = await asyncio.wait_for(delivery.partitions_for(self.config.topics.input), 30)
            if not want:
                return name  # created once the input topic appears (_await_input_topic)
            # Created first (a no-op when it exists): asking a broker that creates topics on
            # first use for its metadata would create it with the wrong settings.
            try:
                await ensure_counters_topic(self.config, want)
            except BrokerError as exc:
                # Not allowed to create topics: fine when `filterd topics create` made it.
                log.info("not creating the counters changelog %s: %s", name, exc)
            have = await asyncio.wait_for(delivery.partitions_for(name), 30)
        except (KafkaError, TimeoutError) as exc:
            denied = not_authorized(exc, self.config)
            if denied is not None:
                raise denied from None
            raise BrokerError(f"cannot read metadata of topic {name!r}: {exc!r}") from exc
        if not have:
            raise BrokerError(
                f"counters topic {name!r} does not exist; create it with `{TOPICS_CREATE}`"
            )
        if have < want:
            raise BrokerError(
                f"counters topic {name!r} has {have} partitions, fewer than the input's {want}"
            )
        return name

    async def _check_input_topic(self, delivery: Delivery) -> None:
        """Refuse a missing READ on the input topic now, in one line; say once that the
        input topic does not exist.

        The consumer itself would only log the refusal and sit without partitions. A missing
        input topic is waited for (the consumer takes it once it appears); ``/readyz`` says
        why meanwhile. Anything else (a slow answer) is left to the consumer, which waits.
        """
        name = self.config.topics.input
        try:
            count = await asyncio.wait_for(delivery.partitions_for(name), 5)
        except (KafkaError, TimeoutError) as exc:
            denied = not_authorized(exc, self.config)
            if denied is not None:
                raise denied from None
            return
        if not count:
            problem = (
                f"input topic {name!r} does not exist; waiting for it "
                f"(create it with `{TOPICS_CREATE}`)"
            )
            self.health.topic_problem = problem
            log.warning("%s", problem)

    async def _await_input_topic(self, delivery: Delivery, consumer: AIOKafkaConsumer) -> None:
        """Look for the missing input topic every few seconds; when it appears, have the
        consumer refresh its metadata at once (by itself it would only at its next periodic
        refresh, ``metadata.max.age.ms``: five minutes by default)."""
        name = self.config.topics.input
        while True:
            await asyncio.sleep(INPUT_TOPIC_POLL_S)
            try:
                count = await delivery.partitions_for(name)
            except KafkaError:
                continue
            if count:
                log.info("input topic %r now exists", name)
                with contextlib.suppress(BrokerError):
                    await ensure_counters_topic(self.config, count)
                # aiokafka has no public call for this; subscribe() itself does the same.
                consumer._client.force_metadata_update()
                return

    async def _preflight(self) -> None:
        try:
            await preflight(self.config.kafka)
        except FilterdError as exc:
            if exc.retriable:
                self.health.broker_problem = str(exc)
            raise
        self.health.broker_problem = None

    async def _retry_until_started(
        self, what: str, start: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        """Run ``start`` until it succeeds; retry what may heal, at most until the deadline.

        A :class:`FilterdError` that is not ``retriable`` ends start-up at once. While
        retrying, one line every :data:`RETRY_LOG_INTERVAL_S` says why.
        """
        deadline = time.monotonic() + self.config.service.startup_timeout_s
        logged_at = -RETRY_LOG_INTERVAL_S
        while True:
            try:
                await start()
                return
            except FilterdError as exc:
                if not exc.retriable:
                    raise
                problem: str = str(exc)
                error: BaseException = exc
            except (KafkaConnectionError, KafkaError, OSError) as exc:
                servers = self.config.kafka.bootstrap_servers
                problem = f"{what} could not connect to {servers}: {exc!r}"
                error = exc
            if self.should_exit or time.monotonic() > deadline:
                raise BrokerError(problem) from error
            now = time.monotonic()
            if now - logged_at >= RETRY_LOG_INTERVAL_S:
                log.warning("not ready: %s; retrying", problem)
                logged_at = now
            await asyncio.sleep(self.config.service.retry_backoff_s)

    async def _bounded(self, what: str, stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        timeout = 0.5 if self.force_exit else self.config.service.shutdown_timeout_s
        try:
            await asyncio.wait_for(stop(), timeout)
        except TimeoutError:
            log.warning("%s did not stop within %.1fs", what, timeout)
        except Exception as exc:  # shutdown goes on whatever one part does
            log.warning("%s stopped with an error: %r", what, exc)

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


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Finish the batch in flight before partitions move; track the assignment."""

    def __init__(self, loop: BatchLoop, health: Health) -> None:
        self.batch_loop = loop
        self.health = health

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.batch_loop.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.batch_loop.assigned(assigned)
        self.health.assigned = bool(assigned)
        if assigned:
            self.health.topic_problem = None


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships for every platform we run on
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
