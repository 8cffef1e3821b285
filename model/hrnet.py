"""``hrnet18`` / ``hrnet18s``: the official FCFI network on HRNet-W18 + OCR (its released checkpoint layout).

Layout (the ``state_dict`` keys follow the official ``HRNetModel``, so its checkpoints load, and
RITM's HRNet checkpoints load with ``fcfi=False``):

    clicks [prev, pos, neg] -> ``maps_transform`` (64 ch, stride 2), added after
      ``conv1 -> bn1 -> ReLU``, before ``conv2``
    RGB -> stem (stride 4) -> ``layer1`` (bottlenecks, 256 ch) -> stages 2-4 (parallel branches of
      w, 2w, 4w, 8w channels at strides 4, 8, 16, 32, exchanging information after every module)
      -> branches upsampled (bilinear, align_corners=True) to stride 4 and concatenated: F (15w ch)
    F -> FFCM (corrects the previous mask near the newest click) -> M_c
      -> CFFM (fuses M_c into F with gate w_g) -> F', M_u
    F' -> ``aux_head`` -> soft object regions (``instances_aux``)
    F' -> ``conv3x3_ocr`` -> OCR (object region context from the soft regions) -> ``cls_head`` -> logits

The released "HRNet18s" checkpoint is the full-depth W18 trunk with OCR width 48 and FCFI mid 64
(``small=False``); ``small=True`` halves the blocks (RITM's HRNet-W18-small).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.base import IMAGENET_MEAN_STD, ClickSegmentationModel, require_new_points
from model.cffm import CollaborativeFeedbackFusionModule
from model.ffcm import FocusedCorrectionModule
from model.layers import Bottleneck, init_weights, maps_transform


def _upsample(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity (or projected) shortcut. Keys ``conv1 bn1 conv2 bn2``."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _residual_layer(block: type[BasicBlock] | type[Bottleneck], in_ch: int, planes: int,
                    num_blocks: int, stride: int = 1) -> nn.Sequential:
    """``num_blocks`` blocks; the first gets a 1x1 conv + BN ``downsample`` when the shape changes."""
    out_ch = planes * block.expansion
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_ch))
    layers = [block(in_ch, planes, stride, downsample=downsample)]
    layers += [block(out_ch, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """One HRNet exchange unit: a residual stack per branch, then every branch sums all branches.

    Keys: ``branches.B.K.*``; ``fuse_layers.I.J.{0,1}`` (J > I: 1x1 conv + BN, then upsampling);
    ``fuse_layers.I.J.K.{0,1}`` (J < I: chain of I-J stride-2 3x3 conv + BN, ReLU between links);
    ``fuse_layers.I.I`` is the identity (no keys).
    """

    def __init__(self, channels: list[int], num_blocks: int) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            [_residual_layer(BasicBlock, ch, ch, num_blocks) for ch in channels]
        )
        self.fuse_layers = nn.ModuleList()
        self.relu = nn.ReLU(inplace=True)
        if n == 1:
            return
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False),
                                             nn.BatchNorm2d(channels[i])))
                elif j == i:
                    row.append(None)
                else:
                    chain = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out_ch = channels[i] if last else channels[j]
                        link: list[nn.Module] = [_conv3x3(channels[j], out_ch, 2), nn.BatchNorm2d(out_ch)]
                        if not last:
                            link.append(nn.ReLU(inplace=True))
                        chain.append(nn.Sequential(*link))
                    row.append(nn.Sequential(*chain))
            self.fuse_layers.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if len(xs) == 1:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, fuse in enumerate(row):
                if j == i:
                    continue
                z = fuse(xs[j])
                if j > i:
                    z = _upsample(z, xs[i].shape[-2:])
                y = y + z
            out.append(self.relu(y))
        return out


class SpatialGather(nn.Module):
    """OCR object regions: softmax of each region's logits over all pixels, weighted sum of features.

    ``forward(feats [B, C, h, w], logits [B, K, h, w]) -> [B, C, K, 1]``. No parameters.
    """

    def forward(self, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        b, c = feats.shape[:2]
        probs = torch.softmax(logits.flatten(2), dim=2)  # [B, K, hw]
        context = torch.bmm(probs, feats.flatten(2).transpose(1, 2))  # [B, K, C]
        return context.transpose(1, 2).unsqueeze(3)


def _conv_bn_relu_1x1(in_ch: int, out_ch: int) -> list[nn.Module]:
    """1x1 conv (no bias) and a nested ``Sequential(BN, ReLU)``: keys ``N.weight``, ``N+1.0.*``."""
    return [nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.Sequential(nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))]


class ObjectAttentionBlock(nn.Module):
    """Pixel-to-region attention: pixels query the region descriptors (scaled dot product).

    Keys ``f_pixel``, ``f_object`` (two 1x1 conv-BN-ReLU each), ``f_down``, ``f_up``.
    """

    def __init__(self, in_ch: int, key_ch: int) -> None:
        super().__init__()
        self.key_ch = key_ch
        self.f_pixel = nn.Sequential(*_conv_bn_relu_1x1(in_ch, key_ch), *_conv_bn_relu_1x1(key_ch, key_ch))
        self.f_object = nn.Sequential(*_conv_bn_relu_1x1(in_ch, key_ch), *_conv_bn_relu_1x1(key_ch, key_ch))
        self.f_down = nn.Sequential(*_conv_bn_relu_1x1(in_ch, key_ch))
        self.f_up = nn.Sequential(*_conv_bn_relu_1x1(key_ch, in_ch))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        query = self.f_pixel(x).flatten(2).transpose(1, 2)  # [B, hw, key]
        key = self.f_object(proxy).flatten(2)  # [B, key, K]
        value = self.f_down(proxy).flatten(2).transpose(1, 2)  # [B, K, key]
        sim = torch.softmax(torch.bmm(query, key) * self.key_ch ** -0.5, dim=-1)  # [B, hw, K]
        context = torch.bmm(sim, value).transpose(1, 2).reshape(b, self.key_ch, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """OCR distribution head: attention context concatenated before the features, then 1x1 conv-BN-ReLU."""

    def __init__(self, in_ch: int, key_ch: int, out_ch: int, dropout: float = 0.05) -> None:
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_ch, key_ch)
        self.conv_bn_dropout = nn.Sequential(*_conv_bn_relu_1x1(2 * in_ch, out_ch), nn.Dropout2d(dropout))

    def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy)
        return self.conv_bn_dropout(torch.cat([context, feats], dim=1))


class HRNetOCRFCFI(nn.Module):
    """HRNet trunk, OCR heads and FCFI modules (``feature_extractor`` of the official layout).

    ``forward`` is split in :meth:`trunk` (stride-4 aggregated features F) and :meth:`heads`
    (logits and aux logits from F'), so FFCM/CFFM run in between.
    """

    def __init__(self, width: int, ocr_width: int, small: bool, mid_ch: int, fcfi: bool,
                 update_num: int, expansion_ratio: float, coord_ch: int = 3) -> None:
        super().__init__()
        num_blocks = 2 if small else 4
        stem = 64
        # Registration order follows the official module, so state_dict order matches too.
        self.conv1 = _conv3x3(3, stem, 2)
        self.bn1 = nn.BatchNorm2d(stem)
        self.conv2 = _conv3x3(stem, stem, 2)
        self.bn2 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _residual_layer(Bottleneck, stem, 64, 2 if small else 4)

        chans = [width * 2 ** i for i in range(4)]
        modules = (1, 3, 2) if small else (1, 4, 3)
        prev = [64 * Bottleneck.expansion]
        for s, n_modules in enumerate(modules):
            cur = chans[: s + 2]
            self.add_module(f"transition{s + 1}", self._transition(prev, cur))
            self.add_module(f"stage{s + 2}", nn.Sequential(
                *[HighResolutionModule(cur, num_blocks) for _ in range(n_modules)]))
            prev = cur
        last_ch = sum(chans)
        self.out_channels = last_ch

        ocr_mid, ocr_key = 2 * ocr_width, ocr_width
        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(last_ch, ocr_mid, 3, padding=1, bias=True),
            nn.BatchNorm2d(ocr_mid),
            nn.ReLU(inplace=True),
        )
        self.ocr_gather_head = SpatialGather()
        self.ocr_distri_head = SpatialOCR(ocr_mid, ocr_key, ocr_mid, dropout=0.05)
        self.cls_head = nn.Conv2d(ocr_mid, 1, 1, bias=True)
        self.aux_head = nn.Sequential(
            nn.Conv2d(last_ch, last_ch, 1, bias=True),
            nn.BatchNorm2d(last_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(last_ch, 1, 1, bias=True),
        )
        if fcfi:
            # aux: RGB (3) + feedback (1) + click encoding [prev, pos, neg] (3).
            self.correction_module = FocusedCorrectionModule(last_ch, mid_ch, 3 + 1 + coord_ch,
                                                             expansion_ratio)
            self.fusion_module = CollaborativeFeedbackFusionModule(last_ch, mid_ch, update_num)

    @staticmethod
    def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
        """Adapt existing branches (None where channels already match); new branches come from the
        last previous branch through stride-2 3x3 conv-BN-ReLU links."""
        layers = nn.ModuleList()
        for i, ch in enumerate(cur):
            if i < len(prev):
                if prev[i] == ch:
                    layers.append(None)
                else:
                    layers.append(nn.Sequential(_conv3x3(prev[i], ch), nn.BatchNorm2d(ch),
                                                nn.ReLU(inplace=True)))
            else:
                links = []
                for k in range(i + 1 - len(prev)):
                    out_ch = ch if k == i - len(prev) else prev[-1]
                    links.append(nn.Sequential(_conv3x3(prev[-1], out_ch, 2), nn.BatchNorm2d(out_ch),
                                               nn.ReLU(inplace=True)))
                layers.append(nn.Sequential(*links))
        return layers

    def trunk(self, rgb: torch.Tensor, stem_extra: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized RGB [B, 3, H, W] (+ stride-2 click features) -> F [B, 15w, H/4, W/4]."""
        x = self.relu(self.bn1(self.conv1(rgb)))
        if stem_extra is not None:
            x = x + stem_extra
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in (1, 2, 3):
            transition = getattr(self, f"transition{s}")
            new = []
            for i, t in enumerate(transition):
                if t is None:
                    new.append(xs[i])
                else:
                    new.append(t(xs[i] if i < len(xs) else xs[-1]))
            xs = getattr(self, f"stage{s + 1}")(new)
        size = xs[0].shape[-2:]
        return torch.cat([xs[0]] + [_upsample(x, size) for x in xs[1:]], dim=1)

    def heads(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F' -> (logits, aux logits), both [B, 1, H/4, W/4]."""
        aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        context = self.ocr_gather_head(feats, aux)
        feats = self.ocr_distri_head(feats, context)
        return self.cls_head(feats), aux


class HRNetFCFI(ClickSegmentationModel):
    """FCFI on HRNet-W18 + OCR (the official "HRNet18s" release: width 18, OCR 48, mid 64, full depth).

    Args:
        width: channels of the highest-resolution branch (18 for W18).
        ocr_width: OCR key channels; the OCR mid channels are twice this.
        small: 2 blocks per branch, 3/2 modules in stages 3/4 and 2 bottlenecks in ``layer1``
            (HRNet-W18-small) instead of 4, 4/3 and 4.
        mid_ch: width inside FFCM and CFFM.
        fcfi: build FFCM and CFFM; False gives RITM's HRNet model (no FCFI keys).
        update_num: CFFM iterations.
        expansion_ratio: FFCM box ratio r.
        norm_radius: click disk radius (input pixels).
        with_aux_output: return ``instances_aux`` (the aux head exists either way).
    """

    def __init__(self, width: int = 18, ocr_width: int = 48, small: bool = False, mid_ch: int = 64,
                 fcfi: bool = True, update_num: int = 1, expansion_ratio: float = 0.3,
                 norm_radius: float = 5, with_aux_output: bool = True) -> None:
        super().__init__(norm_radius=norm_radius, prev_mask_in_encoding=True, norm_mean_std=IMAGENET_MEAN_STD)
        self.config_params = dict(width=width, ocr_width=ocr_width, small=small, mid_ch=mid_ch, fcfi=fcfi,
                                  update_num=update_num, expansion_ratio=expansion_ratio,
                                  norm_radius=norm_radius, with_aux_output=with_aux_output)
        self.use_ffcm = self.use_cffm = bool(fcfi)
        self.with_aux_output = with_aux_output
        self.maps_transform = maps_transform(self.coord_channels, 64)
        self.feature_extractor = HRNetOCRFCFI(width, ocr_width, small, mid_ch, bool(fcfi), update_num,
                                              expansion_ratio, self.coord_channels)
        _init_weights(self)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters the official training gives 0.1x the learning rate.

        As upstream: the whole ``feature_extractor`` except the OCR context layers (``conv3x3_ocr``,
        ``ocr_distri_head``), so FFCM, CFFM, ``cls_head`` and ``aux_head`` are included.
        """
        fe = self.feature_extractor
        fast = {id(p) for m in (fe.conv3x3_ocr, fe.ocr_distri_head) for p in m.parameters()}
        return [p for p in fe.parameters() if id(p) not in fast]

    def forward_features(self, rgb: torch.Tensor, encoding: torch.Tensor, prev_mask: torch.Tensor,
                         new_points: torch.Tensor | None,
                         gate: torch.Tensor | float) -> dict[str, torch.Tensor | None]:
        fe = self.feature_extractor
        feats = fe.trunk(rgb, self.maps_transform(encoding))
        out: dict[str, torch.Tensor | None] = {"feedback1": None, "feedback2": None, "box_mask": None}
        if self.use_ffcm:
            out["feedback1"], out["box_mask"] = fe.correction_module(
                rgb, encoding, feats, prev_mask, require_new_points(new_points))
            feats, out["feedback2"] = fe.fusion_module(feats, out["feedback1"], gate)
        out["instances"], aux = fe.heads(feats)
        if self.with_aux_output:
            out["instances_aux"] = aux
        return out


def _init_weights(module: nn.Module) -> None:
    """He init (see :func:`model.layers.init_weights`).

    The last BN of every residual block starts at zero, so each block is the identity at init and the
    deep trunk stays well scaled, even in eval mode with untrained running statistics.
    """
    init_weights(module)
    for m in module.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
        elif isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
