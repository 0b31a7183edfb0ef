"""Compaction benchmark: ``snapshot compact`` of a large version with many pending changes.

    python -m benchmarks.compact_bench                          # 1e7 consents, 1e6 changes
    python -m benchmarks.compact_bench --consents 1e6 --changes 1e5

The version has the shape of benchmarks/snapshot_bench.py in short: five huge senders hold
60% of the consents, 2,000 small senders the rest; 5% of the consents expire (terms), 2% of
N are opt-outs, 10% of N do-not-disturb. The changes are JSON records as a registry writes
them: 40% consents (a quarter with an expiry, a tenth with max_per_day, 5% of a method not
accepted), 20% opt-outs, 10% opt-out clears, 10% consent revokes, 5% opt-outs of every
sender, 15% do-not-disturb adds and removes; half of them touch numbers of the version.

What is timed is everything ``filterd snapshot compact`` does after fetching the records
from the broker: reading and checking the version, parsing every change record, applying
them in offset order (the overlay), folding them into the version, writing the new version
(fsync included) and publishing it through the guards. The broker fetch is measured apart
(``--fetch N``: N of the change records produced to a fresh topic of the broker at
``$KAFKA_BOOTSTRAP``, default the local one, then read back by
:func:`filterd.snapshot.compact.read_changes`, parse included), since it depends on the
broker and the network; ``--fetch 0`` skips it.

Result: ``benchmarks/results/compact.json``. Goal (issue 17): 10 M consents with 1 M
pending changes compacted in 60 s or less.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from pyroaring import BitMap64

from benchmarks._common import bootstrap_from_env, create_topics, delete_topics, unique_name
from filterd.changes.model import BadChange, ChangeRef, parse_change
from filterd.changes.overlay import Overlay
from filterd.changes.watermark import watermark_of
from filterd.config import load_config
from filterd.snapshot.compact import (
    VersionData,
    fold_changes,
    read_changes,
    read_version,
    write_compacted,
)
from filterd.snapshot.load import load_snapshot
from filterd.snapshot.store import NO_CAP

RESULTS = Path(__file__).resolve().parent / "results"
TOPIC = "sms.consent-changes"
LO = 86_13_000_000_000
SPAN = 7_000_000_000
HUGE_SHARES = (0.25, 0.15, 0.10, 0.06, 0.04)
EXPIRY_MS = 1_893_456_000_000  # 2030-01-01


def _senders(n: int) -> list[tuple[str, int]]:
    """(sender id, consents) of the version."""
    huge = [(f"1069{i:08d}", int(n * share)) for i, share in enumerate(HUGE_SHARES)]
    rest = n - sum(c for _, c in huge)
    small = 2000
    return huge + [(f"1065{i:08d}", rest // small) for i in range(small)]


def make_version(root: Path, n: int, rng: random.Random) -> tuple[str, list[str], list[int]]:
    """A published version of about ``n`` consents; (version, senders, some numbers of it)."""
    data = VersionData("generated", {"accept_methods": ["explicit", "double-opt-in", "written"]})
    senders = _senders(n)
    sample: list[int] = []
    for sender, count in senders:
        numbers = [LO + rng.randrange(SPAN) for _ in range(count)]
        timed = count // 20
        data.consents[sender] = BitMap64(numbers[timed:])
        if timed:
            data.terms[sender] = {x: (EXPIRY_MS, NO_CAP) for x in numbers[:timed]}
        opted = max(1, count // 50)
        data.optouts[sender] = BitMap64(LO + rng.randrange(SPAN) for _ in range(opted))
        sample.extend(numbers[:: max(1, count // 2000)])
    data.dnd = BitMap64(LO + rng.randrange(SPAN) for _ in range(n // 10))
    version = write_compacted(root, data, TOPIC, {}, 0, force=True)
    return version, [s for s, _ in senders], sample


def make_changes(m: int, senders: list[str], sample: list[int], rng: random.Random) -> list[bytes]:
    weights = [share for share in HUGE_SHARES] + [0.4 / (len(senders) - 5)] * (len(senders) - 5)
    picks = rng.choices(senders, weights, k=m)
    values = []
    for i in range(m):
        number = rng.choice(sample) if i % 2 else LO + rng.randrange(SPAN)
        roll = rng.random()
        doc: dict[str, Any] = {"recipient": f"+{number}", "sender": picks[i], "source": "registry"}
        if roll < 0.40:
            doc["op"] = "consent"
            doc["method"] = "pre-ticked" if roll < 0.02 else "explicit"
            if roll < 0.10:
                doc["expires_at"] = "2029-06-30T00:00:00+00:00"
            if roll > 0.36:
                doc["max_per_day"] = 3
        elif roll < 0.60:
            doc["op"] = "opt-out"
        elif roll < 0.70:
            doc["op"] = "opt-out-clear"
        elif roll < 0.80:
            doc["op"] = "consent-revoke"
        elif roll < 0.85:
            doc.update(op="opt-out", sender="*")
        else:
            doc["op"] = "dnd-add" if roll < 0.93 else "dnd-remove"
            del doc["sender"]
        values.append(orjson.dumps(doc))
    return values


def compact(root: Path, base: str, values: list[bytes]) -> dict[str, float]:
    """Everything ``snapshot compact`` does after the fetch; seconds per phase."""
    phases: dict[str, float] = {}

    def timed(name: str, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = step()
        phases[name] = round(time.perf_counter() - started, 2)
        return result

    data: VersionData = timed("read_version", lambda: read_version(root, base))

    def parse() -> list[tuple[ChangeRef, Any]]:
        parsed = []
        for offset, value in enumerate(values):
            try:
                parsed.append((ChangeRef(TOPIC, offset % 2, offset), parse_change(value, "86")))
            except BadChange:
                continue
        return parsed

    changes = timed("parse", parse)
    overlay = Overlay(data.accept)
    timed("overlay", lambda: overlay.extend(changes))
    timed("fold", lambda: fold_changes(data, overlay, changes))
    watermark = {0: len(values), 1: len(values)}
    timed(
        "write_publish",
        lambda: write_compacted(
            root, data, TOPIC, watermark, len(changes), force=True, evidence=changes
        ),
    )
    phases["total"] = round(sum(phases.values()), 2)
    return phases


async def fetch(values: list[bytes]) -> dict[str, float]:
    """Produce ``values`` to a fresh 2-partition topic, time reading them back for compaction."""
    bootstrap = bootstrap_from_env()
    topic = unique_name("filterd-compact-bench")
    await create_topics(bootstrap, [topic], 2)
    try:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            for value in values:
                await producer.send(topic, value, key=value[value.find(b'"+') + 2 :][:13])
            await producer.flush()
        finally:
            await producer.stop()
        env = {"FILTERD_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FILTERD_TOPICS_CHANGES": topic}
        config = load_config(None, env=env)
        started = time.perf_counter()
        changes, _ends, _bad = await read_changes(config, {})
        seconds = time.perf_counter() - started
    finally:
        await delete_topics(bootstrap, [topic])
    return {
        "records": len(values),
        "changes": len(changes),
        "seconds": round(seconds, 2),
        "records_per_s": round(len(values) / seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--consents", type=float, default=1e7)
    parser.add_argument("--changes", type=float, default=1e6)
    parser.add_argument("--out", type=Path, default=RESULTS / "compact.json")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument(
        "--fetch", type=float, default=2e5, metavar="N",
        help="also time reading N change records from the broker (0: skip)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    n, m = int(args.consents), int(args.changes)
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="filterd-compact-bench-"))
    try:
        root = workdir / "snap"
        started = time.perf_counter()
        base, senders, sample = make_version(root, n, rng)
        values = make_changes(m, senders, sample, rng)
        print(f"data: {n:,} consents, {m:,} changes in {time.perf_counter() - started:.0f}s")
        gc.collect()
        phases = compact(root, base, values)
        new = load_snapshot(root)  # the result is a valid version
        fetched = asyncio.run(fetch(values[: int(args.fetch)])) if args.fetch else None
        result = {
            "consents": n,
            "changes": m,
            "base_counts": orjson.loads((root / base / "manifest.json").read_bytes())["counts"],
            "compacted_counts": new.manifest["counts"],
            "watermark": watermark_of(new.manifest, TOPIC),
            "seconds": phases,
            "goal_seconds": 60,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "excluded": "the broker fetch of the change records, measured apart in fetch",
            "fetch": fetched,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["seconds"]), f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
