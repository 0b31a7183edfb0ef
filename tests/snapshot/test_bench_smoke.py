"""The snapshot benchmark's data generator makes the shape it claims (tiny size)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import snapshot_bench
from filterd.snapshot import build_snapshot, load_snapshot


def test_generated_shape_builds(tmp_path: Path) -> None:
    paths = snapshot_bench.generate(tmp_path, 5000)
    root = tmp_path / "snap"
    build_snapshot(root, paths["consents"], paths["optouts"], paths["dnd"])
    snap = load_snapshot(root)
    # Five huge senders hold 60%: the biggest holds about a quarter of the consents.
    biggest = max(len(e.consents) for e in snap.senders.values())
    assert 0.2 * 5000 < biggest < 0.3 * 5000
    assert snap.counts.senders > 50
    assert snap.counts.dnd > 0.9 * 500
    assert snap.counts.optouts > 0.9 * 100
