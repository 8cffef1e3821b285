"""Validation on the fixed held-out split of the training sets (never on GrabCut, Berkeley or DAVIS).

The split (:func:`model.train_data.build_index`) has two parts, both never trained on:

* ``whole``: 7% of each training set's images by file-name hash, one whole object each (at least 1% of the image,
  touching at most two image sides), so every training set is represented; 177 objects.
* ``photos``: every object above 0.2% of its image (at most four per image, chosen by hash) of held-out everyday
  photos: COCO_instances' held-out images (the same 7%) and 12% of VOC2012_val's; 257 objects on 111 images. Large
  centred objects flatter a model; this part is what unseen photos look like.

``model.train`` validates on both; inference settings and checkpoints are chosen on both.

``python -m model.validation --checkpoint default`` prints the figures of a checkpoint as one JSON line per part
(``--part`` picks one); ``--curves FILE`` also writes each object's IoU-per-click curve (for paired comparisons of
two checkpoints; with both parts, ``FILE`` gets the part's name before its suffix).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .runtime import RUNTIMES
from .train_data import VAL_FRACTION, build_index, load_entries, present_sets

#: The validation split's parts: ``whole`` (one whole, large object per held-out image of every training set, 177
#: objects) and ``photos`` (every object above 0.2% of the image, at most four per image, of held-out everyday
#: photos of COCO_instances and VOC2012_val: small objects, clutter and thin parts as annotators meet them).
PARTS = ("whole", "photos")


def validation_parts(root: Path, val_fraction: float = VAL_FRACTION) -> dict[str, list]:
    """``{"whole": [...], "photos": [...]}``: the held-out objects of every training set present under ``root``
    (:func:`model.train_data.build_index`)."""
    index = build_index(root, present_sets(root), val_fraction)
    return {"whole": index["val"], "photos": index["photos"]}


def validation_entries(root: Path, val_fraction: float = VAL_FRACTION) -> list:
    """The whole-object part of the split (:func:`validation_parts`)."""
    return validation_parts(root, val_fraction)["whole"]


def click_curves(predictor: Any, samples: Iterable[tuple[np.ndarray, np.ndarray]], n_clicks: int,
                 stop_iou: float | None = None, progress: Callable[[int], None] | None = None) -> list[list[float]]:
    """IoU after each click of the evaluation protocol (:func:`model.evaluate.evaluate_sample`), per sample.

    Args:
        predictor: an :class:`~model.predictor.FCFIPredictor`.
        samples: ``(rgb (H, W, 3) uint8, gt (H, W) int8: 1 object, 0 background, -1 ignored)`` pairs.
        stop_iou: a sample stops once it reaches this IoU (its curve is then shorter than ``n_clicks``).
        progress: called with the index of each sample before it is evaluated.
    """
    from .evaluate import evaluate_sample

    curves = []
    with torch.no_grad():
        for i, (rgb, gt) in enumerate(samples):
            if progress is not None:
                progress(i)
            curves.append(evaluate_sample(predictor, rgb, gt, n_clicks, stop_iou=stop_iou)["ious"])
    return curves


def summarize(curves: list[list[float]], n_clicks: int) -> dict[str, Any]:
    """NoC@85/90 (mean), NoF@90 (count), IoU after the first click, mIoU (mean over samples of the mean over
    clicks; a stopped curve counts only its clicks), the harmful-click rates (:func:`model.metrics.harmful_clicks`)
    and ``n``."""
    from .metrics import harmful_clicks, noc

    noc90 = [noc(c, 0.90, n_clicks) for c in curves]
    return {"noc85": float(np.mean([noc(c, 0.85, n_clicks) for c in curves])), "noc90": float(np.mean(noc90)),
            "nof90": int(sum(n >= n_clicks for n in noc90)), "iou1": float(np.mean([c[0] for c in curves])),
            "miou": float(np.mean([np.mean(c) for c in curves])), **harmful_clicks(curves), "n": len(curves)}


def validate(net: nn.Module, root: Path, entries: list, device: torch.device, n_clicks: int = 20,
             zoom_in: bool = True, curves_out: list | None = None, **predictor_options: Any) -> dict[str, float]:
    """NoC@85/90, NoF@90 and mean IoU after the first click on held-out objects, with the evaluation's
    clicker and Zoom-In (no flip unless ``predictor_options`` say so; they go to :class:`FCFIPredictor`, e.g.
    ``flip``, ``max_size``, ``target_size``, ``runtime``). A sample stops once it reaches 90% IoU, which fixes
    both NoCs. ``curves_out``, when given, receives each object's IoU curve in ``entries`` order."""
    from .predictor import FCFIPredictor

    was_training = net.training
    net.eval()
    predictor = FCFIPredictor(net, device=device, zoom_in=zoom_in, **{"flip": False, **predictor_options})

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for img in load_entries(root, entries):
            gt = np.isin(img.labels, list(img.objects[0])).astype(np.int8)
            if img.ignore is not None:
                gt[img.ignore] = -1
            yield img.rgb, gt

    curves = click_curves(predictor, samples(), n_clicks, stop_iou=0.90)
    if curves_out is not None:
        curves_out.extend(curves)
    net.train(was_training)
    figures = summarize(curves, n_clicks)
    figures.pop("miou")  # curves stop at 90%: their mean IoU is not the protocol's
    return figures


