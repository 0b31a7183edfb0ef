"""The batch layout: decisions, headers, output partitions, full producer batches."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from filterd.pipeline import HeaderCache, OutputTopics, Timestamps, decide_partition
from filterd.records import RecordBatch
from filterd.router import Decider, Policy
from tests.test_records import read_batch
from tests.test_router import SNAP, ev


@dataclass
class Rec:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class FakeBuilder:
    """Holds at most ``capacity`` records, like a producer batch of limited size.

    Each record's encoded headers are read back through a real batch and aiokafka's
    reader (:func:`tests.test_records.read_batch`).
    """

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    def append(
        self, timestamp: int, key: bytes | None, value: bytes | None, headers: bytes,
        header_count: int,
    ) -> bool:  # fmt: skip
        if len(self.records) >= self.capacity:
            return False
        one = RecordBatch(1 << 20)
        assert one.append(timestamp, key, value, headers, header_count)
        (record,) = read_batch(one._build())
        self.records.append(record)
        return True

    def record_count(self) -> int:
        return len(self.records)


OUT = OutputTopics("d", "b", "i", {"d": 4, "b": 2, "i": 1})


def run(records: list[Rec], capacity: int = 1000, partition: int = 5):  # type: ignore[no-untyped-def]
    decider = Decider(SNAP, Policy())
    return decide_partition(decider, HeaderCache("v9"), "in", partition, records, OUT,
                            lambda: FakeBuilder(capacity))  # fmt: skip


def test_records_keep_value_key_timestamp_and_get_four_headers() -> None:
    records = [
        Rec(10, 111, b"k1", ev()),
        Rec(11, 222, None, ev(sender="NOBODY")),
        Rec(12, 333, b"k3", b"garbage"),
    ]
    out = run(records)
    assert (out.first_offset, out.last_offset, out.next_offset) == (10, 12, 13)
    laid = {(topic, part): b.records for topic, part, b in out.batches}  # type: ignore[attr-defined]
    # Input partition 5 → 5 % 4 = 1 on deliver, 5 % 2 = 1 on block, 0 on invalid.
    assert set(laid) == {("d", 1), ("b", 1), ("i", 0)}
    ((ts, key, value, headers),) = laid[("d", 1)]
    assert (ts, key, value) == (111, b"k1", records[0].value)
    assert list(headers) == [
        ("filterd-route", b"deliver"), ("filterd-reason", b"consent"),
        ("filterd-snapshot", b"v9"), ("filterd-source", b"in/5/10"),
    ]  # fmt: skip
    assert dict(laid[("b", 1)][0][3])["filterd-reason"] == b"unknown-sender"
    assert dict(laid[("i", 0)][0][3])["filterd-reason"] == b"malformed-json"
    assert {(o.route, o.reason): n for o, n in out.counts.items()} == {
        ("deliver", "consent"): 1, ("block", "unknown-sender"): 1, ("invalid", "malformed-json"): 1,
    }  # fmt: skip


def test_full_batches_roll_over_in_order() -> None:
    records = [Rec(i, i, None, ev(id=f"m{i}")) for i in range(7)]
    out = run(records, capacity=3)
    assert [(t, p, b.record_count()) for t, p, b in out.batches] == [
        ("d", 1, 3),
        ("d", 1, 3),
        ("d", 1, 1),
    ]
    sources = [dict(h)["filterd-source"] for _, p, b in out.batches for *_, h in b.records]  # type: ignore[attr-defined]
    assert sources == [b"in/5/%d" % i for i in range(7)]


def test_a_record_too_big_for_an_empty_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        run([Rec(0, 0, None, ev())], capacity=0)


def test_timestamps_view_reads_lazily() -> None:
    records = [Rec(i, 1000 + i, None, orjson.dumps({})) for i in range(5)]
    view = Timestamps(records)
    assert len(view) == 5
    assert view[3] == 1003
    assert list(view) == [1000, 1001, 1002, 1003, 1004]
