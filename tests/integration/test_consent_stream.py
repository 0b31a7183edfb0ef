"""The stream on the real broker agrees with the reference on every consent-evidence rule.

The message's time in the stream is the Kafka record timestamp: records are
produced with explicit timestamps around expiries, and with a ``ts`` field
that says otherwise, which the stream must ignore.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.support.consent_cases import generate
from tests.support.kafka import drain
from tests.support.reference import Reference
from tests.support.stream import Stream, build_snapshot, header, running

pytestmark = pytest.mark.timeout(180)


async def test_stream_agrees_with_the_reference_on_every_rule(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Recent times: the broker refuses timestamps far in the future, and retention
    # could drop very old ones.
    base_ms = time.time_ns() // 1_000_000 - 3_600_000
    case = generate(tmp_path / "ds", base_ms, seed=11, events=500)
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", case.directory
    )
    version = build_snapshot(stream.root, case.directory)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for at, value in case.events:
            await producer.send(stream.input, value, timestamp_ms=at)
        await producer.flush()
    finally:
        await producer.stop()
    reference = Reference.from_dataset(case.directory)
    inputs = await drain(kafka_bootstrap, stream.input, expected=len(case.events))
    inputs.sort(key=lambda r: (r.partition, r.offset))
    # Step 4 counts per input partition, in offset order: a model per partition.
    models = {p: reference.for_partition() for p in {r.partition for r in inputs}}
    expected = {
        f"{r.topic}/{r.partition}/{r.offset}": models[r.partition].decide_full(r.value, r.timestamp)
        for r in inputs
    }
    routes = Counter(route for route, _, _ in expected.values())
    async with running(stream.config()):
        outputs = await stream.outputs_by_route(routes)
    got = {}
    for route, records in outputs.items():
        for rec in records:
            declared = [v.decode() for k, v in rec.headers if k == "filterd-declared-category"]
            got[header(rec, "filterd-source")] = (
                route, header(rec, "filterd-reason"), declared[0] if declared else None
            )  # fmt: skip
            assert header(rec, "filterd-snapshot") == version
    assert got == expected
    reasons = Counter(reason for _, reason, _ in expected.values())
    for reason in ("consent", "consent-expired", "consent-not-explicit", "opted-out",
                   "exempt-category", "unknown-sender", "no-consent"):  # fmt: skip
        assert reasons[reason] > 0, (reason, reasons)
    assert any(declared for _, _, declared in expected.values())
    # The ts field was not the message's time: deciding by it would differ somewhere.
    models = {p: reference.for_partition() for p in models}
    by_ts = {s: models[r.partition].decide_full(r.value, r.timestamp, event_time=True) for s, r in
             ((f"{r.topic}/{r.partition}/{r.offset}", r) for r in inputs)}  # fmt: skip
    assert by_ts != expected
