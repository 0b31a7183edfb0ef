"""Live changes in the decision: snapshot + overlay decides as the snapshot rebuilt with the
changes applied in offset order (the reference model), and names the deciding change."""

from __future__ import annotations

from array import array
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from filterd import prefilter
from filterd.changes import BadChange, Change, ChangeRef, Overlay, parse_change
from filterd.pipeline import HEADER_CHANGE, HeaderCache, OutputTopics, decide_partition
from filterd.router import (
    CONSENT,
    CONSENT_EXPIRED,
    CONSENT_NOT_EXPLICIT,
    NO_CONSENT,
    OPTED_OUT,
    RECIPIENT_DND,
    UNKNOWN_SENDER,
    Decider,
    Policy,
)
from filterd.snapshot.evidence import DEFAULT_ACCEPT_METHODS
from filterd.snapshot.store import (
    REFUSED_ONLY,
    CapSchedule,
    ConsentSnapshot,
    ConsentTerms,
    Counts,
    SenderConsent,
)
from tests.support.reference import Reference, ref_change
from tests.test_pipeline import FakeBuilder

T = 1_790_000_000_000
NUMBERS = [8613800000001 + i for i in range(4)]
SENDERS = ["SHOP", "BANK", "NEW"]
ACCEPT = DEFAULT_ACCEPT_METHODS
TOPIC = "sms.consent-changes"

#: A pair's snapshot state: none, plain consent, expiring before/after T, refused, capped,
#: and a plain consent beside a capped one that expires just after T (a cap schedule).
PAIR_STATES = ("none", "plain", "expired", "valid", "refused", "capped", "stepped")
#: Times a pair's max_per_day is compared at: around T and the changes' expiries.
CAP_TIMES = (T - 2000, T - 1000, T - 1, T, T + 999, T + 1000, T + 10**6)


def caps_over_time(decider: Decider, sender: str, number: int) -> list[int]:
    """The pair's max_per_day at each of :data:`CAP_TIMES`."""
    return [decider.pair_max_per_day(sender, number, t) for t in CAP_TIMES]


def build(
    pairs: dict[tuple[str, int], str],
    optouts: set[tuple[str, int]],
    global_optouts: set[int],
    dnd: set[int],
) -> tuple[ConsentSnapshot, Reference]:
    """The same content as a real snapshot store and as the reference model."""
    senders: dict[str, SenderConsent] = {}
    ref_consents: set[tuple[str, int]] = set()
    ref_rows: dict[tuple[str, int], list[tuple[bool, int | None]]] = {}
    for sender in SENDERS:
        plain: list[int] = []
        terms: dict[int, tuple[int, int]] = {}
        schedules: dict[int, CapSchedule] = {}
        for number in NUMBERS:
            state = pairs.get((sender, number), "none")
            if state in ("plain", "capped", "stepped"):
                plain.append(number)
                ref_consents.add((sender, number))
                if state == "capped":
                    terms[number] = ((1 << 63) - 1, 7)
                elif state == "stepped":
                    terms[number] = ((1 << 63) - 1, 3)
                    schedules[number] = ((T + 1000, 3),)
            elif state in ("expired", "valid"):
                until = T - 1000 if state == "expired" else T + 1000
                terms[number] = (until, 0)
                ref_rows[(sender, number)] = [(True, until * 1000)]
            elif state == "refused":
                terms[number] = (REFUSED_ONLY, 0)
                ref_rows[(sender, number)] = [(False, None)]
        opted = [n for n in NUMBERS if (sender, n) in optouts]
        if not plain and not terms and not opted:
            continue
        ordered = sorted(terms)
        consent_terms = (
            ConsentTerms.of(
                array("Q", ordered),
                array("q", [terms[n][0] for n in ordered]),
                array("I", [terms[n][1] for n in ordered]),
                schedules,
            )
            if terms
            else None
        )
        senders[sender] = SenderConsent.of(BitMap64(plain), BitMap64(opted), consent_terms)
    glob = BitMap64(global_optouts)
    snap = ConsentSnapshot(
        version="v1", created_at=datetime.now(UTC), senders=senders,
        dnd_numbers=BitMap64(dnd), counts=Counts(len(senders), 0, 0, len(dnd)), bytes=0,
        manifest={"accept_methods": list(ACCEPT)}, global_optouts=glob,
        global_optout_filter=prefilter.build(glob),
    )  # fmt: skip
    reference = Reference(
        consents=frozenset(ref_consents), optouts=frozenset(optouts),
        dnd=frozenset(dnd), consent_rows=ref_rows, global_optouts=frozenset(global_optouts),
    )  # fmt: skip
    return snap, reference


