"""MO replies: a recipient's reply that is a keyword becomes a change on the changes topic.

A reply is a JSON object ``{"id", "from", "to", "text", "ts"}`` on ``[topics] inbound``:
``from`` is the recipient's number, ``to`` the sender id the reply went to. Its text, after
NFKC, trimming white space and trailing punctuation, and case folding, is compared with the
keywords of ``[replies]`` (folded the same way): the opt-out-of-every-sender words first,
then opt-out and clear words, then "contains" words (``退订`` anywhere). A keyword reply
becomes a change (``source`` ``mo-reply``, ``id`` ``mo:`` + the reply's id, ``ts`` the
reply's), keyed by the recipient's digits like every change. Other replies change nothing
and are counted; a reply that is not JSON, or lacks ``from``/``to``, or whose ``from`` is not
a number, is counted as bad and ignored.

The conversion is part of the batch loop (:func:`convert_partition`): inbound partitions are
consumed in the consumer group like the input topic, and their changes produced and
committed like outputs (in exactly-once mode inside the partition's transaction).
"""

from __future__ import annotations

import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

import orjson
from aiokafka.partitioner import murmur2

from filterd.changes.model import ALL_SENDERS, OPT_OUT, OPT_OUT_CLEAR
from filterd.config import Config, RepliesConfig
from filterd.errors import InvalidNumber
from filterd.numbers import normalize
from filterd.pipeline import Builder, InputRecord, PartitionOutput
from filterd.records import encode_header

__all__ = [
    "BAD", "IGNORED", "KEYWORD", "Keywords", "Replies", "convert_partition", "fold",
    "reply_change",
]  # fmt: skip

#: Results of a reply (the ``filterd_mo_replies_total`` label).
KEYWORD: Final = "keyword"
IGNORED: Final = "ignored"
BAD: Final = "bad"
SOURCE: Final = "mo-reply"


def fold(text: str) -> str:
    """NFKC, white space and trailing punctuation trimmed, case-folded."""
    text = unicodedata.normalize("NFKC", text).strip()
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1])[0] == "P"):
        end -= 1
    return text[:end].strip().casefold()


class Keywords:
    """The keyword lists of ``[replies]``, folded once."""

    def __init__(self, config: RepliesConfig) -> None:
        self.optout_all = frozenset(fold(w) for w in config.optout_all)
        self.optout = frozenset(fold(w) for w in config.optout)
        self.clear = frozenset(fold(w) for w in config.clear)
        self.contains = tuple(fold(w) for w in config.optout_contains)

    def classify(self, text: str) -> tuple[str, bool] | None:
        """(op, of every sender?) for a keyword reply, else None."""
        word = fold(text)
        if word in self.optout_all:
            return OPT_OUT, True
        if word in self.optout:
            return OPT_OUT, False
        if word in self.clear:
            return OPT_OUT_CLEAR, False
        if any(c and c in word for c in self.contains):
            return OPT_OUT, False
        return None


def reply_change(
    value: bytes | None, keywords: Keywords, country_code: str
) -> tuple[str, bytes | None, bytes | None]:
    """(result, key, change value) of one reply; key and value only for a keyword reply."""
    try:
        reply = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return BAD, None, None
    if type(reply) is not dict:
        return BAD, None, None
    number_text, sender = reply.get("from"), reply.get("to")
    if type(number_text) is not str or type(sender) is not str or not sender.strip():
        return BAD, None, None
    try:
        number = normalize(number_text, country_code)
    except InvalidNumber:
        return BAD, None, None
    text = reply.get("text")
    found = keywords.classify(text) if type(text) is str else None
    if found is None:
        return IGNORED, None, None
    op, every = found
    change: dict[str, object] = {
        "op": op, "sender": ALL_SENDERS if every else sender.strip(), "recipient": f"+{number}",
        "source": SOURCE,
    }  # fmt: skip
    mid = reply.get("id")
    if type(mid) is str:
        change["id"] = f"mo:{mid}"
    ts = reply.get("ts")
    if type(ts) is int:
        change["ts"] = ts
    return KEYWORD, str(number).encode(), orjson.dumps(change)


def convert_partition(
    keywords: Keywords,
    country_code: str,
    topic: str,
    partition: int,
    records: Sequence[InputRecord],
    changes_topic: str,
    changes_partitions: int,
    new_builder: Callable[[], Builder],
    results: Counter[str],
) -> PartitionOutput:
    """Turn one inbound partition's replies into change records on ``changes_topic``,
    partitioned by key as Kafka's default partitioner does (murmur2), so that every change of
    a number is in one partition, in order."""
    out = PartitionOutput(topic, partition, records[0].offset, records[-1].offset)
    builders: dict[int, Builder] = {}
    # The changes topic stamps records with the broker's append time; this one (once per
    # batch) is what a topic with CreateTime would keep.
    now_ms = time.time_ns() // 1_000_000
    for record in records:
        result, key, value = reply_change(record.value, keywords, country_code)
        results[result] += 1
        if key is None:
            continue
        target = (murmur2(key) & 0x7FFFFFFF) % changes_partitions
        builder = builders.get(target)
        headers = encode_header("filterd-source", f"{topic}/{partition}/{record.offset}".encode())
        if builder is None or not builder.append(now_ms, key, value, headers, 1):
            builder = builders[target] = new_builder()
            out.batches.append((changes_topic, target, builder))
            if not builder.append(now_ms, key, value, headers, 1):
                raise ValueError(f"reply {topic}/{partition}/{record.offset} does not fit a batch")
    return out


class Replies:
    """What the batch loop needs to convert inbound partitions (see :func:`convert_partition`)."""

    def __init__(
        self,
        config: Config,
        changes_partitions: Callable[[], int],
    ) -> None:
        self.keywords = Keywords(config.replies)
        self.country_code = config.policy.default_country_code
        self.inbound = config.topics.inbound
        self.changes_topic = config.topics.changes
        self.changes_partitions = changes_partitions
        #: Replies seen, by result (keyword, ignored, bad).
        self.results: Counter[str] = Counter()

    def convert(
        self, topic: str, partition: int, records: Sequence[InputRecord],
        new_builder: Callable[[], Builder],
    ) -> PartitionOutput:  # fmt: skip
        return convert_partition(
            self.keywords, self.country_code, topic, partition, records, self.changes_topic,
            self.changes_partitions(), new_builder, self.results,
        )  # fmt: skip
