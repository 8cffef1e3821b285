"""One training step of the FCFI recipe, shared by ``model.training.train`` and the fit job (``backend.learning.job``).

A step: the batch's clicks are extended by simulated correction rounds without gradient
(:func:`simulate_and_forward`), the final pass is scored with the FCFI loss (:func:`fcfi_loss`, paper Eq. 6), and
one optimizer update follows (gradient clipping, the learning rate of the schedule, an optional EMA of the
weights). :class:`StepConfig` holds the recipe constants both callers use; :func:`train_step` is the step.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from model.clicks import points_tensor
from model.predictor import MASK_THRESHOLD
from model.training.data import SampleMaker
from model.training.ema import WeightEMA
from model.training.losses import normalized_focal_loss
from model.training.sampling import next_click

Batch = tuple[torch.Tensor, torch.Tensor, list[list[tuple[float, float, bool]]]]


@dataclass
class StepConfig:
    """The recipe constants of one step (``model.training.train``'s command-line defaults are these).

    Attributes:
        max_next_clicks: simulated correction rounds per batch are drawn from ``0..max_next_clicks``.
        first_click_prob: share of batches trained as the evaluation's first click (centre click alone).
        feedback_weights: weights of the FFCM and CFFM feedback terms of the loss.
        clip_grad: global gradient-norm clip (0: off; the norm is reported either way).
        backbone_lr_mult: the ImageNet backbone's learning rate relative to the rest (:func:`param_groups`).
        autocast: bfloat16 autocast of the forward passes.
        channels_last: feed the images in channels-last memory format (the network should be converted too).
        click_loss: weight of an extra focal term on the pixels within ``click_radius`` of any click of the final
            pass (0: off). A click says what its neighbourhood is; a mask that loses it there is what an annotator
            sees as a click that made things worse.
        click_radius: radius (training-crop pixels) of that neighbourhood.
    """

    max_next_clicks: int = 3
    first_click_prob: float = 0.3
    feedback_weights: tuple[float, float] = (1.0, 1.0)
    clip_grad: float = 2.0
    backbone_lr_mult: float = 0.1
    autocast: bool = False
    channels_last: bool = False
    click_loss: float = 0.0
    click_radius: int = 8


def click_neighbourhood(clicks: list[list[tuple[float, float, bool]]], shape: tuple[int, int], radius: int,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, 1, H, W] bool: pixels within ``radius`` of any of each sample's ``(y, x, positive)`` clicks."""
    h, w = shape
    out = np.zeros((len(clicks), 1, h, w), np.uint8)
    for i, sample in enumerate(clicks):
        for y, x, _ in sample:
            cv2.circle(out[i, 0], (int(round(x)), int(round(y))), int(radius), 1, thickness=-1)
    return torch.from_numpy(out.astype(bool)).to(device)


def make_batch(maker: SampleMaker, seed: int, step: int, batch_size: int, crop: tuple[int, int]) -> Batch:
    """The batch of ``step``: ``batch_size`` samples of ``crop`` size drawn from a generator seeded with
    ``(seed, step)``. ``maker`` is left as it is, so threads may make batches of different steps at once."""
    rng = np.random.default_rng([seed, step])
    maker = copy.copy(maker)
    maker.cfg = dataclasses.replace(maker.cfg, crop=crop)
    samples = [maker(rng) for _ in range(batch_size)]
    images = torch.from_numpy(np.stack([s[0] for s in samples]))
    masks = torch.from_numpy(np.stack([s[1] for s in samples]))
    return images, masks, [list(s[2]) for s in samples]


def simulate_and_forward(net: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                         clicks: list[list[tuple[float, float, bool]]], rng: np.random.Generator,
                         max_next_clicks: int, autocast: bool, first_click_prob: float = 0.0) -> dict[str, Any]:
    """Iterative training: correction rounds without gradient, then the training pass.

    Args:
        images: [B, 3, H, W] in [0, 1].
        masks: [B, 1, H, W], 1 object, 0 background, -1 ignore (never clicked).
        clicks: per sample the initial ``(y, x, positive)`` clicks, the centre click first (extended in place).
        first_click_prob: chance that the whole batch is a first click: the centre click alone, no rounds.
    Returns:
        the network outputs of the final pass plus ``rounds`` (simulated correction clicks; -1 for a
        first-click batch).
    """
    device = images.device
    b = images.shape[0]
    prev = torch.zeros(masks.shape, dtype=images.dtype, device=device)
    new_points = torch.tensor([[c[0][0], c[0][1], 1.0] for c in clicks], device=device)
    if first_click_prob and rng.random() < first_click_prob:
        for c in clicks:
            del c[1:]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = net(torch.cat([images, prev], 1), points_tensor(clicks, device), new_points, 0.0)
        out["rounds"] = -1
        return out
    rounds = int(rng.integers(0, max_next_clicks + 1))
    gt = masks[:, 0].cpu().numpy() > 0.5
    ignore = masks[:, 0].cpu().numpy() < 0
    if rounds:
        net.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for r in range(rounds):
                out = net(torch.cat([images, prev], 1), points_tensor(clicks, device), new_points,
                          0.0 if r == 0 else 1.0)
                prev = torch.sigmoid(out["instances"].float())
                pred = prev[:, 0].cpu().numpy() > MASK_THRESHOLD
                for i in range(b):
                    c = next_click(pred[i], gt[i], rng, ignore[i])
                    if c is not None:
                        clicks[i].append(c)
                        new_points[i] = torch.tensor([c[0], c[1], float(c[2])])
        net.train()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        out = net(torch.cat([images, prev], 1), points_tensor(clicks, device), new_points,
                  1.0 if rounds else 0.0)
    out["rounds"] = rounds
    return out


def fcfi_loss(out: dict[str, Any], masks: torch.Tensor, feedback_weights: tuple[float, float],
              click_valid: torch.Tensor | None = None, click_weight: float = 0.0
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 6: NFL(output) + w1 * NFL(M_c inside the FFCM box) + w2 * NFL(M_u), plus ``click_weight`` *
    NFL(output on ``click_valid``, the clicks' neighbourhoods) when both are given.

    The feedback maps are probabilities; the loss reads them as such (the official trainer applies a
    second sigmoid to them, which squeezes them into [0.5, 0.73]; the paper's Eq. 6 does not).
    """
    parts = {"instances": normalized_focal_loss(out["instances"].float(), masks).mean()}
    total = parts["instances"]
    if click_valid is not None and click_weight:
        parts["clicks"] = normalized_focal_loss(out["instances"].float(), masks, valid=click_valid).mean()
        total = total + click_weight * parts["clicks"]
    if out.get("feedback1") is not None and feedback_weights[0]:
        valid = out["box_mask"] >= 1.0 if out.get("box_mask") is not None else None
        parts["feedback1"] = normalized_focal_loss(out["feedback1"].float(), masks, from_logits=False,
                                                   valid=valid).mean()
        total = total + feedback_weights[0] * parts["feedback1"]
    if out.get("feedback2") is not None and feedback_weights[1]:
        parts["feedback2"] = normalized_focal_loss(out["feedback2"].float(), masks, from_logits=False).mean()
        total = total + feedback_weights[1] * parts["feedback2"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def param_groups(net: nn.Module, lr: float, backbone_mult: float) -> list[dict[str, Any]]:
    backbone = {id(p) for p in getattr(net, "backbone_parameters", lambda: [])()}
    return [
        {"params": [p for p in net.parameters() if id(p) in backbone], "lr": lr * backbone_mult, "base": backbone_mult},
        {"params": [p for p in net.parameters() if id(p) not in backbone], "lr": lr, "base": 1.0},
    ]


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g["base"]


def lr_at(step: int, total: int, lr: float, warmup: int, decay_at: float, schedule: str = "step",
          min_frac: float = 0.01) -> float:
    """The learning rate of ``step``: linear warmup over ``warmup`` steps, then either a 10x drop at
    ``decay_at * total`` (``step``) or a cosine from ``lr`` down to ``min_frac * lr`` at ``total`` (``cosine``)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "cosine":
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * t)))
    if schedule != "step":
        raise ValueError(f"unknown schedule {schedule!r}")
    return lr * (0.1 if step >= decay_at * total else 1.0)


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip the global L2 norm of the gradients to ``max_norm`` (0: leave them) and return the norm before."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


def freeze_batchnorm(net: nn.Module) -> None:
    """Keep every BatchNorm layer in eval mode (running statistics fixed) even when ``net.train()`` is called.

    Batches of a few crops from a handful of images give noisy statistics; the trained network's are kept instead.
    """
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.train = types.MethodType(lambda self, mode=True: self, m)  # simulate_and_forward calls net.train()


def train_step(net: nn.Module, opt: torch.optim.Optimizer, batch: Batch, cfg: StepConfig, lr: float, seed: int,
               step: int, ema: WeightEMA | None = None) -> dict[str, Any]:
    """One optimizer step on ``batch`` at learning rate ``lr`` (the base of :func:`param_groups`' groups).

    Args:
        batch: ``(images [B, 3, H, W] in [0, 1], masks [B, 1, H, W] in {-1, 0, 1}, clicks)`` from
            :func:`make_batch`, on the network's device.
        seed, step: the click simulation draws from a generator seeded with ``(seed, step, 1)``, so a resumed
            run repeats an uninterrupted one.
        ema: updated after the step when given.
    Returns:
        ``loss`` (total), the loss parts, ``grad_norm`` (before clipping) and ``rounds`` (-1: a first-click batch).
    Raises:
        FloatingPointError: the loss is not finite (nothing was updated).
    """
    images, masks, clicks = batch
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    set_lr(opt, lr)
    rng = np.random.default_rng([seed, step, 1])
    outputs = simulate_and_forward(net, images, masks, clicks, rng, cfg.max_next_clicks, cfg.autocast,
                                   cfg.first_click_prob)
    near = (click_neighbourhood(clicks, tuple(masks.shape[-2:]), cfg.click_radius, masks.device)
            if cfg.click_loss else None)
    loss, parts = fcfi_loss(outputs, masks, tuple(cfg.feedback_weights), near, cfg.click_loss)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"the loss is {value} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(net.parameters(), cfg.clip_grad)
    opt.step()
    if ema is not None:
        ema.update(net)
    return {"loss": value, **parts, "grad_norm": round(grad_norm, 4), "rounds": outputs["rounds"]}
