"""Metrics: every test builds its own registry and reads values straight from it."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from filterd.logs import RateLimitedLogger
from filterd.metrics import KNOWN_DECISIONS, LoopLagMonitor, Metrics


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_known_decisions_start_at_zero() -> None:
    # The contract's reasons, as the router knows them.
    assert len(KNOWN_DECISIONS) == 17
    assert ("block", "no-consent") in KNOWN_DECISIONS
    assert ("block", "consent-not-explicit") in KNOWN_DECISIONS
    assert ("invalid", "internal-error") in KNOWN_DECISIONS
    m = Metrics()
    for route, reason in KNOWN_DECISIONS:
        assert value(m.registry, "filterd_events_total", route=route, reason=reason) == 0.0


def test_build_info_names_the_release_and_the_hot_path() -> None:
    from filterd import __version__, native

    m = Metrics()
    assert value(m.registry, "filterd_build_info", version=__version__, hot_path=native.hot_path())
    assert native.hot_path() in {"compiled", "interpreted"}


def test_record_batch_counts_by_route_and_reason() -> None:
    m = Metrics()
    m.record_batch({("deliver", "consent"): 7, ("block", "no-consent"): 2}, 9, 0.004)
    m.record_batch({("deliver", "consent"): 1, ("block", "quiet-hours"): 3}, 4, 0.002)
    reg = m.registry
    assert value(reg, "filterd_events_total", route="deliver", reason="consent") == 8
    assert value(reg, "filterd_events_total", route="block", reason="no-consent") == 2
    # A reason the metrics module has never heard of still counts.
    assert value(reg, "filterd_events_total", route="block", reason="quiet-hours") == 3
    assert value(reg, "filterd_batch_records_count") == 2
    assert value(reg, "filterd_batch_records_sum") == 13
    assert value(reg, "filterd_batch_seconds_sum") == pytest.approx(0.006)
    assert value(reg, "filterd_batch_records_bucket", le="1.0") == 0
    assert value(reg, "filterd_batch_records_bucket", le="10.0") == 2


def test_zero_counts_create_no_series() -> None:
    m = Metrics()
    m.record_batch({("block", "brand-new"): 0}, 0, 0.0)
    assert value(m.registry, "filterd_events_total", route="block", reason="brand-new") is None


def test_end_to_end_latency_from_record_timestamps() -> None:
    clock = FakeClock(1000.0)
    m = Metrics(latency_sample_every=1, clock=clock)
    # 2.5 s old, 0.5 s old, no timestamp, and 1 s in the future (clock skew).
    observed = m.observe_end_to_end([997_500, 999_500, None, -1, 1_001_000])
    assert observed == 3
    reg = m.registry
    assert value(reg, "filterd_end_to_end_latency_seconds_count") == 3
    assert value(reg, "filterd_end_to_end_latency_seconds_sum") == pytest.approx(3.0)
    assert value(reg, "filterd_end_to_end_latency_seconds_bucket", le="0.005") == 1
    assert value(reg, "filterd_end_to_end_latency_seconds_bucket", le="1.0") == 2
    # An explicit acknowledgement time wins over the clock.
    m.observe_end_to_end([1_000_000], acked_at=1010.0)
    assert value(reg, "filterd_end_to_end_latency_seconds_sum") == pytest.approx(13.0)


@given(
    every=st.integers(min_value=1, max_value=40),
    sizes=st.lists(st.integers(min_value=0, max_value=300), max_size=30),
)
def test_latency_sample_is_every_kth_record_of_the_stream(every: int, sizes: list[int]) -> None:
    m = Metrics(latency_sample_every=every, latency_max_per_batch=10_000, clock=FakeClock(0.0))
    total = sum(m.observe_end_to_end([0] * n) for n in sizes)
    # Records 0, k, 2k, ... of the whole stream, whatever the batch boundaries.
    assert total == math.ceil(sum(sizes) / every)


def test_latency_sample_is_capped_per_batch() -> None:
    m = Metrics(latency_sample_every=1, latency_max_per_batch=10, clock=FakeClock(0.0))
    assert m.observe_end_to_end([0] * 1000) == 10
    assert value(m.registry, "filterd_end_to_end_latency_seconds_count") == 10


def test_observe_latencies_clamps_negative() -> None:
    m = Metrics()
    m.observe_latencies([0.2, -1.0])
    assert value(m.registry, "filterd_end_to_end_latency_seconds_count") == 2
    assert value(m.registry, "filterd_end_to_end_latency_seconds_sum") == pytest.approx(0.2)


def test_lag_per_partition_and_forget_on_revoke() -> None:
    m = Metrics()
    m.set_lag("sms.outbound", 0, 120)
    m.set_lag("sms.outbound", 1, 5)
    m.set_lag("sms.outbound", 1, -3)  # position past a stale high watermark
    reg = m.registry
    assert value(reg, "filterd_consumer_lag_records", topic="sms.outbound", partition="0") == 120
    assert value(reg, "filterd_consumer_lag_records", topic="sms.outbound", partition="1") == 0
    m.forget_partitions([("sms.outbound", 0), ("other", 9)])
    assert value(reg, "filterd_consumer_lag_records", topic="sms.outbound", partition="0") is None
    assert value(reg, "filterd_consumer_lag_records", topic="sms.outbound", partition="1") == 0
    m.set_lag("sms.outbound", 0, 7)  # reassigned later: reported again
    assert value(reg, "filterd_consumer_lag_records", topic="sms.outbound", partition="0") == 7


def test_snapshot_swap_keeps_one_version_and_ages_at_scrape_time() -> None:
    clock = FakeClock(10_000.0)
    m = Metrics(clock=clock)
    reg = m.registry
    assert value(reg, "filterd_snapshot_age_seconds") is None  # no snapshot yet
    m.snapshot_loaded("v1", consents=100, created_at=9_000.0, load_seconds=0.5)
    assert value(reg, "filterd_snapshot_info", version="v1") == 1
    assert value(reg, "filterd_snapshot_age_seconds") == 1000.0
    clock.now += 60
    assert value(reg, "filterd_snapshot_age_seconds") == 1060.0
    m.snapshot_loaded("v2", consents=250, created_at=10_050.0, load_seconds=0.25)
    assert value(reg, "filterd_snapshot_info", version="v1") is None
    assert value(reg, "filterd_snapshot_info", version="v2") == 1
    assert value(reg, "filterd_snapshot_age_seconds") == 10.0
    assert value(reg, "filterd_snapshot_consents") == 250
    assert value(reg, "filterd_snapshot_load_seconds") == 0.25
    m.snapshot_loaded("v2", consents=250, created_at=10_050.0, load_seconds=0.1)  # reload
    assert value(reg, "filterd_snapshot_info", version="v2") == 1


def test_event_counters() -> None:
    m = Metrics()
    m.snapshot_refused()
    m.produce_error()
    m.produce_error(4)
    m.rebalance()
    m.commit()
    m.commit()
    reg = m.registry
    assert value(reg, "filterd_snapshot_load_failures_total") == 1
    assert value(reg, "filterd_produce_errors_total") == 5
    assert value(reg, "filterd_rebalances_total") == 1
    assert value(reg, "filterd_commits_total") == 2


def test_exposition_has_help_and_types_for_every_family() -> None:
    m = Metrics()
    m.snapshot_loaded("v1", 1, time.time(), 0.1)
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())
    }
    expected = {
        "filterd_events": "counter",
        "filterd_batch_records": "histogram",
        "filterd_batch_seconds": "histogram",
        "filterd_end_to_end_latency_seconds": "histogram",
        "filterd_consumer_lag_records": "gauge",
        "filterd_snapshot_info": "gauge",
        "filterd_snapshot_age_seconds": "gauge",
        "filterd_snapshot_consents": "gauge",
        "filterd_snapshot_load_seconds": "gauge",
        "filterd_snapshot_load_failures": "counter",
        "filterd_event_loop_lag_seconds": "gauge",
        "filterd_produce_errors": "counter",
        "filterd_rebalances": "counter",
        "filterd_commits": "counter",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
        assert families[name].documentation, name


def test_two_instances_do_not_share_state() -> None:
    a, b = Metrics(), Metrics()
    a.commit()
    assert value(b.registry, "filterd_commits_total") == 0


def test_bad_sampling_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="sampling"):
        Metrics(latency_sample_every=0)


async def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    m = Metrics()
    ticks: list[float] = []
    monitor = LoopLagMonitor(m, interval=0.02, on_tick=lambda: ticks.append(1.0))
    async with monitor:
        await asyncio.sleep(0.1)
        assert ticks  # the loop turns
        # Block the loop (what a synchronous call on the hot path would do).
        time.sleep(0.3)  # noqa: ASYNC251
        await asyncio.sleep(0.1)
        lag = value(m.registry, "filterd_event_loop_lag_seconds")
        assert lag is not None
        assert lag >= 0.2
    await monitor.stop()  # safe twice
    count = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) == count  # stopped for real


def test_bad_input_bursts_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    clock = FakeClock(0.0)
    m.bad_input_log = RateLimitedLogger(logging.getLogger("filterd.input"), 10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="filterd.input")
    m.record_batch({("invalid", "malformed-json"): 3, ("deliver", "consent"): 9}, 12, 0.001)
    for _ in range(4):
        clock.now += 1
        m.record_batch({("invalid", "malformed-json"): 100}, 100, 0.001)
    m.record_batch({("invalid", "bad-recipient"): 1}, 1, 0.001)
    clock.now += 10
    m.record_batch({("invalid", "malformed-json"): 2}, 2, 0.001)
    assert [r.getMessage() for r in caplog.records] == [
        "3 input records routed to the invalid topic as malformed-json",
        "1 input records routed to the invalid topic as bad-recipient",
        "2 input records routed to the invalid topic as malformed-json"
        " (400 more suppressed in the last 10s)",
    ]
    assert all(r.name == "filterd.input" for r in caplog.records)


def test_recipients_without_plus_are_counted_and_logged_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    clock = FakeClock(0.0)
    m.bad_input_log = RateLimitedLogger(logging.getLogger("filterd.input"), 10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="filterd.input")
    assert value(m.registry, "filterd_recipients_without_plus_total") == 0
    m.recipients_without_plus(3)
    clock.now += 1
    m.recipients_without_plus(4)
    m.recipients_without_plus(0)
    clock.now += 10
    m.recipients_without_plus(2)
    assert value(m.registry, "filterd_recipients_without_plus_total") == 9
    assert [r.getMessage() for r in caplog.records] == [
        "3 recipients without '+' start with the country code and were read as national"
        " numbers (E.164 without '+'?)",
        "2 recipients without '+' start with the country code and were read as national"
        " numbers (E.164 without '+'?) (4 more suppressed in the last 10s)",
    ]


def test_bad_input_warnings_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics(bad_input_log_interval=None)
    caplog.set_level(logging.WARNING, logger="filterd.input")
    m.record_batch({("invalid", "oversized"): 5}, 5, 0.001)
    assert caplog.records == []
    assert value(m.registry, "filterd_events_total", route="invalid", reason="oversized") == 5
