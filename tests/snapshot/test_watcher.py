"""SnapshotWatcher: readiness, hot swap, refusal of bad versions, one version per batch."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from filterd.snapshot import ConsentSnapshot, SnapshotWatcher, build_snapshot
from filterd.snapshot import format as fmt

from .data import write_csv

BASE = 8613800000000


@pytest.fixture(autouse=True)
def _gc_restored() -> Iterator[None]:
    """Watchers freeze the collector's view after loads; give other tests a normal GC."""
    yield
    assert gc.isenabled(), "a watcher left the garbage collector disabled"
    gc.unfreeze()


def _build(tmp: Path, root: Path, k: int) -> str:
    """Version k: sender "s" consented by number BASE + k only."""
    path = write_csv(tmp / f"c{k}.csv", ["sender", "recipient"], [("s", f"+{BASE + k}")])
    return build_snapshot(root, path, keep=100)


def _publish_corrupt(tmp: Path, root: Path, k: int) -> str:
    """Publish a version whose consents file is altered after building."""
    staging = tmp / f"staging{k}"
    version = _build(tmp, staging, k)
    shutil.copytree(staging / version, root / version)
    path = root / version / fmt.CONSENTS
    path.write_bytes(path.read_bytes()[:-1])
    fmt.publish_pointer(root, version)
    return version


async def _until(predicate: Callable[[], object], limit_s: float = 10.0) -> None:
    """Wait until ``predicate()`` holds: the watcher has no event to wait on, so poll."""
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_not_ready_until_a_snapshot_is_published(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    swaps: list[tuple[str, float]] = []
    watcher = SnapshotWatcher(root, 0.01, on_swap=lambda s, t: swaps.append((s.version, t)))
    async with watcher:
        assert watcher.current is None
        assert not await watcher.wait_ready(0.05)
        version = await asyncio.to_thread(_build, tmp_path, root, 1)
        assert await watcher.wait_ready(10)
        assert watcher.current is not None
        assert watcher.current.version == version
        assert swaps[0][0] == version
        assert swaps[0][1] >= 0


async def test_initial_load_of_a_good_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    version = _build(tmp_path, root, 1)
    watcher = SnapshotWatcher(root, 60)
    await watcher.start()
    try:
        assert watcher.current is not None
        assert watcher.current.version == version  # loaded by start(), before any poll
    finally:
        await watcher.stop()
        await watcher.stop()  # safe twice


async def test_bad_version_refused_old_kept_then_next_good_swapped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="filterd.snapshot.watcher")
    root = tmp_path / "snap"
    good = _build(tmp_path, root, 1)
    refused: list[tuple[str, BaseException]] = []
    async with SnapshotWatcher(
        root, 0.01, on_refused=lambda v, e: refused.append((v, e))
    ) as watcher:
        assert watcher.current is not None
        assert watcher.current.version == good
        bad = await asyncio.to_thread(_publish_corrupt, tmp_path, root, 2)
        await _until(lambda: refused)
        await asyncio.sleep(0.1)  # many polls: the same bad pointer is not retried
        assert [v for v, _ in refused] == [bad]
        assert "consents.roar" in str(refused[0][1])
        assert watcher.current.version == good
        assert watcher.current.consented("s", BASE + 1)
        newer = await asyncio.to_thread(_build, tmp_path, root, 3)
        await _until(lambda: watcher.current is not None and watcher.current.version == newer)
        assert watcher.current.consented("s", BASE + 3)
        assert not watcher.current.consented("s", BASE + 1)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("refused" in m for m in messages) == 1
    assert sum("in force" in m for m in messages) == 2


async def test_bad_initial_snapshot_is_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    root.mkdir()
    await asyncio.to_thread(_publish_corrupt, tmp_path, root, 1)
    async with SnapshotWatcher(root, 0.01) as watcher:
        assert watcher.current is None
        good = await asyncio.to_thread(_build, tmp_path, root, 2)
        assert await watcher.wait_ready(10)
        assert watcher.current is not None
        assert watcher.current.version == good


