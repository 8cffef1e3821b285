"""Validation on the fixed held-out split of the training sets (never on GrabCut, Berkeley or DAVIS).

The split (:func:`model.train_data.build_index`): 7% of each training set's images by file-name hash, one whole
object each (at least 1% of the image, touching at most two image sides), so every training set is represented
and the split never changes. ``model.train`` validates on it; inference settings are chosen on it.

``python -m model.validation --checkpoint default`` prints the figures of a checkpoint as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .runtime import RUNTIMES
from .train_data import build_index, load_entries, present_sets


def validation_entries(root: Path, val_fraction: float = 0.07) -> list:
    """The held-out objects of every training set present under ``root``."""
    return build_index(root, present_sets(root), val_fraction)["val"]


def validate(net: nn.Module, root: Path, entries: list, device: torch.device, n_clicks: int = 20,
             zoom_in: bool = True, **predictor_options: Any) -> dict[str, float]:
    """NoC@85/90, NoF@90 and mean IoU after the first click on held-out objects, with the evaluation's
    clicker and Zoom-In (no flip unless ``predictor_options`` say so; they go to :class:`FCFIPredictor`, e.g.
    ``flip``, ``max_size``, ``target_size``, ``runtime``). A sample stops once it reaches 90% IoU, which fixes
    both NoCs."""
    from .evaluate import evaluate_sample
    from .metrics import noc
    from .predictor import FCFIPredictor

    was_training = net.training
    net.eval()
    predictor = FCFIPredictor(net, device=device, zoom_in=zoom_in, **{"flip": False, **predictor_options})
    rows = []
    with torch.no_grad():
        for img in load_entries(root, entries):
            gt = np.isin(img.labels, list(img.objects[0])).astype(np.int8)
            if img.ignore is not None:
                gt[img.ignore] = -1
            rows.append(evaluate_sample(predictor, img.rgb, gt, n_clicks, stop_iou=0.90)["ious"])
    net.train(was_training)
    noc90 = [noc(r, 0.90, n_clicks) for r in rows]
    return {"noc85": float(np.mean([noc(r, 0.85, n_clicks) for r in rows])), "noc90": float(np.mean(noc90)),
            "nof90": int(sum(n >= n_clicks for n in noc90)),
            "iou1": float(np.mean([r[0] for r in rows])), "n": len(rows)}


def main(argv: list[str] | None = None) -> None:
    from .checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(prog="python -m model.validation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--no-zoom-in", action="store_true")
    ap.add_argument("--flip", action="store_true", help="flip test-time augmentation (training validates without)")
    ap.add_argument("--target-size", type=int, default=None, help="Zoom-In long side (predictor default)")
    ap.add_argument("--max-size", type=int, default=None, help="longest unzoomed input side (predictor default)")
    ap.add_argument("--runtime", choices=RUNTIMES, default=None, help="inference runtime (default: eager)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = load_checkpoint(args.checkpoint)
    entries = validation_entries(args.data_root)
    options = {k: v for k, v in (("flip", args.flip), ("target_size", args.target_size),
                                 ("max_size", args.max_size), ("runtime", args.runtime)) if v is not None}
    t0 = time.perf_counter()
    figures = validate(net, args.data_root, entries, torch.device("cpu"), zoom_in=not args.no_zoom_in, **options)
    print(json.dumps({"checkpoint": args.checkpoint, "zoom_in": not args.no_zoom_in, **options, **figures,
                      "sec": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
