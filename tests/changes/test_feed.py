"""The change feed's batch-loop side without a broker: draining in order, the staleness
bound, the readiness reason, malformed records skipped and counted."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

from filterd.changes import feed as feed_module
from filterd.changes.feed import BOUND_MS, ChangeFeed
from filterd.changes.overlay import Overlay
from filterd.config import load_config

NOW = 1_790_000_000_000


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch) -> ChangeFeed:
    monkeypatch.setattr(feed_module, "_now_ms", lambda: NOW)
    config = load_config(None, env={"FILTERD_TOPICS_CHANGES": "c"})
    return ChangeFeed(config, Overlay(("explicit",)), {0: 2})


def value(op: str, number: int) -> bytes:
    return orjson.dumps({"op": op, "sender": "S", "recipient": f"+{number}", "source": "mo-reply"})


def test_drain_applies_in_order_and_skips_what_the_snapshot_folded(feed: ChangeFeed) -> None:
    feed._take(0, 1, value("opt-out", 8613800000001))  # below the watermark: folded already
    feed._take(0, 2, value("opt-out", 8613800000002))
    feed._take(0, 3, value("opt-out-clear", 8613800000002))
    feed._take(1, 0, b"{bad")
    feed._take(1, 1, orjson.dumps({"op": "nope", "recipient": "+8613800000003"}))
    assert feed.drain() == 3
    assert feed.bad == {"not": 1, "unknown": 1}
    assert feed.applied == {("opt-out", "mo-reply"): 1, ("opt-out-clear", "mo-reply"): 1}
    assert len(feed.overlay) == 1  # facts: the pair's opt-out, set and then cleared
    facts = {(f.number, f.sender): f for f in feed.overlay.facts()}
    assert list(facts) == [(8613800000002, "S")]  # nothing of the folded one
    assert facts[(8613800000002, "S")].optout == 0  # cleared: the later change wins


def test_a_record_waits_until_the_feed_is_fresh_for_its_time(feed: ChangeFeed) -> None:
    feed._fetched_fresh_ms = NOW - 200
    feed.drain()
    assert feed.fresh_for(NOW - 200 + BOUND_MS - 1)
    assert not feed.fresh_for(NOW - 200 + BOUND_MS)

    async def wait() -> bool:
        waiting = asyncio.create_task(feed.wait_fresh(NOW + 900, lambda: False))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # stale for this record: nothing decided
        feed._fetched_fresh_ms = NOW
        feed._caught_up.set()
        return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(wait())
    stop = asyncio.run(feed.wait_fresh(NOW + 5000, lambda: True))
    assert stop is False


def test_readiness_says_why_when_the_feed_lags_past_the_bound(
    feed: ChangeFeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert feed.problem() == "change feed of 'c' not caught up yet"
    feed._fetched_fresh_ms = NOW - 100
    assert feed.problem() is None
    monkeypatch.setattr(feed_module, "_now_ms", lambda: NOW + 5000)
    assert feed.problem() == "change feed of 'c' is 5.1s behind (bound 1s)"
    feed._set_problem("changes topic 'c' does not exist")
    assert feed.problem() == "changes topic 'c' does not exist"


def test_a_snapshot_of_other_methods_has_the_changes_read_again(feed: ChangeFeed) -> None:
    feed._take(0, 2, value("opt-out", 8613800000002))
    feed._fetched_fresh_ms = NOW
    feed.drain()
    assert len(feed.overlay) == 1
    assert feed.fresh_for(NOW)
    watermark = {"topic": "c", "offsets": {"0": 2}}
    same = SimpleNamespace(manifest={"accept_methods": ["explicit"], "change_watermark": watermark})
    assert feed.rebase(same) is feed.overlay
    assert len(feed.overlay) == 1
    other = SimpleNamespace(manifest={"accept_methods": ["written"], "change_watermark": watermark})
    assert feed.rebase(other) is feed.overlay
    # Nothing held, read again from the watermark, nothing decided until caught up.
    assert len(feed.overlay) == 0
    assert feed.overlay.accept == {"written"}
    assert feed.positions == {0: 2}
    assert not feed.fresh_for(NOW)
