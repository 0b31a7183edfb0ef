"""Consent-store benchmark: build rate, memory, load time, event-loop stall, lookup cost.

    python -m benchmarks.snapshot_bench                   # 1e6 and 1e7 consents
    python -m benchmarks.snapshot_bench --consents 1e6    # one size
    python -m benchmarks.snapshot_bench --huge            # adds 1e8 (needs ~20 GiB, ~1 h)

The data has a realistic shape: five huge senders hold 60% of the consents
(25/15/10/6/4%), a Zipf tail of N/500 small senders holds the rest; numbers are
random Chinese mobiles ``86 1[3-9]x xxxx xxxx`` written as ``+86...`` or national.
Opt-outs are 2% of N (random pairs), the do-not-disturb list 10% of N.

Every memory, load and stall figure is measured in a fresh child process so
that one measurement's garbage does not blur the next. Memory is reported two
ways: the C heap in use (glibc ``mallinfo2``: the bitmaps and big arrays)
plus Python's small-object arenas (``sys._debugmallocstats`` is too noisy, so
``tracemalloc`` counts them), and the resident-set growth after ``malloc_trim``.

The baseline is what a plain Python design would do: a ``set`` of
``(sender, number)`` tuples. It is measured at 1e6 and extrapolated linearly
to larger sizes (it costs ~150 bytes per consent; measure it at 1e7 with
``--baseline-max 1e7`` if the machine has the memory).

Results: ``benchmarks/results/snapshot.json`` and ``snapshot.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Callable, Generator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from filterd.snapshot import ConsentSnapshot

#: One measurement as JSON-ready data (the benchmark's own, not filterd's core types).
Result = dict[str, Any]

RESULTS = Path(__file__).resolve().parent / "results"
LO = 86_13_000_000_000  # 86 13x xxxx xxxx
SPAN = 7_000_000_000  # up to 86 19x xxxx xxxx
HUGE_SHARES = (0.25, 0.15, 0.10, 0.06, 0.04)


# ------------------------------------------------------------------------- data


#: Shares of consent rows with evidence (the consent-evidence issue's shape): an
#: ``expires_at``, a ``max_per_day``, a method that is not accepted.
EVIDENCE = {"expiring": 0.15, "capped": 0.10, "refused": 0.08}


def generate(workdir: Path, n: int, seed: int = 1, evidence: bool = True) -> dict[str, Path]:
    """Write consents, opt-outs and dnd CSVs of the benchmark shape; return their paths.

    With ``evidence`` the consents carry ``method,granted_at,expires_at,max_per_day``
    in the shares of :data:`EVIDENCE`, drawn independently per row.
    """
    rng = random.Random(seed)
    huge = [f"10690000{i:04d}" for i in range(len(HUGE_SHARES))]
    n_tail = max(50, n // 500)
    tail = [f"shop-{i:06d}" for i in range(n_tail)]
    tail_share = 1.0 - sum(HUGE_SHARES)
    zipf = [1.0 / (rank**1.1) for rank in range(1, n_tail + 1)]
    total = sum(zipf)
    weights = list(HUGE_SHARES) + [tail_share * w / total for w in zipf]
    senders = huge + tail
    cum = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    randrange = rng.randrange

    def number() -> str:
        x = LO + randrange(SPAN)
        # Three in four rows in E.164 with '+', the rest national.
        return f"+{x}" if randrange(4) else str(x - 86_00_000_000_000)

    # A thousand expiry times over the next two years, with an offset as the contract wants.
    expiries = [
        time.strftime("%Y-%m-%dT%H:%M:%S+08:00", time.gmtime(1_795_000_000 + i * 63_113))
        for i in range(1000)
    ]
    random_ = rng.random

    def terms() -> str:
        method = "default-registration" if random_() < EVIDENCE["refused"] else "explicit"
        expires = expiries[randrange(1000)] if random_() < EVIDENCE["expiring"] else ""
        cap = str(1 + randrange(9)) if random_() < EVIDENCE["capped"] else ""
        return f"{method},2026-01-01T00:00:00+08:00,{expires},{cap}"

    paths = {k: workdir / f"{k}.csv" for k in ("consents", "optouts", "dnd")}
    with open(paths["consents"], "w") as f:
        if evidence:
            f.write("sender,recipient,method,granted_at,expires_at,max_per_day\n")
        else:
            f.write("sender,recipient,source\n")
        done = 0
        while done < n:
            k = min(200_000, n - done)
            picks = rng.choices(senders, cum_weights=cum, k=k)
            if evidence:
                f.write("".join(f"{s},{number()},{terms()}\n" for s in picks))
            else:
                f.write("".join(f"{s},{number()},web\n" for s in picks))
            done += k
    with open(paths["optouts"], "w") as f:
        f.write("sender,recipient\n")
        picks = rng.choices(senders, cum_weights=cum, k=n // 50)
        f.write("".join(f"{s},{number()}\n" for s in picks))
    with open(paths["dnd"], "w") as f:
        f.write("recipient\n")
        f.write("".join(f"{number()}\n" for _ in range(n // 10)))
    return paths


# ------------------------------------------------------------------ measurement


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc


def _heap() -> int:
    """Bytes in use on the C heap (malloc'd blocks plus mmap'd big blocks)."""
    info = _libc().mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _settle() -> None:
    gc.collect()
    _libc().malloc_trim(0)


def _child(mode: str, *args: str) -> Result:
    """Run one measurement in a fresh interpreter; it prints one JSON object."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.snapshot_bench", "--child", mode, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{out.stderr[-3000:]}")
    result: Result = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _sample_pairs(
    snap: ConsentSnapshot, k: int, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """k (sender, number) hits drawn like traffic (by sender size), and k misses."""
    rng = random.Random(seed)
    senders = snap.senders
    names = [s for s in senders if len(senders[s].consents)]
    weights = [len(senders[s].consents) for s in names]
    hits = []
    for name in rng.choices(names, weights=weights, k=k):
        # Both in-memory forms (BitMap64, SortedNumbers) index by rank.
        numbers = cast(Sequence[int], senders[name].consents)
        value = numbers[rng.randrange(len(numbers))]
        hits.append((name, value))
    misses = [(name, LO + rng.randrange(SPAN)) for name, _ in hits]
    return hits, misses


def _per_lookup_ns(
    fn: Callable[[list[tuple[str, int]]], None], pairs: list[tuple[str, int]]
) -> float:
    """ns per lookup for a loop over pairs, best of 3, minus the bare loop."""

    def run(f: Callable[[list[tuple[str, int]]], None]) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            f(pairs)
            best = min(best, time.perf_counter() - t)
        return best

    def bare(ps: list[tuple[str, int]]) -> None:
        for _s, _n in ps:
            pass

    return max(0.0, (run(fn) - run(bare)) / len(pairs) * 1e9)


def child_load(root: str) -> Result:
    """Memory, load time and lookup cost of the chosen store, in a fresh process."""
    from filterd.snapshot import SortedNumbers, load_snapshot

    t = time.perf_counter()
    snap = load_snapshot(Path(root))  # timed without tracemalloc, which slows allocation
    load_s = time.perf_counter() - t
    del snap
    # The resident set and the C heap of a load without tracemalloc: its own records
    # (a hash-table entry and a traceback per live block) are the benchmark's memory,
    # not filterd's, and showed as ~2-4 bytes per consent of "RSS growth".
    _settle()
    heap0, rss0 = _heap(), _rss()
    snap = load_snapshot(Path(root))
    _settle()
    heap1, rss1 = _heap(), _rss()
    del snap
    # Python's small-object arenas are not in the C heap: tracemalloc counts them.
    tracemalloc.start()
    _settle()
    rss_t0, py0 = _rss(), tracemalloc.get_traced_memory()[0]
    snap = load_snapshot(Path(root))
    _settle()
    py1, rss_t1 = tracemalloc.get_traced_memory()[0], _rss()
    tracemalloc.stop()
    senders = snap.senders
    kinds = {"bitmap": 0, "sorted": 0}
    consents_by_kind = {"bitmap": 0, "sorted": 0}
    for entry in senders.values():
        kind = "sorted" if isinstance(entry.consents, SortedNumbers) else "bitmap"
        kinds[kind] += 1
        consents_by_kind[kind] += len(entry.consents)
    # Python-side bytes: tracemalloc sees every PyMem allocation; big arrays also show in
    # the C heap, so count the larger of the two views per kind of memory, not their sum.
    memory = max(heap1 - heap0, 0) + max(py1 - py0 - max(heap1 - heap0, 0), 0)
    numbers_stored = snap.counts.consents + snap.counts.optouts + snap.counts.dnd

    hits, misses = _sample_pairs(snap, 200_000, 7)
    get = senders.get

    def decide(pairs: list[tuple[str, int]]) -> None:
        for s, n in pairs:
            entry = get(s)
            if entry is not None:
                n in entry.optouts  # noqa: B015 - the lookup is what is timed
                n in entry.consents  # noqa: B015

    mixed = [p for pair in zip(hits, misses, strict=True) for p in pair]
    warm = [hits[0]] * 200_000
    big = [p for p in hits if not isinstance(senders[p[0]].consents, SortedNumbers)]
    small = [p for p in hits if isinstance(senders[p[0]].consents, SortedNumbers)]
    return {
        "load_s": load_s,
        "heap_bytes": heap1 - heap0,
        "rss_bytes": rss1 - rss0,
        "memory_bytes": memory,
        "bytes_per_consent": memory / snap.counts.consents,
        "bytes_per_stored_number": memory / numbers_stored,
        "rss_bytes_per_consent": (rss1 - rss0) / snap.counts.consents,
        "rss_bytes_per_consent_traced": (rss_t1 - rss_t0) / snap.counts.consents,
        "senders_bitmap": kinds["bitmap"],
        "senders_sorted": kinds["sorted"],
        "consents_in_bitmaps": consents_by_kind["bitmap"],
        "consents_in_sorted": consents_by_kind["sorted"],
        "lookup_ns_cold_mixed": _per_lookup_ns(decide, mixed) / 2,
        "lookup_ns_cold_big_senders": _per_lookup_ns(decide, big) / 2 if big else None,
        "lookup_ns_cold_small_senders": _per_lookup_ns(decide, small) / 2 if small else None,
        "lookup_ns_warm": _per_lookup_ns(decide, warm) / 2,
        "counts": snap.counts._asdict(),
    }


def child_baseline(root: str) -> Result:
    """The same data as a Python set of (sender, number) tuples."""
    from filterd.snapshot import load_snapshot

    snap = load_snapshot(Path(root))
    hits, misses = _sample_pairs(snap, 200_000, 7)
    numbers = {s: list(entry.consents) for s, entry in snap.senders.items()}
    del snap
    _settle()
    tracemalloc.start()
    rss0 = _rss()
    t = time.perf_counter()
    # Tuples and ints are created here, under tracemalloc, as a CSV loader would.
    consents = {(s, int(n)) for s, ns in numbers.items() for n in ns}
    build_s = time.perf_counter() - t
    del numbers
    _settle()
    py = tracemalloc.get_traced_memory()[0]
    rss1 = _rss()
    tracemalloc.stop()

    def decide(ps: list[tuple[str, int]]) -> None:
        for p in ps:
            p in consents  # noqa: B015

    mixed = [p for pair in zip(hits, misses, strict=True) for p in pair]
    return {
        "bytes_per_consent": py / len(consents),
        "rss_bytes_per_consent": (rss1 - rss0) / len(consents),
        "build_from_pairs_s": build_s,
        "lookup_ns_cold_mixed": _per_lookup_ns(decide, mixed),
        "lookup_ns_warm": _per_lookup_ns(decide, [hits[0]] * 200_000),
    }


async def _stall(root: Path, second: str) -> Result:
    from filterd.snapshot import SnapshotWatcher, load, store
    from filterd.snapshot import format as fmt
    from filterd.snapshot import watcher as watcher_mod

    lateness: list[float] = []
    running = True
    step_cpu: list[float] = []
    sliced = store.run_sliced

    async def run_sliced(steps: Generator[None, None, Any]) -> Any:
        # The library's driver, with each step's CPU time recorded: a wall-clock stall
        # longer than the longest step is the machine (other processes), not filterd.
        def timed() -> Generator[None, None, Any]:
            while True:
                t = time.thread_time()
                try:
                    next(steps)
                except StopIteration as done:
                    step_cpu.append(time.thread_time() - t)
                    return done.value
                step_cpu.append(time.thread_time() - t)
                yield

        return await sliced(timed())

    # Instrumentation: the one driver every loading and freeing step goes through.
    setattr(store, "run_sliced", run_sliced)  # noqa: B010
    setattr(load, "run_sliced", run_sliced)  # noqa: B010
    setattr(watcher_mod, "run_sliced", run_sliced)  # noqa: B010

    async def ticker() -> None:
        # Wakes every millisecond; how late it wakes is the loop's stall.
        while running:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t - 0.001)

    async def idle(seconds: float) -> list[float]:
        start = len(lateness)
        await asyncio.sleep(seconds)
        return lateness[start:]

    tick = asyncio.create_task(ticker())
    noise = await idle(1.0)
    swaps: list[float] = []
    watcher = SnapshotWatcher(root, 0.05, on_swap=lambda s, secs: swaps.append(secs))
    start = len(lateness)
    t = time.perf_counter()
    await watcher.start()  # initial load, on the running loop
    initial_s = time.perf_counter() - t
    # The pointer is switched from a thread: its fsync would stall this loop itself.
    await asyncio.to_thread(fmt.publish_pointer, root, second)
    while len(swaps) < 2:  # noqa: ASYNC110 - on_swap is a plain callback; poll for it
        await asyncio.sleep(0.01)
    during = lateness[start:]
    await watcher.stop()
    running = False
    await tick

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1e3

    return {
        "initial_load_s": initial_s,
        "swap_load_s": swaps[1],
        "stall_max_ms": max(during) * 1e3,
        "stall_p99_ms": q(during, 0.99),
        "stall_p999_ms": q(during, 0.999),
        "ticks_during": len(during),
        "longest_step_cpu_ms": max(step_cpu) * 1e3,
        "steps": len(step_cpu),
        "idle_noise_max_ms": max(noise) * 1e3,
        "idle_noise_p99_ms": q(noise, 0.99),
    }


