"""Denominators: delivered and blocked per sender, block rates, invalid messages apart."""

from __future__ import annotations

import re
from collections import Counter

from filterd.audit.aggregate import NO_SENDER, Summary, TopicCounts
from filterd.audit.export import KNOWN_REASONS
from filterd.audit.rates import block_rate, sender_rates
from filterd.audit.reasons import BLOCK_REASONS, GLOSSARY, REASON_TABLE, route_of
from filterd.audit.report import ReportMeta, render_report
from filterd.audit.timeutil import HourBuckets, TimeRange
from filterd.router import REASONS

from .streams import BASE_MS, generate
from .test_aggregate import as_audit


def test_every_decision_reason_is_in_the_one_table_with_its_route() -> None:
    for reason, route in REASONS.items():
        assert route_of(reason) == route, reason
    assert set(KNOWN_REASONS) == {r.code for r in REASON_TABLE}
    assert len(GLOSSARY) == len(REASON_TABLE)  # no code twice
    assert all(r.meaning for r in REASON_TABLE)


def test_topic_counts_equal_an_independent_count() -> None:
    delivered = generate(3000, seed=3, route="deliver")
    counts = TopicCounts()
    records = as_audit(delivered)
    for start in range(0, len(records), 700):
        counts.add_batch(records[start : start + 700])
    assert counts.total == 3000
    assert counts.by_sender == Counter(r.sender for r in delivered)
    assert counts.by_reason == Counter(r.reason for r in delivered)
    assert counts.complete
    assert counts.seen.first_ms == delivered[0].ts_ms
    assert counts.seen.last_ms == delivered[-1].ts_ms


def test_a_limit_stops_counting_and_says_so() -> None:
    records = as_audit(generate(1000, seed=4, route="deliver"))
    counts = TopicCounts(limit=250)
    counts.add_batch(records[:200])
    assert counts.complete
    assert not counts.full()
    counts.add_batch(records[200:400])
    assert counts.total == 250
    assert counts.full()
    assert not counts.complete


def test_invalid_values_count_under_no_sender() -> None:
    invalid = generate(500, seed=5, route="invalid")
    counts = TopicCounts()
    counts.add_batch(as_audit(invalid))
    assert counts.by_sender[NO_SENDER] == sum(1 for r in invalid if r.sender is None)
    assert counts.by_reason["malformed-json"] == sum(
        1 for r in invalid if r.reason == "malformed-json"
    )


def test_block_rate() -> None:
    assert block_rate(1, 3) == "25.0 %"
    assert block_rate(0, 10) == "0.0 %"
    assert block_rate(5, 0) == "100.0 %"
    assert block_rate(0, 0) == "n/a"
    assert block_rate(3, None) == "n/a"
    # A real rate is never rounded to 0 % or 100 %.
    assert block_rate(1, 10**6) == "<0.1 %"
    assert block_rate(10**6, 1) == ">99.9 %"


def _summary_and_delivered() -> tuple[Summary, TopicCounts, list, list]:
    blocked = generate(2000, seed=8)
    delivered = generate(6000, seed=9, route="deliver")
    summary = Summary(HourBuckets(), sender_hours=True)
    summary.add_batch(as_audit(blocked))
    counts = TopicCounts()
    counts.add_batch(as_audit(delivered))
    return summary, counts, blocked, delivered


def test_sender_rows_are_delivered_blocked_rate_and_blocks_by_reason() -> None:
    summary, counts, blocked, delivered = _summary_and_delivered()
    reasons, rows = sender_rates(summary, counts, top=5)
    assert reasons == [r for r in BLOCK_REASONS if r in {b.reason for b in blocked}]
    got_blocked = Counter(r.sender for r in blocked)
    got_delivered = Counter(r.sender for r in delivered)
    assert [row[0] for row in rows[:5]] == [s for s, _ in got_blocked.most_common(5)]
    for row in rows[:5]:
        sender = str(row[0])
        n_blocked, n_delivered = got_blocked[sender], got_delivered[sender]
        assert row[1:4] == (n_delivered, n_blocked, block_rate(n_blocked, n_delivered))
        by_reason = Counter(r.reason for r in blocked if r.sender == sender)
        assert list(row[4:]) == [by_reason[r] for r in reasons]
    last = rows[-1]
    assert last[:4] == (
        f"all {len(got_blocked | got_delivered)} senders",
        6000,
        2000,
        block_rate(2000, 6000),
    )


def test_a_sender_with_only_deliveries_is_listed_with_a_zero_rate() -> None:
    summary = Summary(HourBuckets(), sender_hours=True)
    counts = TopicCounts()
    counts.add_batch(as_audit(generate(10, seed=1, route="deliver", senders=1)))
    _, rows = sender_rates(summary, counts, top=5)
    assert rows[0][1:4] == (10, 0, "0.0 %")


def _page(summary: Summary, delivered: TopicCounts | None, invalid: TopicCounts | None) -> str:
    meta = ReportMeta(
        ["b"],
        TimeRange(BASE_MS, BASE_MS + 86_400_000),
        HourBuckets().tz,
        "UTC",
        BASE_MS,
        delivered=delivered,
        invalid=invalid,
    )
    return render_report(summary, meta)


def test_report_states_the_period_and_keeps_invalid_messages_apart() -> None:
    summary, counts, _, _ = _summary_and_delivered()
    invalid = TopicCounts()
    invalid.add_batch(as_audit(generate(300, seed=6, route="invalid")))
    page = _page(summary, counts, invalid)
    assert re.search(r"Period covered: from \S+ \(inclusive\) to \S+ \(exclusive\)", page)
    totals = page[page.index("<h2>Totals") :].split("</section>")[0]
    assert "<td>delivered</td><td class=num>6,000</td>" in totals
    assert "<td>blocked</td><td class=num>2,000</td>" in totals
    assert f"<td>block rate</td><td class=num>{block_rate(2000, 6000)}</td>" in totals
    assert "<td>invalid (not decided, apart)</td><td class=num>300</td>" in totals
    # Invalid reasons appear only in their own section, never in the block tables.
    before = page[: page.index("Invalid messages (apart")]
    assert not any(f"<td>{r}</td>" in before for r in ("malformed-json", "bad-recipient"))
    section = page[page.index("Invalid messages (apart") :].split("</section>")[0]
    assert "<td>malformed-json</td>" in section


def test_report_without_the_deliver_side_says_so() -> None:
    summary, _, _, _ = _summary_and_delivered()
    page = _page(summary, None, None)
    assert "The deliver topic was not read (--no-deliver)" in page
    assert "<td>block rate</td><td class=num>n/a</td>" in page
    assert "The invalid topic was not read" in page
    limited = TopicCounts(limit=10)
    limited.add_batch(as_audit(generate(20, seed=2, route="deliver")))
    assert "delivered counts are lower bounds" in _page(summary, limited, None)


def test_reason_tables_follow_the_one_table() -> None:
    # A reason added to the table appears in the glossary with no other change.
    summary, counts, _, _ = _summary_and_delivered()
    page = _page(summary, counts, None)
    glossary = page[page.index("<h2>Reason codes") :]
    codes = re.findall(r"<tr><td>([a-z-]+)</td><td>(deliver|block|invalid)</td>", glossary)
    assert codes == [(r.code, r.route) for r in REASON_TABLE]
