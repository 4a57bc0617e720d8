"""What the benchmarks read from /proc: a process tree's CPU time and the machine's load average.

`edge-agent serve` with a safety cell is a supervisor with two children (the cell and the main process),
so a server's CPU is that of the process and all its descendants, read from /proc/<pid>/stat (utime +
stime, in clock ticks) and summed over the tree as it is at the moment of reading.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None if it has gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces or parentheses itself: split after the last one.
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))  # field 4 of stat: ppid
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants (stat fields 14 and 15)."""
    total = 0
    for one in descendants(pid):
        fields = _stat_fields(one)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS_PER_S


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg says them ("0.52/0.40/0.31")."""
    return "/".join((PROC / "loadavg").read_text().split()[:3])


def nice_of(pid: int) -> int:
    """The nice value of a process's main thread."""
    return os.getpriority(os.PRIO_PROCESS, pid)
