"""docs/operations.md and docs/tuning.md cite measured figures that exist: every JSON path
they give for a results file is in that file, the latency baseline is the unsaturated one,
the memory rule is RSS not disk, one partition rule, and version examples in the pattern."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = ("docs/operations.md", "docs/tuning.md")
#: A citation: the results file in backticks, then the JSON path in backticks.
CITATION = re.compile(r"`(benchmarks/results/[\w.-]+\.json)`,?\s+`([^`]+)`")
STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def text(doc: str) -> str:
    return (REPO / doc).read_text(encoding="utf-8")


def lookup(document: object, path: str) -> object:
    """The value at ``a.b[0].c``; KeyError/IndexError when it does not exist."""
    node = document
    for key, index in STEP.findall(path):
        if index:
            assert isinstance(node, list), path
            node = node[int(index)]
        else:
            assert isinstance(node, dict), path
            node = node[key]
    return node


def citations(doc: str) -> list[tuple[str, str]]:
    # Citations may wrap: compare on one line.
    return CITATION.findall(" ".join(text(doc).split()))


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_json_path_exists(doc: str) -> None:
    cited = citations(doc)
    assert cited, f"{doc} cites no results file"
    for file, path in cited:
        document = json.loads((REPO / file).read_text(encoding="utf-8"))
        try:
            value = lookup(document, path)
        except (KeyError, IndexError):
            pytest.fail(f"{doc}: {file} has no {path!r}")
        assert isinstance(value, int | float), (doc, file, path, value)


def test_the_lookup_refuses_what_is_not_there() -> None:
    document = {"filterd": {"msgs_per_s": 1.0}, "sizes": [{"a": 2}]}
    assert lookup(document, "filterd.msgs_per_s") == 1.0
    assert lookup(document, "sizes[0].a") == 2
    with pytest.raises(KeyError):
        lookup(document, "results.filterd.msgs_per_s")
    with pytest.raises(IndexError):
        lookup(document, "sizes[1].a")
    found = CITATION.findall("`benchmarks/results/e2e.json`, `results.filterd.p99_ms`")
    assert found == [("benchmarks/results/e2e.json", "results.filterd.p99_ms")]


def test_latency_baseline_is_the_unsaturated_figure() -> None:
    sweep = json.loads((REPO / "benchmarks/results/sweep.json").read_text())
    (row,) = [r for r in sweep["knobs"]["workers"] if r["default"]]
    assert sweep["knobs"]["workers"][0] is row
    e2e = json.loads((REPO / "benchmarks/results/e2e.json").read_text())
    assert e2e["filterd"]["saturated_at_offered_load"] is True
    ops = " ".join(text("docs/operations.md").split())
    offered = f"{round(sweep['offered_rate_msgs_per_s']):,}".replace(",", " ")
    assert f"p99₀ ≈ {row['p99_ms']:.0f} ms at {offered} msgs/s offered" in ops
    for doc in DOCS:
        # The saturated run's p99 is cited only as what not to use.
        assert "knobs.workers[0].p99_ms" in text(doc)


def test_memory_rule_uses_measured_rss_not_disk() -> None:
    snapshot = json.loads((REPO / "benchmarks/results/snapshot.json").read_text())
    (ten_million,) = [s for s in snapshot["sizes"] if s["consents_target"] == 10_000_000]
    assert snapshot["sizes"][1] is ten_million
    ratio = ten_million["load"]["rss_bytes"] / ten_million["disk_bytes"]
    per_consent = ten_million["load"]["rss_bytes_per_consent"]
    for doc in DOCS:
        flat = " ".join(text(doc).split())
        assert re.search(rf"{ratio:.1f} ?× (its|the) size", flat), doc
        assert f"{per_consent:.1f} bytes of RSS per consent" in flat, doc
    assert "roaring bitmaps load at about their serialized size" not in text("docs/operations.md")


def test_one_partition_rule_stated_the_same_in_both() -> None:
    rules = {
        doc: set(re.findall(r"\*\*Partition rule:\*\*[^\n]*?\.(?=\s|$)", text(doc))) for doc in DOCS
    }
    assert all(rules.values()), rules
    assert len(set.union(*rules.values())) == 1, rules


@pytest.mark.parametrize("doc", DOCS)
def test_example_versions_follow_the_documented_pattern(doc: str) -> None:
    versions = re.findall(r"\b\d{8}T\d{6}Z-\w+", text(doc))
    bad = [v for v in versions if not re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", v)]
    assert not bad, bad
