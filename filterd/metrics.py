"""Prometheus metrics for the stream service, updated once per batch.

Every update method here is called by the stream loop *per batch*, never per
message: a batch of N records costs one ``inc()`` per distinct (route, reason)
pair, two histogram observations, and a bounded sample of latency
observations. The labelled children are bound once and kept in dicts, because
``Counter.labels()`` validates and hashes its arguments and takes a lock on
every call, which is too much to pay on the hot path.

Each :class:`Metrics` owns its metric objects and registers them on the
:class:`~prometheus_client.CollectorRegistry` it is given (a fresh one by
default), so tests and several instances in one process never share state.

With ``filterd run --workers N`` every worker is its own process with its own
registry and serves it on ``[metrics] port + worker_index`` (see
``docs/operations.md``): Prometheus scrapes one target per worker and sums
them with ``sum without (instance)``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from filterd import __version__, native
from filterd.logs import RateLimitedLogger
from filterd.router import OUTCOMES

logger = logging.getLogger(__name__)
#: Where warnings about bad input go: operators can silence or route them by name.
input_logger = logging.getLogger("filterd.input")

#: Every (route, reason) pair the policy can produce, from the router itself.
#: They are created at zero when :class:`Metrics` starts so that ``rate()`` and
#: the alert rules see a series before the first event of that kind; a pair not
#: listed here (a newer reason) still counts, it is bound on first use.
KNOWN_DECISIONS: tuple[tuple[str, str], ...] = tuple((o.route, o.reason) for o in OUTCOMES)

# Buckets sized for what an operator asks: batches of one record up to a full
# fetch (max_poll_records), decide+route times from sub-millisecond to the
# seconds of a broker in trouble, end-to-end latency up to minutes of backlog.
BATCH_RECORDS_BUCKETS: tuple[float, ...] = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BATCH_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

#: Default systematic sampling rate of the end-to-end latency histogram: one
#: record in this many is observed.
LATENCY_SAMPLE_EVERY = 64
#: Hard cap on latency observations per batch, whatever the batch size.
LATENCY_MAX_PER_BATCH = 16


class _SnapshotAgeCollector:
    """Exposes ``filterd_snapshot_age_seconds`` computed at scrape time.

    A plain gauge would be as old as the last update; computing ``now -
    created_at`` when Prometheus scrapes keeps it exact and costs the stream
    nothing. Before the first snapshot loads the series is absent rather than a
    misleading 0 (``filterd_ready`` says why).
    """

    name = "filterd_snapshot_age_seconds"
    documentation = (
        "Seconds since the consent snapshot in force was built (its manifest creation time)."
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        self.created_at: float | None = None
        self._clock = clock

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        if self.created_at is None:
            return []
        age = max(0.0, self._clock() - self.created_at)
        return [GaugeMetricFamily(self.name, self.documentation, value=age)]


class Metrics:
    """The service's Prometheus metrics, with one method per thing that happens.

    ``registry`` defaults to a fresh :class:`CollectorRegistry`; pass the one
    the HTTP endpoint serves. ``latency_sample_every`` and
    ``latency_max_per_batch`` bound the cost of the end-to-end latency
    histogram (see :meth:`observe_end_to_end`).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        latency_sample_every: int = LATENCY_SAMPLE_EVERY,
        latency_max_per_batch: int = LATENCY_MAX_PER_BATCH,
        bad_input_log_interval: float | None = 10.0,
        clock: Callable[[], float] = time.time,
        top_capped_senders: int = 20,
        top_capped_window_s: float = 300.0,
    ) -> None:
        if latency_sample_every < 1 or latency_max_per_batch < 1:
            raise ValueError("latency sampling parameters must be >= 1")
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._sample_every = latency_sample_every
        self._max_per_batch = latency_max_per_batch
        # Index, in the next batch, of the next record to sample: carrying it
        # across batches makes the sample "every k-th record of the stream",
        # which is unbiased whatever the batch sizes are.
        self._sample_phase = 0
        #: Rate-limited warnings for bursts of bad input (``None``: no warnings).
        self.bad_input_log: RateLimitedLogger | None = (
            None
            if bad_input_log_interval is None
            else RateLimitedLogger(input_logger, bad_input_log_interval)
        )
        reg = self.registry

        self.events = Counter(
            "filterd_events",
            "Input records decided, by output route and reason.",
            ["route", "reason"],
            registry=reg,
        )
        self.batch_records = Histogram(
            "filterd_batch_records",
            "Records per batch taken from the consumer.",
            buckets=BATCH_RECORDS_BUCKETS,
            registry=reg,
        )
        self.batch_seconds = Histogram(
            "filterd_batch_seconds",
            "Seconds to decide and route one batch (parse, decide, hand to the producer).",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=reg,
        )
        self.end_to_end_latency = Histogram(
            "filterd_end_to_end_latency_seconds",
            "Seconds from an input record's Kafka timestamp to the broker's acknowledgement "
            f"of its output record. Sampled: about 1 record in {latency_sample_every} "
            f"(at most {latency_max_per_batch} per batch), so _count is not the event count.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.consumer_lag = Gauge(
            "filterd_consumer_lag_records",
            "Records between the consumer's position and the partition's high watermark, "
            "for the partitions this process is assigned.",
            ["topic", "partition"],
            registry=reg,
        )
        self.snapshot_info = Gauge(
            "filterd_snapshot_info",
            "1 for the consent snapshot version in force.",
            ["version"],
            registry=reg,
        )
        self._snapshot_age = _SnapshotAgeCollector(clock)
        reg.register(self._snapshot_age)
        self.snapshot_consents = Gauge(
            "filterd_snapshot_consents",
            "Consent (sender, recipient) pairs in the snapshot in force.",
            registry=reg,
        )
        self.snapshot_load_seconds = Gauge(
            "filterd_snapshot_load_seconds",
            "Seconds the last successful snapshot load took (read, verify, swap).",
            registry=reg,
        )
        self.snapshot_load_failures = Counter(
            "filterd_snapshot_load_failures",
            "Snapshot versions refused (failed to load or validate); the old one stays in force.",
            registry=reg,
        )
        self.event_loop_lag = Gauge(
            "filterd_event_loop_lag_seconds",
            "How late the event loop woke from a timed sleep: the worst value seen in the "
            "last monitor window. A stall detector: a blocked loop stops the stream.",
            registry=reg,
        )
        self.produce_errors = Counter(
            "filterd_produce_errors",
            "Output records the producer failed to deliver (each is retried or stops the batch).",
            registry=reg,
        )
        self.recipients_without_plus_total = Counter(
            "filterd_recipients_without_plus",
            "Recipients without '+' whose digits start with the default country code and are"
            " long enough to be E.164 without its '+'; read as national numbers (the contract).",
            registry=reg,
        )
        self.rebalances = Counter(
            "filterd_rebalances",
            "Consumer group rebalances this process took part in (partition assignments).",
            registry=reg,
        )
        self.commits = Counter(
            "filterd_commits",
            "Offset commits made after the batch's output was acknowledged.",
            registry=reg,
        )
        self.would_block = Counter(
            "filterd_would_block",
            "Messages monitor mode delivered (reason monitored), by the block reason they"
            " would have had ([policy] monitor).",
            ["reason"],
            registry=reg,
        )
        self.foreign_keys = Counter(
            "filterd_foreign_keys",
            "Input records whose Kafka key is not their recipient's digits: caps are exact"
            " per input partition only when producers key records by recipient.",
            registry=reg,
        )
        self.unusable_timestamps = Counter(
            "filterd_unusable_timestamps",
            "Input records whose timestamp was negative or over a day ahead: decided at the"
            " time they were read.",
            registry=reg,
        )
        #: The K senders with the most frequency-cap blocks in the last window.
        self.top_capped = TopCappedSenders(top_capped_senders, top_capped_window_s, clock)
        if top_capped_senders > 0:
            reg.register(self.top_capped)
        self.limit_counters = Gauge(
            "filterd_limit_counters",
            "Step 4 counters live (windows still open) in the partitions this process holds.",
            registry=reg,
        )
        self.counters_restore_seconds = Gauge(
            "filterd_counters_restore_seconds",
            "Seconds the last restore of counters from the changelog took (on assignment).",
            registry=reg,
        )
        self.build_info = Gauge(
            "filterd_build_info",
            "Always 1; version is the filterd release running, hot_path whether its"
            " per-event modules run compiled or interpreted (-stale: a compiled module"
            " is older than its source).",
            ["version", "hot_path"],
            registry=reg,
        )
        self.build_info.labels(__version__, native.build_label()).set(1)

        self._event_children: dict[tuple[str, str], Counter] = {}
        for route, reason in KNOWN_DECISIONS:
            self._event_child(route, reason)
        self._lag_children: dict[tuple[str, int], Gauge] = {}
        self._snapshot_version: str | None = None

    # -- the hot path: once per batch ------------------------------------

    def _event_child(self, route: str, reason: str) -> Counter:
        child = self.events.labels(route, reason)
        self._event_children[(route, reason)] = child
        return child

    def record_batch(
        self, counts: Mapping[tuple[str, str], int], records: int, seconds: float
    ) -> None:
        """Count one decided batch.

        ``counts`` maps (route, reason) to how many of the batch's records got
        that decision; ``records`` is the batch size and ``seconds`` the time
        it took to decide and route it. Invalid records also produce a warning
        on the ``filterd.input`` logger, at most one per reason every
        ``bad_input_log_interval`` seconds, with the count of the ones held back.
        """
        children = self._event_children
        for key, n in counts.items():
            if n:
                child = children.get(key)
                if child is None:
                    child = self._event_child(*key)
                child.inc(n)
                if key[0] == "invalid" and self.bad_input_log is not None:
                    self.bad_input_log.log(
                        key[1],
                        "%d input records routed to the invalid topic as %s",
                        n,
                        key[1],
                        events=n,
                    )
        self.batch_records.observe(records)
        self.batch_seconds.observe(seconds)

    def observe_end_to_end(
        self, timestamps_ms: Sequence[int | None], acked_at: float | None = None
    ) -> int:
        """Observe end-to-end latency for a sample of one acknowledged batch.

        ``timestamps_ms`` are the batch's input record timestamps (Kafka's,
        milliseconds since the epoch) in any order; ``acked_at`` is when the
        broker acknowledged the batch's output (default: now). One record in
        ``latency_sample_every`` is observed, counted across batches, and at
        most ``latency_max_per_batch`` per batch. Records without a timestamp
        (``None`` or negative) are skipped; a timestamp in the future (clock
        skew) counts as zero latency. Returns the number observed.
        """
        n = len(timestamps_ms)
        start = self._sample_phase
        every = self._sample_every
        if start >= n:
            self._sample_phase = start - n
            return 0
        picks = range(start, n, every)
        # Next batch continues the "every k-th record" sequence.
        self._sample_phase = picks[-1] + every - n
        if len(picks) > self._max_per_batch:
            # A huge batch: spread the capped sample evenly over it instead.
            picks = range(start, n, math.ceil((n - start) / self._max_per_batch))
        now = self._clock() if acked_at is None else acked_at
        observe = self.end_to_end_latency.observe
        observed = 0
        for i in picks:
            ts = timestamps_ms[i]
            if ts is None or ts < 0:
                continue
            observe(max(0.0, now - ts / 1000.0))
            observed += 1
        return observed

    def observe_latencies(self, seconds: Iterable[float]) -> None:
        """Observe end-to-end latencies the caller sampled itself (keep it small)."""
        observe = self.end_to_end_latency.observe
        for value in seconds:
            observe(max(0.0, value))

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the consumer lag of one assigned partition (high watermark - position)."""
        key = (topic, partition)
        child = self._lag_children.get(key)
        if child is None:
            child = self.consumer_lag.labels(topic, str(partition))
            self._lag_children[key] = child
        child.set(max(0, lag))

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the lag series of revoked partitions so no stale lag stays exposed.

        Call it from the rebalance listener's ``on_partitions_revoked``; the
        partition's new owner (maybe another worker) reports it from then on.
        """
        for topic, partition in partitions:
            if self._lag_children.pop((topic, partition), None) is not None:
                self.consumer_lag.remove(topic, str(partition))

    # -- rare events ------------------------------------------------------

    def snapshot_loaded(
        self, version: str, consents: int, created_at: float, load_seconds: float
    ) -> None:
        """Record that snapshot ``version`` is now in force.

        ``created_at`` is the snapshot's build time in seconds since the epoch
        (its manifest's), from which ``filterd_snapshot_age_seconds`` is
        computed at scrape time; ``load_seconds`` is how long the load took.
        """
        if self._snapshot_version is not None and self._snapshot_version != version:
            self.snapshot_info.remove(self._snapshot_version)
        self.snapshot_info.labels(version).set(1)
        self._snapshot_version = version
        self._snapshot_age.created_at = created_at
        self.snapshot_consents.set(consents)
        self.snapshot_load_seconds.set(load_seconds)

    def snapshot_refused(self) -> None:
        """Count a snapshot version that failed to load or validate."""
        self.snapshot_load_failures.inc()

    def produce_error(self, count: int = 1) -> None:
        """Count output records the producer failed to deliver."""
        self.produce_errors.inc(count)

    def recipients_without_plus(self, count: int) -> None:
        """Count recipients of a batch that looked like E.164 without ``+``; log, rate-limited."""
        if count <= 0:
            return
        self.recipients_without_plus_total.inc(count)
        if self.bad_input_log is not None:
            self.bad_input_log.log(
                "without-plus",
                "%d recipients without '+' start with the country code and were read as"
                " national numbers (E.164 without '+'?)",
                count,
                events=count,
            )

    def record_limits(
        self, would_block: Mapping[str, int], foreign_keys: int, unusable_times: int
    ) -> None:
        """Count one partition's monitored would-blocks, foreign keys and unusable times;
        log the foreign keys, rate-limited."""
        for reason, n in would_block.items():
            self.would_block.labels(reason).inc(n)
        if foreign_keys:
            self.foreign_keys.inc(foreign_keys)
            if self.bad_input_log is not None:
                self.bad_input_log.log(
                    "foreign-key",
                    "%d input records are not keyed by their recipient's digits: caps are exact"
                    " only when producers key by recipient",
                    foreign_keys,
                    events=foreign_keys,
                )
        if unusable_times:
            self.unusable_timestamps.inc(unusable_times)

    def record_capped_senders(self, counts: Mapping[str, int]) -> None:
        """Count one partition's frequency-cap blocks by sender (for the top-K gauge)."""
        self.top_capped.add(counts)

    def set_limits_state(self, live_counters: int, restore_seconds: float) -> None:
        """Set the live step 4 counters and the last restore's duration."""
        self.limit_counters.set(live_counters)
        self.counters_restore_seconds.set(restore_seconds)

    def rebalance(self) -> None:
        """Count a partition assignment (call from ``on_partitions_assigned``)."""
        self.rebalances.inc()

    def commit(self) -> None:
        """Count one successful offset commit."""
        self.commits.inc()

    def set_loop_lag(self, seconds: float) -> None:
        """Set the event loop lag gauge (the loop lag monitor calls this)."""
        self.event_loop_lag.set(seconds)


