"""The network pass of a click on this CPU: every runtime side by side, against the machine's peak.

Default mode (runtimes): lite0 with the shipped weights (or random ones), a 360x480 flip pair (the served
setting for a Zoom-In click), one predictor click per repeat through each runtime of ``--runtimes``, all in
this one process and run. Prints one JSON line::

    {"peak": {"matmul_gflops", "depthwise_gflops", "threads"}, "input": [360, 480], "flip": true,
     "gflops_per_click": ..., "runtimes": {name: {"click_ms": {"median", "p95"}, "stages_ms": {"prepare",
     "network", "post"}, "new_shape_ms": {"median", "p95"}, "gflops_per_s", "of_matmul_peak",
     "of_depthwise_peak", "max_abs_diff"}}, "speedup_vs_eager": {name: ratio}, "profile": [...]}

``eager`` is the network called as it is (what training and evaluation use), ``torch`` the served PyTorch
path (channels-last), ``torch.compile`` inductor with dynamic shapes (only with ``--compile``: it compiles
for minutes), ``onnxruntime`` and ``openvino`` the exported core (:mod:`model.runtime`). ``new_shape_ms`` is
a click whose input size the runtime has not seen (every Zoom-In ROI has its own); ``max_abs_diff`` compares
the logits with ``eager``; ``profile`` lists eager's heaviest ops and ``modules_ms`` its time by part of the
network (trunk depthwise / pointwise convolutions and BatchNorm, click stem, FFCM, CFFM, ...) (``--profile``).

Architecture mode (``--arch lite0 hrnet18 ...``): eager per architecture, network-input long side and flip,
one JSON line per case with GFLOPs and parameters, as before.

Usage: python -m benchmarks.forward [--runtimes eager torch onnxruntime openvino] [--compile] [--profile]
       python -m benchmarks.forward --arch lite0 hrnet18 [--sizes 480 720]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.peak import measure_peak
from model import ARCHS, Click, FCFIPredictor, build_model, default_checkpoint_path, load_checkpoint
from model.clicks import points_tensor
from model.runtime import RUNTIMES, available


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


def arch_mode(args: argparse.Namespace) -> None:
    """One JSON line per architecture, size and flip setting (eager, random weights)."""
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


class CompiledRunner:
    """``torch.compile`` (inductor, dynamic shapes) of the network; benchmark only."""

    name = "torch.compile"

    def __init__(self, net: torch.nn.Module) -> None:
        self.fn = torch.compile(net, dynamic=True)

    def __call__(self, image, points, new_points, gate):
        with torch.inference_mode():
            return self.fn(image, points, new_points, gate)


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def time_runtime(net: torch.nn.Module, runtime: str, h: int, w: int, repeats: int,
                 reference: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """Click timings of one runtime: a repeated second click at (h, w) and clicks at unseen sizes."""
    pred = FCFIPredictor(net, zoom_in=False, flip=True, max_size=max(h, w),
                         runtime=None if runtime in ("eager", "torch.compile") else runtime)
    if runtime == "torch.compile":
        pred.runner = CompiledRunner(pred.net)
    rng = np.random.default_rng(0)
    pred.set_image(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    _, state = pred.predict([Click(w / 2, h / 2, True)])
    clicks = [Click(w / 2, h / 2, True), Click(w / 4, h / 4, False)]
    probs, _ = pred.predict(clicks, state)  # warm-up at this size
    totals, stages = [], {k: [] for k in ("prepare", "network", "post")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred.predict(clicks, state)
        totals.append((time.perf_counter() - t0) * 1000)
        for k in stages:
            stages[k].append(pred.timings[k])
    # Unseen sizes: the long side stays, the short one varies (as Zoom-In ROIs do).
    new_shape = []
    for i in range(max(4, repeats // 2)):
        hh = int(rng.integers(h * 2 // 3, h)) - i
        pred.set_image(rng.integers(0, 255, (hh, w, 3), dtype=np.uint8))
        _, st = pred.predict([Click(w / 2, hh / 2, True)])
        t0 = time.perf_counter()
        pred.predict([Click(w / 2, hh / 2, True), Click(w / 4, hh / 4, False)], st)
        new_shape.append((time.perf_counter() - t0) * 1000)
    row = {"click_ms": {"median": round(statistics.median(totals), 1), "p95": _pct(totals, 95)},
           "stages_ms": {k: round(statistics.median(v), 1) for k, v in stages.items()},
           "new_shape_ms": {"median": round(statistics.median(new_shape), 1), "p95": _pct(new_shape, 95)},
           "runtime_used": pred.runtime or runtime}
    p = torch.from_numpy(probs)
    if reference is not None:
        row["max_abs_diff"] = float((p - reference).abs().max())
    return row, p


def profile_eager(net: torch.nn.Module, h: int, w: int, top: int = 12) -> list[dict]:
    """Eager's heaviest ops (self CPU time, share of the pass) for one flip-pair pass."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(2, 4, h, w)
    pts = points_tensor([[(h / 2, w / 2, True), (h / 4, w / 4, False)]] * 2)
    new = torch.tensor([[h / 4, w / 4, 0.0]] * 2)
    with torch.inference_mode():
        net(x, pts, new, torch.ones(2))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            net(x, pts, new, torch.ones(2))
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "ms": round(e.self_cpu_time_total / 1000, 2),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:top]]


