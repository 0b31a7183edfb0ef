"""The independent reference model of the decision (docs/contract.md "Policy and reason codes").

Deliberately written apart from ``filterd``: the standard library only (``json``, ``csv``,
``re``), plain Python sets and its own number rule. If the product and this model agree on
every record of a stream, both read the contract the same way; a bug in the service's
decision path shows up as a misrouted record instead of being reproduced by the checker.

The decision is the contract's ordered steps, each an ordered table of rules
(condition → route, reason); the first rule that matches ends the decision. New policy is a
new :class:`Rule` in the table of its step, not a new copy of the model:

- step 1, invalid input: ``INVALID_INPUT``;
- step 2, honest category: ``CATEGORY_REWRITES`` turns the declared category into the one
  decided on (an exempt category whose text carries a marketing marker is decided as
  marketing), then ``CATEGORY`` routes the exempt ones;
- step 3, consent: ``CONSENT`` (opt-outs of this sender or of every sender ``*``, a valid
  consent, ``consent-expired``, ``consent-not-explicit``, ...), ending in ``no-consent``;
- step 4, limits on what step 3 delivers: ``LIMITS`` (quiet hours, frequency caps); the
  counters of delivered messages live on the :class:`Reference` (one input partition's, or
  one replay's), windows are the recipient's local calendar hours and days;
- monitor mode: a block reason listed in ``monitor`` delivers as ``monitored`` instead.

Counting follows the contract's "Counting"; a window's counters are forgotten once it has
closed in stream time (the latest message time seen), read in the zone's smallest offset of
2000-2040, and a record of a window already closed is neither capped nor counted.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import time
import unicodedata
import zoneinfo
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

ROUTES = ("deliver", "block", "invalid")
COUNTRY_CODE = "86"
MAX_EVENT_BYTES = 65_536
EXEMPT_CATEGORIES = frozenset({"transactional", "verification"})
DEFAULT_CATEGORY = "marketing"

#: `snapshot build --accept-methods` by default.
ACCEPT_METHODS = frozenset({"explicit", "double-opt-in", "written"})
#: `[policy] marketing_markers` by default.
MARKETING_MARKERS = (
    "退订", "回T", "回TD", "拒收请回复", "unsubscribe", "reply STOP", "优惠", "折扣", "满减",
    "秒杀", "促销", "特价", "包邮", "领券", "红包",
)  # fmt: skip

Decision = tuple[str, str]
"""(route, reason)."""

#: One consent row's evidence: (method accepted?, expires_at in epoch microseconds or None).
ConsentRow = tuple[bool, "int | None"]

# --------------------------------------------------------------------------- numbers

_SEPARATORS = re.compile(r"[ \-.()]")
_E164 = re.compile(r"[1-9][0-9]{7,14}")
_DIGITS = re.compile(r"[0-9]+")


def ref_normalize(raw: str, country_code: str = COUNTRY_CODE) -> int | None:
    """docs/contract.md "Numbers", step by step; None where the event is ``bad-recipient``."""
    s = _SEPARATORS.sub("", unicodedata.normalize("NFKC", raw))
    if s.startswith("+"):
        s = s[1:]
    elif s.startswith("00"):
        s = s[2:]
    elif _DIGITS.fullmatch(s):
        s = country_code + (s[1:] if s.startswith("0") else s)
    if not _E164.fullmatch(s):
        return None
    return int(s)


# --------------------------------------------------------------------------- JSON

# RFC 8259 JSON as a strict parser reads it: no NaN or Infinity, no number that does not fit
# a 64-bit integer kept as an integer (it becomes a float), no float that overflows, no
# unpaired surrogate in a string.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _parse_int(text: str) -> int | float:
    n = int(text)
    return n if _INT_MIN <= n <= _INT_MAX else float(text)


def _parse_float(text: str) -> float:
    f = float(text)
    if f in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text}")
    return f


def _reject_constant(text: str) -> None:
    raise ValueError(f"not JSON: {text}")


def _encodable(doc: object) -> bool:
    """False when a string anywhere in ``doc`` holds an unpaired surrogate."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


_NOT_JSON = object()


