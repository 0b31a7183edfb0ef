"""The fault suite's checker must itself be able to fail: these tests feed it
known losses, repeats and misroutes and expect them counted."""

from __future__ import annotations

import random

import orjson
import pytest

from tests.chaos import data as fl
from tests.support import check
from tests.support import reference as ref

DATA = fl.ConsentData(
    consents=frozenset({("1069001", 8613800000001), ("1069001", 8613800000002)}),
    optouts=frozenset({("1069001", 8613800000003), ("1069002", 8613800000001)}),
    dnd=frozenset({8613800000009}),
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+8613800000001", 8613800000001),
        ("008613800000001", 8613800000001),
        ("13800000001", 8613800000001),
        ("013800000001", 8613800000001),
        ("+86 138-0000-0001", 8613800000001),
        ("(138) 0000.0001", 8613800000001),
        ("+0123456789", None),
        ("+86138", None),
        ("+1234567890123456", None),
        ("138abc", None),
        ("", None),
        ("+", None),
    ],
)
def test_ref_normalize(raw: str, expected: int | None) -> None:
    assert ref.ref_normalize(raw) == expected


def _ev(**fields: object) -> bytes:
    return orjson.dumps({"id": "m1", **fields})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (_ev(sender="1069001", recipient="13800000001"), ("deliver", "consent")),
        (_ev(sender=" 1069001 ", recipient="13800000002"), ("deliver", "consent")),
        (_ev(sender="1069001", recipient="13800000003"), ("block", "opted-out")),
        (_ev(sender="1069002", recipient="13800000001"), ("block", "opted-out")),
        (_ev(sender="nobody", recipient="13800000001"), ("block", "unknown-sender")),
        (_ev(sender="1069002", recipient="13800000009"), ("block", "recipient-dnd")),
        (_ev(sender="1069002", recipient="13800000002"), ("block", "no-consent")),
        (
            _ev(sender="1069002", recipient="13800000002", category="promo"),
            ("block", "no-consent"),
        ),
        (
            _ev(sender="nobody", recipient="13800000002", category="verification"),
            ("deliver", "exempt-category"),
        ),
        (b"{not json", ("invalid", "malformed-json")),
        (b"[1, 2]", ("invalid", "malformed-json")),
        (_ev(sender="1069001"), ("invalid", "missing-field")),
        (_ev(sender="", recipient="13800000001"), ("invalid", "missing-field")),
        (_ev(sender="1069001", recipient=13800000001), ("invalid", "bad-field-type")),
        (_ev(sender="1069001", recipient="1380", ts="x"), ("invalid", "bad-field-type")),
        (_ev(sender="1069001", recipient="1380"), ("invalid", "bad-recipient")),
        (_ev(sender="1069001", recipient="1", text="x" * 70_000), ("invalid", "oversized")),
    ],
)
def test_ref_decide(value: bytes, expected: tuple[str, str]) -> None:
    assert DATA.reference().decide(value) == expected


def test_seeded_events_reach_every_reason() -> None:
    rng = random.Random(7)
    data = fl.make_dataset(rng, senders=20, recipients=500, consents=1_000, optouts=200, dnd=50)
    reasons = {
        data.reference().decide(v)[1] for _, _, v in fl.iter_events(20_000, "t", data, seed=1)
    }
    # The fault suite's data set has no consent evidence (methods, expiry): the consent
    # tests (tests/test_consent_*.py, tests/integration/test_consent_stream.py) reach those.
    evidence = {"consent-expired", "consent-not-explicit"}
    # Nor limits (no quiet hours, caps or monitor mode): tests/test_limits*.py and
    # tests/integration/test_limits_stream.py reach those.
    limits = {"quiet-hours", "frequency-cap", "monitored"}
    assert reasons == set(ref.REASON_ROUTE) - {"internal-error"} - evidence - limits


def test_extended_dataset_changes_decisions() -> None:
    rng = random.Random(3)
    old = fl.make_dataset(rng, senders=20, recipients=500, consents=1_000, optouts=200, dnd=50)
    new = fl.extend_dataset(old, rng)
    events = [v for _, _, v in fl.iter_events(5_000, "t", old, seed=2)]
    changed = sum(old.reference().decide(v) != new.reference().decide(v) for v in events)
    assert changed > 0


TOPICS = {"d": "deliver", "b": "block", "i": "invalid"}


def _inputs() -> dict[check.Source, check.InputRecord]:
    values = [
        _ev(sender="1069001", recipient="13800000001"),
        _ev(sender="1069001", recipient="13800000003"),
        b"oops",
    ]
    return {(0, n): check.InputRecord(b"k", v) for n, v in enumerate(values)}


def _out(topic: str, n: int, route: str, reason: str, version: str = "v1") -> check.OutputRecord:
    headers = {
        "filterd-route": route,
        "filterd-reason": reason,
        "filterd-snapshot": version,
        "filterd-source": f"in/0/{n}",
    }
    return check.OutputRecord(topic, 0, n, b"k", _inputs()[(0, n)].value, headers)


def _verify(outputs: list[check.OutputRecord]) -> check.Verdict:
    return check.verify(
        _inputs(),
        outputs,
        input_topic="in",
        topic_routes=TOPICS,
        versions={"v1": DATA.reference(), "v2": DATA.reference()},
        corrupt_versions={"bad"},
    )


GOOD = [
    _out("d", 0, "deliver", "consent"),
    _out("b", 1, "block", "opted-out"),
    _out("i", 2, "invalid", "malformed-json"),
]


def test_verify_clean_run_passes() -> None:
    verdict = _verify(GOOD)
    assert verdict.ok(exactly_once=True)
    assert (verdict.inputs, verdict.outputs) == (3, 3)


def test_verify_counts_loss() -> None:
    verdict = _verify(GOOD[:2])
    assert verdict.lost == 1
    assert verdict.examples["lost"] == ["in/0/2"]
    assert not verdict.ok(exactly_once=False)


def test_verify_counts_repeats_and_two_topics() -> None:
    repeat = _verify([*GOOD, GOOD[0]])
    assert (repeat.duplicated, repeat.in_two_topics) == (1, 0)
    assert repeat.ok(exactly_once=False)
    assert not repeat.ok(exactly_once=True)
    split = _verify([*GOOD, _out("b", 0, "block", "no-consent")])
    assert split.in_two_topics == 1
    assert split.misrouted == 1
    assert not split.ok(exactly_once=False)


def test_verify_counts_misroute_and_corrupt_snapshot() -> None:
    wrong_topic = _verify([_out("b", 0, "deliver", "consent"), *GOOD[1:]])
    assert wrong_topic.misrouted == 1
    corrupt = _verify([_out("d", 0, "deliver", "consent", version="bad"), *GOOD[1:]])
    assert corrupt.corrupt_snapshot_used == 1
    assert not corrupt.ok(exactly_once=False)


def test_verify_counts_unknown_source_and_changed_value() -> None:
    stray = check.OutputRecord("d", 0, 9, b"k", b"x", {"filterd-source": "other/0/0"})
    assert _verify([*GOOD, stray]).unknown_source == 1
    changed = GOOD[0]
    altered = check.OutputRecord(
        changed.topic, 0, 0, b"k", changed.value + b" ", dict(changed.headers)
    )
    assert _verify([altered, *GOOD[1:]]).value_mismatch == 1
