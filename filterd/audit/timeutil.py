"""Time arguments and hour buckets for audit commands.

Auditors give times as ISO 8601 (``2026-11-11T00:00:00+08:00``,
``2026-11-11``) or as epoch milliseconds, and read hours in their own zone
(CST in China), so both parsing and bucketing take a time zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_OFFSET = re.compile(r"^([+-])(\d{1,2})(?::?(\d{2}))?$")
_EPOCH_MS = re.compile(r"^-?\d+$")

#: Every real UTC offset is a multiple of 15 minutes, and zone transitions
#: happen on such boundaries, so counting by 15-minute UTC slot and mapping
#: slots to local hours is exact for any zone with one dict lookup per record.
_SLOT_MS = 15 * 60 * 1000


class TimeRange(NamedTuple):
    """A half-open range of record timestamps, in ms since the epoch (UTC)."""

    #: Inclusive start; ``None`` means the beginning of each partition.
    start_ms: int | None
    #: Exclusive end; ``None`` means the end offset read when the audit starts.
    end_ms: int | None

    def contains(self, ts_ms: int) -> bool:
        """Whether a record timestamp lies in the range."""
        if self.start_ms is not None and ts_ms < self.start_ms:
            return False
        return self.end_ms is None or ts_ms < self.end_ms


def parse_tz(text: str | None) -> tzinfo:
    """Parse a ``--tz`` value: ``UTC``/``Z``, an offset (``+08:00``, ``+8``,
    ``-0530``) or an IANA zone name (``Asia/Shanghai``)."""
    if text is None or text.strip().upper() in ("", "UTC", "Z"):
        return UTC
    text = text.strip()
    match = _OFFSET.match(text)
    if match:
        sign, hours, minutes = match.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta >= timedelta(hours=24):
            raise ValueError(f"time zone offset out of range: {text!r}")
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {text!r} (use +08:00, UTC or a zone name)") from exc


def parse_time(text: str, tz: tzinfo = UTC) -> int:
    """Parse a time argument into epoch milliseconds.

    Accepts epoch milliseconds (all digits), or ISO 8601 with or without a
    time part; a time without an offset, and a bare date (midnight), are
    read in ``tz``.
    """
    text = text.strip()
    if _EPOCH_MS.match(text):
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(
            f"bad time {text!r}: use ISO 8601 (2026-11-11T00:00:00+08:00, 2026-11-11) "
            "or epoch milliseconds"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return _to_ms(parsed)


def _to_ms(moment: datetime) -> int:
    # Integer arithmetic on the timedelta: float seconds would lose the last
    # millisecond on some dates, which breaks exact range edges.
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def format_ms(ts_ms: int, tz: tzinfo = UTC) -> str:
    """Format epoch milliseconds as ISO 8601 with milliseconds, in ``tz``."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)
    return moment.astimezone(tz).isoformat(timespec="milliseconds")


class HourBuckets:
    """Maps record timestamps to local hours of one time zone.

    ``hour(ts)`` returns an integer key that increases by one per local
    hour (so "previous hour" is ``key - 1``); ``label(key)`` renders it as
    ``2026-11-11T08:00+08:00``. Results are cached per 15-minute UTC slot,
    so the per-record cost is an integer division and a dict lookup.
    """

    __slots__ = ("_labels", "_slots", "tz")

    def __init__(self, tz: tzinfo = UTC) -> None:
        self.tz = tz
        self._slots: dict[int, int] = {}
        self._labels: dict[int, str] = {}

    def hour(self, ts_ms: int) -> int:
        """The local-hour key of a timestamp."""
        slot = ts_ms // _SLOT_MS
        key = self._slots.get(slot)
        if key is None:
            key = self._compute(slot * _SLOT_MS)
            self._slots[slot] = key
        return key

    def _compute(self, ts_ms: int) -> int:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)
        local = moment.astimezone(self.tz)
        # Hours since the epoch on the local wall clock: consecutive local
        # hours get consecutive keys, whatever the zone's offset.
        wall = local.replace(tzinfo=None) - datetime(1970, 1, 1)
        key = (wall.days * 86_400 + wall.seconds) // 3600
        if key not in self._labels:
            start = local.replace(minute=0, second=0, microsecond=0)
            self._labels[key] = start.isoformat(timespec="minutes")
        return key

    def label(self, key: int) -> str:
        """The ISO label of an hour key (``2026-11-11T08:00+08:00``)."""
        label = self._labels.get(key)
        if label is None:
            # An hour with no records (a gap in a chart): derive it from the
            # wall clock; the offset is the zone's at that moment.
            wall = datetime(1970, 1, 1) + timedelta(hours=key)
            label = wall.replace(tzinfo=self.tz).isoformat(timespec="minutes")
        return label
