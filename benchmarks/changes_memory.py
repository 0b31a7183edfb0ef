"""Memory of pending changes: resident bytes per pending change at 1 M of them.

In a fresh process, ``--count`` change records (opt-outs of distinct recipients from
``--senders`` senders, the registry's shape; every ``--reply-every``-th one a keyword
reply's change) are parsed by the feed's own :func:`~filterd.changes.model.parse_change`
and applied to an :class:`~filterd.changes.overlay.Overlay`, as ``filterd run`` does; the
record values are made one at a time and dropped. The figure is the growth of the
process's RSS (``/proc/self/statm``) over that, divided by the count: everything the
overlay keeps (its compact tables of facts, one fact per change here) and the allocator's
slack. Goal: ≤ 64 bytes per pending change. The tables grow by 1.5x at a load of 0.8, so
the figure depends on where the count falls between two growths (46-60 bytes from 0.7 to
1.3 M, measured).

Usage: ``python -m benchmarks.changes_memory [--count N]``; prints one JSON object.
``benchmarks.changes_bench`` runs it and adds it to its results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from collections.abc import Sequence

import orjson

from filterd.changes.model import ChangeRef, parse_change
from filterd.changes.overlay import Overlay

GOAL_BYTES = 64
COUNTRY_CODE = "86"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def change_value(i: int, senders: int, reply_every: int) -> bytes:
    """Change number ``i``: an opt-out of a recipient of its own."""
    recipient = f"+86138{i:08d}"
    if reply_every and i % reply_every == 0:
        doc = {"op": "opt-out", "sender": f"SHOP{i % senders}", "recipient": recipient}
        doc |= {"source": "mo-reply", "id": f"mo:r-{i}", "ts": 1_780_000_000_000 + i}
    else:
        doc = {"op": "opt-out", "sender": f"SHOP{i % senders}", "recipient": recipient}
        doc |= {"source": "registry", "id": f"reg-{i}"}
    return orjson.dumps(doc)


def measure(count: int, senders: int, reply_every: int, partitions: int) -> dict[str, object]:
    overlay = Overlay(("explicit",))
    gc.collect()
    before = rss_bytes()
    for i in range(count):
        change = parse_change(change_value(i, senders, reply_every), COUNTRY_CODE)
        overlay.apply(change, ChangeRef("sms.consent-changes", i % partitions, i // partitions))
    gc.collect()
    grown = rss_bytes() - before
    assert len(overlay) == count
    per_change = grown / count
    return {
        "pending_changes": count,
        "senders": senders,
        "rss_growth_bytes": grown,
        "bytes_per_change": round(per_change, 1),
        "goal_bytes_per_change": GOAL_BYTES,
        "met": per_change <= GOAL_BYTES,
    }


def measure_in_child(count: int, senders: int = 100) -> dict[str, object]:
    """:func:`measure` in a fresh interpreter (nothing else grows its heap meanwhile)."""
    argv = [sys.executable, "-m", "benchmarks.changes_memory", "--count", str(count)]
    out = subprocess.run([*argv, "--senders", str(senders)], check=True, capture_output=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.changes_memory", description=__doc__)
    p.add_argument("--count", type=int, default=1_000_000, help="pending changes")
    p.add_argument("--senders", type=int, default=100, help="distinct senders")
    p.add_argument("--reply-every", type=int, default=6, help="every Nth is a reply's change")
    p.add_argument("--partitions", type=int, default=6, help="changes topic partitions")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.count, args.senders, args.reply_every, args.partitions)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
