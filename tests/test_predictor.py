"""FCFIPredictor: shapes and ranges, replay == step by step, state round trip, Zoom-In, behaviour, clicked parts.

They run on the backend's ``DEVICE`` (default cpu): ``DEVICE=cuda pytest tests/test_predictor.py`` checks the
predictor on a GPU.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from backend.settings import Settings, predictor_options
from model import Click, FCFIPredictor, PredictorState, build_model
from model.predictor import CLICKED_PARTS_ONLY, clicked_parts
from model.zoom_in import box_iou, expand_box, next_roi, object_roi


def scene(h: int = 150, w: int = 200) -> np.ndarray:
    rgb = np.full((h, w, 3), 40, np.uint8)
    rgb[40:110, 60:150] = (200, 180, 60)
    return rgb


CLICKS = [Click(100, 75, True), Click(20, 20, False), Click(140, 100, True), Click(70, 50, True)]
DEVICE = Settings.from_env().device


@pytest.fixture(scope="module")
def random_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lite0").eval()


@pytest.fixture
def small_net(tiny_net: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(tiny_net)  # the predictor moves its network to DEVICE; the shared one stays put


@pytest.mark.parametrize("flip", [True, False])
def test_output_is_image_sized_probabilities(random_net: torch.nn.Module, flip: bool) -> None:
    pred = FCFIPredictor(random_net, DEVICE, flip=flip)
    pred.set_image(scene(123, 171))
    probs, state = pred.predict([Click(50, 60, True)])
    assert probs.shape == (123, 171) and probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert state.clicks == (Click(50, 60, True),)


def test_replay_equals_step_by_step(small_net: torch.nn.Module) -> None:
    pred = FCFIPredictor(small_net, DEVICE, target_size=160, min_crop_size=40, expansion_ratio=2.0)
    pred.set_image(scene())
    state = None
    for i in range(1, len(CLICKS) + 1):
        probs, state = pred.predict(CLICKS[:i], state)
    assert pred.num_passes == len(CLICKS)  # one network pass per click when the state is given
    replayed, replay_state = pred.predict(CLICKS)
    assert pred.num_passes == 2 * len(CLICKS)
    np.testing.assert_array_equal(replayed, probs)
    assert replay_state.roi == state.roi
    # A serialized state is as good as the live one.
    restored = PredictorState.from_bytes(state.to_bytes())
    extra = CLICKS + [Click(10, 140, False)]
    a, _ = pred.predict(extra, state)
    b, _ = pred.predict(extra, restored)
    np.testing.assert_array_equal(a, b)


class DiskOracle(torch.nn.Module):
    """Deterministic stand-in network: object = disks of radius 20 input pixels around positive clicks.

    It records the input shapes it sees, so the test can check what Zoom-In fed the network.
    """

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x, points, new_points, gate):
        self.shapes.append(tuple(x.shape))
        b, _, h, w = x.shape
        ys = torch.arange(h, dtype=torch.float32, device=x.device).view(1, h, 1)
        xs = torch.arange(w, dtype=torch.float32, device=x.device).view(1, 1, w)
        n = points.shape[1] // 2
        inside = torch.zeros(b, h, w, dtype=torch.bool, device=x.device)
        for i in range(n):
            py, px = points[:, i, 0].view(b, 1, 1), points[:, i, 1].view(b, 1, 1)
            inside |= ((ys - py) ** 2 + (xs - px) ** 2 <= 400) & (py >= 0)
        return {"instances": (inside.float() * 8 - 4).unsqueeze(1), "feedback2": None}


def test_zoom_in_crops_roi_from_second_click() -> None:
    oracle = DiskOracle()
    pred = FCFIPredictor(oracle, DEVICE, target_size=160, min_crop_size=40, expansion_ratio=1.5, flip=False)
    pred.set_image(np.zeros((300, 400, 3), np.uint8))
    clicks = [Click(190, 130, True), Click(200, 140, True)]
    p1, s1 = pred.predict(clicks[:1])
    assert s1.roi is None and oracle.shapes[-1] == (1, 4, 300, 400)  # first click: whole image
    assert p1[130, 190] > 0.9 and p1[130, 215] < 0.1
    _, s2 = pred.predict(clicks, s1)
    # Object box rows 110..150, cols 170..210 (the radius-20 disk): 41 px expanded 1.5x about the centre.
    assert s2.roi == (99, 161, 159, 221)
    assert oracle.shapes[-1] == (1, 4, 160, 160)  # the ROI is resized to target_size
    _, s4 = pred.predict(clicks + [Click(5, 5, False)], s2)
    assert s4.roi[0] == 0 and s4.roi[2] == 0  # a click outside the ROI forces a new one


def test_state_must_match_image_and_prefix(random_net: torch.nn.Module) -> None:
    pred = FCFIPredictor(random_net, DEVICE, flip=False)
    pred.set_image(scene())
    _, state = pred.predict(CLICKS[:2])
    with pytest.raises(ValueError, match="prefix"):
        pred.predict([CLICKS[1], CLICKS[0], CLICKS[2]], state)
    pred.set_image(scene()[:, ::-1].copy())
    with pytest.raises(ValueError, match="another image"):
        pred.predict(CLICKS[:3], state)


def test_bad_clicks_and_images_are_rejected(random_net: torch.nn.Module) -> None:
    pred = FCFIPredictor(random_net, DEVICE)
    with pytest.raises(RuntimeError):
        pred.predict(CLICKS)
    with pytest.raises(ValueError):
        pred.set_image(np.zeros((10, 10), np.uint8))
    pred.set_image(scene())
    with pytest.raises(ValueError, match="at least one"):
        pred.predict([])
    with pytest.raises(ValueError, match="outside"):
        pred.predict([Click(200, 10, True)])  # x == width
    with pytest.raises(ValueError, match="outside"):
        pred.predict([Click(float("nan"), 10, True)])


def test_big_image_is_limited_to_max_size(random_net: torch.nn.Module) -> None:
    seen = []
    net = random_net

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = net

        def forward(self, x, *args):
            seen.append(tuple(x.shape))
            return self.inner(x, *args)

    pred = FCFIPredictor(Spy(), DEVICE, max_size=256, flip=True)
    pred.set_image(np.zeros((300, 600, 3), np.uint8))
    probs, _ = pred.predict([Click(300, 150, True)])
    assert seen == [(2, 4, 128, 256)] and probs.shape == (300, 600)


def test_positive_click_on_uniform_image_raises_probability_there(small_net: torch.nn.Module) -> None:
    pred = FCFIPredictor(small_net, DEVICE, flip=False)
    for value in (30, 128, 250):
        pred.set_image(np.full((120, 160, 3), value, np.uint8))
        probs, _ = pred.predict([Click(80, 60, True)])
        assert probs[60, 80] > 2 * probs[5, 5]
        negative, _ = pred.predict([Click(80, 60, False)])
        assert probs[60, 80] > negative[60, 80]
        # As a later click too: after a negative click elsewhere, a positive one raises it.
        before, state = pred.predict([Click(150, 110, False)])
        after, _ = pred.predict([Click(150, 110, False), Click(80, 60, True)], state)
        assert after[60, 80] > before[60, 80]


def test_zoom_roi_helpers() -> None:
    prob = np.zeros((100, 100), np.float32)
    prob[40:60, 45:55] = 0.9
    roi = object_roi(prob, [Click(50, 50, True), Click(90, 10, False)], 1.0, 0)
    assert roi == (10, 60, 44, 90)  # negative clicks count too (FCFI); box ends grow by the +1 pixel
    assert expand_box((10, 19, 10, 19), 2.0, 0) == (4, 24, 4, 24)  # round half to even
    assert expand_box((10, 19, 10, 19), 1.0, 40) == (-6, 34, -6, 34)
    assert box_iou((0, 9, 0, 9), (0, 9, 5, 14)) == pytest.approx(50 / 150)
    kept = next_roi((0, 99, 0, 99), prob, [Click(50, 50, True)], 10.0, 0)
    assert kept == (0, 99, 0, 99)  # new candidate overlaps enough: keep the old ROI
    moved = next_roi((0, 30, 0, 30), prob, [Click(50, 50, True)], 1.0, 0)
    assert moved == (40, 60, 44, 54)  # a click left the old ROI: recompute
    assert next_roi(None, np.zeros_like(prob), [Click(5, 5, True)], 2.0, 10) is None


class BlobOracle(DiskOracle):
    """:class:`DiskOracle` that also lights up a fixed square (input rows and columns 10-30) wherever one clicks:
    the stray part a real network sometimes adds beside the object."""

    def forward(self, x, points, new_points, gate):
        out = super().forward(x, points, new_points, gate)
        out["instances"][:, :, 10:31, 10:31] = 4.0
        return out


def test_clicked_parts_keeps_only_the_parts_under_positive_clicks() -> None:
    probs = np.full((60, 80), 0.1, np.float32)
    probs[5:20, 5:20] = 0.9  # part A
    probs[30:50, 40:70] = 0.8  # part B
    probs[20, 20] = 0.7  # touches A only at a corner: 8-connected, so it is part of A
    thr = 0.49
    only_a = clicked_parts(probs, [Click(10, 10, True), Click(50, 40, False)], thr)
    assert (only_a > thr).sum() == 15 * 15 + 1 and only_a[20, 20] == probs[20, 20]
    np.testing.assert_array_equal(only_a[probs <= thr], probs[probs <= thr])  # the background is untouched
    assert 0.48 < only_a[40, 50] <= thr  # B leaves the mask and stays a probability just below the threshold
    both = clicked_parts(probs, [Click(10, 10, True), Click(50, 40, True)], thr)
    np.testing.assert_array_equal(both, probs)
    # No positive click on the mask (a miss, or only negatives): nothing is dropped rather than everything.
    assert clicked_parts(probs, [Click(75, 2, True)], thr) is probs
    assert clicked_parts(probs, [Click(10, 10, False)], thr) is probs
    one_part = np.where(probs > 0.85, probs, np.float32(0.1))
    assert clicked_parts(one_part, [Click(75, 2, True)], thr) is one_part
    assert probs[40, 50] == np.float32(0.8)  # the input is never written


@pytest.mark.parametrize("parts_only", [True, False])
def test_predict_answers_only_the_clicked_parts(parts_only: bool) -> None:
    pred = FCFIPredictor(BlobOracle(), "cpu", zoom_in=False, flip=False, clicked_parts_only=parts_only)
    pred.set_image(np.zeros((100, 150, 3), np.uint8))
    clicks = [Click(100, 60, True)]
    probs, state = pred.predict(clicks)
    mask = pred.mask(probs)
    assert mask[60, 100] and mask[60, 80]  # the clicked disk
    assert mask[20, 20] == (not parts_only)  # the stray square only without the clean-up
    # The state keeps the network's own map (its feedback next time), stray part included, in both cases; a
    # restored state gives the same answer.
    assert state.feedback[20, 20] > 240 and state.probs[20, 20] > 0.9
    again, _ = pred.predict(clicks, PredictorState.from_bytes(state.to_bytes()))
    assert pred.mask(again)[20, 20] == (not parts_only) and pred.mask(again)[60, 100]
    # A positive click on the square keeps it.
    both, _ = pred.predict(clicks + [Click(20, 20, True)], state)
    assert pred.mask(both)[20, 20] and pred.mask(both)[60, 100]


def test_clicked_parts_setting_reaches_the_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    assert predictor_options(Settings.from_env())["clicked_parts_only"] is CLICKED_PARTS_ONLY
    monkeypatch.setenv("CLICKED_PARTS_ONLY", "false")
    options = predictor_options(Settings.from_env())
    assert options["clicked_parts_only"] is False
    assert FCFIPredictor(DiskOracle(), "cpu", **options).clicked_parts_only is False
