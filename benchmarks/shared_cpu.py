"""Click latency when other work shares the CPU: which thread count to default to.

For each number of busy competitor processes (``--hogs``, each a pure-Python loop on one core) and each runtime, a
predictor click (360x480 flip pair, second click) is timed with 1 thread, with all cores, and adaptive (threads
chosen before each click from what other processes use, as the service does without ``TORCH_THREADS``). Prints
one JSON line with the median and p95 milliseconds per case.

Usage: python -m benchmarks.shared_cpu [--hogs 0 1 2] [--runtimes openvino torch] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time

import numpy as np
import torch

from backend.serve.cpu_share import CpuShare
from model import Click, FCFIPredictor, build_model, default_checkpoint_path, load_checkpoint


def _hog(stop: mp.Event) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def click_ms(net: torch.nn.Module, runtime: str, threads: int | None, repeats: int) -> list[float]:
    """Clicks on ``threads`` threads; None: chosen before each click as the service does (backend.serve.cpu_share)."""
    cores = os.cpu_count() or 1
    torch.set_num_threads(threads or cores)  # the runtimes take torch's thread count (model.runtime)
    pred = FCFIPredictor(net, zoom_in=False, flip=True, max_size=480, runtime=runtime)
    share = CpuShare(cores) if threads is None else None
    if share is not None:
        for n in sorted({1, cores}):  # as the worker's warm-up: both engines built before timing
            pred.set_threads(n)
            pred.warmup()
    h, w = 360, 480
    pred.set_image(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    _, state = pred.predict([Click(w / 2, h / 2, True)])
    clicks = [Click(w / 2, h / 2, True), Click(w / 4, h / 4, False)]
    pred.predict(clicks, state)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if share is not None:
            pred.set_threads(share.threads())
        pred.predict(clicks, state)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hogs", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runtimes", nargs="+", default=["openvino", "torch"])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    path = default_checkpoint_path()
    net = load_checkpoint(path) if path.exists() else build_model("lite0").eval()
    cores = os.cpu_count() or 1
    rows = []
    for hogs in args.hogs:
        stop = mp.Event()
        procs = [mp.Process(target=_hog, args=(stop,), daemon=True) for _ in range(hogs)]
        for p in procs:
            p.start()
        time.sleep(0.5)
        for runtime in args.runtimes:
            for threads in [*sorted({1, cores}), None]:
                times = click_ms(net, runtime, threads, args.repeats)
                rows.append({"hogs": hogs, "runtime": runtime, "threads": threads or "adaptive",
                             "median_ms": round(statistics.median(times), 1),
                             "p95_ms": round(float(np.percentile(times, 95)), 1)})
        stop.set()
        for p in procs:
            p.join()
    print(json.dumps({"cores": cores, "cases": rows, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
