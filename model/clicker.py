"""The click simulator of the standard NoC protocol (the official ``Clicker``).

Given the ground truth and the current prediction, the next click goes to the error pixel farthest
from any boundary of any error region:

1. FN = gt & ~pred & ~ignore, FP = ~gt & pred & ~ignore;
2. each map is padded by a 1-px zero border (image borders count as boundary), transformed with
   ``cv2.distanceTransform(DIST_L2, maskSize=0)`` (exact Euclidean) and cropped back;
3. both are multiplied by the not-clicked map, so a pixel is never clicked twice;
4. the click is positive iff max DT(FN) > max DT(FP) (ties go negative), at the first pixel in
   row-major order attaining that maximum. No connected components are involved.

When no unclicked error pixel is left (both maxima are 0: the prediction is perfect outside the
ignore region, or every remaining error pixel was clicked already) there is no click to make and
:meth:`Clicker.next_click` returns None; the harness then keeps the previous prediction. (The
official code would place a negative click at the first zero-distance pixel instead.)
"""

from __future__ import annotations

import cv2
import numpy as np

from model.clicks import Click


def error_distance(error: np.ndarray) -> np.ndarray:
    """Exact L2 distance of every error pixel to the nearest non-error pixel or the image border.

    Args:
        error: HxW bool map.
    Returns:
        HxW float32, 0 outside ``error``; a lone error pixel gets 1.
    """
    padded = np.pad(error.astype(np.uint8), 1, mode="constant", constant_values=0)
    dt = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dt[1:-1, 1:-1]


def next_click_position(gt: np.ndarray, pred: np.ndarray, not_clicked: np.ndarray | None = None
                        ) -> tuple[int, int, bool] | None:
    """Where the protocol clicks next.

    Args:
        gt: HxW int mask, 1 object, 0 background, -1 ignore.
        pred: HxW bool (or 0/1) prediction.
        not_clicked: HxW bool, False at pixels clicked before; None = nothing clicked yet.
    Returns:
        ``(row, col, positive)`` or None when no unclicked error pixel is left.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred).astype(bool)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} differ in size")
    valid = gt != -1
    obj = gt == 1
    fn = obj & ~pred & valid
    fp = ~obj & pred & valid
    fn_dt = error_distance(fn)
    fp_dt = error_distance(fp)
    if not_clicked is not None:
        fn_dt *= not_clicked
        fp_dt *= not_clicked
    fn_max, fp_max = float(fn_dt.max()), float(fp_dt.max())
    positive = fn_max > fp_max
    dt, best = (fn_dt, fn_max) if positive else (fp_dt, fp_max)
    if best <= 0.0:
        return None
    # argmax returns the first occurrence in C (row-major) order.
    row, col = np.unravel_index(int(np.argmax(dt == best)), dt.shape)
    return int(row), int(col), bool(positive)


class Clicker:
    """Simulated user for one sample: remembers its clicks and never clicks a pixel twice.

    Args:
        gt: HxW int mask, 1 object, 0 background, -1 ignore.
    """

    def __init__(self, gt: np.ndarray) -> None:
        self.gt = np.asarray(gt)
        self.not_clicked = np.ones(self.gt.shape, np.float32)
        #: chronological clicks so far (``x`` = column, ``y`` = row, integer pixel positions).
        self.clicks: list[Click] = []

    def next_click(self, pred: np.ndarray) -> Click | None:
        """Make (and remember) the next click for the HxW bool prediction ``pred``.

        Returns:
            the click, or None when no unclicked error pixel is left.
        """
        pos = next_click_position(self.gt, pred, self.not_clicked)
        if pos is None:
            return None
        row, col, positive = pos
        self.not_clicked[row, col] = 0.0
        click = Click(float(col), float(row), positive)
        self.clicks.append(click)
        return click