async def test_garbage_pointer_is_refused_once(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    good = _build(tmp_path, root, 1)
    refused: list[str] = []
    async with SnapshotWatcher(root, 0.01, on_refused=lambda v, e: refused.append(v)) as watcher:
        (root / fmt.CURRENT).write_text("garbage\n")
        await _until(lambda: refused)
        await asyncio.sleep(0.05)
        assert len(refused) == 1
        assert watcher.current is not None
        assert watcher.current.version == good


async def test_each_batch_is_decided_by_exactly_one_version(tmp_path: Path) -> None:
    """Batches read watcher.current once while swaps land; every decision matches its version."""
    root = tmp_path / "snap"
    versions = {_build(tmp_path, root, 0): 0}
    async with SnapshotWatcher(root, 0.005) as watcher:
        stop = asyncio.Event()
        batches: list[list[tuple[str, tuple[bool, ...]]]] = []

        async def stream() -> None:
            while not stop.is_set():
                with watcher.lease() as snapshot:  # once per batch
                    batch = []
                    for _ in range(20):
                        # An "event" per candidate number; version k consents BASE + k only.
                        decisions = tuple(snapshot.consented("s", BASE + k) for k in range(6))
                        batch.append((snapshot.version, decisions))
                        await asyncio.sleep(0)  # other tasks (the watcher) run mid-batch
                batches.append(batch)

        async def publisher() -> None:
            for k in range(1, 6):
                version = await asyncio.to_thread(_build, tmp_path, root, k)
                versions[version] = k
                await _until(
                    lambda v=version: watcher.current is not None and watcher.current.version == v
                )
            stop.set()

        await asyncio.gather(stream(), publisher())
    seen = set()
    for batch in batches:
        assert len({version for version, _ in batch}) == 1
        for version, decisions in batch:
            k = versions[version]
            assert decisions == tuple(j == k for j in range(6))
        seen.add(batch[0][0])
    assert len(seen) >= 2  # swaps happened while batches ran


def test_poll_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        SnapshotWatcher(tmp_path, 0)


async def test_old_snapshot_is_released_only_when_no_reader_holds_it(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    _build(tmp_path, root, 1)
    watcher = SnapshotWatcher(root, 3600)  # no polls: the test drives check() itself
    await watcher.start()
    try:
        lease = watcher.lease()  # a reader still deciding a batch with version 1
        second = watcher.lease()  # and another one
        held = lease.snapshot
        await asyncio.to_thread(_build, tmp_path, root, 2)
        await watcher.check()
        assert watcher.current is not None
        assert watcher.current is not held
        assert await watcher.release_retired() == 0  # still in use: kept intact
        assert held.consented("s", BASE + 1)
        assert len(held.senders) == 1
        lease.release()
        lease.release()  # twice is once
        assert await watcher.release_retired() == 0  # the second reader still holds it
        assert len(held.senders) == 1
        second.release()
        assert await watcher.release_retired() == 1
        assert len(held.senders) == 0  # emptied once its last lease ended
        assert await watcher.release_retired() == 0
        assert watcher.current.consented("s", BASE + 2)  # the one in force is untouched
    finally:
        await watcher.stop()


async def test_a_version_nobody_leases_is_released_at_the_swap(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    _build(tmp_path, root, 1)
    watcher = SnapshotWatcher(root, 3600)
    await watcher.start()
    try:
        with pytest.raises(LookupError):
            SnapshotWatcher(tmp_path / "none", 3600).lease()
        old = watcher.current
        assert old is not None
        with watcher.lease():
            pass  # a batch decided and finished before the swap
        assert watcher.leases(old) == 0
        await asyncio.to_thread(_build, tmp_path, root, 2)
        await watcher.check()
        assert await watcher.release_retired() == 1
        assert len(old.senders) == 0
    finally:
        await watcher.stop()


def test_release_steps_empty_a_big_bitmap_in_pieces() -> None:
    from datetime import UTC, datetime

    from pyroaring import BitMap64

    from filterd.snapshot import Counts, SenderConsent
    from filterd.snapshot.store import release_steps

    big = BitMap64(range(BASE, BASE + (1 << 28), 997))
    snap = ConsentSnapshot(
        version="v",
        created_at=datetime.now(UTC),
        senders={"s": SenderConsent.of(big, BitMap64())},
        dnd_numbers=BitMap64([BASE]),
        counts=Counts(1, len(big), 0, 1),
        bytes=0,
        manifest={},
    )
    steps = sum(1 for _ in release_steps(snap))
    assert steps >= 16  # 2**28 values span 16 steps of 2**24
    assert not big
    assert snap.senders == {}


async def test_gc_paused_during_load_and_snapshot_frozen_after(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    _build(tmp_path, root, 1)
    gc.unfreeze()
    async with SnapshotWatcher(root, 3600) as watcher:
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0  # the loaded snapshot is out of the collector's sight
        await asyncio.to_thread(_publish_corrupt, tmp_path, root, 2)
        await watcher.check()  # a refused load re-enables the collector too
        assert gc.isenabled()
    async with SnapshotWatcher(root, 3600, freeze_gc=False):
        pass