def parse_json(value: bytes) -> object:
    """The JSON document of a record value, or ``_NOT_JSON``."""
    try:
        doc = json.loads(
            value.decode("utf-8"),
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _NOT_JSON
    return doc if _encodable(doc) else _NOT_JSON


# --------------------------------------------------------------------------- one message

_REQUIRED = ("id", "sender", "recipient")
_OPTIONAL_TEXT = ("category", "text")


class Message:
    """One record value as the rules see it; each field is worked out when a rule first asks.

    ``at_ms`` is the time of the message (the record timestamp in the stream, the time given
    to replay; None: now); with ``event_time`` an event's own ``ts`` wins (replay).
    """

    def __init__(
        self,
        value: bytes | None,
        model: Reference,
        at_ms: int | None = None,
        event_time: bool = False,
    ) -> None:
        self.value = value
        self.model = model
        self._at_ms = at_ms
        self._event_time = event_time

    @cached_property
    def at_ms(self) -> int:
        ts = self.get("ts") if self.doc is not None else None
        if self._event_time and ts is not None:
            return int(ts)
        return self._at_ms if self._at_ms is not None else time.time_ns() // 1_000_000

    @cached_property
    def doc(self) -> dict[str, Any] | None:
        """The JSON object, None when the value is not one."""
        if self.value is None:
            return None
        doc = parse_json(self.value)
        return doc if isinstance(doc, dict) else None

    def get(self, name: str) -> Any:
        assert self.doc is not None
        return self.doc.get(name)

    @cached_property
    def sender(self) -> str:
        return str(self.get("sender")).strip()

    @cached_property
    def number(self) -> int | None:
        return ref_normalize(self.get("recipient"), self.model.country_code)

    @cached_property
    def declared_category(self) -> str:
        """A JSON null counts as absent: the default category."""
        category = self.get("category")
        return DEFAULT_CATEGORY if category is None else str(category)

    @cached_property
    def consent_rows(self) -> list[ConsentRow]:
        return list(self.model.consent_rows.get((self.sender, self.number or 0), ()))

    @cached_property
    def category(self) -> str:
        """The category decided on (step 2): the declared one unless a rewrite applies."""
        for rewrite in CATEGORY_REWRITES:
            changed = rewrite(self)
            if changed is not None:
                return changed
        return self.declared_category

    @property
    def pair(self) -> tuple[str, int | None]:
        return self.sender, self.number

    @cached_property
    def require(self) -> bool:
        """The decided category's rule is ``require-consent``."""
        return self.category not in self.model.exempt

    @cached_property
    def limit_ms(self) -> int:
        """The time step 4 reads: ``at_ms`` unless negative or over a day past the read time."""
        read = self._at_ms if self._at_ms is not None else time.time_ns() // 1_000_000
        at = self.at_ms
        return read if at < 0 or at > read + 86_400_000 else at

    @cached_property
    def zone(self) -> str:
        digits = str(self.number)
        matches = [p for p in self.model.timezones if digits.startswith(p)]
        return self.model.timezones[max(matches, key=len)] if matches else self.model.timezone

    @cached_property
    def local(self) -> datetime:
        """The message's time in the recipient's zone."""
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self.limit_ms)
        return moment.astimezone(zoneinfo.ZoneInfo(self.zone))

    @cached_property
    def max_per_day(self) -> int:
        """The smallest ``max_per_day`` of the pair's accepted consents valid at the
        message's time (the time step 4 reads), 0: none."""
        rows = self.model.consent_caps.get((self.sender, self.number or 0), ())
        at_us = self.limit_ms * 1000
        return min(
            (most for expires, most in rows if expires is None or expires > at_us), default=0
        )

    def counters(self) -> list[tuple[object, int]]:
        """The (counter, maximum) pairs this message counts in, of windows still open."""
        found: list[tuple[object, int]] = []
        day = self.local.date()
        for i, cap in enumerate(self.model.caps):
            if self.category not in cap["categories"]:
                continue
            hour = self.local.hour if cap["window"] == "hour" else None
            if self.model.window_closed(self.zone, day, hour):
                continue
            subject = self.pair if cap["per"] == "pair" else self.number
            found.append(((i, subject, day, hour), cap["max"]))
        closed = self.model.window_closed(self.zone, day, None)
        if self.require and self.max_per_day and not closed:
            found.append((("max_per_day", self.pair, day), self.max_per_day))
        return found


