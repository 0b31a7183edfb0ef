"""``filterd audit report``: one self-contained HTML file for an auditor.

The file has no external assets (a Content-Security-Policy forbids them), so
it opens offline and archives with the case. Charts are inline SVG drawn
here; print CSS keeps each chart on one page. A tiny inline script marks
the document as rendered when no script error happened, which the tests
check in a headless browser; the report reads the same without it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo

from filterd import __version__
from filterd.audit.aggregate import Burst, Seen, Summary, TopicCounts, find_bursts
from filterd.audit.axes import bin_hours, format_count, nice_ticks, time_ticks
from filterd.audit.bombing import LimitCounts, bombing_section
from filterd.audit.consent_report import consent_sections
from filterd.audit.coverage import Coverage
from filterd.audit.optouts import Honoured
from filterd.audit.optouts import html_section as optouts_section
from filterd.audit.rates import invalid_section, sender_section, totals_section
from filterd.audit.reader import NO_LATE, LateRecords
from filterd.audit.reasons import in_table_order
from filterd.audit.tables import escape, html_table
from filterd.audit.timeutil import TimeRange, format_ms

# Reasons keep their colour across charts and reports; other (future)
# reasons take the next free colour of the palette.
_REASON_COLORS = {
    "no-consent": "#c0392b",
    "opted-out": "#8e44ad",
    "unknown-sender": "#e67e22",
    "recipient-dnd": "#795548",
    "malformed-json": "#2c3e50",
    "missing-field": "#34495e",
    "bad-field-type": "#5d6d7e",
    "bad-recipient": "#7f8c8d",
    "oversized": "#95a5a6",
    "internal-error": "#000000",
}
_PALETTE = ("#1f77b4", "#2ca02c", "#17becf", "#bcbd22", "#e377c2", "#aec7e8", "#98df8a")


@dataclass(frozen=True, slots=True)
class BurstRule:
    """How a block-rate jump is detected (see :func:`find_bursts`)."""

    window: int = 6
    min_count: int = 50
    min_ratio: float = 5.0


@dataclass(frozen=True, slots=True)
class ReportMeta:
    """What the report says about how it was made."""

    topics: Sequence[str]
    time_range: TimeRange
    tz: tzinfo
    #: How the zone is named in the report (``+08:00``, ``Asia/Shanghai``).
    tz_label: str
    generated_ms: int
    top: int = 20
    burst_rule: BurstRule = BurstRule()
    #: Manifest and refused-row report per snapshot version (consent_report.load_versions).
    versions: Mapping[str, dict[str, object]] = field(default_factory=dict)
    #: The late margin read and what it missed.
    late_ms: int = 0
    late: LateRecords = NO_LATE
    #: Counts of the deliver topic (None: not read, --no-deliver).
    delivered: TopicCounts | None = None
    #: Counts of the invalid topic (None: not read, --no-invalid).
    invalid: TopicCounts | None = None
    #: Live opt-outs honoured (None: no changes topic configured).
    optouts: Honoured | None = None
    #: What the anti-bombing limits blocked (None: no such section).
    limits: LimitCounts | None = None


_e = escape


def _colors(reasons: Sequence[str]) -> dict[str, str]:
    colors: dict[str, str] = {}
    spare = iter(_PALETTE * (len(reasons) // len(_PALETTE) + 1))
    for reason in reasons:
        colors[reason] = _REASON_COLORS.get(reason) or next(spare)
    return colors


def _legend(colors: dict[str, str], x: float, y: float) -> list[str]:
    parts: list[str] = []
    for reason, color in colors.items():
        parts.append(
            f'<rect x="{x:.0f}" y="{y - 9:.0f}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14:.0f}" y="{y:.0f}">{_e(reason)}</text>'
        )
        x += 26 + 7.4 * len(reason)
    return parts


def reason_time_chart(summary: Summary, colors: dict[str, str]) -> str:
    """Stacked bars: blocks per hour (per day over more than four days), split by reason."""
    hours = summary.hours()
    width, height = 960, 340
    left, right, top, bottom = 64, 12, 34, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    per = bin_hours(hours[0], hours[-1]) if hours else 1
    # Bars of ``per`` hours each, keyed by the bar's first hour.
    bars: dict[int, Counter[str]] = {}
    for hour, counts in summary.hour_reason.items():
        bars.setdefault(hour - hour % per, Counter()).update(counts)
    keys = list(range(hours[0] - hours[0] % per, hours[-1] + 1, per)) if hours else []
    peak = max((sum(c.values()) for c in bars.values()), default=0)
    ticks = nice_ticks(peak)
    y_max = ticks[-1]
    unit = "hour" if per == 1 else "day"
    parts = [
        f'<svg class="chart" id="chart-reasons-over-time" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Blocks by reason per {unit}" '
        f'data-bar="{unit}" xmlns="http://www.w3.org/2000/svg">'
    ]
    parts += _legend(colors, left, 16)
    for value in ticks:
        y = top + plot_h - plot_h * value / y_max
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis ytick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_e(format_count(value))}</text>"
        )
    if keys:
        slot = plot_w / len(keys)
        bar = min(max(slot * 0.8, 0.5), 48.0)  # one bar of a short period stays a bar
        label = summary.buckets.label
        for i, key in enumerate(keys):
            x = left + i * slot + (slot - bar) / 2
            y = float(top + plot_h)
            when = label(key)[:10] if per == 24 else label(key)
            counts = bars.get(key, Counter())
            # Stacked in the legend's order.
            for reason in colors:
                count = counts.get(reason, 0)
                if not count:
                    continue
                h = plot_h * count / y_max
                y -= h
                parts.append(
                    f'<rect class="bar" x="{x:.2f}" y="{y:.2f}" width="{bar:.2f}" '
                    f'height="{h:.2f}" fill="{colors[reason]}">'
                    f"<title>{_e(when)} {_e(reason)}: {count:,}</title></rect>"
                )
        for key, text in time_ticks(keys[0], keys[-1] + per - 1, label, min_step=per):
            i = (key - keys[0]) // per
            parts.append(
                f'<text class="axis xtick" x="{left + i * slot + slot / 2:.1f}" '
                f'y="{top + plot_h + 16}" text-anchor="middle">{_e(text)}</text>'
            )
    parts.append(
        f'<line class="axisline" x1="{left}" x2="{width - right}" '
        f'y1="{top + plot_h}" y2="{top + plot_h}"/></svg>'
    )
    return "".join(parts)


def top_senders_chart(summary: Summary, colors: dict[str, str], top: int) -> str:
    """Horizontal stacked bars: the senders with the most blocks."""
    rows = summary.top_senders(top)
    row_h, left, right, top_pad = 22, 190, 70, 30
    width = 960
    height = top_pad + row_h * max(len(rows), 1) + 10
    plot_w = width - left - right
    x_max = max((row.total for row in rows), default=1)
    parts = [
        f'<svg class="chart" id="chart-top-senders" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Top senders by blocked messages" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    parts += _legend(colors, left, 16)
    for i, row in enumerate(rows):
        y = top_pad + i * row_h
        name = row.sender if len(row.sender) <= 26 else row.sender[:25] + "…"
        parts.append(
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{_e(name)}'
            f"<title>{_e(row.sender)}</title></text>"
        )
        x = float(left)
        # The legend's order in every bar, so colours line up row to row.
        for reason in colors:
            count = row.by_reason.get(reason, 0)
            if not count:
                continue
            w = plot_w * count / x_max
            parts.append(
                f'<rect class="bar" x="{x:.2f}" y="{y + 3}" width="{w:.2f}" height="{row_h - 6}" '
                f'fill="{colors[reason]}"><title>{_e(row.sender)} {_e(reason)}: {count}</title>'
                "</rect>"
            )
            x += w
        parts.append(
            f'<text class="axis" x="{x + 6:.1f}" y="{y + 15}">{_e(format_count(row.total))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def sparkline(counts: Counter[int], hours: Sequence[int], highlight: int) -> str:
    """A small bar chart of one sender's blocks per hour, the burst in red."""
    width, height = 240, 36
    peak = max((counts.get(h, 0) for h in hours), default=0) or 1
    slot = width / max(len(hours), 1)
    parts = [
        f'<svg class="chart spark" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="blocks per hour" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, hour in enumerate(hours):
        count = counts.get(hour, 0)
        if not count:
            continue
        h = (height - 2) * count / peak
        color = "#c0392b" if hour == highlight else "#7f8c8d"
        parts.append(
            f'<rect x="{i * slot:.2f}" y="{height - h:.2f}" width="{max(slot * 0.8, 0.5):.2f}" '
            f'height="{h:.2f}" fill="{color}"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


_table = html_table


_CSS = """
:root { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", sans-serif;
  color: #222; }
body { max-width: 1000px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.meta { color: #555; font-size: .9em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: middle;
  overflow-wrap: break-word; }
td.wrap { word-break: break-all; font-family: ui-monospace, monospace; font-size: .85em; }
table.by-reason { font-size: .8em; }
td.num { white-space: nowrap; }
table.codes td:first-child { white-space: nowrap; }
.period { font-size: 1.05em; }
.warning { color: #a40000; }
code { overflow-wrap: anywhere; }
th { background: #f3f3f3; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
svg.chart { display: block; font-size: 13px; margin: .4em 0; }
svg.chart text { fill: #333; }
svg.chart .grid { stroke: #e4e4e4; }
svg.chart .axisline { stroke: #888; }
.note { font-size: .85em; color: #444; }
section { break-inside: avoid; page-break-inside: avoid; }
@media print {
  body { max-width: none; margin: 0; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2 { break-after: avoid; }
}
"""

# Marks the document when it rendered without a script error; tests read
# the marker from the browser's DOM. The report works the same without it.
_MARKER = """<script>
(function () {
  var failed = false;
  window.addEventListener("error", function () { failed = true; });
  window.addEventListener("load", function () {
    document.body.setAttribute("data-charts", document.querySelectorAll("svg.chart").length);
    var root = document.documentElement;
    document.body.setAttribute("data-overflow", Math.max(0, root.scrollWidth - root.clientWidth));
    document.body.setAttribute("data-rendered", failed ? "error" : "ok");
  });
})();
</script>"""


def render_report(summary: Summary, meta: ReportMeta) -> str:
    """The HTML report for a summary made with ``sender_hours=True``."""
    tz = meta.tz
    rule = meta.burst_rule
    reasons = list(summary.by_reason)
    colors = _colors(in_table_order(set(reasons)))
    hours = summary.hours()
    bursts: list[Burst] = []
    if summary.sender_hours is not None and hours:
        bursts = find_bursts(
            summary.sender_hours,
            first_hour=hours[0],
            window=rule.window,
            min_count=rule.min_count,
            min_ratio=rule.min_ratio,
        )
    coverage = Coverage(meta.time_range, tz, meta.tz_label, meta.late_ms, meta.late)
    range_text = (
        f"from {_e(coverage.start_text)} (inclusive) to {_e(coverage.end_text)} (exclusive)"
    )
    margin = (
        f"Read {meta.late_ms} ms past the end for records stamped out of order (--late-ms).<br>"
        if meta.time_range.end_ms is not None
        else ""
    )
    warning = coverage.warning()
    tz_name = _e(meta.tz_label)
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No external asset may load: the report must read the same offline.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>filterd audit report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>filterd audit report</h1>",
        f'<p class="period"><strong>Period covered: {range_text}</strong>, by the output '
        f"record's Kafka timestamp, times in {tz_name}.</p>",
        f'<p class="meta">{_seen_text(summary, meta)}<br>'
        f"Topics read: {_e(', '.join(meta.topics))}.<br>"
        f"{margin}"
        f"Generated {_e(format_ms(meta.generated_ms, tz))} by filterd {_e(__version__)}.</p>",
        f'<p class="warning"><strong>{_e(warning)}</strong></p>' if warning else "",
        totals_section(summary, meta.delivered, meta.invalid),
        sender_section(summary, meta.delivered, meta.top),
    ]
    out += [
        "<section><h2>Blocks by reason over time</h2>",
        f'<p class="note">One bar per {"hour" if _hourly(summary) else "day"} '
        f"({tz_name}); the exact counts are in the tables.</p>",
        reason_time_chart(summary, colors),
        "</section>",
        f"<section><h2>Top {meta.top} senders</h2>",
        top_senders_chart(summary, colors, meta.top),
        "</section>",
        "<section><h2>Senders whose block rate jumped</h2>",
        f'<p class="note">A sender is listed when, in some hour, it had at least '
        f"{rule.min_count} blocked messages and at least {rule.min_ratio:g} times the median "
        f"of its hourly blocked counts over the {rule.window} hours before (hours without "
        "blocks count as 0, a median below 1 as 1; hours before the start of the report are "
        "unknown and not counted). The hour with the highest ratio is shown; such jumps are "
        "typical of bombing campaigns.</p>",
    ]
    if bursts and summary.sender_hours is not None:
        rows = [
            (
                b.sender,
                summary.buckets.label(b.hour),
                b.blocks,
                f"{b.baseline:g}",
                f"{b.ratio:.1f}",
                sparkline(summary.sender_hours[b.sender], hours, b.hour),
            )
            # Each row carries a chart over every hour: cap the list so a long
            # report of a noisy month stays a file a browser opens at once.
            for b in bursts[: meta.top]
        ]
        out.append(_table_with_svg(rows))
        if len(bursts) > meta.top:
            out.append(
                f'<p class="note">{len(bursts) - meta.top} more senders jumped by this rule; '
                "raise --top to list them.</p>"
            )
    else:
        out.append("<p>No sender's block rate jumped by this rule.</p>")
    out.append("</section>")
    out.append(bombing_section(meta.limits, meta.top, deliver_read=meta.delivered is not None))
    out += [
        "<section><h2>Snapshot versions</h2>",
        _table(("snapshot version", "blocks"), sorted(summary.by_snapshot.items()), {1}),
        "</section>",
        invalid_section(meta.invalid, meta.top),
        optouts_section(meta.optouts),
        consent_sections(summary, meta.versions, meta.top),
        _MARKER,
        "</body></html>",
    ]
    return "\n".join(out)


def _hourly(summary: Summary) -> bool:
    hours = summary.hours()
    return not hours or bin_hours(hours[0], hours[-1]) == 1


def _seen_text(summary: Summary, meta: ReportMeta) -> str:
    """Which records were found: the earliest and latest timestamps of all topics read."""
    seen = Seen()
    seen.merge(summary.seen)
    for counts in (meta.delivered, meta.invalid):
        if counts is not None:
            seen.merge(counts.seen)
    if seen.first_ms is None or seen.last_ms is None:
        return "No record was found in the period."
    return (
        f"Records found are stamped from {_e(format_ms(seen.first_ms, meta.tz))} to "
        f"{_e(format_ms(seen.last_ms, meta.tz))}."
    )


def _table_with_svg(rows: Sequence[tuple[str, str, int, str, str, str]]) -> str:
    # The last cell is trusted SVG made above; every other cell is escaped.
    head = (
        "<tr><th>sender</th><th>hour</th><th class=num>blocks</th>"
        "<th class=num>median before</th><th class=num>ratio</th><th>blocks per hour</th></tr>"
    )
    body = "".join(
        f"<tr><td>{_e(s)}</td><td>{_e(h)}</td><td class=num>{c}</td><td class=num>{_e(m)}</td>"
        f"<td class=num>{_e(r)}</td><td>{svg}</td></tr>"
        for s, h, c, m, r, svg in rows
    )
    return f'<table class="bursts"><thead>{head}</thead><tbody>{body}</tbody></table>'
