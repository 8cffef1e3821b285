"""The DeepLabV3+ / ResNet-101 FCFI network matches the official r101 key list and runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from keylists import read_key_list

from model.clicks import points_tensor
from model.deeplab import DeepLabFCFI

KEYS = Path(__file__).parent / "fixtures" / "deeplabv3plus-r101-mid32_released-r101.tsv"
FCFI_PREFIXES = ("feature_extractor.correction_module.", "feature_extractor.feedback_fusion.")


@pytest.fixture(scope="module")
def r101() -> DeepLabFCFI:
    torch.manual_seed(0)
    return DeepLabFCFI(backbone="resnet101", deeplab_ch=256, mid_ch=32, aspp_dropout=0.2)


def _shapes(net: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_r101_keys_and_shapes_match_official_list(r101):
    expected = read_key_list(KEYS)
    assert len(expected) == 781
    own = _shapes(r101)
    assert sorted(set(own) - set(expected)) == []
    assert sorted(set(expected) - set(own)) == []
    assert {k: s for k, s in own.items() if expected[k] != s} == {}


def test_r101_without_fcfi_drops_only_ffcm_cffm_keys():
    net = DeepLabFCFI(fcfi=False)
    expected = {k: s for k, s in read_key_list(KEYS).items() if not k.startswith(FCFI_PREFIXES)}
    assert _shapes(net) == expected
    assert not net.use_ffcm and not net.use_cffm


def test_r101_parameter_count(r101):
    assert sum(p.numel() for p in r101.parameters()) == 58_540_599
    fe = r101.feature_extractor
    assert sum(p.numel() for p in fe.correction_module.parameters()) == 78_432
    assert sum(p.numel() for p in fe.feedback_fusion.parameters()) == 21_317


def test_r101_forward_eval_and_train(r101):
    torch.manual_seed(1)
    image = torch.rand(1, 4, 64, 96)
    points = points_tensor([[(30, 40, True), (12, 70, False)]])
    r101.eval()
    with torch.no_grad():
        out = r101(image, points, torch.tensor([[12.0, 70.0, 0.0]]), 1.0)
    assert out["instances"].shape == (1, 1, 64, 96)
    assert torch.isfinite(out["instances"]).all()
    for key in ("feedback1", "feedback2"):
        assert out[key].shape == (1, 1, 64, 96)
        assert out[key].min() >= 0.0 and out[key].max() <= 1.0
    assert out["box_mask"] is None

    # Train mode (batch 2: the ASPP pooling branch's BN sees one value per sample) gives the soft box.
    r101.train()
    image = torch.rand(2, 4, 64, 96)
    points = points_tensor([[(30, 40, True)], [(20, 20, False)]])
    try:
        with torch.no_grad():
            new_points = torch.tensor([[30.0, 40.0, 1.0], [20.0, 20.0, 0.0]])
            out = r101(image, points, new_points, torch.tensor([0.0, 1.0]))
    finally:
        r101.eval()
    assert out["instances"].shape == (2, 1, 64, 96)
    assert out["box_mask"] is not None and out["box_mask"].shape == (2, 1, 64, 96)
    assert torch.isfinite(out["instances"]).all()


def test_r101_requires_new_points(r101):
    image = torch.rand(1, 4, 32, 32)
    with pytest.raises(ValueError, match="new_points"), torch.no_grad():
        r101.eval()(image, points_tensor([[(10, 10, True)]]), None, 0.0)


def test_unknown_backbone_rejected():
    with pytest.raises(ValueError, match="backbone"):
        DeepLabFCFI(backbone="resnet34")
