"""Metrics of the interactive-segmentation protocol (as the official evaluation computes them).

Masks: ``gt`` is HxW int with 1 object, 0 background, -1 ignore; ``pred`` is HxW bool (or 0/1).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

MAX_CLICKS = 20


def iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU of ``pred`` with the object, both intersection and union excluding ignore pixels.

    Returns:
        float in [0, 1]; 1.0 when both object and prediction are empty outside the ignore region.
    """
    valid = np.asarray(gt) != -1
    obj = (np.asarray(gt) == 1)
    pred = np.asarray(pred).astype(bool)
    inter = np.count_nonzero(obj & pred & valid)
    union = np.count_nonzero((obj | pred) & valid)
    return inter / union if union else 1.0


def noc(ious: Sequence[float], threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """Number of clicks to reach ``threshold``: the first 1-based click whose IoU >= threshold.

    Args:
        ious: IoU after click 1, 2, ... (at least ``max_clicks`` values are looked at, at most).
        threshold: e.g. 0.85.
        max_clicks: the value when the threshold is never reached within the first ``max_clicks``.
    """
    for i, v in enumerate(list(ious)[:max_clicks]):
        if v >= threshold:
            return i + 1
    return max_clicks


def nof(nocs: Sequence[int], max_clicks: int = MAX_CLICKS) -> int:
    """Number of failures as the official code counts them: samples whose NoC equals ``max_clicks``.

    Quirk kept from the official code: a sample that reaches the threshold exactly at the last
    click counts as a failure too (see :func:`nof_strict`).
    """
    return int(sum(1 for n in nocs if n >= max_clicks))


def nof_strict(ious_per_sample: Sequence[Sequence[float]], threshold: float,
               max_clicks: int = MAX_CLICKS) -> int:
    """Samples that never reach ``threshold`` within ``max_clicks`` clicks."""
    return int(sum(1 for ious in ious_per_sample if max(list(ious)[:max_clicks], default=0.0) < threshold))


def miou_curve(ious_per_sample: Sequence[Sequence[float]]) -> list[float]:
    """Mean over samples of the IoU after click 1..N (N = the shortest sequence)."""
    if not ious_per_sample:
        return []
    n = min(len(s) for s in ious_per_sample)
    arr = np.array([list(s)[:n] for s in ious_per_sample], dtype=np.float64)
    return [float(v) for v in arr.mean(axis=0)]


def boundary_band(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """Inner boundary band ``mask - erode(mask)`` of a uint8 mask.

    The erosion uses a 3x3 kernel for d = max(1, round(dilation_ratio * image diagonal)) iterations
    after a 1-px zero pad (so the image border counts as boundary).

    Args:
        mask: HxW uint8.
    Returns:
        HxW uint8 ``mask - erode(mask)`` (never negative).
    """
    h, w = mask.shape
    d = max(1, int(round(dilation_ratio * np.sqrt(h * h + w * w))))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:-1, 1:-1]
    return mask - eroded


def boundary_iou(gt: np.ndarray, pred: np.ndarray, dilation_ratio: float = 0.02,
                 official_ignore: bool = False) -> float:
    """Boundary IoU: IoU of the inner boundary bands (:func:`boundary_band`) of gt==1 and pred.

    Without ignore pixels this is exactly the official value (Berkeley and DAVIS, where the paper
    reports BIoU). With ignore pixels (GrabCut) there are two variants:

    * default: the bands are taken of the binary object mask and ignore pixels are left out of
      both intersection and union, like :func:`iou` (a value in [0, 1]);
    * ``official_ignore=True``: the official formula. gt is cast to uint8 (ignore -1 becomes 255),
      ``G_b = gt - erode(gt)`` and the score is ``|P_b & G_b| / |(P_b | G_b) & (G_b != 255)|``; the
      numerator is not restricted, so with an ignore band around the object the score can exceed 1.

    Args:
        gt: HxW int, 1 object, 0 background, -1 ignore.
        pred: HxW bool prediction.
    Returns:
        float; 1.0 if the union is empty.
    """
    gt = np.asarray(gt)
    p = np.asarray(pred).astype(bool).astype(np.uint8)
    pb = boundary_band(p, dilation_ratio) > 0
    if official_ignore:
        g = gt.astype(np.int16).astype(np.uint8)  # -1 -> 255, as the official cast
        gb_raw = boundary_band(g, dilation_ratio)
        gb = gb_raw > 0
        inter = np.count_nonzero(gb & pb)
        union = np.count_nonzero((gb | pb) & (gb_raw != 255))
    else:
        gb = boundary_band((gt == 1).astype(np.uint8), dilation_ratio) > 0
        valid = gt != -1
        inter = np.count_nonzero(gb & pb & valid)
        union = np.count_nonzero((gb | pb) & valid)
    return inter / union if union else 1.0


def outer_contour(mask: np.ndarray) -> np.ndarray:
    """1-px outer contours (``RETR_EXTERNAL``, drawn with thickness 1) of a bool mask. HxW bool."""
    m = np.asarray(mask).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(m.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=1)
    return out.astype(bool)


def assd(gt: np.ndarray, pred: np.ndarray) -> float:
    """Average symmetric surface distance (pixels) between the outer contours of gt==1 and pred.

    ASSD = (sum of distances from pred-contour pixels to the gt contour + sum of distances from
    gt-contour pixels to the pred contour) / (|gt contour| + |pred contour|), distances from
    ``scipy.ndimage.distance_transform_edt``. If exactly one of the contours is empty (e.g. an
    empty prediction) the distance is undefined; the image diagonal is returned as the worst case.
    Both empty gives 0.
    """
    gb = outer_contour(np.asarray(gt) == 1)
    pb = outer_contour(pred)
    n_g, n_p = int(gb.sum()), int(pb.sum())
    if n_g == 0 and n_p == 0:
        return 0.0
    if n_g == 0 or n_p == 0:
        h, w = gb.shape
        return float(np.sqrt(h * h + w * w))
    to_g = distance_transform_edt(~gb)
    to_p = distance_transform_edt(~pb)
    return float((to_g[pb].sum() + to_p[gb].sum()) / (n_g + n_p))


#: Corrective clicks the harmful-click rate looks at: clicks 2 to 5 (1-based), each only while the IoU before it is
#: below :data:`HARM_TARGET`, and "worse by more than" :data:`HARM_MARGIN` for the stricter rate.
HARM_CLICKS = (2, 5)
HARM_TARGET = 0.90
HARM_MARGIN = 0.02


def harmful_clicks(ious_per_sample: Sequence[Sequence[float]], clicks: tuple[int, int] = HARM_CLICKS,
                   target: float = HARM_TARGET, margin: float = HARM_MARGIN) -> dict[str, float | int]:
    """How often a corrective click makes the mask worse.

    A click ``k`` in ``clicks`` (1-based, inclusive) counts when it was made before the sample reached ``target``
    (the IoU after click ``k - 1`` is below it) and the curve has a value after it; it is *harmful* when the IoU
    after it is lower than before, and *harmful by more than margin* when lower by more than ``margin``.

    Args:
        ious_per_sample: per sample the IoU after click 1, 2, ... (curves stopped at ``target`` are fine: the
            clicks after it do not count anyway).
    Returns:
        ``{"harm_clicks": counted clicks, "harm": share harmful, "harm02": share harmful by more than margin}``
        (shares in [0, 1]; 0.0 when no click counts).
    """
    counted = worse = much = 0
    first, last = clicks
    for ious in ious_per_sample:
        ious = list(ious)
        for k in range(first, last + 1):
            if k > len(ious) or ious[k - 2] >= target:
                break
            counted += 1
            drop = ious[k - 2] - ious[k - 1]
            worse += drop > 0
            much += drop > margin
    return {"harm_clicks": counted, "harm": worse / counted if counted else 0.0,
            "harm02": much / counted if counted else 0.0}


def summarize(ious_per_sample: Sequence[Sequence[float]], max_clicks: int = MAX_CLICKS
              ) -> dict[str, float | int | list[float]]:
    """NoC@80/85/90 (means), NoF@85/90 (official and strict counts), the mIoU curve and the harmful-click rates
    (:func:`harmful_clicks`)."""
    out: dict[str, float | int | list[float]] = {}
    for thr in (0.80, 0.85, 0.90):
        key = f"{round(thr * 100)}"
        nocs = [noc(s, thr, max_clicks) for s in ious_per_sample]
        out[f"noc{key}"] = float(np.mean(nocs)) if nocs else float("nan")
        if thr >= 0.85:
            out[f"nof{key}"] = nof(nocs, max_clicks)
            out[f"nof{key}_strict"] = nof_strict(ious_per_sample, thr, max_clicks)
    out["miou"] = miou_curve(ious_per_sample)
    out.update(harmful_clicks(ious_per_sample))
    return out


def bootstrap_mean_changes(before: Sequence[float], after: Sequence[float], seed: int = 0,
                           resamples: int = 10_000) -> tuple[float, np.ndarray]:
    """Paired bootstrap of the mean change ``after - before`` over samples scored by both.

    Returns:
        the observed mean change and the ``resamples`` resampled mean changes (samples drawn with replacement,
        pairs kept together; a fixed ``seed``, so the figures repeat).
    """
    d = np.asarray(after, float) - np.asarray(before, float)
    if d.size == 0:
        raise ValueError("no paired samples")
    rng = np.random.default_rng(seed)
    return float(d.mean()), d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
