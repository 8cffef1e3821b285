"""Zoom-In: choose the region of interest the network sees from the second click on.

Pure functions on numpy masks and boxes. Boxes are ``(rmin, rmax, cmin, cmax)`` in image pixels,
ends **inclusive**, as in the official code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.clicks import Click

Box = tuple[int, int, int, int]


def mask_bbox(mask: np.ndarray) -> Box | None:
    """Bounding box of the True pixels of a HxW bool mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def expand_box(box: Box, ratio: float, min_size: int = 0) -> Box:
    """Scale a box by ``ratio`` about its centre, each side at least ``min_size`` pixels."""
    rmin, rmax, cmin, cmax = box
    rc, cc = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
    height = max(ratio * (rmax - rmin + 1), min_size)
    width = max(ratio * (cmax - cmin + 1), min_size)
    return (int(round(rc - 0.5 * height)), int(round(rc + 0.5 * height)),
            int(round(cc - 0.5 * width)), int(round(cc + 0.5 * width)))


def clamp_box(box: Box, height: int, width: int) -> Box:
    """Clip a box to a height x width image."""
    rmin, rmax, cmin, cmax = box
    return (max(rmin, 0), min(rmax, height - 1), max(cmin, 0), min(cmax, width - 1))


def box_iou(a: Box, b: Box) -> float:
    """IoU of two inclusive boxes."""
    ih = min(a[1], b[1]) - max(a[0], b[0]) + 1
    iw = min(a[3], b[3]) - max(a[2], b[2]) + 1
    inter = max(ih, 0) * max(iw, 0)
    area_a = (a[1] - a[0] + 1) * (a[3] - a[2] + 1)
    area_b = (b[1] - b[0] + 1) * (b[3] - b[2] + 1)
    return inter / float(area_a + area_b - inter)


def clicks_inside(box: Box, clicks: Sequence[Click]) -> bool:
    """Whether every click (positive or negative, as FCFI does) lies inside the box."""
    rmin, rmax, cmin, cmax = box
    return all(rmin <= c.y <= rmax and cmin <= c.x <= cmax for c in clicks)


def object_roi(prob_map: np.ndarray, clicks: Sequence[Click], expansion_ratio: float,
               min_crop_size: int, prob_thresh: float = 0.5) -> Box | None:
    """ROI around the predicted object and **all** clicks (FCFI; RITM used positive clicks only).

    Args:
        prob_map: HxW float probabilities that track the object.
        clicks: the clicks so far, image pixels.
    Returns:
        the expanded, clamped box, or None when nothing is above ``prob_thresh``.
    """
    mask = prob_map > prob_thresh
    if not mask.any():
        return None
    mask = mask.copy()
    h, w = mask.shape
    for c in clicks:
        mask[min(max(int(c.y), 0), h - 1), min(max(int(c.x), 0), w - 1)] = True
    box = mask_bbox(mask)
    assert box is not None
    return clamp_box(expand_box(box, expansion_ratio, min_crop_size), h, w)


def next_roi(previous: Box | None, prob_map: np.ndarray, clicks: Sequence[Click], expansion_ratio: float,
             min_crop_size: int, recompute_iou: float = 0.5) -> Box | None:
    """The ROI for this click: keep ``previous`` unless a click left it or the object moved.

    Returns None (use the full image) when the tracked map is empty.
    """
    candidate = object_roi(prob_map, clicks, expansion_ratio, min_crop_size)
    if candidate is None:
        return None
    if previous is None or not clicks_inside(previous, clicks) or box_iou(candidate, previous) < recompute_iou:
        return candidate
    return previous
