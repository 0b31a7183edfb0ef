"""What step 4 (quiet hours, caps, ``max_per_day``, the changelog) costs, in process.

Three figures, each against its goal (issue 18, item 6):

* ``ratio`` — records per second of filterd's batch step (``decide_partition``: decide,
  headers, producer batches: filterd's ``RecordBatch``, built as the producer builds them
  before sending) with quiet hours and three cap rules on, over the same step with limits
  off, on the same events; goal ≥ 0.85. Limits on includes writing the changelog records.
  The Kafka client's fetch and produce work around the step is not here (the same for
  both), so the end-to-end ratio is closer to 1 than this one. Beside it, the median CPU
  time per record of each (``off_cpu_us``, ``on_cpu_us``): on a shared machine the
  steadier figure.
* ``bytes_per_counter`` — RSS growth per live counter at ``--counters`` counters
  (default 10 M); goal ≤ 32.
* ``restore_s`` — rebuilding 1 M counters from changelog records already read
  (:meth:`PartitionLimits.restore`); goal ≤ 10 s. Reading them from the broker is not included.

    python -m benchmarks.limits_bench [--events 200000] [--counters 10000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._common import ensure_snapshot, load_events
from filterd.config import CapRule, PolicyConfig
from filterd.limits import LimitRules, PartitionLimits
from filterd.pipeline import HeaderCache, OutputTopics, decide_partition
from filterd.router import Decider
from filterd.snapshot import load_snapshot

RESULTS = Path(__file__).resolve().parent / "results"
DAY_MS = 86_400_000
BASE_MS = 1_794_355_200_000  # 2026-11-11T00:00Z


def limits_policy() -> PolicyConfig:
    """Quiet hours and three cap rules, as issue 18 item 6 has them."""
    return PolicyConfig(
        quiet_hours="21:00-08:00",
        timezones={"86": "Asia/Shanghai", "91": "Asia/Kolkata", "1": "America/New_York"},
        caps=(
            CapRule(("marketing",), "pair", "day", 3),
            CapRule(("verification",), "recipient", "hour", 5),
            CapRule(("marketing", "transactional", "promo"), "recipient", "day", 10),
        ),
    )


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def throughput(snapshot_root: Path, values: list[bytes], repeat: int) -> dict[str, float]:
    from aiokafka.structs import ConsumerRecord

    from filterd.records import RecordBatch

    snapshot = load_snapshot(snapshot_root)
    # A day of traffic, in order: quiet hours and windows come and go.
    step = DAY_MS // len(values)
    records = [
        ConsumerRecord("in", 0, i, BASE_MS + i * step, 0, None, v, None, 0, len(v), [])
        for i, v in enumerate(values)
    ]
    outputs = OutputTopics("d", "b", "i", {"d": 4, "b": 4, "i": 4}, counters="c")
    chunk = 5_000

    def run(policy: PolicyConfig, with_limits: bool) -> tuple[float, float]:
        """Records per second, and CPU µs per record."""
        decider = Decider(snapshot, policy)
        headers = HeaderCache(decider.version)
        limits = PartitionLimits(LimitRules(policy)) if with_limits else None
        if limits is not None:
            limits.tracking = True
        gc.disable()
        try:
            cpu = time.process_time()
            start = time.perf_counter()
            for a in range(0, len(records), chunk):
                out = decide_partition(
                    decider, headers, "in", 0, records[a : a + chunk], outputs,
                    lambda: RecordBatch(1 << 20), limits, BASE_MS + 2 * DAY_MS,
                )  # fmt: skip
                for _, _, batch in out.batches:
                    batch._build()  # as the producer does before sending: its bytes, once
                if limits is not None:
                    limits.committed(out.next_offset)
            wall = time.perf_counter() - start
            return len(records) / wall, (time.process_time() - cpu) / len(records) * 1e6
        finally:
            gc.enable()

    off, on = [], []
    off_cpu, on_cpu = [], []
    for _ in range(repeat):  # interleaved: noise falls on both alike
        per_s, cpu_us = run(PolicyConfig(), False)
        off.append(per_s)
        off_cpu.append(cpu_us)
        per_s, cpu_us = run(limits_policy(), True)
        on.append(per_s)
        on_cpu.append(cpu_us)
    best_off, best_on = max(off), max(on)
    return {"off_per_s": round(best_off), "on_per_s": round(best_on),
            "ratio": round(best_on / best_off, 3),
            "off_cpu_us": round(statistics.median(off_cpu), 3),
            "on_cpu_us": round(statistics.median(on_cpu), 3)}  # fmt: skip


def memory(counters: int) -> dict[str, float]:
    rules = LimitRules(limits_policy())
    gc.collect()
    before = rss_bytes()
    limits = PartitionLimits(rules)
    # Counters as the stream makes them: per recipient per local day (one window's table).
    window = (BASE_MS + 8 * 3_600_000) // DAY_MS
    for i in range(counters):
        limits.put((2, "", 8613800000000 + i, window), 1 + (i & 3))
    after = rss_bytes()
    per = (after - before) / counters
    live = limits.live()
    assert live == counters, (live, counters)
    del limits
    gc.collect()
    return {"counters": counters, "bytes_per_counter": round(per, 1)}


def restore(counters: int) -> dict[str, float]:
    import orjson

    rules = LimitRules(limits_policy())
    window = (BASE_MS + 8 * 3_600_000) // DAY_MS
    name = rules.ids[2]
    log: list[tuple[bytes | None, bytes | None]] = [
        (orjson.dumps([name, "", 8613800000000 + i, window]), b"%d" % (1 + (i & 3)))
        for i in range(counters)
    ]
    log.append((b'"stream-time"', b"%d" % (BASE_MS + 9 * 3_600_000)))
    limits = PartitionLimits(rules)
    start = time.perf_counter()
    restored = limits.restore(log)
    seconds = time.perf_counter() - start
    assert restored == counters, (restored, counters)
    return {"counters": counters, "restore_s": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.limits_bench", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--counters", type=int, default=10_000_000)
    parser.add_argument("--restore", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--dataset", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.gettempdir()) / "filterd-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    dataset, root = ensure_snapshot(workdir, args.dataset)
    values = [v for _, v in load_events(str(dataset), args.events, seed=11)]
    result = {
        "throughput": throughput(root, values, args.repeat),
        "memory": memory(args.counters),
        "restore": restore(args.restore),
        "goals": {"ratio": 0.85, "bytes_per_counter": 32, "restore_s": 10},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "limits.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
