"""The records an audit reads: output records of the stream service.

The service writes the input event bytes unchanged as the value and puts
its decision in headers (docs/contract.md, "Output records"). Auditors read the
invalid topic too, where a value may not be JSON at all, so parsing here
never raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import orjson

from filterd.router import text_field

ROUTE_HEADER = "filterd-route"
REASON_HEADER = "filterd-reason"
SNAPSHOT_HEADER = "filterd-snapshot"
SOURCE_HEADER = "filterd-source"
#: Present where step 2 decided an exempt-category message as marketing.
DECLARED_CATEGORY_HEADER = "filterd-declared-category"

#: On a ``monitored`` delivery: the block reason it would have had.
WOULD_BLOCK_HEADER = "filterd-would-block"

#: Shown where a header is absent (a record not written by filterd).
MISSING = "(missing)"


class AuditRecord(NamedTuple):
    """One output record, with the decision headers decoded."""

    #: Output topic, partition and offset: where the evidence lives.
    topic: str
    partition: int
    offset: int
    #: The output record's Kafka timestamp (ms since the epoch); time ranges
    #: and hour buckets use this one.
    timestamp_ms: int
    key: bytes | None
    #: The input event bytes, unchanged.
    value: bytes | None
    #: ``deliver``/``block``/``invalid``; :data:`MISSING` if absent.
    route: str
    #: The exact reason string; :data:`MISSING` if absent.
    reason: str
    #: The snapshot version that decided; :data:`MISSING` if absent.
    snapshot: str
    #: ``topic/partition/offset`` of the input record; :data:`MISSING` if absent.
    source: str
    #: The category the message was sent with, when filterd decided it as marketing
    #: (its text carried a marketing marker); None otherwise.
    declared_category: str | None = None
    #: ``topic/partition/offset`` of the live consent change that decided it
    #: (``filterd-change``); None otherwise.
    change: str | None = None
    #: The ``filterd-would-block`` header of a ``monitored`` delivery; None otherwise
    #: (decoded by the reason-only read of the deliver topic).
    would_block: str | None = None

    @property
    def location(self) -> str:
        """``topic/partition/offset`` of this output record."""
        return f"{self.topic}/{self.partition}/{self.offset}"


def decode_headers(headers: Sequence[tuple[str, bytes]]) -> tuple[str, str, str, str]:
    """Return (route, reason, snapshot, source) from record headers."""
    found = dict(headers)
    return (
        _header_text(found.get(ROUTE_HEADER)),
        _header_text(found.get(REASON_HEADER)),
        _header_text(found.get(SNAPSHOT_HEADER)),
        _header_text(found.get(SOURCE_HEADER)),
    )


def reason_of(headers: Sequence[tuple[str, bytes]]) -> str:
    """Just the ``filterd-reason`` header; :data:`MISSING` if absent."""
    for name, raw in headers:
        if name == REASON_HEADER:
            return raw.decode("utf-8", "replace")
    return MISSING


def reason_and_would_block(headers: Sequence[tuple[str, bytes]]) -> tuple[str, str | None]:
    """The ``filterd-reason`` header (:data:`MISSING` if absent) and the
    ``filterd-would-block`` one (None if absent), in one pass over the headers."""
    reason = MISSING
    would_block = None
    for name, raw in headers:
        if name == REASON_HEADER:
            reason = raw.decode("utf-8", "replace")
        elif name == WOULD_BLOCK_HEADER:
            would_block = raw.decode("utf-8", "replace")
    return reason, would_block


def declared_category_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The ``filterd-declared-category`` header, or None when the record has none."""
    for name, raw in headers:
        if name == DECLARED_CATEGORY_HEADER:
            return _header_text(raw)
    return None


def change_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The ``filterd-change`` header, or None when the record has none."""
    for name, raw in headers:
        if name == "filterd-change":
            return _header_text(raw)
    return None


def _header_text(raw: bytes | None) -> str:
    if raw is None:
        return MISSING
    return raw.decode("utf-8", "replace")


class EventFields(NamedTuple):
    """The event fields an audit shows; ``None`` where absent or of the wrong type."""

    id: str | None
    sender: str | None
    recipient: str | None
    category: str | None
    ts: int | None


_NO_FIELDS = EventFields(None, None, None, None, None)


def _text(obj: dict[str, object], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) else None


def sender_of(value: bytes | None) -> str | None:
    """Just the trimmed sender of an event value, or None: the summary's
    fast path, which needs no other field."""
    sender = text_field(value, "sender")
    return None if sender is None else sender.strip()


def event_fields(value: bytes | None) -> EventFields:
    """Parse an event value leniently: a value that is not a JSON object
    (the invalid topic holds such values) yields all ``None``.

    The sender is trimmed, as the decision compares it trimmed.
    """
    if not value:
        return _NO_FIELDS
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _NO_FIELDS
    if not isinstance(obj, dict):
        return _NO_FIELDS
    sender = _text(obj, "sender")
    ts = obj.get("ts")
    return EventFields(
        id=_text(obj, "id"),
        sender=sender.strip() if sender is not None else None,
        recipient=_text(obj, "recipient"),
        category=_text(obj, "category"),
        # bool is an int in Python; a boolean ts is not a timestamp.
        ts=ts if isinstance(ts, int) and not isinstance(ts, bool) else None,
    )
