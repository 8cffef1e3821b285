"""Checkpoints in the official FCFI/RITM format.

A checkpoint is a ``torch.save``-d dict of builtins and tensors only, so it loads with
``torch.load(weights_only=True)``:

* ``config``: ``{"class": dotted name, "params": {name: {"type": "builtin"|"class", "value": v,
  "specified": bool}}}``, the layout ``isegm`` writes;
* ``state_dict``: the network's tensors;
* ``meta`` (ours, optional): builtins describing how the weights were made.

Official FCFI (``HRNetModel`` / ``DeeplabModel``) and RITM (``HRNetModel`` without FFCM/CFFM keys)
checkpoints load into :mod:`model.hrnet` / :mod:`model.deeplab`; ours into :mod:`model.lite0`.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.builder import build_model

HRNET_CLASS = "isegm.model.is_hrnet_model.HRNetModel"
DEEPLAB_CLASS = "isegm.model.is_deeplab_model.DeeplabModel"
LITE0_CLASS = "model.lite0.Lite0FCFI"

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "lite0_fcfi.pth"

_NORM = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]


class CheckpointError(ValueError):
    """The file is not a checkpoint this project can build, or its tensors do not fit the network."""


def default_checkpoint_path() -> Path:
    """The shipped ``lite0`` weights (``model/weights/lite0_fcfi.pth``)."""
    return DEFAULT_WEIGHTS


def _entry(value: Any, specified: bool = True, kind: str = "builtin") -> dict[str, Any]:
    return {"type": kind, "value": value, "specified": specified}


def model_config(net: nn.Module) -> dict[str, Any]:
    """The official-format ``config`` describing ``net``'s constructor arguments."""
    cls = type(net).__name__
    p = dict(getattr(net, "config_params", {}))
    if cls == "Lite0FCFI":
        return {"class": LITE0_CLASS, "params": {k: _entry(v) for k, v in p.items()}}
    common = {
        "update_num": _entry(p.get("update_num", 1)),
        "expansion_ratio": _entry(p.get("expansion_ratio", 0.3)),
        "use_leaky_relu": _entry(True),
        "use_rgb_conv": _entry(False),
        "use_disks": _entry(True),
        "norm_radius": _entry(p.get("norm_radius", 5)),
        "with_prev_mask": _entry(True),
    }
    tail = {
        "backbone_lr_mult": _entry(0.1, False),
        "norm_layer": _entry("torch.nn.modules.batchnorm.BatchNorm2d", False, "class"),
        "cpu_dist_maps": _entry(False, False),
        "clicks_groups": _entry(None, False),
        "binary_prev_mask": _entry(False, False),
        "conv_extend": _entry(False, False),
        "norm_mean_std": _entry(_NORM, False),
    }
    if cls == "HRNetFCFI":
        params = {
            "width": _entry(p.get("width", 18)),
            "ocr_width": _entry(p.get("ocr_width", 48)),
            "mid_ch": _entry(p.get("mid_ch", 64)),
            "with_aux_output": _entry(p.get("with_aux_output", True)),
        }
        params.update(common)
        params["small"] = _entry(p.get("small", False), bool(p.get("small", False)))
        params["num_classes"] = _entry(1, False)
        params.update(tail)
        return {"class": HRNET_CLASS, "params": params}
    if cls == "DeepLabFCFI":
        params = {
            "backbone": _entry(p.get("backbone", "resnet101")),
            "deeplab_ch": _entry(p.get("deeplab_ch", 256)),
            "mid_ch": _entry(p.get("mid_ch", 32)),
            "aspp_dropout": _entry(p.get("aspp_dropout", 0.2)),
        }
        params.update(common)
        params["backbone_norm_layer"] = _entry(None, False)
        params.update(tail)
        params["with_aux_output"] = _entry(False, False)
        return {"class": DEEPLAB_CLASS, "params": dict(sorted(params.items(), key=_deeplab_order))}
    raise CheckpointError(f"cannot describe a {cls} as a checkpoint config")


_DEEPLAB_ORDER = ["backbone", "deeplab_ch", "mid_ch", "aspp_dropout", "update_num", "expansion_ratio",
                  "use_leaky_relu", "use_rgb_conv", "use_disks", "norm_radius", "with_prev_mask",
                  "backbone_norm_layer", "backbone_lr_mult", "norm_layer", "with_aux_output",
                  "cpu_dist_maps", "clicks_groups", "binary_prev_mask", "conv_extend", "norm_mean_std"]


def _deeplab_order(item: tuple[str, Any]) -> int:
    return _DEEPLAB_ORDER.index(item[0]) if item[0] in _DEEPLAB_ORDER else len(_DEEPLAB_ORDER)