def child_stall(root: str, second: str) -> Result:
    """Longest event-loop stall while a snapshot loads and then swaps under a running loop."""
    return asyncio.run(_stall(Path(root), second))


def child_one_piece(root: str) -> Result:
    """What an unchunked loader would stall: the biggest sender deserialized in one call."""
    from pyroaring import BitMap64

    from filterd.snapshot import load_snapshot

    snap = load_snapshot(Path(root))
    biggest = max(snap.senders.values(), key=lambda e: len(e.consents)).consents
    blob = BitMap64(biggest).serialize()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        BitMap64.deserialize(blob)
        times.append(time.perf_counter() - t)
    return {"numbers": len(biggest), "deserialize_ms": min(times) * 1e3}


def child_layouts(root: str, layout: str) -> Result:
    """Memory, load and lookup of one key layout over the same consents."""
    from pyroaring import BitMap, BitMap64

    from filterd.snapshot import SortedNumbers, load_snapshot

    snap = load_snapshot(Path(root))
    data = {s: list(e.consents) for s, e in snap.senders.items() if len(e.consents)}
    hits, misses = _sample_pairs(snap, 100_000, 7)
    n = snap.counts.consents
    del snap
    blobs: Result = {}
    for s, values in data.items():
        if layout == "bucket32":
            buckets: dict[int, list[int]] = {}
            for v in values:
                buckets.setdefault(v >> 32, []).append(v & 0xFFFFFFFF)
            blobs[s] = {k: BitMap(v).serialize() for k, v in buckets.items()}
        else:
            blobs[s] = BitMap64(values).serialize()
    del data

    class Bucketed:
        __slots__ = ("_b",)

        def __init__(self, b: dict[int, BitMap]) -> None:
            self._b = b

        def __contains__(self, n: int) -> bool:
            bm = self._b.get(n >> 32)
            return bm is not None and (n & 0xFFFFFFFF) in bm

    from filterd.snapshot.store import compact

    tracemalloc.start()
    _settle()
    heap0, py0 = _heap(), tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    store: Result = {}
    for s, blob in blobs.items():
        if layout == "bucket32":
            store[s] = Bucketed({k: BitMap.deserialize(v) for k, v in blob.items()})
        elif layout == "roaring64":
            store[s] = BitMap64.deserialize(blob)
        else:
            store[s] = compact(BitMap64.deserialize(blob))
    load_s = time.perf_counter() - t
    _settle()
    heap1, py1 = _heap(), tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    memory = max(heap1 - heap0, 0) + max(py1 - py0 - max(heap1 - heap0, 0), 0)
    get = store.__getitem__

    def look(ps: list[tuple[str, int]]) -> None:
        for s, v in ps:
            v in get(s)  # noqa: B015

    mixed = [p for pair in zip(hits, misses, strict=True) for p in pair]
    small = [p for p in hits if isinstance(store[p[0]], SortedNumbers)]
    return {
        "layout": layout,
        "bytes_per_consent": memory / n,
        "deserialize_s": load_s,
        "lookup_ns_cold_mixed": _per_lookup_ns(look, mixed),
        "lookup_ns_small_senders": _per_lookup_ns(look, small) if small else None,
    }


