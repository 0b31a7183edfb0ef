"""Two or more filterd builds side by side: CPU per record on the same input.

For a change to the hot path, the question is "did this build spend less CPU per
record than that one", on a machine whose other load moves throughput by a factor
of two. Each build is a directory holding a ``filterd`` package (a checkout, or a
copy of one, compiled with ``make native`` or ``python setup.py build_ext
--inplace``). Per round, ``--events`` events are preloaded into a fresh input
topic once; every build then routes that same topic, one after the other (the
order alternates from round to round), each with its own group and output
topics, as ``filterd run``. Its CPU per record is the user + system time of its
process (/proc) over the steady window (from 10 % of the records out to the
last sample before all are out, sampled every 0.25 s) divided by the records
out in that window.

    python -m benchmarks.builds --events 400000 --rounds 4 before=/tmp/main after=.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks._common import (
    bootstrap_from_env,
    create_topics,
    delete_topics,
    ensure_snapshot,
    load_events,
    preload,
    unique_name,
)
from benchmarks.cpu import cpu_seconds

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
ROUTES = ("deliver", "block", "invalid")


def _config(path: Path, bootstrap: str, group: str, base: str, outs: dict[str, str],
            snapshots: Path) -> None:  # fmt: skip
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\ngroup_id = "{group}"\n'
        f'[topics]\ninput = "{base}.in"\ndeliver = "{outs["deliver"]}"\n'
        f'block = "{outs["block"]}"\ninvalid = "{outs["invalid"]}"\n'
        f'[snapshot]\nroot = "{snapshots}"\n[metrics]\nport = 0\nenabled = true\n'
        '[logging]\nlevel = "ERROR"\n'
    )


async def route_once(
    bootstrap: str, build: Path, base: str, name: str, snapshots: Path, events: int,
    workdir: Path, watcher: AIOKafkaConsumer,
) -> dict[str, float]:  # fmt: skip
    """Run one build over the round's input; its CPU per record over the steady window."""
    outs = {r: f"{base}.{name}.{r}" for r in ROUTES}
    await create_topics(bootstrap, list(outs.values()), PARTITIONS)
    config = workdir / f"{base}-{name}.toml"
    _config(config, bootstrap, f"{base}-{name}", base, outs, snapshots)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "filterd", "run", "--config", str(config),
        cwd=build, env={**os.environ, "PYTHONPATH": str(build)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    partitions = [TopicPartition(t, p) for t in outs.values() for p in range(PARTITIONS)]
    samples: list[tuple[int, float]] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            out = sum((await watcher.end_offsets(partitions)).values())
            samples.append((out, cpu_seconds(proc.pid)))
            if out >= events:
                break
            await asyncio.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await delete_topics(bootstrap, list(outs.values()))
    steady = [s for s in samples if events * 0.1 <= s[0] < events]
    if len(steady) < 2 or steady[-1][0] == steady[0][0]:
        raise RuntimeError(f"{name}: too few samples in the steady window; use more events")
    (n0, c0), (n1, c1) = steady[0], steady[-1]
    return {"cpu_us_per_record": round((c1 - c0) * 1e6 / (n1 - n0), 3), "records": n1 - n0}


async def compare(
    builds: dict[str, Path], events: int, rounds: int, bootstrap: str, workdir: Path
) -> dict[str, object]:
    dataset, snapshots = ensure_snapshot(workdir)
    values = load_events(str(dataset), events, seed=3)
    watcher = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await watcher.start()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    try:
        for r in range(rounds):
            base = unique_name("builds")
            await create_topics(bootstrap, [f"{base}.in"], PARTITIONS)
            await preload(bootstrap, f"{base}.in", PARTITIONS, values)
            order = list(builds.items())
            if r % 2:
                order.reverse()
            for name, build in order:
                run = await route_once(
                    bootstrap, build, base, name, snapshots, events, workdir, watcher
                )
                run["loadavg"] = round(os.getloadavg()[0], 2)
                runs[name].append(run)
                print(f"round {r + 1}/{rounds} {name}: {run}", flush=True)
            await delete_topics(bootstrap, [f"{base}.in"])
    finally:
        await watcher.stop()
    summary = {
        name: {
            "cpu_us_per_record_mean": round(statistics.fmean(x["cpu_us_per_record"] for x in r), 3),
            "cpu_us_per_record_median": round(
                statistics.median(x["cpu_us_per_record"] for x in r), 3
            ),
            "runs": r,
        }
        for name, r in runs.items()
    }
    return {"benchmark": "builds", "events": events, "rounds": rounds, "builds": summary}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.builds", description=__doc__.split("\n")[0])
    p.add_argument("builds", nargs="+", metavar="NAME=DIR", help="a build: name and directory")
    p.add_argument("--events", type=int, default=400_000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--bootstrap")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/filterd-bench-builds"))
    p.add_argument("--out", type=Path, help="write the JSON report here")
    args = p.parse_args(argv)
    builds = {}
    for spec in args.builds:
        name, sep, directory = spec.partition("=")
        path = Path(directory).resolve()
        if not sep or not (path / "filterd").is_dir():
            p.error(f"{spec!r}: want NAME=DIR, DIR holding a filterd package")
        builds[name] = path
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(
        compare(builds, args.events, args.rounds, bootstrap_from_env(args.bootstrap), args.workdir)
    )
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
