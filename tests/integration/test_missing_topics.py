"""Missing topics on the real broker: one clear line each, naming ``filterd topics create``.

A missing input topic is waited for (``/readyz`` says why) and taken as soon as it appears;
a missing output topic stops start-up in one line, without the client's metadata retries.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest

from filterd.loadgen import write_dataset
from filterd.service import Service
from tests.support.stream import Stream, build_snapshot, running

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

NOT_FOUND = "not found in cluster metadata"


async def _stream(bootstrap: str, new_topic, new_group, tmp_path: Path) -> Stream:  # type: ignore[no-untyped-def]
    dataset = tmp_path / "dataset"
    write_dataset(dataset, senders=2, recipients=200, consents=100, seed=3)
    stream = await Stream.create(
        bootstrap, new_topic, new_group, tmp_path / "snapshots", dataset, partitions=(1, 1, 1, 1)
    )
    build_snapshot(stream.root, dataset)
    return stream


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_missing_input_topic_is_named_once_and_taken_when_created(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stream = await _stream(kafka_bootstrap, new_topic, new_group, tmp_path)
    missing = f"test-missing-input-{uuid.uuid4().hex[:8]}"
    expected = (
        f"input topic {missing!r} does not exist; waiting for it "
        "(create it with `filterd topics create --config FILE`)"
    )
    async with running(stream.config(FILTERD_TOPICS_INPUT=missing)) as service:
        for _ in range(200):
            if expected in service.health.readiness()[1]:
                break
            await asyncio.sleep(0.1)
        reasons = [r for r in service.health.readiness()[1] if "change feed" not in r]
        assert reasons == [expected, "no partitions assigned"]
        await asyncio.sleep(3)  # past a few polls: still one line
        assert _lines(caplog, "does not exist") == [expected]
        # Before: about 50 client errors in the first five seconds.
        assert len(_lines(caplog, NOT_FOUND)) <= 2

        await new_topic(partitions=1, name=missing)
        # Without the service's own look-out the consumer would notice only at its next
        # metadata refresh, five minutes later.
        for _ in range(300):
            if service.health.assigned:
                break
            await asyncio.sleep(0.1)
        assert service.health.assigned
        assert expected not in service.health.readiness()[1]
    assert _lines(caplog, "now exists") == [f"input topic {missing!r} now exists"]


async def test_missing_output_topic_stops_start_up_in_one_line(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stream = await _stream(kafka_bootstrap, new_topic, new_group, tmp_path)
    missing = f"test-missing-block-{uuid.uuid4().hex[:8]}"
    service = Service(stream.config(FILTERD_TOPICS_BLOCK=missing))
    code = await asyncio.wait_for(service.serve(install_signals=False), 60)
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"start-up failed: output topic {missing!r} does not exist; "
        "create it with `filterd topics create --config FILE`"
    ]
    # Before: "cannot read metadata of topic ...: TimeoutError()" after 30 s of client errors.
    assert _lines(caplog, NOT_FOUND) == []

    two = Service(stream.config(FILTERD_TOPICS_BLOCK=missing, FILTERD_TOPICS_INVALID=missing + "i"))
    caplog.clear()
    assert await asyncio.wait_for(two.serve(install_signals=False), 60) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"start-up failed: output topics {missing!r}, {missing + 'i'!r} do not exist; "
        "create them with `filterd topics create --config FILE`"
    ]
