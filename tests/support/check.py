"""The one output checker: every output against its input and the reference model.

Each output record names its input in ``filterd-source`` (``topic/partition/offset``) and
the snapshot version that decided it in ``filterd-snapshot``; it is decided again by the
reference model of that version, so an event decided during a snapshot swap is judged by
the version that actually decided it. Invalid events need no snapshot and are judged with
any version. Used by the stream tests and the fault-injection suite alike.

Step 4 counts per input partition: outputs are judged in input offset order, each input
partition by a model of its own (:meth:`Reference.for_partition`, when the model has it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import ConsumerRecord

from tests.support.reference import REASON_ROUTE, Decision


class Model(Protocol):
    """What the checker needs of a snapshot version's model."""

    def decide(self, value: bytes | None) -> Decision: ...


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One record read back from the input topic: the ground truth."""

    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One record drained from an output topic (``read_committed``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, str]

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> OutputRecord:
        """A consumed record; each ``filterd-*`` header must be there once at most."""
        names = [k for k, _ in record.headers if k.startswith("filterd-")]
        assert len(names) == len(set(names)), (record.topic, record.offset, record.headers)
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
        return cls(record.topic, record.partition, record.offset, record.key, record.value, headers)


Source = tuple[int, int]  # (input partition, input offset)


def inputs_of(records: Iterable[ConsumerRecord[bytes, bytes]]) -> dict[Source, InputRecord]:
    """The ground truth from consumed input records."""
    return {(r.partition, r.offset): InputRecord(r.key, r.value) for r in records}


@dataclass(slots=True)
class Verdict:
    """What the outputs say about the inputs. ``passed`` is decided by the caller's mode."""

    inputs: int = 0
    outputs: int = 0
    lost: int = 0
    misrouted: int = 0
    in_two_topics: int = 0
    duplicated: int = 0
    unknown_source: int = 0
    corrupt_snapshot_used: int = 0
    value_mismatch: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_snapshot: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    #: Every input with no output, as ``topic/partition/offset``.
    missing: list[str] = field(default_factory=list)

    def note(self, kind: str, text: str, limit: int = 10) -> None:
        """Keep the first few examples of each kind of failure for the report."""
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < limit:
            bucket.append(text)

    def ok(self, exactly_once: bool) -> bool:
        """Nothing lost, nothing in two topics, nothing misrouted; no repeats in EOS."""
        hard = (
            self.lost
            + self.misrouted
            + self.in_two_topics
            + self.unknown_source
            + self.corrupt_snapshot_used
            + self.value_mismatch
        )
        return hard == 0 and (self.duplicated == 0 or not exactly_once)

    @property
    def clean(self) -> bool:
        """Every input exactly once, in the right topic, unchanged."""
        return self.ok(exactly_once=True)

    @property
    def versions(self) -> Counter[str]:
        """Outputs per deciding snapshot version."""
        return self.by_snapshot


def parse_source(header: str, input_topic: str) -> Source | None:
    """``topic/partition/offset`` → (partition, offset), None when it names another topic."""
    topic, _, rest = header.rpartition("/")
    topic, _, partition = topic.rpartition("/")
    if topic != input_topic:
        return None
    try:
        return int(partition), int(rest)
    except ValueError:
        return None


@dataclass(slots=True)
class _Pass:
    """One pass over the outputs: where each input landed."""

    verdict: Verdict
    seen: dict[Source, list[str]] = field(default_factory=dict)
    # Where each copy landed, for the failure examples: topic[partition]@offset (version).
    where_seen: dict[Source, list[str]] = field(default_factory=dict)
    cache: dict[tuple[Source, str], Decision] = field(default_factory=dict)
    #: (version, input partition) -> that partition's model of the version.
    models: dict[tuple[str, int], Model] = field(default_factory=dict)


def verify(
    inputs: Mapping[Source, InputRecord],
    outputs: Iterable[OutputRecord],
    *,
    input_topic: str,
    topic_routes: Mapping[str, str],
    versions: Mapping[str, Model],
    corrupt_versions: Iterable[str] = (),
) -> Verdict:
    """Compare drained outputs with the inputs and the reference model of each version."""
    state = _Pass(Verdict(inputs=len(inputs)))
    corrupt = set(corrupt_versions)

    def order(out: OutputRecord) -> tuple[int, int]:
        return parse_source(out.headers.get("filterd-source", ""), input_topic) or (-1, -1)

    for out in sorted(outputs, key=order):
        _check_output(state, out, inputs, input_topic, topic_routes, versions, corrupt)
    _check_inputs(state, inputs, input_topic)
    return state.verdict


