"""An exponential moving average of a network's weights, used for validation and for shipping.

Every floating-point entry of the ``state_dict`` (parameters and BatchNorm running statistics) is
averaged; integer buffers (``num_batches_tracked``) are copied. Early on the decay is lowered to
``(1 + updates) / (10 + updates)`` so the average is not dominated by the random start.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step.

    Args:
        net: the network being trained (copied; the copy is kept in eval mode without gradients).
        decay: the long-run decay in (0, 1).
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = net.state_dict()
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                value.mul_(d).add_(current[name].detach().to(value.dtype), alpha=1 - d)
            else:
                value.copy_(current[name])
