"""Live consent changes under load: throughput and change-to-effect delay.

One process's maximum is measured first (a throughput run of ``benchmarks.e2e``'s
``filterd`` variant) unless ``--rate`` gives it; then two paced runs side by side, the same
events offered at 50 % of it:

* ``baseline`` — no changes topic, no inbound topic;
* ``changes`` — the same events, plus ``--change-rate`` opt-outs per second (source
  ``registry``) on the changes topic and ``--reply-rate`` keyword replies (``TD``) per
  second on the inbound topic, each of a (sender, recipient) pair of the traffic.

Throughput of a paced run: its events' output records / (last − first output
LogAppendTime); the ratio changes/baseline has the goal ≥ 0.95.

Change-to-effect delay: from the change's append (the changes topic is LogAppendTime; for
a reply, its append to the inbound topic) to the LogAppendTime of the first output record
whose ``filterd-change`` header names that change. To see the effect soon after it exists,
the pair of each change is written into a few later events ("probes", spread evenly over
``--probe-span-ms`` after the change is sent): the figure is an upper bound, by at most
the probe spacing, of the moment the change applied. Goal: p99 ≤ 1 s; the max is reported.

Usage: ``python -m benchmarks.changes_bench [--quick] [--rate R] [--seconds S]``
(``make bench-changes``). It ends with the memory of pending changes
(:mod:`benchmarks.changes_memory`, bytes per pending change at 1 M). Results:
``benchmarks/results/changes.json`` and ``.md`` (``--quick``: ``changes-quick.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import ConsumerRecord

from benchmarks import e2e
from benchmarks._common import (
    Event,
    OutputWatcher,
    bootstrap_from_env,
    create_topics,
    latencies_ms,
    latency_summary,
    load_events,
    preload,
    produce_paced,
    ratio,
    read_records,
    throughput,
    unique_name,
)
from benchmarks.changes_memory import measure_in_child
from filterd import topics as filterd_topics
from filterd.pipeline import HEADER_CHANGE
from filterd.router import event_id

log = logging.getLogger("benchmarks.changes_bench")

GOALS = {"throughput_ratio": 0.95, "delay_p99_ms": 1000.0}
REGISTRY = "registry"
MO_REPLY = "mo-reply"
#: Text of the keyword replies (an opt-out keyword of the default ``[replies]``).
REPLY_TEXT = "TD"


@dataclass(slots=True)
class Plan:
    """The traffic of the paced runs: events (with probes written in), changes, replies."""

    events: list[Event]
    changes: list[Event]
    replies: list[Event]
    probes_per_change: int
    probe_spacing_ms: float


def _pair(value: bytes) -> tuple[str, str] | None:
    doc = orjson.loads(value)
    sender, recipient = doc.get("sender"), doc.get("recipient")
    if isinstance(sender, str) and isinstance(recipient, str):
        return sender, recipient
    return None


def registry_change(key: bytes, sender: str, recipient: str, k: int, op: str = "opt-out") -> Event:
    """Change ``k`` from the registry (``op`` of ``recipient`` for ``sender``), keyed as the
    event of that pair is, by the recipient's normalized digits."""
    doc = {"op": op, "sender": sender, "recipient": recipient}
    doc |= {"source": REGISTRY, "id": f"reg-{k}"}
    return key, orjson.dumps(doc)


