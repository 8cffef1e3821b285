"""Collaborative Feedback Fusion Module (CFFM), paper Sec. 3.3, Eq. 4 and 5.

The feedback pathway refines the corrected feedback with deep features (Phi1, Phi2); the feature
pathway writes the refined feedback back into the features through a gated residual (Phi3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import ConvBNReLU, XConvBNReLU


class CollaborativeFeedbackFusionModule(nn.Module):
    """CFFM. Keys ``feature_conv`` (Phi1), ``fusion_encoder`` (Phi2), ``residual_predictor`` (Phi3).

    Args:
        in_ch: channels C of the features.
        mid_ch: width of the feedback pathway.
        update_num: refinement iterations (1 in every released config).
    """

    def __init__(self, in_ch: int, mid_ch: int, update_num: int = 1) -> None:
        super().__init__()
        self.update_num = update_num
        self.feature_conv = ConvBNReLU(in_ch, mid_ch, 1)
        self.fusion_encoder = nn.Sequential(
            ConvBNReLU(1 + mid_ch, mid_ch, 3),
            XConvBNReLU(mid_ch),
            XConvBNReLU(mid_ch),
            nn.Conv2d(mid_ch, 1, 3, padding=1, bias=True),
            nn.Sigmoid(),
        )
        # Phi3 predicts one non-negative channel that is broadcast-added to all C channels.
        self.residual_predictor = ConvBNReLU(in_ch + 1, 1, 1)

    def forward(self, features: torch.Tensor, feedback: torch.Tensor,
                gate: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse feedback into features.

        Args:
            features: F [B, C, h, w].
            feedback: corrected feedback M_c [B, 1, h', w'] in [0, 1], resized to (h, w).
            gate: w_g, a scalar or [B]; 0 on the first click (features pass unchanged), 1 after.
        Returns:
            ``(F_u, M_u)``: updated features [B, C, h, w] and updated feedback [B, 1, h, w] in (0, 1).
        """
        fb = F.interpolate(feedback, size=features.shape[-2:], mode="bilinear", align_corners=True)
        gate_t = torch.as_tensor(gate, dtype=features.dtype, device=features.device)
        if gate_t.dim() == 1:
            gate_t = gate_t.view(-1, 1, 1, 1)
        updated_fb = fb
        for _ in range(self.update_num):
            # Every iteration starts from the corrected feedback, as in the official module.
            updated_fb = self.fusion_encoder(torch.cat([fb, self.feature_conv(features)], dim=1))  # Eq. 4
            residual = self.residual_predictor(torch.cat([features, updated_fb], dim=1))
            features = features + gate_t * residual  # Eq. 5
        return features, updated_fb
