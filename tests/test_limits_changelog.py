"""The counters' changelog: a partition restored from it at any batch boundary decides on
exactly as one that never stopped (pure: no broker)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from filterd.cli import main
from filterd.config import CapRule, PolicyConfig
from filterd.limits import STREAM_TIME_KEY, LimitRules, PartitionLimits
from filterd.pipeline import HeaderCache, OutputTopics, decide_partition
from filterd.records import RecordBatch
from filterd.router import Decider
from filterd.snapshot import load_snapshot
from tests.support.limit_cases import CAPS, QUIET_HOURS, TIMEZONES, generate
from tests.test_pipeline import FakeBuilder, Rec
from tests.test_records import read_batch

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


def limits_case(tmp_path: Path, seed: int, events: int) -> tuple[Decider, LimitRules, list[Rec]]:
    """A generated case's snapshot, rules and records."""
    case = generate(tmp_path / "ds", BASE_MS, seed, events=events)
    root = tmp_path / "snap"
    assert main(["snapshot", "build", "--consents", str(case.directory / "consents.csv.gz"),
                 "--optouts", str(case.directory / "optouts.csv.gz"),
                 "--dnd", str(case.directory / "dnd.csv.gz"), "--out", str(root)]) == 0  # fmt: skip
    records = []
    for i, line in enumerate(case.lines):
        ts = orjson.loads(line).get("ts")
        usable = isinstance(ts, int) and BASE_MS <= ts <= BASE_MS + 4 * 86_400_000
        records.append(Rec(i, ts if usable else BASE_MS, None, line))
    return Decider(load_snapshot(root), policy()), LimitRules(policy()), records


def decide_steadily(
    decider: Decider, rules: LimitRules, batches: list[list[Rec]]
) -> tuple[dict[int, str], PartitionLimits]:
    """The reasons of one partition that never stops, by offset, and its counters."""
    steady = PartitionLimits(rules)
    steady.tracking = True
    want: dict[int, str] = {}
    for batch in batches:
        out, reasons, _ = decide(decider, steady, batch)
        steady.committed(out.next_offset)
        want |= reasons
    return want, steady


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("size", [7, 20])
def test_restore_at_every_batch_boundary_decides_as_without_stopping(
    tmp_path: Path, seed: int, size: int
) -> None:
    decider, rules, records = limits_case(tmp_path, seed, 800)
    batches = [records[i : i + size] for i in range(0, len(records), size)]
    want, _ = decide_steadily(decider, rules, batches)
    # One restored from the changelog after every batch (a new owner each time).
    log: list[tuple[bytes | None, bytes | None]] = []
    got: dict[int, str] = {}
    for batch in batches:
        limits = PartitionLimits(rules)
        limits.tracking = True
        limits.restore(log)
        _, reasons, changelog = decide(decider, limits, batch)
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
    keys = [
        (i, sender if cap.per_pair else "", 8613800000000 + i, 20_000 + i)
        for i, cap in enumerate(rules.caps)
    ]
    keys.append((-1, sender, 919800000001, 20_400))
    for n, key in enumerate(keys):
        assert limits.put(key, n + 1, 7)
    got = dict(limits.changelog(0))
    names = [*rules.ids, "max_per_day"]
    for n, key in enumerate(keys):
        expected = orjson.dumps([names[key[0]], key[1], key[2], key[3]])
        assert got[expected] == b"%d" % (n + 1)
    again = PartitionLimits(rules)
    assert again.restore(got.items()) == len(keys)
    assert sorted(again.items()) == sorted(limits.items())
    assert limits.get(keys[0]) == 1