def overlay_of(values: list[bytes]) -> Overlay:
    overlay = Overlay(ACCEPT)
    for offset, value in enumerate(values):
        try:
            change = parse_change(value, "86")
        except BadChange:
            continue
        overlay.apply(change, ChangeRef(TOPIC, 0, offset))
    return overlay


def ev(sender: str, number: int) -> bytes:
    return orjson.dumps({"id": "m", "sender": sender, "recipient": f"+{number}"})


def change(op: str, number: int, sender: str | None = "SHOP", **extra: object) -> bytes:
    doc: dict[str, object] = {"op": op, "recipient": f"+{number}", **extra}
    if sender is not None:
        doc["sender"] = sender
    return orjson.dumps(doc)


_expiry = st.sampled_from(
    [None, "", "2026-09-21T14:13:21+00:00", "2026-09-21T14:13:19+00:00", "2026-09-21T14:13:21"]
)
_change = st.builds(
    lambda op, number, sender, method, expires, cap: orjson.dumps(
        {
            k: v
            for k, v in {
                "op": op,
                "recipient": f"+{number}",
                "sender": sender,
                "method": method,
                "expires_at": expires,
                "max_per_day": cap,
            }.items()
            if v is not None
        }
    ),
    st.sampled_from(
        ["opt-out", "opt-out-clear", "consent", "consent-revoke", "dnd-add", "dnd-remove", "x"]
    ),
    st.sampled_from(NUMBERS),
    st.sampled_from([*SENDERS, "*", "", None]),
    st.sampled_from([None, "explicit", "pre-ticked", " written "]),
    _expiry,
    st.sampled_from([None, 3, "5", "0", "x", ""]),
)


#: Snapshot contents for the property tests: pair states, opt-outs, numbers.
_pairs = st.dictionaries(
    st.tuples(st.sampled_from(SENDERS[:2]), st.sampled_from(NUMBERS)), st.sampled_from(PAIR_STATES)
)
_optouts = st.sets(st.tuples(st.sampled_from(SENDERS[:2]), st.sampled_from(NUMBERS)))
_numbers = st.sets(st.sampled_from(NUMBERS))


@settings(max_examples=400, deadline=None)
@given(
    pairs=_pairs,
    optouts=_optouts,
    global_optouts=_numbers,
    dnd=_numbers,
    changes=st.lists(st.one_of(_change, st.just(b"not json"), st.just(b"[]")), max_size=12),
)
def test_snapshot_plus_changes_decides_as_the_snapshot_rebuilt_with_them(
    pairs: dict[tuple[str, int], str],
    optouts: set[tuple[str, int]],
    global_optouts: set[int],
    dnd: set[int],
    changes: list[bytes],
) -> None:
    snap, reference = build(pairs, optouts, global_optouts, dnd)
    rebuilt = reference.with_changes(list(changes))
    decider = Decider(snap, Policy(), overlay=overlay_of(changes))
    for sender in SENDERS:
        for number in [*NUMBERS, 8613899999999]:
            value = ev(sender, number)
            assert decider.decide(value, T) == rebuilt.decide(value, T), (sender, number)


