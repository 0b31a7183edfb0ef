"""MO replies: keywords folded as the contract says, converted into changes keyed by number."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from aiokafka.partitioner import murmur2

from filterd.changes import parse_change
from filterd.changes.replies import BAD, IGNORED, KEYWORD, Keywords, convert_partition, reply_change
from filterd.config import RepliesConfig
from filterd.records import encode_header

KEYWORDS = Keywords(RepliesConfig())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TD", ("opt-out", False)),
        (" ｔｄ！ ", ("opt-out", False)),  # NFKC, trimmed, trailing punctuation, case-folded
        ("回复TD退订", ("opt-out", False)),  # 退订 anywhere
        ("退订。", ("opt-out", False)),
        ("Opt Out!", ("opt-out", False)),
        ("STOP", ("opt-out", False)),
        ("全部退订", ("opt-out", True)),  # every sender, although it contains 退订
        ("0000", ("opt-out", True)),
        ("StopAll", ("opt-out", True)),
        ("start", ("opt-out-clear", False)),
        ("UNSTOP.", ("opt-out-clear", False)),
        ("stop sending me this", None),
        ("TDX", None),
        ("!TD", None),  # only trailing punctuation is trimmed
        ("", None),
    ],
)
def test_keywords(text: str, expected: tuple[str, bool] | None) -> None:
    assert KEYWORDS.classify(text) == expected


def test_keyword_lists_are_config() -> None:
    mine = Keywords(RepliesConfig(optout=("nein",), optout_contains=(), optout_all=(), clear=()))
    assert mine.classify("NEIN!") == ("opt-out", False)
    assert mine.classify("td") is None
    assert mine.classify("退订") is None


def reply(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_a_keyword_reply_becomes_a_change_the_feed_reads() -> None:
    value = reply(id="r1", **{"from": "13800000001", "to": " 1069001 "}, text="TD", ts=5)
    result, key, change = reply_change(value, KEYWORDS, "86")
    assert (result, key) == (KEYWORD, b"8613800000001")
    assert change is not None
    parsed = parse_change(change, "86")
    assert (parsed.op, parsed.sender, parsed.number) == ("opt-out", "1069001", 8613800000001)
    assert (parsed.source, parsed.id, parsed.ts) == ("mo-reply", "mo:r1", 5)
    every = reply_change(
        reply(**{"from": "+8613800000001", "to": "x"}, text="0000"), KEYWORDS, "86"
    )
    assert every[2] is not None
    assert parse_change(every[2], "86").sender == "*"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"not json", BAD),
        (b"[]", BAD),
        (reply(to="1069001", text="TD"), BAD),  # no from
        (reply(**{"from": "13800000001"}, text="TD"), BAD),  # no to
        (reply(**{"from": "12", "to": "1069001"}, text="TD"), BAD),  # not a number
        (reply(**{"from": "13800000001", "to": "1069001"}, text="thanks"), IGNORED),
        (reply(**{"from": "13800000001", "to": "1069001"}), IGNORED),  # no text
        (None, BAD),
    ],
)
def test_other_replies_change_nothing(value: bytes | None, expected: str) -> None:
    assert reply_change(value, KEYWORDS, "86") == (expected, None, None)


class _Record:
    def __init__(self, offset: int, value: bytes) -> None:
        self.offset, self.value, self.key, self.timestamp = offset, value, None, 0


class _Builder:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(
        self, timestamp: int, key: bytes | None, value: bytes | None, headers: bytes,
        header_count: int,
    ) -> bool:  # fmt: skip
        assert header_count == 1
        assert headers.startswith(encode_header("filterd-source", b"")[:-1])
        self.records.append((key, value))
        return True

    def record_count(self) -> int:
        return len(self.records)


def test_convert_partition_keys_changes_like_the_default_partitioner() -> None:
    numbers = [f"1380000000{i}" for i in range(8)]
    records = [
        _Record(i, reply(id=str(i), **{"from": n, "to": "S"}, text="td"))
        for i, n in enumerate(numbers)
    ] + [_Record(8, b"junk"), _Record(9, reply(**{"from": numbers[0], "to": "S"}, text="hi"))]
    results: Counter[str] = Counter()
    out = convert_partition(KEYWORDS, "86", "in", 3, records, "chg", 4, _Builder, results)
    assert results == {KEYWORD: 8, BAD: 1, IGNORED: 1}
    assert (out.topic, out.partition, out.first_offset, out.next_offset) == ("in", 3, 0, 10)
    written = 0
    for topic, partition, builder in out.batches:
        assert topic == "chg"
        assert isinstance(builder, _Builder)
        for key, _ in builder.records:
            assert key is not None
            assert partition == (murmur2(key) & 0x7FFFFFFF) % 4
            written += 1
    assert written == 8
