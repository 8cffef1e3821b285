"""Metrics on masks and IoU sequences whose values are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from model.evaluation.datasets import decode_mask
from model.metrics import (
    assd,
    boundary_band,
    boundary_iou,
    iou,
    miou_curve,
    noc,
    nof,
    nof_strict,
    outer_contour,
    summarize,
)


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def square(shape: tuple[int, int], r0: int, c0: int, side: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r0 + side, c0:c0 + side] = True
    return m


# ----------------------------------------------------------------------------- IoU
def test_iou_excludes_ignore_pixels() -> None:
    gt = np.zeros((4, 4), np.int8)
    gt[0, :] = 1           # 4 object pixels
    gt[1, :2] = -1         # 2 ignore pixels
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = True     # 2 of the object
    pred[1, :2] = True     # both ignore pixels: not counted
    pred[2, 0] = True      # 1 false positive
    assert iou(gt, pred) == pytest.approx(2 / 5)
    # Without the ignore label the two ignore pixels would be false positives: 2 / 7.
    assert iou(np.where(gt == -1, 0, gt), pred) == pytest.approx(2 / 7)
    assert iou(gt, gt == 1) == 1.0
    assert iou(gt, np.zeros_like(pred)) == 0.0


def test_decode_mask_conventions() -> None:
    raw = np.array([[0, 128, 255], [200, 127, 129]], np.uint8)
    assert decode_mask(raw, "grabcut").tolist() == [[0, -1, 1], [1, 0, 1]]
    assert decode_mask(raw, "davis").tolist() == [[0, 1, 1], [1, 1, 1]]
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1, 2] = 255  # object only in the last channel
    assert decode_mask(rgb, "davis").tolist() == [[0, 1]]
    assert decode_mask(rgb, "binary").tolist() == [[0, 1]]
    assert decode_mask(rgb, "grabcut").tolist() == [[0, 0]]  # official: channel 0 only


# ----------------------------------------------------------------------- NoC / NoF
def test_noc_from_known_sequence() -> None:
    ious = [0.5, 0.82, 0.86, 0.91] + [0.95] * 16
    assert noc(ious, 0.80) == 2
    assert noc(ious, 0.85) == 3
    assert noc(ious, 0.90) == 4
    assert noc(ious, 0.96) == 20  # never reached
    assert noc([0.9] + [0.0] * 19, 0.90) == 1  # >= and first click counts, later drops ignored
    late = [0.5] * 19 + [0.92]
    assert noc(late, 0.90) == 20  # reached exactly at click 20: NoC 20 ...
    assert nof([noc(late, 0.90)]) == 1  # ... so the official NoF counts it as a failure (quirk)
    assert nof_strict([late], 0.90) == 0  # while it did reach the threshold


def test_summarize() -> None:
    a = [0.5, 0.82, 0.86, 0.91] + [0.95] * 16
    b = [0.3] * 20
    c = [0.88] * 20
    s = summarize([a, b, c])
    assert s["noc80"] == pytest.approx((2 + 20 + 1) / 3)
    assert s["noc85"] == pytest.approx((3 + 20 + 1) / 3)
    assert s["noc90"] == pytest.approx((4 + 20 + 20) / 3)
    assert s["nof85"] == 1 and s["nof90"] == 2
    assert s["nof85_strict"] == 1 and s["nof90_strict"] == 2
    assert len(s["miou"]) == 20
    assert s["miou"][0] == pytest.approx((0.5 + 0.3 + 0.88) / 3)
    assert miou_curve([[0.2, 0.4], [0.4, 0.8]]) == pytest.approx([0.3, 0.6])


# ---------------------------------------------------------------------------- BIoU
def test_boundary_band_of_a_square() -> None:
    # 100x100 image: d = round(0.02 * 141.4) = 3 erosions with a 3x3 kernel -> a 3-px inner band.
    m = square((100, 100), 20, 30, 40).astype(np.uint8)
    band = boundary_band(m)
    expected = square((100, 100), 20, 30, 40) & ~square((100, 100), 23, 33, 34)
    assert np.array_equal(band > 0, expected)
    # The image border counts as boundary (zero pad).
    full = np.ones((100, 100), np.uint8)
    assert (boundary_band(full) > 0).sum() == 100 * 100 - 94 * 94


def test_biou_shifted_square_matches_band_iou() -> None:
    shape = (100, 100)
    gt = square(shape, 20, 20, 40).astype(np.int8)
    pred = square(shape, 20, 25, 40)  # shifted right by 5
    gb = square(shape, 20, 20, 40) & ~square(shape, 23, 23, 34)
    pb = square(shape, 20, 25, 40) & ~square(shape, 23, 28, 34)
    expected = (gb & pb).sum() / (gb | pb).sum()
    assert boundary_iou(gt, pred) == pytest.approx(expected)
    assert 0.3 < expected < 0.8
    assert boundary_iou(gt, gt == 1) == 1.0
    assert boundary_iou(gt, np.zeros(shape, bool)) == 0.0
    # BIoU punishes boundary errors much more than IoU does.
    assert boundary_iou(gt, pred) < iou(gt, pred)


def test_biou_concentric_discs() -> None:
    # Radii 30 and 33, d = 3: the bands are rings [27, 30] and [30, 33] that share about one pixel
    # ring (radius 30), so BIoU is about 1/6 (the share of a 1-px ring in the 6-px-wide union).
    shape = (101, 101)
    gt = disc(shape, 50, 50, 30).astype(np.int8)
    pred = disc(shape, 50, 50, 33)
    assert 0.05 < boundary_iou(gt, pred) < 0.3


def test_biou_with_ignore_band() -> None:
    # GrabCut-style: a 4-px ignore band straddling the boundary of a 40x40 square object.
    shape = (100, 100)
    gt = np.zeros(shape, np.int8)
    gt[square(shape, 18, 18, 44)] = -1
    gt[square(shape, 22, 22, 36)] = 1
    pred = square(shape, 20, 20, 40)  # the object as the annotator meant it
    # Default: bands of the binary object, ignore pixels out of both counts -> in [0, 1].
    gb = square(shape, 22, 22, 36) & ~square(shape, 25, 25, 30)
    pb = square(shape, 20, 20, 40) & ~square(shape, 23, 23, 34)
    valid = gt != -1
    expected = (gb & pb & valid).sum() / ((gb | pb) & valid).sum()
    assert boundary_iou(gt, pred) == pytest.approx(expected)
    assert 0.0 < expected < 1.0
    # The official formula leaves the numerator unrestricted: it exceeds 1 here (a known quirk).
    assert boundary_iou(gt, pred, official_ignore=True) > 1.0
    # Without ignore pixels both variants agree.
    plain = square(shape, 20, 20, 40).astype(np.int8)
    shifted = square(shape, 20, 26, 40)
    assert boundary_iou(plain, shifted) == pytest.approx(boundary_iou(plain, shifted, official_ignore=True))


# ---------------------------------------------------------------------------- ASSD
def test_outer_contour_of_square_is_its_perimeter() -> None:
    m = square((30, 30), 5, 7, 10)
    c = outer_contour(m)
    assert np.array_equal(c, m & ~square((30, 30), 6, 8, 8))


def test_assd_concentric_discs() -> None:
    shape = (121, 121)
    gt = disc(shape, 60, 60, 20).astype(np.int8)
    pred = disc(shape, 60, 60, 30)
    assert assd(gt, pred) == pytest.approx(10.0, abs=0.6)
    assert assd(gt, gt == 1) == 0.0


def test_assd_shifted_square_brute_force() -> None:
    shape = (60, 60)
    gt = square(shape, 10, 10, 30).astype(np.int8)
    pred = square(shape, 10, 16, 30)  # shifted right by 6
    # Perimeter pixels of each square, distances by brute force.
    g = np.argwhere(square(shape, 10, 10, 30) & ~square(shape, 11, 11, 28))
    p = np.argwhere(square(shape, 10, 16, 30) & ~square(shape, 11, 17, 28))
    d = cdist(p, g)
    expected = (d.min(axis=1).sum() + d.min(axis=0).sum()) / (len(g) + len(p))
    assert assd(gt, pred) == pytest.approx(expected, rel=1e-6)
    # Vertical sides are 6 px apart and most of the horizontal sides overlap: between 0 and 6.
    assert 1.0 < expected < 6.0


def test_assd_empty_prediction_is_the_diagonal() -> None:
    gt = square((30, 40), 5, 5, 10).astype(np.int8)
    assert assd(gt, np.zeros((30, 40), bool)) == pytest.approx(50.0)
