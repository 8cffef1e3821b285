"""Input handling shared by all FCFI networks.

Every network takes the same inputs and returns the same outputs, so the predictor, training and
evaluation never need to know which architecture they drive:

``net(image, points, new_points, gate) -> dict``

* ``image``: [B, 4, H, W]: RGB in [0, 1] (channels 0-2) and the previous probability map
  (channel 3, soft, in [0, 1]; zeros on the first click).
* ``points``: [B, 2N, 3] clicks in input pixels (see :func:`model.clicks.points_tensor`).
* ``new_points``: [B, 3] the newest click ``(y, x, label)``; needed by FFCM.
* ``gate``: CFFM's w_g, 0.0 on the first click and 1.0 after (scalar or [B]).

Outputs, all at the input size H x W:

* ``instances``: logits [B, 1, H, W].
* ``feedback1``: FFCM's corrected feedback M_c [B, 1, H, W] in [0, 1] (None without FFCM).
* ``feedback2``: CFFM's updated feedback M_u [B, 1, H, W] in (0, 1) (None without CFFM).
* ``box_mask``: FFCM's soft box [B, 1, H, W] when FFCM runs with ``soft_box`` (training), else None.
* ``instances_aux``: auxiliary logits [B, 1, H, W] where the architecture has them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.clicks import DiskMaps

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ClickSegmentationModel(nn.Module):
    """Base class: splits and normalizes the input and encodes the clicks.

    Args:
        norm_radius: click disk radius in input pixels.
        prev_mask_in_encoding: put the previous mask first in the click encoding, giving
            [prev, pos, neg] (HRNet / RITM "itermask" layout) instead of [pos, neg] (DeepLab).
        norm_mean_std: RGB normalization, ImageNet by default.

    Subclasses implement :meth:`forward_features` and set the attributes ``maps_transform`` and
    ``feature_extractor`` that the official key layout expects.
    """

    #: Whether FFCM's corrected feedback is upsampled with align_corners=True (False in DeepLab).
    feedback1_align_corners: bool = True

    def __init__(self, norm_radius: float = 5.0, prev_mask_in_encoding: bool = True,
                 norm_mean_std: tuple = IMAGENET_MEAN_STD) -> None:
        super().__init__()
        # Subclasses set these when they build FFCM / CFFM; the predictor reads them.
        self.use_ffcm = False
        self.use_cffm = False
        self.dist_maps = DiskMaps(norm_radius)
        self.prev_mask_in_encoding = prev_mask_in_encoding
        mean, std = norm_mean_std
        # Not persistent: the official checkpoints hold no normalization tensors.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def coord_channels(self) -> int:
        """Channels of the click encoding: 3 with the previous mask, else 2."""
        return 3 if self.prev_mask_in_encoding else 2

    def click_encoding(self, points: torch.Tensor, prev_mask: torch.Tensor) -> torch.Tensor:
        """[B, 2N, 3] clicks and [B, 1, H, W] previous mask -> [B, 3 or 2, H, W] encoding."""
        disks = self.dist_maps(points, prev_mask.shape[-2], prev_mask.shape[-1]).to(prev_mask.dtype)
        if self.prev_mask_in_encoding:
            return torch.cat([prev_mask, disks], dim=1)
        return disks

    def forward(self, image: torch.Tensor, points: torch.Tensor,
                new_points: torch.Tensor | None = None,
                gate: torch.Tensor | float = 0.0) -> dict[str, torch.Tensor | None]:
        rgb, encoding, prev_mask = self.prepare(image, points)
        out = self.forward_features(rgb, encoding, prev_mask, new_points, gate)
        return self.upsample_outputs(out, image.shape[-2:])

    def prepare(self, image: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, 4, H, W] input and [B, 2N, 3] clicks -> normalized RGB [B, 3, H, W], click encoding
        [B, k, H, W] and previous mask [B, 1, H, W]."""
        if image.dim() != 4 or image.shape[1] != 4:
            raise ValueError(f"image must be [B, 4, H, W] (RGB + previous mask), got {tuple(image.shape)}")
        rgb, prev_mask = image[:, :3], image[:, 3:4]
        rgb = (rgb - self.mean.to(rgb.dtype)) / self.std.to(rgb.dtype)
        return rgb, self.click_encoding(points, prev_mask), prev_mask

    def upsample_outputs(self, out: dict[str, torch.Tensor | None],
                         size: tuple[int, int]) -> dict[str, torch.Tensor | None]:
        """The :meth:`forward_features` dict resized to the input ``size`` (H, W), missing keys as None."""
        result: dict[str, torch.Tensor | None] = {}
        for key, value in out.items():
            if value is None or value.shape[-2:] == size:
                result[key] = value
            elif key == "box_mask":
                result[key] = F.interpolate(value, size=size, mode="nearest")
            else:
                align = self.feedback1_align_corners if key == "feedback1" else True
                result[key] = F.interpolate(value, size=size, mode="bilinear", align_corners=align)
        for key in ("feedback1", "feedback2", "box_mask"):
            result.setdefault(key, None)
        return result

    def forward_features(self, rgb: torch.Tensor, encoding: torch.Tensor, prev_mask: torch.Tensor,
                         new_points: torch.Tensor | None,
                         gate: torch.Tensor | float) -> dict[str, torch.Tensor | None]:
        """Run the architecture. Returns the output dict at any resolution (upsampled after).

        Args:
            rgb: normalized RGB [B, 3, H, W].
            encoding: click encoding [B, k, H, W].
            prev_mask: previous probabilities [B, 1, H, W].
            new_points: [B, 3] ``(y, x, label)`` in input pixels or None.
            gate: CFFM gate.
        """
        raise NotImplementedError


def require_new_points(new_points: torch.Tensor | None) -> torch.Tensor:
    """FFCM needs the newest click; fail clearly instead of crashing deep inside (as upstream does)."""
    if new_points is None:
        raise ValueError("this network has FFCM: pass new_points [B, 3] = (y, x, label) of the newest click")
    if new_points.dim() != 2 or new_points.shape[1] != 3:
        raise ValueError(f"new_points must be [B, 3], got {tuple(new_points.shape)}")
    return new_points
