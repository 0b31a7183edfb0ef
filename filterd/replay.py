"""``filterd replay``: decide a JSON-lines file offline, as the stream would.

Every line goes through the same :class:`~filterd.router.Decider` the stream
uses, so "what would this snapshot have done to yesterday's traffic?" has the
same answer the stream would give. With a second snapshot (``--compare``) it
reports how decisions change between the two.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from filterd.limits import LimitRules, PartitionLimits, usable_time
from filterd.router import ROUTES, Decider, Outcome, Policy, event_id
from filterd.snapshot import load_snapshot
from filterd.snapshot.format import MANIFEST
from filterd.snapshot.signing import Verifier


@dataclass(slots=True)
class ReplayResult:
    """What a replay decided, for the summary it prints."""

    version: str
    lines: int = 0
    counts: Counter[Outcome] = field(default_factory=Counter)
    compare_version: str | None = None
    #: (old reason, new reason) -> lines whose decision changed that way.
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)


def iter_lines(fh: BinaryIO) -> Iterator[bytes]:
    """The file's lines without their line endings (``\\n`` or ``\\r\\n``)."""
    for raw in fh:
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        yield raw


def replay(
    snapshot_root: Path,
    input_path: Path,
    out_dir: Path,
    policy: Policy,
    *,
    compare_root: Path | None = None,
    at_ms: int = -1,
    verifier: Verifier | None = None,
) -> ReplayResult:
    """Decide every line of ``input_path``; write decisions and routed lines to ``out_dir``.

    A line's time is its ``ts``; ``at_ms`` (epoch ms, -1: now) is the time of lines
    without one. A line whose exempt category step 2 overruled has
    ``"declared_category"`` in its decision. With a ``verifier`` (config
    ``snapshot.public_key``) both snapshots must be signed.
    """
    if at_ms < 0:
        at_ms = time.time_ns() // 1_000_000  # one "now" for the whole file
    cc = policy.default_country_code
    snapshot = load_snapshot(snapshot_root, verifier=verifier, country_code=cc)
    decider = Decider(snapshot, policy, event_time=True)
    # Step 4 with the stream's code: one partition's counters, starting at zero at line 1.
    rules = LimitRules(policy)
    limits = PartitionLimits(rules)
    other_decider: Decider | None = None
    other_limits = PartitionLimits(rules)
    limits.read_ms = other_limits.read_ms = at_ms
    result = ReplayResult(snapshot.version)
    if compare_root is not None:
        # A root (its current version), or one version directory of a root (a version
        # built with `snapshot build --no-publish`, before it is published).
        other_root, other_version = compare_root, None
        if (compare_root / MANIFEST).is_file():
            other_root, other_version = compare_root.parent, compare_root.name
        other_snapshot = load_snapshot(
            other_root, other_version, verifier=verifier, country_code=cc
        )
        other_decider = Decider(other_snapshot, policy, event_time=True)
        result.compare_version = other_snapshot.version
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        routed = {
            route: stack.enter_context(open(out_dir / f"{route}.jsonl", "wb")) for route in ROUTES
        }
        changes = (
            stack.enter_context(open(out_dir / "changes.jsonl", "wb")) if other_decider else None
        )
        decisions = stack.enter_context(open(out_dir / "decisions.jsonl", "wb"))
        src = stack.enter_context(open(input_path, "rb"))
        for number, line in enumerate(iter_lines(src), start=1):
            outcome = decide_line(decider, limits, line, at_ms)
            mid = event_id(line)
            decision: dict[str, object] = {
                "line": number, "id": mid, "route": outcome.route, "reason": outcome.reason
            }  # fmt: skip
            if decider.declared_category is not None:
                decision["declared_category"] = decider.declared_category
            if limits.would_block is not None:
                decision["would_block"] = limits.would_block
            decisions.write(orjson.dumps(decision) + b"\n")
            routed[outcome.route].write(line + b"\n")
            result.counts[outcome] += 1
            if other_decider is not None and changes is not None:
                new = decide_line(other_decider, other_limits, line, at_ms)
                if new != outcome:
                    result.changes[(outcome.reason, new.reason)] += 1
                    changes.write(orjson.dumps({
                        "line": number, "id": mid,
                        "before": {"route": outcome.route, "reason": outcome.reason},
                        "after": {"route": new.route, "reason": new.reason},
                    }) + b"\n")  # fmt: skip
            result.lines = number
            if number % 65_536 == 0:
                limits.drop_closed()
                other_limits.drop_closed()
    return result


def decide_line(decider: Decider, limits: PartitionLimits, line: bytes, at_ms: int) -> Outcome:
    """Steps 1-4 for one line at ``at_ms`` (the time of lines without a usable ``ts``)."""
    outcome = decider.decide(line, at_ms)
    return limits.apply(decider, outcome, usable_time(decider.message_time(at_ms), at_ms))


def format_summary(result: ReplayResult) -> str:
    """A readable table of routes and reasons, and of changes when comparing."""
    lines = [
        f"snapshot {result.version}: {result.lines} lines",
        "",
        "route    reason            count",
    ]
    for outcome, n in sorted(
        result.counts.items(), key=lambda kv: (ROUTES.index(kv[0].route), -kv[1])
    ):
        lines.append(f"{outcome.route:<8} {outcome.reason:<17} {n:>6}")
    if result.compare_version is not None:
        changed = sum(result.changes.values())
        lines += ["", f"compared with {result.compare_version}: {changed} decisions change"]
        for (before, after), n in result.changes.most_common():
            lines.append(f"  {before:<17} → {after:<17} {n:>6}")
    return "\n".join(lines)
