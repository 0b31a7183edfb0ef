"""The decision: one input value in, one (route, reason) out.

This module is the pure core shared by the stream (``filterd run``), the
offline ``filterd replay`` and the audit tools: no I/O, no asyncio. Parsing,
validation and policy follow docs/contract.md to the letter; the reason
strings below are a public interface and are never renamed.

The service calls :meth:`Decider.decide` once per record inside its batch
loop, so the function is written for speed: outcomes are preallocated tuples,
attribute lookups are bound once per :class:`Decider`, and the common case (a
well-formed event) takes a single fast path.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Container, Mapping, Sequence
from typing import Final, NamedTuple, Protocol

import orjson

from filterd.changes.model import ChangeRef
from filterd.changes.overlay import (
    CONSENT_REPLACED,
    CONSENT_SHIFT,
    CONSENT_UNCHANGED,
    CONSENT_WORD,
    FLAG_SHIFT,
    FOREVER,
    NO_ACCEPTED,
    NUMBER,
    Overlay,
    PairConsent,
    consent_with,
)
from filterd.config import PolicyConfig
from filterd.errors import InvalidNumber
from filterd.logs import RateLimitedLogger
from filterd.markers import MarkerMatcher, matcher
from filterd.numbers import MAX_DIGITS, looks_without_plus, normalize, without_plus_ranges
from filterd.snapshot.store import NO_CAP, CapSchedule, cap_at
from filterd.table import PairTable

log = logging.getLogger(__name__)
_internal_errors = RateLimitedLogger(log, 10.0, level=logging.ERROR)


class _Traceback:
    """Formats an exception's traceback only if the line is actually logged."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __str__(self) -> str:
        return "".join(traceback.format_exception(self.exc)).rstrip()


DELIVER: Final = "deliver"
BLOCK: Final = "block"
INVALID: Final = "invalid"
ROUTES: tuple[str, ...] = (DELIVER, BLOCK, INVALID)


class Outcome(NamedTuple):
    """The decision for one record."""

    #: ``deliver``, ``block`` or ``invalid``: which output topic it goes to.
    route: str
    #: Why, as one of the reason strings of docs/contract.md.
    reason: str


# Every outcome that exists, preallocated: the hot loop returns these objects
# and the service keys its per-outcome header cache and counters by them.
CONSENT: Final = Outcome(DELIVER, "consent")
EXEMPT_CATEGORY: Final = Outcome(DELIVER, "exempt-category")
OPTED_OUT: Final = Outcome(BLOCK, "opted-out")
UNKNOWN_SENDER: Final = Outcome(BLOCK, "unknown-sender")
RECIPIENT_DND: Final = Outcome(BLOCK, "recipient-dnd")
NO_CONSENT: Final = Outcome(BLOCK, "no-consent")
CONSENT_EXPIRED: Final = Outcome(BLOCK, "consent-expired")
CONSENT_NOT_EXPLICIT: Final = Outcome(BLOCK, "consent-not-explicit")
OVERSIZED: Final = Outcome(INVALID, "oversized")
MALFORMED_JSON: Final = Outcome(INVALID, "malformed-json")
MISSING_FIELD: Final = Outcome(INVALID, "missing-field")
BAD_FIELD_TYPE: Final = Outcome(INVALID, "bad-field-type")
BAD_RECIPIENT: Final = Outcome(INVALID, "bad-recipient")
INTERNAL_ERROR: Final = Outcome(INVALID, "internal-error")
# Step 4 (filterd.limits) and monitor mode.
QUIET_HOURS: Final = Outcome(BLOCK, "quiet-hours")
FREQUENCY_CAP: Final = Outcome(BLOCK, "frequency-cap")
MONITORED: Final = Outcome(DELIVER, "monitored")

OUTCOMES: tuple[Outcome, ...] = (
    CONSENT, EXEMPT_CATEGORY, OPTED_OUT, UNKNOWN_SENDER, RECIPIENT_DND, NO_CONSENT,
    CONSENT_EXPIRED, CONSENT_NOT_EXPLICIT, QUIET_HOURS, FREQUENCY_CAP, MONITORED,
    OVERSIZED, MALFORMED_JSON, MISSING_FIELD, BAD_FIELD_TYPE, BAD_RECIPIENT, INTERNAL_ERROR,
)  # fmt: skip
#: reason -> route, for validating and reading output records.
REASONS: Mapping[str, str] = {o.reason: o.route for o in OUTCOMES}

