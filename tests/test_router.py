"""The decision function against docs/contract.md, with plain-set snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from filterd import prefilter
from filterd.config import PolicyConfig, load_config
from filterd.router import (
    OUTCOMES,
    REASONS,
    Decider,
    Outcome,
    Policy,
    decide_value,
    event_id,
)

SHOP = "106900001234"
BANK = "BANK-ALERT"
ALICE = 8613812345678
BOB = 8613912345678
CAROL = 8615012345678


@dataclass(frozen=True)
class Sets:
    consents: frozenset[int] = frozenset()
    optouts: frozenset[int] = frozenset()

    @property
    def optout_filter(self) -> bytes:
        return prefilter.build(self.optouts)


@dataclass(frozen=True)
class FakeSnapshot:
    version: str = "v-test"
    senders: Mapping[str, Sets] = field(default_factory=dict)
    dnd_numbers: frozenset[int] = frozenset()


SNAP = FakeSnapshot(
    senders={
        SHOP: Sets(consents=frozenset({ALICE, CAROL}), optouts=frozenset({CAROL})),
        BANK: Sets(optouts=frozenset({BOB})),
    },
    dnd_numbers=frozenset({BOB}),
)
POLICY = Policy()


def ev(**fields: object) -> bytes:
    base: dict[str, object] = {"id": "m1", "sender": SHOP, "recipient": "+8613812345678"}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not _DROP})


_DROP = object()


def decide(value: bytes | None, snap: FakeSnapshot = SNAP, policy: Policy = POLICY) -> Outcome:
    return Decider(snap, policy).decide(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ev(), ("deliver", "consent")),
        (ev(recipient="138 1234 5678"), ("deliver", "consent")),
        (ev(sender="  106900001234 "), ("deliver", "consent")),
        (ev(recipient="+8615012345678"), ("block", "opted-out")),  # opt-out beats consent
        (ev(recipient="+8613912345678"), ("block", "recipient-dnd")),
        (ev(recipient="+8618612345678"), ("block", "no-consent")),
        (ev(sender="NOBODY"), ("block", "unknown-sender")),
        (ev(sender="NOBODY", recipient="+8613912345678"), ("block", "unknown-sender")),
        (ev(sender=BANK, recipient="+8613912345678"), ("block", "opted-out")),
        (ev(category="transactional", sender="NOBODY"), ("deliver", "exempt-category")),
        (ev(category="verification", recipient="+8615012345678"), ("deliver", "exempt-category")),
        (ev(category="promo", recipient="+8618612345678"), ("block", "no-consent")),
        (ev(category=None, recipient="+8618612345678"), ("block", "no-consent")),
    ],
)
def test_policy_rules_in_order(value: bytes, expected: tuple[str, str]) -> None:
    assert decide(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "malformed-json"),
        (b"", "malformed-json"),
        (b"not json", "malformed-json"),
        (b"[1, 2]", "malformed-json"),
        (b'"a string"', "malformed-json"),
        (b'{"id": "m1", "sender": "\xff\xfe", "recipient": "+8613812345678"}', "malformed-json"),
        (ev(id=_DROP), "missing-field"),
        (ev(sender=_DROP), "missing-field"),
        (ev(recipient=_DROP), "missing-field"),
        (ev(id=""), "missing-field"),
        (ev(sender="   "), "missing-field"),
        (ev(recipient=None), "missing-field"),
        (ev(id="", ts="late"), "missing-field"),  # first match wins
        (ev(id=17), "bad-field-type"),
        (ev(sender=106900001234), "bad-field-type"),
        (ev(recipient=8613812345678), "bad-field-type"),
        (ev(category=["marketing"]), "bad-field-type"),
        (ev(text={"a": 1}), "bad-field-type"),
        (ev(ts="1700000000000"), "bad-field-type"),
        (ev(ts=1.5), "bad-field-type"),
        (ev(ts=True), "bad-field-type"),
        (ev(recipient="call me"), "bad-recipient"),
        (ev(recipient="12345"), "bad-recipient"),
        (ev(ts="x", recipient="bad"), "bad-field-type"),
    ],
)
def test_invalid_events(value: bytes | None, reason: str) -> None:
    assert decide(value) == ("invalid", reason)


def test_oversized_is_checked_before_parsing() -> None:
    policy = Policy(max_event_bytes=100)
    big = ev(text="x" * 200)
    assert decide(big, policy=policy) == ("invalid", "oversized")
    assert decide(b"[" * 101, policy=policy) == ("invalid", "oversized")
    assert decide(ev(), policy=policy) == ("deliver", "consent")


def test_unknown_fields_are_allowed() -> None:
    assert decide(ev(campaign="double-11", extra={"x": [1]})) == ("deliver", "consent")


def test_internal_error_when_the_snapshot_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        @property
        def optouts(self) -> frozenset[int]:
            raise RuntimeError("bitmap exploded")

        consents: frozenset[int] = frozenset()

    snap = FakeSnapshot(senders={SHOP: Broken()})  # type: ignore[dict-item]
    assert decide(ev(), snap) == ("invalid", "internal-error")
    assert "internal-error" in caplog.text


def test_policy_from_config_and_default_exempt() -> None:
    cfg = load_config(None, env={"FILTERD_POLICY_CATEGORIES": "promo=exempt"})
    policy = cfg.policy
    # marketing is not listed any more: the default rule applies (require consent).
    assert decide(ev(category="promo", sender="NOBODY"), policy=policy) == (
        "deliver",
        "exempt-category",
    )
    assert decide(ev(sender="NOBODY"), policy=policy) == ("block", "unknown-sender")
    open_policy = PolicyConfig(default_rule="exempt", categories={"marketing": "require-consent"})
    assert decide(ev(category="other", sender="NOBODY"), policy=open_policy) == (
        "deliver",
        "exempt-category",
    )
    assert decide(ev(sender="NOBODY"), policy=open_policy) == ("block", "unknown-sender")


def test_country_code_applies_to_national_numbers() -> None:
    snap = FakeSnapshot(senders={SHOP: Sets(consents=frozenset({15551234567}))})
    us = Policy(default_country_code="1")
    assert decide(ev(recipient="5551234567"), snap, us) == ("deliver", "consent")
    assert decide(ev(recipient="5551234567"), snap) == ("block", "no-consent")


@pytest.mark.parametrize(
    ("cc", "recipient", "counted", "outcome"),
    [
        # E.164 without "+": read as national (the contract), and counted.
        ("86", "8613800001111", True, ("block", "no-consent")),
        ("86", "861380000111", True, ("block", "no-consent")),
        ("86", " 86 138-0000-1111", True, ("block", "no-consent")),
        ("86", "８６１３８００００１１１１", True, ("block", "no-consent")),
        ("1", "14155550100", True, ("block", "no-consent")),
        # Not counted: a "+", "00" or a trunk 0 says what was meant, or too short.
        ("86", "+868613800001111", False, ("block", "no-consent")),
        ("86", "+8613800001111", False, ("block", "no-consent")),
        ("86", "008613800001111", False, ("block", "no-consent")),
        ("86", "08613800001111", False, ("block", "no-consent")),
        ("86", "86138000011", False, ("block", "no-consent")),
        ("86", "86138000011112", False, ("invalid", "bad-recipient")),
        ("86", "13812345678", False, ("deliver", "consent")),
        ("1", "4155550100", False, ("block", "no-consent")),
        ("86", "86abc", False, ("invalid", "bad-recipient")),
    ],
)
def test_recipients_that_look_like_e164_without_plus_are_counted(
    cc: str, recipient: str, counted: bool, outcome: tuple[str, str]
) -> None:
    decider = Decider(SNAP, Policy(default_country_code=cc))
    assert decider.decide(ev(recipient=recipient)) == outcome
    assert decider.without_plus == int(counted)
    decider.decide(ev(recipient=recipient))
    assert decider.without_plus == 2 * int(counted)


def test_reason_table_is_the_contract() -> None:
    assert dict(REASONS) == {
        "consent": "deliver",
        "exempt-category": "deliver",
        "opted-out": "block",
        "unknown-sender": "block",
        "recipient-dnd": "block",
        "no-consent": "block",
        "consent-expired": "block",
        "consent-not-explicit": "block",
        "quiet-hours": "block",
        "frequency-cap": "block",
        "monitored": "deliver",
        "oversized": "invalid",
        "malformed-json": "invalid",
        "missing-field": "invalid",
        "bad-field-type": "invalid",
        "bad-recipient": "invalid",
        "internal-error": "invalid",
    }
    assert len(set(OUTCOMES)) == len(OUTCOMES)


def test_decide_value_and_event_id() -> None:
    assert decide_value(ev(), SNAP, POLICY) == ("deliver", "consent")
    assert event_id(ev(id="abc")) == "abc"
    assert event_id(ev(id=5)) is None
    assert event_id(b"nope") is None
    assert event_id(None) is None


@given(st.binary(max_size=300))
def test_any_bytes_get_exactly_one_known_outcome(value: bytes) -> None:
    outcome = decide(value)
    assert REASONS[outcome.reason] == outcome.route
