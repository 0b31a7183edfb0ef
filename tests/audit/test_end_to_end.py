"""Generated traffic through the real service, then ``filterd audit summary`` must equal an
independent count of what the reference model decided."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from filterd.loadgen import iter_events, load_dataset, write_dataset
from filterd.loadgen.produce import produce_events
from tests.support.reference import Reference
from tests.support.stream import Stream, build_snapshot, running

from .clihelp import run_cli

pytestmark = pytest.mark.timeout(180)


def sender_of(value: bytes) -> str:
    """The trimmed sender as an auditor reads it; written apart from filterd's parser."""
    event = orjson.loads(value)
    return event["sender"].strip()


async def test_audit_summary_equals_the_reference_decisions(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path, monkeypatch, capsys
) -> None:
    dataset = tmp_path / "dataset"
    write_dataset(dataset, senders=10, recipients=2_000, consents=4_000, seed=17)
    reference = Reference.from_dataset(dataset)
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snapshots", dataset
    )
    version = build_snapshot(stream.root, dataset)
    records = list(iter_events(load_dataset(dataset), 3_000, seed=5, bad_rate=0.05))
    decisions = [reference.decide(value) for _, value in records]
    expected_routes = Counter(route for route, _ in decisions)
    await produce_events(kafka_bootstrap, stream.input, records, rate=None)
    async with running(stream.config()):
        await stream.outputs_by_route(expected_routes)

    for name, value in stream.env().items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert await run_cli("audit", "summary", "--format", "json", "--top", "1000") == 0
    got = orjson.loads(capsys.readouterr().out)

    blocked = [
        (value, reason)
        for (_, value), (route, reason) in zip(records, decisions, strict=True)
        if route == "block"
    ]
    senders: dict[str, Counter[str]] = {}
    for value, reason in blocked:
        senders.setdefault(sender_of(value), Counter())[reason] += 1
    assert got["total"] == len(blocked) > 0
    assert got["by_reason"] == dict(Counter(reason for _, reason in blocked))
    assert {s["sender"]: s["by_reason"] for s in got["by_sender"]} == {
        sender: dict(c) for sender, c in senders.items()
    }
    assert [s["total"] for s in got["by_sender"]] == sorted(
        (sum(c.values()) for c in senders.values()), reverse=True
    )
    assert got["by_snapshot"] == {version: len(blocked)}
    assert sum(got["by_hour"].values()) == len(blocked)

    # With the invalid topic: every reason of both topics, exactly.
    assert await run_cli("audit", "summary", "--format", "json", "--invalid") == 0
    both = orjson.loads(capsys.readouterr().out)
    routed_out = Counter(reason for route, reason in decisions if route in ("block", "invalid"))
    assert both["by_reason"] == dict(routed_out)
    assert both["total"] == expected_routes["block"] + expected_routes["invalid"]