def _blank(v: object) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _bad_type(m: Message) -> bool:
    if not all(isinstance(m.get(k), str) for k in _REQUIRED):
        return True
    if any(m.get(k) is not None and not isinstance(m.get(k), str) for k in _OPTIONAL_TEXT):
        return True
    ts = m.get("ts")
    return ts is not None and (isinstance(ts, bool) or not isinstance(ts, int))


# --------------------------------------------------------------------------- the rule tables


@dataclass(frozen=True, slots=True)
class Rule:
    """``when`` the condition holds, the message goes to ``route`` with ``reason``."""

    reason: str
    route: str
    when: Callable[[Message], bool]


#: Step 1, invalid input, first match wins.
INVALID_INPUT: tuple[Rule, ...] = (
    Rule("malformed-json", "invalid", lambda m: m.value is None),
    Rule("oversized", "invalid", lambda m: len(m.value or b"") > m.model.max_bytes),
    Rule("malformed-json", "invalid", lambda m: m.doc is None),
    Rule("missing-field", "invalid", lambda m: any(_blank(m.get(k)) for k in _REQUIRED)),
    Rule("bad-field-type", "invalid", _bad_type),
    Rule("bad-recipient", "invalid", lambda m: m.number is None),
)


def rule_expiry_us(text: str) -> int | None:
    """A consents file's ``expires_at``: epoch microseconds; None for empty (no expiry)."""
    if not text.strip():
        return None
    moment = datetime.fromisoformat(text.strip())
    assert moment.tzinfo is not None, text
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def rule_has_marker(text: str, markers: tuple[str, ...]) -> bool:
    """Step 2: a marker is a substring of the text, both NFKC-normalized and case-folded."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return any(
        m and m in folded for m in (unicodedata.normalize("NFKC", x).casefold() for x in markers)
    )


def rule_consent(rows: list[ConsentRow], at_ms: int) -> str | None:
    """Step 3 rules 2-4 for one (sender, recipient)'s consent rows; None: no consent row."""
    if not rows:
        return None
    accepted = [expires for ok, expires in rows if ok]
    if any(expires is None or expires > at_ms * 1000 for expires in accepted):
        return "consent"
    if accepted:
        return "consent-expired"
    return "consent-not-explicit"


def _disguised(m: Message) -> str | None:
    """An exempt category whose text carries a marketing marker is decided as marketing."""
    text = m.get("text")
    exempt = m.declared_category in m.model.exempt
    if exempt and isinstance(text, str) and rule_has_marker(text, m.model.markers):
        return DEFAULT_CATEGORY
    return None


#: Step 2, honest category: functions returning the category to decide on, or None.
CATEGORY_REWRITES: tuple[Callable[[Message], str | None], ...] = (_disguised,)

#: Step 2, then the category's rule: ``exempt`` categories are delivered.
CATEGORY: tuple[Rule, ...] = (
    Rule("exempt-category", "deliver", lambda m: m.category in m.model.exempt),
)

#: Step 3, consent (``require-consent`` categories), first match wins.
CONSENT: tuple[Rule, ...] = (
    Rule(
        "opted-out",
        "block",
        lambda m: m.pair in m.model.optouts or m.number in m.model.global_optouts,
    ),
    Rule(
        "consent",
        "deliver",
        lambda m: m.pair in m.model.consents or rule_consent(m.consent_rows, m.at_ms) == "consent",
    ),
    Rule(
        "consent-expired",
        "block",
        lambda m: rule_consent(m.consent_rows, m.at_ms) == "consent-expired",
    ),
    Rule(
        "consent-not-explicit",
        "block",
        lambda m: rule_consent(m.consent_rows, m.at_ms) == "consent-not-explicit",
    ),
    Rule("unknown-sender", "block", lambda m: m.sender not in m.model.senders),
    Rule("recipient-dnd", "block", lambda m: m.number in m.model.dnd),
    Rule("no-consent", "block", lambda m: True),
)


def _quiet(m: Message) -> bool:
    hours = m.model.quiet_hours.strip()
    if not hours or not m.require:
        return False
    start, end = (int(t[:2]) * 60 + int(t[3:]) for t in hours.split("-"))
    minute = m.local.hour * 60 + m.local.minute
    return start <= minute < end if start < end else (minute >= start or minute < end)


#: Step 4, limits on messages step 3 delivers, first match wins.
LIMITS: tuple[Rule, ...] = (
    Rule("quiet-hours", "block", _quiet),
    Rule(
        "frequency-cap",
        "block",
        lambda m: any(m.model.counters.get(c, 0) >= most for c, most in m.counters()),
    ),
)