def module_breakdown(net: torch.nn.Module, h: int, w: int, repeats: int = 3) -> dict[str, float]:
    """Milliseconds of one eager flip-pair pass by part of the network (forward hooks, median of ``repeats``):
    the trunk's depthwise, pointwise (1x1) and other convolutions, BatchNorm, and the FCFI parts
    (click stem, decoder skip, decoder, FFCM, CFFM, head); ``total`` is the whole pass."""
    import collections

    fe = net.feature_extractor
    parts = {"click_stem": net.maps_transform, "decoder": fe.decoder, "head": fe.head}
    for name, attr in (("click_skip", "click_skip"), ("ffcm", "correction_module"), ("cffm", "fusion_module")):
        if hasattr(fe, attr):
            parts[name] = getattr(fe, attr)
    backbone_convs = {m: ("depthwise" if m.groups > 1 else "pointwise" if m.kernel_size == (1, 1) else "conv")
                      for m in fe.backbone.modules() if isinstance(m, torch.nn.Conv2d)}
    backbone_bns = [m for m in fe.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    times: dict[str, float] = collections.defaultdict(float)
    starts: dict[int, float] = {}
    handles = []

    def hook(module: torch.nn.Module, label: str) -> None:
        def pre(*_):
            starts[id(module)] = time.perf_counter()

        def post(*_):
            times[label] += (time.perf_counter() - starts.pop(id(module))) * 1000

        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    for label, module in parts.items():
        hook(module, label)
    for module, label in backbone_convs.items():
        hook(module, f"trunk_{label}")
    for module in backbone_bns:
        hook(module, "trunk_batchnorm")
    x = torch.rand(2, 4, h, w)
    pts = points_tensor([[(h / 2, w / 2, True), (h / 4, w / 4, False)]] * 2)
    new = torch.tensor([[h / 4, w / 4, 0.0]] * 2)
    runs = []
    with torch.inference_mode():
        net(x, pts, new, torch.ones(2))
        for _ in range(repeats):
            times.clear()
            t0 = time.perf_counter()
            net(x, pts, new, torch.ones(2))
            runs.append({**times, "total": (time.perf_counter() - t0) * 1000})
    for handle in handles:
        handle.remove()
    return {k: round(statistics.median(r.get(k, 0.0) for r in runs), 1) for k in runs[0]}


def runtime_mode(args: argparse.Namespace) -> None:
    """The one-line comparison of runtimes described in the module docstring."""
    peak = measure_peak()
    path = args.checkpoint or (str(default_checkpoint_path()) if default_checkpoint_path().exists() else None)
    torch.manual_seed(0)
    net = load_checkpoint(path) if path else build_model("lite0").eval()
    h, w = args.size * 3 // 4, args.size
    flops = 2 * gflops(net, h, w)  # the flip pair: two images per click
    runtimes = list(args.runtimes) + (["torch.compile"] if args.compile else [])
    rows: dict[str, dict] = {}
    reference = None
    for name in runtimes:
        if name not in ("eager", "torch.compile") and not available(name):
            rows[name] = {"skipped": f"{name} is not installed"}
            continue
        row, probs = time_runtime(net, name, h, w, args.repeats, reference)
        if name == "eager":
            reference = probs
        net_ms = row["stages_ms"]["network"]
        row["gflops_per_s"] = round(flops / (net_ms / 1000), 1)
        row["of_matmul_peak"] = round(row["gflops_per_s"] / peak["matmul_gflops"], 3)
        row["of_depthwise_peak"] = round(row["gflops_per_s"] / peak["depthwise_gflops"], 3)
        rows[name] = row
    eager = rows.get("eager", {}).get("click_ms", {}).get("median")
    out = {"peak": peak, "weights": path or "random", "input": [h, w], "flip": True,
           "gflops_per_click": round(flops, 2),
           "arithmetic_limit_ms": round(flops / peak["matmul_gflops"] * 1000, 1),
           "runtimes": rows, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if eager:
        out["speedup_vs_eager"] = {k: round(eager / v["click_ms"]["median"], 2) for k, v in rows.items()
                                   if "click_ms" in v}
    if args.profile:
        out["profile"] = profile_eager(net, h, w)
        out["modules_ms"] = module_breakdown(net, h, w)
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", nargs="+", default=["eager", *RUNTIMES[::-1]],
                    choices=["eager", *RUNTIMES], help="runtimes to compare (default: all)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compilation)")
    ap.add_argument("--profile", action="store_true", help="add eager's heaviest ops")
    ap.add_argument("--checkpoint", default=None, help="default: the shipped weights, else random lite0")
    ap.add_argument("--size", type=int, default=480, help="network-input long side (4:3), runtime mode")
    ap.add_argument("--arch", nargs="+", choices=ARCHS, help="architecture mode: these architectures, eager")
    ap.add_argument("--sizes", nargs="+", type=int, default=[480, 720], help="long sides, architecture mode")
    ap.add_argument("--repeats", type=int, default=None, help="clicks timed per case (default 20; arch mode 5)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.arch:
        args.repeats = args.repeats or 5
        arch_mode(args)
    else:
        args.repeats = args.repeats or 20
        runtime_mode(args)


if __name__ == "__main__":
    main()
