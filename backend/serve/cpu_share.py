"""How many CPU threads a click may use: all cores when the CPU is free, fewer when other processes use it.

A network pass split over every core collapses when another process holds one of them: each thread waits for
the slowest at every layer. Measured on a 2-core machine (``benchmarks/shared_cpu.py``,
``benchmarks/results/shared_cpu.jsonl``): with one busy competitor an OpenVINO click took 404 ms on 2 threads and
129 ms on 1; with the CPU free, 83 ms on 2 threads and 156 ms on 1. So before each click the inference worker asks
:class:`CpuShare` how many cores other processes used since the last click and runs on the rest.

Linux only (``/proc``); elsewhere :meth:`CpuShare.threads` always answers the maximum.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def _proc_times() -> tuple[float, float] | None:
    """(busy seconds of all CPUs, CPU seconds of this process) since boot, or None without ``/proc``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / ticks, (int(own[11]) + int(own[12])) / ticks  # utime + stime of this process


class CpuShare:
    """Cores other processes keep busy, measured between calls.

    Args:
        max_threads: the most threads a click uses (the cores, by default).
        cores: the machine's cores.
        clock: monotonic seconds (tests pass a fake); reader: :func:`_proc_times` or a fake.
        min_interval: shorter gaps reuse the previous answer (too few clock ticks to tell).
    """

    def __init__(self, max_threads: int, cores: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 reader: Callable[[], tuple[float, float] | None] = _proc_times, min_interval: float = 0.05) -> None:
        self.max_threads = max(1, max_threads)
        self.cores = cores or os.cpu_count() or 1
        #: the thread counts a pass may get: powers of two and the maximum (a runtime compiles one engine per count,
        #: so the worker builds them all at load instead of during a click).
        self.choices = sorted({1 << k for k in range(self.max_threads.bit_length()) if 1 << k <= self.max_threads}
                              | {self.max_threads})
        self._clock = clock
        self._reader = reader
        self.min_interval = min_interval
        self._last = (clock(), reader())
        #: cores other processes used over the last measured interval (0.0 until one was measured).
        self.others = 0.0

    def threads(self) -> int:
        """Threads for the next pass: the largest of :attr:`choices` that fits in the cores others left free."""
        now, times = self._clock(), self._reader()
        then, before = self._last
        if times is None or before is None:
            return self.max_threads
        elapsed = now - then
        if elapsed >= self.min_interval:
            busy = (times[0] - before[0]) - (times[1] - before[1])  # all CPUs' busy time minus ours
            self.others = min(max(busy / elapsed, 0.0), float(self.cores))
            self._last = (now, times)
        free = int(self.cores - self.others + 0.5)
        return max([c for c in self.choices if c <= free] or [1])