def checkpoint_bytes(net: nn.Module, meta: dict[str, Any] | None = None) -> bytes:
    """The checkpoint file of ``net``: the one definition of the payload (``config``, ``state_dict`` and the
    optional ``meta`` of builtins: training command, data, scores ...), serialized by ``torch.save``."""
    payload: dict[str, Any] = {
        "config": model_config(net),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
    }
    if meta:
        payload["meta"] = meta
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_checkpoint(net: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``net`` as an official-format checkpoint (:func:`checkpoint_bytes`), atomically (temp file + rename).

    Args:
        net: a network from :func:`model.build_model`.
        path: destination file.
        meta: optional builtins stored under ``meta`` (training command, data, scores ...).
    """
    path = Path(path)
    write_atomic(path, checkpoint_bytes(net, meta))
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a reader (or a run killed mid-write)
    never sees half a file; creates the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        Path(tmp).write_bytes(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a checkpoint is read by other users and containers
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _values(config: dict[str, Any]) -> dict[str, Any]:
    params = config.get("params", {})
    if not isinstance(params, dict):
        raise CheckpointError("checkpoint config has no 'params' dict")
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in params.items()}


def _reject_unsupported(values: dict[str, Any]) -> None:
    unsupported = {
        "use_disks": (False, "Gaussian click maps (use_disks=False)"),
        "use_rgb_conv": (True, "an RGB conv stem (use_rgb_conv=True)"),
        "conv_extend": (True, "conv_extend=True"),
        "with_prev_mask": (False, "a network without the previous-mask input (with_prev_mask=False)"),
        "binary_prev_mask": (True, "binary_prev_mask=True"),
    }
    for key, (bad, what) in unsupported.items():
        if values.get(key) == bad:
            raise CheckpointError(f"this checkpoint uses {what}, which this project does not implement")


def build_from_config(config: dict[str, Any], state_keys: set[str] | None = None) -> nn.Module:
    """Build the network a checkpoint ``config`` describes.

    ``state_keys`` decides whether FFCM/CFFM exist for official classes: a RITM checkpoint has the
    same class name but no ``correction_module`` keys, and then builds with FCFI disabled.
    """
    if not isinstance(config, dict) or "class" not in config:
        raise CheckpointError("checkpoint config has no 'class'")
    cls = config["class"]
    v = _values(config)
    has_fcfi = state_keys is None or any(".correction_module." in k for k in state_keys)
    if cls == LITE0_CLASS:
        # Files written before ``skip_prev_mask`` existed fed the previous mask into the click skip.
        v.setdefault("skip_prev_mask", True)
        return build_model("lite0", pretrained=False, **v)
    if cls == HRNET_CLASS:
        _reject_unsupported(v)
        arch = "hrnet18s" if v.get("small", False) else "hrnet18"
        opts: dict[str, Any] = dict(width=v.get("width", 18), ocr_width=v.get("ocr_width", 64),
                                    norm_radius=v.get("norm_radius", 5),
                                    with_aux_output=v.get("with_aux_output", False), fcfi=has_fcfi)
        if has_fcfi:
            opts.update(mid_ch=v.get("mid_ch", 64), update_num=v.get("update_num", 1),
                        expansion_ratio=v.get("expansion_ratio", 0.3))
        return build_model(arch, **opts)
    if cls == DEEPLAB_CLASS:
        _reject_unsupported(v)
        opts = dict(backbone=v.get("backbone", "resnet101"), deeplab_ch=v.get("deeplab_ch", 256),
                    aspp_dropout=v.get("aspp_dropout", 0.5), norm_radius=v.get("norm_radius", 5),
                    fcfi=has_fcfi)
        if has_fcfi:
            opts.update(mid_ch=v.get("mid_ch", 32), update_num=v.get("update_num", 1),
                        expansion_ratio=v.get("expansion_ratio", 0.3))
        return build_model("r101", **opts)
    raise CheckpointError(f"unknown network class {cls!r} in checkpoint config")


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_strict(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with an error that names missing, unexpected and misshapen keys."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                       for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
        if misshapen:
            parts.append(f"shape mismatches ({len(misshapen)}): {_describe(misshapen)}")
        raise CheckpointError(f"checkpoint does not fit {type(net).__name__}: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``; checks the two official entries are present."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
        raise CheckpointError(f"{path}: expected a dict with 'config' and 'state_dict' (the official format)")
    return payload


def load_checkpoint(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Build the network a checkpoint describes and load its weights strictly.

    Args:
        path: checkpoint file; None or ``"default"`` for the shipped ``lite0`` weights.
        device: where to put the network.
    Returns:
        the network in eval mode with ``requires_grad`` off. Its ``checkpoint_meta`` attribute holds
        the file's ``meta`` dict (empty for official files).
    Raises:
        CheckpointError: unknown class, unsupported options, or keys that do not fit (named).
    """
    if path is None or str(path) == "default":
        path = default_checkpoint_path()
        if not path.exists():
            raise CheckpointError(f"no shipped default weights at {path}; "
                                  "train them with `python -m model.training.train`")
    payload = read_checkpoint(path)
    state = payload["state_dict"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    net = build_from_config(payload["config"], set(state))
    load_state_strict(net, state)
    net.checkpoint_meta = dict(payload.get("meta") or {})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device)
