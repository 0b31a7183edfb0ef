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

Partial (docs/limits.md "Status"): a counter is a dict entry keyed by a tuple, about
170 bytes of RSS each, far from the 32-byte goal, and the tuple's hashing is most of
what the caps cost per record (packed int keys in an open-addressing table of
machine words would be needed for both, not done); and a pair's ``max_per_day`` is
the snapshot's one value, the smallest of all its accepted consents, expired ones
included.
"""

from __future__ import annotations

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
    __slots__ = ("categories", "index", "max", "per_pair", "window_ms")

    def __init__(
        self, index: int, categories: frozenset[str], per_pair: bool, window_ms: int, cap: int
    ) -> None:
        self.index = index
        self.categories = categories
        self.per_pair = per_pair
        self.window_ms = window_ms
        self.max = cap


class LimitRules:
    """The limits of a ``[policy]``: validated by the config, compiled here once."""

    __slots__ = (
        "_lengths", "_offsets", "_prefixes", "by_category", "by_id", "capped", "caps", "closing",
        "encoded_ids", "ids", "monitor", "quiet", "zones",
    )  # fmt: skip

    def __init__(self, policy: PolicyConfig) -> None:
        self.quiet: tuple[int, int] | None = quiet_hours_minutes(policy.quiet_hours)
        names = [policy.timezone, *sorted(set(policy.timezones.values()))]
        names = list(dict.fromkeys(names))
        self.zones: list[zoneinfo.ZoneInfo] = [zoneinfo.ZoneInfo(n) for n in names]
        #: Per zone, the offset of its latest close (see :func:`min_offset_ms`).
        self.closing: list[int] = [min_offset_ms(z) for z in self.zones]
        self._prefixes: dict[str, int] = {p: names.index(z) for p, z in policy.timezones.items()}
        self._lengths: tuple[int, ...] = tuple(
            sorted({len(p) for p in self._prefixes}, reverse=True)
        )
        self._offsets: list[dict[int, int]] = [{} for _ in self.zones]
        self.caps: tuple[_Cap, ...] = tuple(
            _Cap(i, frozenset(c.strip() for c in rule.categories), rule.per == "pair",
                 HOUR_MS if rule.window == "hour" else DAY_MS, rule.max)
            for i, rule in enumerate(policy.caps)
        )  # fmt: skip
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
        #: The start of each changelog name's counter keys: ``["<name>",`` as orjson has it.
        self.encoded_ids: dict[str, bytes] = {
            name: orjson.dumps([name])[:-1] + b"," for name in self.by_id
        }

    def zone_of(self, number: int) -> int:
        """The index in :attr:`zones` of the number's zone: the longest matching prefix."""
        if not self._lengths:
            return 0
        digits = str(number)
        prefixes = self._prefixes
        for length in self._lengths:
            zone = prefixes.get(digits[:length])
            if zone is not None:
                return zone
        return 0

    def offset(self, zone: int, at_ms: int) -> int:
        """The zone's UTC offset at ``at_ms``, in ms."""
        bucket = at_ms // _BUCKET_MS
        cache = self._offsets[zone]
        found = cache.get(bucket)
        if found is not None:
            return found
        tz = self.zones[zone]
        first = _offset(tz, bucket * _BUCKET_MS)
        if _offset(tz, (bucket + 1) * _BUCKET_MS - 1) != first:
            return _offset(tz, at_ms)  # a transition inside the bucket: not cached
        if len(cache) > 100_000:
            cache.clear()
        cache[bucket] = first
        return first


