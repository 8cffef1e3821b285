"""What this CPU's arithmetic allows: fp32 GFLOP/s of a large matmul and of a depthwise convolution.

The matmul is the machine's practical ceiling (oneDNN/MKL at its best); the depthwise 3x3 convolution is the
op that dominates an EfficientNet trunk and is memory-bound, so it is the realistic ceiling for our network.
Other benchmarks quote their network throughput as a fraction of both.

Usage: python -m benchmarks.peak [--threads N]   (prints one JSON line)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def _best_seconds(fn, repeats: int) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peak(repeats: int = 10) -> dict[str, float]:
    """GFLOP/s (multiply-add = 2 FLOPs) with torch's current thread count.

    Returns:
        ``{"matmul_gflops": ..., "depthwise_gflops": ..., "threads": n}``; matmul 2048^3 fp32, depthwise
        3x3 stride 1 on [2, 144, 90, 120] fp32 channels-last (the size of a stride-4 MBConv stage of a
        360x480 flip pair).
    """
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = 2 * 2048**3 / _best_seconds(lambda: a @ b, repeats) / 1e9
    x = torch.randn(2, 144, 90, 120).contiguous(memory_format=torch.channels_last)
    w = torch.randn(144, 1, 3, 3)
    with torch.inference_mode():
        sec = _best_seconds(lambda: F.conv2d(x, w, padding=1, groups=144), repeats)
    depthwise = 2 * 9 * x.numel() / sec / 1e9
    return {"matmul_gflops": round(matmul, 1), "depthwise_gflops": round(depthwise, 1),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(measure_peak()))


if __name__ == "__main__":
    main()
