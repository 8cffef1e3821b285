"""Does a serving runtime behave exactly like PyTorch? Masks click by click, and NoC, on the evaluation sets.

For every sample of ``--paired`` datasets (default GrabCut) PyTorch eager drives the evaluation's clicker for 20
clicks and the runtime predicts on the very same clicks (its own state chain, as a service would keep it); the
IoU between the two masks is recorded at every click. For every dataset of ``--noc`` (default GrabCut and
Berkeley) both predictors are evaluated on their own (each with its own clicks) and NoC@85/90 compared.
Predictor settings are the served ones (Zoom-In, flip, sizes from the predictor's defaults).

Prints one JSON line: per paired dataset the minimum and mean mask IoU over all clicks and the number of clicks
below 0.995; per NoC dataset NoC@85/90 of both and their difference; the wall time of each.

Usage: python -m benchmarks.runtime_parity [--runtime openvino] [--checkpoint PATH] [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from model import FCFIPredictor, default_checkpoint_path, load_checkpoint
from model.clicker import Clicker
from model.evaluation.datasets import DEFAULT_DATA_ROOT, load_dataset
from model.metrics import MAX_CLICKS, iou, noc
from model.predictor import MASK_THRESHOLD
from model.protocol import evaluate_sample
from model.runtime import RUNTIMES


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def paired(reference: FCFIPredictor, other: FCFIPredictor, rgb: np.ndarray, gt: np.ndarray,
           n_clicks: int = MAX_CLICKS) -> list[float]:
    """Mask IoU between ``reference`` and ``other`` at each click of the reference's clicker session."""
    reference.set_image(rgb)
    other.set_image(rgb)
    clicker = Clicker(gt)
    pred = np.zeros(gt.shape, bool)
    ref_state = other_state = None
    out = []
    for _ in range(n_clicks):
        if clicker.next_click(pred) is None:
            break
        clicks = list(clicker.clicks)
        probs, ref_state = reference.predict(clicks, ref_state)
        other_probs, other_state = other.predict(clicks, other_state)
        pred = probs > MASK_THRESHOLD
        out.append(mask_iou(pred, other_probs > MASK_THRESHOLD))
        if iou(gt, pred) >= 1.0:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", default="openvino", choices=[r for r in RUNTIMES if r != "torch"] + ["torch"])
    ap.add_argument("--checkpoint", default=None, help="default: the shipped weights")
    ap.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    ap.add_argument("--paired", nargs="*", default=["GrabCut"], help="datasets compared click by click")
    ap.add_argument("--noc", nargs="*", default=["GrabCut", "Berkeley"], help="datasets whose NoC is compared")
    ap.add_argument("--limit", type=int, default=None, help="first N samples of each dataset (smoke test)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = args.checkpoint or str(default_checkpoint_path())
    net = load_checkpoint(path)
    reference = FCFIPredictor(net)
    other = FCFIPredictor(net, runtime=args.runtime)
    result: dict = {"runtime": other.runtime, "checkpoint": path, "threads": args.threads, "paired": {}, "noc": {}}
    for name in args.paired:
        ds = load_dataset(name, args.data_root)
        t0 = time.perf_counter()
        ious: list[float] = []
        for i in tqdm(range(min(len(ds), args.limit or len(ds))), desc=f"paired {name}", unit="img"):
            sample = ds[i]
            ious += paired(reference, other, sample.rgb, sample.gt)
        result["paired"][name] = {"clicks": len(ious), "min_iou": round(min(ious), 5),
                                  "mean_iou": round(float(np.mean(ious)), 6),
                                  "below_0995": int(sum(v < 0.995 for v in ious)),
                                  "sec": round(time.perf_counter() - t0, 1)}
    for name in args.noc:
        ds = load_dataset(name, args.data_root)
        row: dict = {}
        for label, pred in (("torch", reference), (args.runtime, other)):
            t0 = time.perf_counter()
            runs = [evaluate_sample(pred, ds[i].rgb, ds[i].gt, stop_iou=0.90)["ious"]
                    for i in tqdm(range(min(len(ds), args.limit or len(ds))), desc=f"{label} {name}", unit="img")]
            row[label] = {"noc85": round(float(np.mean([noc(r, 0.85) for r in runs])), 3),
                          "noc90": round(float(np.mean([noc(r, 0.90) for r in runs])), 3),
                          "sec": round(time.perf_counter() - t0, 1)}
        row["noc90_diff"] = round(row[args.runtime]["noc90"] - row["torch"]["noc90"], 3)
        result["noc"][name] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
