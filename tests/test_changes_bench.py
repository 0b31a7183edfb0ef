"""``benchmarks.changes_bench`` measures what it claims.

Without a broker: the traffic plan (changes of pairs of the traffic, probes after each)
and the delay arithmetic, on known inputs. With the broker: a tiny run of both paced runs
proving every change is timed to an output decided with it. No wall-clock figure is
asserted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from benchmarks import _common as common
from benchmarks import changes_bench as cb
from benchmarks import changes_memory


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset, _ = common.ensure_snapshot(tmp_path_factory.mktemp("changes-bench"))
    return dataset


def _pairs(events: list[common.Event]) -> list[tuple[str, str] | None]:
    return [cb._pair(v) if k is not None else None for k, v in events]


def test_each_change_is_of_a_pair_of_the_traffic_probed_after_it(dataset: Path) -> None:
    events = common.load_events(str(dataset), 8_000, seed=3)
    plan = cb.plan_traffic(events, 2_000.0, 100.0, 20.0, probe_span_ms=1_000.0)
    # 4 s of events, changes over the first 3 s.
    assert len(plan.changes) == 300
    assert len(plan.replies) == 60
    assert plan.probes_per_change == min(15, int(0.5 * 2_000 / 120))
    assert plan.probe_spacing_ms == pytest.approx(1_000.0 / plan.probes_per_change)
    # Same events, same ids, in the same order: only sender and recipient were rewritten.
    assert [common.event_id(v) for _, v in plan.events] == [common.event_id(v) for _, v in events]
    pairs = _pairs(plan.events)
    counts = Counter(p for p in pairs if p is not None)
    # A probe keeps its record key (the recipient's normalized digits) right.
    key_of = {pair: k for (k, _), pair in zip(events, _pairs(events), strict=True) if pair}
    for (key, _), pair in zip(plan.events, pairs, strict=True):
        if pair is not None:
            assert key == key_of[pair]
    for key, value in plan.changes:
        doc = orjson.loads(value)
        assert (doc["op"], doc["source"]) == ("opt-out", cb.REGISTRY)
        assert key == key_of[(doc["sender"], doc["recipient"])]
        # The pair's own event and its probes.
        assert counts[(doc["sender"], doc["recipient"])] >= plan.probes_per_change
    for key, value in plan.replies:
        doc = orjson.loads(value)
        assert doc["text"] == cb.REPLY_TEXT
        assert key == key_of[(doc["to"], doc["from"])]
        assert counts[(doc["to"], doc["from"])] >= plan.probes_per_change
    changed = sum(a != b for a, b in zip(plan.events, events, strict=True))
    assert 0 < changed <= len(events) // 2


def test_delay_runs_from_the_append_of_the_change_or_its_reply() -> None:
    reg = orjson.dumps({"op": "opt-out", "source": "registry", "id": "reg-0"})
    reply = orjson.dumps({"op": "opt-out", "source": "mo-reply", "id": "mo:r-7"})
    unused = orjson.dumps({"op": "opt-out", "source": "registry", "id": "reg-1"})
    changes = [("c/0/0", 1_000, reg), ("c/1/0", 1_200, reply), ("c/0/1", 1_100, unused)]
    outputs = [
        ("m-1", 1_500, "c/0/0"),
        ("m-2", 1_300, "c/0/0"),  # the first output decided with c/0/0
        ("m-3", 1_400, None),
        ("m-4", 1_700, "c/1/0"),
    ]
    first = cb.first_effects(outputs)
    assert first == {"c/0/0": 1_300, "c/1/0": 1_700}
    d = cb.change_delays(changes, {"r-7": 1_150}, first)
    assert (d["registry"]["changes"], d["registry"]["with_effect"]) == (2, 1)
    assert d["registry"]["max_ms"] == 300.0
    # From the reply's append (1 150), not the change's (1 200).
    assert d["mo-reply"]["max_ms"] == 550.0
    assert (d["all"]["changes"], d["all"]["with_effect"]) == (3, 2)
    assert d["all"]["max_ms"] == 550.0


async def test_both_runs_route_everything_and_every_change_is_timed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    argv = ["--quick", "--rate", "2000", "--seconds", "4", "--max-events", "2000"]
    argv += [
        "--memory-count",
        "20000",
        "--change-rate",
        "50",
        "--reply-rate",
        "10",
        "--bootstrap",
        kafka_bootstrap,
    ]
    argv += ["--out", str(tmp_path / "changes")]
    args = cb.resolve(cb.build_parser().parse_args(argv))
    results = await cb.run_session(args)
    base, chg = results["baseline"], results["changes"]
    assert isinstance(base, dict)
    assert isinstance(chg, dict)
    for run in (base, chg):
        assert run["events"] == 4_000
        # Every event with an id of its own matched to its output (bad events may share one).
        assert run["records_out"] >= 0.95 * 4_000
        assert run["msgs_per_s"] > 0
    assert "delay" not in base
    delay = chg["delay"]
    # Every change and reply sent made an opt-out that decided a probe of its pair.
    assert delay["registry"]["changes"] == chg["changes_sent"] > 0
    assert delay["mo-reply"]["changes"] == chg["replies_sent"] > 0
    for source in ("registry", "mo-reply"):
        assert delay[source]["with_effect"] == delay[source]["changes"]
        assert 0 <= delay[source]["p50_ms"] <= delay[source]["p99_ms"] <= delay[source]["max_ms"]
    thr = common.ratio(chg["msgs_per_s"], base["msgs_per_s"])
    assert thr is not None
    assert results["throughput_ratio"] == round(thr, 3)
    memory = results["memory"]
    assert isinstance(memory, dict)
    assert memory["pending_changes"] == 20_000
    md = cb.render_markdown(results)
    words = ("baseline", "registry", "mo-reply", "throughput_ratio", "delay_p99_ms")
    for word in (*words, "bytes_per_pending_change"):
        assert word in md


def test_memory_is_the_rss_growth_per_pending_change() -> None:
    m = changes_memory.measure(20_000, senders=10, reply_every=6, partitions=3)
    assert m["pending_changes"] == 20_000
    assert m["bytes_per_change"] == pytest.approx(m["rss_growth_bytes"] / 20_000, abs=0.1)
    assert m["met"] == (m["bytes_per_change"] <= changes_memory.GOAL_BYTES)
    # Each value parses as the feed parses it: a reply's change every sixth.
    doc = orjson.loads(changes_memory.change_value(12, 10, 6))
    assert (doc["source"], doc["sender"], doc["id"]) == ("mo-reply", "SHOP2", "mo:r-12")
