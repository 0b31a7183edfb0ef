"""CPU per record (benchmarks/cpu.py): /proc parsing and process-tree CPU time.

No wall-clock figure is asserted: the processes below burn a known amount of
CPU time (measured by themselves with ``time.process_time``), and the readings
from /proc must account for at least that much.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import cpu

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

# Burns CPU until this process has used SECONDS of it, says so, then sleeps (no more CPU).
_BURN = """
import sys, time
need = float(sys.argv[1])
while time.process_time() < need:
    pass
print("done", flush=True)
time.sleep(60)
"""


def test_parse_stat_with_parentheses_and_spaces_in_the_name() -> None:
    line = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 500 0 0 0 123 45 6 7 20 0 3 0 1 2 3"
    stat = cpu.parse_stat(line)
    assert (stat.pid, stat.ppid) == (4242, 17)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (123, 45, 6, 7)


def test_parse_stat_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a /proc stat line"):
        cpu.parse_stat("no such line")


def _burner(seconds: float, *, via_shell: bool = False) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", _BURN, str(seconds)]
    if via_shell:
        # A parent that only waits: the CPU is its child's, found as a descendant.
        argv = ["/bin/sh", "-c", " ".join(f"'{a}'" for a in argv)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "done"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_cpu_seconds_counts_the_time_a_process_burned() -> None:
    proc = _burner(0.3)
    try:
        tick = 1.0 / cpu.CLK_TCK
        assert cpu.cpu_seconds(proc.pid) >= 0.3 - 2 * tick
    finally:
        _stop(proc)
    with pytest.raises(ProcessLookupError):
        cpu.cpu_seconds(proc.pid)


def test_tree_cpu_seconds_includes_descendants() -> None:
    proc = _burner(0.3, via_shell=True)
    try:
        tick = 1.0 / cpu.CLK_TCK
        assert cpu.descendants(proc.pid), "the shell's child is its descendant"
        assert cpu.cpu_seconds(proc.pid) < 0.3 - 2 * tick  # the shell itself did little
        assert cpu.tree_cpu_seconds(proc.pid) >= 0.3 - 2 * tick
    finally:
        _stop(proc)


def test_window_counts_only_what_was_spent_inside_it() -> None:
    proc = _burner(0.3)
    try:
        window = cpu.CpuWindow(proc.pid)
        time.sleep(0.2)  # the burner sleeps too: nothing is spent
        tick = 1.0 / cpu.CLK_TCK
        assert window.seconds() <= 2 * tick
        assert window.us_per_record(1000) == pytest.approx(window.seconds() * 1e3)
        with pytest.raises(ValueError, match="records must be > 0"):
            window.us_per_record(0)
    finally:
        _stop(proc)


def test_window_per_record_divides_the_window() -> None:
    # A window opened on ourselves around a loop that burns 0.2 s of CPU.
    import os

    window = cpu.CpuWindow(os.getpid())
    start = time.process_time()
    while time.process_time() - start < 0.2:
        pass
    per_record = window.us_per_record(100)
    tick = 1.0 / cpu.CLK_TCK
    assert per_record >= (0.2 - 2 * tick) * 1e6 / 100
    # What the window saw since, divided the same way, is no less.
    assert window.seconds() * 1e6 / 100 >= per_record


def test_warm_summary_splits_cold_and_warm_at_the_warmup() -> None:
    from benchmarks.warm import summarize

    # First output at 2 s; 100k records per second and 20 µs each until 200k, then
    # 200k records per second and 5 µs each.
    checkpoints = [
        {"records": 1_000, "t_s": 2.0, "cpu_s": 10.0},
        {"records": 101_000, "t_s": 3.0, "cpu_s": 12.0},
        {"records": 201_000, "t_s": 4.0, "cpu_s": 14.0},
        {"records": 401_000, "t_s": 5.0, "cpu_s": 15.0},
    ]
    s = summarize(checkpoints, warmup=200_000, total=401_000)
    assert s["first_output_s"] == 2.0
    assert s["cold"] == {
        "from_records": 1_000, "to_records": 201_000, "msgs_per_s": 100_000.0,
        "cpu_us_per_record": 20.0,
    }  # fmt: skip
    assert s["warm"] == {
        "from_records": 201_000, "to_records": 401_000, "msgs_per_s": 200_000.0,
        "cpu_us_per_record": 5.0,
    }  # fmt: skip
    assert len(s["stretches"]) == 3  # type: ignore[arg-type]


def test_warm_window_opens_at_the_first_ready_checkpoint_past_the_warmup() -> None:
    # Two workers: the group settled (ready) only at 301k; the warm stretch starts there.
    checkpoints = [
        {"records": 1_000, "t_s": 2.0, "cpu_s": 10.0, "ready": 0.0},
        {"records": 201_000, "t_s": 4.0, "cpu_s": 14.0, "ready": 0.0},
        {"records": 301_000, "t_s": 5.0, "cpu_s": 15.0, "ready": 1.0},
        {"records": 501_000, "t_s": 6.0, "cpu_s": 16.0, "ready": 1.0},
    ]
    s = cpu.summarize(checkpoints, warmup=200_000, total=501_000)
    assert s["warm"] == {
        "from_records": 301_000, "to_records": 501_000, "msgs_per_s": 200_000.0,
        "cpu_us_per_record": 5.0,
    }  # fmt: skip
    # A window with no records in it cannot be timed: no figure rather than zero.
    short = cpu.summarize(checkpoints[:1], warmup=0, total=1_000)
    assert short["warm"]["cpu_us_per_record"] is None  # type: ignore[index]
    assert short["warm"]["msgs_per_s"] is None  # type: ignore[index]
    # A stretch that used less than one kernel clock tick of CPU: too little to measure.
    idle = [
        {"records": 1_000, "t_s": 2.0, "cpu_s": 10.0},
        {"records": 3_000, "t_s": 2.5, "cpu_s": 10.0},
    ]
    s = cpu.summarize(idle, warmup=0, total=3_000)
    assert s["warm"]["cpu_us_per_record"] is None  # type: ignore[index]
    assert s["warm"]["msgs_per_s"] == 4_000.0  # type: ignore[index]


async def test_follow_checkpoints_first_output_every_step_and_the_end() -> None:
    import os

    # Output grows by 70 records per poll; this process burns CPU between polls.
    seen = iter([0, 0, 70, 140, 210, 280, 350, 420])
    polls = 0

    async def count() -> int:
        nonlocal polls
        polls += 1
        start = time.process_time()
        while time.process_time() - start < 0.02:
            pass
        return next(seen)

    checkpoints = await cpu.follow(
        os.getpid(), count, total=400, step=100, started=time.monotonic(),
        ready=lambda: polls >= 5, poll_s=0.0,
    )  # fmt: skip
    assert [c["records"] for c in checkpoints] == [70, 140, 210, 350, 420]
    assert [c["ready"] for c in checkpoints] == [0.0, 0.0, 1.0, 1.0, 1.0]
    # CPU time only grows, and the poll loop's own burning shows in it.
    cpus = [c["cpu_s"] for c in checkpoints]
    assert cpus == sorted(cpus)
    assert cpus[-1] > cpus[0]


async def test_follow_stops_when_the_variant_dies_or_stalls() -> None:
    import os

    async def nothing() -> int:
        return 0

    with pytest.raises(RuntimeError, match="exited with 0/10"):
        await cpu.follow(
            os.getpid(), nothing, total=10, step=5, started=0.0, alive=lambda: False, poll_s=0.0
        )
    with pytest.raises(TimeoutError, match="stalled at 0/10"):
        await cpu.follow(
            os.getpid(), nothing, total=10, step=5, started=0.0, stall_timeout_s=0.0, poll_s=0.001
        )
