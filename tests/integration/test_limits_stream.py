"""Step 4 and monitor mode in the stream, on the real broker, against the reference.

Records keyed by recipient (so a recipient's records share an input partition), with
record timestamps over three days, decided per input partition in offset order by the
reference; in both delivery modes, with monitor mode off and on.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from filterd.config import CapRule, Config
from tests.support.kafka import drain
from tests.support.limit_cases import CAPS, config_toml, generate, reference_policy
from tests.support.reference import Reference, ref_normalize
from tests.support.stream import Stream, build_snapshot, header, running

pytestmark = pytest.mark.timeout(240)
DAY_MS = 86_400_000


def limits_config(stream: Stream, monitor: tuple[str, ...], **env: str) -> Config:
    policy = reference_policy(monitor)
    config = stream.config(
        FILTERD_POLICY_QUIET_HOURS=policy["quiet_hours"],
        FILTERD_POLICY_TIMEZONES=",".join(f"{p}={z}" for p, z in policy["timezones"].items()),
        FILTERD_POLICY_MONITOR=",".join(monitor),
        **env,
    )
    caps = tuple(CapRule(tuple(c["categories"]), c["per"], c["window"], c["max"]) for c in CAPS)
    return dataclasses.replace(config, policy=dataclasses.replace(config.policy, caps=caps))


async def produce_keyed(bootstrap: str, topic: str, lines: list[bytes], base_ms: int) -> None:
    """Each line keyed by its recipient's digits, at its ``ts`` (or base) as record time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for line in lines:
            event = orjson.loads(line)
            number = ref_normalize(event["recipient"])
            ts = event.get("ts")
            at = ts if isinstance(ts, int) and base_ms <= ts <= base_ms + 4 * DAY_MS else base_ms
            await producer.send(topic, line, key=str(number).encode(), timestamp_ms=at)
        await producer.flush()
    finally:
        await producer.stop()


def expected_by_source(reference: Reference, inputs: list) -> dict[str, tuple]:  # type: ignore[type-arg]
    inputs = sorted(inputs, key=lambda r: (r.partition, r.offset))
    models = {p: reference.for_partition() for p in {r.partition for r in inputs}}
    return {
        f"{r.topic}/{r.partition}/{r.offset}": models[r.partition].decide_record(
            r.value, r.timestamp
        )
        for r in inputs
    }


def got_by_source(outputs: dict[str, list]) -> dict[str, tuple]:  # type: ignore[type-arg]
    got = {}
    for route, records in outputs.items():
        for rec in records:
            hdrs = dict(rec.headers)
            declared = hdrs.get("filterd-declared-category")
            would = hdrs.get("filterd-would-block")
            got[header(rec, "filterd-source")] = (
                route,
                header(rec, "filterd-reason"),
                declared.decode() if declared else None,
                would.decode() if would else None,
            )
    return got


async def prepared(  # type: ignore[no-untyped-def]
    bootstrap: str,
    new_topic,
    new_group,
    tmp_path: Path,
    seed: int,
    events: int,
    monitor: tuple[str, ...] = (),
) -> tuple[Stream, dict[str, tuple]]:  # type: ignore[type-arg]
    """A stream with the generated set on its input (keyed by recipient), its snapshot
    built, and the reference's decision of every input record by source."""
    base_ms = time.time_ns() // 1_000_000 - 4 * DAY_MS
    case = generate(tmp_path / "ds", base_ms, seed=seed, events=events)
    stream = await Stream.create(bootstrap, new_topic, new_group, tmp_path / "snap", case.directory)
    build_snapshot(stream.root, case.directory)
    await produce_keyed(bootstrap, stream.input, case.lines, base_ms)
    inputs = await drain(bootstrap, stream.input, expected=len(case.lines))
    reference = Reference.from_dataset(case.directory, **reference_policy(monitor))
    return stream, expected_by_source(reference, inputs)


@pytest.mark.parametrize(
    ("mode", "monitor"),
    [("at-least-once", ()), ("exactly-once", ()), ("at-least-once", ("frequency-cap",))],
)
async def test_stream_applies_the_limits_as_the_reference(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path, mode: str, monitor: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    stream, expected = await prepared(
        kafka_bootstrap, new_topic, new_group, tmp_path, 21, 900, monitor
    )
    routes = Counter(v[0] for v in expected.values())
    async with running(limits_config(stream, monitor, FILTERD_DELIVERY_MODE=mode)):
        outputs = await stream.outputs_by_route(routes)
    got = got_by_source(outputs)
    assert got == expected
    reasons = Counter(v[1] for v in expected.values())
    if monitor:
        assert reasons["monitored"] > 0, reasons
    else:
        assert reasons["frequency-cap"] > 0, reasons
        assert reasons["quiet-hours"] > 0, reasons


def spawn(stream: Stream, config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "filterd", "run", "--config", str(config)],
            env=dict(os.environ, **stream.env(**env)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_kill_9_in_exactly_once_mode_counts_go_on_exactly(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    stream, expected = await prepared(kafka_bootstrap, new_topic, new_group, tmp_path, 31, 1500)
    config = tmp_path / "filterd.toml"
    config.write_text(config_toml())
    log = tmp_path / "worker.log"
    # Small batches: many transactions, so the kill lands mid-stream.
    env = {"FILTERD_DELIVERY_MODE": "exactly-once", "FILTERD_BATCH_MAX_RECORDS": "20"}
    first = spawn(stream, config, log, **env)
    try:
        for _ in range(600):
            if len(await drain(kafka_bootstrap, stream.deliver, timeout=0.3)) >= 100:
                break
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    done = len(await drain(kafka_bootstrap, stream.deliver, timeout=2))
    routes = Counter(v[0] for v in expected.values())
    assert 0 < done < routes["deliver"], "killed before the first or after the last batch"
    second = spawn(stream, config, log, **env)
    try:
        outputs = await stream.outputs_by_route(routes, timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, log.read_text()[-3000:]
    got = got_by_source(outputs)
    # Exactly once, and every decision the reference's: counts went on from the kill.
    missing = {k: v for k, v in expected.items() if k not in got}
    wrong = {k: (got[k], v) for k, v in expected.items() if k in got and got[k] != v}
    assert not wrong, wrong
    assert not missing, missing
    assert sum(len(v) for v in outputs.values()) == len(expected)
    assert "restored" in log.read_text()
    assert Counter(v[1] for v in expected.values())["frequency-cap"] > 0
