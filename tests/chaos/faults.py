"""Fault-injection suite: nothing lost, nothing in two topics, nothing repeated in EOS.

For each delivery mode it seeds uniquely numbered events over several partitions of
a fresh input topic on a *private* broker (never the shared one on 9092), runs two
``filterd run`` workers in one group, and while they stream it

- ``kill -9``s workers at random moments (and right after a broker restart, while
  they work off the backlog; and, when the service has the hook, between produce
  and commit);
- restarts the broker hard (``kill -9`` of its JVM) and gracefully, and in the
  full suite keeps it down for a minute;
- storms the group with workers joining and leaving;
- publishes a corrupt snapshot, then a good one that decides differently.

Then it drains the three output topics with ``read_committed`` and compares every
output with the input record its ``filterd-source`` header names and with an
independent reference model (``tests.support.reference``), decided with the snapshot version
named in ``filterd-snapshot``.

    python -m tests.chaos.faults --quick         # CI: both modes, ~20k events each
    python -m tests.chaos.faults                  # full: >= 200k events, 5+ kills, 2+ restarts

Writes ``benchmarks/results/faults.json`` (``faults-quick.json``); exits 1 when a
run fails. The work directory (worker and broker logs) is kept on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from filterd import topics as topic_admin
from tests.chaos import data as fl
from tests.support import check
from tests.support.kafka import drain
from tests.support.produce import partition_for

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
CONFIG = REPO / "config" / "filterd.toml"
RESULTS = REPO / "benchmarks" / "results"
#: The service's test hook: exit(137) after producing a batch, before committing it.
KILL_HOOK_ENV = "FILTERD__FAULT_KILL_AFTER_PRODUCE"

T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[faults {time.monotonic() - T0:7.1f}s] {message}", flush=True)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of each fault one mode's run gets."""

    name: str
    events: int
    #: Seeding pace, events per second: the stream stays busy while faults happen.
    rate: int
    partitions: int
    #: ``kill -9`` of a worker at a random moment.
    kills: int
    #: ``kill -9`` a few seconds after a broker restart, while a backlog is worked off.
    catchup_kills: int
    #: Workers started with the kill-after-produce hook (when the service has it).
    hook_kills: int
    hard_restarts: int
    graceful_restarts: int
    #: One broker outage of this many seconds (0: none).
    outage_s: float
    storm_cycles: int
    #: How long to wait for every input to show up in the outputs after seeding.
    settle_timeout_s: float


QUICK = Plan(
    name="quick",
    events=20_000,
    rate=250,
    partitions=6,
    kills=2,
    catchup_kills=1,
    hook_kills=1,
    hard_restarts=1,
    graceful_restarts=1,
    outage_s=0.0,
    storm_cycles=1,
    settle_timeout_s=180.0,
)
FULL = Plan(
    name="full",
    events=200_000,
    rate=800,
    partitions=8,
    kills=4,
    catchup_kills=2,
    hook_kills=2,
    hard_restarts=2,
    graceful_restarts=1,
    outage_s=60.0,
    storm_cycles=3,
    settle_timeout_s=420.0,
)


# ---------------------------------------------------------------------------
# The private broker
# ---------------------------------------------------------------------------


