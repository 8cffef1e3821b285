"""Threads per click: the cores other processes leave free."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from backend.serve.cpu_share import CpuShare, _proc_times


class Fake:
    """A clock and a /proc reader driven by the test: (all CPUs' busy seconds, this process's CPU seconds)."""

    def __init__(self) -> None:
        self.t, self.busy, self.own = 0.0, 100.0, 10.0

    def clock(self) -> float:
        return self.t

    def read(self) -> tuple[float, float]:
        return self.busy, self.own

    def advance(self, seconds: float, others: float, ours: float = 0.0) -> None:
        self.t += seconds
        self.busy += (others + ours) * seconds
        self.own += ours * seconds


def test_threads_follow_what_other_processes_use() -> None:
    f = Fake()
    share = CpuShare(max_threads=8, cores=8, clock=f.clock, reader=f.read)
    f.advance(2.0, others=0.0)
    assert share.threads() == 8  # a free machine: every core
    assert share.choices == [1, 2, 4, 8]  # one engine per count, all built at load
    f.advance(2.0, others=3.0)
    assert share.threads() == 4 and share.others == pytest.approx(3.0)  # 5 cores free: the largest choice in them
    f.advance(2.0, others=8.0)
    assert share.threads() == 1  # never fewer than one
    f.advance(1.0, others=0.0, ours=6.0)  # our own pass is not "other" load
    assert share.threads() == 8


def test_short_gaps_keep_the_last_answer_and_max_threads_caps() -> None:
    f = Fake()
    share = CpuShare(max_threads=2, cores=4, clock=f.clock, reader=f.read, min_interval=0.05)
    f.advance(1.0, others=3.0)
    assert share.threads() == 1
    f.advance(0.01, others=0.0)  # too short to measure: same answer
    assert share.threads() == 1
    f.advance(1.0, others=0.0)
    assert share.threads() == 2  # 4 cores free, but at most max_threads
    assert CpuShare(max_threads=6, cores=6, reader=lambda: None).choices == [1, 2, 4, 6]


def test_without_proc_the_answer_is_the_maximum() -> None:
    assert CpuShare(max_threads=3, cores=4, reader=lambda: None).threads() == 3


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


@pytest.mark.skipif(_proc_times() is None or (os.cpu_count() or 1) < 2, reason="needs Linux /proc and 2+ cores")
def test_a_busy_neighbour_takes_a_core_away() -> None:
    cores = os.cpu_count() or 2
    share = CpuShare(max_threads=cores, cores=cores)
    stop = mp.Event()
    hogs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(cores - 1)]
    for h in hogs:
        h.start()
    try:
        share.threads()
        time.sleep(1.5)
        assert share.threads() == 1, f"others used {share.others:.2f} of {cores} cores"
        assert share.others >= cores - 1 - 0.4
    finally:
        stop.set()
        for h in hogs:
            h.join()