def test_parse_and_reference_agree_on_which_records_are_malformed() -> None:
    cases = [
        b"nope", b"[1]", b"{}", change("drop", NUMBERS[0]), change("opt-out", NUMBERS[0], None),
        change("opt-out", NUMBERS[0], "  "), change("consent", NUMBERS[0], "*"),
        change("dnd-add", NUMBERS[0], None), change("opt-out", NUMBERS[0], "*"),
        orjson.dumps({"op": "opt-out", "sender": "S", "recipient": "12"}),
        change("consent", NUMBERS[0], max_per_day="0"),
        change("consent", NUMBERS[0], max_per_day=2),
        change("consent", NUMBERS[0], max_per_day=True), change("consent", NUMBERS[0], method=1),
        change("consent", NUMBERS[0], expires_at="2026-01-01T00:00:00"),
        change("consent", NUMBERS[0], expires_at="2026-01-01T00:00:00+08:00"),
        change("opt-out", NUMBERS[0], ts=1.5), change("opt-out", NUMBERS[0], id=3),
    ]  # fmt: skip
    for value in cases:
        try:
            parse_change(value, "86")
            parsed = True
        except BadChange:
            parsed = False
        assert parsed == (ref_change(value) is not None), value


def test_a_malformed_consent_grants_nothing() -> None:
    snap, _ = build({}, set(), set(), set())
    values = [
        change("consent", NUMBERS[0], max_per_day="many"),
        change("consent", NUMBERS[0], expires_at="tomorrow"),
    ]
    decider = Decider(snap, Policy(), overlay=overlay_of(values))
    assert decider.decide(ev("SHOP", NUMBERS[0]), T) == UNKNOWN_SENDER


def test_the_deciding_change_is_named() -> None:
    snap, _ = build(
        {("SHOP", NUMBERS[0]): "plain", ("SHOP", NUMBERS[1]): "plain"}, set(), set(), set()
    )
    values = [
        change("opt-out", NUMBERS[0]),  # 0
        change("dnd-add", NUMBERS[1], None),  # 1: not read, the consent decides
        change("consent", NUMBERS[2], method="explicit"),  # 2
        change("consent-revoke", NUMBERS[1]),  # 3
        change("consent", NUMBERS[3], method="pre-ticked"),  # 4
    ]
    decider = Decider(snap, Policy(), overlay=overlay_of(values))
    expected = [(OPTED_OUT, 0), (RECIPIENT_DND, 1), (CONSENT, 2), (CONSENT_NOT_EXPLICIT, 4)]
    for number, (outcome, offset) in zip(NUMBERS, expected, strict=True):
        assert decider.decide(ev("SHOP", number), T) == outcome
        assert decider.change_ref == ChangeRef(TOPIC, 0, offset)
    assert decider.decide(ev("BANK", NUMBERS[0]), T) == UNKNOWN_SENDER  # SHOP opted out, not BANK
    assert decider.change_ref is None
    # A record of an untouched number carries no change.
    assert decider.decide(ev("SHOP", 8613899999999), T) == NO_CONSENT
    assert decider.change_ref is None


def test_an_opt_out_clear_leaves_the_snapshot_consent_deciding() -> None:
    snap, _ = build({("SHOP", NUMBERS[0]): "plain"}, {("SHOP", NUMBERS[0])}, set(), set())
    plain = Decider(snap, Policy())
    assert plain.decide(ev("SHOP", NUMBERS[0]), T) == OPTED_OUT
    decider = Decider(snap, Policy(), overlay=overlay_of([change("opt-out-clear", NUMBERS[0])]))
    assert decider.decide(ev("SHOP", NUMBERS[0]), T) == CONSENT
    assert decider.change_ref is None  # the consent is the snapshot's


def test_consent_with_expiry_is_read_at_the_message_time() -> None:
    snap, _ = build({}, set(), set(), set())
    expiry = "2026-09-21T14:13:21+00:00"  # T + 1000 ms
    overlay = overlay_of([change("consent", NUMBERS[0], expires_at=expiry)])
    decider = Decider(snap, Policy(), overlay=overlay)
    assert decider.decide(ev("SHOP", NUMBERS[0]), T + 999) == CONSENT
    assert decider.decide(ev("SHOP", NUMBERS[0]), T + 1000) == CONSENT_EXPIRED
    # A later consent that expires earlier does not shorten the first (rows add up).
    overlay.apply(
        parse_change(change("consent", NUMBERS[0], expires_at="2026-09-21T14:13:19+00:00"), "86"),
        ChangeRef(TOPIC, 0, 1),
    )
    assert decider.decide(ev("SHOP", NUMBERS[0]), T + 999) == CONSENT
    assert decider.change_ref == ChangeRef(TOPIC, 0, 1)