#: Monitor mode delivers a message whose deciding block reason is listed, with this reason.
MONITORED = "monitored"

#: Every reason the tables name, with its route; ``internal-error`` is the service's own.
REASON_ROUTE: dict[str, str] = {
    rule.reason: rule.route for rule in (*INVALID_INPUT, *CATEGORY, *CONSENT, *LIMITS)
} | {"internal-error": "invalid", MONITORED: "deliver"}


def _first(rules: tuple[Rule, ...], m: Message) -> Decision | None:
    for rule in rules:
        if rule.when(m):
            return rule.route, rule.reason
    return None


# --------------------------------------------------------------------------- live changes

CHANGE_OPS = ("opt-out", "opt-out-clear", "consent", "consent-revoke", "dnd-add", "dnd-remove")
_MAX_PER_DAY = re.compile(r"[1-9][0-9]{0,8}")


def _optional_str(doc: dict[str, Any], name: str) -> bool:
    return doc.get(name) is None or isinstance(doc.get(name), str)


def ref_change(value: bytes | None, country_code: str = COUNTRY_CODE) -> dict[str, Any] | None:
    """A change record as the contract reads it: ``op``, ``number``, ``sender``, and with
    ``consent`` its ``method`` (None: none given) and ``expires`` (epoch µs or None);
    None for a malformed record (skipped, never applied)."""
    doc = parse_json(value) if value is not None else _NOT_JSON
    if not isinstance(doc, dict):
        return None
    op = doc.get("op")
    if op not in CHANGE_OPS or not isinstance(doc.get("recipient"), str):
        return None
    number = ref_normalize(doc["recipient"], country_code)
    if number is None:
        return None
    change: dict[str, Any] = {"op": op, "number": number}
    if not op.startswith("dnd-"):
        sender = doc.get("sender")
        if not isinstance(sender, str) or not sender.strip():
            return None
        change["sender"] = sender.strip()
        if sender.strip() == "*" and op not in ("opt-out", "opt-out-clear"):
            return None
    if not all(_optional_str(doc, k) for k in ("id", "source")):
        return None
    ts = doc.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        return None
    if op == "consent":
        if not all(_optional_str(doc, k) for k in ("method", "expires_at")):
            return None
        method = doc.get("method")
        change["method"] = method.strip() if isinstance(method, str) else None
        try:
            change["expires"] = rule_expiry_us(doc.get("expires_at") or "")
        except (ValueError, AssertionError):
            return None
        cap = doc.get("max_per_day")
        if isinstance(cap, bool) or not (cap is None or isinstance(cap, (int, str))):
            return None
        if cap is not None and str(cap).strip() and not _MAX_PER_DAY.fullmatch(str(cap).strip()):
            return None
        change["max_per_day"] = int(str(cap).strip()) if cap is not None and str(cap).strip() else 0
    return change


# --------------------------------------------------------------------------- the model


