"""Live consent changes on the real broker: in force for records 1 s after their append, in
both delivery modes, and applied again from the watermark after kill -9."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.support.kafka import drain
from tests.support.reference import Reference
from tests.support.stream import Stream, build_snapshot, header, running

pytestmark = pytest.mark.timeout(240)

SHOP = "106900001234"
A, B, C, D = (8613800000001 + i for i in range(4))


def dataset(directory: Path) -> Reference:
    """A snapshot's inputs: SHOP has consents of A, B and D; nothing else."""
    directory.mkdir(parents=True)
    files = {
        "consents": "sender,recipient\n" + "".join(f"{SHOP},+{n}\n" for n in (A, B, D)),
        "optouts": "sender,recipient\n",
        "dnd": "recipient\n",
    }
    for name, text in files.items():
        (directory / f"{name}.csv.gz").write_bytes(gzip.compress(text.encode()))
    return Reference(consents=frozenset({(SHOP, A), (SHOP, B), (SHOP, D)}))


def change(op: str, number: int, sender: str | None = SHOP, **extra: object) -> bytes:
    doc: dict[str, object] = {"op": op, "recipient": f"+{number}", "source": "registry", **extra}
    if sender is not None:
        doc["sender"] = sender
    return orjson.dumps(doc)


def event(i: int, number: int) -> bytes:
    return orjson.dumps({"id": f"m{i}", "sender": SHOP, "recipient": f"+{number}"})