# ---------------------------------------------------------------------- driver


def _clone_version(root: Path, version: str) -> str:
    """A second, byte-identical version under a new name (for the swap)."""
    import orjson

    from filterd.snapshot import format as fmt

    second = fmt.new_version(root)
    shutil.copytree(root / version, root / second)
    path = root / second / fmt.MANIFEST
    manifest = orjson.loads(path.read_bytes())
    manifest["version"] = second
    path.write_bytes(fmt.dumps(manifest) + b"\n")
    return second


def _normalize_ns() -> dict[str, float]:
    from filterd.numbers import normalize

    out = {}
    for raw in ("+8613812345678", "13812345678", "+86 138-1234-5678"):
        n = 300_000
        best = min(timeit.repeat(partial(normalize, raw), number=n, repeat=5)) / n
        out[raw] = best * 1e9
    return out


def run_size(n: int, workdir: Path, args: argparse.Namespace) -> Result:
    from filterd.snapshot import build_snapshot

    print(f"\n== {n:,} consents: generating CSV ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    paths = generate(workdir, n, evidence=args.evidence)
    print(f"   generated in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    rows = n + n // 50 + n // 10
    csv_bytes = sum(p.stat().st_size for p in paths.values())
    root = workdir / "snap"
    t, cpu = time.perf_counter(), time.process_time()
    version = build_snapshot(root, paths["consents"], paths["optouts"], paths["dnd"])
    build_s = time.perf_counter() - t
    build_cpu_s = time.process_time() - cpu
    disk = sum(p.stat().st_size for p in (root / version).iterdir())
    print(f"   built {version} in {build_s:.1f}s", file=sys.stderr, flush=True)
    for p in paths.values():
        p.unlink()
    second = _clone_version(root, version)
    result: Result = {
        "consents_target": n,
        "input_rows": rows,
        "input_csv_bytes": csv_bytes,
        "build_s": build_s,
        "build_rows_per_s": rows / build_s,
        # CPU time of the build (one thread): on a shared machine wall time measures the others.
        "build_cpu_s": build_cpu_s,
        "build_cpu_rows_per_s": rows / build_cpu_s,
        "evidence": EVIDENCE if args.evidence else None,
        "disk_bytes": disk,
    }
    load = _child("load", str(root))
    result["load"] = load
    counts = load["counts"]
    assert isinstance(counts, dict)
    result["disk_bytes_per_consent"] = disk / counts["consents"]
    print("   load + lookups measured", file=sys.stderr, flush=True)
    result["stall"] = _child("stall", str(root), second)
    print("   stall measured", file=sys.stderr, flush=True)
    result["one_piece"] = _child("one-piece", str(root))
    if n <= args.baseline_max:
        result["baseline"] = _child("baseline", str(root))
        result["baseline"]["measured"] = True
    if args.layouts and n <= args.layouts_max:
        result["layouts"] = [
            _child("layouts", str(root), lay) for lay in ("roaring64", "bucket32", "hybrid")
        ]
    shutil.rmtree(root)
    return result


def _fmt(x: object, spec: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, spec)


def table(results: list[Result], base_1m: Result | None) -> str:
    rows = [
        "| measure | "
        + " | ".join(f"{r['consents_target']:,} consents" for r in results)
        + " | set-of-tuples baseline |",
        "|---|" + "---|" * (len(results) + 1),
    ]

    def line(label: str, values: list[str], base: str = "") -> None:
        rows.append(f"| {label} | " + " | ".join(values) + f" | {base} |")

    b = base_1m or {}
    L = [r["load"] for r in results]
    S = [r["stall"] for r in results]
    line("build from CSV (rows/s, wall)", [_fmt(r["build_rows_per_s"]) for r in results])
    line(
        "build from CSV (rows/s, CPU time)",
        [_fmt(r.get("build_cpu_rows_per_s")) for r in results],
    )
    line(
        "memory (bytes/consent)",
        [_fmt(x["bytes_per_consent"], ".1f") for x in L],
        _fmt(b.get("bytes_per_consent"), ".0f"),
    )
    line(
        "memory (bytes/stored number, incl. opt-outs, dnd)",
        [_fmt(x["bytes_per_stored_number"], ".1f") for x in L],
    )
    line(
        "RSS growth (bytes/consent)",
        [_fmt(x["rss_bytes_per_consent"], ".1f") for x in L],
        _fmt(b.get("rss_bytes_per_consent"), ".0f"),
    )
    line(
        "RSS growth with tracemalloc on (bytes/consent)",
        [_fmt(x.get("rss_bytes_per_consent_traced"), ".1f") for x in L],
    )
    line("disk (bytes/consent)", [_fmt(r["disk_bytes_per_consent"], ".1f") for r in results])
    line("load, sync (s)", [_fmt(x["load_s"], ".2f") for x in L])
    line("load under a running loop (s)", [_fmt(x["initial_load_s"], ".2f") for x in S])
    line("longest loop stall, load + swap (ms)", [_fmt(x["stall_max_ms"], ".1f") for x in S])
    line("loop stall p99.9 (ms)", [_fmt(x["stall_p999_ms"], ".2f") for x in S])
    line("longest loading step, CPU (ms)", [_fmt(x["longest_step_cpu_ms"], ".2f") for x in S])
    line("idle loop noise, max (ms)", [_fmt(x["idle_noise_max_ms"], ".1f") for x in S])
    line(
        "biggest sender in one deserialize (ms)",
        [_fmt(r["one_piece"]["deserialize_ms"], ".1f") for r in results],
    )
    line(
        "lookup cold, mixed hit/miss (ns)",
        [_fmt(x["lookup_ns_cold_mixed"]) for x in L],
        _fmt(b.get("lookup_ns_cold_mixed")),
    )
    line("lookup cold, big senders (ns)", [_fmt(x["lookup_ns_cold_big_senders"]) for x in L])
    line("lookup cold, small senders (ns)", [_fmt(x["lookup_ns_cold_small_senders"]) for x in L])
    line("lookup warm (ns)", [_fmt(x["lookup_ns_warm"]) for x in L], _fmt(b.get("lookup_ns_warm")))
    line(
        "senders: bitmap / sorted array",
        [f"{x['senders_bitmap']:,} / {x['senders_sorted']:,}" for x in L],
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--consents", default="1e6,1e7", help="sizes, comma separated (default 1e6,1e7)"
    )
    parser.add_argument("--huge", action="store_true", help="also 1e8 consents")
    parser.add_argument(
        "--baseline-max",
        type=float,
        default=1e6,
        help="largest size to measure the set baseline at",
    )
    parser.add_argument(
        "--layouts",
        action="store_true",
        help="compare key layouts (roaring64, 32-bit buckets, hybrid)",
    )
    parser.add_argument("--layouts-max", type=float, default=1e7)
    parser.add_argument(
        "--no-evidence",
        dest="evidence",
        action="store_false",
        help="consents without method/expires_at/max_per_day columns (the older corpus)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "snapshot.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, *rest = args.child
        children: dict[str, Callable[..., Result]] = {
            "load": child_load,
            "baseline": child_baseline,
            "stall": child_stall,
            "one-piece": child_one_piece,
            "layouts": child_layouts,
        }
        fn = children[mode]
        print(json.dumps(fn(*rest)))
        return 0
    sizes = [int(float(x)) for x in args.consents.split(",")]
    if args.huge:
        sizes.append(100_000_000)
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="filterd-snapbench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in sizes:
            workdir = scratch / f"n{n}"
            workdir.mkdir(exist_ok=True)
            results.append(run_size(n, workdir, args))
    finally:
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    base = next((r.get("baseline") for r in results if r.get("baseline")), None)
    normalize_ns = _normalize_ns()
    report = {
        "benchmark": "snapshot",
        "command": " ".join(
            [Path(sys.executable).name, "-m", "benchmarks.snapshot_bench", *(argv or sys.argv[1:])]
        ),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_end": os.getloadavg(),
        },
        "normalize_ns": normalize_ns,
        "sizes": results,
        "baseline_note": "set of (sender, number) tuples, measured at the sizes up to "
        "--baseline-max, linear beyond (its cost per consent does not fall with size)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    md = table(results, base)
    layouts = [lay for r in results for lay in r.get("layouts", [])]
    if layouts:
        md += (
            "\n\nKey layouts over the same consents (fresh process each):\n\n"
            "| layout | bytes/consent | deserialize (s) | lookup cold (ns) |"
            " lookup small senders (ns) |\n|---|---|---|---|---|\n"
        )
        md += "\n".join(
            f"| {x['layout']} | {x['bytes_per_consent']:.1f} | {x['deserialize_s']:.2f}"
            f" | {_fmt(x['lookup_ns_cold_mixed'])} | {_fmt(x['lookup_ns_small_senders'])} |"
            for x in layouts
        )
    md += "\n\nnormalize(): " + ", ".join(f"`{k}` {v:.0f} ns" for k, v in normalize_ns.items())
    header = (
        f"# Snapshot benchmark\n\n`{report['command']}` — {report['when']}, "
        f"{os.cpu_count()} CPUs, load average at end {os.getloadavg()[0]:.1f} "
        "(a shared machine: wall-clock figures include other processes' CPU use)\n\n"
    )
    (args.out.with_suffix(".md")).write_text(header + md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