def test_max_per_day_with_changes() -> None:
    snap, _ = build({("SHOP", NUMBERS[0]): "capped"}, set(), set(), set())
    values = [
        change("consent", NUMBERS[0], method="explicit", max_per_day=9),
        change("consent", NUMBERS[1], method="explicit", max_per_day="4"),
        change("consent", NUMBERS[1], method="pre-ticked", max_per_day=1),  # not accepted
        change("consent", NUMBERS[2], method="explicit", max_per_day=2),
        change("consent-revoke", NUMBERS[2]),
    ]
    decider = Decider(snap, Policy(), overlay=overlay_of(values))
    assert Decider(snap, Policy()).pair_max_per_day("SHOP", NUMBERS[0], T) == 7
    assert decider.pair_max_per_day("SHOP", NUMBERS[0], T) == 7  # the smallest stated
    assert decider.pair_max_per_day("SHOP", NUMBERS[1], T) == 4
    assert decider.pair_max_per_day("SHOP", NUMBERS[2], T) == 0
    assert decider.pair_max_per_day("BANK", NUMBERS[3], T) == 0


def test_max_per_day_of_changes_is_the_smallest_of_the_consents_valid_then() -> None:
    # The snapshot's pair: a plain consent and one capped at 3 that expires at T + 1000.
    snap, _ = build({("SHOP", NUMBERS[0]): "stepped", ("SHOP", NUMBERS[1]): "capped"}, set(),
                    set(), set())  # fmt: skip
    assert caps_over_time(Decider(snap, Policy()), "SHOP", NUMBERS[0]) == [3] * 5 + [0, 0]
    soon, later = "2026-09-21T14:13:20.500+00:00", "2026-09-21T14:13:22+00:00"
    values = [
        # A tighter cap until T + 500, a looser one to T + 2000: 2, then 3, then 4, then none.
        change("consent", NUMBERS[0], method="explicit", expires_at=soon, max_per_day=2),
        change("consent", NUMBERS[0], method="explicit", expires_at=later, max_per_day=4),
        # Beside a cap of 7 that never expires, a cap of 5 that does.
        change("consent", NUMBERS[1], method="explicit", expires_at=soon, max_per_day=5),
    ]
    overlay = overlay_of(values)
    decider = Decider(snap, Policy(), overlay=overlay)
    times = (T, T + 499, T + 500, T + 999, T + 1000, T + 1999, T + 2000)
    assert [decider.pair_max_per_day("SHOP", NUMBERS[0], t) for t in times] == [2, 2, 3, 3, 4, 4, 0]
    assert [decider.pair_max_per_day("SHOP", NUMBERS[1], t) for t in times] == [5, 5, 7, 7, 7, 7, 7]
    # The step 4 lookup of a decided message reads the same, at the message's time.
    decider.decide(ev("SHOP", NUMBERS[0]), T + 600)
    assert decider.max_per_day(T + 600) == 3
    # Only a schedule that is not one cap for the changes' validity takes a side entry.
    assert list(overlay.schedules) == [(NUMBERS[0], overlay.interned.ids["SHOP"])]
    overlay.apply(parse_change(change("consent-revoke", NUMBERS[0]), "86"), ChangeRef(TOPIC, 0, 9))
    assert overlay.schedules == {}
    assert decider.pair_max_per_day("SHOP", NUMBERS[0], T) == 0


