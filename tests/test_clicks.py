"""Click encoding: the official points layout and radius-5 disks in network-input pixels."""

from __future__ import annotations

import torch

from model.clicks import DiskMaps, points_tensor


def test_points_tensor_layout() -> None:
    pts = points_tensor([[(1, 2, True), (3, 4, False), (5, 6, True)], [(7, 8, False)]])
    assert pts.shape == (2, 4, 3)  # N = 2 (two positives in sample 0)
    assert pts[0].tolist() == [[1, 2, 0], [5, 6, 2], [3, 4, 1], [-1, -1, -1]]
    assert pts[1].tolist() == [[-1, -1, -1], [-1, -1, -1], [7, 8, 0], [-1, -1, -1]]


def test_disks_match_brute_force_and_ignore_padding() -> None:
    pts = points_tensor([[(10.0, 10.0, True), (0.5, 30.2, False), (39.0, 49.0, True)]])
    maps = DiskMaps(5)(pts, 40, 50)
    ys = torch.arange(40.0).view(40, 1)
    xs = torch.arange(50.0).view(1, 50)
    pos = ((ys - 10) ** 2 + (xs - 10) ** 2 <= 25) | ((ys - 39) ** 2 + (xs - 49) ** 2 <= 25)
    neg = (ys - 0.5) ** 2 + (xs - 30.2) ** 2 <= 25
    assert torch.equal(maps[0, 0].bool(), pos)
    assert torch.equal(maps[0, 1].bool(), neg)
    assert maps[0, 0].sum() == 81 + 26  # a full r=5 disk has 81 pixels; the corner quarter has 26


def test_thousands_of_clicks_are_cheap_and_exact() -> None:
    g = torch.Generator().manual_seed(0)
    yx = torch.rand(3000, 2, generator=g) * torch.tensor([300.0, 400.0])
    clicks = [(float(y), float(x), i % 2 == 0) for i, (y, x) in enumerate(yx)]
    maps = DiskMaps(5)(points_tensor([clicks]), 300, 400)
    # Brute force for the first 50 positive clicks only (the full one is O(N*H*W)).
    ys = torch.arange(300.0).view(300, 1, 1)
    xs = torch.arange(400.0).view(1, 400, 1)
    sub = yx[0:100:2]
    brute = (((ys - sub[:, 0]) ** 2 + (xs - sub[:, 1]) ** 2) <= 25).any(-1)
    assert torch.all(maps[0, 0].bool() | ~brute)  # every pixel of those disks is set
