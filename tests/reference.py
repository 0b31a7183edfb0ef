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
from dataclasses import dataclass, field
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


@dataclass
class Reference:
    consents: set[tuple[str, int]] = field(default_factory=set)
    optouts: set[tuple[str, int]] = field(default_factory=set)
    senders: set[str] = field(default_factory=set)
    dnd: set[int] = field(default_factory=set)
    country_code: str = "86"
    max_bytes: int = 65536
    exempt: frozenset[str] = frozenset({"transactional", "verification"})

    @classmethod
    def from_dataset(cls, directory: Path) -> Reference:
        ref = cls()
        for name, target in (("consents", ref.consents), ("optouts", ref.optouts)):
            for row in _rows(directory / f"{name}.csv.gz"):
                sender = row["sender"].strip()
                number = ref_normalize(row["recipient"])
                assert number is not None, row
                target.add((sender, number))
                ref.senders.add(sender)
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
        )

    def decide(self, value: bytes | None) -> tuple[str, str]:
        if value is None:
            return "invalid", "malformed-json"
        if len(value) > self.max_bytes:
            return "invalid", "oversized"
        try:
            event = json.loads(value.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "invalid", "malformed-json"
        if not isinstance(event, dict):
            return "invalid", "malformed-json"
        required = [event.get(k) for k in ("id", "sender", "recipient")]
        if any(v is None or (isinstance(v, str) and not v.strip()) for v in required):
            return "invalid", "missing-field"
        if not all(isinstance(v, str) for v in required):
            return "invalid", "bad-field-type"
        for key in ("category", "text"):
            if event.get(key) is not None and not isinstance(event[key], str):
                return "invalid", "bad-field-type"
        ts = event.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
            return "invalid", "bad-field-type"
        number = ref_normalize(event["recipient"], self.country_code)
        if number is None:
            return "invalid", "bad-recipient"
        category = event.get("category") or "marketing"
        if event.get("category") is not None:
            category = event["category"]
        if category in self.exempt:
            return "deliver", "exempt-category"
        sender = event["sender"].strip()
        if (sender, number) in self.optouts:
            return "block", "opted-out"
        if (sender, number) in self.consents:
            return "deliver", "consent"
        if sender not in self.senders:
            return "block", "unknown-sender"
        if number in self.dnd:
            return "block", "recipient-dnd"
        return "block", "no-consent"
