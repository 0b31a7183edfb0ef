"""Step 4, anti-bombing limits, and monitor mode (docs/contract.md).

Pure code, no I/O: :class:`LimitRules` is the ``[policy]`` limits as loaded
(quiet hours, zones, cap rules, the monitored reasons), built once;
:class:`PartitionLimits` holds the counters of one input partition (the stream
keeps one per assigned partition, ``filterd replay`` one for the whole file)
and turns the outcome of steps 1-3 into the final one, record by record, in
the batch loop: no await, no future.

Windows are the calendar hour or day of the recipient's local time that holds
the message's time. A counter key names its window, so a counter is only ever
read inside its window; the counters of a window are dropped once the window
has closed in *stream time* (the latest message time seen on the partition),
as Kafka Streams does. A window closes at its local end read in the zone's
smallest UTC offset (so never early, whatever daylight saving does). A record
whose own window has already closed in stream time (a late record) is decided
without step 4 counting: it is neither capped nor counted.

Counters live in compact tables (:class:`filterd.table.PairTable`, 20-30 bytes per
counter): one per *group*, a counter slot (a cap rule, or the consents'
``max_per_day``) in one window of the zones that close it at the same time, keyed by
(number, interned sender id; 0 for per-recipient rules) and holding the count. A
closed window drops its group's table whole. The changes a batch made are lists per
group in offset order (number, sender id, the count made, the record's offset); the
decisions of records not yet committed are two lists in offset order. Counting a
message makes no dict entry and no tuple.

The changelog (:mod:`filterd.counters`) gets one record per counter a batch changed, and
no tombstone when a window closes: like Kafka Streams' windowed stores, the topic is
``compact,delete`` with a retention longer than any window
(:data:`filterd.topics.COUNTERS_RETENTION_MS`), so the broker deletes closed windows'
counters by age, and a restore skips those it still finds.

The changelog records of a batch are encoded one group at a time in C, straight to the
record bodies filterd's producer batch holds (:func:`filterd.table.encode_change_bodies`),
and go into the batch in one call (:meth:`filterd.records.RecordBatch.extend`). Measured
(docs/limits.md "Status"): the batch step with limits on routes about 0.8 of what it routes
with them off; end to end, where the goal of 0.85 applies, 0.73-0.87 on a noisy shared host
(not met there). Counting in C is the next step, not taken.

A pair's ``max_per_day`` is read at the message's time: the smallest of its accepted
consents valid then (:data:`filterd.snapshot.store.CapSchedule`).
"""

from __future__ import annotations

import bisect
import zoneinfo
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson

from filterd.config import PolicyConfig, quiet_hours_minutes
from filterd.router import (
    BLOCK,
    EXEMPT_CATEGORY,
    FREQUENCY_CAP,
    INVALID,
    MONITORED,
    QUIET_HOURS,
    Decider,
    Outcome,
)
from filterd.table import Interned, PairTable, encode_change_bodies, encode_changes

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
#: A message time this far after the time a record was read is not usable.
FUTURE_LIMIT_MS: Final = DAY_MS
# Offsets are cached per 15 minutes of UTC: every transition of today's zones falls
# on such a boundary, and a bucket whose two ends disagree is not cached anyway.
_BUCKET_MS: Final = 900_000
#: The counter of ``max_per_day`` (a consent's own frequency) in a counter key.
MAX_PER_DAY_RULE: Final = -1
#: The changelog name of the ``max_per_day`` counters (cap rules: :func:`rule_id`).
MAX_PER_DAY_ID: Final = "max_per_day"
#: The changelog key of a partition's stream time.
STREAM_TIME_KEY: Final = b'"stream-time"'
#: A close time after every window's.
_NEVER: Final = 1 << 62
#: Counts fit 32 bits (the counter tables' word).
_COUNT_TOP: Final = 1 << 32


def usable_time(at_ms: int, fallback_ms: int) -> int:
    """``at_ms`` when it is a usable message time, else ``fallback_ms``.

    Unusable (docs/contract.md, issue 18 "bad input"): negative, or more than a
    day after ``fallback_ms`` (the broker's append time, or the time it was read).
    """
    if at_ms < 0 or at_ms > fallback_ms + FUTURE_LIMIT_MS:
        return fallback_ms
    return at_ms


