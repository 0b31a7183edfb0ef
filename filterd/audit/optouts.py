"""Opt-outs honoured: live opt-outs that blocked messages, by source, and how soon.

A block record decided by a live change names it in ``filterd-change``
(``topic/partition/offset`` on the changes topic). While the summary reads the block topic,
:class:`FirstBlocks` keeps, per change named, the earliest record timestamp (the message's
time) of the records it decided. :func:`honoured` then reads those changes back from the
changes topic, one partition at a time from the lowest offset wanted to the highest (one
consumer, batch-wise, not one read per record), keeps the ``opt-out`` ones (of one sender or
of every sender) and counts them per ``source`` (``registry``, ``mo-reply``, ...; ``(none)``
when the change names none), with the delay from each opt-out's append to the changes
topic to the first message it blocked: p50, p99 and max per source.

A change no longer on the topic (compaction keeps only the latest change of a recipient),
or unreadable, cannot be attributed: it is counted as ``unattributed``, never guessed.
A negative delay is a message stamped before the opt-out's append yet decided after it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import NamedTuple, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition

from filterd.audit.reader import KafkaParams
from filterd.audit.records import AuditRecord
from filterd.audit.tables import html_table
from filterd.changes.model import OPT_OUT, BadChange, parse_change

__all__ = [
    "FirstBlocks", "Honoured", "csv_rows", "honoured", "html_section", "nearest_rank",
    "write_table",
]  # fmt: skip

#: The source shown for a change that names none.
NO_SOURCE = "(none)"


class FirstBlocks:
    """Per change named by a block record: the earliest record timestamp it decided."""

    __slots__ = ("first_ms",)

    def __init__(self) -> None:
        self.first_ms: dict[str, int] = {}

    def add_batch(self, records: Iterable[AuditRecord]) -> None:
        for record in records:
            if record.change is not None and record.route == "block":
                self.add(record.change, record.timestamp_ms)

    def add(self, ref: str, ts_ms: int) -> None:
        """A block at ``ts_ms`` decided by change ``ref`` (``topic/partition/offset``)."""
        seen = self.first_ms.get(ref)
        if seen is None or ts_ms < seen:
            self.first_ms[ref] = ts_ms


def nearest_rank(sorted_values: Sequence[int], q: float) -> int:
    """The ``q``-th percentile (0-100) by nearest rank, of a non-empty sorted sequence."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Honoured(NamedTuple):
    """Opt-outs that blocked messages, per source, with their delays (ms)."""

    delays_ms: dict[str, list[int]]
    #: Changes named by block records that could not be read back (compacted away).
    unattributed: int = 0

    @property
    def total(self) -> int:
        return sum(len(d) for d in self.delays_ms.values())

    def to_json(self) -> dict[str, object]:
        """The ``optouts_honoured`` object of ``audit summary --format json``."""
        every = [d for delays in self.delays_ms.values() for d in delays]
        return {
            "total": self.total,
            "by_source": {s: _stats(d) for s, d in sorted(self.delays_ms.items())},
            "delay_ms": _stats(every),
            "unattributed": self.unattributed,
        }

    def rows(self) -> list[tuple[str, int, str, str, str]]:
        """(source, honoured, p50, p99, max) per source, then ``all``; delays in ms."""
        out: list[tuple[str, int, str, str, str]] = []
        every = [d for delays in self.delays_ms.values() for d in delays]
        for source, delays in [*sorted(self.delays_ms.items()), ("all", every)]:
            s = _stats(delays)
            p50, p99, top = (_ms(s.get(k)) for k in ("p50", "p99", "max"))
            out.append((source, len(delays), p50, p99, top))
        return out


def _stats(delays: Sequence[int]) -> dict[str, int]:
    if not delays:
        return {"honoured": 0}
    ordered = sorted(delays)
    return {
        "honoured": len(ordered),
        "p50": nearest_rank(ordered, 50),
        "p99": nearest_rank(ordered, 99),
        "max": ordered[-1],
    }


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value} ms"


