"""End-to-end benchmark: filterd against the raw Kafka pipe, a naive filter and a peer.

Through the real broker, with filterd's own traffic generator, one session runs
every variant in turn (alternating, fresh topics and group per run, the same
topic layout and event count):

* ``raw_pipe`` — consume → produce copy, filterd's client settings, no work
  (``benchmarks/raw_pipe.py``): the limit for this client on this broker;
* ``filterd`` — ``filterd run`` as shipped, at-least-once, metrics on;
* ``filterd_nometrics`` — the same with ``[metrics] enabled = false``;
* ``filterd_eos`` — the same in exactly-once mode (``[delivery] mode``);
* ``naive`` — message-by-message aiokafka loop (``benchmarks/naive_filter.py``);
* ``peer`` — the filter in Quix Streams (``benchmarks/peer_quix.py``);
* ``filterd_limits`` / ``filterd_features`` — ``filterd run`` with step 4 on (quiet hours,
  three cap rules), and with the wave's features on (honest categories, live changes at
  1,000/s, quiet hours and the caps): their ratios to ``filterd`` are the features' cost;
* and Kafka's own ``ProducerPerformance``/``ConsumerPerformance`` as the ceiling.

Two figures per variant:

throughput
    N events are loaded into the input topic first (the generator is never the
    bottleneck), then the variant starts; msgs/s = output records / (last − first
    output LogAppendTime). Start-up and group join are outside the window.
latency
    the variant runs; the generator offers events at a fixed rate (default 50 %
    of the raw pipe's median throughput of this session), stamping each send;
    latency = output LogAppendTime − send time, p50/p99/p99.9.

Usage: ``python -m benchmarks.e2e [--quick] [--events N] [--reps R] ...``
(``make bench`` / ``make bench-quick``). Results: ``benchmarks/results/e2e.json``
(quick: ``e2e-quick.json``), ``.md`` and ``-throughput.png``/``-latency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, TypeVar
from zoneinfo import ZoneInfo

from aiokafka import ConsumerRecord

from benchmarks._common import (
    Event,
    OutputSpan,
    OutputWatcher,
    bootstrap_from_env,
    create_topics,
    delete_topics,
    ensure_snapshot,
    latencies_ms,
    latency_summary,
    load_events,
    output_span,
    preload,
    produce_paced,
    ratio,
    read_arrivals,
    read_records,
    records_since,
    spread,
    throughput,
    unique_name,
    wait_for_group,
)
from benchmarks.cpu import follow, summarize
from filterd.loadgen.bombing import DEMO_LIMITS
from filterd.pipeline import HEADER_CHANGE
from tests.support.produce import Outgoing

log = logging.getLogger("benchmarks.e2e")

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
KAFKA_SH = ROOT / "deploy" / "local" / "kafka.sh"

ROUTES = ("deliver", "block", "invalid")
#: Fewest events of a multi-worker throughput run.
MULTI_WORKER_EVENTS = 800_000
#: Bound on reading a run's output back; a hang here is a harness bug, not a result.
READ_TIMEOUT_S = 300.0

#: The goals the hot path is tuned against (see benchmarks/README.md).
GOALS = {
    "filterd_vs_raw_pipe": 0.85,
    "filterd_vs_naive": 3.0,
    "filterd_vs_peer": 2.0,
    "p99_delta_ms_vs_raw_pipe": 5.0,
    "metrics_overhead": 0.02,
    # Warm, against the Kafka Streams peer.
    "filterd_cpu_vs_kafka_streams": 0.8,
    "filterd_x2_vs_kafka_streams": 1.2,
    # The cost of the features, one process each, same events, same run (issues 18 and 20).
    "filterd_limits_vs_filterd": 0.85,
    "filterd_features_vs_filterd": 0.85,
}
#: Goals where lower is better.
LOWER_IS_BETTER = frozenset(
    {"p99_delta_ms_vs_raw_pipe", "metrics_overhead", "filterd_cpu_vs_kafka_streams"}
)


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True, slots=True)
class Variant:
    """One implementation under test: how to start it and which outputs it writes."""

    name: str
    argv: tuple[str, ...]
    routes: tuple[str, ...] = ROUTES
    #: Extra config sections merged into the run's TOML.
    config: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    #: A module that must be importable for the variant to run (None: always).
    requires: str | None = None
    label: str = ""
    #: Consumer group members it runs (``--workers``): figures count from the
    #: moment the group settled with all of them (see ``wait_for_group``).
    members: int = 1
    #: Programs that must be on PATH for the variant to run (none: always).
    tools: tuple[str, ...] = ()
    #: Run once before the session's first run (a build); raises to skip the variant.
    prepare: Callable[[], object] | None = None
    #: Live changes offered per second on a changes topic of its own while it runs
    #: (registry opt-outs of pairs of the traffic); 0: no changes topic.
    change_rate: float = 0.0
    #: Block reasons (and ``filterd-change`` / ``filterd-declared-category`` headers) its
    #: timed window must show, or the run is marked as not doing what it is named for.
    expect: tuple[str, ...] = ()


#: Step 4 of the features variants: the demo's quiet hours (22:00-08:00) and three cap
#: rules (marketing per pair per day, verification per recipient per hour, every category
#: per recipient per day; ``filterd.loadgen.bombing.DEMO_LIMITS``), monitor mode off, and
#: zones by number prefix (the longest prefix is looked up per record).
LIMITS_POLICY: dict[str, object] = {
    **tomllib.loads("\n".join(DEMO_LIMITS))["policy"],
    "monitor": [],
    "timezones": {"86": "Asia/Shanghai", "91": "Asia/Kolkata", "1": "America/New_York"},
}
#: Live changes per second of ``filterd_features`` (issue 20's wave).
FEATURE_CHANGE_RATE = 1000.0
#: The headers that show a feature decided: a live change, an honest category.
HEADER_DECLARED = "filterd-declared-category"


def make_variants(workers: int | None = None) -> dict[str, Variant]:
    """Every variant of the session, by name."""
    py = sys.executable
    run: tuple[str, ...] = (py, "-m", "filterd", "run")
    members = workers or 1
    if workers:
        run += ("--workers", str(workers))
    metrics_on = {"metrics": {"enabled": True}}
    # Step 4 on: quiet hours and three cap rules (the counters' changelog written).
    limits = Variant(
        "filterd_limits",
        run,
        config={**metrics_on, "policy": LIMITS_POLICY},
        members=members,
        label="quiet hours, 3 caps",
        expect=("quiet-hours", "frequency-cap"),
    )
    return {
        "raw_pipe": Variant("raw_pipe", (py, "-m", "benchmarks.raw_pipe"), routes=("deliver",)),
        "filterd": Variant("filterd", run, config=metrics_on, members=members),
        # Both cores: the shipped way to scale on one machine (two processes
        # against the raw pipe's one, so not the goal's figure).
        "filterd_x2": Variant(
            "filterd_x2",
            (py, "-m", "filterd", "run", "--workers", "2"),
            # A shorter heartbeat only makes the start-up rebalance (the second
            # worker joining) take ~1 s instead of ~3 s.
            config={**metrics_on, "kafka": {"heartbeat_interval_ms": 500}},
            members=2,
            label="--workers 2",
        ),
        "filterd_limits": limits,
        # The wave's features on: honest categories (the shipped marketing_markers, on in
        # `filterd` too), live changes at 1,000/s during the run, quiet hours and the caps.
        "filterd_features": replace(
            limits,
            name="filterd_features",
            label="changes 1,000/s, quiet hours, 3 caps",
            change_rate=FEATURE_CHANGE_RATE,
            expect=("quiet-hours", "frequency-cap", "opted-out", HEADER_CHANGE, HEADER_DECLARED),
        ),
        "filterd_nometrics": Variant(
            "filterd_nometrics", run, config={"metrics": {"enabled": False}}, members=members
        ),
        # The price of exactly-once: a transaction per input partition per batch.
        "filterd_eos": Variant(
            "filterd_eos",
            run,
            config={**metrics_on, "delivery": {"mode": "exactly-once"}},
            members=members,
        ),
        # Not in the default session: filterd with a decision that costs nothing.
        # Every event is over a 1-byte size limit, so the decision returns at its first
        # check and every record goes, with the four contract headers, to the invalid
        # topic. What is left is filterd's own machinery (compiled batch step, headers,
        # metrics, commits) on one output topic: the most any decision logic could
        # reach against the raw pipe with this client.
        "filterd_floor": Variant(
            "filterd_floor",
            run,
            routes=("invalid",),
            config={**metrics_on, "policy": {"max_event_bytes": 1}},
            members=members,
            label="decision skipped",
        ),
        "naive": Variant("naive", (py, "-m", "benchmarks.naive_filter")),
        # The strongest peer: a tuned Java Kafka Streams filter (benchmarks/peers/kafka-streams),
        # built with Maven before the first run; one stream thread, or two (both cores).
        # The session gates it first (gate_peer) and times it warm (WARM_VARIANTS).
        "kafka_streams": Variant(
            "kafka_streams",
            (py, "-m", "benchmarks.peer_kafka_streams", "run", "--threads", "1"),
            label="Kafka Streams, 1 thread",
            tools=_PEER_TOOLS,
            prepare=_build_kafka_streams,
        ),
        "kafka_streams_x2": Variant(
            "kafka_streams_x2",
            (py, "-m", "benchmarks.peer_kafka_streams", "run", "--threads", "2"),
            label="Kafka Streams, 2 threads",
            members=2,
            tools=_PEER_TOOLS,
            prepare=_build_kafka_streams,
        ),
        "peer": Variant(
            "peer", (py, "-m", "benchmarks.peer_quix"), requires="quixstreams", label="quixstreams"
        ),
    }


DEFAULT_ORDER = (
    "raw_pipe", "filterd", "filterd_x2", "filterd_limits", "filterd_features",
    "filterd_nometrics", "filterd_eos", "naive", "peer", "kafka_streams",
)  # fmt: skip

_PEER_TOOLS = ("mvn", "java", "javac")

#: Variants warmed up before their timed window (``--warmup``): the peer's JIT needs
#: it; filterd gets the same for fairness, and the features variants as filterd does
#: (their ratios to it). The others are timed from a fresh start.
WARM_VARIANTS = (
    "filterd", "filterd_x2", "filterd_limits", "filterd_features", "kafka_streams",
    "kafka_streams_x2",
)  # fmt: skip
#: Warm-up records: about what the peer's JIT needs here (full) and a quick stand-in.
WARMUP_FULL = 2_000_000
WARMUP_QUICK = 500_000
#: Checkpoints of a throughput run's output (time to full speed, CPU per record).
CHECKPOINTS = 10


def with_warmup(events: Sequence[Event], warmup: int) -> list[Event]:
    """``warmup`` records taken from ``events`` over and over, then ``events`` themselves.

    Ids repeat: runs that preload these read only counts, never match ids.
    """
    if warmup <= 0 or not events:
        return list(events)
    repeats = -(-warmup // len(events))
    return (list(events) * repeats)[:warmup] + list(events)


def _build_kafka_streams() -> object:
    from benchmarks.peer_kafka_streams import build

    return build()


def stamp_days(events: Sequence[Event], warmup: int, now_ms: int) -> list[Outgoing]:
    """``events`` with record timestamps for step 4, the same whenever the run starts.

    Step 4 reads a record's timestamp in the recipient's local time. The timed records
    (after the first ``warmup``) are spread evenly over the last whole day of Asia/Shanghai
    before ``now_ms``, in order, and the warm-up over the day before: the timed window holds
    every local hour once, so the quiet hours (22:00-08:00) take the same share of it at any
    time of day, and the day's caps fill as a day of traffic fills them.
    """
    day_ms = 86_400_000
    zone = ZoneInfo("Asia/Shanghai")
    midnight = dt.datetime.fromtimestamp(now_ms / 1000, zone).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    end = int(midnight.timestamp() * 1000)
    warmup = min(warmup, len(events))
    out: list[Outgoing] = []
    for start, part in ((end - 2 * day_ms, events[:warmup]), (end - day_ms, events[warmup:])):
        step = day_ms / max(1, len(part))
        out.extend((k, v, start + int(i * step), ()) for i, (k, v) in enumerate(part))
    return out


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _tables(values: Sequence[object]) -> bool:
    """A non-empty list of mappings: an array of tables."""
    return bool(values) and all(isinstance(v, Mapping) for v in values)


def _toml_table(header: str, values: Mapping[str, object], lines: list[str]) -> None:
    """``[header]`` with its keys, then its sub-tables and arrays of tables."""
    lines.append(header)
    name = header.strip("[]")
    nested: list[tuple[str, Mapping[str, object]]] = []
    for key, value in values.items():
        path = f"{name}.{key if _BARE_KEY.fullmatch(key) else json.dumps(key)}"
        if isinstance(value, Mapping):
            nested.append((f"[{path}]", value))
        elif isinstance(value, list | tuple) and _tables(value):
            nested.extend((f"[[{path}]]", v) for v in value)
        else:
            key_text = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
            lines.append(f"{key_text} = {_toml_value(value)}")
    lines.append("")
    for sub_header, sub in nested:
        _toml_table(sub_header, sub, lines)


def to_toml(sections: Mapping[str, Mapping[str, object]]) -> str:
    """A TOML document: sections of strings, numbers, booleans and arrays of them, with
    sub-tables (a mapping value) and arrays of tables (a list of mappings, ``[[policy.caps]]``)."""
    lines: list[str] = []
    for section, values in sections.items():
        _toml_table(f"[{section}]", values, lines)
    return "\n".join(lines)


def merge(*layers: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """Section-wise merge; later layers win."""
    out: dict[str, dict[str, object]] = {}
    for layer in layers:
        for section, values in layer.items():
            out.setdefault(section, {}).update(values)
    return out


def free_port(count: int = 1) -> int:
    """A TCP port free right now on loopback, and the ``count - 1`` after it.

    For a metrics endpoint per run; worker *i* of ``--workers N`` serves on port + i.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count - 1 > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base + 1, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports on loopback")


