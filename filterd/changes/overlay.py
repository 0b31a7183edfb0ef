"""The pending changes: what the changes topic says beyond the snapshot in force.

An :class:`Overlay` holds, per recipient number with pending changes, what those changes
did, as a delta on any snapshot: for the number, whether it is opted out of every sender
and whether it is on the do-not-disturb list (set, cleared, or unchanged); per (sender,
number) pair, whether it is opted out, and its consent rows (added to the snapshot's, or
replacing them after a ``consent-revoke``), reduced as a snapshot build reduces them: up to
when the latest accepted consent is valid, whether any row exists, and the smallest stated
``max_per_day``. Deciding with the snapshot and the overlay then gives the decision the
snapshot rebuilt with the changes applied in offset order would give (the property tests
compare the two), so the decision reads the snapshot only where the overlay leaves a fact
unchanged.

Each fact remembers the change that last set it (:class:`~filterd.changes.model.ChangeRef`):
an output decided by that fact carries it in ``filterd-change``.

The changes themselves are kept too (:attr:`Overlay.log`), so that a swap to a snapshot
with a newer change watermark can drop the folded ones and compute the deltas again
(:meth:`Overlay.rebase`).

Senders: a sender named by an ``opt-out`` or ``consent`` change is in the snapshot from
then on (a later ``opt-out-clear`` or ``consent-revoke`` does not make it unknown again).

Memory: one :class:`NumberChanges` (plus one :class:`PairChanges` per pair) per number with
pending changes, and the log. This is plain Python objects, not yet the compact columns
the 64 B per pending change goal asks for (see CHANGELOG).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Final

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

__all__ = [
    "CLEARED",
    "FOREVER",
    "NO_ACCEPTED",
    "SET",
    "UNCHANGED",
    "NumberChanges",
    "Overlay",
    "PairChanges",
    "PairConsent",
    "consent_with",
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


class PairChanges:
    """What the pending changes did to one (sender, number) pair."""

    __slots__ = ("any_row", "cap", "consent", "consent_ref", "optout", "optout_ref", "until")

    def __init__(self) -> None:
        self.optout = UNCHANGED
        self.optout_ref: ChangeRef | None = None
        #: CONSENT_UNCHANGED, CONSENT_ADDED (rows added to the snapshot's) or CONSENT_REPLACED.
        self.consent = CONSENT_UNCHANGED
        #: Of the rows the changes hold: latest accepted validity (epoch ms), or NO_ACCEPTED.
        self.until = NO_ACCEPTED
        #: The changes hold at least one consent row (of any method).
        self.any_row = False
        #: The smallest ``max_per_day`` of their accepted rows (0: none stated).
        self.cap = 0
        self.consent_ref: ChangeRef | None = None


class NumberChanges:
    """What the pending changes did to one recipient number."""

    __slots__ = ("dnd", "dnd_ref", "global_optout", "global_ref", "pairs")

    def __init__(self) -> None:
        self.global_optout = UNCHANGED
        self.global_ref: ChangeRef | None = None
        self.dnd = UNCHANGED
        self.dnd_ref: ChangeRef | None = None
        self.pairs: dict[str, PairChanges] = {}


def min_cap(a: int, b: int) -> int:
    """The smaller stated ``max_per_day`` (0 is none stated)."""
    if not a:
        return b
    if not b:
        return a
    return min(a, b)


#: A pair's consent facts: (latest accepted validity in epoch ms or NO_ACCEPTED, any consent
#: row of any method, smallest stated ``max_per_day`` of the accepted ones or 0).
PairConsent = tuple[int, bool, int]


def consent_with(snapshot: PairConsent, pair: PairChanges | None) -> PairConsent:
    """A pair's consent facts with its pending changes: the snapshot's facts, the changes'
    rows added to them, or the changes' rows alone after a ``consent-revoke``. The decision
    (:mod:`filterd.router`) and compaction (:mod:`filterd.snapshot.compact`) both use it."""
    if pair is None or pair.consent == CONSENT_UNCHANGED:
        return snapshot
    if pair.consent == CONSENT_REPLACED:
        return pair.until, pair.any_row, pair.cap
    until, any_row, cap = snapshot
    return max(until, pair.until), any_row or pair.any_row, min_cap(cap, pair.cap)


class Overlay:
    """The pending changes, applied in offset order (see the module doc)."""

    def __init__(self, accept: Collection[str]) -> None:
        #: Methods the snapshot in force accepts (its manifest's ``accept_methods``).
        self.accept = frozenset(accept)
        #: Numbers with pending changes. The decision's one membership test per record;
        #: the dict object stays the same for the overlay's life (deciders hold it).
        self.by_number: dict[int, NumberChanges] = {}
        #: Senders named by an ``opt-out`` or ``consent`` change.
        self.senders: set[str] = set()
        #: The pending changes, in the order applied.
        self.log: list[tuple[ChangeRef, Change]] = []
        #: The snapshot's change watermark: next offset per partition it folded in.
        self.watermark: dict[int, int] = {}

    def __len__(self) -> int:
        """Pending changes."""
        return len(self.log)

    def apply(self, change: Change, ref: ChangeRef) -> bool:
        """Apply one change (changes of a partition in offset order); False when the
        snapshot already folded it in (below its watermark)."""
        if ref.offset < self.watermark.get(ref.partition, 0):
            return False
        self.log.append((ref, change))
        self._apply(change, ref)
        return True

    def _apply(self, change: Change, ref: ChangeRef) -> None:
        state = self.by_number.get(change.number)
        if state is None:
            state = self.by_number[change.number] = NumberChanges()
        op, sender = change.op, change.sender
        if op in (DND_ADD, DND_REMOVE):
            state.dnd = SET if op == DND_ADD else CLEARED
            state.dnd_ref = ref
            return
        if sender == ALL_SENDERS:
            state.global_optout = SET if op == OPT_OUT else CLEARED
            state.global_ref = ref
            return
        pair = state.pairs.get(sender)
        if pair is None:
            pair = state.pairs[sender] = PairChanges()
        if op in (OPT_OUT, OPT_OUT_CLEAR):
            pair.optout = SET if op == OPT_OUT else CLEARED
            pair.optout_ref = ref
            if op == OPT_OUT:
                self.senders.add(sender)
        elif op == CONSENT_REVOKE:
            pair.consent = CONSENT_REPLACED
            pair.until, pair.any_row, pair.cap = NO_ACCEPTED, False, 0
            pair.consent_ref = ref
        elif op == CONSENT:
            self.senders.add(sender)
            if pair.consent == CONSENT_UNCHANGED:
                pair.consent = CONSENT_ADDED
            pair.any_row = True
            pair.consent_ref = ref
            if change.method is None or change.method in self.accept:
                until = FOREVER if change.expires_ms is None else change.expires_ms
                pair.until = max(pair.until, until)
                pair.cap = min_cap(pair.cap, change.max_per_day)

    def rebase(self, accept: Collection[str], watermark: Mapping[int, int]) -> int:
        """For a new snapshot: drop the changes below its ``watermark`` (next offset per
        partition; a partition not named folded none), take its accepted methods, and
        compute the deltas again from the rest. Returns how many changes were dropped."""
        kept = [(ref, c) for ref, c in self.log if ref.offset >= watermark.get(ref.partition, 0)]
        dropped = len(self.log) - len(kept)
        self.accept = frozenset(accept)
        self.watermark = dict(watermark)
        self.by_number.clear()
        self.senders.clear()
        self.log = []
        for ref, change in kept:
            self.apply(change, ref)
        return dropped

    def extend(self, changes: Iterable[tuple[ChangeRef, Change]]) -> None:
        for ref, change in changes:
            self.apply(change, ref)
