"""Seconds per training step on the machine at hand: fp32 against bf16 autocast, with and without channels-last.

Whether bf16 autocast pays depends on the CPU (it was slower than fp32 with channels-last on a Xeon with AMX and
about 9x slower on an AVX2-only one), so ``model.training.train`` keeps ``--bf16`` off unless this says otherwise here.

Each case runs the real recipe step (:func:`model.training.step.train_step`: simulated correction rounds, the FCFI
loss, Adam, gradient clipping) on lite0 with ImageNet weights, on one synthetic batch (random pixels, an
ellipse as the object, its centre clicked). Every case runs the same step numbers, so the same simulated rounds
(drawn from ``(seed, step)``) and first-click batches: the comparison is paired. Prints one JSON line per crop::

    {"crop": [H, W], "batch": B, "threads": T, "steps": N, "cpu": "...",
     "sec_per_step": {"fp32": s, "fp32_channels_last": s, "bf16": s, "bf16_channels_last": s},
     "bf16_cl_vs_fp32_cl": ratio}

``ratio`` > 1 means bf16 autocast (channels-last) is slower than the fp32 default.

Usage: python -m benchmarks.train_speed [--crops 256x256 320x480] [--steps 6] [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from model import build_model
from model.training.step import Batch, StepConfig, param_groups, train_step


def synthetic_batch(batch: int, crop: tuple[int, int], seed: int = 0) -> Batch:
    """``batch`` samples of ``crop`` size: images [B, 3, H, W] in [0, 1], masks [B, 1, H, W] in {0, 1} (an
    ellipse per sample), clicks ``[(y, x, True)]`` at each ellipse's centre."""
    rng = np.random.default_rng(seed)
    h, w = crop
    yy, xx = np.mgrid[:h, :w]
    masks, clicks = [], []
    for _ in range(batch):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
        masks.append((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32))
        clicks.append([(float(cy), float(cx), True)])
    images = torch.from_numpy(rng.random((batch, 3, h, w), dtype=np.float32))
    return images, torch.from_numpy(np.stack(masks))[:, None], clicks


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_case(batch: Batch, bf16: bool, channels_last: bool, steps: int, warmup: int) -> float:
    """Median seconds per step of ``steps`` timed steps after ``warmup`` untimed ones, on a fresh network."""
    torch.manual_seed(0)
    net = build_model("lite0", pretrained=True).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    cfg = StepConfig(autocast=bf16, channels_last=channels_last)
    opt = torch.optim.Adam(param_groups(net, 1e-4, cfg.backbone_lr_mult), lr=1e-4)
    times = []
    for step in range(warmup + steps):
        images, masks, clicks = batch
        t0 = time.perf_counter()
        # train_step extends the clicks in place: give every step the batch's own initial clicks
        train_step(net, opt, (images, masks, [list(c) for c in clicks]), cfg, 1e-4, seed=0, step=step)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", nargs="+", default=["256x256", "320x480"], help="HxW crop sizes")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per case")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = {"fp32": (False, False), "fp32_channels_last": (False, True),
             "bf16": (True, False), "bf16_channels_last": (True, True)}
    for text in args.crops:
        crop = tuple(int(v) for v in text.lower().split("x"))
        batch = synthetic_batch(args.batch, crop)
        sec = {name: round(time_case(batch, bf16, cl, args.steps, args.warmup), 3)
               for name, (bf16, cl) in cases.items()}
        print(json.dumps({"crop": list(crop), "batch": args.batch, "threads": args.threads, "steps": args.steps,
                          "cpu": cpu_name(), "sec_per_step": sec,
                          "bf16_cl_vs_fp32_cl": round(sec["bf16_channels_last"] / sec["fp32_channels_last"], 2)}),
              flush=True)


if __name__ == "__main__":
    main()
