"""Hot swap: watch the ``current`` pointer and swap to each new good version.

The stream takes a :class:`Lease` on the version in force once per batch
(:meth:`SnapshotWatcher.lease`), so a swap lands between batches and every
event is decided by exactly one version. A version that fails validation is
refused: the old one stays in force, and the refused version is not retried
until the pointer changes again.

Lifetime: a swapped-out version is emptied (its tables freed in slices, to
give the memory back promptly) only once its last lease has ended, so a batch
still being acknowledged after a swap keeps deciding its retries with the
version it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from filterd.errors import SnapshotError
from filterd.logs import json_fields
from filterd.snapshot.errors import SignatureError
from filterd.snapshot.format import ROLLBACK, current_version, read_rollback
from filterd.snapshot.load import load_snapshot_async
from filterd.snapshot.signing import Verifier
from filterd.snapshot.store import ConsentSnapshot, release_steps, run_sliced

__all__ = ["Lease", "SnapshotWatcher"]

log = logging.getLogger(__name__)

OnSwap = Callable[[ConsentSnapshot, float], None]
OnRefused = Callable[[str, BaseException], None]


class Lease:
    """A reader's hold on one snapshot version; the version outlives it.

    Take one with :meth:`SnapshotWatcher.lease`, decide with :attr:`snapshot`,
    and :meth:`release` it (or leave the ``with`` block) when the work that
    decided with it is done. Releasing twice is harmless.
    """

    __slots__ = ("_watcher", "released", "snapshot")

    def __init__(self, watcher: SnapshotWatcher, snapshot: ConsentSnapshot) -> None:
        self._watcher = watcher
        self.snapshot = snapshot
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._watcher._end_lease(self.snapshot)

    def __enter__(self) -> ConsentSnapshot:
        return self.snapshot

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class SnapshotWatcher:
    """Keeps the newest valid snapshot of ``root`` in :attr:`current`.

    ``poll_interval_s`` is how often the pointer file is read (config
    ``snapshot.poll_interval_s``). ``on_swap(snapshot, load_seconds)`` is called
    after each swap, ``on_refused(version, error)`` after each refusal (e.g. to
    count them in metrics); exceptions they raise are logged and ignored.
    ``freeze_gc`` pauses the cyclic garbage collector while a version loads and
    then calls :func:`gc.freeze`, so that it stops re-walking the snapshot's
    objects (and everything else alive at that moment) on every full
    collection; an old snapshot is still emptied once its last lease ends (see
    :meth:`release_retired`). Cyclic garbage created during a load waits until
    the load ends.

    With a ``verifier`` (config ``snapshot.public_key``) a version must be signed by its
    key. Either way a version older than the one in force (by ``created_at``, then name)
    is refused unless ``filterd snapshot rollback`` published it, which the root's
    ``rollback.json`` says (signed too, when there is a verifier): pointing ``current`` back
    at an old version is how a stale registry, or an attacker, would revive old consents.
    """

    def __init__(
        self,
        root: Path,
        poll_interval_s: float,
        *,
        on_swap: OnSwap | None = None,
        on_refused: OnRefused | None = None,
        freeze_gc: bool = True,
        verifier: Verifier | None = None,
        country_code: str | None = None,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        self.root = Path(root)
        self.poll_interval_s = poll_interval_s
        self._on_swap = on_swap
        self._on_refused = on_refused
        self.freeze_gc = freeze_gc
        self.verifier = verifier
        self.country_code = country_code
        self._current: ConsentSnapshot | None = None
        self._seen: str | None = None  # pointer text last acted on (loaded or refused)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Leases held, per version (id of the snapshot object -> count).
        self._leases: dict[int, int] = {}
        #: Swapped-out versions that a lease still holds.
        self._retired: list[ConsentSnapshot] = []
        #: Swapped-out versions no lease holds: emptied by :meth:`release_retired`.
        self._releasable: list[ConsentSnapshot] = []

    @property
    def current(self) -> ConsentSnapshot | None:
        """The snapshot in force, or None while none has loaded (not ready).

        For a look only: a reader that decides with it across an ``await``
        takes a :meth:`lease`, or the version may be emptied under it.
        """
        return self._current

    def lease(self) -> Lease:
        """Hold the version in force until the lease is released.

        Raises :class:`LookupError` while no snapshot is in force.
        """
        snapshot = self._current
        if snapshot is None:
            raise LookupError("no consent snapshot in force")
        key = id(snapshot)
        self._leases[key] = self._leases.get(key, 0) + 1
        return Lease(self, snapshot)

    def leases(self, snapshot: ConsentSnapshot) -> int:
        """How many leases hold ``snapshot`` now."""
        return self._leases.get(id(snapshot), 0)

    def _end_lease(self, snapshot: ConsentSnapshot) -> None:
        key = id(snapshot)
        left = self._leases[key] - 1
        if left:
            self._leases[key] = left
            return
        del self._leases[key]
        for i, retired in enumerate(self._retired):
            if retired is snapshot:
                # The last reader of a swapped-out version is done with it.
                self._releasable.append(self._retired.pop(i))
                break

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
        if version is None:
            return
        # A version refused as older is looked at again once `snapshot rollback` names it.
        marker = read_rollback(self.root)
        seen = f"{version} (rollback {marker[1]!r})" if marker and marker[0] == version else version
        if seen == self._seen:
            return
        self._seen = seen
        if self._current is not None and self._current.version == version:
            return  # in force already
        started = time.perf_counter()
        # While loading, the cyclic collector would re-walk the growing snapshot
        # again and again (full collections of 30-60 ms at 20k senders, measured);
        # it is paused for the load (refcounting frees garbage as usual) and the
        # snapshot is frozen out of its sight before it runs again.
        pause_gc = self.freeze_gc and gc.isenabled()
        if pause_gc:
            gc.disable()
        try:
            snapshot = await load_snapshot_async(
                self.root, version, verifier=self.verifier, country_code=self.country_code
            )
            self._check_not_older(snapshot)
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
            if self.leases(previous):
                self._retired.append(previous)
            else:
                self._releasable.append(previous)
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
            extra=json_fields(
                event="snapshot_swap",
                snapshot=snapshot.version,
                previous=previous.version if previous else None,
                senders=snapshot.counts.senders,
                consents=snapshot.counts.consents,
                optouts=snapshot.counts.optouts,
                dnd=snapshot.counts.dnd,
                load_s=round(elapsed, 3),
            ),
        )
        if self._on_swap is not None:
            try:
                self._on_swap(snapshot, elapsed)
            except Exception:
                log.exception("on_swap callback failed")

    def _check_not_older(self, snapshot: ConsentSnapshot) -> None:
        """Refuse going back to an older version unless ``snapshot rollback`` did it."""
        current = self._current
        if current is None:
            return
        if (snapshot.created_at, snapshot.version) >= (current.created_at, current.version):
            return
        marker = read_rollback(self.root)
        if marker is None or marker[0] != snapshot.version:
            raise SnapshotError(
                f"version {snapshot.version} is older than {current.version} in force; "
                "go back with `filterd snapshot rollback`"
            )
        if self.verifier is not None:
            try:
                self.verifier.verify_bytes(
                    marker[1], self.root / f"{ROLLBACK}.sig", f"rollback to {snapshot.version}"
                )
            except SignatureError as exc:
                raise SnapshotError(
                    f"{exc}: sign it with `filterd snapshot rollback --key`"
                ) from None
        log.warning(
            "rolling back from %s to older %s (filterd snapshot rollback)",
            current.version,
            snapshot.version,
        )

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
        """Empty the old snapshots whose last lease has ended; return how many.

        Dropping the last reference to a big snapshot would free all its bitmaps
        in one GIL-holding stretch (tens of ms at 10 M consents) wherever that
        happens, e.g. in the stream. So the watcher empties swapped-out versions
        here, in slices, once no lease holds them (a batch still deciding or
        being acknowledged with one keeps it intact).
        """
        released = 0
        while self._releasable:
            await run_sliced(release_steps(self._releasable.pop()))
            released += 1
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
