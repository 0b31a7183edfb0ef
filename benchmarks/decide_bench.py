"""Micro-benchmark of the pure decision path, beside ``orjson.loads`` alone.

Per event, on the same realistic events (filterd's traffic generator, the
demo's mix, 1 % deliberately bad): the time of

* ``loop`` — iterating the events and doing nothing (the harness's own cost);
* ``orjson.loads`` — parsing the value and nothing else: the floor for anything
  that reads JSON;
* ``decide`` — :meth:`filterd.router.Decider.decide`, what ``filterd run`` calls
  per record: size check, parse, field checks, number normalization, policy,
  bitmap lookups.

``ratio`` is decide / orjson.loads (both including the same loop cost); the goal
is ≤ 2.5. The same figures are taken on a second corpus, ``exempt_30``: 30 % of
the valid events exempt (transactional, verification) with a text, which step 2
(honest category) searches for marketing markers. Each figure is the best of
``--repeat`` passes (interleaved, garbage collector paused), as ``timeit``
does; the medians are kept too.

The figures are for the build installed (``build``: normally ``compiled``, see
filterd/native.py). When that is the compiled one, the same measurement runs
again in a child interpreter on the plain sources (``interpreted``), and
``compiled_speedup`` compares the two: the effect of ``FILTERD__PURE_PYTHON``.

    python -m benchmarks.decide_bench [--events 200000] [--repeat 7] [--no-interpreted]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks._common import ensure_snapshot, load_events, ratio
from filterd import native

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 2.5
#: The second corpus: 30 % exempt-category events with a text (step 2's work).
EXEMPT_30_MIX = {"marketing": 0.65, "transactional": 0.15, "verification": 0.15, "promo": 0.05}


def time_passes(
    funcs: Mapping[str, Callable[[bytes], object]], values: Sequence[bytes], repeat: int
) -> dict[str, list[float]]:
    """ns per event of each function, ``repeat`` passes each, interleaved.

    Interleaving (a, b, c, a, b, c, ...) spreads any noise from other processes over
    every function alike, instead of loading it onto whichever ran at a bad moment.
    """
    passes: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(repeat):
        for name, func in funcs.items():
            gc.disable()
            try:
                start = time.perf_counter_ns()
                for v in values:
                    func(v)
                passes[name].append((time.perf_counter_ns() - start) / len(values))
            finally:
                gc.enable()
    return passes


def _nothing(value: bytes) -> None:
    return None


def pipeline_breakdown(decider: object, values: Sequence[bytes], repeat: int) -> dict[str, float]:
    """ns per record of the whole in-process batch step, and of its parts.

        * ``copy`` — appending each record unchanged to aiokafka's ``BatchBuilder``
          (what the raw pipe does per record);
        * ``copy_with_headers`` — the same with filterd's four output headers;
        * ``decide_partition`` — filterd's batch step as ``filterd run`` calls it:
          decide, build the headers, append to one batch per route
          (filterd.records.RecordBatch).

    Each includes building the batches' bytes (the producer does it before sending).

        The Kafka client's own work around these (fetching and unpacking records,
        encoding produce requests) is the same for every variant and is not here.
    """
    from aiokafka.producer.message_accumulator import BatchBuilder
    from aiokafka.structs import ConsumerRecord

    from filterd.pipeline import HeaderCache, OutputTopics, decide_partition
    from filterd.records import RecordBatch
    from filterd.router import Decider

    assert isinstance(decider, Decider)
    records = [
        ConsumerRecord("in", 0, i, 1_795_000_000_000 + i, 0, None, v, None, 0, len(v), [])
        for i, v in enumerate(values)
    ]
    headers = HeaderCache(decider.version)
    outputs = OutputTopics("d", "b", "i", {"d": 4, "b": 4, "i": 4})
    chunk = 5_000  # batch.max_records

    def new_builder() -> BatchBuilder:
        return BatchBuilder(1 << 20, 0)

    def new_batch() -> RecordBatch:
        return RecordBatch(1 << 20)

    def copy(with_headers: bool) -> None:
        fixed = list(headers.by_outcome[next(iter(headers.by_outcome))])
        for a in range(0, len(records), chunk):
            builder = new_builder()
            built = [builder]
            for r in records[a : a + chunk]:
                h = (
                    [*fixed, ("filterd-source", f"in/0/{r.offset}".encode())]
                    if with_headers
                    else []
                )
                if (
                    builder.append(timestamp=r.timestamp, key=r.key, value=r.value, headers=h)
                    is None
                ):
                    builder = new_builder()
                    built.append(builder)
                    builder.append(timestamp=r.timestamp, key=r.key, value=r.value, headers=h)
            for b in built:
                b._build()

    def step() -> None:
        for a in range(0, len(records), chunk):
            out = decide_partition(
                decider, headers, "in", 0, records[a : a + chunk], outputs, new_batch
            )
            for _, _, batch in out.batches:
                batch._build()  # type: ignore[attr-defined]

    best = {
        "copy": float("inf"),
        "copy_with_headers": float("inf"),
        "decide_partition": float("inf"),
    }
    for _ in range(max(1, repeat // 2)):
        for name, run in (
            ("copy", lambda: copy(False)),
            ("copy_with_headers", lambda: copy(True)),
            ("decide_partition", step),
        ):
            gc.disable()
            try:
                start = time.perf_counter_ns()
                run()
                best[name] = min(best[name], (time.perf_counter_ns() - start) / len(records))
            finally:
                gc.enable()
    return {name: round(ns, 1) for name, ns in best.items()}


def run(
    events: int,
    repeat: int,
    workdir: Path,
    dataset: Path | None,
    mix: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    from filterd.router import Decider, Policy
    from filterd.snapshot import load_snapshot

    dataset, snapshot_root = ensure_snapshot(workdir, dataset)
    values = [v for _, v in load_events(str(dataset), events, seed=11, mix=mix)]
    decider = Decider(load_snapshot(snapshot_root), Policy())
    decide = decider.decide
    loads = orjson.loads

    def parse_only(value: bytes) -> object:
        # orjson raises on the deliberately malformed events; the decision catches
        # that too, so the floor pays for it the same way.
        try:
            return loads(value)
        except orjson.JSONDecodeError:
            return None

    # One untimed pass each: warm caches and the interpreter's specializations.
    for func in (parse_only, decide):
        for v in values[:10_000]:
            func(v)
    passes = time_passes(
        {"loop": _nothing, "orjson_loads": parse_only, "decide": decide}, values, repeat
    )
    per_record = pipeline_breakdown(decider, values, repeat)
    # The best pass is the figure (as timeit advises: slower passes measure the
    # machine's other load, not the code); the median is kept for the record.
    best = {name: min(p) for name, p in passes.items()}
    r = ratio(best["decide"], best["orjson_loads"])
    return {
        "benchmark": "decide",
        "events": len(values),
        "repeat": repeat,
        "avg_event_bytes": round(statistics.fmean(len(v) for v in values), 1),
        "loop_ns_per_event": round(best["loop"], 1),
        "orjson_loads_ns_per_event": round(best["orjson_loads"], 1),
        "decide_ns_per_event": round(best["decide"], 1),
        "decide_events_per_s": round(1e9 / best["decide"]),
        "ratio_decide_vs_loads": r,
        "median_ns_per_event": {n: round(statistics.median(p), 1) for n, p in passes.items()},
        "pipeline_ns_per_record": per_record,
        "goal_ratio": GOAL_RATIO,
        "goal_met": None if r is None else r <= GOAL_RATIO,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def run_interpreted(events: int, repeat: int, workdir: Path) -> dict[str, Any]:
    """Run this benchmark in a child interpreter on the package without its compiled modules.

    A copy of ``filterd`` (no ``.so`` files), ``benchmarks`` and the harness they import
    (``tests/support``) is put first on the child's path and is its working directory, so
    it imports the plain sources.
    """
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="filterd-interpreted-") as tmp:
        root = Path(tmp)
        for package in ("filterd", "benchmarks", "tests/support"):
            shutil.copytree(
                repo / package, root / package,
                ignore=shutil.ignore_patterns("*.so", "results", "__pycache__"),
            )  # fmt: skip
        shutil.copy(repo / "tests" / "__init__.py", root / "tests" / "__init__.py")
        out = root / "decide.json"
        cmd = [sys.executable, "-m", "benchmarks.decide_bench", "--no-interpreted"]
        cmd += ["--events", str(events), "--repeat", str(repeat)]
        cmd += ["--workdir", str(workdir), "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(root)}
        subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
        result: dict[str, Any] = json.loads(out.read_text())
    if result.get("build") != "interpreted":
        raise RuntimeError(
            f"the child ran the {result.get('build')} build, not the interpreted one"
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print and write ``benchmarks/results/decide.json``."""
    p = argparse.ArgumentParser(prog="benchmarks.decide_bench", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--dataset", help="reuse a `filterd loadgen dataset` directory")
    p.add_argument("--workdir", help="keep the data set and snapshot here")
    p.add_argument("--out", default=str(RESULTS / "decide.json"))
    p.add_argument(
        "--no-interpreted", dest="interpreted", action="store_false",
        help="skip the same measurement on the interpreted build",
    )  # fmt: skip
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="filterd-decide-"))
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = Path(args.dataset) if args.dataset else None
    result = run(args.events, args.repeat, workdir, dataset)
    exempt = run(args.events, args.repeat, workdir, dataset, EXEMPT_30_MIX)
    result["exempt_30"] = {
        k: exempt[k]
        for k in (
            "orjson_loads_ns_per_event", "decide_ns_per_event", "ratio_decide_vs_loads",
            "pipeline_ns_per_record",
        )
    }  # fmt: skip
    result["exempt_30"]["mix"] = EXEMPT_30_MIX
    result["build"] = native.hot_path()
    if args.interpreted and result["build"] == "compiled":
        # The same measurement on the interpreted build, same events, same snapshot.
        other = run_interpreted(args.events, args.repeat, workdir)
        result["interpreted"] = {
            k: other[k]
            for k in (
                "orjson_loads_ns_per_event", "decide_ns_per_event", "ratio_decide_vs_loads",
                "pipeline_ns_per_record",
            )
        }  # fmt: skip
        result["compiled_speedup"] = {
            "decide": ratio(other["decide_ns_per_event"], result["decide_ns_per_event"]),
            "decide_partition": ratio(
                other["pipeline_ns_per_record"]["decide_partition"],
                result["pipeline_ns_per_record"]["decide_partition"],
            ),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
