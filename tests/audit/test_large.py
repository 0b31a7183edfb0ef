"""A topic of 500k records is summarised in bounded memory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson

from tests.support.produce import Outgoing, produce

from .streams import BASE_MS, BLOCK_REASONS

RECORDS = 500_000
PARTITIONS = 3
SENDERS = 300
# The records are ~45 MB on the wire and several times that as Python objects; reading
# them must cost the process far less than holding them would.
GROWTH_BYTES = 50 * 1024 * 1024


async def produce_small(bootstrap: str, topic: str) -> Counter[str]:
    """500k small block records, sent in whole producer batches; returns the reason counts."""
    reasons: Counter[str] = Counter()

    def records() -> Iterator[Outgoing]:
        for i in range(RECORDS):
            reason = BLOCK_REASONS[(i * 7) % len(BLOCK_REASONS)]
            reasons[reason] += 1
            value = b'{"id":"m%d","sender":"1069%d","recipient":"1381234%04d"}' % (
                i,
                i % SENDERS,
                i % 10_000,
            )
            headers = [
                ("filterd-reason", reason.encode()),
                ("filterd-snapshot", b"v1"),
                ("filterd-route", b"block"),
            ]
            yield None, value, BASE_MS + i, headers

    await produce(bootstrap, topic, records(), PARTITIONS)
    return reasons


def write_config(path: Path, bootstrap: str, block: str) -> Path:
    path.write_text(f'[kafka]\nbootstrap_servers = "{bootstrap}"\n[topics]\nblock = "{block}"\n')
    return path


def run_measured(args: list[str], out: Path) -> tuple[int, bytes, int]:
    """Run ``python -m filterd ARGS``; return its exit code, stdout and peak RSS (bytes).

    ``wait4`` gives the resource usage of exactly this child: tracemalloc would
    multiply the run time by ten, and RUSAGE_CHILDREN mixes in every other child
    the test session ever waited for.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILTERD_")}
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "filterd", *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    proc.stderr.close()
    return proc.returncode, out.read_bytes(), usage.ru_maxrss * 1024


async def test_half_a_million_records_in_bounded_memory(
    kafka_bootstrap: str, new_topic, tmp_path: Path
) -> None:
    big, empty = await new_topic(partitions=PARTITIONS), await new_topic(partitions=PARTITIONS)
    reasons = await produce_small(kafka_bootstrap, big)
    runs = {}
    for name, topic in (("empty", empty), ("big", big)):
        config = write_config(tmp_path / f"{name}.toml", kafka_bootstrap, topic)
        args = ["audit", "summary", "--config", str(config), "--format", "json", "--top", "5"]
        code, stdout, rss = await asyncio.to_thread(run_measured, args, tmp_path / f"{name}.json")
        assert code == 0, stdout
        runs[name] = (orjson.loads(stdout), rss)

    summary, rss = runs["big"]
    assert summary["total"] == RECORDS
    assert summary["by_reason"] == dict(reasons)
    assert len(summary["by_sender"]) == 5
    assert sum(summary["by_hour"].values()) == RECORDS
    assert runs["empty"][0]["total"] == 0
    # What reading 500k records adds to the process, over the same command on an empty
    # topic: fetch buffers and counters, not the records (~100 MB as Python objects).
    growth = rss - runs["empty"][1]
    assert growth < GROWTH_BYTES, f"peak RSS grew by {growth / 1e6:.1f} MB"