# --------------------------------------------------------------------------- one process


class VariantProcess:
    """A variant running as its own process, its output in a log file."""

    #: Every process started and not yet stopped, for :func:`stop_leftovers`.
    live: ClassVar[set[VariantProcess]] = set()

    def __init__(self, argv: Sequence[str], config_path: Path, log_path: Path) -> None:
        self.argv = [*argv, "--config", str(config_path)]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # FILTERD_* variables of the caller would override the run's config.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FILTERD_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        VariantProcess.live.add(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; the exit code."""
        if self.proc is None:
            return None
        VariantProcess.live.discard(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.argv[2], timeout_s)
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_leftovers() -> None:
    """Stop variant processes a crashed or interrupted session left running."""
    for vp in list(VariantProcess.live):
        if vp.proc is not None and vp.proc.poll() is None:
            vp.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                vp.proc.wait(30)
            if vp.proc.poll() is None:
                vp.proc.kill()
    VariantProcess.live.clear()


def run_guarded(coro: Coroutine[object, object, T]) -> T:
    """``asyncio.run`` that never leaves a variant process behind, even on SIGTERM."""
    # SIGTERM becomes SystemExit, so the finally below runs (Python's default
    # would end the harness at once and orphan the variant under test).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return asyncio.run(coro)
    finally:
        stop_leftovers()


# --------------------------------------------------------------------------- the session


@dataclass(slots=True)
class Workload:
    """Everything prepared once per session: snapshot and the events, in memory."""

    dataset: Path
    snapshot_root: Path
    throughput_events: list[Event]
    warmup_events: list[Event]
    latency_events: list[Event] = field(default_factory=list)
    seed: int = 7

    def size_latency_events(self, count: int) -> None:
        """Generate the latency run's events (their number depends on the offered rate)."""
        if len(self.latency_events) != count:
            self.latency_events = load_events(str(self.dataset), count, seed=self.seed + 1)


def prepare_workload(
    workdir: Path, *, events: int, dataset: Path | None, seed: int = 7, features: bool = False
) -> Workload:
    """Generate (or reuse) a data set, build its snapshot, generate the events.

    ``features`` spreads traffic the wave's features act on evenly through the throughput
    events (the generator's pairs rarely repeat and its texts are honest): the demo's SMS
    bombing (``filterd.loadgen.bombing``: a shop's campaign, 8 promotions to each of 300
    consenting customers, and an OTP flood of 150 codes at one number; 2,550 events), for the
    caps to cap, and about 500 promotions sent as verification codes
    (``filterd.loadgen.evidence``), for the honest-category step to catch.
    """
    dataset, snapshot_root = ensure_snapshot(workdir, dataset)
    # Distinct seeds: event ids are m-<seed>-<n>, so the three sets never share an id.
    throughput_events = load_events(str(dataset), events, seed=seed)
    if features:
        from filterd.loadgen import load_dataset
        from filterd.loadgen.bombing import bombing_events
        from filterd.loadgen.evidence import evidence_events

        now_ms = int(time.time() * 1000)
        bombing = bombing_events(load_dataset(dataset), now_ms=now_ms, seed=seed).events
        # Of the evidence events, only the disguises: the others are aimed at senders and
        # opt-outs of an evidence data set this snapshot does not hold.
        disguises = [
            e
            for e in evidence_events(dataset, 2_500, seed=seed, ts_ms=now_ms)
            if b'"category":"verification"' in e[1]
        ]
        throughput_events = interleave(interleave(throughput_events, bombing), disguises)
    return Workload(
        dataset=dataset,
        snapshot_root=snapshot_root,
        throughput_events=throughput_events,
        warmup_events=load_events(str(dataset), 200, seed=seed + 2),
        seed=seed,
    )


