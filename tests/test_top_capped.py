"""The top-K senders gauge of frequency-cap blocks (no broker): counted per batch by the
pipeline, published per window, bounded in senders and in memory."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from filterd.config import CapRule, PolicyConfig, load_config
from filterd.errors import ConfigError
from filterd.limits import LimitRules, PartitionLimits
from filterd.metrics import Metrics, TopCappedSenders
from filterd.pipeline import HeaderCache, OutputTopics, decide_partition
from filterd.router import Decider
from tests.test_limits import MIDNIGHT_UTC, snapshot
from tests.test_pipeline import FakeBuilder, Rec

NAME = "filterd_frequency_cap_top_sender_blocks"


def test_a_window_publishes_its_top_k_then_goes_stale() -> None:
    top = TopCappedSenders(2, 60.0, clock=lambda: 0.0)
    top.add({"A": 5, "B": 1}, now=1.0)
    top.add({"C": 3, "A": 1}, now=30.0)
    assert top.rows(now=59.0) == ()  # nothing published before the first window ends
    top.add({"B": 100}, now=61.0)  # the next window: publishes the first
    assert top.rows(now=61.0) == (("A", 6), ("C", 3))
    assert top.rows(now=119.0) == (("A", 6), ("C", 3))
    assert top.rows(now=120.0) == ()  # a window out of date: no series
    top.add({}, now=125.0)
    assert top.rows(now=125.0) == (("B", 100),)
    # No block for over a window: what was counted ended long ago and is not published.
    top.add({"D": 1}, now=500.0)
    assert top.rows(now=500.0) == ()
    top.add({}, now=545.0)
    assert top.rows(now=545.0) == (("D", 1),)


def test_ties_are_ordered_by_sender_and_tracking_is_bounded() -> None:
    top = TopCappedSenders(3, 10.0, clock=lambda: 0.0, max_tracked=3)
    top.add({"b": 2, "a": 2, "c": 2}, now=1.0)
    top.add({"d": 50, "a": 1}, now=2.0)  # a fourth sender is not tracked: counted as dropped
    assert top.dropped == 50
    top.add({}, now=10.0)
    assert top.rows(now=10.0) == (("a", 3), ("b", 2), ("c", 2))


def test_the_gauge_is_exposed_with_a_sender_label_and_can_be_turned_off() -> None:
    now = [0.0]
    registry = CollectorRegistry()
    metrics = Metrics(registry, clock=lambda: now[0], top_capped_senders=1, top_capped_window_s=5)
    metrics.record_capped_senders({"1069000001": 7, "1069000002": 3})
    now[0] = 6.0
    metrics.record_capped_senders({})
    text = generate_latest(registry).decode()
    assert f'{NAME}{{sender="1069000001"}} 7.0' in text
    assert "1069000002" not in text
    off = CollectorRegistry()
    Metrics(off, top_capped_senders=0)
    assert NAME not in generate_latest(off).decode()


def test_the_pipeline_counts_frequency_cap_blocks_by_sender() -> None:
    cap = CapRule(("verification",), "recipient", "hour", 2)
    policy = PolicyConfig(caps=(cap,))
    decider = Decider(snapshot(), policy)
    limits = PartitionLimits(LimitRules(policy))
    senders = ["S1", "S2", "S1", "S3", "S1", "S2", "S1"]
    batch = [
        Rec(
            i,
            MIDNIGHT_UTC + i,
            b"8613800000001",
            orjson.dumps(
                {
                    "id": str(i),
                    "sender": s,
                    "recipient": "+8613800000001",
                    "category": "verification",
                }
            ),
        )
        for i, s in enumerate(senders)
    ]
    out = decide_partition(
        decider,
        HeaderCache("v"),
        "in",
        0,
        batch,
        OutputTopics("d", "b", "i", {"d": 1, "b": 1, "i": 1}),
        FakeBuilder,
        limits,
        MIDNIGHT_UTC + 1000,
    )
    capped = [s for s in senders[2:]]  # two delivered, then every one capped
    assert dict(out.capped_senders) == {s: capped.count(s) for s in set(capped)}


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("top_capped_senders = -1", "metrics.top_capped_senders"),
        ("top_capped_senders = 5000", "metrics.top_capped_senders"),
        ("top_capped_window_s = 0", "metrics.top_capped_window_s"),
    ],
)
def test_bad_gauge_settings_stop_start_up(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "f.toml"
    path.write_text(f"[metrics]\n{toml}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.key == key
