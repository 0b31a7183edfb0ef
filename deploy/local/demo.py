"""``make demo``: a Double-11 burst through filterd on a local broker, end to end.

1. creates the demo topics (recreated on every run, so the figures are this run's),
2. writes a synthetic consent data set, adds consent evidence to it (senders
   relying on default-registration and other consent that does not count,
   expired consents, opt-outs of every sender) and builds a snapshot from it,
3. starts ``filterd run --workers 2``,
4. streams a burst of synthetic carrier traffic into the input topic; during it, a wave of
   live opt-outs: "TD" replies on the inbound topic and registry opt-outs on the changes
   topic, for recipients that then receive more messages,
5. shows live progress, then a table of what was routed where and why, and how many of
   the wave's opt-outs were honoured and how soon.

Run it through ``make demo`` (which installs and starts the broker first), or
``.venv/bin/python deploy/local/demo.py`` with ``KAFKA_BOOTSTRAP`` set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from filterd.audit.mask import mask_digits
from filterd.audit.optouts import FirstBlocks, honoured
from filterd.audit.reader import KafkaParams, RangeReader
from filterd.audit.timeutil import TimeRange
from filterd.loadgen import iter_events, load_dataset, write_dataset
from filterd.loadgen.bombing import DEMO_LIMITS, Bombing, bombing_events
from filterd.loadgen.evidence import evidence_events, write_evidence_inputs
from filterd.loadgen.produce import produce_events

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".work" / "demo"
TOPICS = {
    "input": "demo.sms.outbound",
    "deliver": "demo.sms.deliver",
    "block": "demo.sms.blocked",
    "invalid": "demo.sms.invalid",
    "changes": "demo.sms.consent-changes",
    "inbound": "demo.sms.inbound",
}
PARTITIONS = 6
CAMPAIGN = "8 marketing messages each to 300 consenting customers, within the day"


def say(text: str) -> None:
    print(f"\033[1m▶ {text}\033[0m" if sys.stdout.isatty() else f"> {text}", flush=True)


async def recreate_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics()) & set(TOPICS.values())
        if existing:
            await admin.delete_topics(list(existing))
            for _ in range(100):  # deletion is asynchronous on the broker
                if not set(await admin.list_topics()) & existing:
                    break
                await asyncio.sleep(0.2)
        # Output topics stamp arrival time, so throughput is measured by the broker.
        outputs = {"message.timestamp.type": "LogAppendTime"}
        configs = {
            "input": {},
            "changes": {"cleanup.policy": "compact", "message.timestamp.type": "LogAppendTime"},
        }
        await admin.create_topics([
            NewTopic(name, PARTITIONS, 1, topic_configs=configs.get(role, outputs))
            for role, name in TOPICS.items()
        ])  # fmt: skip
    finally:
        await admin.close()


def write_config(bootstrap: str, path: Path, snapshots: Path) -> None:
    path.write_text(
        "\n".join([
            "[kafka]", f'bootstrap_servers = "{bootstrap}"', 'group_id = "filterd-demo"',
            "[topics]", *(f'{role} = "{name}"' for role, name in TOPICS.items()),
            "[snapshot]", f'root = "{snapshots}"', "poll_interval_s = 1.0",
            "[metrics]", "port = 9108",
        ]) + "\n"
    )  # fmt: skip


def add_limits(path: Path) -> None:
    """The anti-bombing limits: quiet hours and three cap rules (filterd.loadgen.bombing)."""
    with path.open("a") as fh:
        fh.write("\n".join(DEMO_LIMITS) + "\n")


async def drop_counters(bootstrap: str) -> None:
    """Delete the limits' counters changelog of an earlier run (filterd run creates it again):
    this run's messages are counted from zero."""
    name = f"{TOPICS['input']}.counters"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name in await admin.list_topics():
            await admin.delete_topics([name])
            for _ in range(100):
                if name not in await admin.list_topics():
                    break
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def send_stamped(bootstrap: str, records: list[tuple[bytes | None, bytes]], ts: int) -> None:
    """Send records with the record timestamp ``ts`` (step 4 reads the record's time)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        # The default partitioner is the Java client's, as produce_events' is: keyed by
        # recipient, each record lands on its recipient's partition.
        sent = [await producer.send(TOPICS["input"], value, key=key, timestamp_ms=ts)
                for key, value in records]  # fmt: skip
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def bombing_outcomes(bootstrap: str, bombing: Bombing) -> str:
    """The closing lines on the campaign, the flood and the night promotion: what got through."""
    kinds = {b'{"id":"bomb-': "campaign", b'{"id":"otp-': "flood", b'{"id":"night-': "night"}
    seen: dict[str, Counter[str]] = {kind: Counter() for kind in kinds.values()}
    # The audit's reader: every record of the two topics, only the reason header decoded.
    topics = [TOPICS["deliver"], TOPICS["block"]]
    async with RangeReader(KafkaParams(bootstrap), topics, TimeRange(None, None),
                           reason_only=True) as reader:  # fmt: skip
        async for batch in reader.batches():
            for rec in batch:
                head = (rec.value or b"")[:14]
                for prefix, kind in kinds.items():
                    if head.startswith(prefix):
                        seen[kind][rec.reason] += 1

    def line(kind: str, what: str) -> str:
        counts = seen[kind]
        total = sum(counts.values())
        parts = ", ".join(f"{reason} {n:,}" for reason, n in counts.most_common())
        return f"  {what}: {total:,} messages -> {parts}"

    return "\n".join([
        "",
        "bombing stopped by the limits (quiet hours 22:00-08:00 Asia/Shanghai; caps: marketing 3"
        " a day per sender and recipient, verification 10 an hour per recipient, 30 a day per"
        " recipient):",
        line("campaign", f"campaign of shop {bombing.campaign_sender} ({CAMPAIGN}),"
             " capped at 3 a day each"),
        line("flood", f"OTP flood at {mask_digits(str(bombing.flood_recipient))} (150 codes"
             " from 50 senders within the hour), capped at 10 an hour"),
        line("night", "marketing stamped 07:30 local time, inside the quiet hours"),
    ])  # fmt: skip


async def end_offsets(consumer: AIOKafkaConsumer, topic: str) -> int:
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    return sum((await consumer.end_offsets(parts)).values())


async def watch(bootstrap: str, total: int, produced: asyncio.Task[object], limit_s: float) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        start = time.monotonic()
        last = 0
        while time.monotonic() - start < limit_s:
            routed = 0
            for role in ("deliver", "block", "invalid"):
                routed += await end_offsets(consumer, TOPICS[role])
            fed = await end_offsets(consumer, TOPICS["input"])
            rate = (routed - last) / 1.0
            last = routed
            print(f"  produced {fed:>8,}   routed {routed:>8,} / {total:,}   {rate:>9,.0f} msgs/s",
                  flush=True)  # fmt: skip
            if routed >= total and produced.done():
                return
            await asyncio.sleep(1.0)
        raise SystemExit(f"demo: only {last} of {total} routed after {limit_s:.0f}s")
    finally:
        await consumer.stop()


#: Counted under this route/reason key: records whose exempt category step 2 overruled.
DECLARED = ("declared", "category")


async def tally(
    bootstrap: str, first: FirstBlocks | None = None
) -> tuple[Counter[tuple[str, str]], float]:
    """Count the output records by route and reason; measure throughput from arrival times.

    Records decided as marketing although sent with an exempt category are also
    counted under ``(DECLARED[0], their declared category)``. Blocks decided by a live
    change go into ``first`` (the wave's summary).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    counts: Counter[tuple[str, str]] = Counter()
    start, last = float("inf"), 0.0
    try:
        parts = [TopicPartition(TOPICS[r], p) for r in ("deliver", "block", "invalid")
                 for p in range(PARTITIONS)]  # fmt: skip
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        remaining = sum(ends.values())
        while remaining > 0:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batch.values():
                for rec in records:
                    h = dict(rec.headers)
                    counts[(h["filterd-route"].decode(), h["filterd-reason"].decode())] += 1
                    if (declared := h.get("filterd-declared-category")) is not None:
                        counts[(DECLARED[0], declared.decode())] += 1
                    change = h.get("filterd-change")
                    if first is not None and change and h["filterd-route"] == b"block":
                        first.add(change.decode(), rec.timestamp)
                    if WAVE_MARK not in (rec.value or b""):  # the burst's throughput
                        start = min(start, rec.timestamp)
                        last = max(last, rec.timestamp)
                remaining -= len(records)
    finally:
        await consumer.stop()
    seconds = max((last - start) / 1000.0, 1e-3)
    return counts, sum(counts.values()) / seconds


def table(counts: Counter[tuple[str, str]], rate: float) -> str:
    declared = {c: n for (r, c), n in counts.items() if r == DECLARED[0]}
    routed = {k: n for k, n in counts.items() if k[0] != DECLARED[0]}
    total = sum(routed.values())
    rows = ["", f"{'route':<9}{'reason':<22}{'messages':>10}{'share':>9}", "-" * 50]
    order = {"deliver": 0, "block": 1, "invalid": 2}
    for (route, reason), n in sorted(routed.items(), key=lambda kv: (order[kv[0][0]], -kv[1])):
        rows.append(f"{route:<9}{reason:<22}{n:>10,}{n / total:>9.1%}")
    rows += ["-" * 50, f"{'total':<31}{total:>10,}"]
    for category, n in sorted(declared.items()):
        rows.append(f"  of which sent as {category} with a marketing text, decided as"
                    f" marketing: {n:,}")  # fmt: skip
    rows += ["", f"throughput (first to last output record): {rate:,.0f} msgs/s"]
    return "\n".join(rows)


# --------------------------------------------------------------------------- the opt-out wave

#: Messages each wave recipient receives after its opt-out, and how far apart (s): the
#: first blocked one shows when the opt-out took effect (the bound is 1 s).
WAVE_FOLLOW_UPS = 15
WAVE_SPACING_S = 0.1
#: How far into the burst the wave is sent (s).
WAVE_AFTER_S = 2.0
#: In the id of the wave's follow-up messages: they are left out of the burst's throughput.
WAVE_MARK = b"~wave"


class Wave:
    """Pairs (sender, recipient) of the burst that opt out during it, half by a "TD" reply,
    half through the registry, and the messages each then receives."""

    def __init__(self, records: list[tuple[bytes | None, bytes]], size: int, seed: int) -> None:
        rng = random.Random(seed)
        seen: set[bytes] = set()
        self.picks: list[tuple[bytes, dict[str, object]]] = []
        for key, value in rng.sample(records, min(len(records), size * 4)):
            if key is None or key in seen or len(self.picks) >= size:
                continue
            doc = orjson.loads(value)
            if isinstance(doc.get("sender"), str) and isinstance(doc.get("recipient"), str):
                seen.add(key)
                # Follow-ups are marketing: what an opt-out stops.
                self.picks.append((key, {**doc, "category": "marketing"}))
        self.replies = self.picks[::2]
        self.registry = self.picks[1::2]

    @property
    def follow_ups(self) -> int:
        return len(self.picks) * WAVE_FOLLOW_UPS

    async def send(self, bootstrap: str) -> None:
        """The replies and opt-outs, then the follow-up messages (demo scale: one send each)."""
        await asyncio.sleep(WAVE_AFTER_S)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            now = int(time.time() * 1000)
            for i, (key, doc) in enumerate(self.replies):
                reply = {"id": f"demo-r{i}", "from": doc["recipient"], "to": doc["sender"],
                         "text": "TD", "ts": now}  # fmt: skip
                await producer.send(TOPICS["inbound"], orjson.dumps(reply), key=key)
            for i, (key, doc) in enumerate(self.registry):
                change = {"op": "opt-out", "sender": doc["sender"], "recipient": doc["recipient"],
                          "source": "registry", "id": f"demo-reg{i}", "ts": now}  # fmt: skip
                await producer.send(TOPICS["changes"], orjson.dumps(change), key=key)
            await producer.flush()
            for n in range(WAVE_FOLLOW_UPS):
                await asyncio.sleep(WAVE_SPACING_S)
                for key, doc in self.picks:
                    value = orjson.dumps({**doc, "id": f"{doc.get('id')}~wave{n}"})
                    await producer.send(TOPICS["input"], value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    async def summary(self, bootstrap: str, first: FirstBlocks) -> str:
        """How many of the wave's opt-outs blocked a message, and how soon after their append."""
        result = await honoured(KafkaParams(bootstrap, {}), first, "86")
        rows = {source: (n, p99) for source, n, _, p99, _ in result.rows()}
        replies, registry = rows.get("mo-reply", (0, "-")), rows.get("registry", (0, "-"))
        every = rows["all"]
        return "\n".join([
            "",
            f"opt-out wave during the burst: {len(self.replies):,} TD replies and "
            f"{len(self.registry):,} registry opt-outs, then {WAVE_FOLLOW_UPS} messages to each",
            f"  honoured: {replies[0]:,} of {len(self.replies):,} TD replies, "
            f"{registry[0]:,} of {len(self.registry):,} registry opt-outs",
            f"  delay from the opt-out's append to the first message it blocked: "
            f"p99 {every[1]} (TD {replies[1]}, registry {registry[1]})",
        ])  # fmt: skip


async def stream(
    bootstrap: str,
    records: list[tuple[bytes | None, bytes]],
    rate: float | None,
    wave: Wave | None = None,
    *,
    routed_before: int = 0,
) -> None:
    producing = asyncio.create_task(
        produce_events(bootstrap, TOPICS["input"], records, rate=rate,
                       profile="double11" if rate else "flat", count=len(records))
    )  # fmt: skip
    sending = asyncio.create_task(wave.send(bootstrap)) if wave is not None else None
    total = len(records) + routed_before + (wave.follow_ups if wave is not None else 0)
    both = asyncio.gather(producing, *([sending] if sending is not None else []))
    await watch(bootstrap, total, both, limit_s=300)
    await both


def build_snapshot(evidence: Path, snapshots: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "filterd", "snapshot", "build",
         "--consents", str(evidence / "consents.csv.gz"),
         "--optouts", str(evidence / "optouts.csv.gz"),
         "--dnd", str(evidence / "dnd.csv.gz"), "--out", str(snapshots)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="average offered msgs/s (default: as fast as the producer goes)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--wave", type=int, default=1000, help="recipients opting out during the burst (0: none)"
    )
    args = parser.parse_args()
    port = os.environ.get("KAFKA_PORT", "9092")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP") or f"127.0.0.1:{port}"
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    say(f"topics on {bootstrap} ({PARTITIONS} partitions each)")
    try:
        asyncio.run(recreate_topics(bootstrap))
        asyncio.run(drop_counters(bootstrap))
    except KafkaError as exc:
        raise SystemExit(f"demo: cannot reach Kafka at {bootstrap}: {exc!r}") from exc

    say("synthetic consent registry: 200 senders, 1,000,000 consents")
    dataset = WORK / "dataset"
    if not (dataset / "population.json").exists():
        write_dataset(dataset, senders=200, recipients=400_000, consents=1_000_000, seed=11)
    evidence = WORK / "evidence"
    say("consent evidence: 4 senders relying on consent that does not count, expired consents,"
        " opt-outs of every sender")  # fmt: skip
    write_evidence_inputs(dataset, evidence, now_s=time.time())
    snapshots = WORK / "snapshots"
    say(f"snapshot {build_snapshot(evidence, snapshots)} built under {snapshots}")

    config = WORK / "filterd.toml"
    write_config(bootstrap, config, snapshots)
    add_limits(config)
    log_path = WORK / "filterd.log"
    say(f"filterd run --workers {args.workers}   (log: {log_path}, "
        "metrics: http://127.0.0.1:9108/metrics)")  # fmt: skip
    command = [sys.executable, "-m", "filterd", "run", "--config", str(config),
               "--workers", str(args.workers)]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            say(f"Double-11 burst: {args.events:,} SMS (marketing, transactional, "
                "verification, bad input; 5% aimed at the consent evidence, promotions "
                "sent as codes)")  # fmt: skip
            seed = int(time.time())
            bombing = bombing_events(
                load_dataset(dataset), now_ms=int(time.time() * 1000), seed=seed
            )
            say(f"SMS bombing: a shop's campaign ({CAMPAIGN}), an OTP flood at one number "
                "(150 codes from 50 senders), marketing at 07:30 local time; quiet hours "
                "22:00-08:00 and three cap rules")  # fmt: skip
            extra = args.events // 20
            regular = args.events - extra - len(bombing.events) - len(bombing.night)
            records = list(iter_events(load_dataset(dataset), regular, seed=seed))
            records += evidence_events(dataset, extra, seed=seed, ts_ms=int(time.time() * 1000))
            records += bombing.events
            random.Random(seed).shuffle(records)
            wave = Wave(records, args.wave, seed) if args.wave else None
            if wave is not None:
                say(f"during the burst: {len(wave.replies):,} TD replies and "
                    f"{len(wave.registry):,} registry opt-outs")  # fmt: skip
            asyncio.run(send_stamped(bootstrap, bombing.night, bombing.night_ms))
            asyncio.run(
                stream(bootstrap, records, args.rate, wave, routed_before=len(bombing.night))
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    if code != 0:
        print(log_path.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"demo: filterd exited with {code}")

    first = FirstBlocks()
    counts, rate = asyncio.run(tally(bootstrap, first))
    print(table(counts, rate))
    print(asyncio.run(bombing_outcomes(bootstrap, bombing)))
    if wave is not None:
        print(asyncio.run(wave.summary(bootstrap, first)))
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s. Inspect the outputs, e.g.:\n"
          f"  .venv/bin/filterd audit summary --config {config}\n"
          f"  .venv/bin/filterd snapshot inspect {snapshots}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