def min_offset_ms(zone: zoneinfo.ZoneInfo) -> int:
    """The zone's smallest UTC offset over 2000-2040 (sampled daily), in ms.

    A local window closes, in UTC, at the latest at its local end minus this.
    """
    day = datetime(2000, 1, 1, tzinfo=UTC)
    lowest: timedelta | None = None
    for i in range(0, 41 * 366):
        offset = (day + timedelta(days=i)).astimezone(zone).utcoffset()
        if offset is not None and (lowest is None or offset < lowest):
            lowest = offset
    return 0 if lowest is None else lowest // timedelta(milliseconds=1)


def rule_id(per: str, window: str, categories: Iterable[str]) -> str:
    """A cap rule's name in the changelog: what it counts, not its place in the config,
    so reordering rules or changing a ``max`` keeps the counts."""
    return f"{per}/{window}/{','.join(sorted(set(categories)))}"


class _Cap:
    __slots__ = ("categories", "index", "max", "per_pair", "slot", "window_ms")

    def __init__(
        self, index: int, categories: frozenset[str], per_pair: bool, window_ms: int, cap: int
    ) -> None:
        self.index = index
        #: Where its counters are in :class:`PartitionLimits` (the rule's index; the
        #: consents' ``max_per_day`` takes the slot after the last rule).
        self.slot = index
        self.categories = categories
        self.per_pair = per_pair
        self.window_ms = window_ms
        self.max = cap


#: The largest number a zone interval covers (19 digits; an int64).
_TOP: Final = (1 << 63) - 1


