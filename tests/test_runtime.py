"""The serving runtimes: an exported graph behaves like PyTorch, and a missing runtime never stops the service."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import torch
from ls_stub import FakeLabelStudio
from support import Server, body, keypoint, mask_of, scene, settings_for

from backend.settings import Settings
from model import Click, FCFIPredictor, build_model
from model.clicks import points_tensor
from model.lite0 import grid_size
from model.runtime import RUNTIMES, TorchRunner, available, make_runner

EXPORTED = [r for r in RUNTIMES if r != "torch"]


def session_image() -> np.ndarray:
    """A 70x90 image: a bright disc on a darker textured background."""
    rng = np.random.default_rng(3)
    rgb = rng.normal(60, 10, (70, 90, 3)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:70, :90]
    rgb[(yy - 35) ** 2 + (xx - 40) ** 2 <= 15 ** 2] = (220, 200, 80)
    return rgb


SESSION = [Click(40, 35, True), Click(5, 5, False), Click(50, 30, True), Click(80, 60, False)]


@pytest.mark.parametrize("runtime", EXPORTED)
def test_runtime_gives_pytorch_masks_click_by_click(tiny_net: torch.nn.Module, runtime: str) -> None:
    if not available(runtime):
        pytest.skip(f"{runtime} is not installed")
    # Zoom-In (from click 2), flip and a non-multiple-of-16 size: every path of the predictor.
    options = dict(zoom_in=True, flip=True, target_size=72, min_crop_size=30)
    reference = FCFIPredictor(tiny_net, **options)
    other = FCFIPredictor(tiny_net, runtime=runtime, **options)
    assert other.runtime == runtime
    rgb = session_image()
    reference.set_image(rgb)
    other.set_image(rgb)
    ref_state = other_state = None
    for k in range(1, len(SESSION) + 1):
        ref_probs, ref_state = reference.predict(SESSION[:k], ref_state)
        probs, other_state = other.predict(SESSION[:k], other_state)
        assert np.abs(probs - ref_probs).max() < 1e-4, f"click {k}"
        a, b = reference.mask(ref_probs), other.mask(probs)
        assert (a == b).mean() > 0.999, f"click {k}"
        assert other_state.roi == ref_state.roi
    assert reference.mask(ref_probs)[35, 40] and not reference.mask(ref_probs)[5, 5]  # a real, clicked mask


@pytest.mark.parametrize("runtime", EXPORTED)
def test_the_baseline_variant_runs_exported_too(runtime: str) -> None:
    """``fcfi="none"`` (the paper's baseline of the ablation) reads the previous mask only through its input
    encoding, so its exported graph has no ``prev_mask`` input; the runner must not feed one."""
    if not available(runtime):
        pytest.skip(f"{runtime} is not installed")
    torch.manual_seed(0)
    net = build_model("lite0", fcfi="none").eval()
    runner = make_runner(net, runtime)
    assert "prev_mask" not in runner.inputs and "rgb" in runner.inputs
    reference, other = FCFIPredictor(net, flip=False), FCFIPredictor(net, runtime=runtime, flip=False)
    rgb = session_image()
    reference.set_image(rgb)
    other.set_image(rgb)
    ref_state = other_state = None
    for k in range(1, 3):  # the second click feeds the stored previous mask
        ref_probs, ref_state = reference.predict(SESSION[:k], ref_state)
        probs, other_state = other.predict(SESSION[:k], other_state)
        assert np.abs(probs - ref_probs).max() < 1e-4, f"click {k}"


@pytest.mark.parametrize("runtime", EXPORTED)
def test_building_a_runtime_leaves_the_network_as_it_was(tiny_net: torch.nn.Module, runtime: str) -> None:
    if not available(runtime):
        pytest.skip(f"{runtime} is not installed")
    x = torch.rand(2, 4, 40, 56)
    pts = points_tensor([[(20, 28, True)], [(10, 10, True), (30, 40, False)]])
    new = torch.tensor([[20.0, 28.0, 1.0], [30.0, 40.0, 0.0]])
    with torch.no_grad():
        before = tiny_net(x, pts, new, torch.tensor([0.0, 1.0]))["instances"]
        runner = make_runner(tiny_net, runtime)
        # The exporter once left every submodule in training mode (BatchNorm on batch statistics).
        assert not any(m.training for m in tiny_net.modules())
        after = tiny_net(x, pts, new, torch.tensor([0.0, 1.0]))["instances"]
        out = runner(x, pts, new, torch.tensor([0.0, 1.0]))
    assert torch.equal(before, after)
    assert out["instances"].shape == before.shape and out["feedback2"].shape == (2, 1, 40, 56)
    assert torch.allclose(out["instances"], before, atol=1e-4)


def test_torch_runner_runs_a_copy_and_agrees(tiny_net: torch.nn.Module) -> None:
    runner = make_runner(tiny_net, "torch")
    assert isinstance(runner, TorchRunner) and runner.net is not tiny_net
    assert next(tiny_net.parameters()).is_contiguous()  # the caller's network keeps its format
    x = torch.rand(1, 4, 33, 47)
    pts = points_tensor([[(16, 20, True)]])
    new = torch.tensor([[16.0, 20.0, 1.0]])
    with torch.no_grad():
        ref = tiny_net(x, pts, new, torch.zeros(1))["instances"]
    assert torch.allclose(runner(x, pts, new, torch.zeros(1))["instances"], ref, atol=1e-4)


@pytest.mark.parametrize("size", [(37, 53), (64, 80), (101, 33), (16, 16)])
def test_grid_size_is_the_trunk_s(tiny_net: torch.nn.Module, size: tuple[int, int]) -> None:
    # core_inputs pools the click maps to these sizes before the trunk runs; they must be the taps' sizes.
    rgb = torch.rand(1, 3, *size)
    taps = tiny_net.feature_extractor.backbone(rgb)
    assert tuple(taps[0].shape[-2:]) == grid_size(size, 4)
    assert tuple(taps[2].shape[-2:]) == grid_size(size, 16)


def test_missing_runtime_falls_back_with_a_log_line(tiny_net: torch.nn.Module, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with caplog.at_level(logging.WARNING, logger="model.runtime"):
        pred = FCFIPredictor(tiny_net, runtime="openvino")
    assert pred.runtime == "torch"
    assert any("openvino" in r.getMessage() and "not installed" in r.getMessage() for r in caplog.records)
    pred.set_image(session_image())
    probs, _ = pred.predict([Click(40, 35, True)])
    assert pred.mask(probs)[35, 40]


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="RUNTIME must be one of"):
        Settings(runtime="tensorrt")


@pytest.fixture
def label_studio() -> Iterator[FakeLabelStudio]:
    ls = FakeLabelStudio().start()
    png, _ = scene()
    ls.protected_file("/data/upload/1/scene.png", png)
    yield ls
    ls.stop()


def test_service_starts_without_the_runtime_package(checkpoint, label_studio, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with caplog.at_level(logging.WARNING, logger="model.runtime"):
        server = Server(settings_for(checkpoint, label_studio, runtime="openvino"))
    try:
        assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "UP"
        r = requests.post(f"{server.url}/predict", json=body([keypoint(80, 60)]), timeout=60)
        assert r.status_code == 200
        mask = mask_of(r)
        assert mask[60, 80] and mask.mean() < 0.5  # the clicked object, not the whole image
        assert server.app.config["worker"].runtime == "torch"
        assert any("running PyTorch eager instead" in rec.getMessage() for rec in caplog.records)
    finally:
        server.stop()


def test_service_serves_through_the_default_runtime(checkpoint, label_studio) -> None:
    assert Settings().runtime == "openvino"
    server = Server(settings_for(checkpoint, label_studio))
    try:
        r = requests.post(f"{server.url}/predict", json=body([keypoint(80, 60)]), timeout=60)
        assert r.status_code == 200 and mask_of(r)[60, 80]
        expected = "openvino" if available("openvino") else "torch"
        assert server.app.config["worker"].runtime == expected
    finally:
        server.stop()
