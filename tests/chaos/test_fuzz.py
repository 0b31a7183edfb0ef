"""Fuzzing the decision path: whatever bytes arrive, one route and a docs/contract.md reason.

Two kinds of property:

- robustness, over anything (random bytes, mutated events, JSON of every shape,
  numbers in every form and alphabet): ``decide_value`` returns, never raises,
  gives one of the three routes with a reason of docs/contract.md that belongs to it,
  and never ``internal-error`` (which would mean a bug was hit);
- agreement, over events whose fields stay inside what docs/contract.md spells out
  unambiguously: the decision equals that of the independent reference model of
  the fault suite (``tests.support.reference``), which knows nothing of the
  router, the number code or roaring bitmaps.

The snapshot here is a small in-memory view (``tests.chaos.data.SetSnapshot``) that
satisfies the router's ``SnapshotView`` protocol; the snapshot code has its own tests.
"""

from __future__ import annotations

import json
import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from filterd.router import ROUTES, Policy, decide_value
from tests.chaos import data as fl
from tests.support import reference as ref

SENDERS = ("106900001234", "106900005678", "ALIPAY")
NUMBERS = (8613800000001, 8613800000002, 8613800000003, 8615912345678, 447911123456)
DATA = fl.ConsentData(
    consents=frozenset(
        {(SENDERS[0], NUMBERS[0]), (SENDERS[0], NUMBERS[1]), (SENDERS[1], NUMBERS[4])}
    ),
    optouts=frozenset({(SENDERS[0], NUMBERS[2]), (SENDERS[1], NUMBERS[0])}),
    dnd=frozenset({NUMBERS[3], NUMBERS[1]}),
)


SNAPSHOT = fl.SetSnapshot.of(DATA, version="fuzz-1")
MAX_BYTES = 512
POLICY = Policy(default_country_code="86", max_event_bytes=MAX_BYTES)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dumps(value: object) -> bytes:
    """JSON bytes of anything hypothesis builds; orjson cannot write integers past 64 bits."""
    return json.dumps(value, ensure_ascii=False).encode()


def check_outcome(value: bytes | None) -> tuple[str, str]:
    """The robustness property; returns the decision for further checks."""
    outcome = decide_value(value, SNAPSHOT, POLICY)
    route, reason = outcome
    assert route in ROUTES
    assert ref.REASON_ROUTE.get(reason) == route, (route, reason)
    # internal-error is the router's catch-all for a bug: a fuzzer must never reach it.
    assert reason != "internal-error", value
    return route, reason


# -- strategies ---------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
wrong_types = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)


@st.composite
def phone_numbers(draw: st.DrawFn, alphabet: str) -> str:
    """Numbers of every form: E.164, 00-prefixed, national, trunk zero, separators, junk."""
    digits = draw(st.sampled_from([str(n) for n in NUMBERS]) | st.text("0123456789", max_size=18))
    national = digits[2:] if digits.startswith("86") else digits
    form = draw(st.sampled_from(["+", "00", "national", "trunk", "raw"]))
    body = {
        "+": "+" + digits,
        "00": "00" + digits,
        "national": national,
        "trunk": "0" + national,
        "raw": draw(st.text(alphabet, max_size=20)),
    }[form]
    # Sprinkle separators (or, with a wide alphabet, anything) between the characters.
    out = []
    for ch in body:
        out.append(ch)
        if draw(st.integers(0, 9)) == 0:
            out.append(draw(st.sampled_from(alphabet)))
    return "".join(out)


NARROW = string.digits + " -.()+abc"  # what docs/contract.md spells out, plus plain junk
WIDE = NARROW + "\t\n\u00a0\u3000٠١٢٣\uff10\uff11+-_/#*\x00é中"


@st.composite
def events(draw: st.DrawFn, alphabet: str = NARROW, wrong: bool = True) -> dict[str, object]:
    """Event objects whose every field may be missing, empty, well-typed or wrong-typed."""
    event: dict[str, object] = {}
    fields = {
        "id": st.text(string.ascii_letters + string.digits + " ", max_size=12),
        "sender": st.tuples(st.sampled_from(["", " "]), st.sampled_from(SENDERS)).map(
            lambda t: t[0] + t[1] + t[0]
        )
        | st.sampled_from(["", " ", "nobody", "106900009999"]),
        "recipient": phone_numbers(alphabet),
        "category": st.sampled_from(
            ["marketing", "transactional", "verification", "promo", "", "Marketing"]
        ),
        "text": st.text(max_size=40),
        "ts": st.integers(min_value=-(2**63), max_value=2**63),
    }
    for name, good in fields.items():
        choice = draw(st.integers(0, 9))
        if choice == 0 and name in ("id", "sender", "recipient", "category", "text", "ts"):
            continue  # missing
        if choice == 1 and wrong:
            event[name] = draw(wrong_types)
        else:
            event[name] = draw(good)
    if draw(st.booleans()):
        event["extra"] = draw(json_values)
    return event


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid event's bytes with a few random byte edits (flip, insert, delete)."""
    raw = bytearray(dumps(draw(events(wrong=False))))
    for _ in range(draw(st.integers(1, 4))):
        if not raw:
            break
        pos = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "byte"]))
        if op == "flip":
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del raw[pos]
        else:
            raw[pos] = draw(st.sampled_from(b'{}[]",:\\0-+e.n\x00\xff'))
    return bytes(raw)


# -- robustness ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600))
@example(b"")
@example(b"\xff\xfe")
@example(b"null")
@example(b'{"id":"a","sender":"b","recipient":"+8613800000001"}' + b" " * MAX_BYTES)
def test_any_bytes(value: bytes) -> None:
    check_outcome(value)


@FUZZ
@given(json_values)
def test_json_of_any_shape(value: object) -> None:
    data = dumps(value)
    route, reason = check_outcome(data)
    if not isinstance(value, dict):
        # The size is checked before the JSON is read: a long non-object is oversized.
        expected = "oversized" if len(data) > MAX_BYTES else "malformed-json"
        assert (route, reason) == ("invalid", expected)


@FUZZ
@given(events(alphabet=WIDE))
def test_events_with_any_field_values(event: dict[str, object]) -> None:
    check_outcome(dumps(event))


@FUZZ
@given(mutated())
def test_mutated_events(value: bytes) -> None:
    check_outcome(value)


def test_none_value_is_invalid() -> None:
    assert check_outcome(None)[0] == "invalid"


# -- agreement with the reference model --------------------------------------


@FUZZ
@given(events())
@example({"id": "m", "sender": " 106900001234 ", "recipient": "138 0000 0001"})
@example({"id": "m", "sender": "106900001234", "recipient": "0013800000001"})
@example({"id": "m", "sender": "106900001234", "recipient": "+", "ts": True})
@example({"id": " ", "sender": "x", "recipient": "1"})
@example({"id": "m", "sender": "106900005678", "recipient": "+447911123456"})
def test_agrees_with_reference(event: dict[str, object]) -> None:
    value = dumps(event)
    assert check_outcome(value) == DATA.reference(MAX_BYTES).decide(value)


@FUZZ
@given(st.integers(MAX_BYTES - 8, MAX_BYTES + 8))
def test_size_limit_boundary(size: int) -> None:
    head = b'{"id":"m","sender":"106900001234","recipient":"+8613800000001","text":"'
    value = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(value) == size
    expected = DATA.reference(MAX_BYTES).decide(value)
    assert check_outcome(value) == expected
    assert (expected[1] == "oversized") == (size > MAX_BYTES)