def test_rebase_drops_the_changes_below_the_watermark() -> None:
    snap, _ = build({}, set(), set(), set())
    overlay = Overlay(ACCEPT)
    overlay.apply(Change("opt-out", "SHOP", NUMBERS[0]), ChangeRef(TOPIC, 0, 5))
    overlay.apply(Change("opt-out", "SHOP", NUMBERS[1]), ChangeRef(TOPIC, 1, 5))
    overlay.apply(Change("consent", "SHOP", NUMBERS[0]), ChangeRef(TOPIC, 0, 6))
    decider = Decider(snap, Policy(), overlay=overlay)
    assert decider.decide(ev("SHOP", NUMBERS[1]), T) == OPTED_OUT
    assert overlay.rebase(ACCEPT, {0: 6, 1: 6}) == 2
    assert len(overlay) == 1
    # The decider built before holds the same overlay: it sees the rebased deltas.
    assert decider.decide(ev("SHOP", NUMBERS[1]), T) == NO_CONSENT
    assert decider.decide(ev("SHOP", NUMBERS[0]), T) == CONSENT


class _Record:
    def __init__(self, offset: int, value: bytes) -> None:
        self.offset, self.value, self.key, self.timestamp = offset, value, None, T


def test_the_output_carries_the_change_header() -> None:
    snap, _ = build({("SHOP", NUMBERS[0]): "plain"}, set(), set(), set())
    decider = Decider(snap, Policy(), overlay=overlay_of([change("opt-out", NUMBERS[0])]))
    builder = FakeBuilder()
    outputs = OutputTopics("d", "b", "i", {"d": 1, "b": 1, "i": 1})
    records = [_Record(0, ev("SHOP", NUMBERS[0])), _Record(1, ev("SHOP", NUMBERS[1]))]
    decide_partition(decider, HeaderCache("v1"), "in", 0, records, outputs, lambda: builder)
    first, second = (dict(r[3]) for r in builder.records)
    assert first[HEADER_CHANGE] == f"{TOPIC}/0/0".encode()
    assert HEADER_CHANGE not in second


@pytest.mark.parametrize("op", ["opt-out", "consent"])
def test_a_sender_named_by_a_change_is_known(op: str) -> None:
    snap, reference = build({}, set(), set(), {NUMBERS[1]})
    values = [change(op, NUMBERS[0], "NEW")]
    decider = Decider(snap, Policy(), overlay=overlay_of(values))
    rebuilt = reference.with_changes(list(values))
    for number, outcome in ((NUMBERS[1], RECIPIENT_DND), (NUMBERS[2], NO_CONSENT)):
        assert decider.decide(ev("NEW", number), T) == outcome
        assert rebuilt.decide(ev("NEW", number), T) == outcome


def test_rebase_to_other_methods_or_an_older_watermark_asks_for_the_changes_again() -> None:
    overlay = Overlay(ACCEPT)
    overlay.watermark = {0: 5}
    overlay.apply(Change("consent", "SHOP", NUMBERS[0], method="written"), ChangeRef(TOPIC, 0, 5))
    assert len(overlay) == 1
    # The same methods, a newer watermark: nothing folded, the fact stays.
    assert overlay.rebase(ACCEPT, {0: 5, 1: 3}) == 0
    assert len(overlay) == 1
    # Other methods: "written" may no longer count; the fact cannot be recomputed here.
    assert overlay.rebase(("explicit",), {0: 5, 1: 3}) == -1
    assert len(overlay) == 0
    assert not overlay.senders
    assert not list(overlay.facts())
    assert overlay.accept == {"explicit"}
    assert overlay.watermark == {0: 5, 1: 3}
    overlay.apply(Change("opt-out", "SHOP", NUMBERS[1]), ChangeRef(TOPIC, 1, 3))
    # An older watermark: changes below the one in force are not held.
    assert overlay.rebase(("explicit",), {0: 2}) == -1
    assert len(overlay) == 0
    # Other methods with nothing held: nothing to recompute.
    assert overlay.rebase(ACCEPT, {0: 2}) == 0


