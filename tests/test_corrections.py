"""Corrective clicks stay local: the local merge, the click guarantee, and both inside the predictor (replay
contract included)."""

from __future__ import annotations

import numpy as np
import torch

from model import Click, FCFIPredictor, PredictorState
from model.corrections import guarantee_clicks, local_change, merge_radius


def test_local_change_takes_only_the_change_that_reaches_the_click() -> None:
    prev = np.zeros((100, 120), bool)
    prev[20:60, 20:60] = True
    new = prev.copy()
    new[20:60, 60:75] = True  # grows where the click is
    new[80:95, 100:115] = True  # and lights up a blob far away
    take = local_change(prev, new, Click(68, 40, True))
    assert take is not None
    assert take[40, 68] and take[30, 70]  # the grown part is taken
    assert not take[85, 105]  # the far blob is not
    merged = np.where(take, new, prev)
    assert merged[40, 68] and not merged[85, 105]
    # A change that all reaches the click: the new map everywhere; a change that nowhere does: nothing changes.
    assert local_change(prev, np.where(np.arange(120) < 75, new, prev), Click(68, 40, True)) is None
    far = local_change(prev, new, Click(5, 5, False))
    assert far is not None and not far.any()
    assert local_change(prev, prev.copy(), Click(5, 5, True)) is None


def test_merge_reach_scales_with_the_image_and_has_a_floor() -> None:
    assert merge_radius((100, 100)) == 3
    assert merge_radius((3000, 4000)) == 50


def test_guarantee_puts_every_click_disk_on_its_side_and_the_newer_wins() -> None:
    thr = 0.49
    probs = np.full((50, 50), 0.9, np.float32)
    probs[:, 40:] = 0.1
    out = guarantee_clicks(probs, [Click(10, 10, False), Click(45, 25, True)], thr, radius=2)
    assert (out[8:13, 8:13][[0, 2, 2, 2, 4], [2, 0, 2, 4, 2]] <= thr).all()  # the negative disk left the mask
    assert out[10, 10] < thr and out[10, 10] > 0.48  # just below: still a probability map
    assert out[25, 45] > thr and out[25, 47] > thr  # the positive disk joined it
    assert out[30, 30] == probs[30, 30] and probs[10, 10] == np.float32(0.9)  # the rest, and the input, untouched
    # Overlapping clicks: the newer decides.
    newer = guarantee_clicks(probs, [Click(10, 10, False), Click(11, 10, True)], thr, radius=2)
    assert newer[10, 11] > thr and newer[10, 10] > thr and newer[10, 8] <= thr
    # Nothing to do: the same array back.
    assert guarantee_clicks(probs, [Click(10, 10, True)], thr, radius=2) is probs


class SquareNet(torch.nn.Module):
    """Stand-in network that answers a fixed square (input rows and columns 10-60) whatever one clicks, plus a
    second square (rows and columns 70-90) once there are three clicks: a corrective click far from the change."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, points, new_points, gate):
        out = torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), -4.0)
        out[:, :, 10:61, 10:61] = 4.0
        if int((points[0, :, 2] >= 0).sum()) >= 3:
            out[:, :, 70:91, 70:91] = 4.0
        return {"instances": out, "feedback2": None}


def test_negative_click_guarantee_on_a_constructed_case() -> None:
    pred = FCFIPredictor(SquareNet(), "cpu", zoom_in=False, flip=False, click_guarantee=3)
    pred.set_image(np.zeros((100, 100, 3), np.uint8))
    clicks = [Click(30, 30, True), Click(40, 40, False)]  # the network ignores the negative click
    probs, state = pred.predict(clicks)
    mask = pred.mask(probs)
    yy, xx = np.ogrid[:100, :100]
    assert not mask[(yy - 40) ** 2 + (xx - 40) ** 2 <= 9].any()  # the click's disk left the mask
    assert mask[30, 30] and mask[40, 45]  # the rest of the object stayed
    assert state.feedback[40, 40] > 240  # the state keeps the network's map
    off = FCFIPredictor(SquareNet(), "cpu", zoom_in=False, flip=False, click_guarantee=-1)
    off.set_image(np.zeros((100, 100, 3), np.uint8))
    assert off.mask(off.predict(clicks)[0])[40, 40]  # without the guarantee the click's pixel stays in the mask


def test_local_merge_drops_a_far_change_and_keeps_the_replay_contract() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    clicks = [Click(30, 30, True), Click(20, 20, True), Click(50, 15, False)]
    # The clicked-parts clean-up would drop the far square as well: off, so that the merge alone is seen.
    only = {"zoom_in": False, "flip": False, "clicked_parts_only": False, "click_guarantee": -1}
    merged = FCFIPredictor(SquareNet(), "cpu", local_merge=True, **only)
    plain = FCFIPredictor(SquareNet(), "cpu", local_merge=False, **only)
    for p in (merged, plain):
        p.set_image(rgb)
    step, state = None, None
    for i in range(1, len(clicks) + 1):
        step, state = merged.predict(clicks[:i], state)
    # The third click appeared far from the new square: without the merge it shows, with it it does not.
    assert plain.mask(plain.predict(clicks)[0])[80, 80]
    assert not merged.mask(step)[80, 80] and merged.mask(step)[30, 30]
    assert state.feedback[80, 80] < 128  # the merged map is what the next click reads
    replayed, replay_state = merged.predict(clicks)
    np.testing.assert_array_equal(replayed, step)
    np.testing.assert_array_equal(replay_state.feedback, state.feedback)
    # From a serialized state of the prefix: the same answer.
    _, prefix = merged.predict(clicks[:2])
    restored, _ = merged.predict(clicks, PredictorState.from_bytes(prefix.to_bytes()))
    np.testing.assert_array_equal(merged.mask(restored), merged.mask(step))
