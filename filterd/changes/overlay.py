"""The pending changes: what the changes topic says beyond the snapshot in force.

An :class:`Overlay` holds, per recipient number with pending changes, what those changes
did, as a delta on any snapshot (the *facts*): for the number, whether it is opted out of
every sender and whether it is on the do-not-disturb list (set, cleared, or unchanged); per
(sender, number) pair, whether it is opted out, and its consent rows (added to the
snapshot's, or replacing them after a ``consent-revoke``), reduced as a snapshot build
reduces them: up to when the latest accepted consent is valid, whether any row exists, and
the ``max_per_day`` schedule (the smallest stated by the consents valid at each time,
:data:`filterd.snapshot.store.CapSchedule`). Deciding with the snapshot and the overlay then gives
the decision the snapshot rebuilt with the changes applied in offset order would give (the
property tests compare the two), so the decision reads the snapshot only where the overlay
leaves a fact unchanged.

Each fact remembers the change that last set it, packed in the same 64-bit word (partition
and offset; the topic is the feed's one changes topic, :attr:`Overlay.topic`): an output
decided by that fact carries it in ``filterd-change``.

Layout (:class:`filterd.table.PairTable`, flat arrays, no Python object per fact):

* :attr:`Overlay.table`, two signed 64-bit words per key. Key (number, 0): the number's
  global opt-out and do-not-disturb facts. Key (number, sender id): the pair's opt-out fact
  and its consent fact. A flag fact is 0 (unchanged) or ``(ref + 1) << 1 | set``; a consent
  fact is 0 (unchanged) or ``(ref + 1) << 5 | kind << 3 | mode << 1 | any_row`` with ``mode``
  added/replaced and ``kind`` saying where the validity and cap are: no accepted row and no
  cap, accepted forever without a cap, or in :attr:`Overlay.terms`;
* :attr:`Overlay.terms`: (number, sender id) -> (until, cap) of the pairs whose consent fact
  says so (an expiry or a cap: the minority); cap -1 when it changes with time (a capped
  consent expires before the pair's last one, rare), its schedule in :attr:`Overlay.schedules`;
* sender names interned to ids (:attr:`Overlay.interned`); id 0 is the number's own facts;
* :attr:`Overlay.filter`: a one-hash filter of the numbers with facts (the bit of
  :func:`filterd.prefilter.slot`, 2**24 bits, 2 MiB however many facts), set when a fact is
  applied and rebuilt by :meth:`Overlay.rebase`: the decision tests one bit and looks the
  tables up only for a number whose bit is set (at 1 M facts, ~6 % of the others).

``ref`` is ``partition << 44 | offset``: offsets below 2**44 (17 trillion) and partitions
below 2**14 (a change beyond raises ValueError; the feed skips it, counted and logged).

No log of the changes is kept. A swap to a snapshot with a newer watermark drops each fact
whose last change is below it (:meth:`Overlay.rebase`; the stream spreads the walk over the
batches that follow the swap, :meth:`Overlay.walk`, so a swap never stalls the loop): the
changes topic is keyed by recipient, so every change of a number is in one partition, and a
fact whose last change was folded in had all its changes folded in. A fact whose last change
is at or above it is kept as it is: the reduction is idempotent (until = max, any row = or,
cap schedule = that of the union, and a ``consent-revoke`` that replaced the rows is folded
in too), so adding to the new snapshot what it already holds changes nothing. When the new
snapshot accepts other methods, or its watermark goes back, the facts cannot be recomputed
without the changes:
:meth:`rebase` clears them and the feed reads the changes topic again from the watermark
(:meth:`filterd.changes.feed.ChangeFeed.rebase`), deciding nothing until caught up.

Senders: a sender named by an ``opt-out`` or ``consent`` change is in the snapshot from
then on (a later ``opt-out-clear`` or ``consent-revoke`` does not make it unknown again).

Memory: ``len(overlay)`` counts the facts held (a number's or a pair's, each once however
many changes set it). An opt-out of a number of its own costs one key of
:attr:`Overlay.table`: 28 bytes per slot at a load of 0.53-0.8, 35-53 bytes, plus the
filter's 2 MiB (measured RSS at 1 M: about 50 bytes per pending change, ``python -m
benchmarks.changes_memory``, goal 64); a consent with an expiry or a cap one key of
:attr:`Overlay.terms` more.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Final, NamedTuple

from filterd.changes.model import (
    ALL_SENDERS,
    CONSENT,
    CONSENT_REVOKE,
    DND_ADD,
    DND_REMOVE,
    OPT_OUT,
    OPT_OUT_CLEAR,
    Change,
    ChangeRef,
)
from filterd.prefilter import slot
from filterd.snapshot.store import NO_CAP, CapSchedule, cap_schedule, simple_cap
from filterd.table import Interned, PairTable

__all__ = [
    "CLEARED",
    "CONSENT_SHIFT",
    "FLAG_SHIFT",
    "FOREVER",
    "NO_ACCEPTED",
    "NUMBER",
    "SET",
    "UNCHANGED",
    "Fact",
    "Overlay",
    "PairConsent",
    "consent_with",
    "fits",
    "flag_of",
]  # fmt: skip

#: A flag fact: the changes left it alone, set it, or cleared it.
UNCHANGED: Final = -1
CLEARED: Final = 0
SET: Final = 1
#: ``until`` of consent rows with an accepted consent that never expires.
FOREVER: Final = (1 << 63) - 1
#: ``until`` of consent rows without an accepted one.
NO_ACCEPTED: Final = -1
#: How a pair's consent rows relate to the snapshot's.
CONSENT_UNCHANGED: Final = 0
CONSENT_ADDED: Final = 1
CONSENT_REPLACED: Final = 2
#: The sender id of a number's own facts (global opt-out, do-not-disturb).
NUMBER: Final = 0
#: Words of a key of :attr:`Overlay.table`.
GLOBAL_WORD: Final = 0
DND_WORD: Final = 1
OPTOUT_WORD: Final = 0
CONSENT_WORD: Final = 1
#: Bits below the ``ref + 1`` of a flag fact and of a consent fact (:meth:`Overlay.ref`).
FLAG_SHIFT: Final = 1
CONSENT_SHIFT: Final = 5
#: Where a consent fact's (until, cap) are.
_KIND_NONE: Final = 0  # (NO_ACCEPTED, 0)
_KIND_FOREVER: Final = 1  # (FOREVER, 0)
_KIND_TERMS: Final = 2  # in Overlay.terms
_OFFSET_BITS: Final = 44
_OFFSET_MASK: Final = (1 << _OFFSET_BITS) - 1
_PARTITIONS: Final = 1 << 14
#: Bits of :attr:`Overlay.filter` (a power of two).
FILTER_BITS: Final = 1 << 24
#: Slots of the facts' table a swap's walk goes over per batch (:meth:`Overlay.walk`):
#: 5-20 ms of CPU (measured at 1 M facts, half of them folded: 124 steps, median 5.4 ms,
#: max 19.8 ms, 0.79 s in all), never one stall of the loop.
WALK_SLOTS: Final = 16_384


#: A pair's consent facts: (latest accepted validity in epoch ms or NO_ACCEPTED, any consent
#: row of any method, the ``max_per_day`` schedule of the accepted ones,
#: :data:`filterd.snapshot.store.CapSchedule`).
PairConsent = tuple[int, bool, CapSchedule]


def consent_with(snapshot: PairConsent, mode: int, changes: PairConsent) -> PairConsent:
    """A pair's consent facts with its pending changes (``mode`` and their facts): the
    snapshot's facts, the changes' rows added to them, or the changes' rows alone after a
    ``consent-revoke``. The decision (:mod:`filterd.router`) and compaction
    (:mod:`filterd.snapshot.compact`) both use it."""
    if mode == CONSENT_UNCHANGED:
        return snapshot
    if mode == CONSENT_REPLACED:
        return changes
    until, any_row, schedule = snapshot
    merged = cap_schedule((*schedule, *changes[2])) if changes[2] else schedule
    return max(until, changes[0]), any_row or changes[1], merged


def flag_of(word: int) -> int:
    """UNCHANGED, SET or CLEARED: the state of a flag fact."""
    return UNCHANGED if not word else word & 1


def fits(partition: int, offset: int) -> bool:
    """Whether a change at ``partition``/``offset`` can be held (see the module doc)."""
    return 0 <= partition < _PARTITIONS and 0 <= offset <= _OFFSET_MASK


def _mark(bits: bytearray, number: int) -> None:
    """Set the number's bit of a filter (:attr:`Overlay.filter`)."""
    bit = slot(number, FILTER_BITS)
    bits[bit >> 3] |= 1 << (bit & 7)


