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

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CpuWindow", "cpu_seconds", "descendants", "parse_stat", "tree_cpu_seconds"]

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
