"""Shared plumbing for the benchmarks: statistics, Kafka helpers, the load generator.

Nothing here is part of filterd; it is the measuring instrument. It is kept small
and dependency-light (aiokafka and orjson, which filterd already needs) so the
smoke tests run with the ``dev`` extra only.

Measurement conventions used by every benchmark (see ``benchmarks/README.md``):

* Output topics are created with ``message.timestamp.type=LogAppendTime``: the
  broker stamps each record with its own clock when it appends it, so arrival
  times come from the broker and no consumer sits in the measured loop.
* The load generator stamps the input record's ``CreateTime`` with its send time
  and remembers it per event ``id``; latency is output ``LogAppendTime`` minus
  that send time (same machine, same clock, millisecond resolution).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from filterd import topics
from filterd.router import event_id
from tests.support.produce import Outgoing, bulk_producer, partition_for, produce

if TYPE_CHECKING:
    from filterd.config import Config

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

R = TypeVar("R")

Event = tuple[bytes | None, bytes]
"""One generated input record: (key, value)."""


def bootstrap_from_env(explicit: str | None = None) -> str:
    """The broker to use: ``--bootstrap``, else ``$KAFKA_BOOTSTRAP``, else the local one."""
    return explicit or os.environ.get("KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP


def unique_name(prefix: str) -> str:
    """A topic or group name no other run or user of the broker will collide with."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linear interpolation.

    Same definition as numpy's default ("linear"), written out so the stats code has
    no numpy dependency and can be tested on its own.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(sorted_values[lo])
    frac = pos - lo
    return float(sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac)


def latency_summary(latencies_ms: Iterable[float]) -> dict[str, float]:
    """p50/p99/p99.9, mean and max of one run's per-record latencies, in ms."""
    values = sorted(latencies_ms)
    if not values:
        return {}
    return {
        "p50_ms": round(percentile(values, 50.0), 3),
        "p99_ms": round(percentile(values, 99.0), 3),
        "p999_ms": round(percentile(values, 99.9), 3),
        "mean_ms": round(statistics.fmean(values), 3),
        "max_ms": round(values[-1], 3),
        "samples": len(values),
    }


def spread(values: Sequence[float]) -> dict[str, float | list[float]]:
    """Median, min and max over repetitions, plus the raw values (for the record)."""
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "values": [round(v, 3) for v in values],
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded to 3 places; None when either is missing or 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 3)


def throughput(count: int, first_ms: float, last_ms: float) -> float:
    """Messages per second from the first to the last output record.

    ``count`` records completed after the first and up to the last append time. A run
    shorter than one broker clock tick cannot be timed; it is an error, not infinity.
    """
    span_ms = last_ms - first_ms
    if count < 2 or span_ms <= 0:
        raise ValueError(f"cannot time {count} records over {span_ms} ms; use more events")
    return count * 1000.0 / span_ms


# --------------------------------------------------------------------------- events


def load_events(
    dataset_dir: str,
    count: int,
    *,
    seed: int = 1,
    bad_rate: float | None = None,
    mix: Mapping[str, float] | None = None,
) -> list[Event]:
    """``count`` realistic events from filterd's own traffic generator, in memory.

    Built up front so generating them costs nothing during a measured run.
    """
    from filterd.loadgen import iter_events, load_dataset

    dataset = load_dataset(dataset_dir)
    kwargs: dict[str, object] = {"seed": seed}
    if bad_rate is not None:
        kwargs["bad_rate"] = bad_rate
    if mix is not None:
        kwargs["mix"] = mix
    return list(iter_events(dataset, count, **kwargs))  # type: ignore[arg-type]


