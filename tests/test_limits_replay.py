"""``filterd replay`` decides step 4 and monitor mode as the reference does (docs/contract.md).

A generated set with quiet hours in three zones, three cap rules, consents stating a
``max_per_day``, late records and unusable timestamps, with monitor mode off and on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from filterd.cli import main
from tests.support.limit_cases import config_toml, generate, generate_stacked, reference_policy
from tests.support.reference import Reference

BASE_MS = 1_794_398_400_000  # 2026-11-11T12:00:00Z
AT = "2026-11-12T20:00:00+08:00"  # the time of lines without a usable ts
AT_MS = BASE_MS + 86_400_000


def run_replay(
    tmp_path: Path, seed: int, monitor: tuple[str, ...]
) -> tuple[list[dict], list[bytes], Path]:
    case = generate(tmp_path / "ds", BASE_MS, seed)
    root = tmp_path / "snap"
    if not root.exists():
        assert main([
            "snapshot", "build", "--consents", str(case.directory / "consents.csv.gz"),
            "--optouts", str(case.directory / "optouts.csv.gz"),
            "--dnd", str(case.directory / "dnd.csv.gz"), "--out", str(root),
        ]) == 0  # fmt: skip
    config = tmp_path / f"filterd-{len(monitor)}.toml"
    config.write_text(config_toml(monitor))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(v + b"\n" for v in case.lines))
    out = tmp_path / f"out-{len(monitor)}"
    assert main(["replay", "--snapshot", str(root), "--input", str(events), "--out", str(out),
                 "--config", str(config), "--at", AT]) == 0  # fmt: skip
    decisions = [orjson.loads(x) for x in (out / "decisions.jsonl").read_bytes().splitlines()]
    return decisions, case.lines, case.directory


MONITORS = [(), ("frequency-cap",), ("quiet-hours", "no-consent", "opted-out")]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("monitor", MONITORS, ids=["enforce", "monitor-cap", "monitor-more"])
def test_replay_agrees_with_the_reference(
    tmp_path: Path, seed: int, monitor: tuple[str, ...]
) -> None:
    decisions, lines, directory = run_replay(tmp_path, seed, monitor)
    reference = Reference.from_dataset(directory, **reference_policy(monitor))
    assert len(decisions) == len(lines)
    seen: Counter[str] = Counter()
    for line, got in zip(lines, decisions, strict=True):
        route, reason, declared, would = reference.decide_record(line, AT_MS, event_time=True)
        assert (got["route"], got["reason"], got.get("declared_category"),
                got.get("would_block")) == (route, reason, declared, would), (
            line, got["line"])  # fmt: skip
        seen[reason] += 1
        seen[f"would:{would}"] += 1
    if not monitor:
        assert seen["quiet-hours"] > 0, seen
        assert seen["frequency-cap"] > 0, seen
    else:
        for reason in monitor:
            assert seen[f"would:{reason}"] > 0, (reason, seen)
            assert seen[reason] == 0, (reason, seen)


def test_monitor_turns_blocks_into_deliveries_that_count(tmp_path: Path) -> None:
    enforced, _, _ = run_replay(tmp_path, 5, ())
    monitored, _, _ = run_replay(tmp_path, 5, ("frequency-cap",))
    before = Counter(d["reason"] for d in enforced)
    after = Counter(d["reason"] for d in monitored)
    # Monitored deliveries count, so fewer later messages fit their caps: at least as many
    # would-blocks as there were blocks.
    assert after["monitored"] >= before["frequency-cap"] > 0
    assert after["frequency-cap"] == 0
    assert after["quiet-hours"] == before["quiet-hours"]


@pytest.mark.parametrize("seed", [1, 2])
def test_max_per_day_is_that_of_the_consents_valid_at_each_message(
    tmp_path: Path, seed: int
) -> None:
    # docs/contract.md step 4: "with several valid consents for a pair, the smallest applies".
    case = generate_stacked(tmp_path / "ds", BASE_MS, seed)
    root = tmp_path / "snap"
    assert main(["snapshot", "build", "--consents", str(case.directory / "consents.csv.gz"),
                 "--out", str(root)]) == 0  # fmt: skip
    config = tmp_path / "filterd.toml"
    config.write_text("[policy]\n")
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(v + b"\n" for v in case.lines))
    out = tmp_path / "out"
    assert main(["replay", "--snapshot", str(root), "--input", str(events), "--out", str(out),
                 "--config", str(config), "--at", AT]) == 0  # fmt: skip
    decisions = [orjson.loads(x) for x in (out / "decisions.jsonl").read_bytes().splitlines()]
    reference = Reference.from_dataset(case.directory)
    # The reading this replaced: the smallest cap of every accepted consent, expired or not.
    smallest_ever = replace(reference.for_partition(), consent_caps={
        pair: [(None, most) for _expires, most in rows]
        for pair, rows in reference.consent_caps.items()
    })  # fmt: skip
    differ = 0
    seen: Counter[str] = Counter()
    for line, got in zip(case.lines, decisions, strict=True):
        route, reason = reference.decide_record(line, AT_MS, event_time=True)[:2]
        assert (got["route"], got["reason"]) == (route, reason), (line, got["line"])
        differ += smallest_ever.decide_record(line, AT_MS, event_time=True)[1] != reason
        seen[reason] += 1
    assert seen["frequency-cap"] > 0, seen
    assert seen["consent"] > 0, seen
    assert differ > 0  # the set tells the two readings apart
