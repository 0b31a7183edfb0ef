"""CPU time of a variant's processes from ``/proc``, and CPU per record.

Throughput says how fast a variant went; CPU per record says what each record
cost, whatever the machine's other load: the sum of user and system time of
every process of the variant (a JVM's threads are in its process; ``filterd run
--workers N`` is a supervisor and N worker processes) over a timed window,
divided by the records that window processed. Linux only (``/proc/PID/stat``).

    window = CpuWindow(pid)      # at the start of the window
    ...                          # the variant processes `records` records
    window.us_per_record(records)
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

__all__ = [
    "CpuWindow",
    "cpu_seconds",
    "descendants",
    "follow",
    "parse_stat",
    "summarize",
    "tree_cpu_seconds",
]

PROC = Path("/proc")
#: Clock ticks per second of the times in /proc/PID/stat.
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Stat:
    """The fields of ``/proc/PID/stat`` used here (times in clock ticks)."""

    __slots__ = ("cstime", "cutime", "pid", "ppid", "stime", "utime")

    def __init__(self, pid: int, ppid: int, utime: int, stime: int, cutime: int, cstime: int):
        self.pid = pid
        self.ppid = ppid
        self.utime = utime
        self.stime = stime
        self.cutime = cutime
        self.cstime = cstime


def parse_stat(text: str) -> Stat:
    """Parse one ``/proc/PID/stat`` line (``comm`` may hold spaces and parentheses)."""
    head, sep, rest = text.rpartition(")")
    if not sep:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    pid = int(head.split("(", 1)[0])
    # Fields after comm, counted from 3 (state) as in proc(5): ppid is 4,
    # utime 14, stime 15, cutime 16, cstime 17.
    f = rest.split()
    return Stat(pid, int(f[1]), int(f[11]), int(f[12]), int(f[13]), int(f[14]))


def _read(pid: int) -> Stat | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # gone between listing and reading


def cpu_seconds(pid: int, *, reaped_children: bool = True) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads).

    ``reaped_children`` adds the time of children it has waited for (``cutime`` and
    ``cstime``): work done by short-lived helpers it started. Raises
    ``ProcessLookupError`` when the process does not exist.
    """
    stat = _read(pid)
    if stat is None:
        raise ProcessLookupError(pid)
    ticks = stat.utime + stat.stime
    if reaped_children:
        ticks += stat.cutime + stat.cstime
    return ticks / CLK_TCK


def descendants(pid: int, stats: Iterable[Stat] | None = None) -> list[int]:
    """The live descendants of ``pid`` (children, their children, ...)."""
    if stats is None:
        stats = _all_stats()
    children: dict[int, list[int]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s.pid)
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _all_stats() -> list[Stat]:
    stats = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _read(int(entry.name))) is not None:
            stats.append(stat)
    return stats


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant, plus the children they reaped."""
    stats = _all_stats()
    by_pid = {s.pid: s for s in stats}
    if pid not in by_pid:
        raise ProcessLookupError(pid)
    total = 0
    for p in (pid, *descendants(pid, stats)):
        s = by_pid.get(p)
        if s is not None:
            total += s.utime + s.stime + s.cutime + s.cstime
    return total / CLK_TCK


class CpuWindow:
    """CPU time a process tree spends from construction (or :meth:`restart`) on."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_s = tree_cpu_seconds(pid)

    def restart(self) -> None:
        self.start_s = tree_cpu_seconds(self.pid)

    def seconds(self) -> float:
        """CPU seconds spent since the window opened."""
        return tree_cpu_seconds(self.pid) - self.start_s

    def us_per_record(self, records: int) -> float:
        """CPU microseconds per record over the window so far."""
        if records <= 0:
            raise ValueError(f"records must be > 0, got {records}")
        return self.seconds() * 1e6 / records


# --------------------------------------------------------------------------- checkpoints


async def follow(
    pid: int,
    count: Callable[[], Awaitable[int]],
    *,
    total: int,
    step: int,
    started: float,
    ready: Callable[[], bool] = lambda: True,
    alive: Callable[[], bool] = lambda: True,
    stall_timeout_s: float = 120.0,
    poll_s: float = 0.05,
) -> list[dict[str, float]]:
    """Follow a variant's output until ``total`` records; checkpoints of records, time, CPU.

    ``count`` returns the records out so far; ``started`` is the ``time.monotonic()``
    of the variant's start. A checkpoint is taken at the first output record, every
    ``step`` records after it, and at the end: ``records``, ``t_s`` (since the start),
    ``cpu_s`` (:func:`tree_cpu_seconds` of ``pid``) and ``ready`` (1.0 once ``ready()``
    held, e.g. a multi-worker group settled; 0.0 before). Raises ``TimeoutError`` when
    the output stops growing, ``RuntimeError`` when ``alive()`` turns false.
    """
    checkpoints: list[dict[str, float]] = []
    next_mark = 1  # the first checkpoint is the first output record
    last_change = time.monotonic()
    last_count = -1
    while True:
        records = await count()
        now = time.monotonic()
        if records >= next_mark or (records >= total and checkpoints[-1]["records"] < records):
            # Start-up (interpreter or JVM, snapshot, group join) is before the first one.
            checkpoints.append(
                {
                    "records": records,
                    "t_s": now - started,
                    "cpu_s": tree_cpu_seconds(pid),
                    "ready": 1.0 if ready() else 0.0,
                }
            )
            next_mark = max(1, (records // step + 1) * step)
        if records >= total:
            return checkpoints
        if records != last_count:
            last_count, last_change = records, now
        elif now - last_change > stall_timeout_s:
            raise TimeoutError(f"output stalled at {records}/{total} records")
        if not alive():
            raise RuntimeError(f"variant exited with {records}/{total} records out")
        await asyncio.sleep(poll_s)


def _stretch(a: dict[str, float], b: dict[str, float]) -> dict[str, float | None]:
    records = b["records"] - a["records"]
    seconds = b["t_s"] - a["t_s"]
    cpu_s = b["cpu_s"] - a["cpu_s"]
    return {
        "from_records": int(a["records"]),
        "to_records": int(b["records"]),
        "msgs_per_s": round(records / seconds, 1) if seconds > 0 else None,
        # The kernel counts CPU in clock ticks (10 ms): a stretch that did not use one
        # whole tick cannot be measured, and "0 us per record" would be a false figure.
        "cpu_us_per_record": round(cpu_s * 1e6 / records, 2) if records > 0 and cpu_s > 0 else None,
    }


def summarize(checkpoints: list[dict[str, float]], *, warmup: int, total: int) -> dict[str, object]:
    """Cold (first output to the end of the warm-up), warm (the rest) and every stretch.

    The warm stretch starts at the first checkpoint past ``warmup`` records that was
    ``ready`` (a checkpoint without the key counts as ready). A stretch too short to
    time (no records, no time or less than one clock tick of CPU between its ends) has
    ``None`` figures.
    """
    first = checkpoints[0]
    last = checkpoints[-1]
    warm_start = next(
        (c for c in checkpoints if c["records"] >= warmup and c.get("ready", 1.0)), last
    )
    return {
        "records": total,
        "warmup_records": warmup,
        "first_output_s": round(first["t_s"], 2),
        "cold": _stretch(first, warm_start),
        "warm": _stretch(warm_start, last),
        "stretches": [_stretch(a, b) for a, b in itertools.pairwise(checkpoints)],
    }
