"""Knob sweep: each tuning knob's effect on filterd's throughput and p99.

One knob at a time, from the shipped defaults (``config/filterd.toml``): for each
value, a throughput run and a latency run of ``filterd run`` (the same method as
``benchmarks/e2e.py``), at a fixed offered load of ``--load`` × filterd's own
throughput with the defaults, measured at the start of the session (so the p99
figures compare settings, not backlogs). The raw pipe is measured again
at the end; if the two disagree by more than 15 % the machine was busy and the
report says so. ``docs/tuning.md`` is written from these figures.

    python -m benchmarks.sweep [--events 200000] [--knobs batch.max_records,...]

Results: ``benchmarks/results/sweep.json``, ``sweep.md``, ``sweep.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import bootstrap_from_env, spread
from benchmarks.e2e import (
    RESULTS,
    RunFailed,
    Session,
    Variant,
    machine_info,
    make_variants,
    prepare_workload,
    run_guarded,
)

log = logging.getLogger("benchmarks.sweep")


@dataclass(frozen=True, slots=True)
class Knob:
    """One knob: where it lives and the values tried (the default among them)."""

    name: str
    values: tuple[object, ...]
    default: object
    #: ``section.key`` of the config file, or ``partitions`` / ``workers``.
    kind: str = "config"


KNOBS: tuple[Knob, ...] = (
    Knob("batch.max_records", (500, 1000, 5000, 20000), 5000),
    Knob("batch.pipelined", (True, False), True),
    Knob("producer.linger_ms", (0, 5, 20), 0),
    Knob("producer.max_batch_size", (65_536, 262_144, 1_048_576), 1_048_576),
    Knob("producer.compression_type", ("none", "gzip", "lz4", "zstd"), "none"),
    Knob("producer.acks", ("all", "1"), "all"),
    Knob("partitions", (1, 4, 8), 4, kind="partitions"),
    Knob("workers", (1, 2), 1, kind="workers"),
)


_SHOWN = ("msgs_per_s", "p50_ms", "p99_ms")


def knob_variant(knob: Knob, value: object, variants: Mapping[str, Variant]) -> Variant:
    """The filterd variant with one knob set."""
    base = variants["filterd"]
    if knob.kind == "workers":
        if value == 1:
            return base
        # As e2e's filterd_x2: measured once the group settled with every worker.
        multi = variants["filterd_x2"]
        argv = (*base.argv, "--workers", str(value))
        members = int(str(value))
        return Variant(f"filterd-workers-{value}", argv, config=multi.config, members=members)
    if knob.kind == "partitions":
        return base
    section, key = knob.name.split(".", 1)
    config = {**base.config, section: {key: value}}
    return Variant("filterd", base.argv, config=config)


async def sweep(args: argparse.Namespace) -> dict[str, object]:
    """Run the sweep; the results document."""
    t0 = time.monotonic()
    started_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    machine = machine_info()
    workload = await asyncio.to_thread(
        prepare_workload,
        args.workdir,
        events=args.events,
        dataset=Path(args.dataset) if args.dataset else None,
    )
    session = Session(args.bootstrap, args.workdir, workload, partitions=args.partitions)
    variants = make_variants()
    raw = variants["raw_pipe"]
    raw_before = (await session.throughput_run(raw))["msgs_per_s"]
    assert isinstance(raw_before, float)
    # The median of three: one run on a busy machine can be off by half.
    baseline = statistics.median(
        [
            float((await session.throughput_run(variants["filterd"]))["msgs_per_s"])  # type: ignore[arg-type]
            for _ in range(3)
        ]
    )
    # Half of filterd's own default throughput: a load every reasonable setting can
    # carry, so p99 compares settings instead of measuring a backlog.
    rate = args.rate or args.load * baseline
    await asyncio.to_thread(workload.size_latency_events, int(rate * args.latency_seconds))
    log.info(
        "raw pipe %.0f msgs/s, filterd %.0f msgs/s; offered load %.0f msgs/s",
        raw_before,
        baseline,
        rate,
    )
    wanted = {n for n in args.knobs.split(",") if n} if args.knobs else None
    knobs_out: dict[str, object] = {}
    for knob in KNOBS:
        if wanted is not None and knob.name not in wanted:
            continue
        rates: dict[int, list[float]] = {i: [] for i in range(len(knob.values))}
        p50s: dict[int, list[float]] = {i: [] for i in range(len(knob.values))}
        p99s: dict[int, list[float]] = {i: [] for i in range(len(knob.values))}
        errors: dict[int, list[str]] = {i: [] for i in range(len(knob.values))}
        # Values interleaved within each repetition (a, b, c, a, b, c): a burst of
        # load from elsewhere hits every value alike instead of one value's runs.
        for rep in range(args.reps):
            for i, value in enumerate(knob.values):
                variant = knob_variant(knob, value, variants)
                parts = int(value) if knob.kind == "partitions" else None  # type: ignore[call-overload]
                log.info("%s = %s (rep %d/%d)", knob.name, value, rep + 1, args.reps)
                try:
                    t = await session.throughput_run(variant, partitions=parts)
                    rates[i].append(float(t["msgs_per_s"]))  # type: ignore[arg-type]
                    lat = await session.latency_run(variant, rate, partitions=parts)
                    p50s[i].append(float(lat["p50_ms"]))  # type: ignore[arg-type]
                    p99s[i].append(float(lat["p99_ms"]))  # type: ignore[arg-type]
                except RunFailed as exc:
                    log.error("  %s", exc)
                    errors[i].append(str(exc))
        rows = []
        for i, value in enumerate(knob.values):
            row: dict[str, object] = {"value": value, "default": value == knob.default}
            if rates[i]:
                row["msgs_per_s"] = round(statistics.median(rates[i]), 1)
                row["msgs_per_s_spread"] = spread(rates[i])
            if p99s[i]:
                row["p50_ms"] = round(statistics.median(p50s[i]), 2)
                row["p99_ms"] = round(statistics.median(p99s[i]), 2)
                row["p99_ms_spread"] = spread(p99s[i])
            if errors[i]:
                row["errors"] = errors[i]
            log.info("%s = %s -> %s", knob.name, value, {k: row.get(k) for k in _SHOWN})
            rows.append(row)
        knobs_out[knob.name] = rows
    raw_after = (await session.throughput_run(raw))["msgs_per_s"]
    assert isinstance(raw_after, float)
    drift = abs(raw_after - raw_before) / raw_before
    return {
        "benchmark": "sweep",
        "events": args.events,
        "partitions": args.partitions,
        "reps": args.reps,
        "offered_rate_msgs_per_s": round(rate, 1),
        "filterd_default_msgs_per_s": baseline,
        "offered_basis": "--rate" if args.rate else f"{args.load:g} × filterd's default throughput",
        "raw_pipe_msgs_per_s": {"before": raw_before, "after": raw_after},
        "raw_pipe_drift": round(drift, 3),
        "noisy": drift > 0.15,
        "knobs": knobs_out,
        "started_at": started_at,
        "machine": machine,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "duration_s": round(time.monotonic() - t0, 1),
    }


def render_markdown(results: Mapping[str, object]) -> str:
    """One table per knob."""
    m = results["machine"]
    assert isinstance(m, Mapping)
    raw = results["raw_pipe_msgs_per_s"]
    assert isinstance(raw, Mapping)
    lines = [
        "# Knob sweep (filterd run)",
        "",
        f"{results['events']:,} events per throughput run, {results['partitions']} partitions "
        f"unless swept, {results['reps']} repetition(s); latency at "
        f"{results['offered_rate_msgs_per_s']:,.0f} msgs/s offered ({results['offered_basis']}; "
        f"filterd with the defaults: {results['filterd_default_msgs_per_s']:,.0f} msgs/s). "
        f"Raw pipe "
        f"{raw['before']:,.0f} msgs/s before, {raw['after']:,.0f} after"
        + (" — **the machine was busy: read with care**." if results.get("noisy") else "."),
        f"Machine: {m.get('cpu', '?')}, {m.get('cores')} cores; load average "
        f"{m.get('loadavg')} at start, {results.get('loadavg_end')} at end.",
        "",
    ]
    knobs = results["knobs"]
    assert isinstance(knobs, Mapping)
    # Every knob measures the defaults too: how far those runs disagree is how much
    # the machine drifted over the session. Compare values within a knob only.
    defaults = [
        float(row["msgs_per_s"])
        for rows in knobs.values()
        for row in rows
        if row.get("default") and isinstance(row.get("msgs_per_s"), int | float)
    ]
    if len(defaults) > 1:
        lines += [
            f"The defaults, measured within each knob, ranged {min(defaults):,.0f} – "
            f"{max(defaults):,.0f} msgs/s over the session: compare values within a knob, "
            "not across knobs.",
            "",
        ]
    for name, rows in knobs.items():
        lines += [
            f"## {name}",
            "",
            "| value | msgs/s (median) | min – max | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in rows:
            value = f"{row['value']} (default)" if row.get("default") else str(row["value"])
            sp = row.get("msgs_per_s_spread")
            rng = f"{sp['min']:,.0f} – {sp['max']:,.0f}" if isinstance(sp, Mapping) and sp else "–"
            cells = [
                _cell(row, "msgs_per_s", 0),
                rng,
                _cell(row, "p50_ms", 1),
                _cell(row, "p99_ms", 1),
            ]
            lines.append(f"| {value} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def _cell(row: Mapping[str, object], key: str, digits: int) -> str:
    value = row.get(key)
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else "failed"


def render_chart(results: Mapping[str, object], path: Path) -> bool:
    """One panel per knob: throughput bars, p99 on a second axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[bench]'); no chart")
        return False
    knobs = results["knobs"]
    assert isinstance(knobs, Mapping)
    if not knobs:
        return False
    cols = 2
    rows_n = (len(knobs) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(11, 3.2 * rows_n), squeeze=False)
    for ax, (name, rows) in zip(axes.flat, knobs.items(), strict=False):
        labels = [str(r["value"]) for r in rows]
        ax.bar(labels, [r.get("msgs_per_s", 0) for r in rows], color="#4472c4")
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("msgs/s", fontsize=8)
        ax2 = ax.twinx()
        ax2.plot(labels, [r.get("p99_ms", float("nan")) for r in rows], "o-", color="#c0504d")
        ax2.set_ylabel("p99 ms", fontsize=8, color="#c0504d")
    for ax in list(axes.flat)[len(knobs) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep and write its results."""
    p = argparse.ArgumentParser(prog="benchmarks.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--load", type=float, default=0.5)
    p.add_argument("--rate", type=float, help="offered load in msgs/s (overrides --load)")
    p.add_argument("--knobs", help=f"subset, comma-separated: {','.join(k.name for k in KNOBS)}")
    p.add_argument("--bootstrap")
    p.add_argument("--dataset")
    p.add_argument("--workdir")
    p.add_argument("--out", default=str(RESULTS / "sweep"))
    args = p.parse_args(argv)
    args.bootstrap = bootstrap_from_env(args.bootstrap)
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="filterd-sweep-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = run_guarded(sweep(args))
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    md = render_markdown(results)
    stem.with_suffix(".md").write_text(md)
    render_chart(results, stem.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
