from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filterd.audit.timeutil import HourBuckets, TimeRange, format_ms, parse_time, parse_tz

CST = timezone(timedelta(hours=8))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-11T00:00:00+08:00", datetime(2026, 11, 10, 16, tzinfo=UTC)),
        ("2026-11-11T00:00:00Z", datetime(2026, 11, 11, tzinfo=UTC)),
        ("2026-11-11", datetime(2026, 11, 11, tzinfo=UTC)),
        ("2026-11-11T08:30", datetime(2026, 11, 11, 8, 30, tzinfo=UTC)),
        ("2026-11-11T00:00:00.123+00:00", datetime(2026, 11, 11, 0, 0, 0, 123000, tzinfo=UTC)),
    ],
)
def test_parse_time_iso(text: str, expected: datetime) -> None:
    assert parse_time(text) == int(expected.timestamp() * 1000)


def test_parse_time_epoch_ms_and_naive_times_in_tz() -> None:
    assert parse_time("1794326400000") == 1794326400000
    # A bare date in CST is midnight in Beijing: 16:00 UTC the day before.
    assert parse_time("2026-11-11", CST) == parse_time("2026-11-10T16:00:00Z")
    # An explicit offset wins over --tz.
    assert parse_time("2026-11-11T00:00:00Z", CST) == parse_time("2026-11-11")


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "11/11/2026", ""])
def test_parse_time_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="bad time"):
        parse_time(text)


def test_parse_tz() -> None:
    assert parse_tz(None) is UTC
    assert parse_tz("utc") is UTC
    assert parse_tz("+08:00") == CST
    assert parse_tz("+8") == CST
    assert parse_tz("-0530") == timezone(-timedelta(hours=5, minutes=30))
    assert parse_tz("Asia/Shanghai").utcoffset(datetime(2026, 11, 11)) == timedelta(hours=8)
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_tz("Mars/Olympus")


def test_time_range_is_half_open() -> None:
    r = TimeRange(100, 200)
    assert [r.contains(t) for t in (99, 100, 199, 200)] == [False, True, True, False]
    assert TimeRange(None, None).contains(-5)


def test_hour_buckets_cst_labels_and_consecutive_keys() -> None:
    buckets = HourBuckets(CST)
    t = parse_time("2026-11-10T16:00:00Z")  # 00:00 on 11-11 in Beijing
    k = buckets.hour(t)
    assert buckets.label(k) == "2026-11-11T00:00+08:00"
    assert buckets.hour(t - 1) == k - 1
    assert buckets.label(k - 1) == "2026-11-10T23:00+08:00"
    assert buckets.hour(t + 3_599_999) == k
    # A label for an hour never seen (a gap in a chart) is still right.
    assert buckets.label(k + 5) == "2026-11-11T05:00+08:00"


def test_hour_buckets_half_hour_zone() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    buckets = HourBuckets(ist)
    t = parse_time("2026-11-11T00:00:00Z")  # 05:30 in India
    assert buckets.label(buckets.hour(t)) == "2026-11-11T05:00+05:30"
    assert buckets.label(buckets.hour(t + 30 * 60_000)) == "2026-11-11T06:00+05:30"


@given(
    ts=st.integers(min_value=0, max_value=4_102_444_800_000),
    offset_q=st.integers(min_value=-48, max_value=56),
)
def test_hour_buckets_agree_with_datetime(ts: int, offset_q: int) -> None:
    tz = timezone(timedelta(minutes=15 * offset_q))
    buckets = HourBuckets(tz)
    moment = datetime.fromtimestamp(ts / 1000, tz)
    expected = moment.replace(minute=0, second=0, microsecond=0).isoformat(timespec="minutes")
    assert buckets.label(buckets.hour(ts)) == expected


@given(ts=st.integers(min_value=0, max_value=4_102_444_800_000))
def test_format_and_parse_round_trip(ts: int) -> None:
    assert parse_time(format_ms(ts, CST)) == ts
