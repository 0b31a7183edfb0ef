"""Text forms of audit results: summary tables and CSV, the ``why`` account."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import tzinfo
from typing import TYPE_CHECKING, TextIO

from filterd.audit.aggregate import Summary
from filterd.audit.coverage import Coverage
from filterd.audit.records import event_fields
from filterd.audit.timeutil import format_ms

if TYPE_CHECKING:
    from filterd.audit.why import Sighting


def write_summary_csv(summary: Summary, top: int, out: TextIO, coverage: Coverage) -> None:
    """CSV form: ``section,key,reason,count`` rows, one section per count; the
    ``range`` rows first say what was read."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("section", "key", "reason", "count"))
    writer.writerows(coverage.csv_rows())
    writer.writerow(("total", "", "", summary.total))
    for reason, count in summary.by_reason.most_common():
        writer.writerow(("reason", reason, "", count))
    for row in summary.top_senders(top):
        writer.writerow(("sender", row.sender, "", row.total))
        for reason, count in row.by_reason.items():
            writer.writerow(("sender", row.sender, reason, count))
    for hour in sorted(summary.by_hour):
        writer.writerow(("hour", summary.buckets.label(hour), "", summary.by_hour[hour]))
    for version, count in sorted(summary.by_snapshot.items()):
        writer.writerow(("snapshot", version, "", count))
    for category, reasons in sorted(summary.by_declared_category.items()):
        for reason, count in sorted(reasons.items()):
            writer.writerow(("declared_category", category, reason, count))


def write_summary_table(summary: Summary, top: int, out: TextIO, coverage: Coverage) -> None:
    """Plain-text tables for a terminal, after the range read."""

    def table(title: str, rows: list[tuple[str, str]]) -> None:
        out.write(f"\n{title}\n")
        width = max((len(key) for key, _ in rows), default=0)
        for key, value in rows:
            out.write(f"  {key:<{width}}  {value:>10}\n")

    out.write(f"{coverage.describe()}\n")
    warning = coverage.warning()
    if warning is not None:
        out.write(f"{warning}\n")
    out.write(f"total  {summary.total}\n")
    table("by reason", [(r, str(c)) for r, c in summary.by_reason.most_common()])
    rows = summary.top_senders(top)
    table(
        f"top {len(rows)} senders",
        [
            (row.sender, f"{row.total}  " + ", ".join(f"{r} {c}" for r, c in row.by_reason.items()))
            for row in rows
        ],
    )
    label = summary.buckets.label
    table("by hour", [(label(h), str(summary.by_hour[h])) for h in sorted(summary.by_hour)])
    table("by snapshot", [(v, str(c)) for v, c in sorted(summary.by_snapshot.items())])


def format_why(
    message_id: str,
    sightings: list[Sighting],
    tz: tzinfo,
    show: Callable[[str | None, str], str],
    country: str,
) -> str:
    """The text form of ``why``."""
    if not sightings:
        return f"message {message_id}: not found in the topics and time range read\n"
    buf = io.StringIO()
    for s in sightings:
        r, again = s.record, s.redecision
        fields = event_fields(r.value)
        buf.write(
            f"message {message_id}\n"
            f"  found in   {r.location} at {format_ms(r.timestamp_ms, tz)}\n"
            f"  sender     {fields.sender}\n"
            f"  recipient  {show(fields.recipient, country)}\n"
            f"  category   {fields.category or '(none: marketing)'}\n"
            f"  route      {r.route}\n"
            f"  reason     {r.reason}\n"
            f"  snapshot   {r.snapshot}\n"
            f"  source     {r.source}\n"
        )
        if r.change is not None:
            buf.write(f"  change     {r.change} (re-decided with the changes up to it)\n")
        if again.available:
            verdict = "REPRODUCES" if again.reproduces else "DOES NOT REPRODUCE"
            buf.write(
                f"  re-decided against snapshot {again.snapshot}: "
                f"{again.route} {again.reason} - {verdict}\n"
            )
        else:
            buf.write(f"  not re-decided: snapshot {again.snapshot} {again.error}\n")
        if s.evidence is not None:
            if s.evidence.error is not None:
                buf.write(f"  consent evidence: not available: {s.evidence.error}\n")
            elif not s.evidence.rows:
                buf.write(f"  consent evidence: no consent row of this pair in {r.snapshot}\n")
            for row in s.evidence.rows:
                where = (
                    f"change {row.change}"
                    if row.change
                    else f"line {row.line} of the consents file"
                )
                buf.write(
                    f"  consent evidence: {where}: method "
                    f"{row.method or '(none)'}, granted_at {row.granted_at or '(none)'}, "
                    f"expires_at {row.expires_at or '(none)'}\n"
                )
    return buf.getvalue()