def interleave(events: Sequence[Event], extra: Sequence[Event]) -> list[Event]:
    """``events`` with ``extra`` spread evenly among them, each list's order kept."""
    if not extra:
        return list(events)
    out: list[Event] = []
    every = len(events) / len(extra)
    j = 0
    for i, event in enumerate(events):
        while j < len(extra) and j * every <= i:
            out.append(extra[j])
            j += 1
        out.append(event)
    out.extend(extra[j:])
    return out


class Session:
    """Runs variants one at a time against fresh topics and collects per-run results."""

    def __init__(
        self,
        bootstrap: str,
        workdir: Path,
        workload: Workload,
        *,
        partitions: int,
        knobs: Mapping[str, Mapping[str, object]] | None = None,
        keep_topics: bool = False,
        stall_timeout_s: float = 60.0,
        multi_worker_events: int = MULTI_WORKER_EVENTS,
        warmup: int = 0,
        warm_variants: Sequence[str] = WARM_VARIANTS,
    ) -> None:
        self.multi_worker_events = multi_worker_events
        #: Records each variant of ``warm_variants`` routes before its timed window.
        self.warmup = warmup
        self.warm_variants = frozenset(warm_variants)
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.workload = workload
        self.partitions = partitions
        self.knobs = knobs or {}
        self.keep_topics = keep_topics
        self.stall_timeout_s = stall_timeout_s
        self._runs = 0

    def _config(
        self, variant: Variant, topics: Mapping[str, str], group: str, extra: Mapping[str, object]
    ) -> Path:
        sections = merge(
            {
                "kafka": {"bootstrap_servers": self.bootstrap, "group_id": group},
                # No live changes unless a variant names a changes topic.
                "topics": {"changes": "", "inbound": "", **topics},
                "snapshot": {"root": str(self.workload.snapshot_root)},
                "metrics": {"port": free_port(variant.members)},
                "logging": {"level": "INFO"},
            },
            self.knobs,
            variant.config,
            extra,  # type: ignore[arg-type]
        )
        path = self.workdir / f"run-{self._runs:03d}-{variant.name}.toml"
        path.write_text(to_toml(sections))
        return path

    async def _topics(
        self, variant: Variant, partitions: int, *, input_append_time: bool = False
    ) -> dict[str, str]:
        base = unique_name(f"bench-{variant.name.replace('_', '-')}")
        topics = {"input": f"{base}.in", **{r: f"{base}.{r}" for r in ROUTES}}
        # Step 4's changelog: `filterd run` creates it at start-up (limits on or off); named
        # here so that the run's clean-up deletes it with the others.
        topics["counters"] = f"{base}.counters"
        await create_topics(
            self.bootstrap, [topics["input"]], partitions, log_append_time=input_append_time
        )
        await create_topics(
            self.bootstrap, [topics[r] for r in ROUTES], partitions, log_append_time=True
        )
        if variant.change_rate:
            from benchmarks.changes_bench import create_changes_topic

            topics["changes"] = f"{base}.changes"
            await create_changes_topic(self.bootstrap, topics["changes"], partitions)
        return topics

    def _changes_for(self, variant: Variant, records: int) -> list[Event]:
        """The live changes of a run routing ``records`` (none without a change rate).

        Enough for the run at 20k records/s and half a minute more (``changes_ran_out`` in
        the result says when that was too few); built before the variant starts, so that
        building them takes no CPU from it.
        """
        if not variant.change_rate:
            return []
        from benchmarks.changes_bench import registry_churn
        from filterd.loadgen import load_dataset

        events = self.workload.throughput_events
        count = int(variant.change_rate * (records / 20_000 + 30))
        senders = {s.id for s in load_dataset(self.workload.dataset).senders}
        return registry_churn(events, max(10, len(events) // 100), count, senders)

    @contextlib.asynccontextmanager
    async def _live_changes(
        self, variant: Variant, topics: Mapping[str, str], partitions: int, changes: list[Event]
    ) -> AsyncIterator[dict[str, object]]:
        """While the variant runs: ``changes`` at ``variant.change_rate`` per second.

        Opt-outs of a pool of pairs of the throughput events (1 %, spread over them), each
        cleared again a pool's length later (``changes_bench.registry_churn``): every change
        is parsed, applied and kept pending as any other, each opt-out blocks the later
        records of its pair (the warm-up repeats the events) with ``filterd-change``, and the
        decisions stay close to those of the run without changes (at most 1 % of the pairs
        opted out at a time), so the ratio to it measures the feed rather than a different
        mix of outcomes. What was offered is filled in on the way out.
        """
        offered: dict[str, object] = {}
        if not changes:
            yield offered
            return
        started = time.monotonic()
        task = asyncio.create_task(
            produce_paced(
                self.bootstrap, topics["changes"], partitions, changes, variant.change_rate
            )
        )
        try:
            yield offered
        finally:
            ran_out = task.done()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            offered.update(
                change_rate=variant.change_rate,
                changes_offered_s=round(time.monotonic() - started, 1),
                # The list ran out before the run ended: changes stopped early (say so).
                changes_ran_out=ran_out,
            )

    async def _cleanup(self, topics: Mapping[str, str]) -> None:
        if not self.keep_topics:
            with contextlib.suppress(Exception):
                await delete_topics(self.bootstrap, list(topics.values()))

    def warmup_for(self, variant: Variant) -> int:
        """Records ``variant`` routes before its timed window (0: timed from the start)."""
        return self.warmup if variant.name in self.warm_variants else 0

    async def throughput_run(
        self, variant: Variant, *, partitions: int | None = None
    ) -> dict[str, object]:
        """Preload the events, start the variant, time first → last output record.

        A warm variant (:meth:`warmup_for`) gets its warm-up records first; its
        figures are then those of the records after the warm-up. CPU per record is
        its process tree's CPU time over the timed window (:mod:`benchmarks.cpu`).
        """
        self._runs += 1
        parts = partitions or self.partitions
        events = self.workload.throughput_events
        if variant.members > 1:
            # The group settles a few seconds after the start: enough events that
            # most of them are decided with every worker busy (ids repeat; only
            # counts are read in a throughput run).
            events = list(events) * -(-self.multi_worker_events // len(events))
        warmup = self.warmup_for(variant)
        events = with_warmup(events, warmup)
        topics = await self._topics(variant, parts)
        outputs = [topics[r] for r in variant.routes]
        group = unique_name("bench-group")
        proc = VariantProcess(
            variant.argv,
            self._config(variant, topics, group, {}),
            self.workdir / f"run-{self._runs:03d}-{variant.name}-throughput.log",
        )
        try:
            # Every variant gets the same records, stamped for step 4 (stamp_days).
            stamped = stamp_days(events, warmup, int(time.time() * 1000))
            await preload(self.bootstrap, topics["input"], parts, stamped)
            changes = self._changes_for(variant, len(events))
            started, started_mono = time.time(), time.monotonic()
            proc.start()
            assert proc.proc is not None
            settled: asyncio.Task[int] | None = None
            if variant.members > 1:
                settled = asyncio.create_task(
                    wait_for_group(self.bootstrap, group, variant.members, alive=proc.alive)
                )
            async with (
                self._live_changes(variant, topics, parts, changes) as offered,
                OutputWatcher(self.bootstrap, outputs) as watcher,
            ):
                checkpoints = await follow(
                    proc.proc.pid,
                    watcher.total,
                    total=len(events),
                    # A checkpoint falls right after the warm-up: the timed window
                    # holds nearly all the records after it.
                    step=max(1, (warmup or len(events)) // CHECKPOINTS),
                    started=started_mono,
                    ready=lambda: settled is None or settled.done(),
                    alive=proc.alive,
                    stall_timeout_s=self.stall_timeout_s,
                )
            await proc.stop()
            span = await asyncio.wait_for(output_span(self.bootstrap, outputs), READ_TIMEOUT_S)
            sustained: dict[str, object] = {}
            if settled is not None:
                sustained = await self._since_settled(await settled, span, outputs, started)
            timed = await self._timed_window(checkpoints, warmup, len(events), outputs, started)
            features: dict[str, object] = {}
            if variant.expect:
                features["features"] = await self._features(
                    variant, topics, len(events), span, timed, offered
                )
            return {
                "msgs_per_s": round(span.msgs_per_s(), 1),
                "records_in": len(events),
                "records_out": span.count,
                "repeated": span.count - len(events),
                "window_s": round((span.last_ms - span.first_ms) / 1000.0, 3),
                "first_batch_records": span.at_first,
                "startup_s": round(span.first_ms / 1000.0 - started, 3),
                "per_topic": {r: span.per_topic[topics[r]] for r in variant.routes},
                "partitions": parts,
                **sustained,
                **timed,
                **features,
            }
        except Exception as exc:
            raise RunFailed(f"{variant.name}: {exc}\n{proc.tail()}") from exc
        finally:
            await proc.stop()
            await self._cleanup(topics)

    async def _features(
        self,
        variant: Variant,
        topics: Mapping[str, str],
        records_in: int,
        span: OutputSpan,
        timed: Mapping[str, object],
        offered: Mapping[str, object],
    ) -> dict[str, object]:
        """What the features did in the timed window, and whether it is what they are for.

        Reads the block topic from the window's opening (LogAppendTime): the records by
        block reason and those carrying ``filterd-change`` or ``filterd-declared-category``;
        and how many were delivered. ``step4_share``: the records step 4 evaluated (the ones
        step 3 delivered, then delivered or blocked by quiet hours or a cap) over the window's.
        ``ok``: every record routed, and every mark of ``variant.expect`` present.
        """
        since = timed.get("timed_from_ms")
        since_ms = since if isinstance(since, int) else None
        marks = await asyncio.wait_for(
            read_records(self.bootstrap, [topics["block"]], _block_marks, since_ms=since_ms),
            READ_TIMEOUT_S,
        )
        counts: dict[str, int] = {}
        for record_marks in marks:
            for mark in record_marks:
                counts[mark] = counts.get(mark, 0) + 1
        delivered = await records_since(self.bootstrap, [topics["deliver"]], since_ms or 0)
        window = timed.get("timed_records")
        window_records = window if isinstance(window, int) else span.count
        step4 = delivered + counts.get("quiet-hours", 0) + counts.get("frequency-cap", 0)
        missing = [mark for mark in variant.expect if not counts.get(mark)]
        routed = span.count >= records_in
        return {
            "window": "timed" if since_ms is not None else "whole run",
            "records": window_records,
            "delivered": delivered,
            "blocked": {k: v for k, v in sorted(counts.items()) if not k.startswith("filterd-")},
            "headers": {k: v for k, v in sorted(counts.items()) if k.startswith("filterd-")},
            "step4_share": round(step4 / window_records, 3) if window_records else None,
            "routed_every_record": routed,
            "missing": missing,
            "ok": routed and not missing,
            **offered,
        }

    async def _since_settled(
        self, settled_ms: int, span: OutputSpan, outputs: Sequence[str], started: float
    ) -> dict[str, object]:
        """A multi-worker run's throughput from its group settling to the last output."""
        after = await records_since(self.bootstrap, outputs, settled_ms)
        if span.last_ms <= settled_ms or after < span.count // 4:
            raise RuntimeError(
                f"only {after} of {span.count} records after the group settled: "
                "use more --events for a multi-worker variant"
            )
        return {
            # From the group settling to the last output: all workers busy.
            "msgs_per_s": round(throughput(after, settled_ms, span.last_ms), 1),
            "msgs_per_s_from_first_output": round(span.msgs_per_s(), 1),
            "settle_s": round(settled_ms / 1000.0 - started, 3),
            "records_after_settle": after,
        }

    async def _timed_window(
        self,
        checkpoints: list[dict[str, float]],
        warmup: int,
        total: int,
        outputs: Sequence[str],
        started: float,
    ) -> dict[str, object]:
        """CPU per record over the timed window; with a warm-up, the warm throughput.

        The window opens at the first checkpoint past the warm-up (and, for several
        workers, past the group settling); without a warm-up, at the first output.
        Warm throughput counts by LogAppendTime from that checkpoint to the last output.
        """
        summary = summarize(checkpoints, warmup=warmup, total=total)
        warm = summary["warm"]
        cold = summary["cold"]
        assert isinstance(warm, Mapping)
        assert isinstance(cold, Mapping)
        out: dict[str, object] = {
            "cpu_us_per_record": warm["cpu_us_per_record"],
            "first_output_s": summary["first_output_s"],
            "stretches": summary["stretches"],
        }
        if warmup:
            opened = next(c for c in checkpoints if c["records"] == warm["from_records"])
            opened_ms = int((started + opened["t_s"]) * 1000)
            span = await asyncio.wait_for(output_span(self.bootstrap, outputs), READ_TIMEOUT_S)
            after = await records_since(self.bootstrap, outputs, opened_ms)
            if span.last_ms <= opened_ms or after <= 0:
                raise RuntimeError(
                    f"no output after the {warmup}-record warm-up could be timed: use more --events"
                )
            out.update(
                timed_from_ms=opened_ms,
                warmup_records=warmup,
                msgs_per_s_cold=cold["msgs_per_s"],
                cpu_us_per_record_cold=cold["cpu_us_per_record"],
                msgs_per_s_from_first_output=round(span.msgs_per_s(), 1),
                msgs_per_s=round(throughput(after, opened_ms, span.last_ms), 1),
                timed_records=after,
            )
        return out

    async def latency_run(
        self, variant: Variant, rate: float, *, partitions: int | None = None
    ) -> dict[str, object]:
        """Start the variant, warm it up, offer events at ``rate``, measure send → output."""
        self._runs += 1
        parts = partitions or self.partitions
        # The input topic stamps arrivals too: send → input arrival is the harness's
        # own share of every latency figure, reported beside it as "generator".
        topics = await self._topics(variant, parts, input_append_time=True)
        outputs = [topics[r] for r in variant.routes]
        group = unique_name("bench-group")
        proc = VariantProcess(
            variant.argv,
            self._config(variant, topics, group, {}),
            self.workdir / f"run-{self._runs:03d}-{variant.name}-latency.log",
        )
        warm = self.workload.warmup_events
        # A warm variant routes its warm-up (ids of the throughput set, never matched)
        # before the paced load, as in its throughput runs.
        warmup = self.warmup_for(variant)
        first = with_warmup(self.workload.throughput_events, warmup)[:warmup] if warmup else warm
        events = self.workload.latency_events
        changes = self._changes_for(variant, len(first) + len(events))
        try:
            proc.start()
            # Warm-up: the variant has joined its group, loaded its snapshot and
            # opened its producer connections before the measured traffic starts.
            await preload(self.bootstrap, topics["input"], parts, first)
            routed = len(first)
            async with (
                self._live_changes(variant, topics, parts, changes) as offered,
                OutputWatcher(self.bootstrap, outputs) as watcher,
            ):
                await watcher.wait_for(routed, stall_timeout_s=120.0, alive=proc.alive)
                if variant.members > 1:
                    # Every worker in the group, and each through one batch, first.
                    await wait_for_group(self.bootstrap, group, variant.members, alive=proc.alive)
                    await preload(self.bootstrap, topics["input"], parts, warm)
                    routed += len(warm)
                    await watcher.wait_for(routed, stall_timeout_s=120.0, alive=proc.alive)
                paced = await produce_paced(
                    self.bootstrap, topics["input"], parts, events, rate=rate
                )
                await watcher.wait_for(
                    routed + len(events),
                    stall_timeout_s=self.stall_timeout_s,
                    alive=proc.alive,
                )
            await proc.stop()
            arrivals = await asyncio.wait_for(
                read_arrivals(self.bootstrap, outputs), READ_TIMEOUT_S
            )
            lat = list(latencies_ms(arrivals, paced.sent_ms))
            summary: dict[str, object] = dict(latency_summary(lat))
            inputs = await asyncio.wait_for(
                read_arrivals(self.bootstrap, [topics["input"]]), READ_TIMEOUT_S
            )
            gen = latency_summary(latencies_ms(inputs, paced.sent_ms))
            summary["generator_p50_ms"] = gen.get("p50_ms")
            summary["generator_p99_ms"] = gen.get("p99_ms")
            summary.update(
                offered_rate=round(rate, 1),
                achieved_offer_rate=round(paced.offered / paced.elapsed_s, 1),
                offered=paced.offered,
                ambiguous_ids=paced.ambiguous_ids,
                max_tick_records=paced.max_tick_records,
                generator=paced.client,
                expected_tick_records=round(rate * 0.002, 1),
                partitions=parts,
                **offered,
            )
            return summary
        except Exception as exc:
            raise RunFailed(f"{variant.name}: {exc}\n{proc.tail()}") from exc
        finally:
            await proc.stop()
            await self._cleanup(topics)


class RunFailed(Exception):
    """One run of one variant failed; the session records it and goes on."""


def _block_marks(record: ConsumerRecord) -> tuple[str, ...]:
    """A block record's reason, and the feature headers it carries."""
    marks: list[str] = []
    for name, value in record.headers:
        if name == "filterd-reason":
            marks.append(bytes(value).decode())
        elif name in (HEADER_CHANGE, HEADER_DECLARED):
            marks.append(name)
    return tuple(marks)


# --------------------------------------------------------------------------- kafka's own tools


_PRODUCER_LINE = re.compile(
    r"(?P<n>\d+) records sent, (?P<rate>[\d.]+) records/sec .*?(?P<avg>[\d.]+) ms avg latency.*?"
    r"(?P<p50>\d+) ms 50th, (?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th, (?P<p999>\d+) ms 99.9th"
)


def parse_producer_perf(text: str) -> dict[str, float] | None:
    """The summary line of ProducerPerformance, or None."""
    found = None
    for match in _PRODUCER_LINE.finditer(text):
        found = match
    if found is None:
        return None
    return {
        "msgs_per_s": float(found["rate"]),
        "p50_ms": float(found["p50"]),
        "p99_ms": float(found["p99"]),
        "p999_ms": float(found["p999"]),
    }


def parse_consumer_perf(text: str) -> dict[str, float] | None:
    """The CSV result line of ConsumerPerformance (the header names the columns), or None.

    ``msgs_per_s`` is the fetch rate (``fetch.nMsg.sec``): the time spent joining the
    group is left out, as it is for the variants.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("start.time") and i + 1 < len(lines):
            names = [c.strip() for c in line.split(",")]
            values = [c.strip() for c in lines[i + 1].split(",")]
            row = dict(zip(names, values, strict=False))
            with contextlib.suppress(KeyError, ValueError):
                # fetch.* excludes the group join, like the variants' figures do.
                return {
                    "msgs_per_s": float(row["fetch.nMsg.sec"]),
                    "mb_per_s": float(row["fetch.MB.sec"]),
                    "msgs_per_s_with_join": float(row["nMsg.sec"]),
                }
    return None


async def kafka_perf(
    bootstrap: str, events: int, partitions: int, record_size: int
) -> dict[str, object]:
    """Kafka's own producer and consumer perf tools on the same broker: the ceiling."""
    if not KAFKA_SH.exists():
        return {"error": f"{KAFKA_SH} not found"}
    topic = unique_name("bench-perf")
    await create_topics(bootstrap, [topic], partitions)
    out: dict[str, object] = {"record_size": record_size, "records": events}
    try:
        produce = [
            str(KAFKA_SH), "run-class", "org.apache.kafka.tools.ProducerPerformance",
            "--topic", topic, "--num-records", str(events), "--record-size", str(record_size),
            "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}",
            "acks=all", "linger.ms=5", "batch.size=1048576",
        ]  # fmt: skip
        res = await asyncio.to_thread(
            subprocess.run, produce, capture_output=True, text=True, timeout=600
        )
        out["producer"] = parse_producer_perf(res.stdout) or {
            "error": (res.stderr or res.stdout)[-500:]
        }
        base = [
            str(KAFKA_SH), "run-class", "org.apache.kafka.tools.ConsumerPerformance",
            "--bootstrap-server", bootstrap, "--topic", topic,
        ]  # fmt: skip
        # Kafka 4.x renamed --messages to --num-records; try the new name first.
        for flag in ("--num-records", "--messages"):
            res = await asyncio.to_thread(
                subprocess.run,
                [*base, flag, str(events), "--timeout", "60000"],
                capture_output=True,
                text=True,
                timeout=600,
            )
            parsed = parse_consumer_perf(res.stdout)
            if parsed is not None:
                out["consumer"] = parsed
                break
        else:
            out["consumer"] = {"error": (res.stderr or res.stdout)[-500:]}
    except (OSError, subprocess.SubprocessError) as exc:
        out["error"] = str(exc)
    finally:
        with contextlib.suppress(Exception):
            await delete_topics(bootstrap, [topic])
    return out


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, object]:
    """Where the figures came from: CPU, cores, memory, versions, load before the run."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    for module in ("aiokafka", "orjson", "quixstreams", "confluent_kafka"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[module] = version(module.replace("_", "-"))
    return info


def summarize_variant(
    name: str,
    label: str,
    throughput_runs: Sequence[Mapping[str, object]],
    latency_runs: Sequence[Mapping[str, object]],
    errors: Sequence[str],
) -> dict[str, object]:
    """Medians over repetitions for one variant, with the spread and every run kept."""
    out: dict[str, object] = {}
    if label:
        out["name"] = label
    rates = [float(r["msgs_per_s"]) for r in throughput_runs]  # type: ignore[arg-type]
    if rates:
        out["msgs_per_s"] = round(statistics.median(rates), 1)
        out["msgs_per_s_spread"] = spread(rates)
    # CPU per record over the timed window; a warm variant's cold start beside it.
    for key in (
        "cpu_us_per_record", "warmup_records", "first_output_s", "msgs_per_s_cold",
        "cpu_us_per_record_cold",
    ):  # fmt: skip
        values = [float(v) for r in throughput_runs if isinstance(v := r.get(key), int | float)]
        if values:
            out[key] = round(statistics.median(values), 3)
            if key == "cpu_us_per_record":
                out[f"{key}_spread"] = spread(values)
    for key in ("p50_ms", "p99_ms", "p999_ms", "generator_p50_ms", "generator_p99_ms"):
        values = [float(r[key]) for r in latency_runs if r.get(key) is not None]  # type: ignore[arg-type]
        if values:
            out[key] = round(statistics.median(values), 3)
            out[f"{key}_spread"] = spread(values)
    checks = [c for r in throughput_runs if isinstance(c := r.get("features"), Mapping)]
    if checks:
        shares = [float(v) for c in checks if isinstance(v := c.get("step4_share"), int | float)]
        out["features"] = {
            "ok": all(c.get("ok") for c in checks),
            "runs": len(checks),
            "step4_share": round(statistics.median(shares), 3) if shares else None,
            # One run's counts in full (the others are in throughput_runs).
            "last_run": checks[-1],
        }
    out["throughput_runs"] = list(throughput_runs)
    out["latency_runs"] = list(latency_runs)
    if errors:
        out["errors"] = list(errors)
    return out


def _section(results: Mapping[str, object], name: str) -> Mapping[str, object]:
    section = results.get(name)
    return section if isinstance(section, Mapping) else {}


def _num(section: object, key: str) -> float | None:
    if isinstance(section, Mapping):
        value = section.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def compute_ratios(results: Mapping[str, object]) -> dict[str, float | None]:
    """The ratios the goals are stated in, from the variants' medians."""
    f = _num(results.get("filterd"), "msgs_per_s")
    return {
        "filterd_vs_raw_pipe": ratio(f, _num(results.get("raw_pipe"), "msgs_per_s")),
        "filterd_vs_naive": ratio(f, _num(results.get("naive"), "msgs_per_s")),
        "filterd_vs_peer": ratio(f, _num(results.get("peer"), "msgs_per_s")),
        "p99_delta_ms_vs_raw_pipe": _p99_delta(results, "filterd"),
        # Against the strongest peer, both warm: the whole box (two workers against
        # the better Kafka Streams configuration that ran) and CPU per record (one
        # process against one stream thread).
        "filterd_x2_vs_kafka_streams": ratio(
            _num(results.get("filterd_x2"), "msgs_per_s"), _best_peer(results)
        ),
        "filterd_cpu_vs_kafka_streams": ratio(
            _num(results.get("filterd"), "cpu_us_per_record"),
            _num(results.get("kafka_streams"), "cpu_us_per_record"),
        ),
        # The features' cost, one process each, warm: throughput with them on over off,
        # and CPU per record the other way round (above 1: a record costs more).
        **{
            f"{name}_vs_filterd": ratio(_num(results.get(name), "msgs_per_s"), f)
            for name in ("filterd_limits", "filterd_features")
        },
        **{
            f"{name}_cpu_vs_filterd": ratio(
                _num(results.get(name), "cpu_us_per_record"),
                _num(results.get("filterd"), "cpu_us_per_record"),
            )
            for name in ("filterd_limits", "filterd_features")
        },
    }


def _best_peer(results: Mapping[str, object]) -> float | None:
    """The higher throughput of the Kafka Streams configurations that ran."""
    rates = [
        rate
        for name in ("kafka_streams", "kafka_streams_x2")
        if (rate := _num(results.get(name), "msgs_per_s")) is not None
    ]
    return max(rates) if rates else None


def _p99_delta(results: Mapping[str, object], name: str) -> float | None:
    """p99 of variant ``name`` minus the raw pipe's, in ms."""
    p99 = _num(results.get(name), "p99_ms")
    p99_raw = _num(results.get("raw_pipe"), "p99_ms")
    return round(p99 - p99_raw, 3) if p99 is not None and p99_raw is not None else None


def scaling_ratios(results: Mapping[str, object]) -> dict[str, float | None]:
    """filterd ``--workers 2`` beside the one-process raw pipe: for sizing, not the goals."""
    x2 = _num(results.get("filterd_x2"), "msgs_per_s")
    return {
        "filterd_x2_vs_raw_pipe": ratio(x2, _num(results.get("raw_pipe"), "msgs_per_s")),
        "filterd_x2_vs_filterd": ratio(x2, _num(results.get("filterd"), "msgs_per_s")),
        "p99_delta_ms_x2_vs_raw_pipe": _p99_delta(results, "filterd_x2"),
    }


def metrics_overhead(results: Mapping[str, object]) -> float | None:
    """Share of throughput the metrics cost: 1 − filterd / filterd without metrics."""
    on = _num(results.get("filterd"), "msgs_per_s")
    off = _num(results.get("filterd_nometrics"), "msgs_per_s")
    r = ratio(on, off)
    return None if r is None else round(1.0 - r, 3)


def goals(ratios: Mapping[str, float | None], overhead: float | None) -> dict[str, object]:
    """Each goal with its target, the measured value and whether it is met."""
    measured: dict[str, float | None] = {**ratios, "metrics_overhead": overhead}
    out: dict[str, object] = {}
    for name, target in GOALS.items():
        value = measured.get(name)
        lower_is_better = name in LOWER_IS_BETTER
        met = None if value is None else (value <= target if lower_is_better else value >= target)
        out[name] = {"target": target, "value": value, "met": met}
    return out


def _fmt(value: object, digits: int = 1) -> str:
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return "–"


def render_markdown(results: Mapping[str, object], order: Sequence[str]) -> str:
    """The human-readable table of one session."""
    m = results.get("machine", {})
    assert isinstance(m, Mapping)
    lines = [
        f"# End-to-end benchmark ({'quick' if results.get('quick') else 'full'})",
        "",
        f"{results['events']:,} events, {results['partitions']} partitions, "
        f"{results['runs']} throughput repetition(s), {results.get('latency_runs', 0)} latency "
        f"repetition(s) at {_fmt(results.get('offered_rate_msgs_per_s'), 0)} msgs/s offered "
        f"({results.get('latency_events', 0):,} events each).",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('memory_gib', '?')} GiB, {m.get('platform', '')}; load average at start "
        f"{m.get('loadavg')}, at end {results.get('loadavg_end')}. "
        f"Started {results.get('started_at')}, took {_fmt(results.get('duration_s'), 0)} s.",
        "",
        _warmup_line(results),
        "",
        "| variant | msgs/s (median) | min – max | vs raw pipe | CPU µs/record | p50 ms | p99 ms "
        "| p99.9 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    raw = _num(results.get("raw_pipe"), "msgs_per_s")
    saturated = False
    for name in order:
        section = results.get(name)
        if not isinstance(section, Mapping):
            continue
        rate = _num(section, "msgs_per_s")
        sp = section.get("msgs_per_s_spread")
        rng = f"{_fmt(sp['min'], 0)} – {_fmt(sp['max'], 0)}" if isinstance(sp, Mapping) else "–"
        vs = ratio(rate, raw)
        title = f"{name} ({section['name']})" if "name" in section else name
        if rate is None and "errors" in section:
            title += " — failed, see json"
        mark = " †" if section.get("saturated_at_offered_load") else ""
        if section.get("saturated_at_offered_load"):
            saturated = True
        if "skipped" in section:
            title += f" — not run: {section['skipped']}"
        lines.append(
            f"| {title} | {_fmt(rate, 0)} | {rng} | {_fmt(vs, 2)} | "
            f"{_fmt(section.get('cpu_us_per_record'), 2)} | "
            f"{_fmt(section.get('p50_ms'))}{mark} | {_fmt(section.get('p99_ms'))}{mark} | "
            f"{_fmt(section.get('p999_ms'))}{mark} |"
        )
    perf = results.get("kafka_perf")
    if isinstance(perf, Mapping):
        for side in ("producer", "consumer"):
            row = perf.get(side)
            if isinstance(row, Mapping) and "msgs_per_s" in row:
                lines.append(
                    f"| kafka-{side}-perf-test (ceiling) | {_fmt(row['msgs_per_s'], 0)} | – | "
                    f"{_fmt(ratio(float(row['msgs_per_s']), raw), 2)} | – | "
                    f"{_fmt(row.get('p50_ms'))} | {_fmt(row.get('p99_ms'))} | "
                    f"{_fmt(row.get('p999_ms'))} |"
                )
    gen50 = [v for n in order if (v := _num(results.get(n), "generator_p50_ms")) is not None]
    gen99 = [v for n in order if (v := _num(results.get(n), "generator_p99_ms")) is not None]
    if gen50 and gen99:
        lines += [
            "",
            f"The harness's own share of those latencies (generator send → input topic "
            f"arrival), median over the runs: p50 {statistics.median(gen50):.1f} ms, p99 "
            f"{statistics.median(gen99):.1f} ms.",
        ]
    if saturated:
        lines += [
            "",
            "† the offered load exceeds this variant's throughput: its queue grows for the "
            "whole run, so its latency measures the backlog, not its path.",
        ]
    lines += _full_speed_lines(results, order)
    lines += _feature_lines(results, order)
    lines += ["", "| goal | target | measured | met |", "|---|---:|---:|:---:|"]
    g = results.get("goals", {})
    assert isinstance(g, Mapping)
    for name, row in g.items():
        met = {True: "yes", False: "**no**", None: "–"}[row["met"]]
        lines.append(f"| {name} | {row['target']} | {_fmt(row['value'], 3)} | {met} |")
    scaling = results.get("scaling")
    if isinstance(scaling, Mapping) and any(v is not None for v in scaling.values()):
        lines += [
            "",
            "Two workers (`--workers 2`: two processes, the raw pipe runs one), measured from "
            "the moment the group settled with both: "
            + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in scaling.items())
            + ".",
        ]
    lines += [
        "",
        "Throughput: output records / (last − first output LogAppendTime), events preloaded. "
        "Latency: output LogAppendTime − generator send time, at the offered rate above. "
        "See benchmarks/README.md.",
        "",
    ]
    return "\n".join(lines)


def _warmup_line(results: Mapping[str, object]) -> str:
    """What the report's warm figures mean, and the gate's answer."""
    warm = results.get("warmup")
    text = "No warm-up: every variant timed from a fresh start (first output → last)."
    if isinstance(warm, Mapping) and warm.get("records"):
        text = (
            f"Warm: {', '.join(warm['variants'])} first route {warm['records']:,} warm-up "
            "records and are timed over the records after them (msgs/s and CPU per record); "
            "the others from their first output. CPU per record: user + system time of the "
            "variant's process tree over its timed window (/proc) / records."
        )
        if warm.get("note"):
            text += f" {warm['note']}"
    gate = results.get("kafka_streams_gate")
    if isinstance(gate, Mapping) and "records" in gate:
        text += (
            f" Kafka Streams peer's gate on this session's {gate['records']:,} events: "
            f"{gate['agreed']:,} agree with filterd (route and reason; without step 2, "
            "honest categories, which the peer does not implement), "
            f"{'passed' if gate.get('ok') else '**failed: not timed**'}."
        )
    return text


def _feature_lines(results: Mapping[str, object], order: Sequence[str]) -> list[str]:
    """What the features variants' timed windows held: the check that they did their work."""
    lines: list[str] = []
    for name in order:
        features = _section(results, name).get("features")
        if not isinstance(features, Mapping):
            continue
        last = features.get("last_run")
        assert isinstance(last, Mapping)
        blocked = last.get("blocked", {})
        headers = last.get("headers", {})
        assert isinstance(blocked, Mapping)
        assert isinstance(headers, Mapping)
        text = (
            f"- `{name}`: {_fmt(features.get('step4_share'), 3)} of the records of its timed "
            f"window went through step 4 (median of {features['runs']} runs); one run's "
            f"{last.get('window')} window of {_fmt(last.get('records'), 0)} records: "
            f"{_fmt(last.get('delivered'), 0)} delivered, blocked "
            + ", ".join(f"{reason} {n:,}" for reason, n in blocked.items())
            + "; "
            + (", ".join(f"`{h}` on {n:,}" for h, n in headers.items()) or "no feature header")
            + " (block topic)"
        )
        if last.get("change_rate"):
            text += (
                f"; live changes offered at {_fmt(last.get('change_rate'), 0)}/s for "
                f"{_fmt(last.get('changes_offered_s'), 1)} s"
                + (
                    " (**the change list ran out before the run ended**)"
                    if last.get("changes_ran_out")
                    else ""
                )
            )
        missing = last.get("missing")
        text += (
            ". Check: passed."
            if features.get("ok")
            else f". Check: **failed** (missing: {', '.join(map(str, missing or [])) or '–'}; "
            "or not every record routed)."
        )
        lines.append(text)
    if not lines:
        return []
    return ["", "Features variants (their ratios to `filterd` are in the goals):", "", *lines]


def _full_speed_lines(results: Mapping[str, object], order: Sequence[str]) -> list[str]:
    """Time to full speed of the warm variants: first output, cold and warm rates."""
    rows = [
        f"| {name} | {_fmt(_num(section, 'first_output_s'), 1)} | "
        f"{_fmt(_num(section, 'msgs_per_s_cold'), 0)} | {_fmt(_num(section, 'msgs_per_s'), 0)} | "
        f"{_fmt(_num(section, 'cpu_us_per_record_cold'), 2)} | "
        f"{_fmt(_num(section, 'cpu_us_per_record'), 2)} |"
        for name in order
        if _num(section := _section(results, name), "msgs_per_s_cold") is not None
    ]
    if not rows:
        return []
    return [
        "",
        "Time to full speed (medians): first output after the start, then throughput and "
        "CPU per record during the warm-up (cold) and after it (warm).",
        "",
        "| variant | first output s | cold msgs/s | warm msgs/s | cold CPU µs/rec "
        "| warm CPU µs/rec |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
    ]


def render_charts(results: Mapping[str, object], order: Sequence[str], stem: Path) -> list[Path]:
    """Throughput bars (min–max whiskers) and latency percentile bars, as PNGs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[bench]'); no charts")
        return []
    names = [n for n in order if _num(results.get(n), "msgs_per_s") is not None]
    written = []
    if names:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        meds = [_num(results[n], "msgs_per_s") or 0.0 for n in names]
        lo, hi = [], []
        for n, med in zip(names, meds, strict=True):
            sp = _section(results, n).get("msgs_per_s_spread", {})
            assert isinstance(sp, Mapping)
            lo.append(med - float(sp.get("min", med)))
            hi.append(float(sp.get("max", med)) - med)
        bars = ax.bar(names, meds, yerr=[lo, hi], capsize=4, color="#4472c4")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in meds], padding=3, fontsize=8)
        ax.set_ylabel("msgs/s (median, min–max)")
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_title(
            f"Throughput, {results['events']:,} events, {results['partitions']} partitions"
        )
        fig.tight_layout()
        path = stem.with_name(stem.name + "-throughput.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    cpu_names = [n for n in order if _num(results.get(n), "cpu_us_per_record") is not None]
    if cpu_names:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        values = [_num(results[n], "cpu_us_per_record") or 0.0 for n in cpu_names]
        bars = ax.bar(cpu_names, values, color="#ed7d31")
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=3, fontsize=8)
        ax.set_ylabel("CPU µs per record (median; lower is better)")
        ax.set_title("CPU per record over the timed window (process tree, user + system)")
        ax.tick_params(axis="x", labelrotation=30)
        fig.tight_layout()
        path = stem.with_name(stem.name + "-cpu.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    lat_names = [n for n in order if _num(results.get(n), "p99_ms") is not None]
    if lat_names:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / 3
        for i, (key, label) in enumerate(
            (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
        ):
            xs = [j + (i - 1) * width for j in range(len(lat_names))]
            ax.bar(xs, [_num(results[n], key) or 0.0 for n in lat_names], width, label=label)
        # † marks a variant offered more than its throughput: its bars are a backlog.
        ticks = [
            n + (" †" if _section(results, n).get("saturated_at_offered_load") else "")
            for n in lat_names
        ]
        ax.set_xticks(range(len(lat_names)), ticks, rotation=30)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log scale)")
        ax.set_title(
            f"End-to-end latency at {_fmt(results.get('offered_rate_msgs_per_s'), 0)} msgs/s"
            " († saturated: offered > its throughput)"
        )
        ax.legend()
        fig.tight_layout()
        path = stem.with_name(stem.name + "-latency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_outputs(results: dict[str, object], order: Sequence[str], stem: Path) -> list[Path]:
    """``stem.json``, ``stem.md`` and the charts; the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path = stem.with_suffix(".md")
    md_path.write_text(render_markdown(results, order))
    return [json_path, md_path, *render_charts(results, order, stem)]


# --------------------------------------------------------------------------- main


async def prepare_variants(variants: Mapping[str, Variant], order: list[str]) -> dict[str, str]:
    """Drop from ``order`` the variants that cannot run here (build them first); why, by name."""
    skipped: dict[str, str] = {}
    for name in list(order):
        variant = variants[name]
        req = variant.requires
        missing = [tool for tool in variant.tools if shutil.which(tool) is None]
        if req and importlib.util.find_spec(req) is None:
            skipped[name] = f"{req} is not installed (pip install -e '.[bench]')"
        elif missing:
            skipped[name] = f"{', '.join(missing)} not found on PATH"
        elif variant.prepare is not None:
            try:
                await asyncio.to_thread(variant.prepare)
            except Exception as exc:
                log.error("%s: preparing failed: %s", name, exc)
                skipped[name] = f"preparing failed: {str(exc)[:500]}"
        if name in skipped:
            order.remove(name)
    return skipped


async def run_session(args: argparse.Namespace) -> dict[str, object]:
    """The whole benchmark: throughput repetitions, latency repetitions, Kafka's tools."""
    started_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    t0 = time.monotonic()
    machine = machine_info()
    variants = make_variants(args.workers)
    order = [n for n in args.variants.split(",") if n]
    for name in order:
        if name not in variants:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(variants)}")
    skipped = await prepare_variants(variants, order)
    workdir: Path = args.workdir
    workload = await asyncio.to_thread(
        prepare_workload,
        workdir,
        events=args.events,
        dataset=Path(args.dataset) if args.dataset else None,
        # The same events for every variant, with traffic the features act on.
        features=True,
    )
    gate = None
    if args.gate and any(n.startswith("kafka_streams") for n in order):
        gate = await gate_peer(args.bootstrap, workload, workdir)
        if not gate.get("ok"):
            for name in [n for n in order if n.startswith("kafka_streams")]:
                skipped[name] = "its correctness gate failed (kafka_streams_gate): not timed"
                order.remove(name)
    session = Session(
        args.bootstrap,
        workdir,
        workload,
        partitions=args.partitions,
        keep_topics=args.keep_topics,
        multi_worker_events=MULTI_WORKER_EVENTS // 2 if args.quick else MULTI_WORKER_EVENTS,
        warmup=args.warmup,
        warm_variants=args.warm_variants.split(","),
    )
    tput: dict[str, list[dict[str, object]]] = {n: [] for n in order}
    lat: dict[str, list[dict[str, object]]] = {n: [] for n in order}
    errors: dict[str, list[str]] = {n: [] for n in order}
    for rep in range(args.reps):
        # Rotate the order each repetition: no variant always runs first (cold) or last.
        for name in order[rep % len(order) :] + order[: rep % len(order)]:
            log.info("throughput rep %d/%d: %s", rep + 1, args.reps, name)
            try:
                result = await session.throughput_run(variants[name])
                log.info("  %s: %.0f msgs/s", name, result["msgs_per_s"])
                tput[name].append(result)
            except RunFailed as exc:
                log.error("  %s", exc)
                errors[name].append(str(exc))
    rate, basis = offered_rate(args, tput)
    latency_events = int(rate * args.latency_seconds) if rate else 0
    if rate:
        await asyncio.to_thread(workload.size_latency_events, latency_events)
        for rep in range(args.latency_reps):
            for name in order[rep % len(order) :] + order[: rep % len(order)]:
                log.info(
                    "latency rep %d/%d at %.0f msgs/s: %s", rep + 1, args.latency_reps, rate, name
                )
                try:
                    result = await session.latency_run(variants[name], rate)
                    log.info(
                        "  %s: p50 %.1f p99 %.1f ms",
                        name,
                        result.get("p50_ms", -1),
                        result.get("p99_ms", -1),
                    )
                    lat[name].append(result)
                except RunFailed as exc:
                    log.error("  %s", exc)
                    errors[name].append(str(exc))
    else:
        log.error("no raw pipe throughput and no --rate: latency runs skipped")

    avg_size = statistics.fmean(len(v) for _, v in workload.throughput_events[:10_000])
    results: dict[str, object] = {
        "benchmark": "e2e",
        "quick": args.quick,
        "events": args.events,
        "partitions": args.partitions,
        "runs": args.reps,
        "latency_runs": args.latency_reps if rate else 0,
        "latency_events": latency_events,
        "offered_rate_msgs_per_s": round(rate, 1) if rate else None,
        "offered_load": args.load if not args.rate else None,
        "offered_rate_basis": basis,
        "warmup": {
            "records": args.warmup,
            "variants": sorted(session.warm_variants & set(order)),
            "note": args.warmup_note,
        },
        "kafka_streams_gate": gate,
        "avg_event_bytes": round(avg_size, 1),
        "started_at": started_at,
        "machine": machine,
        "workdir": str(workdir),
    }
    for name in order:
        results[name] = summarize_variant(
            name, variants[name].label, tput[name], lat[name], errors[name]
        )
    for name in order:
        section = results[name]
        capacity = _num(section, "msgs_per_s")
        if rate and capacity is not None and isinstance(section, dict):
            # Offered more than it can take: its latency is a queue that grows for
            # the whole run, not a property of its path. Said, not hidden.
            section["saturated_at_offered_load"] = capacity < rate
    for name, reason in skipped.items():
        results[name] = (
            {"name": variants[name].label, "skipped": reason}
            if variants[name].label
            else {"skipped": reason}
        )
    if args.perf_test:
        log.info("kafka perf tools (ceiling)")
        # At least 200k records: fewer mostly time the JVM warming up.
        results["kafka_perf"] = await kafka_perf(
            args.bootstrap, max(args.events, 200_000), args.partitions, round(avg_size)
        )
    ratios = compute_ratios(results)
    overhead = metrics_overhead(results)
    results["ratios"] = ratios
    results["metrics_overhead"] = overhead
    results["goals"] = goals(ratios, overhead)
    results["scaling"] = scaling_ratios(results)
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = round(time.monotonic() - t0, 1)
    return results


def offered_rate(
    args: argparse.Namespace, tput: Mapping[str, Sequence[Mapping[str, object]]]
) -> tuple[float | None, str]:
    """The latency runs' offered rate and what it is a share of.

    ``--load`` of filterd's own one-process maximum (median throughput, warm, in this
    session): the load one process is sized for, not more than it can carry. Without
    a filterd run, of the raw pipe's.
    """
    if args.rate:
        return float(args.rate), "--rate"
    for name in ("filterd", "raw_pipe"):
        rates = [float(r["msgs_per_s"]) for r in tput.get(name, [])]  # type: ignore[arg-type]
        if rates:
            return args.load * statistics.median(rates), f"{args.load:g} x {name} msgs_per_s"
    return None, "no filterd or raw_pipe throughput"


async def gate_peer(bootstrap: str, workload: Workload, workdir: Path) -> dict[str, object]:
    """The Kafka Streams peer's correctness gate on the session's events.

    Its route and reason must agree with filterd's on every record (and the output
    contract hold) or it is not timed. Threads do not change the decision: one gate
    serves both configurations. The peer has no step 2 (honest categories: no marker
    search), so it is compared with filterd's decision without it (``marketing_markers``
    empty): on the session's promotions disguised as verification codes it delivers what
    filterd, as shipped, blocks.
    """
    from benchmarks.peer_kafka_streams import check_agreement
    from filterd.config import PolicyConfig

    records = [(k, v) for k, v in workload.throughput_events]
    log.info("kafka_streams: correctness gate on the session's %d events", len(records))
    started = time.monotonic()
    try:
        agreement = await check_agreement(
            records,
            bootstrap=bootstrap,
            snapshot_root=workload.snapshot_root,
            workdir=workdir,
            policy=replace(PolicyConfig(), marketing_markers=()),
        )
    except Exception as exc:
        log.error("kafka_streams: the gate could not run: %s", exc)
        return {"ok": False, "error": str(exc)[:2000]}
    report = agreement.as_dict() | {
        "seconds": round(time.monotonic() - started, 1),
        "compared_with": "filterd's decision without step 2 (marketing_markers = [])",
    }
    log.info(
        "  gate: %d of %d records agree (%s)",
        agreement.agreed,
        agreement.records,
        "passed" if agreement.ok else "FAILED",
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``python -m benchmarks.e2e``."""
    p = argparse.ArgumentParser(prog="benchmarks.e2e", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100k events, 2 reps (under 5 minutes)")
    p.add_argument("--events", type=int, help="events per throughput run (full: 500000)")
    p.add_argument(
        "--partitions", type=int, default=4,
        help="partitions of every topic (4: an even split for 1, 2 or 4 workers)",
    )  # fmt: skip
    p.add_argument("--reps", type=int, help="throughput repetitions per variant (full: 3)")
    p.add_argument("--latency-reps", type=int, help="latency repetitions per variant (full: 2)")
    p.add_argument(
        "--latency-seconds", type=float, help="length of the offered load (full: 20, quick: 6)"
    )
    p.add_argument(
        "--load", type=float, default=0.5,
        help="offered load, share of filterd's one-process maximum in this session",
    )  # fmt: skip
    p.add_argument(
        "--warmup", type=int,
        help=f"records the warm variants route before their timed window "
        f"(full: {WARMUP_FULL}, quick: {WARMUP_QUICK}; 0: none)",
    )  # fmt: skip
    p.add_argument(
        "--warm-variants", default=",".join(WARM_VARIANTS),
        help=f"variants given the warm-up (default {','.join(WARM_VARIANTS)})",
    )  # fmt: skip
    p.add_argument(
        "--no-gate", dest="gate", action="store_false",
        help="time the Kafka Streams peer without its correctness gate first",
    )  # fmt: skip
    p.add_argument("--rate", type=float, help="offered load in msgs/s (overrides --load)")
    p.add_argument(
        "--variants",
        help=f"comma-separated, run in this order (default {','.join(DEFAULT_ORDER)}; "
        "the full run adds kafka_streams_x2)",
    )
    p.add_argument("--workers", type=int, help="filterd run --workers N")
    p.add_argument("--no-perf-test", dest="perf_test", action="store_false")
    p.add_argument("--bootstrap", help="broker (default $KAFKA_BOOTSTRAP or 127.0.0.1:9092)")
    p.add_argument("--dataset", help="reuse a `filterd loadgen dataset` directory")
    p.add_argument("--workdir", help="keep configs, logs and the snapshot here")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the run topics")
    p.add_argument("--out", help="output stem (default benchmarks/results/e2e[-quick])")
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the quick/full defaults for flags not given."""
    quick = args.quick
    args.events = args.events or (100_000 if quick else 500_000)
    args.reps = args.reps or (2 if quick else 3)
    args.latency_reps = args.latency_reps or (1 if quick else 2)
    args.latency_seconds = args.latency_seconds or (6.0 if quick else 20.0)
    # The full run times both Kafka Streams configurations (one thread, two threads).
    args.variants = args.variants or ",".join(
        DEFAULT_ORDER if quick else (*DEFAULT_ORDER, "kafka_streams_x2")
    )
    if args.warmup is None:
        args.warmup = WARMUP_QUICK if quick else WARMUP_FULL
    args.warmup_note = (
        f"The quick run's warm-up ({args.warmup:,}) is shorter than the ~2 M records the "
        "peer's JIT needs here: its warm figures are not fully warm."
        if args.warmup < WARMUP_FULL
        else ""
    )
    args.bootstrap = bootstrap_from_env(args.bootstrap)
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="filterd-bench-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out = Path(args.out) if args.out else RESULTS / ("e2e-quick" if quick else "e2e")
    return args


def main(
    argv: Sequence[str] | None = None, *, after: Callable[[dict[str, object]], None] | None = None
) -> int:
    """Run the benchmark and write its results."""
    args = resolve_defaults(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = run_guarded(run_session(args))
    # Every variant that ran, opt-in ones (filterd_floor) included, in the usual order.
    order = [n for n in make_variants() if n in results]
    for path in write_outputs(results, order, args.out):
        print(path)
    print(render_markdown(results, order))
    if after is not None:
        after(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
