"""Clicks and their encoding as network input.

Coordinates: a :class:`Click` is in *image* pixels, ``x`` to the right and ``y`` down, floats
allowed. Inside the network, clicks are rows ``(y, x, index)`` in *network-input* pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Click:
    """One user click in image pixels. ``positive`` marks the object, negative the background."""

    x: float
    y: float
    positive: bool = True


def points_tensor(clicks_per_sample: list[list[tuple[float, float, bool]]],
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Pack clicks into the official points layout.

    Args:
        clicks_per_sample: for each batch element, a chronological list of ``(y, x, positive)``
            in network-input pixels.
    Returns:
        float tensor [B, 2N, 3]: N positive rows then N negative rows, each ``(y, x, index)``
        with ``index`` the click's chronological position; padding rows are ``(-1, -1, -1)``.
        N = max(#positive, #negative) over the batch, at least 1.
    """
    n = 1
    for clicks in clicks_per_sample:
        pos = sum(1 for c in clicks if c[2])
        n = max(n, pos, len(clicks) - pos)
    out = torch.full((len(clicks_per_sample), 2 * n, 3), -1.0)
    for b, clicks in enumerate(clicks_per_sample):
        ip, ineg = 0, n
        for idx, (y, x, positive) in enumerate(clicks):
            row = ip if positive else ineg
            out[b, row] = torch.tensor([float(y), float(x), float(idx)])
            if positive:
                ip += 1
            else:
                ineg += 1
    return out.to(device)


class DiskMaps(nn.Module):
    """Encode clicks as binary disks, one channel for positive and one for negative clicks.

    A pixel (i, j) is 1 in a channel when (i - y)^2 + (j - x)^2 <= radius^2 for some click of
    that sign. Rows with max(y, x) < 0 are padding and ignored. No parameters.
    """

    def __init__(self, radius: float = 5.0) -> None:
        super().__init__()
        self.radius = float(radius)

    def forward(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """points [B, 2N, 3] -> disks [B, 2, height, width] float in {0, 1}."""
        b, two_n, _ = points.shape
        n = two_n // 2
        out = torch.zeros(b * 2 * height * width, device=points.device, dtype=torch.bool)
        pts = points.detach().reshape(b * 2 * n, 3)
        valid = pts[:, :2].amax(dim=1) >= 0
        if valid.any():
            # Only the (2r+3)^2 window around each click can be inside its disk, so the work is
            # O(clicks * r^2), not O(clicks * H * W): thousands of clicks stay cheap.
            plane = (torch.arange(b * 2 * n, device=points.device) // n)[valid]
            py, px = pts[valid, 0], pts[valid, 1]
            r = int(self.radius) + 1
            off = torch.arange(-r, r + 1, device=points.device)
            gy = (py.floor().long()[:, None, None] + off[None, :, None])  # [K, 2r+1, 1]
            gx = (px.floor().long()[:, None, None] + off[None, None, :])  # [K, 1, 2r+1]
            inside = ((gy.to(py.dtype) - py[:, None, None]) ** 2
                      + (gx.to(px.dtype) - px[:, None, None]) ** 2) <= self.radius ** 2
            inside &= (gy >= 0) & (gy < height) & (gx >= 0) & (gx < width)
            flat = plane[:, None, None] * (height * width) + gy * width + gx
            out[flat[inside]] = True
        return out.view(b, 2, height, width).to(points.dtype)
