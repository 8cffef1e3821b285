"""The photos validation part, VOC's void band, the harmful-click rates and the click-neighbourhood loss."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.metrics import harmful_clicks
from model.training.data import TRAIN_SETS, AugmentConfig, SampleMaker, build_index, load_entries
from model.training.step import click_neighbourhood, fcfi_loss
from model.training.validation import validation_parts


def make_voc_like(root: Path, n: int = 40) -> None:
    """VOC2012_val-like images: two instances (ids 1, 2), a 255 void band around the first, a tiny third one."""
    (root / "VOC2012_val" / "images").mkdir(parents=True)
    (root / "VOC2012_val" / "labels").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
        labels = np.zeros((80, 100), np.uint8)
        labels[8:42, 8:42] = 255
        labels[10:40, 10:40] = 1
        labels[50:75, 60:95] = 2
        labels[2:6, 90:94] = 3  # 16 px: under the photos part's floor
        cv2.imwrite(str(root / "VOC2012_val" / "images" / f"v{i:03d}.jpg"), img)
        cv2.imwrite(str(root / "VOC2012_val" / "labels" / f"v{i:03d}.png"), labels)


def test_photos_part_is_held_out_whole_images_and_void_is_never_an_object(tmp_path: Path) -> None:
    make_voc_like(tmp_path)
    index = build_index(tmp_path, ["VOC2012_val"])
    photos, train = index["photos"], index["train"]
    assert index["val"] == []  # VOC gives no whole-object entries: its held-out images are photos only
    held = {e.image for e in photos}
    assert held and not held & {e.image for e in train}  # no photo image is ever trained on
    share = len(held) / 40
    assert 0.02 < share < 0.35  # about TRAIN_SETS["VOC2012_val"].photo_fraction of the images
    assert TRAIN_SETS["VOC2012_val"].photo_fraction == pytest.approx(0.12)
    # One entry per object: both instances of each held-out image, never the void id or the tiny part.
    assert sorted(o for e in photos for o in e.objects if e.image == sorted(held)[0]) == [(1,), (2,)]
    assert all(255 not in o and 3 not in o for e in photos + train for o in e.objects)
    assert validation_parts(tmp_path)["photos"] == photos


def test_void_band_is_ignored_by_the_loss_and_never_another_object(tmp_path: Path) -> None:
    make_voc_like(tmp_path)
    train = build_index(tmp_path, ["VOC2012_val"])["train"]
    images = load_entries(tmp_path, train[:3])
    assert images[0].ignore is not None and images[0].ignore.sum() == (images[0].labels == 255).sum()
    maker = SampleMaker(images, AugmentConfig(crop=(64, 64), view_prob=1.0, paste_prob=0.0, merge_prob=0.0))
    rng = np.random.default_rng(1)
    seen_void = 0
    for _ in range(10):
        _, mask, clicks = maker(rng)
        assert set(np.unique(mask)) <= {-1.0, 0.0, 1.0}
        assert all(mask[0, int(y), int(x)] != -1 for y, x, _ in clicks)  # no click lands on the void band
        seen_void += bool((mask == -1).any())
    assert seen_void  # the band reaches the loss as -1 (ignored), not as background or object


def test_harmful_click_rates_count_only_corrections_before_the_target() -> None:
    curves = [
        [0.5, 0.6, 0.55, 0.7, 0.95],  # clicks 2-5 count; click 3 is worse by 0.05
        [0.8, 0.79, 0.91, 0.5],  # click 2 worse by 0.01 (not by more than 0.02); after 0.91 nothing counts
        [0.92, 0.4],  # already at 90% after click 1: nothing counts
        [0.3],  # a curve that stopped: nothing to count
    ]
    r = harmful_clicks(curves)
    assert r["harm_clicks"] == 4 + 2
    assert r["harm"] == pytest.approx(2 / 6) and r["harm02"] == pytest.approx(1 / 6)
    assert harmful_clicks([])["harm"] == 0.0


def test_click_loss_looks_only_at_the_clicks_neighbourhood() -> None:
    near = click_neighbourhood([[(10, 10, True)], [(30, 5, False), (5, 30, True)]], (40, 40), radius=3)
    assert near.shape == (2, 1, 40, 40) and near.dtype == torch.bool
    assert near[0, 0, 10, 10] and near[0, 0, 10, 13] and not near[0, 0, 10, 14]
    assert near[1, 0, 30, 5] and near[1, 0, 5, 30] and not near[1, 0, 10, 10]
    masks = torch.zeros(2, 1, 40, 40)
    masks[:, :, 5:15, 5:15] = 1
    logits = torch.where(masks > 0, 6.0, -6.0)
    wrong_far = logits.clone()
    wrong_far[:, :, 30:, 30:] = 6.0  # wrong far from sample 0's click
    out = {"instances": wrong_far, "feedback1": None, "feedback2": None}
    _, parts = fcfi_loss(out, masks, (0.0, 0.0), near, 1.0)
    right = fcfi_loss({"instances": logits}, masks, (0.0, 0.0), near, 1.0)[1]
    assert parts["instances"] > right["instances"]  # the whole-image term sees the far error ...
    assert parts["clicks"] == pytest.approx(right["clicks"], abs=1e-6) or parts["clicks"] > right["clicks"]
    wrong_near = logits.clone()
    wrong_near[0, 0, 8:13, 8:13] = -6.0
    assert fcfi_loss({"instances": wrong_near}, masks, (0.0, 0.0), near, 1.0)[1]["clicks"] > right["clicks"] + 0.01


@pytest.mark.parametrize("name", ["DSB2018_nuclei", "CamVid", "GrabCut"])
def test_domain_and_evaluation_sets_are_refused_for_training(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="never train"):
        build_index(tmp_path, [name])
