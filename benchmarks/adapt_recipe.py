"""Choose the fit job's fine-tuning recipe by measurement: ``python -m benchmarks.adapt_recipe [recipe options]``.

In-process and without the HTTP service (``benchmarks/adapt.py`` measures the whole path): the same domain split as
``benchmarks.adapt`` (DAVIS-345 frames grouped into approximate shots, whole shots held out), the first ``--n``
frames of the annotation pool fine-tune a copy of the checkpoint with :func:`model.training.finetune.fine_tune`, and
NoC@85/90 of the checkpoint and of the fine-tuned copy are measured on the held-out frames with the serving predictor
options (each sample stops at 90% IoU, so both NoCs are exact). ``--grabcut`` also measures NoC@90 on GrabCut (the
general-quality check: the adapted model must stay within 0.3 of the base model).

Prints one JSON line: the recipe, the training seconds, the figures before and after, and the per-sample NoC@90
lists (for a paired comparison).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from backend.settings import Settings, predictor_options
from model import FCFIPredictor, default_checkpoint_path, load_checkpoint
from model.evaluation.datasets import load_dataset
from model.metrics import noc
from model.protocol import click_curves, curve_figures
from model.training.data import build_index, load_entries, present_sets
from model.training.finetune import PARTS, FineTuneConfig, fine_tune, training_image
from model.training.step import StepConfig

from .adapt import DOMAINS, ROOT, list_frames, load_mask, split_domain

CACHE = Path.home() / ".cache" / "fcfi-backend" / "adapt_recipe"


def score(net: torch.nn.Module, samples: list[tuple[np.ndarray, np.ndarray]], n_clicks: int) -> dict[str, Any]:
    """Summary figures and per-sample NoC@90 with the serving predictor options, stopping at 90% IoU."""
    predictor = FCFIPredictor(net.eval(), **predictor_options(Settings.from_env()))
    curves = click_curves(predictor, samples, n_clicks, stop_iou=0.90)
    figures = curve_figures(curves, n_clicks)
    figures.pop("miou")
    return {**figures, "per_sample_noc90": [noc(c, 0.90, n_clicks) for c in curves]}


def score_cached(checkpoint: Path, tag: str, samples: list[tuple[np.ndarray, np.ndarray]],
                 n_clicks: int) -> dict[str, Any]:
    """:func:`score` of an unchanged checkpoint, remembered by its content and ``tag`` (the samples' names)."""
    key = hashlib.sha256(checkpoint.read_bytes() + tag.encode() + str(n_clicks).encode()).hexdigest()[:24]
    path = CACHE / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = score(load_checkpoint(checkpoint), samples, n_clicks)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def replay_images(root: Path, count: int) -> list:
    """``count`` training objects of the default model's training sets (deterministic: first by file-name hash)."""
    entries = build_index(root, present_sets(root))["train"]
    entries.sort(key=lambda e: hashlib.sha256(e.image.encode()).digest())
    return load_entries(root, entries[:count])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    base = FineTuneConfig()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.adapt_recipe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped weights")
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=25)
    ap.add_argument("--heldout", type=int, default=30)
    ap.add_argument("--eval-clicks", type=int, default=20)
    ap.add_argument("--steps", type=int, default=base.steps)
    ap.add_argument("--lr", type=float, default=base.lr)
    ap.add_argument("--batch-size", type=int, default=base.batch_size)
    ap.add_argument("--crop", type=int, default=base.crop)
    ap.add_argument("--image-side", type=int, default=base.image_side)
    ap.add_argument("--parts", choices=PARTS, default=base.parts)
    ap.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=base.freeze_bn)
    ap.add_argument("--ema", type=float, default=base.ema)
    ap.add_argument("--first-click-prob", type=float, default=base.step.first_click_prob)
    ap.add_argument("--max-next-clicks", type=int, default=base.step.max_next_clicks)
    ap.add_argument("--replay", type=int, default=0, help="original training objects mixed in")
    ap.add_argument("--replay-weight", type=float, default=0.25)
    ap.add_argument("--grabcut", action="store_true", help="also NoC@90 on GrabCut before and after")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="a name for the result line")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint_path()
    root = args.data_root

    frames = list_frames(root, "davis")
    pool, held = split_domain(root, frames, args.heldout, by_sequence=True)

    def sample(i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = frames[i]
        with Image.open(root / image) as img:
            return np.asarray(img.convert("RGB")), load_mask(root / mask)

    held_samples = [(rgb, gt.astype(np.int8)) for rgb, gt in map(sample, held)]
    tag = json.dumps([frames[i][0] for i in held])
    before = score_cached(checkpoint, tag, held_samples, args.eval_clicks)

    cfg = FineTuneConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, crop=args.crop,
                         image_side=args.image_side, parts=args.parts, freeze_bn=args.freeze_bn, ema=args.ema,
                         replay_weight=args.replay_weight if args.replay else 0,
                         step=StepConfig(first_click_prob=args.first_click_prob,
                                         max_next_clicks=args.max_next_clicks))
    images = [training_image(*sample(i), name=frames[i][0], max_side=cfg.image_side) for i in pool[: args.n]]
    replay = replay_images(root, args.replay) if args.replay else None
    net = load_checkpoint(checkpoint)
    trained = fine_tune(net, images, cfg, seed=args.seed, replay=replay)
    t0 = time.perf_counter()
    after = score(net, held_samples, args.eval_clicks)
    d = np.array(after["per_sample_noc90"]) - np.array(before["per_sample_noc90"])
    result: dict[str, Any] = {
        "tag": args.tag, "domain": DOMAINS["davis"][0], "n": args.n, "heldout": len(held),
        "checkpoint": str(checkpoint), "recipe": {k: v for k, v in vars(args).items()
                                                  if k not in ("checkpoint", "data_root", "tag")},
        "train": trained, "eval_after_s": round(time.perf_counter() - t0, 1),
        "before": {k: v for k, v in before.items() if k != "per_sample_noc90"},
        "after": {k: v for k, v in after.items() if k != "per_sample_noc90"},
        "noc90_change": round(float(after["noc90"] / before["noc90"] - 1), 4),
        "samples_better": int((d < 0).sum()), "samples_worse": int((d > 0).sum()),
        "per_sample_noc90": {"before": before["per_sample_noc90"], "after": after["per_sample_noc90"]},
    }
    if args.grabcut:
        gc = [(s.rgb, s.gt.astype(np.int8)) for s in load_dataset("GrabCut", root)]
        result["grabcut_noc90"] = {"before": score_cached(checkpoint, "GrabCut", gc, 20)["noc90"],
                                   "after": score(net, gc, 20)["noc90"]}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
