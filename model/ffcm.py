"""Focused Feedback Correction Module (FFCM), paper Sec. 3.2, Eq. 1 to 3.

FFCM corrects the previous probability map (the *feedback*) near the newest click: pixels whose
learned embedding is similar to the click's embedding are pulled towards the click's label.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import ConvBNReLU, XConvBNReLU


def click_box(y: float, x: float, height: int, width: int, ratio: float) -> tuple[int, int, int, int]:
    """Focus box around a click, in network-input pixels.

    Half-extents are ``int(ratio*H/2 + 0.5)`` and ``int(ratio*W/2 + 0.5)``, so the box is about
    ratio*H by ratio*W, centred on the click and clipped to the image.
    Returns ``(y0, y1, x0, x1)`` with the ends exclusive.
    """
    hy = int(ratio * height / 2 + 0.5)
    hx = int(ratio * width / 2 + 0.5)
    y0, y1 = max(0, int(y) - hy), min(height, int(y) + hy)
    x0, x1 = max(0, int(x) - hx), min(width, int(x) + hx)
    return y0, y1, x0, x1


def box_to_grid(box: tuple[int, int, int, int], height: int, width: int,
                grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """Map an input-pixel box to a feature grid: floor for starts, ceil for ends, clipped."""
    y0, y1, x0, x1 = box
    gy0 = min(max(math.floor(y0 * grid_h / height), 0), grid_h)
    gy1 = min(max(math.ceil(y1 * grid_h / height), 0), grid_h)
    gx0 = min(max(math.floor(x0 * grid_w / width), 0), grid_w)
    gx1 = min(max(math.ceil(x1 * grid_w / width), 0), grid_w)
    return gy0, gy1, gx0, gx1


def cosine_affinity(embedding: torch.Tensor, gy: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """Eq. 1: cosine similarity of every pixel's embedding to the embedding at (gy, gx).

    Args:
        embedding: [B, C, h, w]; gy, gx: long [B] grid coordinates of the click.
    Returns:
        [B, 1, h, w]; in [0, 1] when the embedding is non-negative (it ends in ReLU).
    """
    emb = F.normalize(embedding, dim=1, eps=1e-12)
    b, c, _, w = emb.shape
    # A gather over the flattened grid (not advanced indexing) so the graph exports with dynamic sizes.
    index = (gy * w + gx).view(b, 1, 1).expand(b, c, 1)
    ref = emb.flatten(2).gather(2, index)  # [B, C, 1]
    return (emb * ref.unsqueeze(3)).sum(dim=1, keepdim=True)


def click_geometry(new_points: torch.Tensor, height: int, width: int, grid_h: int, grid_w: int,
                   ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Where FFCM looks, on the feature grid: the focus box and the cell of the newest click.

    Args:
        new_points: [B, 3] rows ``(y, x, label)`` in input pixels.
        height, width: network-input size; grid_h, grid_w: feature-grid size.
        ratio: the focus box is ratio*H by ratio*W (:func:`click_box`).
    Returns:
        ``(boxes, cells)``: long [B, 4] grid boxes ``(y0, y1, x0, x1)`` (ends exclusive) and long [B, 2]
        grid cells ``(gy, gx)`` of the click.

    Computed outside the network graph (it needs Python integers), so an exported graph takes both as inputs.
    """
    pts = new_points.detach().float().cpu()
    gy = (pts[:, 0] * grid_h / height).long().clamp(0, grid_h - 1)
    gx = (pts[:, 1] * grid_w / width).long().clamp(0, grid_w - 1)
    boxes = [box_to_grid(click_box(float(p[0]), float(p[1]), height, width, ratio), height, width, grid_h, grid_w)
             for p in pts]
    device = new_points.device
    return (torch.tensor(boxes, dtype=torch.long, device=device).view(-1, 4),
            torch.stack([gy, gx], dim=1).to(device))


def hard_box_mask(boxes: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """[B, 4] long boxes ``(y0, y1, x0, x1)`` (ends exclusive) -> bool [B, 1, grid_h, grid_w], True inside:
    the crop-and-paste of inference as one ``where`` (no per-sample loop, so the graph exports)."""
    ys = torch.arange(grid_h, device=boxes.device).view(1, grid_h, 1)
    xs = torch.arange(grid_w, device=boxes.device).view(1, 1, grid_w)
    y0, y1, x0, x1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)).unsqueeze(1)