def registry_churn(
    events: Sequence[Event], pool: int, count: int, senders: Collection[str] | None = None
) -> list[Event]:
    """``count`` registry changes of ``pool`` pairs of the keyed (valid) ``events``, taken
    evenly over them: each pair is opted out, then cleared (``opt-out-clear``) a pool's
    length of changes later, and so on in turn. Every change changes a pair's state, and at
    any moment at most ``pool`` pairs of the traffic are opted out by the changes.

    ``senders``: only pairs of these (the registry's own senders). A sender an opt-out
    names is known from then on, so opt-outs of the traffic's unregistered senders would
    turn its ``unknown-sender`` blocks into ``no-consent``."""
    keyed = [
        (key, pair)
        for key, value in events
        # Keyed events are the valid ones (loadgen keys only those).
        if key is not None
        and (pair := _pair(value)) is not None
        and (senders is None or pair[0] in senders)
    ]
    if not keyed or pool < 1:
        return []
    every = max(1, len(keyed) // pool)
    pairs = keyed[::every][:pool]
    ops = ("opt-out", "opt-out-clear")
    return [
        registry_change(key, *pair, k, ops[(k // len(pairs)) % 2])
        for k, (key, pair) in ((k, pairs[k % len(pairs)]) for k in range(count))
    ]


async def create_changes_topic(bootstrap: str, name: str, partitions: int) -> None:
    """A changes topic as ``filterd topics create`` makes it (compacted), stamped by the
    broker (LogAppendTime) so a change's append time can be read back."""
    spec = filterd_topics.TopicSpec(
        partitions, 1, {"cleanup.policy": "compact", "message.timestamp.type": "LogAppendTime"}
    )
    await filterd_topics.create(
        {"bootstrap_servers": bootstrap}, {name: spec}, ready_timeout_s=30.0
    )


def plan_traffic(
    events: Sequence[Event],
    rate: float,
    change_rate: float,
    reply_rate: float,
    *,
    probe_span_ms: float = 1500.0,
    max_probes: int = 15,
) -> Plan:
    """Changes of pairs of the traffic, and probes of each pair after its change.

    Change ``k`` is sent at ``k / change_rate`` s, event ``i`` at ``i / rate`` s (the paced
    generators start together). Its pair is that of the first keyed (valid) event due at
    that moment; the pair is then written into events due at even steps over
    ``probe_span_ms`` after it. Changes stop ``probe_span_ms`` before the events end.
    At most half the events become probes.
    """
    out = list(events)
    duration_s = len(out) / rate
    active_s = max(0.0, duration_s - probe_span_ms / 1000.0)
    per_s = change_rate + reply_rate
    probes = max(1, min(max_probes, int(0.5 * rate / per_s))) if per_s else 0
    spacing_ms = probe_span_ms / probes if probes else 0.0
    taken: set[int] = set()

    def free(i: int) -> int | None:
        while i < len(out) and (i in taken or out[i][0] is None):
            i += 1
        return i if i < len(out) else None

    def target(at_s: float) -> tuple[bytes, str, str] | None:
        i = free(int(at_s * rate))
        if i is None:
            return None
        pair = _pair(out[i][1])
        if pair is None:
            return None
        taken.add(i)
        sender, recipient = pair
        for m in range(1, probes + 1):
            j = free(int((at_s + m * spacing_ms / 1000.0) * rate))
            if j is None:
                break
            taken.add(j)
            doc = orjson.loads(out[j][1])
            doc["sender"], doc["recipient"] = sender, recipient
            out[j] = (out[i][0], orjson.dumps(doc))
        key = out[i][0]
        assert key is not None
        return key, sender, recipient

    changes: list[Event] = []
    for k in range(int(active_s * change_rate)):
        found = target(k / change_rate)
        if found is not None:
            changes.append(registry_change(*found, k))
    replies: list[Event] = []
    for k in range(int(active_s * reply_rate)):
        found = target(k / reply_rate)
        if found is not None:
            key, sender, recipient = found
            doc = {"id": f"r-{k}", "from": recipient, "to": sender, "text": REPLY_TEXT}
            replies.append((key, orjson.dumps(doc)))
    return Plan(out, changes, replies, probes, spacing_ms)


# --------------------------------------------------------------------------- delays


def _change_header(record: ConsumerRecord) -> str | None:
    for name, value in record.headers:
        if name == HEADER_CHANGE:
            return bytes(value).decode()
    return None


def first_effects(outputs: Sequence[tuple[str | None, int, str | None]]) -> dict[str, int]:
    """Per change (``topic/partition/offset``): the append time of its first output."""
    first: dict[str, int] = {}
    for _, at, ref in outputs:
        if ref is not None and (ref not in first or at < first[ref]):
            first[ref] = at
    return first


def change_delays(
    changes: Sequence[tuple[str, int, bytes | None]],
    replies_appended: Mapping[str, int],
    first: Mapping[str, int],
) -> dict[str, dict[str, object]]:
    """Per source: changes seen, changes with an effect and the delay distribution.

    ``changes`` are (ref, append ms, value) of the changes topic; a ``mo-reply`` change
    (``id`` ``mo:`` + the reply's id) is timed from its reply's append to the inbound topic.
    """
    delays: dict[str, list[float]] = {}
    seen: dict[str, int] = {}
    for ref, appended, value in changes:
        doc = orjson.loads(value) if value else {}
        source = str(doc.get("source") or "?")
        seen[source] = seen.get(source, 0) + 1
        start: int | None = appended
        if source == MO_REPLY:
            cid = doc.get("id")
            start = replies_appended.get(cid[3:]) if isinstance(cid, str) else None
        if ref in first and start is not None:
            delays.setdefault(source, []).append(float(first[ref] - start))
    out: dict[str, dict[str, object]] = {}
    for source in sorted(seen):
        values = delays.get(source, [])
        out[source] = {"changes": seen[source], "with_effect": len(values)}
        out[source] |= latency_summary(values)
    every = [d for values in delays.values() for d in values]
    out["all"] = {"changes": sum(seen.values()), "with_effect": len(every)}
    out["all"] |= latency_summary(every)
    return out


# --------------------------------------------------------------------------- runs


async def paced_run(
    session: e2e.Session,
    plan: Plan,
    rate: float,
    *,
    change_rate: float = 0.0,
    reply_rate: float = 0.0,
) -> dict[str, object]:
    """One paced run of ``filterd run``; with changes when a rate is given."""
    variant = e2e.make_variants()["filterd"]
    with_changes = bool(change_rate or reply_rate)
    bootstrap, parts = session.bootstrap, session.partitions
    topics = await session._topics(variant, parts, input_append_time=True)
    extra: dict[str, object] = {}
    if with_changes:
        base = unique_name("bench-changes")
        topics["changes"], topics["inbound"] = f"{base}.changes", f"{base}.inbound"
        await create_changes_topic(bootstrap, topics["changes"], parts)
        await create_topics(bootstrap, [topics["inbound"]], parts, log_append_time=True)
        extra = {"topics": {"changes": topics["changes"], "inbound": topics["inbound"]}}
    outputs = [topics[r] for r in variant.routes]
    session._runs += 1
    name = "changes" if with_changes else "baseline"
    proc = e2e.VariantProcess(
        variant.argv,
        session._config(variant, topics, unique_name("bench-group"), extra),
        session.workdir / f"run-{session._runs:03d}-{name}.log",
    )
    try:
        proc.start()
        warm = session.workload.warmup_events
        await preload(bootstrap, topics["input"], parts, warm)
        async with OutputWatcher(bootstrap, outputs) as watcher:
            await watcher.wait_for(len(warm), stall_timeout_s=120.0, alive=proc.alive)
            paced_all = await asyncio.gather(
                produce_paced(bootstrap, topics["input"], parts, plan.events, rate=rate),
                *(
                    [
                        produce_paced(
                            bootstrap, topics["changes"], parts, plan.changes, change_rate
                        ),
                        produce_paced(
                            bootstrap, topics["inbound"], parts, plan.replies, reply_rate
                        ),
                    ]
                    if with_changes
                    else []
                ),
            )
            await watcher.wait_for(
                len(warm) + len(plan.events),
                stall_timeout_s=session.stall_timeout_s,
                alive=proc.alive,
            )
        await proc.stop()
        paced = paced_all[0]
        read = e2e.READ_TIMEOUT_S
        records = await asyncio.wait_for(
            read_records(
                bootstrap, outputs, lambda r: (event_id(r.value), r.timestamp, _change_header(r))
            ),
            read,
        )
        mine = [at for eid, at, _ in records if eid is not None and eid in paced.sent_ms]
        result: dict[str, object] = {
            "offered_rate": round(rate, 1),
            "achieved_offer_rate": round(paced.offered / paced.elapsed_s, 1),
            "events": paced.offered,
            "records_out": len(mine),
            "msgs_per_s": round(throughput(len(mine), min(mine), max(mine)), 1),
            "latency": latency_summary(
                latencies_ms(((e, at) for e, at, _ in records), paced.sent_ms)
            ),
            "max_tick_records": paced.max_tick_records,
        }
        if with_changes:
            changes = await asyncio.wait_for(
                read_records(
                    bootstrap,
                    [topics["changes"]],
                    lambda r: (f"{r.topic}/{r.partition}/{r.offset}", r.timestamp, r.value),
                ),
                read,
            )
            replies = await asyncio.wait_for(
                read_records(
                    bootstrap, [topics["inbound"]], lambda r: (event_id(r.value), r.timestamp)
                ),
                read,
            )
            appended = {rid: at for rid, at in replies if rid is not None}
            result["change_rate"] = change_rate
            result["reply_rate"] = reply_rate
            result["changes_sent"] = paced_all[1].offered
            result["replies_sent"] = paced_all[2].offered
            result["delay"] = change_delays(changes, appended, first_effects(records))
        return result
    except Exception as exc:
        raise e2e.RunFailed(f"{name}: {exc}\n{proc.tail()}") from exc
    finally:
        await proc.stop()
        await session._cleanup(topics)


async def run_session(args: argparse.Namespace) -> dict[str, object]:
    bootstrap = bootstrap_from_env(args.bootstrap)
    with tempfile.TemporaryDirectory(prefix="filterd-changes-bench-") as tmp:
        workdir = Path(tmp)
        workload = e2e.prepare_workload(workdir, events=args.max_events, dataset=args.dataset)
        session = e2e.Session(bootstrap, workdir, workload, partitions=args.partitions)
        measured: dict[str, object] | None = None
        max_rate = args.rate
        if max_rate is None:
            measured = await session.throughput_run(e2e.make_variants()["filterd"])
            max_rate = float(measured["msgs_per_s"])  # type: ignore[arg-type]
        rate = max_rate * args.fraction
        count = max(1000, int(rate * args.seconds))
        events = load_events(str(workload.dataset), count, seed=workload.seed + 5)
        plan = plan_traffic(
            events, rate, args.change_rate, args.reply_rate, probe_span_ms=args.probe_span_ms
        )
        log.info(
            "max %.0f msgs/s; offering %.0f events/s for %d events, %d changes, %d replies",
            max_rate, rate, count, len(plan.changes), len(plan.replies),
        )  # fmt: skip
        baseline = await paced_run(session, plan, rate)
        changes = await paced_run(
            session, plan, rate, change_rate=args.change_rate, reply_rate=args.reply_rate
        )
    memory = measure_in_child(args.memory_count)
    thr = ratio(changes["msgs_per_s"], baseline["msgs_per_s"])  # type: ignore[arg-type]
    thr = None if thr is None else round(thr, 3)
    delay = changes["delay"]["all"]  # type: ignore[index]
    return {
        "benchmark": "changes",
        "started_at": args.started_at,
        "machine": e2e.machine_info(),
        "max_rate": round(max_rate, 1),
        "max_rate_measured": measured,
        "fraction": args.fraction,
        "probes_per_change": plan.probes_per_change,
        "probe_spacing_ms": round(plan.probe_spacing_ms, 1),
        "baseline": baseline,
        "changes": changes,
        "throughput_ratio": thr,
        "memory": memory,
        "goals": {
            "throughput_ratio": {
                "goal": GOALS["throughput_ratio"],
                "value": thr,
                "met": thr is not None and thr >= GOALS["throughput_ratio"],
            },
            "delay_p99_ms": {
                "goal": GOALS["delay_p99_ms"],
                "value": delay.get("p99_ms"),
                "met": delay.get("p99_ms") is not None and delay["p99_ms"] <= GOALS["delay_p99_ms"],
            },
            "bytes_per_pending_change": {
                "goal": memory["goal_bytes_per_change"],
                "value": memory["bytes_per_change"],
                "met": memory["met"],
            },
        },
    }


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        # Ratios with three digits, figures with one.
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_markdown(results: Mapping[str, object]) -> str:
    base, chg = results["baseline"], results["changes"]
    assert isinstance(base, Mapping)
    assert isinstance(chg, Mapping)
    lines = [
        "# Live consent changes under load",
        "",
        f"One process's maximum: {_cell(results['max_rate'])} msgs/s"
        + (" (measured)" if results.get("max_rate_measured") else " (given)")
        + f"; events offered at {results['fraction']:.0%} of it in both runs. "
        f"Changes: {_cell(chg.get('change_rate'))}/s registry opt-outs and "
        f"{_cell(chg.get('reply_rate'))}/s keyword replies; each pair probed "
        f"{results['probes_per_change']} times, every {results['probe_spacing_ms']} ms.",
        "",
        "| run | offered /s | msgs/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, run in (("baseline", base), ("changes", chg)):
        lat = run["latency"]
        assert isinstance(lat, Mapping)
        lines.append(
            f"| {name} | {_cell(run['offered_rate'])} | {_cell(run['msgs_per_s'])} "
            f"| {_cell(lat.get('p50_ms'))} | {_cell(lat.get('p99_ms'))} |"
        )
    lines += [
        "",
        "Change-to-effect delay (append of the change, or of the reply, to the first output "
        "decided with it):",
        "",
        "| source | changes | with an effect | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    delay = chg["delay"]
    assert isinstance(delay, Mapping)
    for source, d in delay.items():
        lines.append(
            f"| {source} | {_cell(d['changes'])} | {_cell(d['with_effect'])} "
            f"| {_cell(d.get('p50_ms'))} | {_cell(d.get('p99_ms'))} | {_cell(d.get('max_ms'))} |"
        )
    memory = results["memory"]
    assert isinstance(memory, Mapping)
    lines += [
        "",
        f"Pending changes held: {_cell(memory['bytes_per_change'])} bytes each (RSS growth "
        f"of a process applying {_cell(memory['pending_changes'])} changes to an overlay, "
        "`python -m benchmarks.changes_memory`).",
    ]
    lines += ["", "| goal | target | value | met |", "|---|---|---|---|"]
    goals = results["goals"]
    assert isinstance(goals, Mapping)
    for name, g in goals.items():
        lines.append(f"| {name} | {g['goal']} | {_cell(g['value'])} | {g['met']} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.changes_bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a small run (smoke test size)")
    p.add_argument("--rate", type=float, help="one process's max msgs/s (default: measure it)")
    p.add_argument("--fraction", type=float, default=0.5, help="share of the max offered")
    p.add_argument("--seconds", type=float, help="length of each paced run (default 30, quick 6)")
    p.add_argument("--max-events", type=int, help="events of the max run (default 500k)")
    p.add_argument("--change-rate", type=float, help="registry opt-outs/s (default 1000)")
    p.add_argument("--reply-rate", type=float, help="keyword replies/s (default 200)")
    p.add_argument(
        "--probe-span-ms", type=float, default=1500.0, help="probes of a pair over this span"
    )
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--memory-count", type=int, help="pending changes of the memory figure (1 M)")
    p.add_argument("--dataset", type=Path, help="a loadgen data set (default: a new one)")
    p.add_argument("--bootstrap", help="broker (default $KAFKA_BOOTSTRAP or 127.0.0.1:9092)")
    p.add_argument("--out", type=Path, help="results stem (default benchmarks/results/changes)")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.seconds = args.seconds or (6.0 if quick else 30.0)
    args.max_events = args.max_events or (50_000 if quick else 500_000)
    args.change_rate = args.change_rate if args.change_rate is not None else 1000.0
    args.memory_count = args.memory_count or (100_000 if quick else 1_000_000)
    args.reply_rate = args.reply_rate if args.reply_rate is not None else 200.0
    args.out = args.out or e2e.RESULTS / ("changes-quick" if quick else "changes")
    args.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    args = resolve(build_parser().parse_args(argv))
    results = e2e.run_guarded(run_session(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(render_markdown(results))
    print(render_markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
