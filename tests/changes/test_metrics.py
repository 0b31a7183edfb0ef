"""The change feed's metrics, as Prometheus scrapes them."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from filterd.changes import feed as feed_module
from filterd.changes.feed import ChangeFeed
from filterd.changes.metrics import ChangeMetrics
from filterd.changes.overlay import Overlay
from filterd.changes.replies import Replies
from filterd.config import load_config

NOW = 1_790_000_000_000


def test_metrics_follow_the_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "_now_ms", lambda: NOW)
    monkeypatch.setattr(feed_module.time, "time_ns", lambda: NOW * 1_000_000)
    config = load_config(None, env={})
    feed = ChangeFeed(config, Overlay(()), {})
    replies = Replies(config, lambda: 1)
    registry = CollectorRegistry()
    registry.register(ChangeMetrics(feed, replies))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("filterd_changes_applied_total", op="opt-out", source="mo-reply") == 0
    change = {"op": "opt-out", "sender": "S", "recipient": "+8613800000001", "source": "mo-reply"}
    feed._take(0, 0, orjson.dumps(change), NOW - 3000)
    feed._take(0, 1, b"junk", NOW - 2000)
    feed.ends, feed.positions = {0: 5}, {0: 2}
    assert value("filterd_change_oldest_unapplied_age_seconds") == 3.0
    assert value("filterd_change_feed_lag_records") == 3
    feed._fetched_fresh_ms = NOW - 1500
    feed.drain()
    assert value("filterd_changes_applied_total", op="opt-out", source="mo-reply") == 1
    assert value("filterd_changes_malformed_total") == 1
    assert value("filterd_changes_pending") == 1
    assert value("filterd_change_feed_lag_seconds") == 1.5
    assert value("filterd_change_oldest_unapplied_age_seconds") == 1.5  # 3 not fetched yet
    replies.results.update({"keyword": 2, "bad": 1})
    assert value("filterd_mo_replies_total", result="keyword") == 2
    assert value("filterd_mo_replies_total", result="ignored") == 0
