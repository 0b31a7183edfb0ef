"""The report's denominators: delivered and blocked per sender, block rates, and
the invalid messages counted apart.

A block count alone does not say whether a sender is a problem: 10 000 blocks
out of 10 million messages is not 10 000 out of 11 000. The deliver topic gives
the denominator; the invalid topic (messages that could not be decided) is
shown on its own and never enters a block rate.
"""

from __future__ import annotations

from collections import Counter

from filterd.audit.aggregate import Summary, TopicCounts
from filterd.audit.reasons import BLOCK_REASONS, GLOSSARY, in_table_order
from filterd.audit.tables import html_table

__all__ = ["block_rate", "invalid_section", "sender_rates", "sender_section", "totals_section"]


def block_rate(blocked: int, delivered: int | None) -> str:
    """``blocked / (blocked + delivered)`` as a percentage; ``n/a`` without a denominator."""
    if delivered is None:
        return "n/a"
    decided = blocked + delivered
    if not decided:
        return "n/a"
    share = 100 * blocked / decided
    # Never round a real block rate to 0 % or 100 %: show it is just above/below.
    if 0 < share < 0.1:
        return "<0.1 %"
    if 99.9 < share < 100:
        return ">99.9 %"
    return f"{share:.1f} %"


def _delivered_note(delivered: TopicCounts | None) -> str:
    if delivered is None:
        return (
            '<p class="warning"><strong>The deliver topic was not read (--no-deliver): '
            "delivered counts and block rates are not known.</strong></p>"
        )
    if not delivered.complete:
        return (
            f'<p class="warning"><strong>Only the first {delivered.total:,} delivered records '
            "were counted (--deliver-limit): delivered counts are lower bounds and block rates "
            "upper bounds.</strong></p>"
        )
    return ""


def totals_section(
    summary: Summary, delivered: TopicCounts | None, invalid: TopicCounts | None
) -> str:
    """Delivered, blocked, block rate; invalid apart; blocks by reason."""
    rows: list[tuple[str, object, str]] = []
    if delivered is not None:
        rows.append(("delivered", delivered.total, ""))
    rows.append(("blocked", summary.total, ""))
    rows.append(
        (
            "block rate",
            block_rate(summary.total, None if delivered is None else delivered.total),
            "blocked / (delivered + blocked)",
        )
    )
    if invalid is not None:
        rows.append(("invalid (not decided, apart)", invalid.total, "see Invalid messages"))
    out = [
        "<section><h2>Totals</h2>",
        _delivered_note(delivered),
        html_table(("", "messages", "note"), rows, {1}),
    ]
    if summary.total:
        reasons = in_table_order(set(summary.by_reason))
        out.append("<h3>Blocks by reason</h3>")
        out.append(
            html_table(
                ("reason", "blocks", "share of blocks"),
                [
                    (r, summary.by_reason[r], f"{100 * summary.by_reason[r] / summary.total:.1f} %")
                    for r in reasons
                ],
                {1, 2},
            )
        )
    out.append("</section>")
    return "\n".join(out)


def sender_rates(
    summary: Summary, delivered: TopicCounts | None, top: int
) -> tuple[list[str], list[tuple[object, ...]]]:
    """(block reason columns, rows) of the per-sender table: the ``top`` senders by
    blocked count, then by delivered count, each with delivered, blocked, block
    rate and blocks by reason; a last row for all senders."""
    reasons = [r for r in BLOCK_REASONS if summary.by_reason.get(r)]
    reasons += [r for r in in_table_order(set(summary.by_reason)) if r not in reasons]
    delivered_by: Counter[str] = delivered.by_sender if delivered is not None else Counter()
    blocked_by = {s: sum(c.values()) for s, c in summary.by_sender.items()}
    senders = sorted(
        blocked_by.keys() | delivered_by.keys(),
        key=lambda s: (-blocked_by.get(s, 0), -delivered_by.get(s, 0), s),
    )
    rows: list[tuple[object, ...]] = []
    empty: Counter[str] = Counter()
    for sender in senders[:top]:
        blocked = blocked_by.get(sender, 0)
        got = delivered_by.get(sender, 0) if delivered is not None else None
        by_reason = summary.by_sender.get(sender, empty)
        rows.append(
            (
                sender,
                "n/a" if got is None else got,
                blocked,
                block_rate(blocked, got),
                *(by_reason.get(r, 0) for r in reasons),
            )
        )
    if senders:
        total_delivered = delivered.total if delivered is not None else None
        rows.append(
            (
                f"all {len(senders):,} senders",
                "n/a" if total_delivered is None else total_delivered,
                summary.total,
                block_rate(summary.total, total_delivered),
                *(summary.by_reason.get(r, 0) for r in reasons),
            )
        )
    return reasons, rows


def sender_section(summary: Summary, delivered: TopicCounts | None, top: int) -> str:
    """The printable per-sender tables: delivered, blocked and block rate; blocks by reason.

    Two tables, so that each fits a printed page however many reasons there are.
    """
    reasons, rows = sender_rates(summary, delivered, top)
    if not rows:
        body = ["<p>No records.</p>"]
    else:
        body = [
            html_table(
                ("sender", "delivered", "blocked", "block rate"),
                [row[:4] for row in rows],
                {1, 2, 3},
                css_class="rates",
            ),
            "</section>",
            f"<section><h2>Blocks per sender by reason (top {top} by blocks)</h2>",
            html_table(
                ("sender", *reasons),
                [(row[0], *row[4:]) for row in rows],
                set(range(1, len(reasons) + 1)),
                css_class="by-reason",
            ),
        ]
    return "\n".join(
        [
            f"<section><h2>Delivered and blocked per sender (top {top} by blocks)</h2>",
            _delivered_note(delivered),
            '<p class="note">Block rate: blocked / (delivered + blocked) in the period. '
            "Invalid messages are not in it (see Invalid messages).</p>",
            *body,
            "</section>",
        ]
    )


def invalid_section(invalid: TopicCounts | None, top: int) -> str:
    """Invalid messages by reason and by sender, apart from the blocks."""
    out = ["<section><h2>Invalid messages (apart from blocks)</h2>"]
    if invalid is None:
        out.append("<p>The invalid topic was not read (--no-invalid).</p></section>")
        return "\n".join(out)
    out.append(
        '<p class="note">Messages that could not be decided (not JSON, a field missing or '
        "of the wrong type, a recipient that is not a phone number...): they are neither "
        "delivered nor blocked, and not counted in block rates. The sender is "
        "<code>(none)</code> when the value has no readable sender.</p>"
    )
    if not invalid.total:
        out.append("<p>None in this period.</p></section>")
        return "\n".join(out)
    reasons = in_table_order(set(invalid.by_reason))
    out.append(
        html_table(
            ("reason", "messages", "meaning"),
            [(r, invalid.by_reason[r], GLOSSARY.get(r, "")) for r in reasons],
            {1},
        )
    )
    senders = sorted(invalid.by_sender.items(), key=lambda item: (-item[1], item[0]))
    out.append(f"<h3>Senders with the most invalid messages (top {top})</h3>")
    out.append(html_table(("sender", "invalid messages"), senders[:top], {1}))
    out.append("</section>")
    return "\n".join(out)
