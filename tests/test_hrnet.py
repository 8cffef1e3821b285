"""The HRNet-W18 + OCR FCFI network matches the official key lists and runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from keylists import read_key_list

from model.clicks import points_tensor
from model.hrnet import HRNetFCFI

FIXTURES = Path(__file__).parent / "fixtures"
H18S = FIXTURES / "hrnet18-ocr48-mid64_released-h18s.tsv"
FCFI_PREFIXES = ("feature_extractor.correction_module.", "feature_extractor.fusion_module.")

CONFIGS = {
    "hrnet18-ocr48-mid64_released-h18s.tsv": dict(width=18, ocr_width=48, mid_ch=64, small=False),
    "hrnet18small-ocr48-mid64_NOT-released.tsv": dict(width=18, ocr_width=48, mid_ch=64, small=True),
    "hrnet18-ocr64-mid64_NOT-released.tsv": dict(width=18, ocr_width=64, mid_ch=64, small=False),
}


@pytest.fixture(scope="module")
def h18s() -> HRNetFCFI:
    torch.manual_seed(0)
    return HRNetFCFI()


def _shapes(net: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_keys_and_shapes_match_official_list(name, h18s):
    expected = read_key_list(FIXTURES / name)
    net = h18s if name == H18S.name else HRNetFCFI(**CONFIGS[name])
    own = _shapes(net)
    assert sorted(set(own) - set(expected)) == []
    assert sorted(set(expected) - set(own)) == []
    assert {k: s for k, s in own.items() if expected[k] != s} == {}
    # Same registration order too, so saved state_dicts list keys as the official ones do.
    assert list(own) == list(expected)


def test_without_fcfi_drops_only_ffcm_cffm_keys():
    net = HRNetFCFI(fcfi=False)
    expected = {k: s for k, s in read_key_list(H18S).items() if not k.startswith(FCFI_PREFIXES)}
    assert _shapes(net) == expected
    assert not net.use_ffcm and not net.use_cffm


def test_parameter_counts(h18s):
    assert sum(p.numel() for p in h18s.parameters()) == 10_156_998
    fe = h18s.feature_extractor
    assert sum(p.numel() for p in fe.correction_module.parameters()) == 169_600
    assert sum(p.numel() for p in fe.fusion_module.parameters()) == 65_811


def test_forward_eval_and_train(h18s):
    torch.manual_seed(1)
    image = torch.rand(1, 4, 96, 128)
    points = points_tensor([[(40, 60, True), (20, 100, False)]])
    new_points = torch.tensor([[20.0, 100.0, 0.0]])
    h18s.eval()
    with torch.no_grad():
        out = h18s(image, points, new_points, 1.0)
    assert out["instances"].shape == (1, 1, 96, 128)
    assert out["instances_aux"].shape == (1, 1, 96, 128)
    assert torch.isfinite(out["instances"]).all()
    for key in ("feedback1", "feedback2"):
        assert out[key].shape == (1, 1, 96, 128)
        assert torch.isfinite(out[key]).all()
        assert out[key].min() >= 0.0 and out[key].max() <= 1.0
    assert out["box_mask"] is None

    # The clicks reach the trunk through maps_transform: moving them changes the logits.
    with torch.no_grad():
        moved = h18s(image, points_tensor([[(70, 20, True), (20, 100, False)]]), new_points, 1.0)
    assert not torch.allclose(moved["instances"], out["instances"])

    h18s.train()
    image = torch.rand(2, 4, 64, 64)
    points = points_tensor([[(30, 40, True)], [(20, 20, False)]])
    try:
        with torch.no_grad():
            new_points = torch.tensor([[30.0, 40.0, 1.0], [20.0, 20.0, 0.0]])
            out = h18s(image, points, new_points, torch.tensor([0.0, 1.0]))
    finally:
        h18s.eval()
    assert out["instances"].shape == (2, 1, 64, 64)
    assert out["box_mask"] is not None and out["box_mask"].shape == (2, 1, 64, 64)
    assert torch.isfinite(out["instances"]).all() and torch.isfinite(out["feedback2"]).all()


def test_requires_new_points(h18s):
    with pytest.raises(ValueError, match="new_points"):
        h18s(torch.rand(1, 4, 32, 32), points_tensor([[(10, 10, True)]]), None, 0.0)


def test_without_fcfi_runs_without_new_points():
    net = HRNetFCFI(small=True, fcfi=False, with_aux_output=False).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 4, 64, 64), points_tensor([[(10, 10, True)]]))
    assert out["instances"].shape == (1, 1, 64, 64)
    assert out["feedback1"] is None and out["feedback2"] is None and out["box_mask"] is None
    assert "instances_aux" not in out
