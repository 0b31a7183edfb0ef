"""Chart axes stay readable from minutes to months and from 1 to billions."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest

from filterd.audit.aggregate import Summary
from filterd.audit.axes import MAX_TIME_LABELS, bin_hours, format_count, nice_ticks, time_ticks
from filterd.audit.report import reason_time_chart
from filterd.audit.timeutil import HourBuckets


@pytest.mark.parametrize(
    ("peak", "ticks"),
    [
        (0, [0, 1]),
        (1, [0, 1]),
        (3, [0, 1, 2, 3]),
        (7, [0, 2, 4, 6, 8]),
        (10, [0, 2, 4, 6, 8, 10]),
        (11, [0, 5, 10, 15]),
        (999, [0, 200, 400, 600, 800, 1000]),
        (1_234_567, [0, 500_000, 1_000_000, 1_500_000]),
        (3_000_000_001, [0, 1_000_000_000, 2_000_000_000, 3_000_000_000, 4_000_000_000]),
    ],
)
def test_nice_ticks(peak: int, ticks: list[int]) -> None:
    assert nice_ticks(peak) == ticks


@pytest.mark.parametrize("peak", [1, 2, 5, 9, 17, 123, 4_999, 10**6 + 1, 7 * 10**9, 10**12])
def test_nice_ticks_cover_the_peak_in_few_round_steps(peak: int) -> None:
    ticks = nice_ticks(peak)
    step = ticks[1]
    assert ticks[0] == 0
    assert ticks[-1] >= peak > ticks[-2]
    assert len(ticks) <= 6
    assert all(b - a == step for a, b in itertools.pairwise(ticks))
    assert str(step).strip("0") in ("1", "2", "5")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1, "1"),
        (999, "999"),
        (12_345, "12,345"),
        (999_999, "999,999"),
        (1_000_000, "1M"),
        (1_500_000, "1.5M"),
        (12_000_000, "12M"),
        (2_000_000_000, "2G"),
        (2_345_000_000, "2.3G"),
        (3_200_000_000_000, "3.2T"),
    ],
)
def test_format_count(value: int, text: str) -> None:
    assert format_count(value) == text


def test_counts_of_any_size_stay_short() -> None:
    assert max(len(format_count(10**k + 7)) for k in range(16)) <= 7


CST = timezone(timedelta(hours=8))


def _ticks(start: datetime, hours: int) -> list[tuple[int, str]]:
    buckets = HourBuckets(CST)
    first = buckets.hour(int(start.timestamp() * 1000))
    return time_ticks(first, first + hours - 1, buckets.label)


def _axis(start: datetime, hours: int) -> list[str]:
    return [text for _, text in _ticks(start, hours)]


START = datetime(2026, 11, 11, 0, 0, tzinfo=CST)


def test_minutes_show_the_hour_with_its_date() -> None:
    assert _axis(START + timedelta(hours=8), 1) == ["11-11 08:00"]


def test_a_day_of_hours_is_labelled_every_few_hours() -> None:
    labels = _axis(START, 24)
    assert labels == ["11-11 00:00", "03:00", "06:00", "09:00", "12:00", "15:00", "18:00", "21:00"]


def test_hours_across_midnight_repeat_the_date_where_it_changes() -> None:
    labels = _axis(START + timedelta(hours=20), 8)
    assert labels == [
        "11-11 20:00",
        "21:00",
        "22:00",
        "23:00",
        "11-12 00:00",
        "01:00",
        "02:00",
        "03:00",
    ]


def test_a_week_is_labelled_by_day() -> None:
    labels = _axis(START, 7 * 24)
    assert labels[:3] == ["11-11", "11-12", "11-13"]
    assert len(labels) == 7


def test_three_months_are_labelled_by_week_or_fortnight_without_hours() -> None:
    labels = _axis(datetime(2026, 3, 1, tzinfo=CST), 90 * 24)
    assert 3 <= len(labels) <= MAX_TIME_LABELS
    assert all(len(label) == 5 and label[2] == "-" for label in labels)


def test_a_year_is_labelled_by_month_with_the_year() -> None:
    labels = _axis(datetime(2026, 1, 1, tzinfo=CST), 365 * 24)
    assert labels == ["2026-01", "2026-03", "2026-05", "2026-07", "2026-09", "2026-11"]


def test_days_across_new_year_carry_the_year() -> None:
    labels = _axis(datetime(2026, 12, 20, tzinfo=UTC).astimezone(CST), 20 * 24)
    assert "2027-01-01" in labels or any(label.startswith("2027-") for label in labels)
    assert all(label[:4] in ("2026", "2027") for label in labels)


def test_ten_years_are_labelled_by_year() -> None:
    labels = _axis(datetime(2020, 1, 1, tzinfo=CST), 10 * 366 * 24)
    assert labels[0] == "2020"
    assert len(labels) <= MAX_TIME_LABELS


@pytest.mark.parametrize("hours", [1, 5, 24, 72, 24 * 10, 24 * 45, 24 * 200, 24 * 800])
def test_labels_never_crowd_the_axis(hours: int) -> None:
    ticks = _ticks(START, hours)
    assert 1 <= len(ticks) <= MAX_TIME_LABELS
    keys = [key for key, _ in ticks]
    assert keys == sorted(set(keys))
    # Evenly spaced (months and years are nearly so: 28 to 31 days, 365 or 366).
    gaps = {b - a for a, b in itertools.pairwise(keys)}
    assert not gaps or max(gaps) - min(gaps) <= 3 * 24 * 12


def test_long_periods_are_charted_per_day() -> None:
    assert bin_hours(0, 23) == 1
    assert bin_hours(0, 4 * 24 - 1) == 1
    assert bin_hours(0, 4 * 24) == 24


def _chart(hours: int, per_hour: int) -> str:
    summary = Summary(HourBuckets(CST))
    first = summary.buckets.hour(int(START.timestamp() * 1000))
    for hour in range(first, first + hours):
        summary.hour_reason[hour] = Counter({"no-consent": per_hour, "opted-out": 1})
        summary.by_hour[hour] = per_hour + 1
    return reason_time_chart(summary, {"no-consent": "#c00", "opted-out": "#808"})


def _texts(chart: str, cls: str) -> list[str]:
    return re.findall(rf'<text class="axis {cls}"[^>]*>([^<]*)</text>', chart)


def test_a_chart_of_hours_and_thousands() -> None:
    chart = _chart(24, 12_344)
    assert 'data-bar="hour"' in chart
    assert _texts(chart, "xtick")[:2] == ["11-11 00:00", "03:00"]
    assert _texts(chart, "ytick") == ["0", "5,000", "10,000", "15,000"]
    assert chart.count("no-consent: 12,344</title>") == 24


def test_a_chart_of_two_months_and_billions_has_day_bars() -> None:
    chart = _chart(60 * 24, 90_000_000)  # 2.16 G blocks a day
    assert 'data-bar="day"' in chart
    assert chart.count("<title>") == 2 * 60  # one bar per day, two reasons
    assert "no-consent: 2,160,000,000</title>" in chart
    assert _texts(chart, "ytick") == ["0", "500M", "1G", "1.5G", "2G", "2.5G"]
    days = _texts(chart, "xtick")
    assert 3 <= len(days) <= MAX_TIME_LABELS
    assert all(re.fullmatch(r"\d\d-\d\d|\d{4}-\d\d-\d\d", d) for d in days)
