"""The opt-out prefilter never hides a member, and lets few strangers through."""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson
from hypothesis import given
from hypothesis import strategies as st

from filterd import prefilter
from filterd.router import OPTED_OUT, Decider, Policy
from filterd.snapshot.store import drive

numbers = st.integers(min_value=10**7, max_value=10**15 - 1)


@given(st.frozensets(numbers, max_size=300))
def test_every_member_may_be_contained(members: frozenset[int]) -> None:
    table = prefilter.build(members)
    assert all(prefilter.may_contain(table, n) for n in members)
    # The stepwise build (the loader's) gives the same bytes.
    assert drive(prefilter.filter_steps(iter(sorted(members)), len(members))) == table


def test_empty_set_has_an_empty_filter() -> None:
    assert prefilter.build(frozenset()) == b""
    assert not prefilter.may_contain(b"", 8613812345678)


def test_size_is_a_power_of_two_with_16_bits_per_number() -> None:
    for count in (1, 4, 5, 1000, 70_000):
        table = prefilter.build(frozenset(range(8613800000000, 8613800000000 + count)))
        bits = len(table) * 8
        assert bits & (bits - 1) == 0
        assert bits >= prefilter.BITS_PER_NUMBER * count
        assert bits < 2 * prefilter.BITS_PER_NUMBER * count or bits == 64


def test_false_positives_stay_rare_even_for_numbers_with_common_endings() -> None:
    rng = random.Random(7)
    # Opt-outs that all end in 000: without the xor fold they would share low bits.
    members = frozenset(8613000000000 + rng.randrange(7_000_000) * 1000 for _ in range(20_000))
    table = prefilter.build(members)
    strangers = [8613000000000 + rng.randrange(7_000_000_000) for _ in range(50_000)]
    strangers = [n for n in strangers if n not in members]
    rate = sum(prefilter.may_contain(table, n) for n in strangers) / len(strangers)
    assert rate < 0.10, rate


@dataclass(frozen=True)
class _Entry:
    consents: frozenset[int]
    optouts: frozenset[int]
    optout_filter: bytes


@dataclass(frozen=True)
class _Snapshot:
    version: str
    senders: dict[str, _Entry]
    dnd_numbers: frozenset[int]


def test_decision_loop_finds_every_opt_out_through_the_filter() -> None:
    # The loop repeats prefilter.slot inline: if the two drift apart, opt-outs
    # are missed and consented ones delivered. Every opt-out here also consented.
    rng = random.Random(3)
    optouts = frozenset(8613000000000 + rng.randrange(7_000_000_000) for _ in range(3000))
    entry = _Entry(optouts, optouts, prefilter.build(optouts))
    decide = Decider(_Snapshot("v", {"S": entry}, frozenset()), Policy()).decide
    for n in sorted(optouts)[:1500]:
        value = orjson.dumps({"id": "m", "sender": "S", "recipient": f"+{n}"})
        assert decide(value) == OPTED_OUT, n