class LimitRules:
    """The limits of a ``[policy]``: validated by the config, compiled here once."""

    __slots__ = (
        "_hit_hi", "_hit_lo", "_hit_zone", "_lengths", "_off_hi", "_off_lo", "_off_val",
        "_offsets", "_prefixes", "_starts", "_zone_at", "by_category", "by_id", "capped", "caps",
        "class_closing", "closing", "encoded_ids", "ids", "max_per_day_slot", "monitor", "quiet",
        "slot_ids", "slot_windows", "zone_class", "zones",
    )  # fmt: skip

    def __init__(self, policy: PolicyConfig) -> None:
        self.quiet: tuple[int, int] | None = quiet_hours_minutes(policy.quiet_hours)
        names = [policy.timezone, *sorted(set(policy.timezones.values()))]
        names = list(dict.fromkeys(names))
        self.zones: list[zoneinfo.ZoneInfo] = [zoneinfo.ZoneInfo(n) for n in names]
        #: Per zone, the offset of its latest close (see :func:`min_offset_ms`).
        self.closing: list[int] = [min_offset_ms(z) for z in self.zones]
        #: Zones that close their windows at the same time share a class (and the tables
        #: of their counters): per zone its class, per class the offset of its close.
        self.class_closing: list[int] = list(dict.fromkeys(self.closing))
        self.zone_class: list[int] = [self.class_closing.index(c) for c in self.closing]
        self._prefixes: dict[str, int] = {p: names.index(z) for p, z in policy.timezones.items()}
        self._lengths: tuple[int, ...] = tuple(
            sorted({len(p) for p in self._prefixes}, reverse=True)
        )
        # zone_of() by number ranges: the numbers starting with a prefix are, per digit
        # count, one range; cut at every range end, each piece has one longest prefix.
        # The piece of the last number asked is tried first (most traffic is one country).
        self._starts: list[int] = [1]
        self._zone_at: list[int] = [0]
        self._hit_lo = 1
        self._hit_hi = 1
        self._hit_zone = 0
        self._index_prefixes()
        self._offsets: list[dict[int, int]] = [{} for _ in self.zones]
        # Per zone, the 15 minutes of UTC whose offset offset() gave last.
        self._off_lo: list[int] = [0 for _ in self.zones]
        self._off_hi: list[int] = [0 for _ in self.zones]
        self._off_val: list[int] = [0 for _ in self.zones]
        self.caps: tuple[_Cap, ...] = tuple(
            _Cap(i, frozenset(c.strip() for c in rule.categories), rule.per == "pair",
                 HOUR_MS if rule.window == "hour" else DAY_MS, rule.max)
            for i, rule in enumerate(policy.caps)
        )  # fmt: skip
        #: The counter slot of the consents' ``max_per_day`` (after the cap rules').
        self.max_per_day_slot: int = len(self.caps)
        #: Per counter slot, the window's length (ms).
        self.slot_windows: list[int] = [cap.window_ms for cap in self.caps] + [DAY_MS]
        self.monitor: frozenset[str] = frozenset(policy.monitor)
        #: Every category some cap rule counts (a message of another one skips the caps).
        self.capped: frozenset[str] = frozenset(c for cap in self.caps for c in cap.categories)
        #: The cap rules that count each category, in rule order.
        self.by_category: dict[str, tuple[_Cap, ...]] = {
            c: tuple(cap for cap in self.caps if c in cap.categories) for c in self.capped
        }
        #: Changelog name of each cap rule, and the rules of each name.
        self.ids: list[str] = [rule_id(r.per, r.window, r.categories) for r in policy.caps]
        self.by_id: dict[str, list[int]] = {}
        for i, name in enumerate(self.ids):
            self.by_id.setdefault(name, []).append(i)
        self.by_id[MAX_PER_DAY_ID] = [MAX_PER_DAY_RULE]
        #: Per counter slot, its changelog name.
        self.slot_ids: list[str] = [*self.ids, MAX_PER_DAY_ID]
        #: The start of each changelog name's counter keys: ``["<name>",`` as orjson has it.
        self.encoded_ids: dict[str, bytes] = {
            name: orjson.dumps([name])[:-1] + b"," for name in self.by_id
        }

    def group_key(self, slot: int, cls: int, window: int) -> int:
        """One int naming a counter slot's window in a zone class (a group of counters)."""
        return (window * (len(self.caps) + 1) + slot) * len(self.class_closing) + cls

    def _index_prefixes(self) -> None:
        ranges: list[tuple[int, int]] = []
        for prefix in self._prefixes:
            if not (prefix.isascii() and prefix.isdigit()) or prefix.startswith("0"):
                continue  # no number's digits start so
            value = int(prefix)
            for extra in range(0, 20 - len(prefix)):
                low = value * 10**extra
                if low > _TOP:
                    break
                ranges.append((low, min((value + 1) * 10**extra, _TOP)))
        cuts = sorted({1, *(b for r in ranges for b in r)})
        self._starts = cuts
        self._zone_at = [self._zone_of_digits(str(start)) for start in cuts]

    def _zone_of_digits(self, digits: str) -> int:
        prefixes = self._prefixes
        for length in self._lengths:
            zone = prefixes.get(digits[:length])
            if zone is not None:
                return zone
        return 0

    def zone_of(self, number: int) -> int:
        """The index in :attr:`zones` of the number's zone: the longest matching prefix."""
        if self._hit_lo <= number < self._hit_hi:
            return self._hit_zone
        starts = self._starts
        i = bisect.bisect_right(starts, number) - 1
        if i < 0:
            return 0
        zone = self._zone_at[i]
        self._hit_lo = starts[i]
        self._hit_hi = starts[i + 1] if i + 1 < len(starts) else _TOP
        self._hit_zone = zone
        return zone

    def offset(self, zone: int, at_ms: int) -> int:
        """The zone's UTC offset at ``at_ms``, in ms."""
        if self._off_lo[zone] <= at_ms < self._off_hi[zone]:
            return self._off_val[zone]
        bucket = at_ms // _BUCKET_MS
        cache = self._offsets[zone]
        found = cache.get(bucket)
        if found is None:
            tz = self.zones[zone]
            found = _offset(tz, bucket * _BUCKET_MS)
            if _offset(tz, (bucket + 1) * _BUCKET_MS - 1) != found:
                return _offset(tz, at_ms)  # a transition inside the bucket: not cached
            if len(cache) > 100_000:
                cache.clear()
            cache[bucket] = found
        self._off_lo[zone] = bucket * _BUCKET_MS
        self._off_hi[zone] = (bucket + 1) * _BUCKET_MS
        self._off_val[zone] = found
        return found


