"""Per-click latency of the HTTP service on a 1-megapixel image, split by stage, per runtime.

Starts a stand-in Label Studio file server and, for each runtime of ``--runtimes`` in turn, the backend
(in-process, real HTTP on loopback, the served settings: Zoom-In and flip on). Each runtime clicks ``--sessions``
10-click sessions (positive and negative clicks, each request carrying all clicks so far, as Label Studio sends
them), every session on its own image, so each first click decodes a new image. Prints one JSON line:

* per runtime: the click's median and p95 (all clicks), the first click's median and p95 after the task-open
  request Label Studio sends (``/predict`` without clicks; the backend fetches the image then) and cold (a new
  image: download, decode, EXIF, resize and the pass, on the click's path), the later clicks' median and p95,
  per stage (image, feedback, network, encode, store, http) the median and p95 milliseconds from the
  ``Server-Timing`` header (``http`` is the client-measured time minus the server's total), and the measured
  matmul peak (``benchmarks/forward.py`` gives the network's share of it);
* ``speedup``: the first runtime's median click over each runtime's;
* ``store_after_answer_ms``, ``non_network_share`` and ``rle_speedup`` (our brush-RLE encoder against
  ``label_studio_sdk.converter.brush.mask2rle`` on the last session's masks, byte-for-byte in the same run).

On a GPU: ``DEVICE=cuda python -m benchmarks.serve --runtimes torch`` (``--device`` defaults to the backend's
``DEVICE`` setting; the exported runtimes are CPU-only). Where ``label-studio-sdk`` is not installed (the GPU
machine), ``rle`` says so instead of comparing.

Usage: python -m benchmarks.serve [--runtimes torch openvino] [--sessions 5] [--clicks 10] [--threads N] [--device D]
       python -m benchmarks.serve --runtimes openvino --corrections-off   # the served default against the one before
                                                                          # the local merge and the click guarantee
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from PIL import Image
from werkzeug.serving import make_server

from backend.app import create_app
from backend.ls.rle import decode_rle, encode_mask
from backend.settings import Settings
from benchmarks.peak import measure_peak
from benchmarks.stand_in import TOKEN, predict_payload, serve_files, session_clicks
from model import build_model, default_checkpoint_path, save_checkpoint
from model.runtime import RUNTIMES

W, H = 1155, 866  # 1.0 megapixel


def make_image(seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A 1155x866 JPEG with a yellow ellipse (different noise per ``seed``) and the ellipse's mask."""
    rng = np.random.default_rng(seed)
    rgb = rng.normal(70, 20, (H, W, 3)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    obj = ((yy - 430) / 260.0) ** 2 + ((xx - 580) / 330.0) ** 2 <= 1
    rgb[obj] = (200, 170, 60)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), obj


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


#: ``--corrections-off``: the settings of the served default before the local merge and the click guarantee.
NO_CORRECTIONS = {"local_merge": False, "click_guarantee": -1}


