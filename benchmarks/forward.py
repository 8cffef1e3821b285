"""Per-click latency and GFLOPs of every architecture on this machine.

For each architecture, network-input long side (4:3 images) and flip setting, it times one
predictor click (a second click: gate 1, FFCM and CFFM active, no Zoom-In so the input size is
exactly the one asked for) and prints one JSON line:

    {"arch": "lite0", "long_side": 480, "input": [360, 480], "flip": true, "ms_median": ...,
     "ms_min": ..., "repeats": 5, "gflops": ..., "params_m": ..., "threads": 2, "device": "cpu"}

GFLOPs count one forward pass of one image (multiply-add = 2 FLOPs), from torch's FLOP counter.
Usage: python -m benchmarks.forward [--arch lite0 hrnet18 ...] [--sizes 480 720] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from model import ARCHS, Click, FCFIPredictor, build_model
from model.clicks import points_tensor


def gflops(net: torch.nn.Module, h: int, w: int) -> float:
    x = torch.rand(1, 4, h, w)
    pts = points_tensor([[(h / 2, w / 2, True), (h / 4, w / 4, False)]])
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(x, pts, torch.tensor([[h / 4, w / 4, 0.0]]), 1.0)
    return counter.get_total_flops() / 1e9


def time_click(net: torch.nn.Module, h: int, w: int, flip: bool, repeats: int) -> list[float]:
    pred = FCFIPredictor(net, zoom_in=False, flip=flip, max_size=max(h, w))
    rng = np.random.default_rng(0)
    pred.set_image(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    _, state = pred.predict([Click(w / 2, h / 2, True)])
    clicks = [Click(w / 2, h / 2, True), Click(w / 4, h / 4, False)]
    pred.predict(clicks, state)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred.predict(clicks, state)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[480, 720], help="network-input long sides")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for arch in args.arch:
        torch.manual_seed(0)
        net = build_model(arch).eval()
        params = sum(p.numel() for p in net.parameters()) / 1e6
        for long_side in args.sizes:
            h, w = long_side * 3 // 4, long_side
            flops = gflops(net, h, w)
            for flip in (False, True):
                times = time_click(net, h, w, flip, args.repeats)
                print(json.dumps({
                    "arch": arch, "long_side": long_side, "input": [h, w], "flip": flip,
                    "ms_median": round(statistics.median(times), 1), "ms_min": round(min(times), 1),
                    "repeats": args.repeats, "gflops": round(flops, 2), "params_m": round(params, 2),
                    "threads": args.threads, "device": "cpu", "torch": torch.__version__,
                }), flush=True)


if __name__ == "__main__":
    main()
