"""Hot swap: watch the ``current`` pointer and swap to each new good version.

The stream reads :attr:`SnapshotWatcher.current` once per batch, so a swap
lands between batches and every event is decided by exactly one version. A
version that fails validation is refused: the old one stays in force, and the
refused version is not retried until the pointer changes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from filterd.errors import SnapshotError
from filterd.snapshot.format import current_version
from filterd.snapshot.load import load_snapshot_async
from filterd.snapshot.store import ConsentSnapshot, release_steps, run_sliced

__all__ = ["SnapshotWatcher"]

log = logging.getLogger(__name__)

OnSwap = Callable[[ConsentSnapshot, float], None]
OnRefused = Callable[[str, BaseException], None]


class SnapshotWatcher:
    """Keeps the newest valid snapshot of ``root`` in :attr:`current`.

    ``poll_interval_s`` is how often the pointer file is read (config
    ``snapshot.poll_interval_s``). ``on_swap(snapshot, load_seconds)`` is called
    after each swap, ``on_refused(version, error)`` after each refusal (e.g. to
    count them in metrics); exceptions they raise are logged and ignored.
    ``freeze_gc`` pauses the cyclic garbage collector while a version loads and
    then calls :func:`gc.freeze`, so that it stops re-walking the snapshot's
    objects (and everything else alive at that moment) on every full
    collection; refcounting still frees them, the old snapshot included. Cyclic
    garbage created during a load waits until the load ends.
    """

    def __init__(
        self,
        root: Path,
        poll_interval_s: float,
        *,
        on_swap: OnSwap | None = None,
        on_refused: OnRefused | None = None,
        freeze_gc: bool = True,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        self.root = Path(root)
        self.poll_interval_s = poll_interval_s
        self._on_swap = on_swap
        self._on_refused = on_refused
        self.freeze_gc = freeze_gc
        self._current: ConsentSnapshot | None = None
        self._seen: str | None = None  # pointer text last acted on (loaded or refused)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Old snapshots, kept until no reader holds them, then freed in small pieces.
        self._retired: list[ConsentSnapshot] = []

    @property
    def current(self) -> ConsentSnapshot | None:
        """The snapshot in force, or None while none has loaded (not ready)."""
        return self._current

    async def start(self) -> None:
        """Try the initial load, then poll in the background. A failure is not fatal."""
        if self._task is not None:
            return
        await self.check()
        self._task = asyncio.create_task(self._poll(), name=f"snapshot-watcher:{self.root}")

    # The timeout argument is the interface the service was written against.
    async def wait_ready(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until a snapshot is in force; False if ``timeout`` seconds pass first."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop polling; the snapshot in force stays readable. Safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> SnapshotWatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def check(self) -> None:
        """Read the pointer once and load the version it names if it changed."""
        try:
            version = current_version(self.root)
        except SnapshotError as exc:
            seen = f"pointer: {exc}"
            if seen != self._seen:  # the same broken pointer is reported once
                self._seen = seen
                self._refuse("(pointer)", exc)
            return
        if version is None or version == self._seen:
            return
        self._seen = version
        started = time.perf_counter()
        # While loading, the cyclic collector would re-walk the growing snapshot
        # again and again (full collections of 30-60 ms at 20k senders, measured);
        # it is paused for the load (refcounting frees garbage as usual) and the
        # snapshot is frozen out of its sight before it runs again.
        pause_gc = self.freeze_gc and gc.isenabled()
        if pause_gc:
            gc.disable()
        try:
            snapshot = await load_snapshot_async(self.root, version)
        except SnapshotError as exc:
            self._refuse(version, exc)
            return
        finally:
            if pause_gc:
                gc.freeze()  # harmless after a failure: the partial load is already freed
                gc.enable()
        elapsed = time.perf_counter() - started
        previous = self._current
        self._current = snapshot
        self._ready.set()
        if previous is not None:
            self._retired.append(previous)
        log.info(
            "snapshot %s in force: %d senders, %d consents, %d opt-outs, %d dnd; "
            "loaded in %.2fs (was %s)",
            snapshot.version,
            snapshot.counts.senders,
            snapshot.counts.consents,
            snapshot.counts.optouts,
            snapshot.counts.dnd,
            elapsed,
            previous.version if previous else "none",
        )
        if self._on_swap is not None:
            try:
                self._on_swap(snapshot, elapsed)
            except Exception:
                log.exception("on_swap callback failed")

    def _refuse(self, version: str, exc: BaseException) -> None:
        log.warning(
            "snapshot %s refused, keeping %s: %s",
            version,
            self._current.version if self._current else "none (not ready)",
            exc,
        )
        if self._on_refused is not None:
            try:
                self._on_refused(version, exc)
            except Exception:
                log.exception("on_refused callback failed")

    async def release_retired(self) -> int:
        """Free old snapshots that no reader holds any more; return how many.

        Dropping the last reference to a big snapshot would free all its bitmaps
        in one GIL-holding stretch (tens of ms at 10 M consents) wherever that
        happens, e.g. in the stream. So the watcher keeps old versions and frees
        them here, in slices, once nothing else refers to them (readers that
        still decide a batch with one, or hold its sender table, keep it alive).
        """
        released = 0
        kept: list[ConsentSnapshot] = []
        while self._retired:
            snapshot = self._retired.pop()
            # References: the local name and getrefcount's argument; the tables
            # are held by the snapshot's attribute and the argument.
            if (
                sys.getrefcount(snapshot) > 2
                or sys.getrefcount(snapshot.senders) > 2
                or (snapshot.counts.dnd > 0 and sys.getrefcount(snapshot.dnd_numbers) > 2)
            ):
                kept.append(snapshot)
                continue
            await run_sliced(release_steps(snapshot))
            released += 1
        self._retired = kept
        return released

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.check()
                await self.release_retired()
            except Exception:
                # A bug or an OS error must not end the watching; the old snapshot stays.
                log.exception("snapshot check failed")
