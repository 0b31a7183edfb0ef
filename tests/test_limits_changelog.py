"""The counters' changelog: a partition restored from it at any batch boundary decides on
exactly as one that never stopped (pure: no broker)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from filterd.cli import main
from filterd.config import CapRule, PolicyConfig
from filterd.limits import LimitRules, PartitionLimits
from filterd.pipeline import HeaderCache, OutputTopics, decide_partition
from filterd.router import Decider
from filterd.snapshot import load_snapshot
from tests.support.limit_cases import CAPS, QUIET_HOURS, TIMEZONES, generate
from tests.test_pipeline import FakeBuilder, Rec

BASE_MS = 1_794_398_400_000
READ_MS = BASE_MS + 5 * 86_400_000  # after every record: all timestamps usable
OUT = OutputTopics("d", "b", "i", {"d": 1, "b": 1, "i": 1}, counters="c")


def policy() -> PolicyConfig:
    caps = tuple(CapRule(tuple(c["categories"]), c["per"], c["window"], c["max"]) for c in CAPS)
    return PolicyConfig(quiet_hours=QUIET_HOURS, timezones=TIMEZONES, caps=caps)


def decide(decider: Decider, limits: PartitionLimits, batch: list[Rec]):  # type: ignore[no-untyped-def]
    out = decide_partition(
        decider, HeaderCache("v"), "in", 0, batch, OUT, FakeBuilder, limits, READ_MS
    )
    reasons = {}
    changelog = []
    for topic, _p, builder in out.batches:
        for _ts, key, value, headers in builder.records:
            if topic == "c":
                changelog.append((key, value))
            else:
                source = dict(headers)["filterd-source"].decode()
                reasons[int(source.rsplit("/", 1)[1])] = dict(headers)["filterd-reason"].decode()
    return out, reasons, changelog


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("size", [7, 20])
def test_restore_at_every_batch_boundary_decides_as_without_stopping(
    tmp_path: Path, seed: int, size: int
) -> None:
    case = generate(tmp_path / "ds", BASE_MS, seed, events=800)
    root = tmp_path / "snap"
    assert main(["snapshot", "build", "--consents", str(case.directory / "consents.csv.gz"),
                 "--optouts", str(case.directory / "optouts.csv.gz"),
                 "--dnd", str(case.directory / "dnd.csv.gz"), "--out", str(root)]) == 0  # fmt: skip
    snapshot = load_snapshot(root)
    rules = LimitRules(policy())
    decider = Decider(snapshot, policy())
    records = []
    for i, line in enumerate(case.lines):
        ts = orjson.loads(line).get("ts")
        usable = isinstance(ts, int) and BASE_MS <= ts <= BASE_MS + 4 * 86_400_000
        records.append(Rec(i, ts if usable else BASE_MS, None, line))
    batches = [records[i : i + size] for i in range(0, len(records), size)]
    # One partition that never stops.
    steady = PartitionLimits(rules)
    steady.tracking = True
    want: dict[int, str] = {}
    for batch in batches:
        out, reasons, _ = decide(decider, steady, batch)
        steady.committed(out.next_offset)
        want |= reasons
    # One restored from the changelog after every batch (a new owner each time).
    log: list[tuple[bytes | None, bytes | None]] = []
    got: dict[int, str] = {}
    for batch in batches:
        limits = PartitionLimits(rules)
        limits.tracking = True
        limits.restore(log)
        out, reasons, changelog = decide(decider, limits, batch)
        log += changelog
        got |= reasons
    assert got == want
    assert "frequency-cap" in want.values()


@pytest.mark.parametrize(
    "sender", ["", "ACME", 'q"uo\\te', "Ünï €", "\x00\x1f ctl", "😀 emoji", "a/b,c"]
)
def test_changelog_key_is_the_json_of_rule_sender_number_window(sender: str) -> None:
    # The key is built from pieces encoded once; it must stay what orjson makes of the
    # list, which is what restore() parses.
    rules = LimitRules(policy())
    limits = PartitionLimits(rules)
    limits.tracking = True
    keys = [(i, sender, 8613800000000 + i, 20_000 + i) for i in range(len(rules.caps))]
    keys.append((-1, sender, 919800000001, 20_400))
    for n, key in enumerate(keys):
        limits.counters[key] = n + 1
        limits.dirty[key] = 7
    got = dict(limits.changelog(0))
    names = [*rules.ids, "max_per_day"]
    for n, key in enumerate(keys):
        expected = orjson.dumps([names[key[0]], key[1], key[2], key[3]])
        assert got[expected] == b"%d" % (n + 1)
    again = PartitionLimits(rules)
    assert again.restore(got.items()) == len(keys)
    assert again.counters == limits.counters