class Broker:
    """A broker of our own on ``port``, started by deploy/local/kafka.sh."""

    def __init__(self, port: int, state: Path, log: IO[str]) -> None:
        self.port = port
        self.state = state
        self.log = log
        self.bootstrap = f"127.0.0.1:{port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # KAFKA_BOOTSTRAP makes the script "use that broker": never for the one we kill.
        env.pop("KAFKA_BOOTSTRAP", None)
        env["KAFKA_PORT"] = str(self.port)
        env["FILTERD__KAFKA_STATE"] = str(self.state)
        env.setdefault("KAFKA_HEAP_OPTS", "-Xms256m -Xmx768m")
        env["KAFKA_START_TIMEOUT"] = "120"
        return env

    async def _script(self, command: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "bash", str(KAFKA_SH), command, env=self._env(), stdout=self.log, stderr=self.log
        )
        if await proc.wait() != 0:
            raise RuntimeError(
                f"kafka.sh {command} failed on port {self.port}; see {self.log.name}"
            )

    def _seed_cluster_id(self) -> None:
        # kafka.sh draws a random cluster id when the state directory has none; one that
        # starts with "-" is then read as an option by the storage tool and the format
        # fails. Writing our own (same encoding, a letter first) sidesteps that.
        path = self.state / "cluster.id"
        if path.exists():
            return
        while True:
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if cid[0].isalpha():
                break
        self.state.mkdir(parents=True, exist_ok=True)
        path.write_text(cid + "\n")

    async def up(self, attempts: int = 4) -> None:
        self._seed_cluster_id()
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                await self._script("up")
                break
            except RuntimeError:
                # Seen once after a kill -9: the new JVM failed to bind its controller
                # port. A second start a few seconds later binds fine.
                if attempt == attempts:
                    raise
                say(f"broker start failed (attempt {attempt}); retrying in 5s")
                await asyncio.sleep(5.0)
        say(f"broker up on {self.bootstrap} in {time.monotonic() - started:.1f}s")

    async def down(self) -> None:
        await self._script("down")
        say("broker stopped gracefully")

    def pid(self) -> int | None:
        """The broker JVM started from our state directory (the check kafka.sh makes)."""
        needle = f"kafka.Kafka {self.state}/server.properties"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline:
                return int(entry.name)
        return None

    async def hard_kill(self) -> None:
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"no broker of {self.state} is running")
        os.kill(pid, signal.SIGKILL)
        # Not our child (kafka.sh detaches it with setsid): poll until it is gone.
        while _alive(pid):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        say(f"broker killed (kill -9 {pid})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------------
# The workers
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    hook: bool
    started: float = field(default_factory=time.monotonic)


class Fleet:
    """``filterd run`` processes of one group, started and killed one by one."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.workers: dict[str, Worker] = {}
        self.count = 0
        self.kills = 0
        self.hook_kills = 0
        self.membership_changes = 0
        self.unexpected_exits: list[str] = []

    def start(self, *, hook: bool = False, initial: bool = False) -> Worker:
        self.count += 1
        name = f"w{self.count}{'-hook' if hook else ''}"
        log = self.logdir / f"{name}.log"
        env = dict(self.env)
        env["FILTERD_KAFKA_CLIENT_ID"] = f"faults-{name}"
        if hook:
            env[KILL_HOOK_ENV] = "1"
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "filterd", "run", "--config", str(CONFIG)],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        worker = Worker(name, proc, log, hook)
        self.workers[name] = worker
        if not initial:
            self.membership_changes += 1
        say(f"worker {name} started (pid {proc.pid}{', kill-after-produce hook' if hook else ''})")
        return worker

    def base(self) -> list[Worker]:
        return [w for w in self.workers.values() if not w.hook and w.proc.poll() is None]

    def kill9(self, worker: Worker, why: str) -> None:
        self.workers.pop(worker.name, None)
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()
        self.kills += 1
        self.membership_changes += 1
        say(f"worker {worker.name} killed -9 ({why})")

    async def stop(self, worker: Worker, limit_s: float = 45.0) -> int | None:
        """SIGTERM, then wait for the graceful shutdown; SIGKILL only past ``limit_s``."""
        self.workers.pop(worker.name, None)
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + limit_s
        # Popen has no awaitable wait; the exit is polled.
        while worker.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        if worker.proc.poll() is None:
            say(f"worker {worker.name} ignored SIGTERM for {limit_s:.0f}s: kill -9")
            worker.proc.kill()
            worker.proc.wait()
            self.unexpected_exits.append(f"{worker.name}: did not stop within {limit_s:.0f}s")
        self.membership_changes += 1
        say(f"worker {worker.name} stopped (exit {worker.proc.returncode})")
        return worker.proc.returncode

    def reap(self) -> list[Worker]:
        """Workers that exited on their own since the last call."""
        gone = [w for w in self.workers.values() if w.proc.poll() is not None]
        for worker in gone:
            del self.workers[worker.name]
            rc = worker.proc.returncode
            self.membership_changes += 1
            if worker.hook and rc == 137:
                self.kills += 1
                self.hook_kills += 1
                say(f"worker {worker.name} exited 137 after produce, before commit (hook)")
            else:
                self.unexpected_exits.append(f"{worker.name}: exit {rc}")
                say(f"worker {worker.name} exited on its own with {rc}; see {worker.log}")
        return gone

    def kill_all(self) -> None:
        """On the way out after an error: nothing of ours is left running."""
        for worker in list(self.workers.values()):
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
        self.workers.clear()

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(w) for w in list(self.workers.values())))


#: Every fleet of the run, so that an error or a signal leaves no worker behind.
FLEETS: list[Fleet] = []


def service_has_kill_hook() -> bool:
    return any(KILL_HOOK_ENV in p.read_text() for p in (REPO / "filterd").rglob("*.py"))


# ---------------------------------------------------------------------------
# Snapshots
# ---------------------------------------------------------------------------


class Snapshots:
    """Publishes snapshot versions into the root the workers watch."""

    def __init__(self, root: Path, workdir: Path, log: IO[str]) -> None:
        self.root = root
        self.workdir = workdir
        self.log = log
        self.versions: dict[str, fl.ConsentData] = {}
        self.corrupt: set[str] = set()
        self.count = 0

    def _build(self, data: fl.ConsentData, out: Path) -> str:
        self.count += 1
        paths = fl.write_csvs(data, self.workdir / f"csv-{self.count}")
        command = [sys.executable, "-m", "filterd", "snapshot", "build"]
        command += ["--consents", str(paths["consents"]), "--optouts", str(paths["optouts"])]
        command += ["--dnd", str(paths["dnd"]), "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        self.log.write(done.stdout + done.stderr)
        self.log.flush()
        if done.returncode != 0:
            raise RuntimeError(f"snapshot build failed: {done.stderr.strip()}")
        return done.stdout.strip().splitlines()[-1].strip()

    def publish(self, data: fl.ConsentData) -> str:
        version = self._build(data, self.root)
        self.versions[version] = data
        say(f"snapshot {version} published")
        return version

    def publish_corrupt(self, data: fl.ConsentData) -> str:
        """A version whose bitmap bytes no longer match its manifest, made current."""
        scratch = self.workdir / f"scratch-{self.count + 1}"
        version = self._build(data, scratch)
        from filterd.snapshot import format as snapshot_format  # the layout is the package's

        target = self.root / version
        shutil.copytree(scratch / version, target)
        bitmaps = sorted(p for p in target.iterdir() if p.suffix == ".roar")
        victim = max(bitmaps, key=lambda p: p.stat().st_size)
        raw = bytearray(victim.read_bytes())
        for i in range(0, len(raw), max(1, len(raw) // 64)):
            raw[i] ^= 0x5A
        victim.write_bytes(bytes(raw))
        snapshot_format.publish_pointer(self.root, version)
        self.corrupt.add(version)
        say(f"corrupt snapshot {version} made current ({victim.name} damaged)")
        return version


# ---------------------------------------------------------------------------
# Seeding, ground truth, draining
# ---------------------------------------------------------------------------


async def seed(
    bootstrap: str,
    topic: str,
    plan: Plan,
    data: fl.ConsentData,
    tag: str,
    rng_seed: int,
    rate: float,
    gate: asyncio.Event,
) -> tuple[int, float]:
    """Produce ``plan.events`` events at ``rate``/s, retrying through broker faults.

    The last tenth waits for ``gate``: every fault then happens while input is
    still arriving, however long the faults took. A retried send may land twice;
    that is harmless because the ground truth is read back from the topic
    afterwards, not taken from this loop. Returns (events, seconds).
    """
    producer = await _seed_producer(bootstrap)
    events = fl.iter_events(plan.events, tag, data, rng_seed)
    chunk = max(1, int(rate) // 5)
    gate_at = plan.events * 9 // 10
    started = time.monotonic()
    paused = 0.0
    sent = 0
    try:
        while True:
            if sent >= gate_at and not gate.is_set():
                say(f"seeding: {sent} events sent; the rest waits for the faults to end")
                pause_started = time.monotonic()
                await gate.wait()
                paused += time.monotonic() - pause_started
            batch = [e for e in (next(events, None) for _ in range(chunk)) if e is not None]
            if not batch:
                break
            pending = batch
            while pending:
                try:
                    pending = await asyncio.wait_for(
                        _send_chunk(producer, topic, pending, plan.partitions), SEND_DEADLINE_S
                    )
                except TimeoutError:
                    # Seen after broker restarts: a producer whose sends never complete.
                    # A new one re-sends the chunk (records that did land are then
                    # twice on the input topic, which the read-back accounts for).
                    say(f"seeding: a send stalled for {SEND_DEADLINE_S:.0f}s; new producer")
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.stop(), 10.0)
                    producer = await _seed_producer(bootstrap)
                    continue
                if pending:
                    await asyncio.sleep(1.0)
            sent += len(batch)
            # Pace to the planned rate so that faults land while the stream is busy.
            ahead = sent / rate - (time.monotonic() - started - paused)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10.0)
    return sent, time.monotonic() - started


#: A chunk of seeded events that is not acknowledged within this is sent again.
SEND_DEADLINE_S = 45.0

Event = tuple[int, bytes, bytes]


async def _seed_producer(bootstrap: str) -> AIOKafkaProducer:
    """acks=all, no idempotence: a resend may duplicate an input, which is harmless here."""
    while True:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            request_timeout_ms=15_000,
            max_request_size=2_097_152,
        )
        try:
            await producer.start()
            return producer
        except Exception as exc:  # the broker may be down right now, on purpose
            say(f"seeding: producer start failed ({type(exc).__name__}); retrying")
            with contextlib.suppress(Exception):
                await producer.stop()
            await asyncio.sleep(2.0)


async def _send_chunk(
    producer: AIOKafkaProducer, topic: str, events: list[Event], partitions: int
) -> list[Event]:
    """Send and await a chunk; returns the events that failed."""
    failed: list[Event] = []
    futures = []
    for event in events:
        n, key, value = event
        try:
            p = partition_for(key, n, partitions)
            fut = await producer.send(topic, value, key=key, partition=p)
        except Exception:
            failed.append(event)
            continue
        futures.append((event, fut))
    results = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
    failed += [
        e for (e, _), r in zip(futures, results, strict=True) if isinstance(r, BaseException)
    ]
    return failed


async def _behind(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return True
    return False


async def read_inputs(bootstrap: str, topic: str) -> dict[check.Source, check.InputRecord]:
    """Everything on the input topic: the set every output is checked against."""
    records = await drain(
        bootstrap, topic, timeout=INPUT_READ_TIMEOUT_S, isolation_level="read_uncommitted"
    )
    return check.inputs_of(records)


#: Reading the whole input back (200k records in the full suite) takes seconds, not minutes.
INPUT_READ_TIMEOUT_S = 300.0


class Drainer:
    """Reads the three output topics with ``read_committed`` for the whole run."""

    def __init__(self, bootstrap: str, topics: dict[str, int]) -> None:
        self.bootstrap = bootstrap
        self.tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        self.records: list[check.OutputRecord] = []
        self.sources: set[str] = set()
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=4_194_304,
        )
        await self.consumer.start()
        self.consumer.assign(self.tps)
        await self.consumer.seek_to_beginning(*self.tps)

    async def poll(self) -> int:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=500, max_records=20_000)
        n = 0
        for records in batches.values():
            for r in records:
                out = check.OutputRecord.of(r)
                self.records.append(out)
                self.sources.add(out.headers.get("filterd-source", ""))
                n += 1
        return n

    async def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            try:
                await self.poll()
            except Exception as exc:  # the broker is restarted under us on purpose
                say(f"drain: {type(exc).__name__}: {exc}; retrying")
                await asyncio.sleep(1.0)

    async def to_end(self, quiet_s: float = 3.0) -> None:
        """Read up to the last stable offset of every partition, then a quiet period."""
        assert self.consumer is not None
        end = await self.consumer.end_offsets(self.tps)
        while await _behind(self.consumer, end):
            await self.poll()
        deadline = time.monotonic() + quiet_s
        while time.monotonic() < deadline:
            if await self.poll():
                deadline = time.monotonic() + quiet_s

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


async def wait_committed(
    bootstrap: str, group: str, end: dict[TopicPartition, int], limit_s: float
) -> bool:
    """True once the group's committed offsets reach the end of the input."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                offsets = await admin.list_consumer_group_offsets(group)
            except Exception as exc:
                say(f"committed offsets: {type(exc).__name__}: {exc}")
                offsets = {}
            behind = {
                tp: end[tp] - (offsets[tp].offset if tp in offsets else 0)
                for tp in end
                if (offsets[tp].offset if tp in offsets else 0) < end[tp]
            }
            if not behind:
                return True
            await asyncio.sleep(1.0)
        say(f"committed offsets still behind after {limit_s:.0f}s: {behind}")
        return False
    finally:
        await admin.close()


async def create_topics(
    bootstrap: str, topics: dict[str, int], configs: dict[str, dict[str, str]] | None = None
) -> None:
    specs = {t: topic_admin.TopicSpec(n, 1, (configs or {}).get(t, {})) for t, n in topics.items()}
    await topic_admin.create({"bootstrap_servers": bootstrap}, specs)


async def set_topic_config(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


#: While the produce of oversized records is made to fail, the invalid topic takes
#: records up to this size; afterwards it takes them all again.
STUCK_MAX_MESSAGE_BYTES = "16384"
NORMAL_MAX_MESSAGE_BYTES = "2097152"


# ---------------------------------------------------------------------------
# One mode's run
# ---------------------------------------------------------------------------

#: Mean pause between two faults.
ACTION_GAP_S = 2.0


def estimate_fault_seconds(plan: Plan) -> float:
    """Roughly how long the fault schedule takes on a small machine (broker starts
    dominate), so that the input can be paced to span it."""
    restarts = plan.hard_restarts + plan.graceful_restarts
    seconds = 13.0  # the stuck-produce window
    seconds += 3.0 * plan.kills + 4.0 * plan.catchup_kills + 5.0 * plan.hook_kills
    seconds += 25.0 * restarts + (plan.outage_s + 20.0 if plan.outage_s else 0.0)
    seconds += 11.0 * plan.storm_cycles + 19.0  # storms, the snapshot swap
    actions = plan.kills + plan.hook_kills + restarts + plan.storm_cycles + 3
    return seconds + ACTION_GAP_S * actions


@dataclass(slots=True)
class Tally:
    hard_restarts: int = 0
    graceful_restarts: int = 0
    outages: int = 0
    storm_joins: int = 0
    snapshot_swaps: int = 0
    actions: list[str] = field(default_factory=list)


class ModeRun:
    """One delivery mode's run, phase by phase: set up, inject faults, settle, judge, report."""

    def __init__(
        self, mode: str, plan: Plan, broker: Broker, workdir: Path, seed_value: int
    ) -> None:
        self.mode = mode
        self.plan = plan
        self.broker = broker
        self.seed_value = seed_value
        self.rng = random.Random(f"{seed_value}-{mode}")
        self.tag = f"{mode[:2]}{seed_value}"
        self.base = f"faults-{self.tag}-{int(time.time())}"
        self.topics = {
            "input": f"{self.base}.in",
            "deliver": f"{self.base}.deliver",
            "block": f"{self.base}.blocked",
            "invalid": f"{self.base}.invalid",
        }
        self.outputs = {self.topics[r]: 3 for r in ("deliver", "block", "invalid")}
        self.group = f"{self.base}.group"
        self.moddir = workdir / mode
        self.logdir = self.moddir / "logs"
        self.logdir.mkdir(parents=True)
        self.log = (self.logdir / "harness.log").open("a")
        self.snapshots = Snapshots(self.moddir / "snapshots", self.moddir, self.log)
        self.fleet = Fleet(self.worker_env(), self.logdir)
        FLEETS.append(self.fleet)
        self.tally = Tally()
        self.stuck: dict[str, object] = {}
        self.problems: list[str] = []
        self.data_v1 = fl.make_dataset(self.rng)
        self.started = time.monotonic()
        self.gate = asyncio.Event()
        self.stop_supervising = asyncio.Event()

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KAFKA_BOOTSTRAP", None)
        env.update(
            {
                "FILTERD_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
                "FILTERD_KAFKA_GROUP_ID": self.group,
                "FILTERD_KAFKA_SESSION_TIMEOUT_MS": "6000",
                "FILTERD_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
                "FILTERD_TOPICS_INPUT": self.topics["input"],
                "FILTERD_TOPICS_DELIVER": self.topics["deliver"],
                "FILTERD_TOPICS_BLOCK": self.topics["block"],
                "FILTERD_TOPICS_INVALID": self.topics["invalid"],
                # No live changes in these runs (the changes feed has tests of its own).
                "FILTERD_TOPICS_CHANGES": "",
                "FILTERD_TOPICS_INBOUND": "",
                "FILTERD_SNAPSHOT_ROOT": str(self.snapshots.root),
                "FILTERD_SNAPSHOT_POLL_INTERVAL_S": "0.5",
                "FILTERD_DELIVERY_MODE": self.mode,
                "FILTERD_DELIVERY_TRANSACTIONAL_ID_PREFIX": self.base,
                # Small batches: more batch boundaries for a kill to land between.
                "FILTERD_BATCH_MAX_RECORDS": "500",
                "FILTERD_METRICS_ENABLED": "false",
                "FILTERD_LOGGING_LEVEL": "INFO",
            }
        )
        return env

    # ------------------------------------------------------------------ phase 1: set up

    async def set_up(self) -> None:
        """Topics, the first snapshot, two workers."""
        plan = self.plan
        say(
            f"=== {self.mode}: {plan.events} events over {plan.partitions} partitions, "
            f"topics {self.base}.*"
        )
        # The invalid topic starts out refusing the oversized events' ~65 KB records: the
        # produce of those keeps failing until "stuck-produce" lifts the limit.
        await create_topics(
            self.broker.bootstrap,
            {self.topics["input"]: plan.partitions, **self.outputs},
            {self.topics["invalid"]: {"max.message.bytes": STUCK_MAX_MESSAGE_BYTES}},
        )
        self.snapshots.publish(self.data_v1)
        for _ in range(2):
            self.fleet.start(initial=True)

    # ------------------------------------------------------------------ phase 2: faults

    async def supervise(self) -> None:
        # Like systemd or Kubernetes would: a worker that died on its own is started
        # again. (Workers the suite kills are replaced by the fault itself.)
        while not self.stop_supervising.is_set():
            for worker in self.fleet.reap():
                if not worker.hook:
                    await asyncio.sleep(1.0)
                    self.fleet.start()
            await asyncio.sleep(0.5)

    async def kill_one(self, why: str) -> None:
        candidates = self.fleet.base()
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        if victim.proc.poll() is None:
            self.fleet.kill9(victim, why)
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            self.fleet.start()

    async def broker_restart(self, kind: str, catchup_kill: bool) -> None:
        rng, broker, tally = self.rng, self.broker, self.tally
        if kind == "hard":
            await broker.hard_kill()
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            tally.hard_restarts += 1
        elif kind == "graceful":
            await broker.down()
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            tally.graceful_restarts += 1
        else:
            await broker.down()
            say(f"broker down for {self.plan.outage_s:.0f}s")
            await asyncio.sleep(self.plan.outage_s)
            tally.outages += 1
        await broker.up()
        if catchup_kill:
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            await self.kill_one("while catching up after the broker restart")

    async def storm(self) -> None:
        joined = [self.fleet.start(), self.fleet.start()]
        self.tally.storm_joins += 2
        await asyncio.sleep(self.rng.uniform(3.0, 6.0))
        await self.fleet.stop(joined[0])
        await asyncio.sleep(self.rng.uniform(2.0, 4.0))
        await self.fleet.stop(joined[1])

    async def hook_kill(self) -> None:
        worker = self.fleet.start(hook=True)
        deadline = time.monotonic() + 40.0
        while worker.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        if worker.proc.poll() is None:
            say(f"hook worker {worker.name} did not fire within 40s; stopping it")
            await self.fleet.stop(worker)

    async def snapshot_swap(self) -> None:
        # Guards on both sides: no kill or broker restart near the swap, so that an
        # at-least-once repeat is never decided by a different version than the first.
        rng = self.rng
        await asyncio.sleep(6.0)
        self.snapshots.publish_corrupt(fl.extend_dataset(self.data_v1, random.Random(rng.random())))
        await asyncio.sleep(5.0)
        self.snapshots.publish(fl.extend_dataset(self.data_v1, rng))
        self.tally.snapshot_swaps += 1
        await asyncio.sleep(8.0)

    async def stuck_produce(self) -> None:
        # Until now every oversized record was refused by the invalid topic. The
        # service must not have committed any input partition past its first one.
        await asyncio.sleep(max(0.0, 15.0 - (time.monotonic() - self.started)))
        bootstrap, input_topic = self.broker.bootstrap, self.topics["input"]
        seen = await read_inputs(bootstrap, input_topic)
        committed = await committed_offsets(bootstrap, self.group)
        first_big: dict[int, int] = {}
        ends: dict[int, int] = {}
        for (p, o), record in seen.items():
            ends[p] = max(ends.get(p, 0), o + 1)
            if record.value is not None and len(record.value) > fl.MAX_EVENT_BYTES:
                first_big[p] = min(first_big.get(p, o), o)
        past = {}
        blocked = []
        for p, offset in sorted(first_big.items()):
            done = committed.get(TopicPartition(input_topic, p), 0)
            if done > offset:
                past[p] = {"first_failing_offset": offset, "committed": done}
            elif ends[p] > offset + 1:
                blocked.append(p)
        self.stuck.update(
            {
                "partitions_with_failing_record": len(first_big),
                "partitions_held_back": len(blocked),
                "commits_past_failing_record": len(past),
                "violations": past,
            }
        )
        say(f"stuck produce: {self.stuck}; lifting the size limit")
        await set_topic_config(
            bootstrap, self.topics["invalid"], {"max.message.bytes": NORMAL_MAX_MESSAGE_BYTES}
        )

    def schedule(self, use_hook: bool) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The plan's faults in a seeded random order, the swap in the middle."""
        plan, rng = self.plan, self.rng
        actions: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        actions += [("kill", lambda: self.kill_one("at a random moment"))] * plan.kills
        catchups = [True] * plan.catchup_kills
        restarts = ["hard"] * plan.hard_restarts + ["graceful"] * plan.graceful_restarts
        restarts += ["outage"] * (1 if plan.outage_s else 0)
        catchups += [False] * max(0, len(restarts) - len(catchups))
        rng.shuffle(catchups)
        for kind, catchup in zip(restarts, catchups, strict=False):
            actions.append((f"broker-{kind}", lambda k=kind, c=catchup: self.broker_restart(k, c)))
        actions += [("storm", self.storm)] * plan.storm_cycles
        if use_hook:
            actions += [("hook-kill", self.hook_kill)] * plan.hook_kills
        rng.shuffle(actions)
        # The swap goes in the middle: old and new versions both decide a good share.
        actions.insert(len(actions) // 2, ("snapshot", self.snapshot_swap))
        # First, so that the partitions it holds back are released long before the swap.
        actions.insert(0, ("stuck-produce", self.stuck_produce))
        return actions

    async def inject_faults(self) -> asyncio.Task[tuple[int, float]]:
        """Seed the input while the faults happen; returns the seeding task."""
        plan = self.plan
        use_hook = plan.hook_kills > 0 and service_has_kill_hook()
        if plan.hook_kills and not use_hook:
            say(f"service has no {KILL_HOOK_ENV} hook: produce/commit kills only by chance")
        self.started = time.monotonic()
        # Pace the input to span the faults: about 90% of it while they happen.
        rate = min(float(plan.rate), plan.events * 0.9 / estimate_fault_seconds(plan))
        say(f"seeding at {rate:.0f} events/s")
        seeding = asyncio.create_task(
            seed(
                self.broker.bootstrap,
                self.topics["input"],
                plan,
                self.data_v1,
                self.tag,
                self.seed_value,
                rate,
                self.gate,
            )
        )
        actions = self.schedule(use_hook)
        await asyncio.sleep(2.0)
        for name, action in actions:
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * ACTION_GAP_S)
            say(f"fault: {name}")
            self.tally.actions.append(name)
            await action()
        self.gate.set()
        return seeding

    # ------------------------------------------------------------------ phase 3: settle

    async def settle(
        self, seeding: asyncio.Task[tuple[int, float]], supervisor: asyncio.Task[None]
    ) -> tuple[dict[check.Source, check.InputRecord], Drainer, bool]:
        """Wait for the input, its outputs and the group's commits; stop the workers."""
        plan, bootstrap, input_topic = self.plan, self.broker.bootstrap, self.topics["input"]
        try:
            sent, seeded_s = await asyncio.wait_for(seeding, plan.settle_timeout_s)
            say(f"seeding done: {sent} events in {seeded_s:.0f}s")
        except TimeoutError:
            # Checked with whatever made it to the input topic; the run fails below.
            self.problems.append(f"seeding did not finish within {plan.settle_timeout_s:.0f}s")
            say(self.problems[-1])
        inputs = await read_inputs(bootstrap, input_topic)
        input_sources = {f"{input_topic}/{p}/{o}" for p, o in inputs}
        say(f"{len(inputs)} input records; waiting for their outputs")
        drainer = Drainer(bootstrap, self.outputs)
        await drainer.start()
        deadline = time.monotonic() + plan.settle_timeout_s
        await drainer.run_until(
            lambda: input_sources <= drainer.sources or time.monotonic() > deadline
        )
        end = {TopicPartition(input_topic, p): 0 for p in range(plan.partitions)}
        for p, o in inputs:
            tp = TopicPartition(input_topic, p)
            end[tp] = max(end[tp], o + 1)
        committed = await wait_committed(bootstrap, self.group, end, limit_s=60.0)
        self.stop_supervising.set()
        await supervisor
        self.fleet.reap()
        await self.fleet.stop_all()
        await drainer.to_end()
        await drainer.stop()
        return inputs, drainer, committed

    # ------------------------------------------------------------------ phase 4: judge

    def judge(
        self, inputs: dict[check.Source, check.InputRecord], drainer: Drainer, committed: bool
    ) -> tuple[check.Verdict, bool]:
        """Every output against the reference model; the run's own conditions."""
        snapshots, stuck, problems = self.snapshots, self.stuck, self.problems
        verdict = check.verify(
            inputs,
            drainer.records,
            input_topic=self.topics["input"],
            topic_routes={self.topics[r]: r for r in ("deliver", "block", "invalid")},
            versions={v: data.reference() for v, data in snapshots.versions.items()},
            corrupt_versions=snapshots.corrupt,
        )
        if not committed:
            problems.append("committed offsets did not reach the end of the input")
        new_versions = [v for v in snapshots.versions if v not in snapshots.corrupt][1:]
        if new_versions and not any(verdict.by_snapshot.get(v) for v in new_versions):
            problems.append("the good snapshot published mid-stream never decided a record")
        if stuck.get("commits_past_failing_record"):
            problems.append(f"offsets committed past a record whose produce failed: {stuck}")
        elif not stuck.get("partitions_held_back"):
            problems.append(f"no partition was held back by a failing produce: {stuck}")
        passed = verdict.ok(self.mode == "exactly-once") and not problems
        restarts = self.tally.hard_restarts + self.tally.graceful_restarts + self.tally.outages
        say(
            f"{self.mode}: inputs={verdict.inputs} outputs={verdict.outputs} "
            f"lost={verdict.lost} misrouted={verdict.misrouted} "
            f"in_two_topics={verdict.in_two_topics} duplicated={verdict.duplicated} "
            f"kills={self.fleet.kills} broker_restarts={restarts} passed={passed}"
        )
        for kind, examples in verdict.examples.items():
            say(f"  {kind}: {examples}")
        for problem in problems:
            say(f"  problem: {problem}")
        return verdict, passed

    # ------------------------------------------------------------------ phase 5: report

    def report(self, verdict: check.Verdict, passed: bool, elapsed: float) -> dict[str, object]:
        tally, fleet = self.tally, self.fleet
        return {
            "mode": self.mode,
            "inputs": verdict.inputs,
            "kills": fleet.kills,
            "broker_restarts": tally.hard_restarts + tally.graceful_restarts + tally.outages,
            "rebalances": fleet.membership_changes,
            "lost": verdict.lost,
            "misrouted": verdict.misrouted,
            "in_two_topics": verdict.in_two_topics,
            "duplicated": verdict.duplicated,
            "passed": passed,
            "details": {
                "outputs": verdict.outputs,
                "hard_broker_restarts": tally.hard_restarts,
                "graceful_broker_restarts": tally.graceful_restarts,
                "broker_outages": tally.outages,
                "broker_outage_s": self.plan.outage_s if tally.outages else 0,
                "hook_kills": fleet.hook_kills,
                "storm_joins": tally.storm_joins,
                "snapshot_swaps": tally.snapshot_swaps,
                "stuck_produce": self.stuck,
                "corrupt_snapshots_published": len(self.snapshots.corrupt),
                "corrupt_snapshot_used": verdict.corrupt_snapshot_used,
                "unknown_source": verdict.unknown_source,
                "value_mismatch": verdict.value_mismatch,
                "unexpected_worker_exits": fleet.unexpected_exits,
                "by_reason": dict(sorted(verdict.by_reason.items())),
                "by_snapshot": dict(sorted(verdict.by_snapshot.items())),
                "actions": tally.actions,
                "problems": self.problems,
                "examples": verdict.examples,
                "seconds": round(elapsed, 1),
            },
        }


async def run_mode(
    mode: str, plan: Plan, broker: Broker, workdir: Path, seed_value: int
) -> dict[str, object]:
    run = ModeRun(mode, plan, broker, workdir, seed_value)
    await run.set_up()
    supervisor = asyncio.create_task(run.supervise())
    seeding = await run.inject_faults()
    inputs, drainer, committed = await run.settle(seeding, supervisor)
    elapsed = time.monotonic() - run.started
    verdict, passed = run.judge(inputs, drainer, committed)
    run.log.close()
    return run.report(verdict, passed, elapsed)


async def run_suite(args: argparse.Namespace, plan: Plan, workdir: Path, out: Path) -> int:
    # The suite's own clients complain loudly while the broker is down on purpose;
    # their log goes to the work directory, not the console.
    clients_log = logging.FileHandler(workdir / "clients.log")
    clients_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("aiokafka").addHandler(clients_log)
    logging.getLogger("aiokafka").propagate = False
    say(f"suite {plan.name}, seed {args.seed}, work directory {workdir}")
    broker_log = (workdir / "broker-control.log").open("a")
    broker = Broker(args.port, workdir / "broker", broker_log)
    runs: list[dict[str, object]] = []
    # SIGTERM (a CI timeout, a Ctrl+C'd make) unwinds through the finally below.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await broker.up()
        for mode in args.modes:
            runs.append(await run_mode(mode, plan, broker, workdir, args.seed))
    finally:
        for fleet in FLEETS:
            fleet.kill_all()
        with contextlib.suppress(BaseException):
            await broker.down()
        broker_log.close()
    passed = bool(runs) and all(r["passed"] for r in runs)
    report = {
        "suite": plan.name,
        "seed": args.seed,
        "plan": asdict(plan),
        "kill_hook": service_has_kill_hook(),
        "runs": runs,
    }
    _write_report(out, report)
    say(f"report written to {out}")
    if passed and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"logs kept in {workdir}")
    say("PASSED" if passed else "FAILED")
    return 0 if passed else 1


def _write_report(out: Path, report: dict[str, object]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the CI-sized suite")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["exactly-once", "at-least-once"],
        choices=["exactly-once", "at-least-once"],
    )
    parser.add_argument("--events", type=int, default=0, help="override the plan's event count")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FAULTS_SEED", "20261128")))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("FAULTS_KAFKA_PORT", "19392"))
    )
    parser.add_argument(
        "--out", help="report path (default benchmarks/results/faults[-quick].json)"
    )
    parser.add_argument("--workdir", help="work directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory on success")
    args = parser.parse_args(argv)
    if args.port == 9092:
        parser.error("the fault suite restarts its broker: never the shared one on 9092")
    plan = QUICK if args.quick else FULL
    if args.events:
        plan = Plan(**{**asdict(plan), "events": args.events})
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="filterd-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or RESULTS / ("faults-quick.json" if args.quick else "faults.json"))
    return asyncio.run(run_suite(args, plan, workdir, out))


if __name__ == "__main__":
    sys.exit(main())
