"""The snapshot benchmark's data generator makes the shape it claims (tiny size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import snapshot_bench
from filterd.snapshot import SenderConsent, build_snapshot, load_snapshot


def test_generated_shape_builds(tmp_path: Path) -> None:
    paths = snapshot_bench.generate(tmp_path, 5000)
    root = tmp_path / "snap"
    build_snapshot(root, paths["consents"], paths["optouts"], paths["dnd"])
    snap = load_snapshot(root)

    # Five huge senders hold 60%: the biggest holds about a quarter of the consents
    # (plain ones, and those with terms that are not also plain).
    def consents(entry: SenderConsent) -> int:
        terms = entry.terms
        return len(entry.consents) + (0 if terms is None else len(terms.numbers))

    biggest = max(consents(e) for e in snap.senders.values())
    assert 0.2 * 5000 < biggest < 0.3 * 5000
    # The evidence columns: about 30 % of the consents have terms, 8 % refused.
    refused = snap.manifest["refused_rows"]["by_method"]["default-registration"]
    assert 0.05 * 5000 < refused < 0.11 * 5000
    assert 0.2 * 5000 < snap.counts.terms < 0.4 * 5000
    assert snap.counts.senders > 50
    assert snap.counts.dnd > 0.9 * 500
    assert snap.counts.optouts > 0.9 * 100


# The benchmark calls gc.collect() before it times anything: that finalizes whatever an
# earlier test of this process left unclosed (a client's socket), and pytest would pin the
# warning on this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_compaction_benchmark_runs_and_folds_every_change(tmp_path: Path) -> None:
    from benchmarks import compact_bench

    out = tmp_path / "compact.json"
    assert compact_bench.main(["--consents", "2e4", "--changes", "2e3", "--fetch", "0",
                               "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["watermark"] == {"0": 2000, "1": 2000}
    base, compacted = result["base_counts"], result["compacted_counts"]
    # Opt-outs of every sender and do-not-disturb adds came only as changes.
    assert base["global_optouts"] == 0 < compacted["global_optouts"]
    assert compacted["dnd"] > base["dnd"]
    assert set(result["seconds"]) >= {"read_version", "parse", "overlay", "fold", "total"}
