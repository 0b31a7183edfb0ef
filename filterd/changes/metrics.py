"""Metrics of the change feed and MO replies, read at scrape time (nothing per record).

| metric | meaning |
|---|---|
| ``filterd_changes_applied_total{op, source}`` | changes applied to the overlay |
| ``filterd_changes_malformed_total`` | change records skipped as malformed |
| ``filterd_changes_pending`` | facts of live changes held, not folded into the snapshot |
| ``filterd_change_feed_lag_records`` | changes appended but not yet fetched |
| ``filterd_change_feed_lag_seconds`` | how old the feed's last catch-up is (bound: 1 s) |
| ``filterd_change_oldest_unapplied_age_seconds`` | age of the oldest change not yet applied |
| ``filterd_mo_replies_total{result}`` | MO replies: ``keyword``, ``ignored``, ``bad`` |

``filterd_changes_pending`` counts facts, not change records: a number's global opt-out or
do-not-disturb, a pair's opt-out or consent, each once however many changes set it
(:class:`~filterd.changes.overlay.Overlay`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from filterd.changes.feed import ChangeFeed
from filterd.changes.model import OPS
from filterd.changes.replies import BAD, IGNORED, KEYWORD, Replies

__all__ = ["ChangeMetrics"]

#: Sources created at zero so rate() and alerts see a series before the first change.
KNOWN_SOURCES = ("registry", "mo-reply")


class ChangeMetrics(Collector):
    """Collects :class:`ChangeFeed` and :class:`Replies` counters on each scrape."""

    def __init__(self, feed: ChangeFeed, replies: Replies | None) -> None:
        self.feed = feed
        self.replies = replies

    def collect(self) -> Iterator[Metric]:
        feed = self.feed
        applied = CounterMetricFamily(
            "filterd_changes_applied", "Live consent changes applied", labels=["op", "source"]
        )
        counts = dict.fromkeys(((op, s) for op in OPS for s in KNOWN_SOURCES), 0)
        counts.update(feed.applied)
        for (op, source), n in sorted(counts.items()):
            applied.add_metric([op, source], n)
        yield applied
        yield CounterMetricFamily(
            "filterd_changes_malformed",
            "Change records skipped as malformed (logged with their offsets)",
            sum(feed.bad.values()),
        )
        yield GaugeMetricFamily(
            "filterd_changes_pending",
            "Facts of live changes held, not folded into the snapshot (a number's global "
            "opt-out or do-not-disturb, a pair's opt-out or consent; each once)",
            len(feed.overlay),
        )
        yield GaugeMetricFamily(
            "filterd_change_feed_lag_records", "Changes appended, not fetched", feed.lag_records()
        )
        now_ms = time.time_ns() // 1_000_000
        fresh = max(feed.fresh_ms, feed.fetched_fresh_ms)
        yield GaugeMetricFamily(
            "filterd_change_feed_lag_seconds",
            "Age of the change feed's last catch-up (the bound is 1 s)",
            (now_ms - fresh) / 1000 if fresh else math.inf,
        )
        yield GaugeMetricFamily(
            "filterd_change_oldest_unapplied_age_seconds",
            "Age of the oldest change not applied yet (0: none)",
            feed.oldest_unapplied_age_ms(now_ms) / 1000,
        )
        replies = CounterMetricFamily(
            "filterd_mo_replies", "MO replies by result", labels=["result"]
        )
        results = self.replies.results if self.replies is not None else {}
        for result in (KEYWORD, IGNORED, BAD):
            replies.add_metric([result], results.get(result, 0))
        yield replies