def _ref_plus_one(partition: int, offset: int) -> int:
    if not fits(partition, offset):
        raise ValueError(f"change {partition}/{offset} out of the overlay's range")
    return (partition << _OFFSET_BITS | offset) + 1


class Fact(NamedTuple):
    """One fact, unpacked (:meth:`Overlay.facts`): a number's (``sender`` "") or a pair's."""

    number: int
    sender: str
    #: Global opt-out (a number's) or the pair's opt-out: UNCHANGED, SET or CLEARED.
    optout: int
    #: Do-not-disturb (a number's; UNCHANGED for a pair).
    dnd: int
    #: CONSENT_UNCHANGED, CONSENT_ADDED or CONSENT_REPLACED (a pair's).
    consent: int
    #: The changes' consent facts (meaningful unless ``consent`` is CONSENT_UNCHANGED).
    rows: PairConsent


class Overlay:
    """The pending changes, applied in offset order (see the module doc)."""

    def __init__(self, accept: Collection[str], topic: str = "") -> None:
        #: Methods the snapshot in force accepts (its manifest's ``accept_methods``).
        self.accept = frozenset(accept)
        #: The changes topic (the topic of every change applied).
        self.topic = topic
        #: The facts (see the module doc). The objects stay the same for the overlay's
        #: life: deciders hold them.
        self.table = PairTable(2, 8)
        self.terms = PairTable(2, 8)
        #: The cap schedules of the few pairs whose cap changes with time (their cap word
        #: in :attr:`terms` is -1).
        self.schedules: dict[tuple[int, int], CapSchedule] = {}
        #: A bit per number with facts (see the module doc); may hold stale bits.
        self.filter = bytearray(FILTER_BITS >> 3)
        #: Sender names interned to ids (id 0: a number's own facts).
        self.interned = Interned(first=1)
        #: Senders named by an ``opt-out`` or ``consent`` change.
        self.senders: set[str] = set()
        #: The snapshot's change watermark: next offset per partition it folded in.
        self.watermark: dict[int, int] = {}
        self._facts = 0
        # A swap's walk (rebase_start, walk): the scan's cursor (-1: not scanning), the
        # table's growths when it started, the filter it builds, the (number, sender id)
        # keys found stale, and the next of them to drop (-1: not dropping).
        self._cursor = -1
        self._resizes = 0
        self._next_filter: bytearray | None = None
        self._stale: list[tuple[int, int]] = []
        self._dropping = -1
        #: Facts the last walk dropped so far.
        self.walked = 0

    def __len__(self) -> int:
        """Facts held (a number's global opt-out or do-not-disturb, a pair's opt-out or
        consent), each counted once however many changes set it."""
        return self._facts

    def _put(self, number: int, sid: int, word: int, value: int) -> None:
        if not self.table.get(number, sid, word):
            self._facts += 1
        self.table.put(number, sid, value, word)

    def apply(self, change: Change, ref: ChangeRef) -> bool:
        """Apply one change (changes of a partition in offset order); False when the
        snapshot already folded it in (below its watermark)."""
        if ref.offset < self.watermark.get(ref.partition, 0):
            return False
        self.topic = ref.topic
        here = _ref_plus_one(ref.partition, ref.offset)
        op, sender, number = change.op, change.sender, change.number
        _mark(self.filter, number)
        if self._next_filter is not None:
            _mark(self._next_filter, number)
        if op in (DND_ADD, DND_REMOVE):
            self._put(number, NUMBER, DND_WORD, here << FLAG_SHIFT | (op == DND_ADD))
            return True
        if sender == ALL_SENDERS:
            self._put(number, NUMBER, GLOBAL_WORD, here << FLAG_SHIFT | (op == OPT_OUT))
            return True
        sid = self.interned.id(sender)
        if op in (OPT_OUT, OPT_OUT_CLEAR):
            self._put(number, sid, OPTOUT_WORD, here << FLAG_SHIFT | (op == OPT_OUT))
            if op == OPT_OUT:
                self.senders.add(sender)
        elif op == CONSENT_REVOKE:
            self._set_consent(number, sid, here, CONSENT_REPLACED, (NO_ACCEPTED, False, NO_CAP))
        elif op == CONSENT:
            self.senders.add(sender)
            mode, (until, _any, schedule) = self._consent(number, sid)
            if mode == CONSENT_UNCHANGED:
                mode = CONSENT_ADDED
            if change.method is None or change.method in self.accept:
                expires = FOREVER if change.expires_ms is None else change.expires_ms
                until = max(until, expires)
                if change.max_per_day:
                    schedule = cap_schedule(((expires, change.max_per_day), *schedule))
            self._set_consent(number, sid, here, mode, (until, True, schedule))
        return True

    def _consent(self, number: int, sid: int) -> tuple[int, PairConsent]:
        word = self.table.get(number, sid, CONSENT_WORD)
        if word and self.walking and self._folded(word >> CONSENT_SHIFT):
            # Folded into the snapshot, and the swap's walk has not dropped it yet: a new
            # change starts from the snapshot, as it would once the walk has gone by.
            word = 0
        return self.consent_of(number, sid, word)

    def consent_of(self, number: int, sid: int, word: int) -> tuple[int, PairConsent]:
        """(mode, the changes' consent facts) of a pair's consent fact ``word``."""
        if not word:
            return CONSENT_UNCHANGED, (NO_ACCEPTED, False, NO_CAP)
        kind = word >> 3 & 3
        schedule = NO_CAP
        if kind == _KIND_TERMS:
            until, cap = self.terms.get(number, sid, 0), self.terms.get(number, sid, 1)
            if cap > 0:
                schedule = ((until, cap),)
            elif cap < 0:
                schedule = self.schedules[number, sid]
        else:
            until = FOREVER if kind == _KIND_FOREVER else NO_ACCEPTED
        return word >> 1 & 3, (until, bool(word & 1), schedule)

    def _set_consent(self, number: int, sid: int, here: int, mode: int, rows: PairConsent) -> None:
        until, any_row, schedule = rows
        if not schedule and until == NO_ACCEPTED:
            kind = _KIND_NONE
        elif not schedule and until == FOREVER:
            kind = _KIND_FOREVER
        else:
            kind = _KIND_TERMS
            cap = simple_cap(schedule, until)
            self.terms.put_row(number, sid, (until, cap))
            if cap < 0:
                self.schedules[number, sid] = schedule
            elif self.schedules:
                self.schedules.pop((number, sid), None)
        if kind != _KIND_TERMS:
            self._drop_terms(number, sid)
        word = here << CONSENT_SHIFT | kind << 3 | mode << 1 | any_row
        self._put(number, sid, CONSENT_WORD, word)

    def _drop_terms(self, number: int, sid: int) -> None:
        self.terms.discard(number, sid)
        if self.schedules:
            self.schedules.pop((number, sid), None)

    def ref(self, word: int, shift: int) -> ChangeRef:
        """The change that set a fact ``word`` (``shift``: FLAG_SHIFT or CONSENT_SHIFT)."""
        packed = (word >> shift) - 1
        return ChangeRef(self.topic, packed >> _OFFSET_BITS, packed & _OFFSET_MASK)

    def facts(self) -> Iterator[Fact]:
        """Every number and pair with facts, unpacked (in no particular order)."""
        names = self.interned.names
        for number, sid, (first, second) in self.table.items():
            if sid == NUMBER:
                rows: PairConsent = (NO_ACCEPTED, False, NO_CAP)
                yield Fact(number, "", flag_of(first), flag_of(second), CONSENT_UNCHANGED, rows)
            else:
                mode, rows = self.consent_of(number, sid, second)
                yield Fact(number, names[sid], flag_of(first), UNCHANGED, mode, rows)

    def rebase(self, accept: Collection[str], watermark: Mapping[int, int]) -> int:
        """For a new snapshot: drop the facts whose last change is below its ``watermark``
        (next offset per partition; a partition not named folded none) and return how many.
        When the facts cannot be kept (the snapshot accepts other methods, or its watermark
        goes back) they are all cleared and -1 is returned: the changes from ``watermark``
        on must be applied again.

        The whole walk at once (tests and tools); the stream spreads it between
        batches instead (:meth:`rebase_start`, :meth:`walk`)."""
        if self.rebase_start(accept, watermark) < 0:
            return -1
        before = self._facts
        while not self.walk(1 << 40):
            pass
        return before - self._facts

    def rebase_start(self, accept: Collection[str], watermark: Mapping[int, int]) -> int:
        """Put a new snapshot's watermark and methods in force, and start the walk that drops
        the facts it folded in (:meth:`walk`). Returns 1 when a walk started, 0 when there is
        nothing to drop, -1 when every fact was cleared (as :meth:`rebase`).

        Until the walk has gone over a fact, the fact stays and the decision still reads it:
        the new snapshot folded in every change that fact holds, and applying a fact to a
        snapshot that holds it changes no decision (the module doc), so only memory waits;
        an output such a fact decides names its change in ``filterd-change``, a change the
        new version holds."""
        accept = frozenset(accept)
        back = any(watermark.get(p, 0) < offset for p, offset in self.watermark.items())
        if back or (accept != self.accept and self._facts):
            self.clear()
            self.accept = accept
            self.watermark = dict(watermark)
            return -1
        self.accept = accept
        self.watermark = dict(watermark)
        if not watermark or not self._facts:
            return 0
        # A walk under way starts again: the watermark only grew, so what it found stale
        # is stale still and is found again.
        self._cursor = 0
        self._resizes = self.table.resizes
        self._next_filter = bytearray(len(self.filter))
        self._stale = []
        self._dropping = -1
        self.walked = 0
        return 1

    def walk(self, slots: int = WALK_SLOTS) -> bool:
        """One step of the walk :meth:`rebase_start` began, over up to ``slots`` slots of
        the facts' table; True when no walk is under way (any more).

        First the table is scanned (nothing removed, so no fact moves under the scan; a
        growth re-places every key, and the scan starts again): the facts found stale are
        listed, and a new filter of the numbers with facts to keep is built (new facts
        applied meanwhile set their bit in it too). When the scan ends, the filter is put in
        force: a number with stale facts only is read from the snapshot from then on. Then
        the stale facts are dropped, ``slots`` at a time, each checked again (a change since
        may have set it anew)."""
        if self._cursor >= 0:
            if self.table.resizes != self._resizes:
                self._cursor = 0
                self._resizes = self.table.resizes
                self._stale = []
            self._cursor, found = self.table.scan(self._cursor, slots)
            bits = self._next_filter
            assert bits is not None
            stale = self._stale
            for number, sid, (first, second) in found:
                drop_first, drop_second = self._stale_words(sid, first, second)
                if (first and not drop_first) or (second and not drop_second):
                    _mark(bits, number)
                if drop_first or drop_second:
                    stale.append((number, sid))
            if self._cursor < 0:
                self.filter[:] = bits  # the same object: deciders hold it
                self._next_filter = None
                self._dropping = 0
            return False
        if self._dropping < 0:
            return True
        start = self._dropping
        end = min(len(self._stale), start + slots)
        table = self.table
        for number, sid in self._stale[start:end]:
            row = table.row(number, sid)
            if row is None:
                continue
            first, second = row
            drop_first, drop_second = self._stale_words(sid, first, second)
            if not drop_first and not drop_second:
                continue
            dropped = drop_first + drop_second
            self._facts -= dropped
            self.walked += dropped
            if (drop_first or not first) and (drop_second or not second):
                table.discard(number, sid)
            elif drop_first:
                table.put(number, sid, 0, 0)
            else:
                table.put(number, sid, 0, 1)
            if drop_second and sid != NUMBER:
                self._drop_terms(number, sid)
        if end < len(self._stale):
            self._dropping = end
            return False
        self._stale = []
        self._dropping = -1
        return True

    @property
    def walking(self) -> bool:
        """Whether a swap's walk is under way."""
        return self._cursor >= 0 or self._dropping >= 0

    def _stale_words(self, sid: int, first: int, second: int) -> tuple[bool, bool]:
        """Which of a key's two fact words the snapshot in force folded in (a word of 0 is
        no fact)."""
        shift = FLAG_SHIFT if sid == NUMBER else CONSENT_SHIFT
        return (
            bool(first) and self._folded(first >> FLAG_SHIFT),
            bool(second) and self._folded(second >> shift),
        )

    def _folded(self, ref_plus_one: int) -> bool:
        packed = ref_plus_one - 1
        return (packed & _OFFSET_MASK) < self.watermark.get(packed >> _OFFSET_BITS, 0)

    def clear(self) -> None:
        """Forget every fact and the senders named by changes (the tables stay the same
        objects)."""
        self.table.clear()
        self.terms.clear()
        self.schedules.clear()
        self.filter[:] = bytes(len(self.filter))
        self.senders.clear()
        self._facts = 0
        self._cursor = self._dropping = -1
        self._next_filter = None
        self._stale = []

    def extend(self, changes: Iterable[tuple[ChangeRef, Change]]) -> None:
        for ref, change in changes:
            self.apply(change, ref)