REQUIRE_CONSENT: Final = "require-consent"
EXEMPT: Final = "exempt"
#: The category a message with a marketing marker is decided as (step 2).
MARKETING: Final = "marketing"


class TermsLookup(Protocol):
    """A sender's consents with terms (filterd.snapshot.store.ConsentTerms)."""

    @property
    def numbers(self) -> RankedNumbers: ...

    @property
    def until(self) -> Sequence[int]:
        """Up to when an accepted consent is valid, in units of ``scale`` ms since the epoch."""
        ...

    @property
    def scale(self) -> int:
        """Milliseconds per unit of ``until``."""
        ...

    @property
    def refused(self) -> int:
        """The ``until`` of a pair with only consents of methods not accepted."""
        ...

    def max_per_day(self, number: int, at_ms: int) -> int:
        """The pair's ``max_per_day`` at ``at_ms`` (0: none stated by a consent valid then)."""
        ...

    def cap_schedule(self, number: int) -> CapSchedule:
        """The pair's ``max_per_day`` schedule (filterd.snapshot.store.CapSchedule)."""
        ...


class RankedNumbers(Protocol):
    def rank(self, number: int) -> int:
        """The rank of ``number``, -1 when absent."""
        ...


class SenderLookup(Protocol):
    """One sender's consent and opt-out sets (roaring bitmaps in practice)."""

    @property
    def consents(self) -> Container[int]:
        """Numbers with an accepted consent that never expires."""
        ...

    @property
    def terms(self) -> TermsLookup | None:
        """The sender's other consents: expiring, refused, capped."""
        ...

    @property
    def optouts(self) -> Container[int]: ...

    @property
    def optout_filter(self) -> bytes:
        """:mod:`filterd.prefilter` of ``optouts``."""
        ...


class SnapshotView(Protocol):
    """What the decision needs of a consent snapshot (see filterd.snapshot)."""

    @property
    def version(self) -> str: ...

    @property
    def senders(self) -> Mapping[str, SenderLookup]: ...

    @property
    def dnd_numbers(self) -> Container[int]: ...

    @property
    def global_optouts(self) -> Container[int]:
        """Numbers opted out of every sender."""
        ...

    @property
    def global_optout_filter(self) -> bytes: ...


#: The category rules and input limits that decisions follow: the config's
#: ``[policy]`` section, as loaded (one type, under the name the decision uses).
Policy = PolicyConfig


