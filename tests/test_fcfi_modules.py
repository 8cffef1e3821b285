"""FFCM (Eq. 1-3) and CFFM (Eq. 4-5) checked numerically on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.cffm import CollaborativeFeedbackFusionModule
from model.ffcm import FocusedCorrectionModule, box_to_grid, click_box, cosine_affinity, soft_box_mask


class TakeFeatures(nn.Module):
    """Replaces the learned embedding by the last ``c`` input channels (the backbone features F)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -self.c:]


def hand_made_ffcm(h: int = 8, w: int = 8):
    """An FFCM whose embedding is a hand-made 2-channel feature map.

    Left half: direction (1, 0); right half: (0, 1); row 0 holds (1, 1), at 45 degrees to both.
    """
    ffcm = FocusedCorrectionModule(in_ch=2, mid_ch=4, aux_ch=6, expansion_ratio=1.0).eval()
    ffcm.info_encoder = TakeFeatures(2)
    feats = torch.zeros(1, 2, h, w)
    feats[0, 0, :, : w // 2] = 1.0
    feats[0, 1, :, w // 2:] = 1.0
    feats[0, :, 0, :] = 1.0
    return ffcm, feats


def test_cosine_affinity_eq1() -> None:
    emb = torch.tensor([[[[3.0, 0.0, 1.0]], [[4.0, 2.0, 1.0]]]])  # [1, 2, 1, 3]
    a = cosine_affinity(emb, torch.tensor([0]), torch.tensor([0]))
    expected = [1.0, 0.8, 7 / (5 * math.sqrt(2))]
    assert torch.allclose(a.flatten(), torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("label", [1.0, 0.0])
def test_ffcm_blend_eq2_inside_whole_box(label: float) -> None:
    ffcm, feats = hand_made_ffcm()
    h, w = 8, 8
    image = torch.zeros(1, 3, h, w)
    clicks = torch.zeros(1, 3, h, w)
    feedback = torch.full((1, 1, h, w), 0.2)
    new = torch.tensor([[4.0, 1.0, label]])  # a left-half pixel, ratio 1 -> box covers most of the map
    corrected, box = ffcm(image, clicks, feats, feedback, new, soft_box=False)
    assert box is None
    y0, y1, x0, x1 = box_to_grid(click_box(4, 1, h, w, 1.0), h, w, h, w)
    a = torch.zeros(h, w)
    a[:, : w // 2] = 1.0
    a[0, :] = 1 / math.sqrt(2)
    expected = torch.full((h, w), 0.2)
    blend = label * a + (1 - a) * 0.2  # Eq. 2
    expected[y0:y1, x0:x1] = blend[y0:y1, x0:x1]  # crop and paste
    assert torch.allclose(corrected[0, 0], expected, atol=1e-6)
    # Something outside the box must be untouched, and inside the left half equals the label.
    assert (y0, y1, x0, x1) != (0, h, 0, w)
    assert corrected[0, 0, 4, 1].item() == pytest.approx(label)


def test_ffcm_soft_box_eq3() -> None:
    ffcm, feats = hand_made_ffcm(16, 16)
    ffcm.expansion_ratio = 0.5
    h = w = 16
    feedback = torch.full((1, 1, h, w), 0.3)
    new = torch.tensor([[8.0, 3.0, 1.0]])
    corrected, box = ffcm(torch.zeros(1, 3, h, w), torch.zeros(1, 3, h, w), feats, feedback, new, soft_box=True)
    y0, y1, x0, x1 = box_to_grid(click_box(8, 3, h, w, 0.5), h, w, h, w)
    s = lambda t: 1 / (1 + math.exp(-10 * t))  # noqa: E731
    for (i, j) in [(8, 3), (8, 12), (2, 3), (0, 0), (y0, x0)]:
        b = (s(i - y0) - s(i - y1)) * (s(j - x0) - s(j - x1))
        a = 1.0 if j < 8 else 0.0
        if i == 0:
            a = 1 / math.sqrt(2)
        refined = a * 1.0 + (1 - a) * 0.3
        expected = b * refined + (1 - b) * 0.3  # Eq. 3
        assert box[0, 0, i, j].item() == pytest.approx(b, abs=1e-5)
        assert corrected[0, 0, i, j].item() == pytest.approx(expected, abs=1e-5)


def test_click_box_size_and_clipping() -> None:
    h, w, r = 100, 200, 0.3
    y0, y1, x0, x1 = click_box(50, 100, h, w, r)
    assert (y1 - y0, x1 - x0) == (30, 60)  # r*H by r*W
    assert ((y0 + y1) / 2, (x0 + x1) / 2) == (50, 100)  # centred on the click
    assert click_box(2, 195, h, w, r) == (0, 17, 165, 200)  # clipped at the top and right borders
    assert click_box(99, 0, h, w, r) == (84, 100, 0, 30)


def test_soft_box_is_one_inside_zero_far_outside() -> None:
    m = soft_box_mask(torch.tensor([[4.0, 12.0, 4.0, 12.0]]), 16, 16)
    assert m[0, 0, 8, 8].item() == pytest.approx(1.0, abs=1e-6)
    assert m[0, 0, 0, 0].item() < 1e-6
    assert 0.2 < m[0, 0, 4, 8].item() < 0.8  # the edge is soft


def test_cffm_gate_zero_leaves_features_unchanged() -> None:
    torch.manual_seed(0)
    cffm = CollaborativeFeedbackFusionModule(in_ch=16, mid_ch=8).eval()
    nn.init.constant_(cffm.residual_predictor.conv.bias, 1.0)  # residual surely non-zero
    feats = torch.randn(2, 16, 10, 12)
    fb = torch.rand(2, 1, 20, 24)
    with torch.no_grad():
        out0, mu0 = cffm(feats, fb, 0.0)
        out1, mu1 = cffm(feats, fb, torch.tensor([1.0, 1.0]))
        outmix, _ = cffm(feats, fb, torch.tensor([0.0, 1.0]))
    assert torch.equal(out0, feats)
    assert not torch.allclose(out1, feats)
    assert torch.equal(outmix[0], feats[0]) and torch.allclose(outmix[1], out1[1])
    assert mu0.shape == (2, 1, 10, 12) and torch.equal(mu0, mu1)
    assert float(mu0.min()) > 0 and float(mu0.max()) < 1
    # Eq. 5 by hand: F + w_g * Phi3(concat(F, M_u)), one channel broadcast to all of F.
    with torch.no_grad():
        r = cffm.residual_predictor(torch.cat([feats, mu1], 1))
    assert r.shape[1] == 1 and torch.allclose(out1, feats + r, atol=1e-6)


def test_cffm_eq4_feedback_pathway() -> None:
    torch.manual_seed(1)
    cffm = CollaborativeFeedbackFusionModule(in_ch=8, mid_ch=4).eval()
    feats = torch.randn(1, 8, 6, 6)
    fb = torch.rand(1, 1, 6, 6)
    with torch.no_grad():
        _, mu = cffm(feats, fb, 1.0)
        expected = cffm.fusion_encoder(torch.cat([fb, cffm.feature_conv(feats)], 1))
    assert torch.allclose(mu, expected)