def _offset(tz: zoneinfo.ZoneInfo, at_ms: int) -> int:
    moment = datetime.fromtimestamp(at_ms // 1000, tz)
    offset = moment.utcoffset()
    return 0 if offset is None else offset // timedelta(milliseconds=1)


#: A counter's key: (cap rule index or MAX_PER_DAY_RULE, sender or "", number, window index).
CounterKey = tuple[int, str, int, int]

#: A count as the changelog writes it, for the small ones.
_COUNTS: Final[list[bytes]] = [b"%d" % n for n in range(256)]
#: The sender id of per-recipient counters: "" (the sender of their changelog keys).
_NO_SENDER: Final = 0
#: Interned senders kept before those no live counter names are let go.
_SENDERS_KEPT: Final = 100_000


class _Group:
    """The counters of one counter slot (a cap rule, or ``max_per_day``) in one window of
    the zones that close it at the same time: they close together, so a closed window
    drops its table whole.

    The table is keyed by (number, sender id) (:data:`_NO_SENDER` for per-recipient rules)
    and holds the count. The changes not yet committed are parallel lists in offset order,
    one entry per count: the number, the sender id, the count it made and the offset of
    the record that counted (counts only grow, so a key's last entry has its value).
    """

    __slots__ = (
        "close", "dirty_counts", "dirty_numbers", "dirty_offsets", "dirty_senders", "head",
        "key", "slot", "table", "tail", "window",
    )  # fmt: skip

    def __init__(self, key: int, slot: int, window: int, close: int, head: bytes) -> None:
        self.key = key
        self.slot = slot
        self.window = window
        #: When the window closes in stream time (UTC ms).
        self.close = close
        self.table = PairTable(1, 4)
        #: The changelog key around the sender and the number: ``["<rule id>",`` and
        #: ``,<window>]``.
        self.head = head
        self.tail = b",%d]" % window
        self.dirty_numbers: list[int] = []
        self.dirty_senders: list[int] = []
        self.dirty_counts: list[int] = []
        self.dirty_offsets: list[int] = []

    def mark(self, number: int, sid: int, count: int, offset: int) -> None:
        """The key's count is ``count`` since the record at ``offset``."""
        self.dirty_numbers.append(number)
        self.dirty_senders.append(sid)
        self.dirty_counts.append(count)
        self.dirty_offsets.append(offset)

    def unmark(self) -> bool:
        """Take back the last change; True when none is left."""
        self.dirty_numbers.pop()
        self.dirty_senders.pop()
        self.dirty_counts.pop()
        self.dirty_offsets.pop()
        return not self.dirty_offsets

    def forget(self, next_offset: int) -> bool:
        """Forget the changes of records before ``next_offset``; True when none is left."""
        offsets = self.dirty_offsets
        done = bisect.bisect_left(offsets, next_offset)
        if done:
            del offsets[:done]
            del self.dirty_numbers[:done]
            del self.dirty_senders[:done]
            del self.dirty_counts[:done]
        return not offsets


class PartitionLimits:
    """Step 4 and monitor mode, with the counters of one input partition."""

    __slots__ = (
        "_cur_group", "_cur_window", "_dirty", "_groups", "_memo", "_memo_offsets",
        "_next_close", "_offset", "_sender_ids", "_sender_json", "_senders", "decided_would",
        "high", "late", "read_ms", "rules", "sender_limit", "stream_time", "tracking",
        "would_block",
    )  # fmt: skip

    def __init__(self, rules: LimitRules) -> None:
        self.rules = rules
        # The open windows' counters: group key (LimitRules.group_key) -> group.
        self._groups: dict[int, _Group] = {}
        # Per (counter slot, zone class), the group of the window last counted in: most
        # records of a batch fall in the same windows. Window -1: none.
        slots = (len(rules.caps) + 1) * len(rules.class_closing)
        self._cur_window: list[int] = [-1] * slots
        self._cur_group: list[_Group] = [_Group(-1, -1, -1, -1, b"")] * slots
        # The earliest close of the groups (no group: never).
        self._next_close: int = _NEVER
        #: The latest message time seen on the partition (ms), -1 before the first; never
        #: ahead of ``read_ms``, so that one record dated in the future cannot close every
        #: open window (and so lift every cap) at once.
        self.stream_time: int = -1
        #: When the records being decided were read (the stream sets it per batch, replay
        #: to ``--at``); -1: unknown, no bound.
        self.read_ms: int = -1
        #: The block reason monitor mode turned into ``monitored`` in the last :meth:`apply`.
        self.would_block: str | None = None
        #: Records decided without counting because their window had closed.
        self.late: int = 0
        # The final outcomes of records decided and not yet committed, in offset order:
        # a record fetched again (a retried batch, a refetch after a rebalance that kept
        # the partition) gets the decision it had, and is not counted twice.
        self._memo_offsets: list[int] = []
        self._memo: list[Outcome] = []
        #: offset -> would-block reason, of the decided records monitor mode let through
        #: (few: no entry per record).
        self.decided_would: dict[int, str] = {}
        #: The highest offset decided (-1: none).
        self.high: int = -1
        #: The stream keeps a changelog (:meth:`changelog`): the groups with changes not
        #: yet committed.
        self.tracking: bool = False
        self._dirty: list[_Group] = []
        self._offset: int = -1
        # Senders of per-pair counters, interned, and per id its JSON and a comma (for
        # changelog keys). Id 0 is "" (per-recipient counters).
        self._senders = Interned(first=1)
        self._sender_ids: dict[str, int] = self._senders.ids
        self._sender_json: list[bytes] = [b'"",']
        #: Interned senders beyond which :meth:`drop_closed` lets go of those no live counter
        #: names (monitored ``unknown-sender`` messages can bring any string).
        self.sender_limit: int = _SENDERS_KEPT

    def apply(self, decider: Decider, outcome: Outcome, at_ms: int) -> Outcome:
        """The final outcome of the record ``decider`` just decided as ``outcome``.

        ``at_ms`` is the message's time (usable, see :func:`usable_time`). Counts the
        message when it ends delivered.
        """
        self.would_block = None
        route = outcome.route
        if route == INVALID:
            return outcome
        if at_ms > self.stream_time:
            read_ms = self.read_ms
            self.stream_time = at_ms if read_ms < 0 or at_ms <= read_ms else read_ms
        rules = self.rules
        if route == BLOCK:
            # Steps 1-3 blocked it: nothing after the first block reason is evaluated.
            if outcome.reason not in rules.monitor:
                return outcome
            self.would_block = outcome.reason
            caps = rules.by_category.get(decider.category, ())
            most = decider.max_per_day(at_ms)
            if caps or most > 0:
                zone = rules.zone_of(decider.number)
                self._count(decider, caps, most, zone, at_ms + rules.offset(zone, at_ms), False)
            return MONITORED
        require = outcome is not EXEMPT_CATEGORY
        most = decider.max_per_day(at_ms) if require else 0
        caps = rules.by_category.get(decider.category, ())
        quiet = rules.quiet if require else None
        if not most and not caps and quiet is None:
            return outcome  # nothing to check, nothing counts it: the common case
        zone = rules.zone_of(decider.number)
        local = at_ms + rules.offset(zone, at_ms)
        if quiet is not None:
            minute = (local // 60_000) % 1440
            start, end = quiet
            if (start <= minute < end) if start < end else (minute >= start or minute < end):
                if QUIET_HOURS.reason not in rules.monitor:
                    return QUIET_HOURS
                self.would_block = QUIET_HOURS.reason
                self._count(decider, caps, most, zone, local, False)
                return MONITORED
        if not most and not caps:
            return outcome
        enforce = FREQUENCY_CAP.reason not in rules.monitor
        if self._count(decider, caps, most, zone, local, enforce):
            if enforce:
                return FREQUENCY_CAP
            self.would_block = FREQUENCY_CAP.reason
            return MONITORED
        return outcome

    def apply_record(self, decider: Decider, outcome: Outcome, at_ms: int, offset: int) -> Outcome:
        """:meth:`apply` for the record at ``offset`` of the partition, once per offset."""
        at = -1
        if offset <= self.high:
            offsets = self._memo_offsets
            at = bisect.bisect_left(offsets, offset)
            if at < len(offsets) and offsets[at] == offset:
                self.would_block = self.decided_would.get(offset)
                return self._memo[at]
        self._offset = offset
        final = self.apply(decider, outcome, at_ms)
        if final.route != INVALID:
            if at < 0:
                self._memo_offsets.append(offset)
                self._memo.append(final)
                self.high = offset
            else:  # below the highest, not decided before (it was invalid then): rare
                self._memo_offsets.insert(at, offset)
                self._memo.insert(at, final)
            would = self.would_block
            if would is not None:
                self.decided_would[offset] = would
        return final

    def committed(self, next_offset: int) -> None:
        """Forget the decisions of records before ``next_offset``: their output is committed."""
        offsets = self._memo_offsets
        done = bisect.bisect_left(offsets, next_offset)
        if done:
            del offsets[:done]
            del self._memo[:done]
        would = self.decided_would
        if would:
            for offset in [o for o in would if o < next_offset]:
                del would[offset]
        if self._dirty:
            self._dirty = [group for group in self._dirty if not group.forget(next_offset)]

    def _sender_id(self, sender: str) -> int:
        # The interned ids' dict read here, not Interned.id (table.py is not compiled: a
        # call into it is an interpreted call per counted message).
        sid = self._sender_ids.get(sender)
        if sid is None:
            sid = self._senders.id(sender)
            json = self._sender_json
            if sid == len(json):
                json.append(orjson.dumps(sender) + b",")
        return sid

    def _group(self, slot: int, cls: int, window: int) -> _Group | None:
        """The open group of the slot's window in the zone class, None when it has closed
        in stream time (a late record)."""
        rules = self.rules
        at = slot * len(rules.class_closing) + cls
        if self._cur_window[at] == window:
            group = self._cur_group[at]
        else:
            key = rules.group_key(slot, cls, window)
            found = self._groups.get(key)
            if found is None:
                close = (window + 1) * rules.slot_windows[slot] - rules.class_closing[cls]
                if close <= self.stream_time:
                    return None
                found = _Group(key, slot, window, close, rules.encoded_ids[rules.slot_ids[slot]])
                self._groups[key] = found
                if close < self._next_close:
                    self._next_close = close
            group = found
            self._cur_window[at] = window
            self._cur_group[at] = group
        if group.close <= self.stream_time:
            return None
        return group

    def _count(
        self,
        decider: Decider,
        caps: tuple[_Cap, ...],
        most: int,
        zone: int,
        local: int,
        enforce: bool,
    ) -> bool:
        """Count the message in its counters (the caps of its category, and its pair's
        ``max_per_day`` when ``most`` > 0); True when one was already at its maximum.

        With ``enforce``, a message that finds one at its maximum is not counted (it is
        blocked): the counts it added are taken back (rare: a second pass).
        """
        number = decider.number
        if number <= 0:
            return False  # no recipient number (never so for a decided record)
        cls = self.rules.zone_class[zone]
        full = self._add(decider, caps, most, cls, local, 1)
        if full and enforce:
            self._add(decider, caps, most, cls, local, -1)
        return full

    def _add(
        self, decider: Decider, caps: tuple[_Cap, ...], most: int, cls: int, local: int,
        delta: int,
    ) -> bool:  # fmt: skip
        """Add ``delta`` (1: count, -1: take back the count just made) to the message's
        counters; with 1, True when one went over its maximum."""
        number = decider.number
        tracking = self.tracking
        sid = -1
        full = False
        for cap in caps:
            group = self._group(cap.slot, cls, local // cap.window_ms)
            if group is None:
                if delta > 0:
                    self.late += 1
                continue
            if cap.per_pair:
                if sid < 0:
                    sid = self._sender_id(decider.sender)
                key = sid
            else:
                key = _NO_SENDER
            n = group.table.add(number, key, delta)
            if delta > 0:
                if n > cap.max:
                    full = True
                if tracking:
                    self._mark(group, number, key, n)
            else:
                self._take_back(group, number, key, n)
        if most > 0:
            group = self._group(self.rules.max_per_day_slot, cls, local // DAY_MS)
            if group is None:
                if delta > 0:
                    self.late += 1
            else:
                if sid < 0:
                    sid = self._sender_id(decider.sender)
                n = group.table.add(number, sid, delta)
                if delta > 0:
                    if n > most:
                        full = True
                    if tracking:
                        self._mark(group, number, sid, n)
                else:
                    self._take_back(group, number, sid, n)
        return full

    def _mark(self, group: _Group, number: int, sid: int, count: int) -> None:
        if not group.dirty_offsets:
            self._dirty.append(group)
        group.mark(number, sid, count, self._offset)

    def _take_back(self, group: _Group, number: int, sid: int, count: int) -> None:
        """After a count of (number, sid) was taken back to ``count``: no key of count 0,
        and no change to write (it was the group's last one)."""
        if count == 0:
            group.table.discard(number, sid)
        if self.tracking and group.unmark():
            self._dirty.remove(group)

    def put(self, key: CounterKey, count: int, offset: int = -1) -> bool:
        """Set a counter (a restore; tools and tests), as changed by the record at
        ``offset`` when the changelog is kept and ``offset`` >= 0. False when its rule is
        not configured (or a per-recipient one is given a sender), the count is out of range,
        or its window has closed."""
        rule, sender, number, window = key
        rules = self.rules
        if rule < 0:
            slot = rules.max_per_day_slot
        elif rule < len(rules.caps):
            slot = rule
            if sender and not rules.caps[rule].per_pair:
                return False  # never read: a per-recipient counter has no sender
        else:
            return False
        if number <= 0 or number > _TOP or not 0 < count < _COUNT_TOP:
            return False
        group = self._group(slot, rules.zone_class[rules.zone_of(number)], window)
        if group is None:
            return False
        sid = self._sender_id(sender) if sender else _NO_SENDER
        group.table.put(number, sid, count)
        if self.tracking and offset >= 0:
            self._offset = offset
            self._mark(group, number, sid, count)
        return True

    def live(self) -> int:
        """How many counters are live."""
        return sum(len(group.table) for group in self._groups.values())

    def changelog(self, first_offset: int) -> list[tuple[bytes, bytes | None]]:
        """The changelog records of a batch that starts at ``first_offset``: each counter
        its records changed, at its value now, and the stream time (no tombstones: the
        topic's retention deletes closed windows' counters, see the module doc).

        A batch decided again (a retry) writes its counters again, at their value now.
        """
        out: list[tuple[bytes, bytes | None]] = []
        json = self._sender_json
        for group in self._dirty:
            # Latest first, each key once (its latest entry has its value now), in C: one
            # call per group, not a formatted key per counter (filterd.table.encode_changes).
            encode_changes(
                group.dirty_numbers, group.dirty_senders, group.dirty_counts,
                bisect.bisect_left(group.dirty_offsets, first_offset), group.head, json,
                group.tail, _COUNTS, out,
            )  # fmt: skip
        if self.stream_time >= 0:
            out.append(self._stream_time_record())
        return out

    def changelog_bodies(self, first_offset: int) -> list[bytes]:
        """The records of :meth:`changelog`, in the same order, each as the body
        :meth:`filterd.records.RecordBatch.extend` takes: the stream's path, encoded in C
        straight to the bytes the producer batch holds."""
        # Imported here: filterd.records loads the Kafka client, which the offline
        # commands (replay) must not (tests/test_cli_imports.py); only the stream calls this.
        from filterd.records import record_body

        out: list[bytes] = []
        json = self._sender_json
        for group in self._dirty:
            encode_change_bodies(
                group.dirty_numbers, group.dirty_senders, group.dirty_counts,
                bisect.bisect_left(group.dirty_offsets, first_offset), group.head, json,
                group.tail, out,
            )  # fmt: skip
        if self.stream_time >= 0:
            out.append(record_body(*self._stream_time_record()))
        return out

    def _stream_time_record(self) -> tuple[bytes, bytes]:
        # Every batch: a batch that changed no counter may still move the stream time,
        # and a restore must close the same windows as the stream it continues.
        return STREAM_TIME_KEY, b"%d" % self.stream_time

    def restore(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Rebuild the counters from a changelog partition read in offset order (the last
        value of a key wins; None deletes it). Counters of windows closed in the restored
        stream time are left out (and deleted from the changelog with the next batch);
        those of rules no longer configured are left out. Returns how many counters are
        live."""
        latest: dict[bytes, bytes | None] = {}
        for raw_key, value in records:
            if raw_key is not None:
                latest[raw_key] = value
        stream = latest.pop(STREAM_TIME_KEY, None)
        if stream is not None:
            self.stream_time = max(self.stream_time, int(stream))
        by_id = self.rules.by_id
        for raw, value in latest.items():
            if value is None:
                continue
            try:
                fields = orjson.loads(raw)
                count = int(value)
            except (orjson.JSONDecodeError, ValueError):
                continue  # not a counter of this version: ignored
            if not (
                type(fields) is list
                and len(fields) == 4
                and type(fields[0]) is str
                and type(fields[1]) is str
                and type(fields[2]) is int
                and type(fields[3]) is int
            ):
                continue
            sender: str = fields[1]
            number: int = fields[2]
            window: int = fields[3]
            for index in by_id.get(fields[0], ()):
                self.put((index, sender, number, window), count)  # closed: left out
        return self.live()

    def drop_closed(self) -> int:
        """Drop the counters of windows closed in stream time; how many were dropped."""
        stream_time = self.stream_time
        if self._next_close > stream_time:
            return 0
        dropped = 0
        next_close = _NEVER
        for group in list(self._groups.values()):
            if group.close > stream_time:
                next_close = min(next_close, group.close)
                continue
            del self._groups[group.key]
            dropped += len(group.table)
            if group.dirty_offsets:
                self._dirty.remove(group)
        self._next_close = next_close
        # No cached group may be a dropped one.
        cur = self._cur_window
        for i in range(len(cur)):
            if self._cur_group[i].close <= stream_time:
                cur[i] = -1
        if dropped and len(self._sender_json) > self.sender_limit:
            self._reintern()
        return dropped

    def _reintern(self) -> None:
        """Intern again only the senders that live counters name: their tables and
        changes are keyed anew."""
        names = self._senders.names
        old_json = self._sender_json
        senders = Interned(first=1)
        json = [old_json[_NO_SENDER]]
        remap: dict[int, int] = {_NO_SENDER: _NO_SENDER}

        def new_id(sid: int) -> int:
            found = remap.get(sid)
            if found is None:
                found = remap[sid] = senders.id(names[sid])
                if found == len(json):
                    json.append(old_json[sid])
            return found

        caps = self.rules.caps
        for group in self._groups.values():
            slot = group.slot
            if slot < len(caps) and not caps[slot].per_pair:
                continue  # per recipient: no sender
            table = PairTable(1, 4)
            for number, sid, words in group.table.items():
                table.put(number, new_id(sid), words[0])
            group.table = table
            group.dirty_senders = [new_id(sid) for sid in group.dirty_senders]
        self._senders = senders
        self._sender_ids = senders.ids
        self._sender_json = json
        # Many live senders: keep them, and look again when they have doubled.
        self.sender_limit = max(self.sender_limit, 2 * len(json))

    def items(self) -> Iterator[tuple[CounterKey, int]]:
        """The live counters."""
        rules = self.rules
        senders = self._senders
        for group in list(self._groups.values()):
            rule = MAX_PER_DAY_RULE if group.slot == rules.max_per_day_slot else group.slot
            for number, sid, words in group.table.items():
                yield (rule, senders.name(sid), number, group.window), words[0]

    def get(self, key: CounterKey) -> int:
        """A counter's value (0: none)."""
        rule, sender, number, window = key
        rules = self.rules
        slot = rules.max_per_day_slot if rule < 0 else rule
        sid = self._senders.ids.get(sender, -1) if sender else _NO_SENDER
        if sid < 0 or number <= 0:
            return 0
        group = self._groups.get(
            rules.group_key(slot, rules.zone_class[rules.zone_of(number)], window)
        )
        return 0 if group is None else group.table.get(number, sid)
