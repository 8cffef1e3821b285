"""One builder for every architecture, selected by name (timm style, no hidden globals)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ARCHS = ("lite0", "hrnet18", "hrnet18s", "r101")


def _lite0(**options: Any) -> nn.Module:
    from model.lite0 import Lite0FCFI

    return Lite0FCFI(**options)


def _hrnet(small: bool, **options: Any) -> nn.Module:
    from model.hrnet import HRNetFCFI

    params = dict(width=18, ocr_width=48, mid_ch=64, small=small)
    params.update(options)
    return HRNetFCFI(**params)


def _r101(**options: Any) -> nn.Module:
    from model.deeplab import DeepLabFCFI

    params = dict(backbone="resnet101", deeplab_ch=256, mid_ch=32)
    params.update(options)
    return DeepLabFCFI(**params)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lite0": _lite0,
    # "HRNet18s" of the FCFI release: full-depth HRNet-W18, OCR 48, FCFI mid 64.
    "hrnet18": lambda **o: _hrnet(False, **o),
    "hrnet18s": lambda **o: _hrnet(True, **o),
    "r101": _r101,
}


def build_model(arch: str, **options: Any) -> nn.Module:
    """Build a network by name.

    Args:
        arch: ``lite0``, ``hrnet18``, ``hrnet18s`` or ``r101``.
        options: constructor arguments of the architecture, for example ``fcfi="none"`` and
            ``pretrained=True`` for ``lite0``, ``fcfi=False`` for an HRNet without FFCM/CFFM.
    Returns:
        the network (in training mode, as torch builds it); see :mod:`model.base` for its forward.
    """
    try:
        builder = _BUILDERS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}") from None
    return builder(**options)
