"""The NoC protocol of the FCFI paper (Sec. 4.1) on one sample, shared by evaluation, validation and the fit job.

A simulated user (:class:`model.clicker.Clicker`) clicks at the centre of the largest error, the method predicts after
each click, and the IoU is recorded (:func:`evaluate_sample`); :func:`click_curves` runs it over samples and
:func:`curve_figures` sums the curves up. Any object with ``set_image(rgb)`` and
``predict(clicks, state) -> (probs, state)`` is a method (:class:`Method`): :class:`model.FCFIPredictor` or a
classical baseline of :mod:`model.evaluation.baselines`. The mask is ``probs > THRESHOLD``.

This module sits in the library so that :mod:`model.evaluation` and :mod:`model.training` both import it downwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import torch

from model.clicker import Clicker
from model.clicks import Click
from model.metrics import MAX_CLICKS, assd, boundary_iou, harmful_clicks, iou, noc
from model.predictor import MASK_THRESHOLD

THRESHOLD = MASK_THRESHOLD  # the predictor's; baselines are thresholded the same way
METRIC_CLICK = 5  # BIoU@5, ASSD@5, IoU@5


class Method(Protocol):
    """What the harness drives: the predictor contract of :class:`model.FCFIPredictor`."""

    def set_image(self, rgb: np.ndarray) -> None: ...

    def predict(self, clicks: list[Click], state: Any = None) -> tuple[np.ndarray, Any]: ...


def evaluate_sample(method: Method, rgb: np.ndarray, gt: np.ndarray, n_clicks: int = MAX_CLICKS,
                    threshold: float = THRESHOLD, metric_click: int = METRIC_CLICK,
                    stop_iou: float | None = None) -> dict[str, Any]:
    """Run the protocol on one image.

    Args:
        method: the segmenter.
        rgb: HxWx3 uint8.
        gt: HxW int, 1 object, 0 background, -1 ignore.
        n_clicks: clicks to simulate (all are run, no early stop).
        threshold: mask = probs > threshold.
        metric_click: the click after which BIoU and ASSD are measured.
        stop_iou: stop clicking once the IoU reaches this (``ious`` is then shorter; NoC at any lower
            threshold is still exact). None: all ``n_clicks``.
    Returns:
        ``{"ious": [n_clicks floats], "clicks": [[x, y, positive], ...], "biou5", "assd5"}``. When no
        error pixel is left to click, the previous prediction (and IoU) is kept for the remaining clicks.
    """
    method.set_image(rgb)
    clicker = Clicker(gt)
    pred = np.zeros(gt.shape, bool)
    state: Any = None
    ious: list[float] = []
    biou_k = assd_k = None
    for k in range(1, n_clicks + 1):
        click = clicker.next_click(pred)
        if click is not None:
            probs, state = method.predict(list(clicker.clicks), state)
            pred = np.asarray(probs) > threshold
            ious.append(iou(gt, pred))
        else:
            ious.append(ious[-1] if ious else iou(gt, pred))
        if k == metric_click:
            biou_k = boundary_iou(gt, pred)
            assd_k = assd(gt, pred)
        if stop_iou is not None and ious[-1] >= stop_iou:
            break
    return {"ious": ious, "clicks": [[c.x, c.y, c.positive] for c in clicker.clicks],
            "biou5": biou_k, "assd5": assd_k}


def click_curves(predictor: Any, samples: Iterable[tuple[np.ndarray, np.ndarray]], n_clicks: int,
                 stop_iou: float | None = None, progress: Callable[[int], None] | None = None) -> list[list[float]]:
    """IoU after each click of the protocol (:func:`evaluate_sample`), per sample.

    Args:
        predictor: an :class:`~model.predictor.FCFIPredictor`.
        samples: ``(rgb (H, W, 3) uint8, gt (H, W) int8: 1 object, 0 background, -1 ignored)`` pairs.
        stop_iou: a sample stops once it reaches this IoU (its curve is then shorter than ``n_clicks``).
        progress: called with the index of each sample before it is evaluated.
    """
    curves = []
    with torch.no_grad():
        for i, (rgb, gt) in enumerate(samples):
            if progress is not None:
                progress(i)
            curves.append(evaluate_sample(predictor, rgb, gt, n_clicks, stop_iou=stop_iou)["ious"])
    return curves


def curve_figures(curves: list[list[float]], n_clicks: int) -> dict[str, Any]:
    """NoC@85/90 (mean), NoF@90 (count), IoU after the first click, mIoU (mean over samples of the mean over
    clicks; a stopped curve counts only its clicks), the harmful-click rates (:func:`model.metrics.harmful_clicks`)
    and ``n``."""
    noc90 = [noc(c, 0.90, n_clicks) for c in curves]
    return {"noc85": float(np.mean([noc(c, 0.85, n_clicks) for c in curves])), "noc90": float(np.mean(noc90)),
            "nof90": int(sum(n >= n_clicks for n in noc90)), "iou1": float(np.mean([c[0] for c in curves])),
            "miou": float(np.mean([np.mean(c) for c in curves])), **harmful_clicks(curves), "n": len(curves)}
