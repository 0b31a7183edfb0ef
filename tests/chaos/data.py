"""The pure half of the fault suite: consent data sets and the events seeded from them.

Nothing here touches Kafka or a process. ``tests/chaos/faults.py`` drives the broker and
the workers; what the outputs *should* be is the reference model's
(``tests.support.reference``), and the comparison is ``tests.support.check``.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from filterd import prefilter
from tests.support.reference import COUNTRY_CODE, EXEMPT_CATEGORIES, MAX_EVENT_BYTES, Reference

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
    _references: dict[int, Reference] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        senders = frozenset(s for s, _ in self.consents) | frozenset(s for s, _ in self.optouts)
        object.__setattr__(self, "senders", senders)
        object.__setattr__(self, "consent_list", tuple(sorted(self.consents)))
        object.__setattr__(self, "optout_list", tuple(sorted(self.optouts)))
        object.__setattr__(self, "sender_list", tuple(sorted(senders)))
        object.__setattr__(self, "dnd_list", tuple(sorted(self.dnd)))

    def reference(self, max_event_bytes: int = MAX_EVENT_BYTES) -> Reference:
        """The reference model of this data set (built once per size limit)."""
        model = self._references.get(max_event_bytes)
        if model is None:
            model = self._references[max_event_bytes] = Reference(
                self.consents, self.optouts, self.senders, self.dnd, max_bytes=max_event_bytes
            )
        return model


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
# The snapshot as the router sees it, for pure fuzzing
# ---------------------------------------------------------------------------


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
    model never uses it.
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
    recipient written in all the number formats docs/contract.md accepts.
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


def iter_events(
    count: int, tag: str, data: ConsentData, seed: int
) -> Iterator[tuple[int, bytes, bytes]]:
    """(n, key, value) for events 0..count-1, reproducible from ``seed``."""
    rng = random.Random(seed)
    for n in range(count):
        key, value = make_event(n, tag, data, rng)
        yield n, key, value
