"""The harness itself: the reference model agrees with filterd where JSON and the rule order are
subtle, the producer partitions as Kafka's default partitioner does, and the stream checker
reports what is wrong. No broker."""

from __future__ import annotations

import json

import pytest
from aiokafka import ConsumerRecord
from aiokafka.partitioner import DefaultPartitioner

from filterd.router import Policy, decide_value
from tests.chaos.data import ConsentData, SetSnapshot
from tests.support.check import verify_stream
from tests.support.produce import partition_for
from tests.support.reference import REASON_ROUTE, ROUTES, Reference, ref_normalize

PAIR = ("1069001", 8613800000001)
DATA = ConsentData(
    # The same pair consented and opted out: the opt-out wins (rule order of step 3).
    consents=frozenset({PAIR, ("1069001", 8613800000002)}),
    optouts=frozenset({PAIR}),
    dnd=frozenset({8613800000009}),
)
MAX_BYTES = 256


def _event(**fields: object) -> bytes:
    body = {"id": "m1", "sender": "1069001", "recipient": "13800000002", **fields}
    return json.dumps(body, ensure_ascii=False).encode()


EDGES = [
    _event(),
    _event(recipient="13800000001"),  # consented and opted out
    _event(recipient="13800000009"),  # dnd, no consent
    _event(sender="nobody"),
    _event(category="verification", recipient="13800000001"),
    _event(category=None),
    _event(category=""),
    _event(ts=True),
    _event(ts=1.0),
    _event(ts=2**63),
    _event(ts=2**64),  # past 64 bits: a float to a strict parser
    _event(ts=-(2**63) - 1),
    _event(text=None),
    _event(text=5),
    _event(id="  "),
    _event(sender=7, id=" "),
    b'{"id":"m1","sender":"1069001","recipient":"13800000002","ts":NaN}',
    b'{"id":"m1","sender":"1069001","recipient":"13800000002","ts":Infinity}',
    b'{"id":"m1","sender":"1069001","recipient":"13800000002","x":1e400}',
    b'{"id":"m1","sender":"1069001","recipient":"13800000002","text":"\\ud800"}',
    b'{"id":"m1","sender":"1069001","recipient":"13800000002","text":"\\ud83d\\ude00"}',
    b'\xef\xbb\xbf{"id":"m1","sender":"1069001","recipient":"13800000002"}',
    b'{"id":"m1","sender":"1069001","recipient":"13800000002"}\n',
    b'{"id":"m1","sender":"1069001","recipient":"13800000002"} x',
    b'{"id":"m1","sender":"1069001","recipient":"\xff"}',
    b'{"id":"m1","id":5,"sender":"1069001","recipient":"13800000002"}',
    b"[]",
    b"null",
    b"",
    b"x" * (MAX_BYTES + 1),
    None,
]


@pytest.mark.parametrize("value", EDGES)
def test_reference_agrees_with_filterd_on_edge_cases(value: bytes | None) -> None:
    snapshot = SetSnapshot.of(DATA)
    expected = decide_value(
        value, snapshot, Policy(default_country_code="86", max_event_bytes=MAX_BYTES)
    )
    assert DATA.reference(MAX_BYTES).decide(value) == tuple(expected)


def test_every_reason_belongs_to_one_route() -> None:
    assert set(REASON_ROUTE.values()) == set(ROUTES)
    assert REASON_ROUTE["opted-out"] == "block"
    assert REASON_ROUTE["internal-error"] == "invalid"


def test_with_consents_makes_senders_known() -> None:
    ref = Reference({PAIR}, dnd={8613800000009})
    value = _event(sender="1069999", recipient="13800000009")
    assert ref.decide(value) == ("block", "unknown-sender")
    later = ref.with_consents({("1069999", 8613800000005)})
    assert later.decide(value) == ("block", "recipient-dnd")
    assert ref.decide(value) == ("block", "unknown-sender")  # the older version is unchanged


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("+86 138-0000-0001", 8613800000001), ("０１３８", None), ("13800000001\n", None)],
)
def test_ref_normalize_takes_ascii_digits_only(raw: str, expected: int | None) -> None:
    assert ref_normalize(raw) == expected


@pytest.mark.parametrize("partitions", [1, 3, 6, 7])
def test_keyed_records_go_where_kafkas_default_partitioner_puts_them(partitions: int) -> None:
    kafka = DefaultPartitioner()
    everything = list(range(partitions))
    for n in range(300):
        key = f"86138{n:08d}".encode()
        assert partition_for(key, n, partitions) == kafka(key, everything, everything)


def _record(topic: str, offset: int, value: bytes, **headers: str) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic, 0, offset, 0, 0, b"k", value, None, 1, len(value),
        [(k.replace("_", "-"), v.encode()) for k, v in headers.items()],
    )  # fmt: skip


def test_stream_checker_reports_loss_repeats_and_misroutes() -> None:
    ref = DATA.reference(MAX_BYTES)
    consented, unknown = _event(), _event(sender="nobody")
    inputs = [_record("in", 0, consented), _record("in", 1, unknown)]

    def out(topic: str, offset: int, value: bytes, route: str, reason: str) -> ConsumerRecord:
        return _record(
            topic, offset, value, filterd_source=f"in/0/{offset}", filterd_route=route,
            filterd_reason=reason, filterd_snapshot="v1",
        )  # fmt: skip

    good = {
        "deliver": [out("d", 0, consented, "deliver", "consent")],
        "block": [out("b", 1, unknown, "block", "unknown-sender")],
    }
    assert verify_stream(inputs, good, {"v1": ref}).clean
    lost = verify_stream(inputs, {"deliver": good["deliver"]}, {"v1": ref})
    assert lost.missing == ["in/0/1"]
    twice = verify_stream(inputs, {**good, "deliver": good["deliver"] * 2}, {"v1": ref})
    assert (twice.duplicated, twice.clean) == (1, False)
    wrong = {**good, "block": [out("b", 1, unknown, "block", "no-consent")]}
    assert verify_stream(inputs, wrong, {"v1": ref}).misrouted == 1
