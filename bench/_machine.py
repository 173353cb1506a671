"""How fast the machine was during a run, so that runs on different days compare.

Absolute figures (requests/s, and so target (g)) move with the machine: a shared VM can
run several times slower from one hour to the next. Two readings say how the machine
was: a yardstick (pure-Python CPU work, timed before the run) and the share of CPU time
the hypervisor gave to other guests during it (``steal`` in ``/proc/stat``).
"""

from __future__ import annotations

import timeit
from pathlib import Path

_PROC_STAT = Path("/proc/stat")


def yardstick() -> float:
    """Microseconds for ``sum(range(1000))``, the best of 5: compare it between runs."""
    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def cpu_ticks() -> tuple[int, int] | None:
    """(all CPU ticks, stolen ticks) since boot, summed over CPUs; None off Linux."""
    try:
        fields = _PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(field) for field in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    return sum(ticks[:8]), ticks[7]


def stolen_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> str:
    """The share of CPU time stolen between two :func:`cpu_ticks` readings, as text."""
    if before is None or after is None or after[0] <= before[0]:
        return "unknown"
    share = (after[1] - before[1]) / (after[0] - before[0])
    return f"{share:.0%}"
