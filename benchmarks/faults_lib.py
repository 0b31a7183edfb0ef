"""The pure half of the fault suite: data set, events, reference model, verdict.

Nothing here touches Kafka or a process. ``benchmarks/faults.py`` drives the broker
and the workers; this module decides what the outputs *should* be and compares.

The reference model is deliberately independent of filterd: it reads the consent
data as plain Python sets of tuples and applies the policy of DESIGN.md line by
line, without ``filterd.router``, ``filterd.numbers`` or the roaring snapshot code.
A bug in the service's decision path therefore shows up as ``misrouted`` instead of
being reproduced by the checker.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from filterd import prefilter

ROUTES = ("deliver", "block", "invalid")

#: Every reason DESIGN.md names, with the route it belongs to.
REASON_ROUTE: Mapping[str, str] = {
    "consent": "deliver",
    "exempt-category": "deliver",
    "opted-out": "block",
    "unknown-sender": "block",
    "recipient-dnd": "block",
    "no-consent": "block",
    "oversized": "invalid",
    "malformed-json": "invalid",
    "missing-field": "invalid",
    "bad-field-type": "invalid",
    "bad-recipient": "invalid",
    "internal-error": "invalid",
}

EXEMPT_CATEGORIES = frozenset({"transactional", "verification"})
COUNTRY_CODE = "86"
MAX_EVENT_BYTES = 65_536
#: Every this many seeded events, one is oversized (about 65 KB).
OVERSIZED_EVERY = 1_000


# ---------------------------------------------------------------------------
# Consent data: the sets a snapshot is built from
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentData:
    """One snapshot's content as plain sets: (sender, E.164 digits) pairs and numbers."""

    consents: frozenset[tuple[str, int]]
    optouts: frozenset[tuple[str, int]]
    dnd: frozenset[int]
    #: Senders "in the snapshot": at least one consent or opt-out row.
    senders: frozenset[str] = field(init=False)
    #: Sorted copies, so that seeding draws reproducibly without re-sorting sets.
    consent_list: tuple[tuple[str, int], ...] = field(init=False, repr=False)
    optout_list: tuple[tuple[str, int], ...] = field(init=False, repr=False)
    sender_list: tuple[str, ...] = field(init=False, repr=False)
    dnd_list: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        senders = frozenset(s for s, _ in self.consents) | frozenset(s for s, _ in self.optouts)
        object.__setattr__(self, "senders", senders)
        object.__setattr__(self, "consent_list", tuple(sorted(self.consents)))
        object.__setattr__(self, "optout_list", tuple(sorted(self.optouts)))
        object.__setattr__(self, "sender_list", tuple(sorted(senders)))
        object.__setattr__(self, "dnd_list", tuple(sorted(self.dnd)))


def _mobile(rng: random.Random) -> int:
    # 86 + an 11-digit mobile number starting with 13..19: 13 digits in E.164.
    return int(f"86{rng.randint(13, 19)}{rng.randrange(10**9):09d}")


def make_dataset(
    rng: random.Random,
    senders: int = 200,
    recipients: int = 20_000,
    consents: int = 40_000,
    optouts: int = 4_000,
    dnd: int = 1_000,
) -> ConsentData:
    """A random consent data set: SP-port senders, Chinese mobile recipients."""
    sender_ids = [f"1069{rng.randrange(10**8):08d}" for _ in range(senders)]
    numbers = list({_mobile(rng) for _ in range(recipients)})
    consent_set = {(rng.choice(sender_ids), rng.choice(numbers)) for _ in range(consents)}
    optout_set = {(rng.choice(sender_ids), rng.choice(numbers)) for _ in range(optouts)}
    dnd_set = {rng.choice(numbers) for _ in range(dnd)}
    return ConsentData(frozenset(consent_set), frozenset(optout_set), frozenset(dnd_set))


