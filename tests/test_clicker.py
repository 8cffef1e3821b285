"""The protocol clicker on hand-made masks: which pixel, which sign, ignore band, no repeats."""

from __future__ import annotations

import numpy as np

from model.clicker import Clicker, error_distance, next_click_position
from model.clicks import Click


def rect(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int, value: int = 1) -> np.ndarray:
    """int8 mask with ``value`` on rows r0..r1 and cols c0..c1 (inclusive)."""
    m = np.zeros(shape, np.int8)
    m[r0:r1 + 1, c0:c1 + 1] = value
    return m


def test_first_click_is_positive_at_first_row_major_maximum() -> None:
    # Object rows 2..8 (7 rows), cols 3..11 (9 cols): distance to the nearest non-object pixel is
    # min(4 vertically, c - 2, 12 - c), so the maximum 4 is reached at row 5, cols 6..8.
    gt = rect((20, 20), 2, 8, 3, 11)
    assert next_click_position(gt, np.zeros_like(gt, bool)) == (5, 6, True)
    clicker = Clicker(gt)
    click = clicker.next_click(np.zeros_like(gt, bool))
    assert click == Click(6.0, 5.0, True)  # x = column, y = row
    assert clicker.clicks == [click]


def test_exact_euclidean_distance() -> None:
    # A 5x5 error block: centre pixel is 3 from the surrounding zeros; corner pixels 1.
    err = np.zeros((9, 9), bool)
    err[2:7, 2:7] = True
    dt = error_distance(err)
    assert dt[4, 4] == 3.0
    assert dt[2, 2] == 1.0
    assert dt[0, 0] == 0.0
    # Exact L2 (not chamfer): the pixel (3, 3) is sqrt(2^2 + 0^2) = 2 from the zeros at row/col 1.
    assert abs(dt[3, 3] - 2.0) < 1e-5


def test_negative_click_when_false_positive_is_larger() -> None:
    gt = rect((30, 30), 2, 6, 2, 6)            # small object, fully predicted
    pred = gt.astype(bool).copy()
    pred[10:25, 10:25] = True                   # big false positive (max DT 8)
    pred[3, 3] = False                          # tiny false negative (DT 1)
    row, col, positive = next_click_position(gt, pred)
    assert positive is False
    assert (row, col) == (17, 17)               # centre of the 15x15 FP block


def test_tie_goes_negative() -> None:
    gt = rect((20, 40), 5, 9, 5, 9)             # 5x5 object, not predicted: FN max DT 3
    pred = rect((20, 40), 5, 9, 25, 29).astype(bool)  # 5x5 false positive: FP max DT 3
    row, col, positive = next_click_position(gt, pred)
    assert positive is False
    assert (row, col) == (7, 27)


def test_image_border_counts_as_boundary() -> None:
    # Object is the top band rows 0..4 of a 10x12 image: without the 1-px zero pad the distance
    # would grow towards row 0; with it, rows 1..3 are farthest from a boundary (distance 2 vs 3).
    gt = rect((10, 12), 0, 4, 0, 11)
    row, col, positive = next_click_position(gt, np.zeros_like(gt, bool))
    assert positive is True
    assert (row, col) == (2, 2)  # distance 3: to the pad row -1, row 5 and pad col -1 (first row-major)


def test_ignore_band_is_not_an_error() -> None:
    # Object rows 2..17, cols 2..17, with its left part cols 2..11 marked ignore (-1): only the
    # unignored object part cols 12..17 is a false negative, so its centre is clicked, and the
    # ignore pixels act as non-error (a boundary) for the distance transform.
    gt = rect((20, 20), 2, 17, 2, 17)
    gt[2:18, 2:12] = -1
    row, col, positive = next_click_position(gt, np.zeros_like(gt, bool))
    assert positive is True
    assert gt[row, col] == 1
    assert col == 14  # cols 12..17 -> distance min(col - 11, 18 - col) peaks at 3 at cols 14, 15
    # A prediction covering the ignore band (false positive there) is no error at all.
    assert next_click_position(gt, gt != 0) is None
    # ... and neither is missing it.
    assert next_click_position(gt, gt == 1) is None


def test_no_pixel_is_clicked_twice() -> None:
    # A prediction that never changes: the clicker must walk to new pixels and finally stop.
    gt = rect((12, 12), 3, 5, 3, 5)  # 3x3 object = 9 pixels
    pred = np.zeros_like(gt, bool)
    clicker = Clicker(gt)
    seen = set()
    for _ in range(20):
        c = clicker.next_click(pred)
        if c is None:
            break
        assert (c.x, c.y) not in seen
        assert gt[int(c.y), int(c.x)] == 1 and c.positive
        seen.add((c.x, c.y))
    assert len(seen) == 9  # every object pixel once, then nothing left to click
    assert clicker.next_click(pred) is None
    assert clicker.clicks[0] == Click(4.0, 4.0, True)  # the centre first


def test_perfect_prediction_gives_no_click() -> None:
    gt = rect((10, 10), 2, 6, 2, 6)
    assert Clicker(gt).next_click(gt == 1) is None
