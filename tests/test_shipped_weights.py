"""The shipped default model (``model/weights/lite0_fcfi.pth``) loads and segments a real-looking object.

The image is drawn here: an object with its own colour and texture on a cluttered background, so the
network must find the object's extent from one click, not just threshold brightness.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import default_checkpoint_path, load_checkpoint
from model.clicks import Click
from model.predictor import FCFIPredictor

WEIGHTS = default_checkpoint_path()


def drawn_scene(h: int = 360, w: int = 480, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 480x360 RGB image: a red textured ellipse in front of grey-green blotches; and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:] = (110, 120, 100)
    for _ in range(25):  # background clutter: blurry blotches
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(15, 60)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        rgb += blob * rng.uniform(-40, 40, 3)
    obj = ((xx - 250) / 110.0) ** 2 + ((yy - 170) / 85.0) ** 2 <= 1
    texture = 15 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    rgb[obj] = np.array([190, 50, 45], np.float32) + texture[obj][:, None]
    rgb += rng.normal(0, 6, rgb.shape)
    return rgb.clip(0, 255).astype(np.uint8), obj


@pytest.mark.skipif(not WEIGHTS.exists(), reason="no shipped weights in this checkout")
def test_shipped_weights_segment_from_one_centre_click() -> None:
    net = load_checkpoint(WEIGHTS)
    assert net.fcfi == "full", "the shipped default is the full FCFI model"
    assert WEIGHTS.stat().st_size < 25 * 2**20
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        predictor = FCFIPredictor(net, device="cpu")
        rgb, obj = drawn_scene()
        predictor.set_image(rgb)
        probs, _ = predictor.predict([Click(250, 170, True)])
    finally:
        torch.set_num_threads(threads)
    mask = probs > 0.49
    iou = (mask & obj).sum() / (mask | obj).sum()
    assert iou > 0.8, f"IoU {iou:.3f}"
    # The click decides what is segmented: a click on the background does not give the ellipse.
    predictor.set_image(rgb)
    other, _ = predictor.predict([Click(40, 320, True)])
    assert ((other > 0.49) & obj).sum() < 0.2 * obj.sum()
