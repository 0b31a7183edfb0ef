"""Consent snapshots: build, verify, load and hot-swap versioned roaring-bitmap stores.

The on-disk format is documented in docs/snapshot-format.md.
"""

from __future__ import annotations

from filterd.snapshot.build import build_snapshot, prune_versions
from filterd.snapshot.errors import SnapshotCorrupt, SnapshotInputError, SnapshotNotFound
from filterd.snapshot.format import current_version
from filterd.snapshot.load import load_snapshot, load_snapshot_async, verify_snapshot
from filterd.snapshot.store import ConsentSnapshot, Counts, NumberSet, SenderConsent, SortedNumbers
from filterd.snapshot.watcher import Lease, SnapshotWatcher

__all__ = [
    "ConsentSnapshot",
    "Counts",
    "Lease",
    "NumberSet",
    "SenderConsent",
    "SnapshotCorrupt",
    "SnapshotInputError",
    "SnapshotNotFound",
    "SnapshotWatcher",
    "SortedNumbers",
    "build_snapshot",
    "current_version",
    "load_snapshot",
    "load_snapshot_async",
    "prune_versions",
    "verify_snapshot",
]
