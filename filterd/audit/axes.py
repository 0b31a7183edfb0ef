"""Readable chart axes for the audit report, at any range.

Counts run from 1 to billions and periods from minutes to months, so the
report does not print raw numbers and hour labels: counts get ticks at 1, 2 or 5
times a power of ten and are written with thousands separators up to a million,
then with an SI suffix (``1.5M``, ``2G``); time labels fit the period (hours
within a day, days within a month, months beyond), and a long period is charted
per day rather than per hour.

Time is in hour keys of :class:`filterd.audit.timeutil.HourBuckets`: hours of
the local wall clock since the epoch, so ``key % 24 == 0`` is local midnight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["bin_hours", "format_count", "nice_ticks", "time_ticks"]

#: At most this many labels under a time axis (a label is about 70 px of 900).
MAX_TIME_LABELS = 10
#: Charted per hour up to this many hours, per day beyond (at most a few hundred bars).
HOURLY_UP_TO = 4 * 24
_HOUR_STEPS = (1, 2, 3, 6, 12, 24)
_DAY_STEPS = (1, 2, 7, 14)
_MONTH_STEPS = (1, 2, 3, 6, 12)
_SUFFIXES = ((10**12, "T"), (10**9, "G"), (10**6, "M"))


def nice_ticks(peak: int, most: int = 5) -> list[int]:
    """Axis ticks from 0 to at or above ``peak``: whole steps of 1, 2 or 5 x 10^k,
    at most ``most`` + 1 ticks (0 included)."""
    if peak <= 0:
        return [0, 1]
    scale = 1
    while True:
        for step in (scale, 2 * scale, 5 * scale):
            count = -(-peak // step)  # ceil
            if count <= most:
                return [i * step for i in range(count + 1)]
        scale *= 10


def format_count(value: int) -> str:
    """``12,345`` below a million, then ``1.5M``, ``12M``, ``2G``, ``3.2T``."""
    for size, suffix in _SUFFIXES:
        if abs(value) >= size:
            scaled = value / size
            text = f"{scaled:.1f}" if abs(scaled) < 10 else f"{scaled:.0f}"
            return text.removesuffix(".0") + suffix
    return f"{value:,}"


def bin_hours(first: int, last: int) -> int:
    """Hours per bar for a chart from hour key ``first`` to ``last``: 1 or 24."""
    return 1 if last - first + 1 <= HOURLY_UP_TO else 24


def time_ticks(
    first: int, last: int, label: Callable[[int], str], *, min_step: int = 1
) -> list[tuple[int, str]]:
    """Labelled ticks (hour key, text) for a time axis from ``first`` to ``last``.

    ``label(key)`` is the hour's ISO label (``2026-11-11T08:00+08:00``). Ticks
    fall on round local times: every 1/2/3/6/12 hours (``08:00``, the date added
    where it changes), every 1/2/7/14 days (``11-11``), or on the first of every
    1/2/3/6/12 months (``2026-11``); the year is shown when the period crosses one.
    ``min_step`` (24 for a chart of day bars) leaves out steps of fewer hours.
    """
    if last < first:
        return []
    span = last - first + 1
    if span <= 10 * 24 and min_step < 24:
        for step in (s for s in _HOUR_STEPS if s >= min_step):
            keys = [k for k in range(first, last + 1) if k % step == 0]
            if len(keys) <= MAX_TIME_LABELS:
                break
        if not keys:
            keys = [first]
        return _hour_labels(keys, step, label)
    many_years = label(first)[:4] != label(last)[:4]
    midnights = [k for k in range(first - first % 24 + 24 * (first % 24 > 0), last + 1, 24)]
    for step in _DAY_STEPS:
        keys = [k for k in midnights if (k // 24) % step == 0]
        if len(keys) <= MAX_TIME_LABELS:
            cut = 0 if many_years else 5
            return [(k, label(k)[cut:10]) for k in keys]
    firsts = [k for k in midnights if label(k)[8:10] == "01"]
    for step in _MONTH_STEPS:
        keys = [k for k in firsts if (int(label(k)[5:7]) - 1) % step == 0]
        if len(keys) <= MAX_TIME_LABELS:
            return [(k, label(k)[:7]) for k in keys]
    years = [k for k in firsts if label(k)[5:7] == "01"]
    every = max(1, -(-len(years) // MAX_TIME_LABELS))
    return [(k, label(k)[:4]) for k in years[::every]]


def _hour_labels(
    keys: Sequence[int], step: int, label: Callable[[int], str]
) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    day = ""
    for key in keys:
        text = label(key)
        if step >= 24:
            out.append((key, text[5:10]))
        elif text[:10] != day:
            day = text[:10]
            out.append((key, f"{text[5:10]} {text[11:16]}"))
        else:
            out.append((key, text[11:16]))
    return out