def main(argv: list[str] | None = None) -> None:
    from .checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(prog="python -m model.validation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                    help="the split's share of each set (the training run's --val-fraction)")
    ap.add_argument("--no-zoom-in", action="store_true")
    ap.add_argument("--flip", action="store_true", help="flip test-time augmentation (training validates without)")
    ap.add_argument("--target-size", type=int, default=None, help="Zoom-In long side (predictor default)")
    ap.add_argument("--max-size", type=int, default=None, help="longest network-input side (predictor default)")
    ap.add_argument("--expansion-ratio", type=float, default=None, help="Zoom-In ROI expansion (predictor default)")
    ap.add_argument("--clicked-parts-only", action=argparse.BooleanOptionalAction, default=None,
                    help="answer only the mask's parts that hold a positive click (predictor default if unset: on)")
    ap.add_argument("--local-merge", action=argparse.BooleanOptionalAction, default=None,
                    help="take a corrective click's new map only where its change reaches the click "
                         "(predictor default if unset)")
    ap.add_argument("--click-guarantee", type=int, default=None, metavar="RADIUS",
                    help="hold every click's disk of RADIUS px on its side in the answer; -1: off "
                         "(predictor default if unset)")
    ap.add_argument("--runtime", choices=RUNTIMES, default=None, help="inference runtime (default: eager)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--curves", type=Path, default=None, help="write the per-object IoU curves here (JSON)")
    ap.add_argument("--part", choices=PARTS, action="append", default=None,
                    help="score only this part of the split (repeatable; default: both)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = load_checkpoint(args.checkpoint)
    parts = validation_parts(args.data_root, args.val_fraction)
    chosen = args.part or list(PARTS)
    options = {k: v for k, v in (("flip", args.flip), ("target_size", args.target_size),
                                 ("max_size", args.max_size), ("expansion_ratio", args.expansion_ratio),
                                 ("clicked_parts_only", args.clicked_parts_only), ("runtime", args.runtime),
                                 ("local_merge", args.local_merge), ("click_guarantee", args.click_guarantee))
               if v is not None}
    for part in [p for p in chosen if not parts[p]]:  # e.g. a data root without COCO_instances or VOC2012_val
        print(f"no {part} objects under {args.data_root}; part skipped", file=sys.stderr)
    chosen = [p for p in chosen if parts[p]]
    for part in chosen:
        entries = parts[part]
        t0 = time.perf_counter()
        curves: list[list[float]] = []
        figures = validate(net, args.data_root, entries, torch.device(args.device), zoom_in=not args.no_zoom_in,
                           curves_out=curves, **options)
        if args.curves is not None:
            rows = [{"image": e.image, "object": list(e.objects[0]), "ious": c}
                    for e, c in zip(entries, curves, strict=True)]
            path = args.curves if len(chosen) == 1 else args.curves.with_stem(f"{args.curves.stem}_{part}")
            path.write_text(json.dumps({"checkpoint": args.checkpoint, "part": part, "options": options,
                                        "samples": rows}))
        print(json.dumps({"checkpoint": args.checkpoint, "part": part, "zoom_in": not args.no_zoom_in, **options,
                          **figures, "sec": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
