"""Fine-tuning a trained network on a few annotated images: the recipe of the fit job (``backend.learning.job``).

The same step as ``model.training.train`` (:func:`model.training.step.train_step`: iterative click simulation, FCFI
loss, Adam with a smaller backbone rate, gradient clipping), adapted to tens of images and minutes of one CPU thread:

* the images are scaled so their long side is at most ``image_side`` px, and samples are ``crop`` x ``crop``
  scale-matched views that hold the whole object (as the evaluation's first click and Zoom-In show it) or
  native-scale crops (images at the first-click scale, 480 px, measured worse than 320 px at N = 25);
* ``parts="head"`` trains everything but the ImageNet backbone (``"all"``: everything);
* BatchNorm statistics stay those of the trained network (``freeze_bn``): batches of a few crops from a
  handful of images would give noisy ones;
* linear warm-up, then a cosine decay to 1% of ``lr``; an EMA of the weights (``ema`` > 0) is what is returned;
* an optional replay of original training images (``replay`` with ``replay_weight``, the share of samples drawn
  from them), so the general model is not forgotten.

:class:`FineTuneConfig` holds the recipe (its defaults are the fit job's, chosen with ``benchmarks/adapt_recipe.py``
on DAVIS frames); :func:`fine_tune` runs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from model.training.data import AugmentConfig, SampleMaker, TrainImage
from model.training.ema import WeightEMA
from model.training.step import StepConfig, freeze_batchnorm, lr_at, make_batch, param_groups, train_step

PARTS = ("all", "head")
FIT_SET = "fit"  # dataset name of the annotated images in the sampler
REPLAY_SET = "replay"


@dataclass
class FineTuneConfig:
    """The fine-tuning recipe.

    Attributes:
        steps: optimizer steps.
        lr: peak learning rate of the head (the backbone's is ``step.backbone_lr_mult`` times it).
        batch_size: crops per step.
        crop: side of the square crops, px.
        image_side: longest image side the annotated images are scaled to, px.
        parts: ``"all"`` or ``"head"`` (backbone frozen).
        freeze_bn: keep the network's BatchNorm statistics.
        ema: EMA decay of the weights (0: return the last weights).
        warmup: linear warm-up steps.
        replay_weight: share of samples drawn from the ``replay`` images when some are given.
        step: the step's constants (click simulation, loss weights, clipping).
    """

    steps: int = 150
    lr: float = 1e-3
    batch_size: int = 4
    crop: int = 320
    image_side: int = 320
    parts: str = "head"
    freeze_bn: bool = True
    ema: float = 0.0
    warmup: int = 10
    replay_weight: float = 0.0
    step: StepConfig = field(default_factory=StepConfig)


def training_image(rgb: np.ndarray, mask: np.ndarray, name: str, max_side: int) -> TrainImage:
    """An annotated image as the sampler wants it: scaled to at most ``max_side`` px on its long side.

    Args:
        rgb: (H, W, 3) uint8.
        mask: (H, W) bool, the object.
    """
    scale = max_side / max(rgb.shape[:2])
    if scale < 1:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return TrainImage(np.ascontiguousarray(rgb), mask.astype(np.uint8) * np.uint8(255), [(255,)], FIT_SET)


def min_object_pixels() -> int:
    """Objects smaller than this at training scale cannot make a sample (the sampler's minimum, twice)."""
    return 2 * AugmentConfig.min_object_pixels


def fine_tune(net: nn.Module, images: list[TrainImage], cfg: FineTuneConfig, seed: int,
              replay: list[TrainImage] | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``net`` in place with ``cfg`` on ``images`` (from :func:`training_image` with ``cfg.image_side``);
    leaves it in eval mode
    without gradients, holding the EMA weights when ``cfg.ema`` > 0.

    Args:
        seed: batches and click simulation draw from generators seeded with it (same seed, same result).
        replay: original training images mixed in at ``cfg.replay_weight``.
        progress: called with ``(step, steps)`` before each step and once at the end.
    Returns:
        ``first``/``last`` loss (absent with 0 steps), ``crop`` (the crop side used) and ``seconds``.
    Raises:
        ValueError: no images, or an unknown ``cfg.parts``.
        FloatingPointError: the loss became non-finite (lower ``lr``).
    """
    if cfg.parts not in PARTS:
        raise ValueError(f"parts must be one of {PARTS}, got {cfg.parts!r}")
    if not images:
        raise ValueError("no training images")
    t0 = time.perf_counter()
    longest = max(max(img.rgb.shape[:2]) for img in images)
    side = int(min(cfg.crop, max(64, math.ceil(longest / 32) * 32)))
    pool, weights = list(images), None
    if replay and cfg.replay_weight > 0:
        pool += [TrainImage(r.rgb, r.labels, r.objects, REPLAY_SET, r.weights) for r in replay]
        weights = {FIT_SET: 1.0 - cfg.replay_weight, REPLAY_SET: cfg.replay_weight}
    maker = SampleMaker(pool, AugmentConfig(crop=(side, side)), weights)

    device = next(net.parameters()).device
    backbone = {id(p) for p in getattr(net, "backbone_parameters", lambda: [])()}
    for p in net.parameters():
        p.requires_grad_(cfg.parts == "all" or id(p) not in backbone)
    if cfg.freeze_bn:
        freeze_batchnorm(net)
    net.train()
    groups = []
    for g in param_groups(net, cfg.lr, cfg.step.backbone_lr_mult):  # frozen parameters stay out of the optimizer
        g["params"] = [p for p in g["params"] if p.requires_grad]
        if g["params"]:
            groups.append(g)
    opt = torch.optim.Adam(groups, lr=cfg.lr)
    ema = WeightEMA(net, cfg.ema) if cfg.ema > 0 else None
    torch.manual_seed(seed)
    steps = max(0, cfg.steps)
    warmup = min(cfg.warmup, steps // 5)
    losses: list[float] = []
    for step in range(steps):
        if progress is not None:
            progress(step, steps)
        images_t, masks, clicks = make_batch(maker, seed, step, max(1, cfg.batch_size), (side, side))
        lr = lr_at(step, steps, cfg.lr, warmup, 1.0, "cosine")
        record = train_step(net, opt, (images_t.to(device), masks.to(device), clicks), cfg.step, lr, seed, step, ema)
        losses.append(record["loss"])
    if progress is not None:
        progress(steps, steps)
    if ema is not None:
        net.load_state_dict(ema.module.state_dict())
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    out: dict[str, Any] = {"crop": side, "seconds": round(time.perf_counter() - t0, 2)}
    if losses:
        out.update(first=losses[0], last=losses[-1])
    return out