async def append(bootstrap: str, topic: str, values: list[bytes], key_of: bool) -> list[int]:
    """Produce ``values`` (keyed by recipient digits when ``key_of``); their timestamps."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        stamps = []
        for value in values:
            key = None
            if key_of:  # a compacted topic needs keys, a malformed record too
                key = value[value.find(b'"+') + 2 :][:13] if b'"+' in value else b"junk"
            meta = await producer.send_and_wait(topic, value, key=key)
            stamps.append(meta.timestamp)
        return stamps
    finally:
        await producer.stop()


async def produce_at(bootstrap: str, topic: str, values: list[bytes], at_ms: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value, timestamp_ms=at_ms)
        await producer.flush()
    finally:
        await producer.stop()


CHANGES = [
    change("opt-out", A),
    change("consent", C, method="explicit"),
    change("consent-revoke", D),
    change("opt-out", B),
    change("opt-out-clear", B),
    b"not json",  # skipped, and the feed goes on
    change("dnd-add", C, sender=None),
]


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
async def test_changes_apply_to_records_one_second_after_their_append(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path, mode: str
) -> None:  # type: ignore[no-untyped-def]
    reference = dataset(tmp_path / "ds")
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", tmp_path / "ds"
    )
    build_snapshot(stream.root, tmp_path / "ds")
    rebuilt = reference.with_changes(list(CHANGES))
    events = [event(i, n) for i, n in enumerate((A, B, C, D))]
    async with running(stream.config(FILTERD_DELIVERY_MODE=mode)) as service:
        # The service is consuming: a first record went through.
        await produce_at(kafka_bootstrap, stream.input, [event(9, B)], time.time_ns() // 10**6)
        assert len(await drain(kafka_bootstrap, stream.deliver, expected=1, timeout=60)) == 1
        # Records of time `at`, fetched at once; changes appended within `at - 1 s` must
        # apply to them although they come after: the service waits, it does not race.
        at = time.time_ns() // 1_000_000 + 3000
        await produce_at(kafka_bootstrap, stream.input, events, at)
        await asyncio.sleep(0.5)
        stamps = await append(kafka_bootstrap, stream.changes, CHANGES, key_of=True)
        assert max(stamps) + 1000 <= at, "the changes came too late for this test"
        outputs = await stream.outputs_by_route({"deliver": 3, "block": 2})
        assert service.change_feed is not None
        assert service.change_feed.bad["not"] == 1
    got = {}
    for route, records in outputs.items():
        for rec in records:
            if orjson.loads(rec.value)["id"] == "m9":
                continue
            number = int(orjson.loads(rec.value)["recipient"])
            changed = [v.decode() for k, v in rec.headers if k == "filterd-change"]
            got[number] = (route, header(rec, "filterd-reason"), changed[0] if changed else None)
    offsets = {}
    for rec in await drain(kafka_bootstrap, stream.changes, expected=len(CHANGES)):
        offsets[rec.value] = f"{stream.changes}/{rec.partition}/{rec.offset}"
    assert got == {
        A: ("block", "opted-out", offsets[CHANGES[0]]),
        B: ("deliver", "consent", None),  # opted out and cleared: the snapshot's consent
        C: ("deliver", "consent", offsets[CHANGES[1]]),  # dnd-add not read: consent decides
        D: ("block", "no-consent", offsets[CHANGES[2]]),
    }
    for number, (route, reason, _) in got.items():
        assert rebuilt.decide(event(0, number), at) == (route, reason)


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "filterd", "run"], env=dict(os.environ, **env),
            stdout=out, stderr=out,
        )  # fmt: skip


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
async def test_kill_9_and_restart_apply_every_change_again(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path, mode: str
) -> None:  # type: ignore[no-untyped-def]
    dataset(tmp_path / "ds")
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", tmp_path / "ds"
    )
    build_snapshot(stream.root, tmp_path / "ds")
    env = stream.env(FILTERD_DELIVERY_MODE=mode)
    log = tmp_path / "filterd.log"
    first = start(env, log)
    try:
        stamps = await append(kafka_bootstrap, stream.changes, CHANGES, key_of=True)
        await produce_at(kafka_bootstrap, stream.input, [event(0, A)], max(stamps) + 1000)
        before = await drain(kafka_bootstrap, stream.block, expected=1, timeout=60)
        assert [header(r, "filterd-reason") for r in before] == ["opted-out"], log.read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    # Nothing of the overlay survives in the process: the restart reads the feed again.
    await produce_at(
        kafka_bootstrap, stream.input, [event(i, n) for i, n in enumerate((A, C, D), 1)],
        max(stamps) + 1000,
    )  # fmt: skip
    second = start(env, log)
    try:
        block = await drain(kafka_bootstrap, stream.block, expected=3, timeout=90)
        deliver = await drain(kafka_bootstrap, stream.deliver, expected=1, timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    ids = {orjson.loads(r.value)["id"]: header(r, "filterd-reason") for r in block + deliver}
    assert ids == {"m0": "opted-out", "m1": "opted-out", "m2": "consent", "m3": "no-consent"}, (
        log.read_text()
    )


async def test_without_the_change_feed_nothing_is_decided_and_readyz_says_why(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    dataset(tmp_path / "ds")
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", tmp_path / "ds"
    )
    build_snapshot(stream.root, tmp_path / "ds")
    missing = f"{stream.changes}-later"
    async with running(stream.config(FILTERD_TOPICS_CHANGES=missing)) as service:
        await produce_at(kafka_bootstrap, stream.input, [event(0, A)], time.time_ns() // 10**6)
        reasons: list[str] = []
        for _ in range(100):
            reasons = service.health.readiness()[1]
            if any("does not exist" in r for r in reasons):
                break
            await asyncio.sleep(0.1)
        assert any(f"changes topic {missing!r} does not exist" in r for r in reasons), reasons
        assert await drain(kafka_bootstrap, stream.deliver, timeout=3) == []  # fail closed
        await new_topic(
            partitions=1,
            name=missing,
            config={"cleanup.policy": "compact", "message.timestamp.type": "LogAppendTime"},
        )
        assert len(await drain(kafka_bootstrap, stream.deliver, expected=1, timeout=60)) == 1


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
async def test_a_td_reply_becomes_a_change_in_force_a_second_later(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path, mode: str
) -> None:  # type: ignore[no-untyped-def]
    dataset(tmp_path / "ds")
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", tmp_path / "ds"
    )
    stream.inbound = await new_topic(partitions=2)
    build_snapshot(stream.root, tmp_path / "ds")
    replies = [
        orjson.dumps({"id": "r1", "from": f"+{A}", "to": SHOP, "text": "回复TD退订", "ts": 1}),
        orjson.dumps({"id": "r2", "from": f"+{B}", "to": SHOP, "text": "thanks!"}),
        b"not json",
    ]
    async with running(stream.config(FILTERD_DELIVERY_MODE=mode)) as service:
        await produce_at(kafka_bootstrap, stream.inbound, replies, time.time_ns() // 10**6)
        (change_record,) = await drain(kafka_bootstrap, stream.changes, expected=1, timeout=60)
        at = change_record.timestamp + 1000
        await produce_at(kafka_bootstrap, stream.input, [event(0, A), event(1, B)], at)
        outputs = await stream.outputs_by_route({"deliver": 1, "block": 1})
        assert service.replies is not None
        assert service.replies.results == {"keyword": 1, "ignored": 1, "bad": 1}
    assert orjson.loads(change_record.value) == {
        "op": "opt-out", "sender": SHOP, "recipient": f"+{A}", "source": "mo-reply",
        "id": "mo:r1", "ts": 1,
    }  # fmt: skip
    assert change_record.key == str(A).encode()
    (blocked,) = outputs["block"]
    assert header(blocked, "filterd-reason") == "opted-out"
    where = f"{stream.changes}/{change_record.partition}/{change_record.offset}"
    assert header(blocked, "filterd-change") == where
    (delivered,) = outputs["deliver"]
    assert orjson.loads(delivered.value)["id"] == "m1"
    # Each reply converted once: nothing more on the changes topic after the run.
    assert len(await drain(kafka_bootstrap, stream.changes, timeout=3)) == 1


async def test_audit_why_finds_the_deciding_change_and_redecides_with_it(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from tests.audit.clihelp import run_cli, write_config

    dataset(tmp_path / "ds")
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", tmp_path / "ds"
    )
    build_snapshot(stream.root, tmp_path / "ds")
    async with running(stream.config()):
        stamps = await append(kafka_bootstrap, stream.changes, CHANGES[:1], key_of=True)
        await produce_at(kafka_bootstrap, stream.input, [event(0, A)], max(stamps) + 1000)
        (blocked,) = await drain(kafka_bootstrap, stream.block, expected=1, timeout=60)
    where = header(blocked, "filterd-change")
    config = write_config(
        tmp_path / "audit.toml", kafka_bootstrap, input=stream.input, deliver=stream.deliver,
        block=stream.block, invalid=stream.invalid, changes=stream.changes,
    )  # fmt: skip
    capsys.readouterr()
    code = await run_cli(
        "audit", "why", "m0", "--config", str(config), "--snapshot-root", str(stream.root),
        "--format", "json", "--no-progress",
    )  # fmt: skip
    (found,) = orjson.loads(capsys.readouterr().out)["found"]
    assert code == 0
    assert found["change"] == where
    assert found["reason"] == "opted-out"
    # Re-decided with the change: the snapshot alone would deliver (A has a consent).
    assert found["redecision"]["reason"] == "opted-out"
    assert found["redecision"]["reproduces"] is True
