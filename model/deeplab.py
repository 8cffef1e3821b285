"""``r101``: the official FCFI DeepLabV3+ network on a dilated ResNet-101 v1s (its released ``r101`` checkpoint layout).

Layout (the ``state_dict`` keys follow the official ``DeeplabModel``, so its checkpoints load):

    clicks [pos, neg] -> ``maps_transform`` (64 ch, stride 2), zero-padded to 128 ch and added
      after the deep stem's ``conv1 -> bn1 -> ReLU``, before the max-pool
    RGB -> ResNetV1b (``dilated``: output stride 8) -> c1 (256 ch, stride 4), c4 (2048 ch, stride 8)
      c4 -> ASPP (rates 12/24/36 + image pooling) -> bilinear (align_corners=True) to c1's size -> F
      c1 -> ``skip_project`` (1x1, 256 -> 32)
    F -> FFCM (corrects the previous mask near the newest click) -> M_c
      -> CFFM (fuses M_c into F with gate w_g) -> F', M_u
    [F', skip] (288 ch) -> ``feature_extractor.head`` -> ``head`` -> logits at stride 4

The previous mask reaches this network only as FFCM/CFFM feedback: the click encoding has
two channels and no mask (as the official code does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.base import IMAGENET_MEAN_STD, ClickSegmentationModel, require_new_points
from model.cffm import CollaborativeFeedbackFusionModule
from model.ffcm import FocusedCorrectionModule
from model.layers import Bottleneck, SeparableConv2d, init_weights, maps_transform

#: Bottleneck blocks per stage of the supported ResNetV1b backbones.
RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}


class ResNetV1b(nn.Module):
    """Dilated ResNet v1s trunk (deep stem, no ``fc``/``avgpool``), output stride 8.

    ``forward(x, stem_extra)`` takes normalized RGB [B, 3, H, W] and an optional tensor with at most
    128 channels at stride 2, added (zero-padded on channels) after ``conv1 -> bn1 -> ReLU``.
    Returns ``(c1, c2, c3, c4)``: 256, 512, 1024, 2048 channels at strides 4, 8, 8, 8.
    """

    def __init__(self, blocks: tuple[int, int, int, int]) -> None:
        super().__init__()
        stem = 64
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem, stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem, stem * 2, 3, padding=1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(stem * 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._in_ch = stem * 2
        self.layer1 = self._make_layer(64, blocks[0])
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        # dilated=True: layers 3 and 4 keep stride 8; their first block uses half the dilation.
        self.layer3 = self._make_layer(256, blocks[2], dilation=2)
        self.layer4 = self._make_layer(512, blocks[3], dilation=4)

    def _make_layer(self, planes: int, num_blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out_ch = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        first_dilation = max(1, dilation // 2)
        layers = [Bottleneck(self._in_ch, planes, stride, first_dilation, downsample)]
        self._in_ch = out_ch
        layers += [Bottleneck(out_ch, planes, 1, dilation) for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, stem_extra: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        x = self.relu(self.bn1(self.conv1(x)))
        if stem_extra is not None:
            pad = x.shape[1] - stem_extra.shape[1]
            x = x + F.pad(stem_extra, (0, 0, 0, 0, 0, pad))
        x = self.maxpool(x)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BN -> ReLU; keys ``0`` (conv) and ``1`` (BN)."""
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool -> 1x1 conv -> BN -> ReLU, broadcast back. Key ``gap``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.gap = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.gap(x)
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling. Keys ``concurent.0-4`` (sic, as upstream) and ``project``."""

    def __init__(self, in_ch: int, out_ch: int = 256, rates: tuple[int, int, int] = (12, 24, 36),
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.concurent = nn.ModuleList(
            [_conv_bn_relu(in_ch, out_ch, 1)]
            + [_conv_bn_relu(in_ch, out_ch, 3, rate) for rate in rates]
            + [ASPPPooling(in_ch, out_ch)]
        )
        self.project = nn.Sequential(
            nn.Conv2d(out_ch * len(self.concurent), out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.concurent], dim=1))


class SkipProject(nn.Module):
    """1x1 projection of the stride-4 features c1 (key ``skip_project.{0,1}``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.skip_project = _conv_bn_relu(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip_project(x)


class DeepLabHead(nn.Module):
    """Decoder after the skip concat: SepConv -> SepConv -> 1x1 conv (bias). Key ``block``."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            SeparableConv2d(in_ch, mid_ch),
            SeparableConv2d(mid_ch, mid_ch),
            nn.Conv2d(mid_ch, out_ch, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class SepConvHead(nn.Module):
    """Model-level logits head: ``num_layers`` SepConvs then a 1x1 conv (bias). Key ``layers``."""

    def __init__(self, num_outputs: int, in_ch: int, mid_ch: int, num_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(SeparableConv2d(in_ch if i == 0 else mid_ch, mid_ch))
        layers.append(nn.Conv2d(mid_ch, num_outputs, 1, bias=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DeepLabV3PlusFCFI(nn.Module):
    """Backbone, ASPP, skip projection, FCFI modules and decoder head (``feature_extractor``)."""

    def __init__(self, backbone: str, ch: int, mid_ch: int, aspp_dropout: float, fcfi: bool,
                 update_num: int, expansion_ratio: float, skip_ch: int = 32) -> None:
        super().__init__()
        if backbone not in RESNET_BLOCKS:
            raise ValueError(f"unsupported backbone {backbone!r}; choose one of {', '.join(RESNET_BLOCKS)}")
        # Registration order follows the official module, so state_dict order matches too.
        self.backbone = ResNetV1b(RESNET_BLOCKS[backbone])
        self.head = DeepLabHead(ch + skip_ch, ch, ch)
        self.skip_project = SkipProject(64 * Bottleneck.expansion, skip_ch)
        self.aspp = ASPP(512 * Bottleneck.expansion, ch, (12, 24, 36), aspp_dropout)
        if fcfi:
            # aux: RGB (3) + click encoding [pos, neg] (2) + feedback (1).
            self.correction_module = FocusedCorrectionModule(ch, mid_ch, 6, expansion_ratio)
            self.feedback_fusion = CollaborativeFeedbackFusionModule(ch, mid_ch, update_num)


class DeepLabFCFI(ClickSegmentationModel):
    """FCFI on DeepLabV3+ / ResNet-v1s (the official ``r101`` release: ``deeplab_ch`` 256, ``mid_ch`` 32).

    Args:
        backbone: ``resnet101`` (release), ``resnet50`` or ``resnet152``.
        deeplab_ch: channels C of the ASPP features F and of the decoder.
        mid_ch: width inside FFCM and CFFM.
        aspp_dropout: dropout after the ASPP projection.
        fcfi: build FFCM and CFFM; False gives a plain click DeepLabV3+ (no FCFI keys).
        update_num: CFFM iterations.
        expansion_ratio: FFCM box ratio r.
        norm_radius: click disk radius (input pixels).
    """

    # Spec 1.7: DeepLab upsamples FFCM's corrected feedback with align_corners=False.
    feedback1_align_corners = False

    def __init__(self, backbone: str = "resnet101", deeplab_ch: int = 256, mid_ch: int = 32,
                 aspp_dropout: float = 0.2, fcfi: bool = True, update_num: int = 1,
                 expansion_ratio: float = 0.3, norm_radius: float = 5) -> None:
        super().__init__(norm_radius=norm_radius, prev_mask_in_encoding=False,
                         norm_mean_std=IMAGENET_MEAN_STD)
        self.config_params = dict(backbone=backbone, deeplab_ch=deeplab_ch, mid_ch=mid_ch,
                                  aspp_dropout=aspp_dropout, fcfi=fcfi, update_num=update_num,
                                  expansion_ratio=expansion_ratio, norm_radius=norm_radius)
        self.use_ffcm = self.use_cffm = bool(fcfi)
        self.maps_transform = maps_transform(self.coord_channels, 64)
        self.feature_extractor = DeepLabV3PlusFCFI(backbone, deeplab_ch, mid_ch, aspp_dropout, bool(fcfi),
                                                   update_num, expansion_ratio)
        self.head = SepConvHead(1, deeplab_ch, deeplab_ch // 2, num_layers=2)
        _init_weights(self)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """ResNet parameters (the official training gives them 0.1x the learning rate)."""
        return list(self.feature_extractor.backbone.parameters())

    def forward_features(self, rgb: torch.Tensor, encoding: torch.Tensor, prev_mask: torch.Tensor,
                         new_points: torch.Tensor | None,
                         gate: torch.Tensor | float) -> dict[str, torch.Tensor | None]:
        fe = self.feature_extractor
        c1, _, _, c4 = fe.backbone(rgb, self.maps_transform(encoding))
        skip = fe.skip_project(c1)
        feats = F.interpolate(fe.aspp(c4), size=c1.shape[-2:], mode="bilinear", align_corners=True)
        out: dict[str, torch.Tensor | None] = {"feedback1": None, "feedback2": None, "box_mask": None}
        if self.use_ffcm:
            out["feedback1"], out["box_mask"] = fe.correction_module(
                rgb, encoding, feats, prev_mask, require_new_points(new_points))
            feats, out["feedback2"] = fe.feedback_fusion(feats, out["feedback1"], gate)
        out["instances"] = self.head(fe.head(torch.cat([feats, skip], dim=1)))
        return out


def _init_weights(module: nn.Module) -> None:
    """He init (see :func:`model.layers.init_weights`); residual branches start at zero."""
    init_weights(module)
    # Residual branches start at zero (Goyal et al. 2017): every bottleneck is the identity at init,
    # so the 33-block trunk stays well scaled even in eval mode with untrained running statistics.
    for m in module.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