def _offset(tz: zoneinfo.ZoneInfo, at_ms: int) -> int:
    moment = datetime.fromtimestamp(at_ms // 1000, tz)
    offset = moment.utcoffset()
    return 0 if offset is None else offset // timedelta(milliseconds=1)


#: A counter's key: (cap rule index or MAX_PER_DAY_RULE, sender or "", number, window index).
CounterKey = tuple[int, str, int, int]


class PartitionLimits:
    """Step 4 and monitor mode, with the counters of one input partition."""

    __slots__ = (
        "_closes", "_key_closes", "_keys", "_offset", "_senders", "counters", "decided",
        "decided_would", "dirty", "dropped",
        "high", "late", "read_ms", "rules", "stream_time", "tracking", "would_block",
    )  # fmt: skip

    def __init__(self, rules: LimitRules) -> None:
        self.rules = rules
        #: Delivered messages per (rule, subject, window), of open windows.
        self.counters: dict[CounterKey, int] = {}
        # close time (UTC ms) -> the keys of windows closing then, for dropping them.
        self._closes: dict[int, list[CounterKey]] = {}
        self._keys: list[CounterKey] = []
        # When the window of each of _keys closes (UTC ms), in the same order.
        self._key_closes: list[int] = []
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
        #: offset -> final outcome of records decided and not yet committed: a record
        #: fetched again (a retried batch, a refetch after a rebalance that kept the
        #: partition) gets the decision it had, and is not counted twice.
        self.decided: dict[int, Outcome] = {}
        #: offset -> would-block reason, of those of :attr:`decided` monitor mode let through
        #: (few: no tuple per record).
        self.decided_would: dict[int, str] = {}
        #: The highest offset in :attr:`decided` (-1: none).
        self.high: int = -1
        #: The stream keeps a changelog (:meth:`changelog`): counters changed and not yet
        #: committed (key -> the last offset that changed it), counters dropped since.
        self.tracking: bool = False
        self.dirty: dict[CounterKey, int] = {}
        self.dropped: list[CounterKey] = []
        self._offset: int = -1
        # sender -> its JSON (orjson), for the changelog keys; bounded.
        self._senders: dict[str, bytes] = {}

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
            self._collect(decider, at_ms, True, False)
            self._count()
            return MONITORED
        require = outcome is not EXEMPT_CATEGORY
        most = decider.max_per_day() if require else 0
        if (
            not most
            and decider.category not in rules.capped
            and (not require or rules.quiet is None)
        ):
            return outcome  # nothing to check, nothing counts it: the common case
        zone = rules.zone_of(decider.number)
        local = at_ms + rules.offset(zone, at_ms)
        blocked: Outcome | None = None
        quiet = rules.quiet
        if require and quiet is not None:
            minute = (local // 60_000) % 1440
            start, end = quiet
            if (start <= minute < end) if start < end else (minute >= start or minute < end):
                blocked = QUIET_HOURS
        if blocked is None and self._collect(decider, at_ms, require, True, zone, local, most):
            blocked = FREQUENCY_CAP
        if blocked is None:
            self._count()
            return outcome
        if blocked.reason in rules.monitor:
            self.would_block = blocked.reason
            if blocked is QUIET_HOURS:
                self._collect(decider, at_ms, require, False, zone, local, most)
            self._count()
            return MONITORED
        return blocked

    def apply_record(self, decider: Decider, outcome: Outcome, at_ms: int, offset: int) -> Outcome:
        """:meth:`apply` for the record at ``offset`` of the partition, once per offset."""
        if offset <= self.high:
            seen = self.decided.get(offset)
            if seen is not None:
                self.would_block = self.decided_would.get(offset)
                return seen
        self._offset = offset
        final = self.apply(decider, outcome, at_ms)
        if final.route != INVALID:
            self.decided[offset] = final
            would = self.would_block
            if would is not None:
                self.decided_would[offset] = would
            if offset > self.high:
                self.high = offset
        return final

    def committed(self, next_offset: int) -> None:
        """Forget the decisions of records before ``next_offset``: their output is committed."""
        decided = self.decided
        # One pass in offset order (the insertion order): popping the first key over and
        # over would rescan the deleted slots each time.
        done = []
        for offset in decided:
            if offset >= next_offset:
                break
            done.append(offset)
        for offset in done:
            del decided[offset]
        would = self.decided_would
        if would:
            for offset in [o for o in would if o < next_offset]:
                del would[offset]
        dirty = self.dirty
        if dirty:
            for key in [k for k, at in dirty.items() if at < next_offset]:
                del dirty[key]

    def _collect(
        self,
        decider: Decider,
        at_ms: int,
        require: bool,
        check: bool,
        zone: int = -1,
        local: int = 0,
        most: int = -1,
    ) -> bool:
        """Put the keys of the counters the message counts in into ``_keys``.

        With ``check``, True when one of them is already at its maximum. ``most``: the
        pair's ``max_per_day`` when already looked up (-1: not yet).
        """
        keys = self._keys
        keys.clear()
        closes = self._key_closes
        closes.clear()
        rules = self.rules
        caps = rules.by_category.get(decider.category, ())
        if not caps and not require:
            return False
        if zone < 0:
            zone = rules.zone_of(decider.number)
            local = at_ms + rules.offset(zone, at_ms)
        closing = rules.closing[zone]
        stream_time = self.stream_time
        counters = self.counters
        number = decider.number
        full = False
        for cap in caps:
            window = local // cap.window_ms
            close = (window + 1) * cap.window_ms - closing
            if close <= stream_time:
                self.late += 1
                continue
            key = (cap.index, decider.sender if cap.per_pair else "", number, window)
            keys.append(key)
            closes.append(close)
            if check and counters.get(key, 0) >= cap.max:
                full = True
        if require:
            if most < 0:
                most = decider.max_per_day()
            if most > 0:
                window = local // DAY_MS
                close = (window + 1) * DAY_MS - closing
                if close <= stream_time:
                    self.late += 1
                else:
                    key = (MAX_PER_DAY_RULE, decider.sender, number, window)
                    keys.append(key)
                    closes.append(close)
                    if check and counters.get(key, 0) >= most:
                        full = True
        return full

    def _count(self) -> None:
        counters = self.counters
        closes = self._key_closes
        tracking = self.tracking
        for i, key in enumerate(self._keys):
            n = counters.get(key)
            if n is None:
                counters[key] = 1
                self._closes.setdefault(closes[i], []).append(key)
            else:
                counters[key] = n + 1
            if tracking:
                self.dirty[key] = self._offset
        self._keys.clear()
        closes.clear()

    def _close_of(self, key: CounterKey) -> int:
        """When the counter's window closes in stream time (UTC ms)."""
        rules = self.rules
        window_ms = DAY_MS if key[0] < 0 else rules.caps[key[0]].window_ms
        return (key[3] + 1) * window_ms - rules.closing[rules.zone_of(key[2])]

    def changelog(self, first_offset: int) -> list[tuple[bytes, bytes | None]]:
        """The changelog records of a batch that starts at ``first_offset``: each counter
        its records changed, at its value now (None: dropped), and the stream time.

        A batch decided again (a retry) writes its counters again, at their value now.
        """
        out: list[tuple[bytes, bytes | None]] = []
        counters = self.counters
        for key, at in self.dirty.items():
            if at >= first_offset:
                n = counters.get(key)
                out.append((self._encode(key), None if n is None else b"%d" % n))
        for key in self.dropped:
            out.append((self._encode(key), None))
        self.dropped.clear()
        if self.stream_time >= 0:
            # Every batch: a batch that changed no counter may still move the stream time,
            # and a restore must close the same windows as the stream it continues.
            out.append((STREAM_TIME_KEY, b"%d" % self.stream_time))
        return out

    def _encode(self, key: CounterKey) -> bytes:
        """``orjson.dumps([rule id, sender, number, window])``, byte for byte, without
        building the list: the rule's and the sender's JSON are encoded once each."""
        rule = key[0]
        names = self.rules.encoded_ids
        prefix = names[MAX_PER_DAY_ID] if rule < 0 else names[self.rules.ids[rule]]
        sender = key[1]
        senders = self._senders
        quoted = senders.get(sender)
        if quoted is None:
            quoted = orjson.dumps(sender)
            if len(senders) < 100_000:
                senders[sender] = quoted
        return b"%s%s,%d,%d]" % (prefix, quoted, key[2], key[3])

    def restore(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Rebuild the counters from a changelog partition read in offset order (the last
        value of a key wins; None deletes it). Counters of rules no longer configured, or
        of windows closed in the restored stream time, are left out (and deleted from the
        changelog with the next batch). Returns how many counters are live."""
        latest: dict[bytes, bytes | None] = {}
        for raw_key, value in records:
            if raw_key is not None:
                latest[raw_key] = value
        stream = latest.pop(STREAM_TIME_KEY, None)
        if stream is not None:
            self.stream_time = max(self.stream_time, int(stream))
        by_id = self.rules.by_id
        counters = self.counters
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
                key: CounterKey = (index, sender, number, window)
                close = self._close_of(key)
                if close <= self.stream_time:
                    self.dropped.append(key)
                    continue
                counters[key] = count
                self._closes.setdefault(close, []).append(key)
        return len(counters)

    def drop_closed(self) -> int:
        """Drop the counters of windows closed in stream time; how many were dropped."""
        dropped = 0
        stream_time = self.stream_time
        counters = self.counters
        for close in [c for c in self._closes if c <= stream_time]:
            for key in self._closes.pop(close):
                if counters.pop(key, None) is not None:
                    dropped += 1
                    if self.tracking:
                        self.dropped.append(key)
                        self.dirty.pop(key, None)
        return dropped

    def items(self) -> Iterator[tuple[CounterKey, int]]:
        """The live counters."""
        return iter(self.counters.items())