def extend_dataset(data: ConsentData, rng: random.Random, new_senders: int = 20) -> ConsentData:
    """A later version: new senders with consents, and extra consents for known senders.

    Events then decide differently under the two versions (``unknown-sender`` and
    ``no-consent`` become ``consent``), so a checker that accepted the wrong version
    would notice.
    """
    numbers = sorted({r for _, r in data.consents})
    added: set[tuple[str, int]] = set()
    for _ in range(new_senders):
        sender = f"1069{rng.randrange(10**8):08d}"
        added.update((sender, rng.choice(numbers)) for _ in range(50))
    known = data.sender_list
    added.update((rng.choice(known), rng.choice(numbers)) for _ in range(len(data.consents) // 10))
    return ConsentData(data.consents | added, data.optouts, data.dnd)


def write_csvs(data: ConsentData, directory: Path) -> dict[str, Path]:
    """Write the snapshot build inputs; returns paths keyed consents/optouts/dnd."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "consents": directory / "consents.csv",
        "optouts": directory / "optouts.csv",
        "dnd": directory / "dnd.csv",
    }
    for name, header, rows in (
        ("consents", ("sender", "recipient"), sorted(data.consents)),
        ("optouts", ("sender", "recipient"), sorted(data.optouts)),
    ):
        with paths[name].open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows((s, f"+{r}") for s, r in rows)
    with paths["dnd"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("recipient",))
        writer.writerows((f"+{r}",) for r in data.dnd_list)
    return paths


# ---------------------------------------------------------------------------
# The reference model of DESIGN.md
# ---------------------------------------------------------------------------

_SEPARATORS = str.maketrans("", "", " -.()")


def ref_normalize(raw: str, country_code: str = COUNTRY_CODE) -> int | None:
    """DESIGN.md "Numbers", step by step; None where the event is ``bad-recipient``."""
    s = raw.translate(_SEPARATORS)
    if s.startswith("+"):
        digits = s[1:]
    elif s.startswith("00"):
        digits = s[2:]
    elif s.isascii() and s.isdigit():
        digits = country_code + (s[1:] if s.startswith("0") else s)
    else:
        return None
    if not (digits.isascii() and digits.isdigit()):
        return None
    if not 8 <= len(digits) <= 15 or digits.startswith("0"):
        return None
    return int(digits)


def ref_decide(
    value: bytes | None,
    data: ConsentData,
    max_event_bytes: int = MAX_EVENT_BYTES,
    country_code: str = COUNTRY_CODE,
) -> tuple[str, str]:
    """The route and reason DESIGN.md prescribes for one input value."""
    if value is not None and len(value) > max_event_bytes:
        return "invalid", "oversized"
    try:
        event = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return "invalid", "malformed-json"
    if not isinstance(event, dict):
        return "invalid", "malformed-json"
    for name in ("id", "sender", "recipient"):
        v = event.get(name)
        if v is None or v == "" or (isinstance(v, str) and not v.strip()):
            return "invalid", "missing-field"
    # An optional field given as JSON null counts as not given.
    for name in ("id", "sender", "recipient", "category", "text"):
        if event.get(name) is not None and not isinstance(event[name], str):
            return "invalid", "bad-field-type"
    ts = event.get("ts")
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool)):
        return "invalid", "bad-field-type"
    recipient = ref_normalize(event["recipient"], country_code)
    if recipient is None:
        return "invalid", "bad-recipient"
    category = event.get("category")
    if category is None:
        category = "marketing"
    if category in EXEMPT_CATEGORIES:
        return "deliver", "exempt-category"
    sender = event["sender"].strip()
    if (sender, recipient) in data.optouts:
        return "block", "opted-out"
    if (sender, recipient) in data.consents:
        return "deliver", "consent"
    if sender not in data.senders:
        return "block", "unknown-sender"
    if recipient in data.dnd:
        return "block", "recipient-dnd"
    return "block", "no-consent"


@dataclass(frozen=True, slots=True)
class SenderSets:
    """One sender's rows, as the router's ``SenderLookup`` protocol wants them."""

    consents: frozenset[int]
    optouts: frozenset[int]
    optout_filter: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "optout_filter", prefilter.build(self.optouts))


@dataclass(frozen=True, slots=True)
class SetSnapshot:
    """The router's ``SnapshotView`` protocol over plain sets, for pure fuzzing.

    Lets the decision path run without the snapshot package; the reference
    model above never uses it.
    """

    version: str
    senders: Mapping[str, SenderSets]
    dnd_numbers: frozenset[int]

    @classmethod
    def of(cls, data: ConsentData, version: str = "sets-1") -> SetSnapshot:
        senders = {
            s: SenderSets(
                frozenset(r for t, r in data.consents if t == s),
                frozenset(r for t, r in data.optouts if t == s),
            )
            for s in data.senders
        }
        return cls(version, senders, data.dnd)


# ---------------------------------------------------------------------------
# Seeded events
# ---------------------------------------------------------------------------


def _format_number(digits: int, rng: random.Random) -> str:
    national = str(digits)[len(COUNTRY_CODE) :]
    style = rng.randrange(6)
    if style == 0:
        return f"+{digits}"
    if style == 1:
        return national
    if style == 2:
        return f"00{digits}"
    if style == 3:
        return f"+{COUNTRY_CODE} {national[:3]}-{national[3:7]}-{national[7:]}"
    if style == 4:
        return f"0{national}"  # one trunk zero
    return f"({national[:3]}) {national[3:7]} {national[7:]}"


def _bad_event(n: int, tag: str, rng: random.Random, sender: str) -> bytes:
    ident = f"{tag}-{n}"
    kind = rng.randrange(8)
    if kind == 0:
        return f'{{"id": "{ident}", "sender": '.encode()  # truncated JSON
    if kind == 1:
        return orjson.dumps([ident, sender])  # JSON, not an object
    if kind == 2:
        return orjson.dumps({"id": ident, "sender": sender})  # no recipient
    if kind == 3:
        return orjson.dumps({"id": ident, "sender": sender, "recipient": ""})
    if kind == 4:
        return orjson.dumps({"id": ident, "sender": sender, "recipient": 8613812345678})
    if kind == 5:
        return orjson.dumps({"id": ident, "sender": sender, "recipient": "+86138", "ts": 1})
    if kind == 6:
        return orjson.dumps({"id": ident, "sender": sender, "recipient": "call me maybe"})
    return orjson.dumps(
        {"id": ident, "sender": sender, "recipient": "13812345678", "ts": "yesterday"}
    )


def make_event(n: int, tag: str, data: ConsentData, rng: random.Random) -> tuple[bytes, bytes]:
    """Event number ``n`` of a run: (key, value). The id ``<tag>-<n>`` is unique.

    The mix reaches every rule of the policy and every invalid reason, with the
    recipient written in all the number formats DESIGN.md accepts.
    """
    sender = rng.choice(data.sender_list)
    roll = rng.random()
    category: str | None = None
    if n % OVERSIZED_EVERY == OVERSIZED_EVERY // 2:
        # At fixed positions, so a run knows where they are: the fault suite makes the
        # invalid topic refuse records this large for a while (a produce that keeps failing).
        body = {"id": f"{tag}-{n}", "sender": sender, "recipient": "13812345678"}
        body["text"] = "x" * (MAX_EVENT_BYTES + 10)
        return sender.encode(), orjson.dumps(body)
    if roll < 0.35:
        sender, recipient = rng.choice(data.consent_list)
    elif roll < 0.45:
        sender, recipient = rng.choice(data.optout_list)
    elif roll < 0.53:
        sender = f"unknown{rng.randrange(1000)}"
        recipient = rng.choice(data.consent_list)[1]
    elif roll < 0.60:
        recipient = rng.choice(data.dnd_list)
    elif roll < 0.78:
        recipient = rng.choice(data.consent_list)[1]
        category = rng.choice(("marketing", "promo", None))
    elif roll < 0.90:
        recipient = rng.choice(data.consent_list)[1]
        category = rng.choice(sorted(EXEMPT_CATEGORIES))
    else:
        return sender.encode(), _bad_event(n, tag, rng, sender)
    event: dict[str, object] = {
        "id": f"{tag}-{n}",
        "sender": f" {sender} " if rng.random() < 0.05 else sender,
        "recipient": _format_number(recipient, rng),
        "text": "Your code is 1234" if rng.random() < 0.5 else "Sale! 20% off today",
        "ts": 1_764_300_000_000 + n,
    }
    if category is not None:
        event["category"] = category
    if rng.random() < 0.05:
        event["campaign"] = {"unknown": "fields are kept"}
    return sender.encode(), orjson.dumps(event)


# ---------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------


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


Source = tuple[int, int]  # (input partition, input offset)


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


def verify(
    inputs: Mapping[Source, InputRecord],
    outputs: Iterable[OutputRecord],
    *,
    input_topic: str,
    topic_routes: Mapping[str, str],
    versions: Mapping[str, ConsentData],
    corrupt_versions: Iterable[str] = (),
) -> Verdict:
    """Compare drained outputs with the inputs and the reference model.

    Each output is decided again by :func:`ref_decide` with the snapshot version its
    ``filterd-snapshot`` header names, so an event decided during a snapshot swap is
    judged by the version that actually decided it. Invalid events need no snapshot
    and are judged with any version.
    """
    verdict = Verdict(inputs=len(inputs))
    corrupt = set(corrupt_versions)
    any_version = next(iter(versions.values()))
    seen: dict[Source, list[str]] = {}
    # Where each copy landed, for the failure examples: topic[partition]@offset (version).
    where_seen: dict[Source, list[str]] = {}
    cache: dict[tuple[Source, str], tuple[str, str]] = {}
    for out in outputs:
        verdict.outputs += 1
        where = f"{out.topic}[{out.partition}]@{out.offset}"
        source = parse_source(out.headers.get("filterd-source", ""), input_topic)
        if source is None or source not in inputs:
            verdict.unknown_source += 1
            verdict.note("unknown_source", f"{where} source={out.headers.get('filterd-source')}")
            continue
        seen.setdefault(source, []).append(out.topic)
        where_seen.setdefault(source, []).append(
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
        data = versions.get(version)
        if data is None and REASON_ROUTE.get(reason) == "invalid":
            data = any_version
        if data is None:
            verdict.misrouted += 1
            verdict.note("misrouted", f"{where} source={source} unknown snapshot {version!r}")
            continue
        expected = cache.get((source, version))
        if expected is None:
            expected = cache[(source, version)] = ref_decide(record.value, data)
        if (route, reason) != expected or topic_routes.get(out.topic) != route:
            verdict.misrouted += 1
            verdict.note(
                "misrouted",
                f"{where} source={source} got {route}/{reason} expected "
                f"{expected[0]}/{expected[1]} (snapshot {version})",
            )
    for source in inputs:
        topics = seen.get(source)
        if not topics:
            verdict.lost += 1
            verdict.note("lost", f"{input_topic}/{source[0]}/{source[1]}")
            continue
        if len(set(topics)) > 1:
            verdict.in_two_topics += 1
            verdict.note(
                "in_two_topics", f"{input_topic}/{source[0]}/{source[1]} -> {where_seen[source]}"
            )
        if len(topics) > 1:
            verdict.duplicated += len(topics) - 1
            verdict.note(
                "duplicated", f"{input_topic}/{source[0]}/{source[1]} -> {where_seen[source]}"
            )
    return verdict


def iter_events(
    count: int, tag: str, data: ConsentData, seed: int
) -> Iterator[tuple[int, bytes, bytes]]:
    """(n, key, value) for events 0..count-1, reproducible from ``seed``."""
    rng = random.Random(seed)
    for n in range(count):
        key, value = make_event(n, tag, data, rng)
        yield n, key, value