class LoopLagMonitor:
    """Measures how late the event loop wakes from ``asyncio.sleep(interval)``.

    If the loop is blocked (a synchronous call, a CPU-bound batch), every task
    wakes late, the consumer misses heartbeats and the group rebalances; this
    is the early signal. The gauge holds the worst lag of the last ``window``
    seconds (two tumbling windows), so a one-second stall is still visible to
    a scrape every 15 s. ``on_tick`` runs after every wake-up: give it
    :meth:`filterd.http.Health.beat` so ``/healthz`` knows the loop turns.
    Use ``await start()`` / ``await stop()`` or ``async with``.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        interval: float = 0.25,
        window: float = 15.0,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.interval = interval
        self.window = window
        self.on_tick = on_tick
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start measuring on the running loop (no-op if already started)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="filterd-loop-lag"
            )

    async def stop(self) -> None:
        """Stop measuring; safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # we were cancelled ourselves, not just the task

    async def __aenter__(self) -> LoopLagMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval
        set_lag = self.metrics.set_loop_lag
        window_start = loop.time()
        previous_max = 0.0
        current_max = 0.0
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            now = loop.time()
            lag = max(0.0, now - expected)
            if now - window_start >= self.window:
                previous_max, current_max = current_max, 0.0
                window_start = now
            current_max = max(current_max, lag)
            set_lag(max(previous_max, current_max))
            if self.on_tick is not None:
                self.on_tick()