def _check_output(
    state: _Pass,
    out: OutputRecord,
    inputs: Mapping[Source, InputRecord],
    input_topic: str,
    topic_routes: Mapping[str, str],
    versions: Mapping[str, Model],
    corrupt: set[str],
) -> None:
    verdict = state.verdict
    verdict.outputs += 1
    where = f"{out.topic}[{out.partition}]@{out.offset}"
    source = parse_source(out.headers.get("filterd-source", ""), input_topic)
    if source is None or source not in inputs:
        verdict.unknown_source += 1
        verdict.note("unknown_source", f"{where} source={out.headers.get('filterd-source')}")
        return
    state.seen.setdefault(source, []).append(out.topic)
    state.where_seen.setdefault(source, []).append(
        f"{where} ({out.headers.get('filterd-snapshot', '')})"
    )
    record = inputs[source]
    if out.value != record.value or out.key != record.key:
        verdict.value_mismatch += 1
        verdict.note("value_mismatch", f"{where} source={source}")
    route = out.headers.get("filterd-route", "")
    reason = out.headers.get("filterd-reason", "")
    version = out.headers.get("filterd-snapshot", "")
    verdict.by_reason[reason] += 1
    verdict.by_snapshot[version] += 1
    if version in corrupt:
        verdict.corrupt_snapshot_used += 1
        verdict.note("corrupt_snapshot_used", f"{where} source={source} version={version}")
    model = versions.get(version)
    if model is None and REASON_ROUTE.get(reason) == "invalid":
        model = next(iter(versions.values()))
    if model is None:
        verdict.misrouted += 1
        verdict.note("misrouted", f"{where} source={source} unknown snapshot {version!r}")
        return
    expected = state.cache.get((source, version))
    if expected is None:
        own = state.models.get((version, source[0]))
        if own is None:
            fresh = getattr(model, "for_partition", None)
            own = state.models[(version, source[0])] = fresh() if fresh else model
        expected = state.cache[(source, version)] = own.decide(record.value)
    if (route, reason) != expected or topic_routes.get(out.topic) != route:
        verdict.misrouted += 1
        verdict.note(
            "misrouted",
            f"{where} source={source} got {route}/{reason} expected "
            f"{expected[0]}/{expected[1]} (snapshot {version})",
        )


def _check_inputs(state: _Pass, inputs: Mapping[Source, InputRecord], input_topic: str) -> None:
    verdict = state.verdict
    for source in inputs:
        name = f"{input_topic}/{source[0]}/{source[1]}"
        topics = state.seen.get(source)
        if not topics:
            verdict.lost += 1
            verdict.missing.append(name)
            verdict.note("lost", name)
            continue
        if len(set(topics)) > 1:
            verdict.in_two_topics += 1
            verdict.note("in_two_topics", f"{name} -> {state.where_seen[source]}")
        if len(topics) > 1:
            verdict.duplicated += len(topics) - 1
            verdict.note("duplicated", f"{name} -> {state.where_seen[source]}")


def verify_stream(
    inputs: Iterable[ConsumerRecord[bytes, bytes]],
    outputs: Mapping[str, list[ConsumerRecord[bytes, bytes]]],
    reference_for: Mapping[str, Model],
) -> Verdict:
    """:func:`verify` over consumed records: ``outputs`` maps a route to its topic's records,
    ``reference_for`` a snapshot version to the reference model of that version."""
    records = list(inputs)
    input_topics = {r.topic for r in records}
    assert len(input_topics) <= 1, f"inputs from several topics: {input_topics}"
    topic_routes = {r.topic: route for route, rs in outputs.items() for r in rs}
    return verify(
        inputs_of(records),
        (OutputRecord.of(r) for rs in outputs.values() for r in rs),
        input_topic=next(iter(input_topics), ""),
        topic_routes=topic_routes,
        versions=reference_for,
    )
