"""An independent reference model of DESIGN.md's decision, for checking the stream.

Deliberately written apart from ``filterd``: stdlib ``json`` and ``csv``, plain
Python sets and a regex-based number rule. If the product and this model agree
on every record of a generated stream, both read the contract the same way.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

_SEPARATORS = re.compile(r"[ \-.()]")


def ref_normalize(raw: str, country_code: str = "86") -> int | None:
    s = _SEPARATORS.sub("", raw)
    if s.startswith("+"):
        s = s[1:]
    elif s.startswith("00"):
        s = s[2:]
    elif re.fullmatch(r"[0-9]+", s):
        s = country_code + (s[1:] if s.startswith("0") else s)
    if not re.fullmatch(r"[1-9][0-9]{7,14}", s):
        return None
    return int(s)


def _rows(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return list(csv.DictReader(io.StringIO(raw.decode())))


# ---------------------------------------------------------------------------------------
# Consent-evidence rules (DESIGN.md step 2 and step 3 rules 1-4), kept apart from the
# model below so that they can move as they are: each is a plain function of plain data.

#: `snapshot build --accept-methods` by default.
ACCEPT_METHODS = frozenset({"explicit", "double-opt-in", "written"})
#: `[policy] marketing_markers` by default.
MARKETING_MARKERS = (
    "退订", "回T", "回TD", "拒收请回复", "unsubscribe", "reply STOP", "优惠", "折扣", "满减",
    "秒杀", "促销", "特价", "包邮", "领券", "红包",
)  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: One consent row's evidence: (method accepted?, expires_at in epoch microseconds or None).
ConsentRow = tuple[bool, "int | None"]


def rule_expiry_us(text: str) -> int | None:
    """A consents file's ``expires_at``: epoch microseconds; None for empty (no expiry)."""
    if not text.strip():
        return None
    moment = datetime.fromisoformat(text.strip())
    assert moment.tzinfo is not None, text
    return (moment - _EPOCH) // timedelta(microseconds=1)


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


# ---------------------------------------------------------------------------------------


@dataclass
class Reference:
    consents: set[tuple[str, int]] = field(default_factory=set)
    optouts: set[tuple[str, int]] = field(default_factory=set)
    senders: set[str] = field(default_factory=set)
    dnd: set[int] = field(default_factory=set)
    country_code: str = "86"
    max_bytes: int = 65536
    exempt: frozenset[str] = frozenset({"transactional", "verification"})
    # Consent evidence (the rules above): consent rows with a method or an expiry, per
    # pair; numbers opted out of every sender; the accepted methods; the markers.
    consent_rows: dict[tuple[str, int], list[ConsentRow]] = field(default_factory=dict)
    global_optouts: set[int] = field(default_factory=set)
    accept: frozenset[str] = ACCEPT_METHODS
    markers: tuple[str, ...] = MARKETING_MARKERS

    @classmethod
    def from_dataset(cls, directory: Path, accept: frozenset[str] = ACCEPT_METHODS) -> Reference:
        ref = cls(accept=accept)
        for name, target in (("consents", ref.consents), ("optouts", ref.optouts)):
            for row in _rows(directory / f"{name}.csv.gz"):
                sender = row["sender"].strip()
                number = ref_normalize(row["recipient"])
                assert number is not None, row
                if name == "optouts" and sender == "*":
                    ref.global_optouts.add(number)
                    continue
                ref.senders.add(sender)
                # Without a method column every row counts as accepted.
                accepted = "method" not in row or (row["method"] or "").strip() in accept
                expires = rule_expiry_us(row.get("expires_at") or "")
                if name == "consents" and (not accepted or expires is not None):
                    ref.consent_rows.setdefault((sender, number), []).append((accepted, expires))
                    continue
                target.add((sender, number))
        for row in _rows(directory / "dnd.csv.gz"):
            number = ref_normalize(row["recipient"])
            assert number is not None, row
            ref.dnd.add(number)
        return ref

    def with_consents(self, extra: set[tuple[str, int]]) -> Reference:
        return Reference(
            self.consents | extra,
            set(self.optouts),
            self.senders | {s for s, _ in extra},
            set(self.dnd),
            self.country_code,
            self.max_bytes,
            self.exempt,
            self.consent_rows,
            self.global_optouts,
            self.accept,
            self.markers,
        )

    def decide(
        self, value: bytes | None, at_ms: int | None = None, *, event_time: bool = False
    ) -> tuple[str, str]:
        """The decision at ``at_ms`` (None: now); with ``event_time``, an event's ts wins."""
        route, reason, _declared = self.decide_full(value, at_ms, event_time=event_time)
        return route, reason

    def decide_full(
        self, value: bytes | None, at_ms: int | None = None, *, event_time: bool = False
    ) -> tuple[str, str, str | None]:
        """(route, reason, declared category when step 2 decided it as marketing)."""
        if value is None:
            return "invalid", "malformed-json", None
        if len(value) > self.max_bytes:
            return "invalid", "oversized", None
        try:
            event = json.loads(value.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "invalid", "malformed-json", None
        if not isinstance(event, dict):
            return "invalid", "malformed-json", None
        required = [event.get(k) for k in ("id", "sender", "recipient")]
        if any(v is None or (isinstance(v, str) and not v.strip()) for v in required):
            return "invalid", "missing-field", None
        if not all(isinstance(v, str) for v in required):
            return "invalid", "bad-field-type", None
        for key in ("category", "text"):
            if event.get(key) is not None and not isinstance(event[key], str):
                return "invalid", "bad-field-type", None
        ts = event.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
            return "invalid", "bad-field-type", None
        number = ref_normalize(event["recipient"], self.country_code)
        if number is None:
            return "invalid", "bad-recipient", None
        category = event.get("category") or "marketing"
        if event.get("category") is not None:
            category = event["category"]
        declared = None
        if category in self.exempt:
            text = event.get("text")
            if not (isinstance(text, str) and rule_has_marker(text, self.markers)):
                return "deliver", "exempt-category", None
            declared, category = category, "marketing"
            if category in self.exempt:
                return "deliver", "exempt-category", declared
        sender = event["sender"].strip()
        if number in self.global_optouts or (sender, number) in self.optouts:
            return "block", "opted-out", declared
        if (sender, number) in self.consents:
            return "deliver", "consent", declared
        if event_time and event.get("ts") is not None:
            at_ms = event["ts"]
        when = at_ms if at_ms is not None else time.time_ns() // 1_000_000
        reason = rule_consent(self.consent_rows.get((sender, number), []), when)
        if reason is not None:
            return ("deliver" if reason == "consent" else "block"), reason, declared
        if sender not in self.senders:
            return "block", "unknown-sender", declared
        if number in self.dnd:
            return "block", "recipient-dnd", declared
        return "block", "no-consent", declared
