"""Warm throughput and CPU per record: a variant timed after a warm-up, beside its cold start.

A filter runs for months, so it is judged warm: the JVM of the Kafka Streams
peer compiles its hot code during the first ~2 M records, and a figure over a
fresh start measures that compilation. One run per variant: ``warmup + events``
records are preloaded, the variant starts, and its output is followed as it
grows. Checkpoints every ``--step`` records give throughput and CPU per record
(:mod:`benchmarks.cpu`: user + system time of the variant's process tree) per
stretch, so the time to full speed shows; the timed window is the last
``events`` records, after ``warmup``.

    python -m benchmarks.warm --variants filterd,kafka_streams --warmup 2000000 --events 500000

Prints one JSON document (``--out`` writes it too). Variants are those of
:mod:`benchmarks.e2e`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from benchmarks import e2e
from benchmarks._common import OutputWatcher, bootstrap_from_env, preload
from benchmarks.cpu import tree_cpu_seconds

log = logging.getLogger("benchmarks.warm")

POLL_S = 0.05


async def warm_run(
    session: e2e.Session,
    variant: e2e.Variant,
    events: list[e2e.Event],
    *,
    warmup: int,
    step: int,
    stall_timeout_s: float = 120.0,
) -> dict[str, object]:
    """Preload ``events`` (warm-up first), run ``variant``, checkpoint its output and CPU."""
    total = len(events)
    parts = session.partitions
    topics = await session._topics(variant, parts)
    outputs = [topics[r] for r in variant.routes]
    group = e2e.unique_name("bench-group")
    proc = e2e.VariantProcess(
        variant.argv,
        session._config(variant, topics, group, {}),
        session.workdir / f"warm-{variant.name}.log",
    )
    checkpoints: list[dict[str, float]] = []
    try:
        await preload(session.bootstrap, topics["input"], parts, events)
        started = time.monotonic()
        proc.start()
        assert proc.proc is not None
        pid = proc.proc.pid
        async with OutputWatcher(session.bootstrap, outputs) as watcher:
            next_mark = 1  # the first checkpoint is the first output record
            last_change = time.monotonic()
            last_count = -1
            while True:
                count = sum((await watcher.counts()).values())
                now = time.monotonic()
                if count >= next_mark:
                    # Start-up (JVM, snapshot, group join) is before the first checkpoint.
                    checkpoints.append(
                        {"records": count, "t_s": now - started, "cpu_s": tree_cpu_seconds(pid)}
                    )
                    next_mark = max(1, (count // step + 1) * step)
                if count >= total:
                    break
                if count != last_count:
                    last_count, last_change = count, now
                elif now - last_change > stall_timeout_s:
                    raise TimeoutError(f"output stalled at {count}/{total} records")
                if not proc.alive():
                    raise RuntimeError(f"variant exited with {count}/{total} records out")
                await asyncio.sleep(POLL_S)
        await proc.stop()
        return summarize(checkpoints, warmup=warmup, total=total) | {"variant": variant.name}
    except Exception as exc:
        raise e2e.RunFailed(f"{variant.name}: {exc}\n{proc.tail()}") from exc
    finally:
        await proc.stop()
        await session._cleanup(topics)


def _stretch(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    records = b["records"] - a["records"]
    seconds = b["t_s"] - a["t_s"]
    return {
        "from_records": int(a["records"]),
        "to_records": int(b["records"]),
        "msgs_per_s": round(records / seconds, 1) if seconds > 0 else 0.0,
        "cpu_us_per_record": round((b["cpu_s"] - a["cpu_s"]) * 1e6 / records, 2)
        if records
        else 0.0,
    }


def summarize(checkpoints: list[dict[str, float]], *, warmup: int, total: int) -> dict[str, object]:
    """Cold (first output to the end of the warm-up), warm (the rest) and every stretch."""
    first = checkpoints[0]
    warm_start = next((c for c in checkpoints if c["records"] >= warmup), checkpoints[-1])
    last = checkpoints[-1]
    return {
        "records": total,
        "warmup_records": warmup,
        "first_output_s": round(first["t_s"], 2),
        "cold": _stretch(first, warm_start),
        "warm": _stretch(warm_start, last),
        "stretches": [_stretch(a, b) for a, b in itertools.pairwise(checkpoints)],
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    workdir: Path = args.workdir
    workload = await asyncio.to_thread(
        e2e.prepare_workload, workdir, events=args.events, dataset=args.dataset
    )
    # The warm-up repeats the timed events (ids repeat: only counts are read).
    base = workload.throughput_events
    repeats = -(-args.warmup // len(base))
    events = (list(base) * repeats)[: args.warmup] + list(base)
    session = e2e.Session(args.bootstrap, workdir, workload, partitions=args.partitions)
    variants = e2e.make_variants()
    out: dict[str, object] = {
        "machine": e2e.machine_info(),
        "warmup_records": args.warmup,
        "timed_records": args.events,
        "partitions": args.partitions,
    }
    for name in args.variants.split(","):
        variant = variants[name]
        if variant.prepare is not None:
            await asyncio.to_thread(variant.prepare)
        log.info("%s: %d records (%d warm-up)", name, len(events), args.warmup)
        try:
            result = await warm_run(session, variant, events, warmup=args.warmup, step=args.step)
        except e2e.RunFailed as exc:
            log.error("%s", exc)
            out[name] = {"error": str(exc)}
            continue
        log.info(
            "  %s: cold %.0f msgs/s %.2f us/rec; warm %.0f msgs/s %.2f us/rec",
            name,
            result["cold"]["msgs_per_s"],  # type: ignore[index]
            result["cold"]["cpu_us_per_record"],  # type: ignore[index]
            result["warm"]["msgs_per_s"],  # type: ignore[index]
            result["warm"]["cpu_us_per_record"],  # type: ignore[index]
        )
        out[name] = result
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.warm", description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="filterd,kafka_streams")
    p.add_argument("--warmup", type=int, default=2_000_000, help="records before the timed ones")
    p.add_argument("--events", type=int, default=500_000, help="timed records")
    p.add_argument("--step", type=int, default=250_000, help="records per checkpoint")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--dataset", type=Path, help="reuse a `filterd loadgen dataset` directory")
    p.add_argument("--workdir", help="keep configs, logs and the snapshot here")
    p.add_argument("--bootstrap", help="broker (default $KAFKA_BOOTSTRAP or 127.0.0.1:9092)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    args.bootstrap = bootstrap_from_env(args.bootstrap)
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="filterd-warm-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = e2e.run_guarded(main_async(args))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
