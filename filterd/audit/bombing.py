"""What the anti-bombing limits (contract step 4) blocked, for ``audit summary`` and ``report``.

* the recipients and (sender, recipient) pairs with the most ``frequency-cap`` blocks:
  bombing campaigns and OTP floods show up here;
* ``quiet-hours`` blocks by the recipient's local hour: the block record's Kafka
  timestamp read in the zone the config's ``[policy] timezone`` and
  ``[policy.timezones]`` give the recipient (UTC when no config is given);
* the monitored would-blocks by reason: the ``filterd-would-block`` header of the
  deliver topic's ``monitored`` records (``[policy] monitor``).

Memory grows with the distinct capped recipients and pairs (the records capped, at
most), not with the records read: only ``frequency-cap`` and ``quiet-hours`` records
have their value parsed.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Final, TextIO

from filterd.audit.mask import FULLY_MASKED, mask_digits
from filterd.audit.records import AuditRecord, event_fields
from filterd.audit.tables import escape, html_table
from filterd.errors import InvalidNumber
from filterd.numbers import normalize

__all__ = [
    "UTC_ZONE",
    "LimitCounts",
    "bombing_section",
    "write_limits_csv",
    "write_limits_table",
]

#: ``number, at_ms -> UTC offset in ms`` of the recipient's zone.
ZoneOffset = Callable[[int, int], int]
#: Said where the hours are in UTC (no config, so no zones).
UTC_ZONE: Final = "UTC (no config given: the recipients' zones are unknown)"
_HOUR_MS: Final = 3_600_000
_DAY_MS: Final = 24 * _HOUR_MS
#: Key of a recipient that does not normalize (never capped by filterd itself).
_UNREADABLE: Final = -1


def _utc(number: int, at_ms: int) -> int:
    return 0


class LimitCounts:
    """Streaming counts of the limits' blocks and would-blocks.

    ``zone_offset`` gives a recipient's UTC offset at a time (``None``: UTC, and
    :attr:`zone_note` says so); ``country_code`` normalizes national numbers.
    """

    def __init__(
        self,
        zone_offset: ZoneOffset | None = None,
        *,
        zone_note: str = UTC_ZONE,
        country_code: str = "86",
    ) -> None:
        self._offset: ZoneOffset = zone_offset if zone_offset is not None else _utc
        #: How the quiet-hours hours are read (a zone description for the reader).
        self.zone_note = zone_note
        self._country = country_code
        #: normalized recipient -> frequency-cap blocks.
        self.capped_recipients: Counter[int] = Counter()
        #: (sender, normalized recipient) -> frequency-cap blocks.
        self.capped_pairs: Counter[tuple[str, int]] = Counter()
        #: recipient's local hour of day (0-23) -> quiet-hours blocks.
        self.quiet_by_hour: Counter[int] = Counter()
        #: would-block reason -> monitored deliveries.
        self.would_block: Counter[str] = Counter()

    def _number(self, raw: str | None) -> int:
        if raw is None:
            return _UNREADABLE
        try:
            return normalize(raw, self._country)
        except InvalidNumber:
            return _UNREADABLE

    def add_blocks(self, records: Iterable[AuditRecord]) -> None:
        """Count a batch of block-topic records (others than the limits' are skipped)."""
        for record in records:
            reason = record.reason
            if reason == "frequency-cap":
                fields = event_fields(record.value)
                number = self._number(fields.recipient)
                self.capped_recipients[number] += 1
                self.capped_pairs[(fields.sender or "", number)] += 1
            elif reason == "quiet-hours":
                number = self._number(event_fields(record.value).recipient)
                ts = record.timestamp_ms
                offset = self._offset(number, ts) if number != _UNREADABLE else 0
                self.quiet_by_hour[(ts + offset) % _DAY_MS // _HOUR_MS] += 1

    def add_would_block(self, counts: Mapping[str, int]) -> None:
        """Take the would-block reasons counted on the deliver topic."""
        self.would_block.update(counts)

    @property
    def capped(self) -> int:
        """``frequency-cap`` blocks counted."""
        return sum(self.capped_recipients.values())

    def top_recipients(self, n: int) -> list[tuple[str, int]]:
        """(masked recipient, blocks), most capped first."""
        rows = sorted(self.capped_recipients.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(_mask(number), count) for number, count in rows]

    def top_pairs(self, n: int) -> list[tuple[str, str, int]]:
        """(sender, masked recipient, blocks), most capped first."""
        rows = sorted(self.capped_pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(sender, _mask(number), count) for (sender, number), count in rows]

    def hours(self) -> list[tuple[int, int]]:
        """(local hour, quiet-hours blocks) for the hours with blocks, in hour order."""
        return sorted(self.quiet_by_hour.items())

    def to_json(self, top: int) -> dict[str, object]:
        """The ``limits`` object of ``audit summary --format json``."""
        return {
            "top_recipients_capped": [
                {"recipient": r, "blocks": c} for r, c in self.top_recipients(top)
            ],
            "top_pairs_capped": [
                {"sender": s, "recipient": r, "blocks": c} for s, r, c in self.top_pairs(top)
            ],
            "quiet_hours_by_hour": {f"{h:02d}": c for h, c in self.hours()},
            "quiet_hours_zone": self.zone_note,
            "would_block_by_reason": dict(
                sorted(self.would_block.items(), key=lambda kv: (-kv[1], kv[0]))
            ),
        }


def _mask(number: int) -> str:
    return FULLY_MASKED if number == _UNREADABLE else mask_digits(str(number))


def write_limits_table(limits: LimitCounts, top: int, out: TextIO, *, monitored: bool) -> None:
    """The ``audit summary`` text tables of the limits' blocks."""

    def table(title: str, rows: list[tuple[str, str]], empty: str) -> None:
        out.write(f"\n{title}\n")
        if not rows:
            out.write(f"  {empty}\n")
        width = max((len(key) for key, _ in rows), default=0)
        for key, value in rows:
            out.write(f"  {key:<{width}}  {value:>10}\n")

    none = "no frequency-cap blocks"
    table(
        "bombing blocked: top recipients by frequency-cap",
        [(r, str(c)) for r, c in limits.top_recipients(top)],
        none,
    )
    table(
        "bombing blocked: top sender/recipient pairs by frequency-cap",
        [(f"{s} -> {r}", str(c)) for s, r, c in limits.top_pairs(top)],
        none,
    )
    table(
        f"quiet-hours blocks by hour of {limits.zone_note}",
        [(f"{h:02d}:00", str(c)) for h, c in limits.hours()],
        "no quiet-hours blocks",
    )
    table(
        "monitored would-blocks by reason (deliver topic)",
        [(r, str(c)) for r, c in limits.would_block.most_common()],
        "none" if monitored else "not read (--monitored reads the deliver topic)",
    )


def write_limits_csv(limits: LimitCounts, top: int, out: TextIO) -> None:
    """The limits' rows of the ``audit summary`` CSV (``section,key,reason,count``)."""
    writer = csv.writer(out, lineterminator="\n")
    for recipient, count in limits.top_recipients(top):
        writer.writerow(("capped_recipient", recipient, "frequency-cap", count))
    for sender, recipient, count in limits.top_pairs(top):
        writer.writerow(("capped_pair", f"{sender} {recipient}", "frequency-cap", count))
    for hour, count in limits.hours():
        writer.writerow(("quiet_hours_hour", f"{hour:02d}", "quiet-hours", count))
    for reason, count in limits.would_block.most_common():
        writer.writerow(("would_block", reason, "monitored", count))


def bombing_section(limits: LimitCounts | None, top: int, *, deliver_read: bool) -> str:
    """The report's "Bombing blocked" section (empty without counts)."""
    if limits is None:
        return ""
    out = [
        "<section><h2>Bombing blocked</h2>",
        '<p class="note">What the anti-bombing limits blocked (contract step 4). '
        "Recipients are masked.</p>",
        f"<h3>Top {top} recipients by frequency-cap</h3>",
    ]
    recipients = limits.top_recipients(top)
    out.append(
        html_table(("recipient", "frequency-cap blocks"), recipients, {1})
        if recipients
        else "<p>No frequency-cap blocks.</p>"
    )
    out.append(f"<h3>Top {top} sender and recipient pairs by frequency-cap</h3>")
    pairs = limits.top_pairs(top)
    out.append(
        html_table(("sender", "recipient", "frequency-cap blocks"), pairs, {2})
        if pairs
        else "<p>No frequency-cap blocks.</p>"
    )
    out += [
        "<h3>Quiet-hours blocks by hour</h3>",
        f'<p class="note">Hour of the block record\'s timestamp in {escape(limits.zone_note)}.</p>',
    ]
    hours = [(f"{h:02d}:00", c) for h, c in limits.hours()]
    out.append(
        html_table(("local hour", "quiet-hours blocks"), hours, {1})
        if hours
        else "<p>No quiet-hours blocks.</p>"
    )
    out.append("<h3>Monitored would-blocks by reason</h3>")
    would = limits.would_block.most_common()
    if would:
        out += [
            '<p class="note">Delivered with reason monitored; the reason they would have '
            "been blocked for is their filterd-would-block header.</p>",
            html_table(("would-block reason", "delivered"), would, {1}),
        ]
    elif deliver_read:
        out.append("<p>No monitored deliveries.</p>")
    else:
        out.append("<p>The deliver topic was not read (--no-deliver).</p>")
    out.append("</section>")
    return "\n".join(out)
