"""The stream service on the real broker: routing, restarts, group members, swaps, failures."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from filterd.loadgen import iter_events, load_dataset, write_dataset
from filterd.loadgen.produce import produce_events
from tests.support.check import verify_stream
from tests.support.kafka import drain
from tests.support.reference import Reference
from tests.support.stream import Stream, build_snapshot, running

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dataset")
    write_dataset(directory, senders=12, recipients=3_000, consents=6_000, seed=7)
    return directory


@pytest.fixture(scope="session")
def reference(dataset: Path) -> Reference:
    return Reference.from_dataset(dataset)


@pytest.fixture
async def stream(
    kafka_bootstrap: str, new_topic, new_group, dataset: Path, tmp_path: Path
) -> Stream:  # type: ignore[no-untyped-def]
    return await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snapshots", dataset
    )


def events(
    dataset: Path, count: int, seed: int, bad_rate: float = 0.05
) -> list[tuple[bytes | None, bytes]]:
    return list(iter_events(load_dataset(dataset), count, seed=seed, bad_rate=bad_rate))


async def produce(stream: Stream, records: list[tuple[bytes | None, bytes]]) -> None:
    await produce_events(stream.bootstrap, stream.input, records, rate=None)


async def committed(stream: Stream, partitions: int = 3) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=stream.bootstrap, group_id=stream.group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        return {
            p: await consumer.committed(TopicPartition(stream.input, p)) for p in range(partitions)
        }
    finally:
        await consumer.stop()


def expected_counts(
    reference: Reference, records: list[tuple[bytes | None, bytes]]
) -> Counter[str]:
    return Counter(reference.decide(value)[0] for _, value in records)


@pytest.mark.parametrize("pipelined", ["true", "false"])
async def test_routes_every_reason_like_the_reference(
    stream: Stream, reference: Reference, pipelined: str
) -> None:
    version = build_snapshot(stream.root, stream.dataset)
    records = events(stream.dataset, 4_000, seed=1)
    expected = expected_counts(reference, records)
    await produce(stream, records)
    # Small batches: many batch cycles, each overlapping the next when pipelined.
    config = stream.config(FILTERD_BATCH_PIPELINED=pipelined, FILTERD_BATCH_MAX_RECORDS="200")
    async with running(config):
        outputs = await stream.outputs_by_route(expected)
    inputs = await drain(stream.bootstrap, stream.input, expected=len(records))
    verdict = verify_stream(inputs, outputs, {version: reference})
    assert verdict.clean, verdict
    reasons = Counter(reference.decide(v)[1] for _, v in records)
    # The generated mix must exercise every reason the contract names but internal-error.
    assert set(reasons) >= {
        "consent", "exempt-category", "opted-out", "unknown-sender", "recipient-dnd",
        "no-consent", "oversized", "malformed-json", "missing-field", "bad-field-type",
        "bad-recipient",
    }  # fmt: skip
    # Per input partition, outputs keep input order (source offsets increase).
    for route_records in outputs.values():
        last: dict[tuple[int, str], int] = {}
        for rec in route_records:
            _topic, part, offset = dict(rec.headers)["filterd-source"].decode().rsplit("/", 2)
            key = (rec.partition, part)
            assert last.get(key, -1) < int(offset)
            last[key] = int(offset)
    assert await committed(stream) == {
        p: max((r.offset + 1 for r in inputs if r.partition == p), default=None) for p in range(3)
    }


async def test_hostile_input_goes_to_invalid_and_the_stream_goes_on(
    stream: Stream, reference: Reference
) -> None:
    version = build_snapshot(stream.root, stream.dataset)
    good = orjson.dumps({"id": "ok-1", "sender": "X", "recipient": "+8613800000000",
                         "category": "verification"})  # fmt: skip
    hostile = [
        b"not json at all",
        b"[1, 2, 3]",
        b'{"id": "a", "sender": "\xff\xfe", "recipient": "1"}',
        b'{"sender": "S", "recipient": "+8613800000000"}',
        b'{"id": "b", "sender": "S", "recipient": 8613800000000}',
        b'{"id": "c", "sender": "S", "recipient": "+86138", "ts": 1}',
        b'{"id": "d", "sender": "S", "recipient": "+8613800000000", "ts": "yesterday"}',
        b'{"id": "e", "sender": "S", "recipient": "+8613800000000", "text": "'
        + b"x" * 70_000
        + b'"}',
        b"",
        good,
    ]
    await produce(stream, [(None, v) for v in hostile])
    async with running(stream.config()):
        outputs = await stream.outputs_by_route({"invalid": 9, "deliver": 1})
    reasons = [dict(r.headers)["filterd-reason"].decode() for r in outputs["invalid"]]
    assert sorted(reasons) == sorted([
        "malformed-json", "malformed-json", "malformed-json", "missing-field",
        "bad-field-type", "bad-recipient", "bad-field-type", "oversized", "malformed-json",
    ])  # fmt: skip
    assert [r.value for r in outputs["deliver"]] == [good]
    inputs = await drain(stream.bootstrap, stream.input, expected=len(hostile))
    assert verify_stream(inputs, outputs, {version: reference}).clean


async def test_restart_resumes_from_committed_offsets(stream: Stream, reference: Reference) -> None:
    version = build_snapshot(stream.root, stream.dataset)
    first = events(stream.dataset, 1_500, seed=2)
    second = events(stream.dataset, 1_500, seed=3)
    await produce(stream, first)
    async with running(stream.config()):
        await stream.outputs_by_route(expected_counts(reference, first))
    await produce(stream, second)
    async with running(stream.config()):
        outputs = await stream.outputs_by_route(expected_counts(reference, first + second))
    inputs = await drain(stream.bootstrap, stream.input, expected=3_000)
    verdict = verify_stream(inputs, outputs, {version: reference})
    # A graceful stop commits everything it produced: nothing lost, nothing repeated.
    assert verdict.clean, verdict


async def test_no_snapshot_means_nothing_is_consumed(stream: Stream, reference: Reference) -> None:
    records = events(stream.dataset, 300, seed=4)
    await produce(stream, records)
    async with running(stream.config()) as service:
        await asyncio.sleep(3)
        assert service.health.snapshot_version is None
        assert await committed(stream) == {0: None, 1: None, 2: None}
        for topic in stream.outputs.values():
            assert await drain(stream.bootstrap, topic, timeout=2) == []
        # Fail closed until a snapshot appears, then it starts on its own.
        version = build_snapshot(stream.root, stream.dataset)
        outputs = await stream.outputs_by_route(expected_counts(reference, records))
    inputs = await drain(stream.bootstrap, stream.input, expected=300)
    assert verify_stream(inputs, outputs, {version: reference}).clean


async def test_snapshot_swap_changes_decisions_from_the_swap_on(
    stream: Stream, reference: Reference, tmp_path: Path
) -> None:
    v1 = build_snapshot(stream.root, stream.dataset)
    # v2 grants consent for every (sender, recipient) pair blocked for no-consent so far.
    before = events(stream.dataset, 1_000, seed=5, bad_rate=0)
    after = events(stream.dataset, 1_000, seed=6, bad_rate=0)
    grants = set()
    for _, value in before + after:
        if reference.decide(value) == ("block", "no-consent"):
            event = orjson.loads(value)
            from tests.support.reference import ref_normalize

            number = ref_normalize(event["recipient"])
            assert number is not None
            grants.add((event["sender"].strip(), number))
    assert grants
    extra = tmp_path / "v2"
    extra.mkdir()
    import gzip
    import shutil

    for name in ("optouts.csv.gz", "dnd.csv.gz"):
        shutil.copy(stream.dataset / name, extra / name)
    with (
        gzip.open(stream.dataset / "consents.csv.gz", "rb") as src,
        gzip.open(extra / "consents.csv.gz", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
        dst.write(b"".join(b"%s,+%d\n" % (s.encode(), n) for s, n in sorted(grants)))
    ref2 = reference.with_consents(grants)
    await produce(stream, before)
    async with running(stream.config()) as service:
        first = await stream.outputs_by_route(expected_counts(reference, before))
        v2 = build_snapshot(stream.root, extra)
        for _ in range(100):
            if service.health.snapshot_version == v2:
                break
            await asyncio.sleep(0.1)
        assert service.health.snapshot_version == v2
        await produce(stream, after)
        total = expected_counts(reference, before) + expected_counts(ref2, after)
        outputs = await stream.outputs_by_route(total)
    inputs = await drain(stream.bootstrap, stream.input, expected=2_000)
    verdict = verify_stream(inputs, outputs, {v1: reference, v2: ref2})
    assert verdict.clean, verdict
    assert verdict.versions[v1] == 1_000
    assert verdict.versions[v2] == 1_000
    assert sum(len(v) for v in first.values()) == 1_000


def spawn(
    stream: Stream, log: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "filterd", "run", *args],
            env=dict(os.environ, **stream.env(**(env or {}))),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_two_processes_one_stopped_mid_stream(
    stream: Stream, reference: Reference, tmp_path: Path
) -> None:
    version = build_snapshot(stream.root, stream.dataset)
    records = events(stream.dataset, 20_000, seed=8)
    log = tmp_path / "workers.log"
    a = spawn(stream, log)
    b = spawn(stream, log)
    try:
        await produce(stream, records[:10_000])
        await asyncio.sleep(1.0)
        a.kill()  # no goodbye: its uncommitted work must be redone by b
        a.wait(10)
        await produce(stream, records[10_000:])
        outputs = await stream.outputs_by_route(expected_counts(reference, records), timeout=90)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0, log.read_text()[-3000:]
    inputs = await drain(stream.bootstrap, stream.input, expected=len(records))
    verdict = verify_stream(inputs, outputs, {version: reference})
    # At-least-once: after a kill -9, repeats are allowed, always in the same topic.
    assert not verdict.missing, verdict.missing[:10]
    assert not verdict.in_two_topics
    assert not verdict.misrouted


async def test_sigterm_under_load_stops_cleanly_without_loss(
    stream: Stream, reference: Reference, tmp_path: Path
) -> None:
    version = build_snapshot(stream.root, stream.dataset)
    records = events(stream.dataset, 30_000, seed=9)
    log = tmp_path / "worker.log"
    await produce(stream, records)
    # Small batches: hundreds of batch cycles, so the signal lands mid-stream
    # with a batch in flight (pipelined: one acknowledged, the next decided).
    proc = spawn(stream, log, env={"FILTERD_BATCH_MAX_RECORDS": "50"})
    for _ in range(200):
        if await drain(stream.bootstrap, stream.deliver, timeout=0.5):
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "shutdown" in text
    done = sum(offset or 0 for offset in (await committed(stream)).values())
    assert 0 < done < len(records), "stopped before the first or after the last batch"
    proc = spawn(stream, log)
    try:
        outputs = await stream.outputs_by_route(expected_counts(reference, records), timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    inputs = await drain(stream.bootstrap, stream.input, expected=len(records))
    verdict = verify_stream(inputs, outputs, {version: reference})
    assert verdict.clean, verdict


async def test_exactly_once_mode_routes_without_duplicates(
    stream: Stream, reference: Reference
) -> None:
    version = build_snapshot(stream.root, stream.dataset)
    records = events(stream.dataset, 3_000, seed=10)
    await produce(stream, records)
    async with running(stream.config(FILTERD_DELIVERY_MODE="exactly-once")):
        outputs = await stream.outputs_by_route(expected_counts(reference, records))
    inputs = await drain(stream.bootstrap, stream.input, expected=len(records))
    verdict = verify_stream(inputs, outputs, {version: reference})
    assert verdict.clean, verdict
    assert await committed(stream) == {
        p: max((r.offset + 1 for r in inputs if r.partition == p), default=None) for p in range(3)
    }


def test_bad_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[batch]\nmax_records = -5\n")
    done = subprocess.run([sys.executable, "-m", "filterd", "run", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "batch.max_records" in done.stderr
    assert "-5" in done.stderr
    env = dict(os.environ, FILTERD_DELIVERY_MODE="maybe")
    done = subprocess.run([sys.executable, "-m", "filterd", "run"], capture_output=True,
                          text=True, timeout=60, check=False, env=env)  # fmt: skip
    assert done.returncode != 0
    assert "delivery.mode" in done.stderr


async def test_stream_and_replay_agree(
    stream: Stream, reference: Reference, tmp_path: Path
) -> None:
    build_snapshot(stream.root, stream.dataset)
    records = [(k, v) for k, v in events(stream.dataset, 3_000, seed=11) if b"\n" not in v]
    await produce(stream, records)
    async with running(stream.config()):
        outputs = await stream.outputs_by_route(expected_counts(reference, records))
    inputs = await drain(stream.bootstrap, stream.input, expected=len(records))
    ordered = sorted(inputs, key=lambda r: (r.partition, r.offset))
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(b"".join((r.value or b"") + b"\n" for r in ordered))
    from tests.support.stream import cli

    cli(
        "replay",
        "--snapshot",
        str(stream.root),
        "--input",
        str(lines),
        "--out",
        str(tmp_path / "r"),
    )
    replayed = [
        orjson.loads(x) for x in (tmp_path / "r" / "decisions.jsonl").read_bytes().splitlines()
    ]
    streamed = {}
    for route, recs in outputs.items():
        for rec in recs:
            h = {k: v.decode() for k, v in rec.headers}
            streamed[h["filterd-source"]] = (route, h["filterd-reason"])
    assert len(replayed) == len(ordered) == len(streamed)
    for rec, decision in zip(ordered, replayed, strict=True):
        source = f"{rec.topic}/{rec.partition}/{rec.offset}"
        assert streamed[source] == (decision["route"], decision["reason"]), source


def children_of(pid: int) -> list[str]:
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return done.stdout.split()


async def test_workers_supervisor_restarts_a_killed_worker(
    stream: Stream, reference: Reference, tmp_path: Path
) -> None:
    version = build_snapshot(stream.root, stream.dataset)
    records = events(stream.dataset, 6_000, seed=12)
    log = tmp_path / "supervisor.log"
    supervisor = spawn(stream, log, "--workers", "2")
    try:
        await produce(stream, records[:3_000])
        await stream.outputs_by_route(expected_counts(reference, records[:3_000]))
        children = children_of(supervisor.pid)
        assert len(children) == 2, children
        os.kill(int(children[0]), signal.SIGKILL)
        for _ in range(100):
            now = children_of(supervisor.pid)
            if len(now) == 2 and children[0] not in now:
                break
            await asyncio.sleep(0.2)
        assert len(now) == 2, log.read_text()[-2000:]
        assert children[0] not in now
        await produce(stream, records[3_000:])
        outputs = await stream.outputs_by_route(expected_counts(reference, records), timeout=90)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "restarting" in text
    assert text.count("shutdown ◆") == 2  # both live workers shut down gracefully
    inputs = await drain(stream.bootstrap, stream.input, expected=len(records))
    verdict = verify_stream(inputs, outputs, {version: reference})
    assert not verdict.missing
    assert not verdict.in_two_topics
    assert not verdict.misrouted


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
async def test_crash_between_produce_and_commit(
    stream: Stream, reference: Reference, tmp_path: Path, mode: str
) -> None:
    version = build_snapshot(stream.root, stream.dataset)
    records = events(stream.dataset, 2_000, seed=13)
    await produce(stream, records)
    log = tmp_path / "worker.log"
    hook = {"FILTERD_DELIVERY_MODE": mode, "FILTERD__FAULT_KILL_AFTER_PRODUCE": "1"}
    crashing = spawn(stream, log, env=hook)
    assert crashing.wait(60) == 137, log.read_text()[-2000:]
    assert await committed(stream) == {0: None, 1: None, 2: None}
    crashed = await stream.outputs_by_route()
    seen = Counter({route: len(recs) for route, recs in crashed.items()})
    if mode == "exactly-once":
        # The open transaction died with the process: read_committed readers see nothing.
        assert sum(seen.values()) == 0
    else:
        assert sum(seen.values()) > 0  # produced and acknowledged, never committed
    # The restarted process redoes everything not committed.
    async with running(stream.config(FILTERD_DELIVERY_MODE=mode)):
        outputs = await stream.outputs_by_route(seen + expected_counts(reference, records))
    inputs = await drain(stream.bootstrap, stream.input, expected=len(records))
    verdict = verify_stream(inputs, outputs, {version: reference})
    assert not verdict.missing
    assert not verdict.in_two_topics
    assert not verdict.misrouted
    if mode == "exactly-once":
        assert not verdict.duplicated
    else:
        # Written again, each into the same topic with the same reason (checked above).
        assert verdict.duplicated == sum(seen.values())