def _rows(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return list(csv.DictReader(io.StringIO(raw.decode())))


@dataclass(frozen=True)
class Reference:
    """One snapshot's content as plain sets, and the policy around it.

    ``senders`` defaults to every sender with a consent or an opt-out row (the senders "in
    the snapshot").
    """

    consents: Set[tuple[str, int]] = frozenset()
    optouts: Set[tuple[str, int]] = frozenset()
    senders: Set[str] = None  # type: ignore[assignment]
    dnd: Set[int] = frozenset()
    country_code: str = COUNTRY_CODE
    max_bytes: int = MAX_EVENT_BYTES
    exempt: Set[str] = EXEMPT_CATEGORIES
    #: Consent rows with a refused method or an expiry, per (sender, number); the plain
    #: accepted ones without expiry are in ``consents``.
    consent_rows: Mapping[tuple[str, int], list[ConsentRow]] = field(default_factory=dict)
    #: Numbers opted out of every sender (opt-out rows of sender ``*``).
    global_optouts: Set[int] = frozenset()
    accept: Set[str] = ACCEPT_METHODS
    markers: tuple[str, ...] = MARKETING_MARKERS
    #: Counters of stateful rules (step 4), keyed as each rule likes.
    counters: dict[object, int] = field(default_factory=dict, compare=False, repr=False)
    #: ``[policy]`` step 4: quiet hours "HH:MM-HH:MM", zones, cap rules (dicts with
    #: categories, per, window, max) and the monitored block reasons.
    quiet_hours: str = ""
    timezone: str = "Asia/Shanghai"
    timezones: Mapping[str, str] = field(default_factory=dict)
    caps: tuple[Mapping[str, Any], ...] = ()
    monitor: Set[str] = frozenset()
    #: Accepted consent rows stating a ``max_per_day``: (expires_at in µs or None, max).
    consent_caps: Mapping[tuple[str, int], list[tuple[int | None, int]]] = field(
        default_factory=dict
    )
    #: The latest message time seen (ms), for closing windows; [-1] before the first.
    stream_time: list[int] = field(default_factory=lambda: [-1], compare=False, repr=False)

    def window_closed(self, zone: str, day: date, hour: int | None) -> bool:
        """Whether the local window (a day, or an hour of it) has closed in stream time."""
        end = datetime(day.year, day.month, day.day) + (
            timedelta(days=1) if hour is None else timedelta(hours=hour + 1)
        )
        lowest = _lowest_offset(zone)
        close = end.replace(tzinfo=UTC) - lowest
        close_ms = (close - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        return close_ms <= self.stream_time[0]

    def __post_init__(self) -> None:
        if self.senders is None:
            senders = {s for s, _ in self.consents} | {s for s, _ in self.optouts}
            senders |= {s for s, _ in self.consent_rows}
            object.__setattr__(self, "senders", frozenset(senders))

    @classmethod
    def from_dataset(cls, directory: Path, **policy: Any) -> Reference:
        """The model of a loadgen data set (``consents.csv.gz``, ``optouts.csv.gz``, ``dnd``)."""
        accept = policy.get("accept", ACCEPT_METHODS)
        pairs: dict[str, set[tuple[str, int]]] = {"consents": set(), "optouts": set()}
        rows: dict[tuple[str, int], list[ConsentRow]] = {}
        capped: dict[tuple[str, int], list[tuple[int | None, int]]] = {}
        global_optouts: set[int] = set()
        for name, target in pairs.items():
            for row in _rows(directory / f"{name}.csv.gz"):
                sender = row["sender"].strip()
                number = ref_normalize(row["recipient"])
                assert number is not None, row
                if name == "optouts" and sender == "*":
                    global_optouts.add(number)
                    continue
                # Without a method column every row counts as accepted.
                accepted = "method" not in row or (row["method"] or "").strip() in accept
                expires = rule_expiry_us(row.get("expires_at") or "")
                most = (row.get("max_per_day") or "").strip()
                if name == "consents" and accepted and most:
                    capped.setdefault((sender, number), []).append((expires, int(most)))
                if name == "consents" and (not accepted or expires is not None):
                    rows.setdefault((sender, number), []).append((accepted, expires))
                    continue
                target.add((sender, number))
        dnd = set()
        for row in _rows(directory / "dnd.csv.gz"):
            number = ref_normalize(row["recipient"])
            assert number is not None, row
            dnd.add(number)
        return cls(
            pairs["consents"], pairs["optouts"], dnd=dnd, consent_rows=rows,
            global_optouts=frozenset(global_optouts), consent_caps=capped, **policy,
        )  # fmt: skip

    def with_consents(self, extra: Set[tuple[str, int]]) -> Reference:
        """The next version: ``extra`` consents granted (their senders become known)."""
        return replace(
            self,
            consents=self.consents | extra,
            senders=self.senders | {s for s, _ in extra},
            counters={},
        )

    def with_changes(self, values: list[bytes | None]) -> Reference:
        """The snapshot rebuilt with live change records applied in order (docs/contract.md
        "Live consent changes"); a malformed record changes nothing (:func:`ref_change`).

        A sender named by an ``opt-out`` or ``consent`` change is in the snapshot from then
        on, also after a later clear or revoke (filterd's reading of the contract)."""
        consents, optouts = set(self.consents), set(self.optouts)
        senders, dnd, global_optouts = set(self.senders), set(self.dnd), set(self.global_optouts)
        rows = {pair: list(r) for pair, r in self.consent_rows.items()}
        caps = {pair: list(c) for pair, c in self.consent_caps.items()}
        for value in values:
            change = ref_change(value, self.country_code)
            if change is None:
                continue
            op, number = change["op"], change["number"]
            sender = change.get("sender", "")
            pair = (sender, number)
            if op in ("dnd-add", "dnd-remove"):
                (dnd.add if op == "dnd-add" else dnd.discard)(number)
            elif sender == "*":
                (global_optouts.add if op == "opt-out" else global_optouts.discard)(number)
            elif op == "opt-out":
                optouts.add(pair)
                senders.add(sender)
            elif op == "opt-out-clear":
                optouts.discard(pair)
            elif op == "consent-revoke":
                consents.discard(pair)
                rows.pop(pair, None)
                caps.pop(pair, None)
            else:
                senders.add(sender)
                accepted = change["method"] is None or change["method"] in self.accept
                if accepted and change["max_per_day"]:
                    caps.setdefault(pair, []).append((change["expires"], change["max_per_day"]))
                if accepted and change["expires"] is None:
                    consents.add(pair)
                else:
                    rows.setdefault(pair, []).append((accepted, change["expires"]))
        return replace(
            self, consents=frozenset(consents), optouts=frozenset(optouts),
            senders=frozenset(senders), dnd=frozenset(dnd),
            global_optouts=frozenset(global_optouts), consent_rows=rows, consent_caps=caps,
            counters={}, stream_time=[-1],
        )  # fmt: skip

    def for_partition(self) -> Reference:
        """The same model with step 4 counters of its own (one input partition's)."""
        return replace(self, counters={}, stream_time=[-1])

    def decide(
        self, value: bytes | None, at_ms: int | None = None, *, event_time: bool = False
    ) -> Decision:
        """The route and reason the contract prescribes for one input value at ``at_ms``."""
        route, reason, _declared, _would = self.decide_record(value, at_ms, event_time=event_time)
        return route, reason

    def decide_full(
        self, value: bytes | None, at_ms: int | None = None, *, event_time: bool = False
    ) -> tuple[str, str, str | None]:
        """(route, reason, the declared category when step 2 decided it as marketing)."""
        route, reason, declared, _would = self.decide_record(value, at_ms, event_time=event_time)
        return route, reason, declared

    @staticmethod
    def _read_bound(m: Message, read_ms: int | None) -> int:
        if read_ms is not None:
            return read_ms
        if m._event_time and m._at_ms is not None:
            return m._at_ms
        return 2**63

    def decide_record(
        self,
        value: bytes | None,
        at_ms: int | None = None,
        *,
        event_time: bool = False,
        read_ms: int | None = None,
    ) -> tuple[str, str, str | None, str | None]:
        """(route, reason, declared category or None, the monitored block reason or None).

        Counts the message in step 4's counters when it is delivered. ``read_ms``: when the
        stream read the record (stream time never runs ahead of it); None: no bound in the
        stream, ``at_ms`` in replay.
        """
        m = Message(value, self, at_ms, event_time)
        found = _first(INVALID_INPUT, m)
        if found is not None:
            return (*found, None, None)
        declared = m.declared_category if m.category != m.declared_category else None
        # Stream time never runs ahead of the read time (replay: --at; the stream: read_ms).
        read = self._read_bound(m, read_ms)
        self.stream_time[0] = max(self.stream_time[0], min(m.limit_ms, read))
        found = _first(CATEGORY, m)
        if found is None:
            consent = _first(CONSENT, m)
            assert consent is not None, "the consent table ends in a rule that always matches"
            found = consent
        if found[0] == "deliver":
            found = _first(LIMITS, m) or found
        would = None
        if found[0] == "block" and found[1] in self.monitor:
            would, found = found[1], ("deliver", MONITORED)
        if found[0] == "deliver":
            for counter, _most in m.counters():
                self.counters[counter] = self.counters.get(counter, 0) + 1
        return (*found, declared, would)


_LOWEST: dict[str, timedelta] = {}


def _lowest_offset(zone: str) -> timedelta:
    """The zone's smallest UTC offset at 00:00 UTC of any day of 2000-2040."""
    if zone not in _LOWEST:
        tz = zoneinfo.ZoneInfo(zone)
        first = date(2000, 1, 1).toordinal()
        _LOWEST[zone] = min(
            datetime.combine(date.fromordinal(first + i), datetime.min.time(), UTC)
            .astimezone(tz)
            .utcoffset()
            or timedelta(0)
            for i in range(41 * 366)
        )
    return _LOWEST[zone]
