"""Validation on the fixed held-out split of the training sets (never on GrabCut, Berkeley or DAVIS).

The split (:func:`model.training.data.build_index`) has two parts, both never trained on:

* ``whole``: 7% of each training set's images by file-name hash, one whole object each (at least 1% of the image,
  touching at most two image sides), so every training set is represented; 177 objects.
* ``photos``: every object above 0.2% of its image (at most four per image, chosen by hash) of held-out everyday
  photos: COCO_instances' held-out images (the same 7%) and 12% of VOC2012_val's; 257 objects on 111 images. Large
  centred objects flatter a model; this part is what unseen photos look like.

``model.training.train`` validates on both; inference settings and checkpoints are chosen on both.

``python -m model.training.validation --checkpoint default`` prints the figures of a checkpoint as one JSON line per
part (``--part`` picks one); ``--curves FILE`` also writes each object's IoU-per-click curve (for paired comparisons of
two checkpoints; with both parts, ``FILE`` gets the part's name before its suffix).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.predictor import add_option_arguments, options_from_args
from model.protocol import click_curves, curve_figures
from model.runtime import RUNTIMES
from model.training.data import VAL_FRACTION, build_index, load_entries, present_sets

#: The validation split's parts: ``whole`` (one whole, large object per held-out image of every training set, 177
#: objects) and ``photos`` (every object above 0.2% of the image, at most four per image, of held-out everyday
#: photos of COCO_instances and VOC2012_val: small objects, clutter and thin parts as annotators meet them).
PARTS = ("whole", "photos")


def validation_parts(root: Path, val_fraction: float = VAL_FRACTION) -> dict[str, list]:
    """``{"whole": [...], "photos": [...]}``: the held-out objects of every training set present under ``root``
    (:func:`model.training.data.build_index`)."""
    index = build_index(root, present_sets(root), val_fraction)
    return {"whole": index["val"], "photos": index["photos"]}


def validation_entries(root: Path, val_fraction: float = VAL_FRACTION) -> list:
    """The whole-object part of the split (:func:`validation_parts`)."""
    return validation_parts(root, val_fraction)["whole"]


def validate(net: nn.Module, root: Path, entries: list, device: torch.device, n_clicks: int = 20,
             zoom_in: bool = True, curves_out: list | None = None, **predictor_options: Any) -> dict[str, float]:
    """NoC@85/90, NoF@90 and mean IoU after the first click on held-out objects, with the evaluation's
    clicker and Zoom-In (no flip unless ``predictor_options`` say so; they go to :class:`FCFIPredictor`, e.g.
    ``flip``, ``max_size``, ``target_size``, ``runtime``). A sample stops once it reaches 90% IoU, which fixes
    both NoCs. ``curves_out``, when given, receives each object's IoU curve in ``entries`` order."""
    from model.predictor import FCFIPredictor

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
    figures = curve_figures(curves, n_clicks)
    figures.pop("miou")  # curves stop at 90%: their mean IoU is not the protocol's
    return figures


def main(argv: list[str] | None = None) -> None:
    from model.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(prog="python -m model.training.validation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                    help="the split's share of each set (the training run's --val-fraction)")
    ap.add_argument("--no-zoom-in", action="store_true")
    ap.add_argument("--flip", action="store_true", help="flip test-time augmentation (training validates without)")
    add_option_arguments(ap)
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
    options = {"flip": args.flip, **options_from_args(args)}
    if args.runtime is not None:
        options["runtime"] = args.runtime
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
