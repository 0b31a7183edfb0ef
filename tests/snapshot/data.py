"""Helpers for snapshot tests: CSV writers and an independent set-based model of the inputs."""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from filterd.numbers import normalize


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    """Write a CSV (gzip when the name ends in .gz); fields are written as given."""
    text = ",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Model:
    """What a snapshot built from some rows must answer, computed with plain sets."""

    consents: set[tuple[str, int]] = field(default_factory=set)
    optouts: set[tuple[str, int]] = field(default_factory=set)
    dnd: set[int] = field(default_factory=set)

    @classmethod
    def of(
        cls,
        consent_rows: Iterable[Sequence[str]],
        optout_rows: Iterable[Sequence[str]] = (),
        dnd_rows: Iterable[Sequence[str]] = (),
        cc: str = "86",
    ) -> Model:
        m = cls()
        m.consents = {(s.strip(), normalize(r.strip(), cc)) for s, r in consent_rows}
        m.optouts = {(s.strip(), normalize(r.strip(), cc)) for s, r in optout_rows}
        m.dnd = {normalize(r.strip(), cc) for (r,) in dnd_rows}
        return m

    @property
    def senders(self) -> set[str]:
        return {s for s, _ in self.consents} | {s for s, _ in self.optouts}


def random_number(rng: random.Random) -> str:
    """A Chinese mobile number in one of the accepted spellings."""
    digits = f"1{rng.randint(3, 9)}{rng.randrange(10**9):09d}"
    form = rng.randrange(4)
    if form == 0:
        return "+86" + digits
    if form == 1:
        return digits
    if form == 2:
        return "0" + digits
    return f"+86 {digits[:3]}-{digits[3:7]}-{digits[7:]}"


def random_rows(rng: random.Random, n: int, senders: Sequence[str]) -> list[tuple[str, str]]:
    return [(rng.choice(senders), random_number(rng)) for _ in range(n)]
