"""Shared fixtures: a tiny lite0 network trained in a few seconds on synthetic click data.

It lets behaviour tests (a positive click raises the probability there, a two-click session)
run on a network that really responds to clicks, without shipped weights or data from ../shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import build_model
from model.clicks import points_tensor
from model.training.losses import normalized_focal_loss


def synthetic_batch(rng: np.random.Generator, batch: int, height: int, width: int):
    """Plain images with a disk object of radius 10.

    Every third sample has only a negative click and an empty target; the others one positive
    click at the disk centre; half of the images are uniform, so the click alone defines the object.
    Returns (image [B,4,H,W], points [B,2,3], new_points [B,3], target [B,1,H,W]).
    """
    images = np.empty((batch, 4, height, width), np.float32)
    targets = np.zeros((batch, 1, height, width), np.float32)
    clicks, new_points = [], []
    yy, xx = np.mgrid[:height, :width]
    for b in range(batch):
        bg, fg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        cy, cx = rng.uniform(12, height - 12), rng.uniform(12, width - 12)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 100
        colour = np.where(disk[..., None], fg, bg) if b % 2 else np.broadcast_to(bg, (height, width, 3))
        images[b, :3] = np.transpose(colour, (2, 0, 1))
        images[b, 3] = 0.0
        positive = b % 3 != 0
        targets[b, 0] = disk if positive else 0.0
        clicks.append([(cy, cx, positive)])
        new_points.append([int(cy), int(cx), float(positive)])
    return (torch.from_numpy(images), points_tensor(clicks), torch.tensor(new_points), torch.from_numpy(targets))


def train_tiny_net(steps: int = 120) -> torch.nn.Module:
    """lite0 FCFI (ImageNet backbone) trained 120 steps (~15 s on 2 cores) to segment a disk around a positive click."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # One thread: the same weights whichever test builds the net first, and no oversubscription on 2 cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    net = build_model("lite0", pretrained=True)
    backbone = {id(p) for p in net.backbone_parameters()}
    opt = torch.optim.Adam([
        {"params": [p for p in net.parameters() if id(p) in backbone], "lr": 1e-3},
        # The click stem and the new layers need a much larger step to learn in 120 steps.
        {"params": [p for p in net.parameters() if id(p) not in backbone], "lr": 1e-2},
    ])
    net.train()
    for _ in range(steps):
        image, points, new_points, target = synthetic_batch(rng, 12, 48, 48)
        out = net(image, points, new_points, 0.0)
        loss = normalized_focal_loss(out["instances"], target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return net.eval()


@pytest.fixture(scope="session")
def tiny_net() -> torch.nn.Module:
    return train_tiny_net()


@pytest.fixture(scope="session")
def checkpoint(tiny_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny network as a checkpoint file (model version ``tiny-1``); modules that need another version
    define their own ``checkpoint``."""
    from model import save_checkpoint

    return save_checkpoint(tiny_net, tmp_path_factory.mktemp("ck") / "tiny.pth", meta={"model_version": "tiny-1"})