def test_facts_name_their_last_change_and_count_once() -> None:
    overlay = Overlay(ACCEPT)
    big = ChangeRef(TOPIC, (1 << 14) - 1, (1 << 44) - 1)
    overlay.apply(Change("opt-out", "SHOP", NUMBERS[0]), ChangeRef(TOPIC, 3, 7))
    overlay.apply(Change("opt-out-clear", "SHOP", NUMBERS[0]), big)
    overlay.apply(Change("dnd-add", "", NUMBERS[0]), ChangeRef(TOPIC, 3, 9))
    overlay.apply(Change("opt-out", "*", NUMBERS[0]), ChangeRef(TOPIC, 3, 10))
    cap = Change("consent", "BANK", NUMBERS[0], "explicit", T + 5, 4)
    overlay.apply(cap, ChangeRef(TOPIC, 3, 11))
    assert len(overlay) == 4  # SHOP's opt-out, dnd, global opt-out, BANK's consent
    facts = {f.sender: f for f in overlay.facts()}
    assert facts[""][2:4] == (1, 1)  # global opt-out and dnd set
    assert facts["SHOP"].optout == 0
    assert (facts["BANK"].consent, facts["BANK"].rows) == (1, (T + 5, True, ((T + 5, 4),)))
    word = overlay.table.get(NUMBERS[0], overlay.interned.ids["SHOP"], 0)
    assert overlay.ref(word, 1) == big
    with pytest.raises(ValueError, match="out of the overlay's range"):
        overlay.apply(cap, ChangeRef(TOPIC, 1 << 14, 0))
    # A revoke drops the terms the consent kept.
    overlay.apply(Change("consent-revoke", "BANK", NUMBERS[0]), ChangeRef(TOPIC, 3, 12))
    assert len(overlay.terms) == 0
    assert len(overlay) == 4


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 1_000),
    slots=st.sampled_from([1, 3, 64]),
)
def test_a_walk_in_steps_with_changes_between_ends_as_the_walk_at_once(
    seed: int, slots: int
) -> None:
    """The stream's walk (a step per batch, changes applied between steps, the table growing
    under it) leaves the facts, their count and the filter of the walk at once."""
    import random

    rng = random.Random(seed)
    ops = ["opt-out", "opt-out-clear", "consent", "consent-revoke", "dnd-add", "dnd-remove"]
    numbers = [8613800000000 + rng.randrange(400) for _ in range(60)]

    def some(count: int, offsets: list[int]) -> list[tuple[Change, ChangeRef]]:
        out = []
        for _ in range(count):
            number = rng.choice(numbers)
            op = rng.choice(ops)
            sender = "" if op.startswith("dnd") else rng.choice(["SHOP", "BANK", "*"])
            if sender == "*" and op not in ("opt-out", "opt-out-clear"):
                sender = "SHOP"
            expires = rng.choice([None, T + 5])
            change = Change(op, sender, number, "explicit", expires, rng.choice([0, 2]))
            partition = number % 2
            out.append((change, ChangeRef(TOPIC, partition, offsets[partition])))
            offsets[partition] += 1
        return out

    offsets = [0, 0]
    first = some(300, offsets)
    watermark = {0: offsets[0] // 2, 1: offsets[1] - 3}
    later = some(200, offsets)
    stepped, at_once = Overlay(ACCEPT), Overlay(ACCEPT)
    for overlay in (stepped, at_once):
        for change, ref in first:
            overlay.apply(change, ref)
    at_once.rebase(ACCEPT, watermark)
    assert stepped.rebase_start(ACCEPT, watermark) == 1
    pending = list(later)
    while True:
        done = stepped.walk(slots)
        for change, ref in pending[:7]:
            stepped.apply(change, ref)
        pending = pending[7:]
        if done and not pending:
            break
    for change, ref in later:
        at_once.apply(change, ref)
    assert not stepped.walking
    assert sorted(stepped.facts()) == sorted(at_once.facts())
    assert len(stepped) == len(at_once)
    assert stepped.filter == at_once.filter == filter_of(stepped)


def filter_of(overlay: Overlay) -> bytearray:
    """The filter an overlay's facts need: a bit per number with facts, none else."""
    bits = bytearray(len(overlay.filter))
    for fact in overlay.facts():
        bit = prefilter.slot(fact.number, len(bits) * 8)
        bits[bit >> 3] |= 1 << (bit & 7)
    return bits
