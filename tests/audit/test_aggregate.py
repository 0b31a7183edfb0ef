from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

from filterd.audit.aggregate import NO_SENDER, Summary, find_bursts
from filterd.audit.records import MISSING, AuditRecord, decode_headers, event_fields
from filterd.audit.timeutil import HourBuckets

from .streams import HOUR_MS, generate


def as_audit(routed_list: list, topic: str = "t") -> list[AuditRecord]:
    return [
        AuditRecord(
            topic, i % 3, i, r.ts_ms, r.key, r.value, r.route, r.reason, r.snapshot, r.source
        )
        for i, r in enumerate(routed_list)
    ]


def hour_label(ts_ms: int, tz: timezone | type[UTC] = UTC) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, tz)  # type: ignore[arg-type]
    return moment.replace(minute=0, second=0, microsecond=0).isoformat(timespec="minutes")


def test_summary_equals_an_independent_count() -> None:
    routed = generate(5000, seed=7, step_ms=9_000)
    cst = timezone(timedelta(hours=8))
    summary = Summary(HourBuckets(cst))
    records = as_audit(routed)
    for start in range(0, len(records), 700):  # batches of any size
        summary.add_batch(records[start : start + 700])

    by_sender: dict[str, Counter[str]] = {}
    for r in routed:
        by_sender.setdefault(r.sender, Counter())[r.reason] += 1
    expected_senders = sorted(by_sender.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    got = summary.to_json(top=None)
    assert got["total"] == 5000
    assert got["by_reason"] == dict(Counter(r.reason for r in routed))
    assert [(s["sender"], s["total"], s["by_reason"]) for s in got["by_sender"]] == [
        (sender, sum(c.values()), dict(c)) for sender, c in expected_senders
    ]
    assert got["by_hour"] == dict(Counter(hour_label(r.ts_ms, cst) for r in routed))
    assert list(got["by_hour"]) == sorted(got["by_hour"])
    assert got["by_snapshot"] == dict(Counter(r.snapshot for r in routed))
    assert len(summary.to_json(top=3)["by_sender"]) == 3


def test_summary_tolerates_values_that_are_not_events() -> None:
    summary = Summary(HourBuckets())
    summary.add_batch(
        [
            AuditRecord("t", 0, 0, 0, None, None, "invalid", "malformed-json", "v", "s"),
            AuditRecord("t", 0, 1, 0, None, b"\xff\xfe", "invalid", "malformed-json", "v", "s"),
            AuditRecord("t", 0, 2, 0, None, b"[1, 2]", "invalid", "malformed-json", "v", "s"),
            AuditRecord(
                "t", 0, 3, 0, None, b'{"sender": 5}', "invalid", "bad-field-type", "v", "s"
            ),
        ]
    )
    assert summary.total == 4
    assert summary.top_senders()[0].sender == NO_SENDER
    assert event_fields(b"\xff").id is None


def test_headers_decode_and_missing_ones() -> None:
    assert decode_headers([("filterd-reason", b"no-consent"), ("x", b"y")]) == (
        MISSING,
        "no-consent",
        MISSING,
        MISSING,
    )
    fields = event_fields(b'{"id": "a", "sender": " 1069 ", "ts": true, "recipient": 5}')
    assert (fields.id, fields.sender, fields.ts, fields.recipient) == ("a", "1069", None, None)


def test_bursts_flag_a_jump_and_not_steady_or_small_senders() -> None:
    first = 1000
    hours = {
        # steady 100/h for 12 hours: no burst
        "steady": Counter({first + h: 100 for h in range(12)}),
        # 2/h, then 400 in hour 8: a bombing campaign
        "bomber": Counter({**{first + h: 2 for h in range(8)}, first + 8: 400}),
        # a jump from 0 to 30: below the volume threshold
        "small": Counter({first + 9: 30}),
        # 60 in the very first hour: nothing known before it
        "early": Counter({first: 60}),
        # doubling is not a jump by the default ratio
        "growing": Counter({**{first + h: 60 for h in range(6)}, first + 6: 150}),
    }
    bursts = find_bursts(hours, first_hour=first)
    assert [b.sender for b in bursts] == ["bomber"]
    (b,) = bursts
    assert (b.hour, b.blocks, b.baseline, b.ratio) == (first + 8, 400, 2.0, 200.0)
    # Zero hours count: a sender silent for six hours then sending 50 is a burst.
    quiet = {"quiet": Counter({first: 40, first + 7: 50})}
    assert [b.sender for b in find_bursts(quiet, first_hour=first)] == ["quiet"]
    assert find_bursts(quiet, first_hour=first, min_count=51) == []


def test_hour_gap_listing() -> None:
    summary = Summary(HourBuckets())
    summary.add_batch(as_audit(generate(2, seed=1, step_ms=5 * HOUR_MS)))
    assert len(summary.hours()) == 6


def test_summary_counts_recategorized_messages_by_declared_category() -> None:
    import io
    from datetime import UTC

    from filterd.audit.coverage import Coverage
    from filterd.audit.output import write_summary_csv
    from filterd.audit.records import declared_category_of
    from filterd.audit.timeutil import TimeRange

    headers = [("filterd-reason", b"no-consent"), ("filterd-declared-category", b"verification")]
    assert declared_category_of(headers) == "verification"
    assert declared_category_of(headers[:1]) is None
    value = b'{"id": "m", "sender": "S", "recipient": "+8613800000001"}'
    rows = [
        ("no-consent", "verification"),
        ("no-consent", "verification"),
        ("consent-not-explicit", "transactional"),
        ("no-consent", None),
    ]
    summary = Summary(HourBuckets())
    summary.add_batch([
        AuditRecord("t", 0, i, 0, None, value, "block", reason, "v", "s", declared)
        for i, (reason, declared) in enumerate(rows)
    ])  # fmt: skip
    assert summary.to_json()["by_declared_category"] == {
        "transactional": {"consent-not-explicit": 1},
        "verification": {"no-consent": 2},
    }
    out = io.StringIO()
    write_summary_csv(summary, 10, out, Coverage(TimeRange(None, None), UTC, "UTC", 0))
    assert "declared_category,verification,no-consent,2" in out.getvalue().splitlines()
