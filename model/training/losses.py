"""Normalized focal loss (RITM / FCFI, paper Eq. 6) and its box-masked variant for FFCM."""

from __future__ import annotations

import torch


def normalized_focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, gamma: float = 2.0,
                          from_logits: bool = True, valid: torch.Tensor | None = None,
                          eps: float = 1e-12) -> torch.Tensor:
    """Normalized focal loss, one value per sample.

    Args:
        pred: [B, 1, H, W] logits (``from_logits``) or probabilities.
        target: [B, 1, H, W] with 1 object, 0 background, -1 ignore.
        alpha: weight of object pixels (1 - alpha for background).
        gamma: focusing exponent.
        valid: optional extra [B, 1, H, W] bool mask of pixels that count.
    Returns:
        [B] losses: the focal terms are rescaled per image so their weights sum to the number of valid
        pixels (the rescale factor carries no gradient), then averaged over valid pixels.
    """
    # float32 and clamped: a bf16 sigmoid can round to slightly above 1, and log(pt) would be NaN.
    prob = torch.sigmoid(pred.float()) if from_logits else pred.float().clamp(0.0, 1.0)
    target = target.float()
    ok = target != -1
    if valid is not None:
        ok = ok & valid
    okf = ok.float()
    one = target > 0.5
    pt = torch.where(ok, 1.0 - (target - prob).abs(), torch.ones_like(prob))
    beta = (1.0 - pt) ** gamma
    dims = tuple(range(1, pred.dim()))
    count = okf.sum(dim=dims, keepdim=True)
    scale = (count / (beta.sum(dim=dims, keepdim=True) + eps)).detach()
    alpha_t = torch.where(one, torch.full_like(prob, alpha), torch.full_like(prob, 1.0 - alpha))
    loss = -alpha_t * beta * scale * torch.log(torch.clamp(pt + eps, max=1.0)) * okf
    return loss.sum(dim=dims) / (count.view(-1) + eps)
