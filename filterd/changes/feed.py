"""The change feed of ``filterd run``: the changes topic read whole, outside the group.

Every process reads every partition of ``[topics] changes`` with a consumer of its own
(manual assignment, no group), from the watermark of the snapshot in force (the beginning
when it has none), like a global table. A background task keeps fetching; the batch loop
applies what was fetched between batches (:meth:`ChangeFeed.drain`), so a batch is decided
by one state of the overlay.

Bounded staleness (docs/contract.md "Live consent changes"): a change appended at time t
must apply to every input record whose time is t + 1 s or later. The task repeatedly asks
the broker for the end offsets of the changes topic, noting the wall-clock time ``asked``
just before asking, and fetches up to them: every change appended before ``asked`` is then
fetched, and :attr:`ChangeFeed.fresh_ms` becomes ``asked``. A batch whose newest record time
is ``r`` may be decided once ``fresh_ms > r - 1000`` (every change appended at
``r - 1000`` or before is applied); until then the loop waits (:meth:`ChangeFeed.wait_fresh`)
and fetches no more input. When the feed cannot catch up for longer than the bound (the
topic missing, the broker unreachable, a flood of changes) :meth:`ChangeFeed.problem` says
why and ``/readyz`` fails with it; the loop decides nothing it could decide wrongly.

Malformed change records are skipped, counted (:attr:`ChangeFeed.bad`) and logged at most
every 10 s with their offset; they never stop the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from filterd.acls import not_authorized
from filterd.changes.model import BadChange, Change, ChangeRef, parse_change
from filterd.changes.overlay import Overlay, fits
from filterd.changes.watermark import watermark_of
from filterd.config import Config
from filterd.delivery import client_topic_partitions
from filterd.errors import FilterdError
from filterd.logs import RateLimitedLogger
from filterd.snapshot.evidence import DEFAULT_ACCEPT_METHODS

__all__ = ["BOUND_MS", "ChangeFeed"]

log = logging.getLogger(__name__)
_bad_changes = RateLimitedLogger(log, 10.0)

#: A change appended at t applies to input records of time t + BOUND_MS or later.
BOUND_MS: Final = 1000
#: How often the end offsets are asked for while the feed is idle.
REFRESH_S: Final = 0.1


def accept_methods(manifest: Mapping[str, object] | None) -> tuple[str, ...]:
    """The methods a snapshot accepts (its manifest), for consents of live changes."""
    methods = (manifest or {}).get("accept_methods")
    if isinstance(methods, list):
        return tuple(str(m) for m in methods)
    return DEFAULT_ACCEPT_METHODS


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ChangeFeed:
    """Reads ``[topics] changes`` into an :class:`Overlay` (see the module doc)."""

    def __init__(self, config: Config, overlay: Overlay, watermark: Mapping[int, int]) -> None:
        self.config = config
        self.topic = config.topics.changes
        self.overlay = overlay
        self.start_watermark = dict(watermark)
        overlay.watermark = dict(watermark)
        #: Epoch ms as of which every appended change is applied once :meth:`drain` ran.
        self.fresh_ms = 0
        #: Changes skipped as malformed, and why (counted per reason).
        self.bad: Counter[str] = Counter()
        #: Changes applied, per op and source.
        self.applied: Counter[tuple[str, str]] = Counter()
        #: Per partition: the end offsets last asked for, and the next offset to fetch.
        self.ends: dict[int, int] = {}
        self.positions: dict[int, int] = {}
        self._fetched: list[tuple[ChangeRef, Change]] = []
        self._fetched_fresh_ms = 0
        #: Append time of the oldest fetched change not applied yet (0: none).
        self._oldest_fetched_ms = 0
        self._caught_up = asyncio.Event()
        self._problem: str | None = None
        #: A refusal no retry fixes (a missing ACL); the batch loop raises it.
        self.fatal: FilterdError | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._based_on: object = None
        #: Partitions of the changes topic (0 until the feed connected).
        self.partitions = 0

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="filterd-change-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    async def _close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _connect(self) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
        cfg = self.config
        consumer = AIOKafkaConsumer(
            **cfg.kafka.client_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        self._consumer = consumer
        await consumer.start()
        # One metadata question (a missing READ raises, a missing topic is 0); aiokafka has no
        # public call for it: the service reads the consumer's client the same way.
        count = await client_topic_partitions(consumer._client, self.topic)
        if not count:
            raise _Missing(
                f"changes topic {self.topic!r} does not exist; waiting for it "
                "(create it with `filterd topics create --config FILE`)"
            )
        tps = [TopicPartition(self.topic, p) for p in range(count)]
        self.partitions = count
        consumer.assign(tps)
        for tp in tps:
            # Resume where this process left off (a reconnect), else from the watermark.
            start = self.positions.get(tp.partition, self.start_watermark.get(tp.partition, 0))
            consumer.seek(tp, start)
        return consumer, tps

    async def _run(self) -> None:
        backoff = self.config.service.retry_backoff_s
        while True:
            try:
                consumer, tps = await self._connect()
                while True:
                    await self._catch_up(consumer, tps)
                    await asyncio.sleep(REFRESH_S)
            except asyncio.CancelledError:
                raise
            except _Missing as exc:
                self._set_problem(str(exc))
            except (KafkaError, OSError) as exc:
                denied = not_authorized(exc, self.config)
                if denied is not None:
                    # No retry grants an ACL: the loop stops with this one line.
                    self.fatal = denied
                    self._set_problem(str(denied))
                    self._caught_up.set()
                    await self._close()
                    return
                self._set_problem(f"change feed cannot read {self.topic!r}: {exc!r}")
            await self._close()
            await asyncio.sleep(backoff)

    async def _catch_up(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        asked = _now_ms()
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        for tp, end in ends.items():
            self.ends[tp.partition] = end
        while await self._behind(consumer, ends):
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    self._take(tp.partition, record.offset, record.value, record.timestamp)
                if records:
                    self.positions[tp.partition] = records[-1].offset + 1
        self._fetched_fresh_ms = asked
        self._problem = None
        self._caught_up.set()

    @staticmethod
    async def _behind(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if int(await consumer.position(tp)) < end:
                return True
        return False

    def _take(self, partition: int, offset: int, value: bytes | None, timestamp: int = 0) -> None:
        try:
            change = parse_change(value, self.config.policy.default_country_code)
            if not fits(partition, offset):
                raise BadChange(f"offset beyond the overlay's range ({partition}/{offset})")
        except BadChange as exc:
            self.bad[str(exc).split(" ", 1)[0]] += 1
            _bad_changes.log(
                "bad-change", "skipped malformed change %s/%d/%d: %s",
                self.topic, partition, offset, exc,
            )  # fmt: skip
            return
        if not self._fetched:
            self._oldest_fetched_ms = timestamp
        self._fetched.append((ChangeRef(self.topic, partition, offset), change))

    def _set_problem(self, problem: str) -> None:
        if problem != self._problem:
            log.warning("not deciding on stale consent: %s", problem)
        self._problem = problem

    # -- the batch loop's side --------------------------------------------------

    def drain(self) -> int:
        """Apply what was fetched, in offset order per partition; return how many."""
        fetched, self._fetched = self._fetched, []
        self._oldest_fetched_ms = 0
        overlay = self.overlay
        for ref, change in fetched:
            if overlay.apply(change, ref):
                self.applied[(change.op, change.source or "")] += 1
        self.fresh_ms = self._fetched_fresh_ms
        # A swap's walk over the facts goes on a step per batch (Overlay.walk).
        if overlay.walking and overlay.walk():
            log.info(
                "snapshot folded in %d facts of live changes; dropped from memory", overlay.walked
            )
        return len(fetched)

    def rebase(self, snapshot: object) -> Overlay:
        """The overlay on top of ``snapshot`` (idempotent per snapshot object).

        Facts whose last change is below the snapshot's watermark are dropped from memory,
        a step per batch (:meth:`Overlay.rebase_start`, :meth:`drain`); the others stay. A
        snapshot whose watermark is below the one in force (a rollback, a build without the
        feed folded in), or that accepts other consent methods, needs changes no longer held:
        the feed reads the topic again from its watermark, and nothing is decided until it
        has caught up.
        """
        if snapshot is self._based_on:
            return self.overlay
        self._based_on = snapshot
        manifest = getattr(snapshot, "manifest", None)
        watermark = watermark_of(manifest if isinstance(manifest, dict) else None, self.topic)
        accept = accept_methods(manifest if isinstance(manifest, dict) else None)
        if self.overlay.rebase_start(accept, watermark) < 0:
            log.info(
                "snapshot watermark went back or its accepted methods differ: reading the "
                "changes topic again from its watermark"
            )
            self.positions = dict(watermark)
            self.start_watermark = dict(watermark)
            self._fetched = []
            self.fresh_ms = self._fetched_fresh_ms = 0
            if self._task is not None:
                self._task.cancel()
                self._task = asyncio.create_task(self._run(), name="filterd-change-feed")
            return self.overlay
        return self.overlay

    def fresh_for(self, record_ms: int) -> bool:
        """Whether every change that must apply to a record of time ``record_ms`` is applied."""
        return self.fresh_ms > record_ms - BOUND_MS

    async def wait_fresh(self, record_ms: int, should_exit: Callable[[], bool]) -> bool:
        """Apply fetched changes until a record of time ``record_ms`` may be decided;
        False when ``should_exit()`` said stop first."""
        self.drain()
        while not self.fresh_for(record_ms):
            if self.fatal is not None:
                raise self.fatal
            if should_exit():
                return False
            self._caught_up.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._caught_up.wait(), REFRESH_S * 5)
            self.drain()
        return True

    def problem(self) -> str | None:
        """Why the feed lags past the bound (``/readyz``), or None."""
        lag = _now_ms() - max(self.fresh_ms, self._fetched_fresh_ms)
        if lag <= BOUND_MS + 1000 * REFRESH_S * 5:
            return None
        if self._problem is not None:
            return self._problem
        if self._fetched_fresh_ms == 0:
            return f"change feed of {self.topic!r} not caught up yet"
        return f"change feed of {self.topic!r} is {lag / 1000:.1f}s behind (bound 1s)"

    @property
    def fetched_fresh_ms(self) -> int:
        """Epoch ms as of which every appended change is fetched (applied or not)."""
        return self._fetched_fresh_ms

    def oldest_unapplied_age_ms(self, now_ms: int) -> int:
        """Age of the oldest change not applied yet: fetched and waiting for the next batch,
        or not fetched (then at least as old as the feed's last catch-up); 0 when none."""
        age = now_ms - self._oldest_fetched_ms if self._oldest_fetched_ms else 0
        fresh = max(self.fresh_ms, self._fetched_fresh_ms)
        if fresh and self.lag_records() > 0:  # (before the first catch-up: the lag says it)
            age = max(age, now_ms - fresh)
        return max(0, age)

    def lag_records(self) -> int:
        """Changes appended but not yet fetched, by the last end offsets seen."""
        return sum(
            max(0, end - self.positions.get(p, self.start_watermark.get(p, 0)))
            for p, end in self.ends.items()
        )


class _Missing(Exception):
    pass
