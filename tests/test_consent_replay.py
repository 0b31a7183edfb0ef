"""``filterd replay`` agrees with the reference on a set exercising every consent-evidence rule."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from filterd.cli import main
from tests.support.consent_cases import generate
from tests.support.reference import Reference

BASE_MS = 1_794_398_400_000  # 2026-11-11T12:00:00Z
AT = "2026-11-11T20:00:00+08:00"  # the same instant, for lines without ts


def build(directory: Path, root: Path) -> None:
    assert main([
        "snapshot", "build", "--consents", str(directory / "consents.csv.gz"),
        "--optouts", str(directory / "optouts.csv.gz"),
        "--dnd", str(directory / "dnd.csv.gz"), "--out", str(root),
    ]) == 0  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_agrees_with_the_reference_on_every_rule(tmp_path: Path, seed: int) -> None:
    case = generate(tmp_path / "ds", BASE_MS, seed)
    root = tmp_path / "snap"
    build(case.directory, root)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(v + b"\n" for _, v in case.events))
    out = tmp_path / "out"
    assert main(["replay", "--snapshot", str(root), "--input", str(events), "--out", str(out),
                 "--at", AT]) == 0  # fmt: skip
    reference = Reference.from_dataset(case.directory)
    decisions = [orjson.loads(line) for line in (out / "decisions.jsonl").read_bytes().splitlines()]
    assert len(decisions) == len(case.events)
    seen: Counter[str] = Counter()
    for (_at, value), got in zip(case.events, decisions, strict=True):
        route, reason, declared = reference.decide_full(value, BASE_MS, event_time=True)
        assert (got["route"], got["reason"], got.get("declared_category")) == (
            route, reason, declared
        ), value  # fmt: skip
        seen[reason] += 1
        seen["declared"] += declared is not None
    # The set exercises every rule of the issue.
    for reason in ("consent", "consent-expired", "consent-not-explicit", "opted-out",
                   "exempt-category", "unknown-sender", "no-consent"):  # fmt: skip
        assert seen[reason] > 0, (reason, seen)
    assert seen["declared"] > 0


def test_replay_at_decides_lines_without_ts(tmp_path: Path) -> None:
    case = generate(tmp_path / "ds", BASE_MS, seed=4)
    root = tmp_path / "snap"
    build(case.directory, root)
    events = tmp_path / "events.jsonl"
    lines = [v for _, v in case.events if b'"ts"' not in v]
    events.write_bytes(b"".join(v + b"\n" for v in lines))
    moved = 0
    for at, at_ms in ((AT, BASE_MS), ("2026-11-11T21:00:00+08:00", BASE_MS + 3_600_000)):
        out = tmp_path / f"out-{at_ms}"
        assert main(["replay", "--snapshot", str(root), "--input", str(events), "--out",
                     str(out), "--at", at]) == 0  # fmt: skip
        got = [orjson.loads(x)["reason"] for x in (out / "decisions.jsonl").read_bytes().split()]
        # Each replay counts from zero (step 4): a fresh model for each.
        reference = Reference.from_dataset(case.directory)
        assert got == [reference.decide(v, at_ms)[1] for v in lines]
        moved += got.count("consent-expired")
    assert moved > 0


def test_replay_at_must_have_an_offset(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--snapshot", str(tmp_path), "--input", str(tmp_path / "x"),
              "--out", str(tmp_path / "o"), "--at", "2026-11-11T20:00:00"])  # fmt: skip