def test_a_batch_decided_again_keeps_its_decisions_and_counts_once(tmp_path: Path) -> None:
    decider, rules, records = limits_case(tmp_path, 3, 600)
    batches = [records[i : i + 40] for i in range(0, len(records), 40)]
    want, steady = decide_steadily(decider, rules, batches)
    retried = PartitionLimits(rules)
    retried.tracking = True
    got: dict[int, str] = {}
    for i, batch in enumerate(batches):
        _, first, log = decide(decider, retried, batch)
        # Its output was not committed: decided again, as it is and with the next batch's
        # records (a refetch), it keeps its decisions and writes its counters again.
        _, again, log_again = decide(decider, retried, batch)
        assert again == first
        assert dict(log_again) == {k: v for k, v in log if v is not None}
        out, longer, _ = decide(decider, retried, batch + batches[i + 1][:10] if i + 1 < len(
            batches) else batch)  # fmt: skip
        assert {o: r for o, r in longer.items() if o in first} == first
        retried.committed(out.first_offset + len(batch))
        got |= first
    assert got == want
    assert sorted(retried.items()) == sorted(steady.items())
    assert "frequency-cap" in want.values()


def test_the_changelog_in_filterds_batches_is_the_one_appended_record_by_record(
    tmp_path: Path,
) -> None:
    """The stream's batches take the changelog in bulk (record bodies encoded in C, then
    RecordBatch.extend), other builders record by record: the same records, in the same
    order, over as many batches as fill."""
    decider, rules, records = limits_case(tmp_path, 4, 400)
    bulk, one_by_one = PartitionLimits(rules), PartitionLimits(rules)
    bulk.tracking = one_by_one.tracking = True
    filled = 0
    for start in range(0, len(records), 100):
        batch = records[start : start + 100]
        _, _, want = decide(decider, one_by_one, batch)
        out = decide_partition(
            decider, HeaderCache("v"), "in", 0, batch, OUT, lambda: RecordBatch(600), bulk,
            READ_MS,
        )  # fmt: skip
        changelog = [b for topic, _, b in out.batches if topic == "c"]
        filled += len(changelog) - 1
        got = [(key, value) for b in changelog for _, key, value, _ in read_batch(b._build())]
        assert got == want
        bulk.committed(out.next_offset)
        one_by_one.committed(out.next_offset)
    assert filled > 0  # small batches: a batch's changelog fills more than one


def test_a_closed_window_drops_its_counters_without_a_tombstone_each() -> None:
    """The changelog is compact,delete with a retention past the longest window (as Kafka
    Streams keeps windowed stores): a closed window writes nothing, and a restore that still
    finds its counters leaves them out."""
    rules = LimitRules(policy())
    names = [*rules.ids, "max_per_day"]
    limits = PartitionLimits(rules)
    limits.tracking = True
    window = 20_400  # a day
    keys = [(2, "", 8613800000000 + i, window) for i in range(5)]
    keys += [(0, "SHOP", 8613800000001, window), (-1, "SHOP", 919800000001, window)]
    for key in keys:
        assert limits.put(key, 2, 10)
    limits.committed(11)
    assert limits.changelog(0) == []
    later = (window + 2) * 86_400_000
    limits.stream_time = later
    assert limits.drop_closed() == len(keys)
    assert limits.live() == 0
    stream = (STREAM_TIME_KEY, b"%d" % later)
    assert limits.changelog(0) == [stream]
    restored = PartitionLimits(rules)
    restored.tracking = True
    log: list[tuple[bytes | None, bytes | None]] = [
        (orjson.dumps([names[k[0]], k[1], k[2], k[3]]), b"3") for k in keys
    ]
    assert restored.restore([*log, stream]) == 0
    assert restored.changelog(0) == [stream]
    # The same counters restored before the window closed are live.
    early = PartitionLimits(rules)
    assert early.restore([*log, (STREAM_TIME_KEY, b"%d" % (window * 86_400_000))]) == len(keys)


def test_the_changelog_topic_is_compacted_and_deleted_by_age() -> None:
    from filterd.topics import COUNTERS_RETENTION_MS, counters_spec

    spec = counters_spec(4)
    assert spec.config["cleanup.policy"] == "compact,delete"
    assert int(spec.config["retention.ms"]) == COUNTERS_RETENTION_MS > 86_400_000