def run_runtime(runtime: str, checkpoint: str, ls_url: str, images: list[tuple[str, np.ndarray]], clicks: int,
                threads: int, open_delay: float, device: str = "cpu", overrides: dict[str, Any] | None = None
                ) -> tuple[dict, list[np.ndarray], float]:
    """Serve with ``runtime`` (and ``overrides`` of the served settings) and click every image's session; returns
    (summary, last session's masks, mean background store time per click in ms)."""
    settings = Settings(checkpoint=checkpoint, label_studio_url=ls_url, label_studio_api_key=TOKEN,
                        torch_threads=threads, log_level="WARNING", runtime=runtime, device=device,
                        model_dir=Path(tempfile.mkdtemp(prefix="serve-bench-")), **(overrides or {}))
    app = create_app(settings)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    app.config["worker"].wait_ready(300)
    url = f"http://127.0.0.1:{http.server_port}/predict"
    parts: dict[str, list[float]] = {}
    first, cold, later, passes = [], [], [], []
    masks: list[np.ndarray] = []
    session = requests.Session()
    for task, (path, obj) in enumerate(images, start=1):
        masks = []
        points = session_clicks(obj, clicks, seed=task, first=(580.0, 430.0))
        opened = task % 2 == 1
        if opened:
            # As Label Studio does when the annotator opens the task; the first click follows a moment later.
            open_body = predict_payload(task, path, W, H, [])
            del open_body["params"]
            session.post(url, json=open_body, timeout=300).raise_for_status()
            time.sleep(open_delay)
        for k in range(1, len(points) + 1):
            payload = predict_payload(task, path, W, H, points[:k])
            t0 = time.perf_counter()
            r = session.post(url, json=payload, timeout=300)
            client_ms = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            timing = {}
            for item in r.headers["Server-Timing"].split(","):
                name, _, dur = item.strip().partition(";dur=")
                timing[name] = float(dur)
            timing["http"] = client_ms - timing["total"]
            for name, value in timing.items():
                parts.setdefault(name, []).append(value)
            (later if k > 1 else first if opened else cold).append(client_ms)
            passes.append(int(r.headers["X-Network-Passes"]))
            region = r.json()["results"][0]["result"][0]
            masks.append(decode_rle(region["value"]["rle"], H, W) > 0)
    states = app.config["service"].states
    states.flush()
    store_ms = states.write_ms / max(states.written, 1)
    runtime_used = app.config["worker"].runtime
    http.shutdown()
    totals = first + cold + later
    stages = ["image", "feedback", "network", "encode", "store", "http"]
    summary = {
        "runtime_used": runtime_used,
        "click_ms": {"median": round(statistics.median(totals), 1), "p95": round(pct(totals, 95), 1)},
        "first_click_ms": {"median": round(statistics.median(first), 1), "p95": round(pct(first, 95), 1)},
        "first_click_cold_ms": {"median": round(statistics.median(cold), 1), "p95": round(pct(cold, 95), 1)},
        "later_click_ms": {"median": round(statistics.median(later), 1), "p95": round(pct(later, 95), 1)},
        "stages_ms": {s: {"median": round(statistics.median(parts[s]), 1), "p95": round(pct(parts[s], 95), 1)}
                      for s in stages if s in parts},
        "non_network_share": round(1 - statistics.median(parts["network"]) / statistics.median(totals), 4),
        "passes_per_click": round(sum(passes) / len(passes), 2),
        "mask_fraction": round(float(np.mean(masks[-1])), 4),
    }
    return summary, masks, store_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped weights, else a random lite0")
    ap.add_argument("--runtimes", nargs="+", default=["torch", "openvino"], choices=RUNTIMES,
                    help="served runtimes to compare, the first is the reference of 'speedup'")
    ap.add_argument("--sessions", type=int, default=8, help="sessions per runtime, each on its own image; every "
                    "other one starts cold, the others with the task-open request Label Studio sends")
    ap.add_argument("--open-delay", type=float, default=0.5, help="seconds between opening a task and its first click")
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default=Settings.from_env().device, help="cpu or cuda (default: DEVICE)")
    ap.add_argument("--corrections-off", action="store_true",
                    help="also serve each runtime without the local merge and the click guarantee (the default before "
                         "them), named RUNTIME-no-corrections, and report the served default's median click over it "
                         "(corrections_cost)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp())
    checkpoint = args.checkpoint
    weights = "given"
    if checkpoint is None:
        if default_checkpoint_path().exists():
            checkpoint, weights = str(default_checkpoint_path()), "shipped"
        else:
            torch.manual_seed(0)
            checkpoint, weights = str(save_checkpoint(build_model("lite0").eval(), tmp / "random.pth")), "random"
    peak = measure_peak()
    results: dict[str, dict] = {}
    masks: list[np.ndarray] = []
    store_ms = 0.0
    variants = [(rt, rt, None) for rt in args.runtimes]
    if args.corrections_off:  # the variant without first, so neither always runs on a warmer machine
        variants = [v for rt in args.runtimes for v in ((f"{rt}-no-corrections", rt, NO_CORRECTIONS), (rt, rt, None))]
    for r_i, (name, runtime, overrides) in enumerate(variants):
        # Fresh image bytes per run and session, so no run finds an image already decoded.
        files, images = {}, []
        for s_i in range(args.sessions):
            data, obj = make_image(seed=1000 * r_i + s_i)
            path = f"/data/upload/{r_i}/bench{s_i}.jpg"
            files[path] = data
            images.append((path, obj))
        server = serve_files(files)
        results[name], masks, store_ms = run_runtime(runtime, checkpoint, f"http://127.0.0.1:{server.server_port}",
                                                     images, args.clicks, args.threads, args.open_delay,
                                                     args.device, overrides)
        server.shutdown()

    ref = results[args.runtimes[0]]["click_ms"]["median"]
    cost = {rt: {k: round(results[rt][k]["median"] / results[f"{rt}-no-corrections"][k]["median"], 3)
                 for k in ("click_ms", "later_click_ms")}
            for rt in args.runtimes} if args.corrections_off else None
    print(json.dumps({
        "image": [H, W], "clicks": args.clicks, "sessions": args.sessions, "weights": weights, "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "threads": args.threads, "cpu_count": os.cpu_count(), "torch": torch.__version__, "peak": peak,
        "runtimes": results,
        "speedup": {k: round(ref / v["click_ms"]["median"], 2) for k, v in results.items()},
        "corrections_cost": cost,
        "store_after_answer_ms": round(store_ms, 1),
        "rle": compare_rle(masks),
    }))


def compare_rle(masks: list[np.ndarray]) -> dict[str, Any]:
    """Our brush-RLE encoder against Label Studio's own, byte for byte and in time, on the same masks."""
    try:
        from label_studio_sdk.converter import brush
    except ImportError:
        return {"skipped": "label-studio-sdk is not installed"}
    ours_ms, sdk_ms, identical = [], [], True
    for m in masks:
        u8 = m.astype(np.uint8) * 255
        t0 = time.perf_counter()
        a = encode_mask(m)
        ours_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        b = brush.mask2rle(u8)
        sdk_ms.append((time.perf_counter() - t0) * 1000)
        identical &= list(a) == list(b)
    return {"ours_ms": round(statistics.median(ours_ms), 3), "sdk_ms": round(statistics.median(sdk_ms), 3),
            "speedup": round(statistics.median(sdk_ms) / max(statistics.median(ours_ms), 1e-6), 1),
            "identical": identical}


if __name__ == "__main__":
    main()
