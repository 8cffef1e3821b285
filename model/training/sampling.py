"""Click simulation for training (paper Sec. 3.4): the multi-point sampler and next-click sampling.

Clicks here are ``(y, x, positive)`` tuples in the pixels of the (augmented) training crop.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

MAX_POINTS = 24
PROB_GAMMA = 0.8


def _geometric_count(rng: np.random.Generator, low: int, high: int, gamma: float = PROB_GAMMA) -> int:
    """A count in [low, high] with P(k) proportional to gamma^(k - low)."""
    ks = np.arange(low, high + 1)
    p = gamma ** (ks - low)
    return int(rng.choice(ks, p=p / p.sum()))


def interior_point(mask: np.ndarray, rng: np.random.Generator, inner_k: float = 1.7) -> tuple[int, int] | None:
    """A random object pixel deep inside: distance to the boundary > max distance / inner_k."""
    if not mask.any():
        return None
    dt = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(dt > dt.max() / inner_k)
    if ys.size == 0:
        ys, xs = np.nonzero(dt >= dt.max())
    i = rng.integers(ys.size)
    return int(ys[i]), int(xs[i])


def _pick(mask: np.ndarray, rng: np.random.Generator, k: int) -> list[tuple[int, int]]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0 or k <= 0:
        return []
    idx = rng.choice(ys.size, size=min(k, ys.size), replace=False)
    return [(int(ys[i]), int(xs[i])) for i in idx]


def sample_initial_clicks(mask: np.ndarray, rng: np.random.Generator, others: np.ndarray | None = None,
                          max_points: int = MAX_POINTS, ignore: np.ndarray | None = None
                          ) -> list[tuple[int, int, bool]]:
    """The multi-point sampler: a first positive click at the object centre, then extra clicks.

    Args:
        mask: HxW bool object mask (non-empty).
        others: HxW bool mask of other objects in the image (negatives may land there), or None.
        ignore: HxW bool mask of uncertain pixels no click may land on, or None.
    Returns:
        chronological clicks; the first is the centre click. Extra positives: Categorical{0..23}, extra
        negatives Categorical{0..24}, both with P(k) ~ 0.8^k; negatives come from a border ring of width
        ceil(0.1*sqrt(area)) (p 0.5), other objects (0.4) or anywhere in the background (0.1).
    """
    first = interior_point(mask, rng)
    if first is None:
        raise ValueError("cannot sample clicks on an empty mask")
    clicks = [(first[0], first[1], True)]
    n_pos = _geometric_count(rng, 0, max_points - 1)
    n_neg = _geometric_count(rng, 0, max_points)
    if n_pos:
        eroded = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=3).astype(bool)
        pool = eroded if (rng.random() < 0.9 and eroded.sum() > 10) else mask
        clicks += [(y, x, True) for y, x in _pick(pool, rng, n_pos)]
    if n_neg:
        bg = ~mask if ignore is None else ~mask & ~ignore
        width = max(1, math.ceil(0.1 * math.sqrt(mask.sum())))
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=width).astype(bool) & bg
        other = others & bg if others is not None else None
        negs: list[tuple[int, int]] = []
        for _ in range(n_neg):
            r = rng.random()
            pool = ring if r < 0.5 else (other if (r < 0.9 and other is not None and other.any()) else bg)
            negs += _pick(pool if pool.any() else bg, rng, 1)
        clicks += [(y, x, False) for y, x in negs]
    # Keep the centre click first (it is the "new" click of the first round), shuffle the rest.
    rest = clicks[1:]
    order = rng.permutation(len(rest))
    return [clicks[0]] + [rest[i] for i in order]


def next_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator,
               ignore: np.ndarray | None = None) -> tuple[int, int, bool] | None:
    """Training's corrective click: a random pixel deep inside the larger error region.

    Args:
        pred: HxW bool prediction (probability > ``model.predictor.MASK_THRESHOLD``).
        gt: HxW bool object mask.
    Returns:
        ``(y, x, positive)`` with positive iff the false-negative region is deeper than the false-positive
        one, at a random pixel whose distance to the error boundary exceeds half the maximum; None when
        the prediction is already perfect.
    """
    valid = ~ignore if ignore is not None else np.ones_like(gt, dtype=bool)
    fn = gt & ~pred & valid
    fp = ~gt & pred & valid
    if not fn.any() and not fp.any():
        return None
    dts = [cv2.distanceTransform(np.pad(m.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1] for m in (fn, fp)]
    positive = dts[0].max() > dts[1].max()
    dt = dts[0] if positive else dts[1]
    ys, xs = np.nonzero(dt > dt.max() / 2)
    i = rng.integers(ys.size)
    return int(ys[i]), int(xs[i]), bool(positive)