def ensure_snapshot(workdir: Path, dataset: Path | None = None) -> tuple[Path, Path]:
    """A data set (``dataset`` or a new one under ``workdir``) and its built snapshot root.

    The data set is filterd's own loadgen population (the demo's defaults); the
    snapshot is built by ``filterd snapshot build``, the command operators run.
    """
    from filterd.loadgen import write_dataset

    if dataset is None:
        dataset = workdir / "dataset"
        if not (dataset / "population.json").exists():
            write_dataset(dataset)
    snapshot_root = workdir / "snapshots"
    if not snapshot_root.exists() or not any(snapshot_root.iterdir()):
        cmd = [sys.executable, "-m", "filterd", "snapshot", "build"]
        cmd += ["--consents", str(dataset / "consents.csv.gz")]
        cmd += ["--optouts", str(dataset / "optouts.csv.gz")]
        cmd += ["--dnd", str(dataset / "dnd.csv.gz"), "--out", str(snapshot_root)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return dataset, snapshot_root


# --------------------------------------------------------------------------- kafka admin


async def create_topics(
    bootstrap: str,
    names: Sequence[str],
    partitions: int,
    *,
    log_append_time: bool = False,
) -> None:
    """Create fresh topics; ``log_append_time`` makes the broker stamp arrival times."""
    configs = {"message.timestamp.type": "LogAppendTime"} if log_append_time else {}
    spec = topics.TopicSpec(partitions, 1, configs)
    client = {"bootstrap_servers": bootstrap}
    await topics.create(client, dict.fromkeys(names, spec), ready_timeout_s=30.0)


async def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Delete topics, ignoring ones already gone (cleanup must not mask a real error)."""
    await topics.delete({"bootstrap_servers": bootstrap}, names)


# --------------------------------------------------------------------------- producing


async def preload(
    bootstrap: str, topic: str, partitions: int, events: Sequence[Event] | Sequence[Outgoing]
) -> None:
    """Write ``events`` into ``topic`` as fast as possible and wait for every ack.

    An event with a timestamp (``Outgoing``'s four-tuple) keeps it as its CreateTime.
    """
    await produce(bootstrap, topic, events, partitions)


@dataclass(slots=True)
class PacedResult:
    """What the paced generator did: send time (ms since epoch) per event id."""

    sent_ms: dict[str, int]
    offered: int
    #: Ids sent more than once (a deliberately bad event with an empty id, say):
    #: left out of the latency figures, since their arrivals cannot be told apart.
    ambiguous_ids: int
    elapsed_s: float
    #: Most records sent in one tick; far above ``rate × tick_s`` means the
    #: generator fell behind and caught up in a burst.
    max_tick_records: int
    #: The Kafka client the generator used.
    client: str = "aiokafka"


async def produce_paced(
    bootstrap: str,
    topic: str,
    partitions: int,
    events: Sequence[Event],
    rate: float,
    *,
    tick_s: float = 0.002,
) -> PacedResult:
    """Offer ``events`` at ``rate`` msgs/s, stamping each record's CreateTime with its send time.

    Every ``tick_s`` it sends the records that are due by then, so the offered load
    is smooth at millisecond scale (no one-second bursts that would inflate p99).
    The send time recorded is the moment the record is handed to the client: the
    generator's own client latency is in every variant's figure alike. Partitions
    and ids are worked out before the clock starts, so each tick only appends.
    If the generator itself is starved of CPU, the records of the missed ticks go
    out together at the next one; ``max_tick_records`` in the result shows it.
    """
    prepared = [
        (partition_for(key, j, partitions), key, value, event_id(value))
        for j, (key, value) in enumerate(events)
    ]
    producer = bulk_producer(bootstrap)
    await producer.start()
    sent_ms: dict[str, int] = {}
    ambiguous: set[str] = set()
    futures: list[asyncio.Future[object]] = []
    max_tick = 0
    try:
        start = time.monotonic()
        n = len(prepared)
        i = 0
        while i < n:
            due = min(n, int((time.monotonic() - start) * rate) + 1)
            if due > i:
                max_tick = max(max_tick, due - i)
                # Whole milliseconds, like LogAppendTime: both ends truncate alike,
                # so the difference is unbiased.
                stamp = int(time.time() * 1000.0)
                batches: dict[int, Any] = {}
                for p, key, value, eid in prepared[i:due]:
                    batch = batches.get(p)
                    if batch is None:
                        batch = batches[p] = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=stamp) is None:
                        # Full (a catch-up after a stall): ship it, open another.
                        batch.close()
                        futures.append(await producer.send_batch(batch, topic, partition=p))
                        batch = batches[p] = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=stamp)
                    if eid is not None:
                        if eid in sent_ms:
                            ambiguous.add(eid)
                        sent_ms[eid] = stamp
                for p, batch in batches.items():
                    batch.close()
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                i = due
            await asyncio.sleep(tick_s)
        elapsed = time.monotonic() - start
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    for eid in ambiguous:
        del sent_ms[eid]
    return PacedResult(
        sent_ms=sent_ms,
        offered=n,
        ambiguous_ids=len(ambiguous),
        elapsed_s=elapsed,
        max_tick_records=max_tick,
    )


# --------------------------------------------------------------------------- reading outputs


async def _partitions(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    tps: list[TopicPartition] = []
    for t in topics:
        parts = consumer.partitions_for_topic(t)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(t) or set()
        tps.extend(TopicPartition(t, p) for p in sorted(parts))
    return tps


class OutputWatcher:
    """Counts records in the output topics from their end offsets (topics start empty)."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._topics = list(topics)
        self._tps: list[TopicPartition] = []

    async def __aenter__(self) -> OutputWatcher:
        await self._consumer.start()
        self._tps = await _partitions(self._consumer, self._topics)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def counts(self) -> dict[str, int]:
        """Records per output topic right now."""
        ends = await self._consumer.end_offsets(self._tps)
        out = dict.fromkeys(self._topics, 0)
        for tp, end in ends.items():
            out[tp.topic] += end
        return out

    async def total(self) -> int:
        """Records over every output topic right now."""
        return sum((await self.counts()).values())

    async def wait_for(
        self,
        expected: int,
        *,
        stall_timeout_s: float = 60.0,
        alive: object = None,
        poll_s: float = 0.05,
    ) -> int:
        """Wait until ``expected`` output records exist; raise if progress stalls.

        ``alive`` is an optional zero-argument callable; when it returns False (the
        variant process died) waiting stops at once with an error.
        """
        last_total = -1
        last_progress = time.monotonic()
        while True:
            total = sum((await self.counts()).values())
            if total >= expected:
                return total
            now = time.monotonic()
            if total != last_total:
                last_total, last_progress = total, now
            elif now - last_progress > stall_timeout_s:
                raise TimeoutError(
                    f"output stalled at {total}/{expected} records for {stall_timeout_s:.0f} s"
                )
            if callable(alive) and not alive():
                raise RuntimeError(f"variant exited with {total}/{expected} records out")
            await asyncio.sleep(poll_s)


@dataclass(slots=True)
class OutputSpan:
    """When a run's output records landed, from their LogAppendTime."""

    first_ms: int
    last_ms: int
    #: All output records.
    count: int
    #: Records stamped with ``first_ms`` itself: the batches that opened the window.
    at_first: int
    per_topic: dict[str, int]

    def msgs_per_s(self) -> float:
        """Records completed inside (first, last], per second.

        The records of the batches appended at ``first_ms`` were produced before the
        window opened; counting them would overstate short runs by one batch.
        """
        return throughput(self.count - self.at_first, self.first_ms, self.last_ms)


async def wait_for_group(
    bootstrap: str, group: str, members: int, *, timeout_s: float = 90.0, alive: Callable[[], bool]
) -> int:
    """Wait until ``group`` is Stable with ``members`` members; return when (ms since epoch).

    Workers of one ``filterd run --workers N`` join one after another: the first
    takes every partition, and the next join rebalances the group (a few
    seconds). Figures of a multi-worker run count from this moment on.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            for response in await admin.describe_consumer_groups([group]):
                for described in response.groups:
                    # (error_code, group_id, state, protocol_type, protocol, members, ...)
                    if described[2] == "Stable" and len(described[5]) == members:
                        return int(time.time() * 1000)
            if not alive():
                raise RuntimeError(f"the variant exited before group {group} settled")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"group {group} not stable with {members} members in {timeout_s}s"
                )
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def records_since(bootstrap: str, topics: Sequence[str], since_ms: int) -> int:
    """How many records of ``topics`` were appended at or after ``since_ms`` (LogAppendTime)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topics)
        ends = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        return sum(ends[tp] - at.offset for tp, at in found.items() if at is not None)
    finally:
        await consumer.stop()


async def output_span(bootstrap: str, topics: Sequence[str]) -> OutputSpan:
    """First and last LogAppendTime over the output topics and the record counts.

    Append times only grow within a partition, so the first and last record of each
    partition suffice, plus a short read of the partitions whose first batch opened
    the window: no full read of the output.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topics)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        per_topic = dict.fromkeys(topics, 0)
        firsts: dict[TopicPartition, int] = {}
        last = -1
        for tp in tps:
            n = ends[tp] - begins[tp]
            per_topic[tp.topic] += n
            if n == 0:
                continue
            head = await _record_at(consumer, tp, begins[tp])
            tail = await _last_record(consumer, tp, begins[tp], ends[tp])
            firsts[tp] = head.timestamp
            last = max(last, tail.timestamp)
        if not firsts:
            raise RuntimeError(f"no output records in {list(topics)}")
        first = min(firsts.values())
        at_first = 0
        for tp, ts in firsts.items():
            if ts != first:
                continue
            consumer.assign([tp])
            consumer.seek(tp, begins[tp])
            done = False
            while not done:
                got = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
                for r in got.get(tp, []):
                    if r.timestamp != first or r.offset >= ends[tp]:
                        done = True
                        break
                    at_first += 1
                    done = r.offset + 1 >= ends[tp]
        return OutputSpan(first, last, sum(per_topic.values()), at_first, per_topic)
    finally:
        await consumer.stop()


async def _record_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> ConsumerRecord:
    # One partition assigned at a time: aiokafka does not fetch again from a broker
    # while records of another assigned partition sit unread in its buffer, so a
    # partition-filtered getmany() could wait forever.
    consumer.assign([tp])
    consumer.seek(tp, offset)
    while True:
        got = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
        records = got.get(tp, [])
        if records:
            record = records[0]
            if record.timestamp_type != 1:
                raise RuntimeError(f"{tp.topic} is not a LogAppendTime topic")
            return record


async def _last_record(
    consumer: AIOKafkaConsumer, tp: TopicPartition, begin: int, end: int
) -> ConsumerRecord:
    """The partition's last data record. In exactly-once mode the last offsets are
    transaction markers, which a consumer never returns: read a growing tail until the
    position reaches ``end`` and keep the last record seen."""
    back = 16
    while True:
        start = max(begin, end - back)
        consumer.assign([tp])
        consumer.seek(tp, start)
        last: ConsumerRecord | None = None
        while await consumer.position(tp) < end:
            got = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
            for record in got.get(tp, []):
                last = record
        if last is not None:
            if last.timestamp_type != 1:
                raise RuntimeError(f"{tp.topic} is not a LogAppendTime topic")
            return last
        if start == begin:
            raise RuntimeError(f"{tp}: no data record in offsets {begin}..{end}")
        back *= 4


async def read_arrivals(bootstrap: str, topics: Sequence[str]) -> list[tuple[str | None, int]]:
    """Every output record as (event id or None, LogAppendTime ms)."""
    return await read_records(bootstrap, topics, lambda r: (event_id(r.value), r.timestamp))


async def read_records(
    bootstrap: str,
    topics: Sequence[str],
    pick: Callable[[ConsumerRecord], R],
    *,
    since_ms: int | None = None,
) -> list[R]:
    """``pick`` of every record of ``topics``, partition by partition; with ``since_ms``,
    of the records appended at or after it (LogAppendTime topics).

    One partition at a time (see ``_record_at``): reading them all at once with
    aiokafka occasionally stalled for good on a finished partition's buffer.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[R] = []
    try:
        tps = await _partitions(consumer, topics)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        if since_ms is not None:
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
            begins = {tp: ends[tp] if at is None else at.offset for tp, at in found.items()}
        for tp in tps:
            if ends[tp] <= begins[tp]:
                continue
            consumer.assign([tp])
            consumer.seek(tp, begins[tp])
            empty = 0
            while True:
                got = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
                records = got.get(tp, [])
                out.extend(pick(r) for r in records)
                # By position, not by the last record's offset: in exactly-once mode
                # the partition ends with transaction markers nobody receives.
                if await consumer.position(tp) >= ends[tp]:
                    break
                if not records:
                    empty += 1
                    if empty >= 30:
                        raise TimeoutError(f"{tp}: no records for 30 s short of {ends[tp]}")
                    continue
                empty = 0
        return out
    finally:
        await consumer.stop()


def latencies_ms(
    arrivals: Iterable[tuple[str | None, int]], sent_ms: Mapping[str, int]
) -> Iterator[float]:
    """Per output record: arrival − send, for records the paced generator sent."""
    for eid, arrived in arrivals:
        if eid is None:
            continue
        sent = sent_ms.get(eid)
        if sent is not None:
            yield arrived - sent


# --------------------------------------------------------------------------- client settings


def consumer_kwargs(config: Config) -> dict[str, object]:
    """aiokafka consumer settings taken from a filterd config: the same fetch behaviour.

    The raw pipe and the naive filter use these so that they differ from
    ``filterd run`` in their loop only, never in how they talk to the broker
    (mirrors the consumer ``filterd.service`` builds).
    """
    b = config.batch
    k = config.kafka
    return {
        **k.client_options(),
        "group_id": k.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "fetch_max_bytes": b.fetch_max_bytes,
        "max_partition_fetch_bytes": b.max_partition_fetch_bytes,
        "fetch_max_wait_ms": b.fetch_max_wait_ms,
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": k.heartbeat_interval_ms,
        "max_poll_interval_ms": k.max_poll_interval_ms,
    }


def producer_kwargs(config: Config) -> dict[str, object]:
    """aiokafka producer settings of a filterd config: filterd's own ``producer_options``."""
    from filterd.delivery import producer_options

    return producer_options(config)


def install_stop_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: the loop finishes its batch, commits and exits."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def run_async(main: Callable[[], Coroutine[object, object, int]]) -> int:
    """Run ``main`` on uvloop when installed (filterd does the same), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def variant_config(prog: str, doc: str | None, argv: Sequence[str] | None) -> Config:
    """The ``--config F`` command line every benchmark variant takes; logging set up."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").splitlines()[0])
    parser.add_argument("--config", required=True, help="filterd TOML config (same as the run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from filterd.config import load_config

    return load_config(args.config)


def run_variant(
    loop: Callable[[Config, asyncio.Event], Coroutine[object, object, int]], config: Config
) -> int:
    """Run a variant's loop until SIGTERM/SIGINT (see :func:`install_stop_handlers`)."""

    async def run() -> int:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        await loop(config, stop)
        return 0

    return run_async(run)
