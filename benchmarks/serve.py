"""Per-click latency of the HTTP service on a 1-megapixel image, split by stage.

Starts a stand-in Label Studio file server and the backend (in-process, real HTTP on loopback),
clicks a 10-click session (positive and negative clicks, each request carrying all clicks so far,
as Label Studio sends them) and prints one JSON line:

* per stage (image, feedback, network, encode, store, http) the median and p95 milliseconds, from the
  ``Server-Timing`` header; ``http`` is the client-measured time minus the server's total;
* ``store_after_answer_ms``: the mean time the background writer spent compressing and storing each click's
  state, after the answer had left (the ``store`` stage is only the hand-over);
* ``non_network_share``: the part of the median click that is not the network pass (aim < 10%);
* ``rle_speedup``: our brush-RLE encoder against ``label_studio_sdk.converter.brush.mask2rle`` on the
  masks of the session (aim >= 10x), checked byte-for-byte in the same run.

Usage: python -m benchmarks.serve [--checkpoint PATH] [--clicks 10] [--threads N]
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

import numpy as np
import requests
import torch
from PIL import Image
from werkzeug.serving import make_server

from backend.app import create_app
from backend.rle import decode_rle, encode_mask
from backend.settings import Settings
from benchmarks.stand_in import TOKEN, predict_payload, serve_files, session_clicks
from model import build_model, default_checkpoint_path, save_checkpoint

W, H = 1155, 866  # 1.0 megapixel


def make_image() -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = rng.normal(70, 20, (H, W, 3)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    obj = ((yy - 430) / 260.0) ** 2 + ((xx - 580) / 330.0) ** 2 <= 1
    rgb[obj] = (200, 170, 60)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), obj


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped weights, else a random lite0")
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    checkpoint = args.checkpoint
    weights = "given"
    if checkpoint is None:
        if default_checkpoint_path().exists():
            checkpoint, weights = str(default_checkpoint_path()), "shipped"
        else:
            torch.manual_seed(0)
            checkpoint, weights = str(save_checkpoint(build_model("lite0").eval(), tmp / "random.pth")), "random"
    data, obj = make_image()
    files = serve_files({"/data/upload/1/bench.jpg": data})
    ls_url = f"http://127.0.0.1:{files.server_port}"
    settings = Settings(checkpoint=checkpoint, label_studio_url=ls_url, label_studio_api_key=TOKEN,
                        torch_threads=args.threads, log_level="WARNING")
    app = create_app(settings)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    app.config["worker"].wait_ready(300)
    url = f"http://127.0.0.1:{http.server_port}/predict"

    clicks = session_clicks(obj, args.clicks, seed=1, first=(580.0, 430.0))
    parts: dict[str, list[float]] = {}
    totals, masks, passes = [], [], []
    session = requests.Session()
    for k in range(1, len(clicks) + 1):
        payload = predict_payload(1, "/data/upload/1/bench.jpg", W, H, clicks[:k])
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
        totals.append(client_ms)
        passes.append(int(r.headers["X-Network-Passes"]))
        region = r.json()["results"][0]["result"][0]
        masks.append(decode_rle(region["value"]["rle"], H, W) > 0)

    from label_studio_sdk.converter import brush

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

    med_total = statistics.median(totals)
    med_network = statistics.median(parts["network"])
    stages = ["image", "feedback", "network", "encode", "store", "http"]
    states = app.config["service"].states
    states.flush()
    print(json.dumps({
        "image": [H, W], "clicks": len(clicks), "weights": weights, "threads": args.threads,
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "network_passes": passes,
        "click_ms": {"median": round(med_total, 1), "p95": round(pct(totals, 95), 1)},
        "stages_ms": {s: {"median": round(statistics.median(parts[s]), 1), "p95": round(pct(parts[s], 95), 1)}
                      for s in stages if s in parts},
        "store_after_answer_ms": round(states.write_ms / max(states.written, 1), 1),
        "non_network_share": round(1 - med_network / med_total, 4),
        "non_network_share_after_first": round(
            1 - statistics.median(parts["network"][1:]) / statistics.median(totals[1:]), 4),
        "rle": {"ours_ms": round(statistics.median(ours_ms), 3), "sdk_ms": round(statistics.median(sdk_ms), 3),
                "speedup": round(statistics.median(sdk_ms) / max(statistics.median(ours_ms), 1e-6), 1),
                "identical": identical},
        "mask_fraction": round(float(np.mean(masks[-1])), 4),
    }))
    http.shutdown()
    files.shutdown()


if __name__ == "__main__":
    main()
