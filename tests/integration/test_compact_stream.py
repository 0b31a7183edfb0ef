"""``snapshot compact`` and ``snapshot build --changes`` on the real broker: the folded
version carries the watermark, a running service swaps to it mid-stream without any
decision changing, and drops the folded changes from memory while keeping the newer ones."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path

import orjson
import pytest

from filterd.router import Decider, Policy
from filterd.snapshot.load import load_snapshot
from tests.audit.clihelp import write_config
from tests.integration.test_changes_stream import (
    CHANGES,
    SHOP,
    A,
    B,
    C,
    D,
    append,
    change,
    dataset,
    event,
    produce_at,
    start,
)
from tests.support.kafka import drain
from tests.support.reference import Reference
from tests.support.stream import Record, Stream, build_snapshot, cli, header, run_cli, running

pytestmark = pytest.mark.timeout(300)

NUMBERS = (A, B, C, D)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def decisions_of(outputs: dict[str, list[Record]]) -> dict[str, tuple[str, str, int]]:
    """id -> (route, reason, recipient) of every output record."""
    got = {}
    for route, records in outputs.items():
        for rec in records:
            doc = orjson.loads(rec.value)
            got[doc["id"]] = (route, header(rec, "filterd-reason"), int(doc["recipient"]))
    return got


def check(got: dict[str, tuple[str, str, int]], reference: Reference, at: int) -> None:
    for mid, (route, reason, number) in got.items():
        assert (route, reason) == reference.decide(event(0, number), at), (mid, number)


async def test_a_swap_to_a_compacted_version_mid_stream_changes_no_decision(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    reference = dataset(tmp_path / "ds")
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", tmp_path / "ds"
    )
    base = build_snapshot(stream.root, tmp_path / "ds")
    config = write_config(tmp_path / "filterd.toml", kafka_bootstrap, changes=stream.changes)
    rebuilt = reference.with_changes(list(CHANGES))
    extra = change("opt-out", C)
    ids = itertools.count()
    async with running(stream.config()) as service:
        stamps = await append(kafka_bootstrap, stream.changes, CHANGES, key_of=True)
        first = max(stamps) + 1000
        await produce_at(kafka_bootstrap, stream.input, [event(next(ids), A)], first)
        assert len(await drain(kafka_bootstrap, stream.block, expected=1, timeout=60)) == 1
        feed = service.change_feed
        assert feed is not None
        # Facts held: the malformed change is skipped, B's opt-out and its clearing are one.
        assert len(feed.overlay) == len(CHANGES) - 2

        swapped = asyncio.Event()

        async def pump() -> int:
            """Records of every number, 20 a second, until a second after the swap."""
            sent, until = 0, None
            while until is None or time.monotonic() < until:
                batch = [event(next(ids), n) for n in NUMBERS]
                await produce_at(kafka_bootstrap, stream.input, batch, max(first, _now_ms()))
                sent += len(batch)
                if until is None and swapped.is_set():
                    until = time.monotonic() + 1.0
                await asyncio.sleep(0.05)
            return sent

        pumping = asyncio.create_task(pump())
        out = await asyncio.to_thread(
            cli, "snapshot", "compact", str(stream.root), "--config", str(config), "--no-publish"
        )
        compacted = out.strip().splitlines()[-1]
        manifest = orjson.loads((stream.root / compacted / "manifest.json").read_bytes())
        offsets = manifest["change_watermark"]["offsets"]
        assert manifest["change_watermark"]["topic"] == stream.changes
        assert sum(offsets.values()) == len(CHANGES)
        assert manifest["compacted_from"] == {"version": base, "changes": len(CHANGES) - 1}
        await asyncio.to_thread(cli, "snapshot", "publish", str(stream.root), compacted)
        for _ in range(300):
            if service.health.snapshot_version == compacted and not len(feed.overlay):
                break
            await asyncio.sleep(0.05)
        assert service.health.snapshot_version == compacted
        assert len(feed.overlay) == 0  # every pending change was folded in: dropped
        swapped.set()
        sent = await pumping
        outputs = await stream.outputs_by_route()
        got = decisions_of(outputs)
        while len(got) < sent + 1:
            more = await stream.outputs_by_route()
            if len(decisions_of(more)) == len(got):
                break
            got = decisions_of(more)
        assert len(got) == sent + 1
        check(got, rebuilt, first)
        # Decided with both versions: the swap happened mid-stream.
        versions = {header(r, "filterd-snapshot") for rs in outputs.values() for r in rs}
        assert versions == {base, compacted}

        # A change after the watermark stays pending on the compacted version.
        (stamp,) = await append(kafka_bootstrap, stream.changes, [extra], key_of=True)
        later = [event(next(ids), n) for n in NUMBERS]
        await produce_at(kafka_bootstrap, stream.input, later, stamp + 1000)
        for _ in range(300):
            if len(feed.overlay) == 1:
                break
            await asyncio.sleep(0.05)
        assert len(feed.overlay) == 1
        new: dict[str, tuple[str, str, int]] = {}
        for _ in range(30):
            final = decisions_of(await stream.outputs_by_route())
            new = {k: v for k, v in final.items() if k not in got}
            if len(new) == len(NUMBERS):
                break
    assert len(new) == len(NUMBERS)
    check(new, rebuilt.with_changes([extra]), stamp + 1000)


async def test_build_with_changes_folds_the_feed_into_a_registry_export(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    reference = dataset(tmp_path / "ds")
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", tmp_path / "ds"
    )
    await append(kafka_bootstrap, stream.changes, CHANGES, key_of=True)
    config = write_config(tmp_path / "filterd.toml", kafka_bootstrap, changes=stream.changes)
    version = build_snapshot(stream.root, tmp_path / "ds", "--changes", "--config", str(config))
    snapshot = load_snapshot(stream.root)
    assert snapshot.version == version
    assert sorted(p.name for p in stream.root.iterdir() if p.name.startswith("2")) == [version]
    watermark = snapshot.manifest["change_watermark"]
    assert isinstance(watermark, dict)
    assert sum(watermark["offsets"].values()) == len(CHANGES)
    decider = Decider(snapshot, Policy())
    rebuilt = reference.with_changes(list(CHANGES))
    at = _now_ms()
    for number in NUMBERS:
        value = orjson.dumps({"id": "m", "sender": SHOP, "recipient": f"+{number}"})
        assert decider.decide(value, at) == rebuilt.decide(value, at), number
    # Without --config there is no changes topic to read: refused, naming the option.
    done = run_cli(
        "snapshot", "build", "--consents", str(tmp_path / "ds" / "consents.csv.gz"),
        "--out", str(tmp_path / "other"), "--changes",
    )  # fmt: skip
    assert done.returncode != 0
    assert "--changes" in done.stderr


async def test_kill_9_after_compaction_keeps_every_change(
    kafka_bootstrap: str, new_topic, new_group, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    dataset(tmp_path / "ds")
    stream = await Stream.create(
        kafka_bootstrap, new_topic, new_group, tmp_path / "snap", tmp_path / "ds"
    )
    build_snapshot(stream.root, tmp_path / "ds")
    config = write_config(tmp_path / "filterd.toml", kafka_bootstrap, changes=stream.changes)
    # Folded in: A opts out, C consents, D's consent is revoked. Pending: B opts out.
    await append(kafka_bootstrap, stream.changes, CHANGES[:3], key_of=True)
    await asyncio.to_thread(cli, "snapshot", "compact", str(stream.root), "--config", str(config))
    env = stream.env()
    log = tmp_path / "filterd.log"
    first = start(env, log)
    try:
        (stamp,) = await append(kafka_bootstrap, stream.changes, [change("opt-out", B)], True)
        await produce_at(kafka_bootstrap, stream.input, [event(0, A), event(1, B)], stamp + 1000)
        before = await drain(kafka_bootstrap, stream.block, expected=2, timeout=60)
        assert [header(r, "filterd-reason") for r in before] == ["opted-out"] * 2, log.read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    later = [event(i, n) for i, n in enumerate(NUMBERS, 2)]
    await produce_at(kafka_bootstrap, stream.input, later, stamp + 1000)
    second = start(env, log)
    ids: dict[str, str] = {}
    try:
        # At least once: records before the kill may come again, so wait for every id.
        for _ in range(45):
            block = await drain(kafka_bootstrap, stream.block, timeout=2)
            deliver = await drain(kafka_bootstrap, stream.deliver, timeout=2)
            ids = {
                orjson.loads(r.value)["id"]: header(r, "filterd-reason") for r in block + deliver
            }
            if len(ids) == 6:
                break
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert ids == {
        "m0": "opted-out", "m1": "opted-out",
        "m2": "opted-out", "m3": "opted-out", "m4": "consent", "m5": "no-consent",
    }, log.read_text()  # fmt: skip