def _wanted(first_ms: Mapping[str, int]) -> dict[TopicPartition, dict[int, str]]:
    """The changes to read, per partition: offset -> ``topic/partition/offset``."""
    wanted: dict[TopicPartition, dict[int, str]] = {}
    for ref in first_ms:
        try:
            topic, partition, offset = ref.rsplit("/", 2)
            tp, at = TopicPartition(topic, int(partition)), int(offset)
        except ValueError:
            continue  # counted as unattributed: never found below
        wanted.setdefault(tp, {})[at] = ref
    return wanted


async def honoured(params: KafkaParams, first: FirstBlocks, country_code: str) -> Honoured:
    """Read the changes ``first`` names and attribute the opt-outs among them."""
    wanted = _wanted(first.first_ms)
    delays: dict[str, list[int]] = {}
    found = 0
    if wanted:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=params.bootstrap_servers, enable_auto_commit=False,
            isolation_level="read_committed", **params.client_options,
        )  # fmt: skip
        await consumer.start()
        try:
            for tp, refs in sorted(wanted.items()):
                async for offset, ts, value in _read_range(consumer, tp, min(refs), max(refs)):
                    ref = refs.get(offset)
                    if ref is None:
                        continue
                    found += 1
                    try:
                        change = parse_change(value, country_code)
                    except BadChange:
                        continue
                    if change.op == OPT_OUT:
                        source = change.source or NO_SOURCE
                        delays.setdefault(source, []).append(first.first_ms[ref] - ts)
        finally:
            await consumer.stop()
    return Honoured(delays, len(first.first_ms) - found)


async def _read_range(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, last: int
) -> AsyncIterator[tuple[int, int, bytes | None]]:
    """(offset, timestamp, value) of ``tp`` from ``start`` to ``last`` (what is left of it)."""
    consumer.assign([tp])
    ends = await consumer.end_offsets([tp])
    stop = min(last + 1, ends.get(tp, 0))
    if start >= stop:
        return
    consumer.seek(tp, start)
    while await consumer.position(tp) < stop:
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
        for record in batch.get(tp, []):
            if record.offset >= stop:
                return
            yield record.offset, record.timestamp, record.value


# --------------------------------------------------------------------------- output

_NOTE = (
    "Live opt-outs (changes topic) that blocked at least one message in this period, by the "
    "change's source; delay: from the opt-out's append to the changes topic to the first "
    "message it blocked (the message's time)."
)


def write_table(result: Honoured, out: TextIO) -> None:
    """The text form, a section of ``audit summary``."""
    out.write("\nopt-outs honoured (live changes)\n")
    rows = result.rows()
    width = max(len(r[0]) for r in rows)
    out.write(f"  {'source':<{width}}  {'honoured':>10}  {'p50':>10}  {'p99':>10}  {'max':>10}\n")
    for source, n, p50, p99, top in rows:
        out.write(f"  {source:<{width}}  {n:>10}  {p50:>10}  {p99:>10}  {top:>10}\n")
    if result.unattributed:
        out.write(f"  {result.unattributed} changes no longer on the changes topic: not counted\n")


def csv_rows(result: Honoured) -> list[tuple[str, str, str, object]]:
    """``section,key,reason,count`` rows of ``audit summary --format csv``."""
    out: list[tuple[str, str, str, object]] = []
    for source, n, p50, p99, top in result.rows():
        out.append(("optouts_honoured", source, "", n))
        for name, value in (("delay_p50", p50), ("delay_p99", p99), ("delay_max", top)):
            out.append(("optouts_honoured", source, name, value.removesuffix(" ms")))
    out.append(("optouts_honoured", "unattributed", "", result.unattributed))
    return out


def html_section(result: Honoured | None) -> str:
    """The HTML report's section (empty when no changes topic is configured)."""
    if result is None:
        return ""
    out = ["<section><h2>Opt-outs honoured (live changes)</h2>", f'<p class="note">{_NOTE}</p>']
    if not result.total:
        out.append("<p>None in this period.</p>")
    else:
        headers = ("source", "opt-outs honoured", "delay p50", "delay p99", "delay max")
        out.append(html_table(headers, result.rows(), {1, 2, 3, 4}))
    if result.unattributed:
        out.append(
            f'<p class="note">{result.unattributed:,} changes named by blocks are no longer on '
            "the changes topic (compacted): not counted.</p>"
        )
    out.append("</section>")
    return "\n".join(out)
