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
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from benchmarks import e2e
from benchmarks._common import OutputWatcher, bootstrap_from_env, preload
from benchmarks.cpu import follow, summarize

log = logging.getLogger("benchmarks.warm")

__all__ = ["main", "summarize", "warm_run"]


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
    try:
        await preload(session.bootstrap, topics["input"], parts, events)
        started = time.monotonic()
        proc.start()
        assert proc.proc is not None
        async with OutputWatcher(session.bootstrap, outputs) as watcher:
            checkpoints = await follow(
                proc.proc.pid,
                watcher.total,
                total=total,
                step=step,
                started=started,
                alive=proc.alive,
                stall_timeout_s=stall_timeout_s,
            )
        await proc.stop()
        return summarize(checkpoints, warmup=warmup, total=total) | {"variant": variant.name}
    except Exception as exc:
        raise e2e.RunFailed(f"{variant.name}: {exc}\n{proc.tail()}") from exc
    finally:
        await proc.stop()
        await session._cleanup(topics)


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    workdir: Path = args.workdir
    workload = await asyncio.to_thread(
        e2e.prepare_workload, workdir, events=args.events, dataset=args.dataset
    )
    events = e2e.with_warmup(workload.throughput_events, args.warmup)
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
            "  %s: cold %s msgs/s %s us/rec; warm %s msgs/s %s us/rec",
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