def soft_box_mask(box_grid: torch.Tensor, grid_h: int, grid_w: int, slope: float = 10.0) -> torch.Tensor:
    """Differentiable box used in training: [s(y-y0)-s(y-y1)] * [s(x-x0)-s(x-x1)], s = sigmoid(slope*t).

    Args:
        box_grid: float [B, 4] rows ``(y0, y1, x0, x1)`` on the feature grid.
    Returns:
        [B, 1, grid_h, grid_w] in [0, 1]; exactly 1.0 (in float32) only deep inside the box.
    """
    ys = torch.arange(grid_h, device=box_grid.device, dtype=box_grid.dtype).view(1, grid_h, 1)
    xs = torch.arange(grid_w, device=box_grid.device, dtype=box_grid.dtype).view(1, 1, grid_w)
    y0, y1, x0, x1 = (box_grid[:, i].view(-1, 1, 1) for i in range(4))
    my = torch.sigmoid(slope * (ys - y0)) - torch.sigmoid(slope * (ys - y1))
    mx = torch.sigmoid(slope * (xs - x0)) - torch.sigmoid(slope * (xs - x1))
    return (my * mx).unsqueeze(1)


class FocusedCorrectionModule(nn.Module):
    """FFCM.

    Args:
        in_ch: channels C of the backbone features F.
        mid_ch: embedding width.
        aux_ch: channels of [image (3), click encoding (k), feedback (1)] concatenated before F.
        expansion_ratio: r, the focus box is r*H by r*W of the network input.

    Only ``info_encoder`` has parameters, matching the official ``correction_module`` keys.
    """

    def __init__(self, in_ch: int, mid_ch: int, aux_ch: int = 6, expansion_ratio: float = 0.3) -> None:
        super().__init__()
        self.expansion_ratio = expansion_ratio
        self.info_encoder = nn.Sequential(
            ConvBNReLU(in_ch + aux_ch, mid_ch, 3), XConvBNReLU(mid_ch), XConvBNReLU(mid_ch)
        )

    def forward(self, image: torch.Tensor, click_maps: torch.Tensor, features: torch.Tensor,
                feedback: torch.Tensor, new_points: torch.Tensor, soft_box: bool | None = None,
                geometry: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Correct the feedback around the newest click.

        Args:
            image: normalized RGB [B, 3, H, W] (network input).
            click_maps: click encoding [B, k, H, W].
            features: F [B, C, h, w].
            feedback: previous probability map [B, 1, H, W] in [0, 1].
            new_points: [B, 3] rows ``(y, x, label)`` in input pixels, label 1 positive, 0 negative.
            soft_box: blend with the soft box mask over the whole map (training, differentiable)
                instead of the hard crop-and-paste; defaults to ``self.training``.
            geometry: ``(boxes, cells)`` from :meth:`geometry` when computed ahead (an exported graph);
                None computes it here.
        Returns:
            ``(corrected, box_mask)``: corrected feedback M_c [B, 1, h, w] in [0, 1]; the soft box
            mask [B, 1, h, w] when ``soft_box`` else None.
        """
        if soft_box is None:
            soft_box = self.training
        gh, gw = features.shape[-2:]

        def to_grid(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=(gh, gw), mode="bilinear", align_corners=True)

        fb = to_grid(feedback)
        x = torch.cat([to_grid(image), to_grid(click_maps), fb, features], dim=1)
        emb = self.info_encoder(x)

        boxes, cells = geometry if geometry is not None else self.geometry(new_points, image.shape[-2:], (gh, gw))
        affinity = cosine_affinity(emb, cells[:, 0], cells[:, 1])
        label = new_points[:, 2].to(fb.dtype).view(-1, 1, 1, 1)
        blended = label * affinity + (1.0 - affinity) * fb  # Eq. 2
        if soft_box:
            mask = soft_box_mask(boxes.to(fb.dtype), gh, gw)
            return mask * blended + (1.0 - mask) * fb, mask  # Eq. 3
        return torch.where(hard_box_mask(boxes, gh, gw), blended, fb), None

    def geometry(self, new_points: torch.Tensor, input_size: tuple[int, int],
                 grid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`click_geometry` with this module's box ratio; sizes are ``(H, W)`` of the input and grid."""
        return click_geometry(new_points, int(input_size[0]), int(input_size[1]), int(grid_size[0]),
                              int(grid_size[1]), self.expansion_ratio)
