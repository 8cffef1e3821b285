"""Checkpoints in the official format: round trip, weights-only loading, clear mismatch errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import CheckpointError, build_model, load_checkpoint, save_checkpoint
from model.checkpoint import HRNET_CLASS, model_config
from model.clicks import points_tensor

FIXTURES = Path(__file__).parent / "fixtures"


def _run(net: torch.nn.Module) -> dict:
    torch.manual_seed(0)
    x = torch.rand(1, 4, 64, 80)
    pts = points_tensor([[(30, 40, True), (10, 10, False)]])
    with torch.no_grad():
        return net(x, pts, torch.tensor([[10.0, 10.0, 0.0]]), 1.0)


def test_lite0_round_trip_weights_only(tmp_path: Path) -> None:
    net = build_model("lite0", fcfi="full", mid_ch=16).eval()
    # Non-trivial BN statistics, so a missed buffer would show.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    path = save_checkpoint(net, tmp_path / "ck.pth", meta={"trained_on": ["synthetic"]})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"config", "state_dict", "meta"}
    assert raw["config"]["params"]["mid_ch"]["value"] == 16
    loaded = load_checkpoint(path)
    assert loaded.checkpoint_meta == {"trained_on": ["synthetic"]}
    assert not loaded.training
    a, b = _run(net), _run(loaded)
    for key in ("instances", "feedback1", "feedback2"):
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("variant", ["none", "ffcm", "cffm"])
def test_ablation_variants_round_trip(tmp_path: Path, variant: str) -> None:
    net = build_model("lite0", fcfi=variant).eval()
    loaded = load_checkpoint(save_checkpoint(net, tmp_path / f"{variant}.pth"))
    assert loaded.fcfi == variant
    assert torch.equal(_run(net)["instances"], _run(loaded)["instances"])


def test_mismatch_names_missing_unexpected_and_misshapen_keys(tmp_path: Path) -> None:
    net = build_model("lite0")
    state = net.state_dict()
    del state["feature_extractor.head.3.bias"]
    state["feature_extractor.bogus.weight"] = torch.zeros(1)
    state["maps_transform.0.weight"] = torch.zeros(16, 2, 1, 1)
    torch.save({"config": model_config(net), "state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "missing keys (1): feature_extractor.head.3.bias" in msg
    assert "unexpected keys (1): feature_extractor.bogus.weight" in msg
    assert "maps_transform.0.weight (16, 2, 1, 1) vs (16, 3, 1, 1)" in msg


def test_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="'config' and 'state_dict'"):
        load_checkpoint(tmp_path / "x.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save({"config": {"class": "foo.Bar", "params": {}}, "state_dict": {}}, tmp_path / "u.pth")
    with pytest.raises(CheckpointError, match="unknown network class 'foo.Bar'"):
        load_checkpoint(tmp_path / "u.pth")


def test_unsupported_official_option_is_rejected(tmp_path: Path) -> None:
    config = json.loads((FIXTURES / "expected-checkpoint-configs.jsonl").read_text().splitlines()[0])
    config["params"]["use_disks"]["value"] = False
    torch.save({"config": config, "state_dict": {}}, tmp_path / "g.pth")
    with pytest.raises(CheckpointError, match="use_disks=False"):
        load_checkpoint(tmp_path / "g.pth")


def test_official_hrnet_config_is_written_like_the_release() -> None:
    expected = json.loads((FIXTURES / "expected-checkpoint-configs.jsonl").read_text().splitlines()[0])
    config = model_config(build_model("hrnet18"))
    assert config["class"] == HRNET_CLASS == expected["class"]
    assert {k: v["value"] for k, v in config["params"].items()} == \
        {k: v["value"] for k, v in expected["params"].items()}


def test_official_r101_config_is_written_like_the_release() -> None:
    expected = json.loads((FIXTURES / "expected-checkpoint-configs.jsonl").read_text().splitlines()[1])
    config = model_config(build_model("r101"))
    assert config == expected


def test_official_hrnet_checkpoint_loads_strictly(tmp_path: Path) -> None:
    """A file written the way the official code writes it (module. prefix stripped, config of builtins)."""
    expected = json.loads((FIXTURES / "expected-checkpoint-configs.jsonl").read_text().splitlines()[0])
    net = build_model("hrnet18").eval()
    torch.save({"state_dict": net.state_dict(), "config": expected}, tmp_path / "h18s.pth")
    loaded = load_checkpoint(tmp_path / "h18s.pth")
    assert loaded.use_ffcm and loaded.use_cffm
    assert torch.equal(_run(net)["instances"], _run(loaded)["instances"])


def test_ritm_checkpoint_loads_with_fcfi_disabled(tmp_path: Path) -> None:
    """RITM HRNet checkpoints share the class name but have no FFCM/CFFM keys."""
    ritm = build_model("hrnet18s", fcfi=False, ocr_width=48).eval()
    assert not any("correction_module" in k or "fusion_module" in k for k in ritm.state_dict())
    params = {"width": 18, "ocr_width": 48, "small": True, "with_aux_output": True, "use_leaky_relu": True,
              "use_rgb_conv": False, "use_disks": True, "norm_radius": 5, "with_prev_mask": True}
    config = {"class": HRNET_CLASS,
              "params": {k: {"type": "builtin", "value": v, "specified": True} for k, v in params.items()}}
    state = {f"module.{k}": v for k, v in ritm.state_dict().items()}  # DataParallel prefix is accepted
    torch.save({"config": config, "state_dict": state}, tmp_path / "ritm.pth")
    loaded = load_checkpoint(tmp_path / "ritm.pth")
    assert not loaded.use_ffcm and not loaded.use_cffm
    out = _run(loaded)
    assert out["feedback1"] is None and torch.equal(out["instances"], _run(ritm)["instances"])