class TopCappedSenders:
    """``filterd_frequency_cap_top_sender_blocks{sender}``: the ``k`` senders with the most
    frequency-cap blocks in the last complete window of ``window_s`` seconds.

    Metrics carry no sender label in general (thousands of senders are too many
    series); this gauge names at most ``k``, so a sender that starts bombing shows
    by name and its jump can be alerted on (deploy/prometheus/alerts.yml,
    ``FilterdSenderFrequencyCapJump``). A sender that leaves the top ``k`` loses its
    series. Counting is exact for up to ``max_tracked`` distinct capped senders per
    window; beyond that, senders first seen in the window are not counted (their
    number is ``dropped``). Fed once per partition per batch, never per message; a
    scrape only reads the last window's published rows.
    """

    name = "filterd_frequency_cap_top_sender_blocks"
    documentation = (
        "frequency-cap blocks in the last complete window ([metrics] top_capped_window_s)"
        " of the [metrics] top_capped_senders senders with the most"
    )

    def __init__(
        self,
        k: int,
        window_s: float,
        clock: Callable[[], float] = time.time,
        *,
        max_tracked: int | None = None,
    ) -> None:
        self.k = k
        self.window_s = window_s
        self._clock = clock
        self.max_tracked = max_tracked if max_tracked is not None else max(1000, 50 * k)
        self._counts: dict[str, int] = {}
        self._window_start = clock()
        #: (sender, blocks) of the last complete window, and until when they are current.
        self._published: tuple[tuple[str, int], ...] = ()
        self._published_until = 0.0
        #: Blocks not counted because ``max_tracked`` senders were already counted.
        self.dropped = 0

    def add(self, counts: Mapping[str, int], now: float | None = None) -> None:
        """Count a partition's frequency-cap blocks of one batch, by sender."""
        self._roll(self._clock() if now is None else now)
        mine = self._counts
        for sender, n in counts.items():
            if sender in mine:
                mine[sender] += n
            elif len(mine) < self.max_tracked:
                mine[sender] = n
            else:
                self.dropped += n

    def _roll(self, now: float) -> None:
        if now < self._window_start + self.window_s:
            return
        # The window that just ended (an older one when no block came for a while
        # is published as nothing: it ended more than one window ago).
        ended = self._window_start + self.window_s
        rows = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.k]
        fresh = now < ended + self.window_s
        self._published = tuple(rows) if fresh else ()
        self._published_until = ended + self.window_s
        self._counts = {}
        # Windows are aligned to the first one: start of the window holding ``now``.
        self._window_start += self.window_s * ((now - self._window_start) // self.window_s)

    def rows(self, now: float | None = None) -> tuple[tuple[str, int], ...]:
        """The published (sender, blocks), or none once they are a window out of date."""
        at = self._clock() if now is None else now
        return self._published if at < self._published_until else ()

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=["sender"])]

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=["sender"])
        for sender, blocks in self.rows():
            family.add_metric([sender], blocks)
        return [family]