class Decider:
    """Decides records against one snapshot and one policy.

    A Decider is cheap to build; the service builds one per snapshot version,
    so a batch is decided by exactly one version (``decider.version``).

    The time of a message (docs/contract.md "The time of a message"), against which
    consent expiry is evaluated, is the ``at_ms`` given to :meth:`decide` (the
    stream passes the record timestamp); with ``event_time`` (``filterd
    replay``) an event's own ``ts`` wins, and ``at_ms`` is for lines without one.
    """

    __slots__ = (
        "_cc", "_changed", "_default_exempt", "_dnd", "_entry", "_event_time", "_exempt",
        "_facts", "_facts_filter", "_facts_mask", "_global", "_global_filter", "_markers",
        "_marketing_exempt", "_max_bytes", "_new_senders", "_overlay", "_plus_low",
        "_plus_ranges", "_senders", "_sids", "_ts", "category", "change_ref",
        "declared_category", "number", "sender", "snapshot", "version", "without_plus",
    )  # fmt: skip

    def __init__(
        self,
        snapshot: SnapshotView,
        policy: Policy,
        *,
        event_time: bool = False,
        markers: MarkerMatcher | None = None,
        overlay: Overlay | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.version: str = snapshot.version
        senders = snapshot.senders
        # A plain dict: one C-level lookup per event (the snapshot's is one already).
        self._senders: dict[str, SenderLookup] = senders if type(senders) is dict else dict(senders)
        self._dnd: Container[int] = snapshot.dnd_numbers
        self._cc: str = policy.default_country_code
        self._max_bytes: int = policy.max_event_bytes
        # category -> exempt?, one dict lookup per event.
        self._exempt: dict[str, bool] = {c: r == EXEMPT for c, r in policy.categories.items()}
        self._default_exempt: bool = policy.default_rule == EXEMPT
        self._marketing_exempt: bool = self._exempt.get(MARKETING, self._default_exempt)
        # getattr: a view without global opt-outs or terms (format 1, the plain-set
        # views of tests and tools) has none.
        self._global: Container[int] = getattr(snapshot, "global_optouts", ())
        self._global_filter: bytes = getattr(snapshot, "global_optout_filter", b"")
        # The matcher is built once per marker list, not per snapshot version.
        self._markers: MarkerMatcher = (
            markers if markers is not None else matcher(tuple(policy.marketing_markers))
        )
        self._event_time: bool = event_time
        #: The declared category of the record :meth:`decide` last decided, when step 2
        #: decided it as marketing (the output's ``filterd-declared-category``); else None.
        self.declared_category: str | None = None
        # Live consent changes not in the snapshot (filterd.changes.overlay): their facts,
        # keyed (number, 0) and (number, sender id), one or two table lookups for an event
        # whose number's filter bit is set (none without an overlay); the sender ids; the
        # senders they name.
        self._overlay: Overlay | None = overlay
        self._facts: PairTable | None = overlay.table if overlay is not None else None
        self._sids: dict[str, int] = overlay.interned.ids if overlay is not None else {}
        # A bit per number with facts (Overlay.filter): most numbers stop at that bit.
        self._facts_filter: bytearray = overlay.filter if overlay is not None else bytearray(1)
        self._facts_mask: int = (len(self._facts_filter) << 3) - 1
        self._new_senders: set[str] = overlay.senders if overlay is not None else set()
        # Whether the record last decided had facts of live changes (for max_per_day()).
        self._changed: bool = False
        #: The change whose fact decided the record :meth:`decide` last decided (the
        #: output's ``filterd-change``); else None.
        self.change_ref: ChangeRef | None = None
        # Facts of the last decision that reached step 2, for step 4 (filterd.limits):
        # the sender, the recipient's number, the category decided on (after step 2),
        # the event's ``ts`` and the sender's snapshot entry (see max_per_day()).
        self.sender: str = ""
        self.number: int = 0
        self.category: str = MARKETING
        self._ts: int | None = None
        self._entry: SenderLookup | None = None
        # Recipients that look like E.164 without "+" (read as national numbers, as the
        # contract says): one int comparison per event, the ranges only above _plus_low.
        self._plus_ranges: tuple[tuple[int, int], ...] = without_plus_ranges(self._cc)
        self._plus_low: int = min((r[0] for r in self._plus_ranges), default=10**MAX_DIGITS)
        #: How many recipients decided so far looked like E.164 without "+".
        self.without_plus: int = 0

    def decide(self, value: bytes | None, at_ms: int = -1) -> Outcome:
        """Route one record value at time ``at_ms`` (epoch ms; -1: now).

        Never raises: a bug becomes ``internal-error``.
        """
        # One function, no helper calls on the common path: a Python call costs
        # as much here as a bitmap lookup. The checks are written so that the
        # compiled build (mypyc, see setup.py) turns them into C-level type
        # checks and dict lookups: orjson returns exact dicts and strs, so
        # isinstance() means type() is here.
        self.declared_category = None
        self.change_ref = None
        try:
            if value is None:
                return MALFORMED_JSON
            if len(value) > self._max_bytes:
                return OVERSIZED
            try:
                event = orjson.loads(value)
            except orjson.JSONDecodeError:
                return MALFORMED_JSON
            if not isinstance(event, dict):
                return MALFORMED_JSON
            mid = event.get("id")
            sender = event.get("sender")
            recipient = event.get("recipient")
            if isinstance(mid, str) and isinstance(sender, str) and isinstance(recipient, str):
                # The common case: all three required fields are strings.
                sender = sender.strip()
                if not sender or not recipient.strip() or not mid.strip():
                    return MISSING_FIELD
            else:
                return _missing_or_bad_type(mid, sender, recipient)
            category = event.get("category")
            if category is None:
                category = "marketing"
            elif not isinstance(category, str):
                return BAD_FIELD_TYPE
            text = event.get("text")
            if text is not None and not isinstance(text, str):
                return BAD_FIELD_TYPE
            ts = event.get("ts")
            # type() rather than isinstance(): JSON true/false must not pass as an int.
            if ts is not None and type(ts) is not int:
                return BAD_FIELD_TYPE
            try:
                number = normalize(recipient, self._cc)
            except InvalidNumber:
                return BAD_RECIPIENT
            if number >= self._plus_low and looks_without_plus(
                number, recipient, self._plus_ranges
            ):
                self.without_plus += 1
            self.sender = sender
            self.number = number
            self.category = category
            self._ts = ts
            self._entry = None
            self._changed = False
            if self._exempt.get(category, self._default_exempt):
                # Step 2, honest category: only exempt messages with a text are searched.
                if text is None or not self._markers.search(text):
                    return EXEMPT_CATEGORY
                self.declared_category = category
                self.category = MARKETING
                if self._marketing_exempt:
                    return EXEMPT_CATEGORY
            # require-consent, first match wins (docs/contract.md "Policy and reason codes").
            facts = self._facts
            i = (number ^ (number >> 21)) & self._facts_mask  # filterd.prefilter.slot
            if facts is not None and self._facts_filter[i >> 3] >> (i & 7) & 1:
                own = facts.row(number, NUMBER)
                sid = self._sids.get(sender, 0)
                pair = facts.row(number, sid) if sid else None
                if own is not None or pair is not None:
                    if self._event_time and ts is not None:
                        at_ms = int(ts)
                    self._changed = True
                    return self._decide_changed(own, pair, sid, sender, number, at_ms)
            global_filter = self._global_filter
            if global_filter:
                # Rule 1 for every sender (`*`): the same inline filter test as below.
                i = (number ^ (number >> 21)) & ((len(global_filter) << 3) - 1)
                if global_filter[i >> 3] >> (i & 7) & 1 and number in self._global:
                    return OPTED_OUT
            entry = self._senders.get(sender)
            self._entry = entry
            if entry is None:
                # Rules 1 to 4 cannot match a sender the snapshot does not know.
                if sender in self._new_senders:
                    # Named by a live change, without one for this number.
                    return RECIPIENT_DND if number in self._dnd else NO_CONSENT
                return UNKNOWN_SENDER
            optout_filter = entry.optout_filter
            if optout_filter:
                # filterd.prefilter.slot, inline: most numbers stop at this bit.
                i = (number ^ (number >> 21)) & ((len(optout_filter) << 3) - 1)
                if optout_filter[i >> 3] >> (i & 7) & 1 and number in entry.optouts:
                    return OPTED_OUT
            if number in entry.consents:
                return CONSENT
            terms: TermsLookup | None = getattr(entry, "terms", None)
            if terms is not None:
                # Only pairs with an expiring or refused consent get here: the time
                # of the message is read when it matters.
                rank = terms.numbers.rank(number)
                if rank >= 0:
                    until = terms.until[rank]
                    if until == terms.refused:
                        return CONSENT_NOT_EXPLICIT
                    if self._event_time and ts is not None:
                        at_ms = int(ts)
                    elif at_ms < 0:
                        at_ms = time.time_ns() // 1_000_000
                    return CONSENT if until * terms.scale > at_ms else CONSENT_EXPIRED
            if number in self._dnd:
                return RECIPIENT_DND
            return NO_CONSENT
        except Exception as exc:
            # The stream must go on: the record is routed to the invalid topic
            # and the traceback logged for the bug report, at most every 10 s so
            # a bug that hits every record does not flood the log.
            _internal_errors.log(
                "internal-error", "decision raised; routing as internal-error: %s", _Traceback(exc)
            )
            return INTERNAL_ERROR

    def _decide_changed(
        self,
        own: tuple[int, ...] | None,
        pair: tuple[int, ...] | None,
        sid: int,
        sender: str,
        number: int,
        at_ms: int,
    ) -> Outcome:
        """Step 3 for a number with facts of pending live changes (its own ``own``, the
        pair's ``pair``): the snapshot's facts where the changes left them alone
        (filterd.changes.overlay), and ``change_ref`` set when the deciding fact came from a
        change. A flag fact is 0 (unchanged) or odd (set) or even (cleared)."""
        overlay = self._overlay
        assert overlay is not None
        flag = own[0] if own is not None else 0
        if flag & 1 or (not flag and number in self._global):
            self.change_ref = overlay.ref(flag, FLAG_SHIFT) if flag else None
            return OPTED_OUT
        entry = self._senders.get(sender)
        flag = pair[0] if pair is not None else 0
        if flag & 1 or (not flag and entry is not None and number in entry.optouts):
            self.change_ref = overlay.ref(flag, FLAG_SHIFT) if flag else None
            return OPTED_OUT
        word = pair[1] if pair is not None else 0
        mode, rows = overlay.consent_of(number, sid, word)
        until, any_row = NO_ACCEPTED, False
        if entry is not None and mode != CONSENT_REPLACED:
            until, any_row = _snapshot_consent(entry, number)
        until, any_row, _schedule = consent_with((until, any_row, NO_CAP), mode, rows)
        if any_row:
            self.change_ref = (
                overlay.ref(word, CONSENT_SHIFT) if mode != CONSENT_UNCHANGED else None
            )
            if until == NO_ACCEPTED:
                return CONSENT_NOT_EXPLICIT
            if until == FOREVER:
                return CONSENT
            if at_ms < 0:
                at_ms = time.time_ns() // 1_000_000
            return CONSENT if until > at_ms else CONSENT_EXPIRED
        if entry is None and sender not in self._new_senders:
            return UNKNOWN_SENDER
        flag = own[1] if own is not None else 0
        if flag & 1 or (not flag and number in self._dnd):
            self.change_ref = overlay.ref(flag, FLAG_SHIFT) if flag else None
            return RECIPIENT_DND
        if mode == CONSENT_REPLACED:
            self.change_ref = overlay.ref(word, CONSENT_SHIFT)
        elif flag:
            self.change_ref = overlay.ref(flag, FLAG_SHIFT)  # do-not-disturb cleared
        return NO_CONSENT

    def pair_max_per_day(self, sender: str, number: int, at_ms: int) -> int:
        """The (sender, number) pair's ``max_per_day`` at ``at_ms`` with the live changes
        applied (0: none stated): the smallest of its accepted consents (snapshot and
        changes) valid then."""
        entry = self._senders.get(sender)
        mode = CONSENT_UNCHANGED
        rows: PairConsent = (NO_ACCEPTED, False, NO_CAP)
        overlay = self._overlay
        sid = self._sids.get(sender, 0)
        if overlay is not None and sid:
            word = overlay.table.get(number, sid, CONSENT_WORD)
            mode, rows = overlay.consent_of(number, sid, word)
        schedule = NO_CAP
        if entry is not None and mode != CONSENT_REPLACED:
            terms: TermsLookup | None = getattr(entry, "terms", None)
            if terms is not None:
                schedule = terms.cap_schedule(number)
        return cap_at(consent_with((NO_ACCEPTED, False, schedule), mode, rows)[2], at_ms)

    def max_per_day(self, at_ms: int) -> int:
        """The ``max_per_day`` at ``at_ms`` of the pair last decided (0: none): the smallest
        stated by its accepted consents valid then.

        Looked up only when step 4 asks (a delivered ``require-consent`` message).
        """
        if self._changed:
            # A live change may have granted, replaced or revoked the pair's consents.
            return self.pair_max_per_day(self.sender, self.number, at_ms)
        entry = self._entry
        if entry is None:
            return 0
        terms: TermsLookup | None = getattr(entry, "terms", None)
        return 0 if terms is None else terms.max_per_day(self.number, at_ms)

    def message_time(self, at_ms: int) -> int:
        """The time of the message last decided, as :meth:`decide` read it for ``at_ms``.

        The event's ``ts`` with ``event_time`` (replay), else ``at_ms`` (-1: now).
        """
        if self._event_time and self._ts is not None:
            return self._ts
        return at_ms if at_ms >= 0 else time.time_ns() // 1_000_000


def _snapshot_consent(entry: SenderLookup, number: int) -> tuple[int, bool]:
    """(latest accepted validity in epoch ms or NO_ACCEPTED, any consent row) of a pair."""
    if number in entry.consents:
        return FOREVER, True
    terms: TermsLookup | None = getattr(entry, "terms", None)
    if terms is not None:
        rank = terms.numbers.rank(number)
        if rank >= 0:
            until = terms.until[rank]
            if until == terms.refused:
                return NO_ACCEPTED, True
            return until * terms.scale, True
    return NO_ACCEPTED, False


def _missing_or_bad_type(mid: object, sender: object, recipient: object) -> Outcome:
    for value in (mid, sender, recipient):
        if value is None or (type(value) is str and not value.strip()):
            return MISSING_FIELD
    return BAD_FIELD_TYPE


def decide_value(
    value: bytes | None, snapshot: SnapshotView, policy: Policy, at_ms: int = -1
) -> Outcome:
    """Decide one value at ``at_ms`` (-1: now); for tools that decide a single record."""
    return Decider(snapshot, policy).decide(value, at_ms)


def text_field(value: bytes | None, name: str) -> str | None:
    """Field ``name`` of an event value when it is a JSON object with a string there."""
    if not value:
        return None
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(event) is dict:
        field = event.get(name)
        if type(field) is str:
            return field
    return None


def event_id(value: bytes | None) -> str | None:
    """The event's ``id`` when the value is a JSON object with a string id."""
    return text_field(value, "id")
