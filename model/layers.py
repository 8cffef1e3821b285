"""Small layers shared by every architecture.

The attribute names (``conv``, ``bn``, ``conv3x3``, ``conv1x1``, ``scale``) are part of the
official checkpoint layout and must not change: they become ``state_dict`` keys.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Module):
    """Conv (with bias) -> BatchNorm -> ReLU. Keys: ``conv.*``, ``bn.*``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=True)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class XConvBNReLU(nn.Module):
    """Depthwise 3x3 (bias) -> pointwise 1x1 (bias) -> BN -> ReLU, channels unchanged.

    Keys: ``conv3x3.*``, ``conv1x1.*``, ``bn.*``.
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv3x3 = nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=True)
        self.conv1x1 = nn.Conv2d(ch, ch, 1, bias=True)
        self.bn = nn.BatchNorm2d(ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv1x1(self.conv3x3(x))))


class ScaleLayer(nn.Module):
    """Multiplies its input by ``abs(scale)``, one learned scalar (key ``scale``, shape (1,))."""

    def __init__(self, init_value: float = 0.05) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.abs()


def maps_transform(in_ch: int, out_ch: int = 64) -> nn.Sequential:
    """Click-map stem injection: 1x1 conv -> LeakyReLU(0.2) -> 3x3 stride-2 conv -> scale.

    Input: click encoding [B, in_ch, H, W]; output [B, out_ch, H/2, W/2], added to the
    backbone's stride-2 stem features. Keys ``0.*``, ``2.*``, ``3.scale`` as in the official code.
    """
    return nn.Sequential(
        nn.Conv2d(in_ch, 16, 1, bias=True),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(16, out_ch, 3, stride=2, padding=1, bias=True),
        ScaleLayer(0.05),
    )


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (no bias) -> pointwise 1x1 (no bias) -> BN -> activation.

    Keys ``body.0`` (depthwise), ``body.1`` (pointwise), ``body.2`` (BN), as in DeepLabV3+.
    """

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch,
                      bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            activation(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def init_weights(module: nn.Module, fan_aware: bool = True) -> None:
    """He-normal convs (zero bias) and BatchNorm weight 1 / bias 0.

    With ``fan_aware`` (the trunks without pretrained weights), depthwise convs use fan-in (torch's
    fan-out ignores groups) and one-channel outputs such as logits use fan-in with linear gain, so the
    first logits are not huge; otherwise every conv is fan-out ReLU.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if fan_aware and m.out_channels == 1:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            elif fan_aware and m.groups > 1:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Bottleneck(nn.Module):
    """ResNet v1b bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (x4), each with BN, + shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)
