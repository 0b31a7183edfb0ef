"""Step 4 and monitor mode in the stream, on the real broker, against the reference.

Records keyed by recipient (so a recipient's records share an input partition), with
record timestamps over three days, decided per input partition in offset order by the
reference; in both delivery modes, with monitor mode off and on.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from filterd.config import CapRule, Config
from tests.support.kafka import drain
from tests.support.limit_cases import CAPS, generate, reference_policy
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


@pytest.mark.parametrize(
    ("mode", "monitor"),
    [("at-least-once", ()), ("exactly-once", ()), ("at-least-once", ("frequency-cap",))],
)
async def test_stream_applies_the_limits_as_the_reference(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path, mode: str, monitor: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    base_ms = time.time_ns() // 1_000_000 - 4 * DAY_MS
    case = generate(tmp_path / "ds", base_ms, seed=21, events=900)
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", case.directory
    )
    build_snapshot(stream.root, case.directory)
    await produce_keyed(kafka_bootstrap, stream.input, case.lines, base_ms)
    inputs = await drain(kafka_bootstrap, stream.input, expected=len(case.lines))
    reference = Reference.from_dataset(case.directory, **reference_policy(monitor))
    expected = expected_by_source(reference, inputs)
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
