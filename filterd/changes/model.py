"""One change record of the changes topic, parsed and checked.

A change is a JSON object (docs/contract.md "Live consent changes"): ``op``, ``sender``
(required except for ``dnd-*``; ``*`` means every sender, only with ``opt-out`` and
``opt-out-clear``), ``recipient`` (normalized as in "Numbers"), and with ``consent`` the
optional ``method``, ``expires_at`` and ``max_per_day`` of the consents file; ``id``,
``ts`` and ``source`` say who made it and when.

A record that is not such a change raises :class:`BadChange`: the feed skips it, counts it
and logs it with its offset. Nothing of a bad record is applied (a malformed ``consent``
grants nothing). Choices the contract leaves open:

* a ``consent`` without ``method`` counts as accepted, as a consents file without a
  ``method`` column does; ``method`` is compared after trimming white space against the
  snapshot's accepted methods;
* ``expires_at`` and ``max_per_day`` read as in the consents file (a string; ``max_per_day``
  may also be a JSON integer); a JSON null or an empty string is "none";
* ``id`` and ``source`` must be strings and ``ts`` an integer when present.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import orjson

from filterd.errors import InvalidNumber
from filterd.numbers import normalize
from filterd.snapshot.evidence import parse_expiry, parse_max_per_day

__all__ = [
    "ALL_SENDERS", "CONSENT", "CONSENT_REVOKE", "DND_ADD", "DND_REMOVE", "OPS", "OPT_OUT",
    "OPT_OUT_CLEAR", "BadChange", "Change", "ChangeRef", "parse_change",
]  # fmt: skip

OPT_OUT: Final = "opt-out"
OPT_OUT_CLEAR: Final = "opt-out-clear"
CONSENT: Final = "consent"
CONSENT_REVOKE: Final = "consent-revoke"
DND_ADD: Final = "dnd-add"
DND_REMOVE: Final = "dnd-remove"
#: The ops of the contract, in its order.
OPS: tuple[str, ...] = (OPT_OUT, OPT_OUT_CLEAR, CONSENT, CONSENT_REVOKE, DND_ADD, DND_REMOVE)
#: ``sender`` of an opt-out (or its clearing) of every sender.
ALL_SENDERS: Final = "*"
_WITH_SENDER = frozenset(OPS) - {DND_ADD, DND_REMOVE}
_ALL_SENDERS_OPS = frozenset({OPT_OUT, OPT_OUT_CLEAR})


class BadChange(ValueError):
    """A change record that cannot be applied; the message says why."""


class ChangeRef(NamedTuple):
    """Where a change is: the ``filterd-change`` header names it as ``topic/partition/offset``."""

    topic: str
    partition: int
    offset: int

    def header(self) -> bytes:
        return f"{self.topic}/{self.partition}/{self.offset}".encode()


class Change(NamedTuple):
    """A valid change. ``sender`` is "" for ``dnd-*``; ``expires_ms`` is None for no expiry."""

    op: str
    sender: str
    number: int
    method: str | None = None
    expires_ms: int | None = None
    max_per_day: int = 0
    id: str | None = None
    ts: int | None = None
    source: str | None = None


def _optional_text(doc: dict[str, object], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not str:
        raise BadChange(f"{name} is not a string")
    return value


def parse_change(value: bytes | None, country_code: str) -> Change:
    """The change a record value holds; raises :class:`BadChange`."""
    if value is None:
        raise BadChange("no value")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise BadChange("not JSON") from None
    if type(doc) is not dict:
        raise BadChange("not a JSON object")
    op = doc.get("op")
    if type(op) is not str or op not in OPS:
        raise BadChange(f"unknown op {op!r}")
    recipient = doc.get("recipient")
    if type(recipient) is not str or not recipient.strip():
        raise BadChange("missing recipient")
    try:
        number = normalize(recipient, country_code)
    except InvalidNumber:
        raise BadChange(f"bad recipient {recipient!r}") from None
    sender = ""
    if op in _WITH_SENDER:
        raw = doc.get("sender")
        if type(raw) is not str or not raw.strip():
            raise BadChange("missing sender")
        sender = raw.strip()
        if sender == ALL_SENDERS and op not in _ALL_SENDERS_OPS:
            raise BadChange(f"sender {ALL_SENDERS!r} with op {op}")
    method = expires_ms = None
    max_per_day = 0
    if op == CONSENT:
        method = _optional_text(doc, "method")
        if method is not None:
            method = method.strip()
        expires = _optional_text(doc, "expires_at")
        if expires is not None and expires.strip():
            try:
                expires_ms = parse_expiry(expires.strip())
            except ValueError as exc:
                raise BadChange(f"bad expires_at {expires!r}: {exc}") from None
        cap = doc.get("max_per_day")
        if type(cap) is int:
            cap = str(cap)
        if cap is not None and type(cap) is not str:
            raise BadChange("bad max_per_day: not a number")
        if cap is not None and cap.strip():
            try:
                max_per_day = parse_max_per_day(cap.strip())
            except ValueError:
                raise BadChange(f"bad max_per_day {cap!r}") from None
    ts = doc.get("ts")
    if ts is not None and type(ts) is not int:
        raise BadChange("ts is not an integer")
    return Change(
        op, sender, number, method, expires_ms, max_per_day,
        _optional_text(doc, "id"), ts, _optional_text(doc, "source"),
    )  # fmt: skip
