"""Click-by-click prediction with feedback: the SAM-style ``set_image`` / ``predict`` contract.

The predictor is stateless between calls: everything a later click needs (the soft probability
map fed back to the network, the map Zoom-In tracks, the ROI) is returned as a
:class:`PredictorState` the caller keeps anywhere and hands back. Without it, the clicks are
replayed in order, which gives the same result.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.clicks import Click, points_tensor
from model.corrections import GUARANTEE_RADIUS, guarantee_clicks, local_change
from model.runtime import make_runner
from model.zoom_in import Box, next_roi

#: A pixel is object where its probability is above this (0.49, as the official evaluation thresholds). The one
#: definition: the predictor applies it (:meth:`FCFIPredictor.mask`), evaluation, training and the service read it.
MASK_THRESHOLD = 0.49


#: Served defaults of the scale settings, chosen on the validation split of the training sets (never on the test
#: sets; README, "Inference settings"): the long side of a zoomed (Zoom-In) network input, the longest side
#: of an unzoomed one (the first click; larger images are scaled down to it), and how far the Zoom-In ROI
#: reaches around the object's box and the clicks (side = ratio x box side).
TARGET_SIZE = 480
MAX_SIZE = 480
EXPANSION_RATIO = 3.0
#: Served default of the answered mask's clean-up: keep only the parts of the mask (8-connected) that hold a
#: positive click, so a blob the network also lit up elsewhere (a spoon beside the clicked cup) is not in the
#: answer. Chosen on the validation split (README, "Inference settings"): every figure a little better, though
#: objects in several pieces lose the parts not yet clicked.
CLICKED_PARTS_ONLY = True
#: Served default of the local merge (:func:`model.corrections.local_change`): from the second click on, take the new
#: map only in the changed parts that reach the newest click. Off: on the validation split it cut the clicks that make
#: the mask worse by more than 0.02 from 4.6% to 2.5% (whole objects) but cost 0.47 clicks at 90% IoU, because it
#: also throws away the boundary the zoomed-in pass improves everywhere (docs/results.md, "Corrective clicks").
LOCAL_MERGE = False
#: Served default of the click guarantee's radius in image pixels (:func:`model.corrections.guarantee_clicks`; -1:
#: off): every click's pixel and its 8 neighbours are answered on the click's side of the threshold. Radius 1 leaves
#: the validation figures as they were; radius 3 cost 0.12 clicks at 90% (docs/results.md).
CLICK_GUARANTEE = GUARANTEE_RADIUS


@dataclass(frozen=True)
class PredictorOptions:
    """How :class:`FCFIPredictor` runs a network; the defaults are the served settings.

    Attributes:
        zoom_in: from the second click, crop the ROI around the object and all clicks.
        target_size: long side of the zoomed network input (pixels).
        expansion_ratio: ROI expansion around the object's box.
        min_crop_size: smallest ROI side (pixels).
        skip_clicks: clicks that always see the full image (1: only the first).
        flip: average the prediction with that of the horizontally flipped input.
        max_size: longest network-input side (big images are scaled down for the first click; a Zoom-In ROI is
            scaled to ``target_size`` but never beyond ``max_size``, as LimitLongestSide after ZoomIn); 0 = none.
        threshold: probability above which a pixel is object (:data:`MASK_THRESHOLD`).
        autocast_dtype: run the network under ``torch.autocast`` with this dtype (e.g. bfloat16).
        runtime: who runs the network pass (:data:`model.runtime.RUNTIMES`, see :func:`model.runtime.make_runner`);
            None calls ``net`` itself as it is (training and evaluation code).
        clicked_parts_only: answer only the parts of the mask that hold a positive click (:func:`clicked_parts`;
            :data:`CLICKED_PARTS_ONLY`). The state keeps the network's own map: it is what the network is trained
            to receive as feedback.
        local_merge: from the second click on, take the new map only where its change reaches the newest click
            (:data:`LOCAL_MERGE`); the merged map is also what the next click reads as feedback.
        click_guarantee: radius (image pixels) of the disk around every click that the answer holds on the click's
            side (:data:`CLICK_GUARANTEE`); -1: off. Only the answer: the state keeps the (merged) network map.
    """

    zoom_in: bool = True
    target_size: int = TARGET_SIZE
    expansion_ratio: float = EXPANSION_RATIO
    min_crop_size: int = 200
    skip_clicks: int = 1
    flip: bool = True
    max_size: int = MAX_SIZE
    threshold: float = MASK_THRESHOLD
    autocast_dtype: torch.dtype | None = None
    runtime: str | None = None
    clicked_parts_only: bool = CLICKED_PARTS_ONLY
    local_merge: bool = LOCAL_MERGE
    click_guarantee: int = CLICK_GUARANTEE


def clicked_parts(probs: np.ndarray, clicks: tuple[Click, ...] | list[Click], threshold: float) -> np.ndarray:
    """``probs`` with the mask's parts that hold no positive click taken out of the mask.

    Args:
        probs: HxW float32 in [0, 1]; the mask is ``probs > threshold``.
        clicks: the clicks so far (image pixels); only positive ones choose parts.
        threshold: the mask threshold.
    Returns:
        HxW float32 in [0, 1]: ``probs`` itself when the mask is one part or none (or no positive click lies on
        it: then nothing is dropped rather than everything), else a copy whose other parts (8-connected) are lowered
        to just below ``threshold``, so they leave the mask and the map stays a probability map.
    """
    mask = probs > threshold
    count, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
    if count <= 2:  # background and at most one part
        return probs
    h, w = mask.shape
    keep = {int(labels[min(int(c.y), h - 1), min(int(c.x), w - 1)]) for c in clicks if c.positive} - {0}
    if not keep:
        return probs
    dropped = np.ones(count, bool)
    dropped[[0, *keep]] = False
    drop = dropped[labels]
    out = probs.copy()
    out[drop] = np.nextafter(np.float32(threshold), np.float32(0))  # just below, in float32 as in any comparison
    return out


def quantize(probs: np.ndarray) -> np.ndarray:
    """[0, 1] float map -> uint8 (round(p * 255))."""
    return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)


def dequantize(q: np.ndarray) -> np.ndarray:
    """uint8 map -> float32 in [0, 1]."""
    return q.astype(np.float32) * np.float32(1.0 / 255.0)


@dataclass
class PredictorState:
    """What one click leaves for the next.

    The maps the *next* click reads are kept as uint8 (1/255 steps): the network sees no difference,
    and a state compresses to a few kB with zlib, so a service can afford to store one per click.
    Both the step-by-step and the replay path go through the same quantization, so they agree exactly.

    Attributes:
        clicks: the chronological clicks this state answers.
        probs: HxW float32 in [0, 1], this click's prediction (exact for a live state; the dequantized
            feedback for a deserialized one).
        feedback: HxW uint8, the prediction fed back to the network with the next click.
        roi_map: HxW uint8, the map Zoom-In places the next ROI on (the official code tracks CFFM's
            updated feedback M_u here, not the prediction), or None when it is ``feedback``.
        roi: the Zoom-In ROI used for this click ``(rmin, rmax, cmin, cmax)``, inclusive, or None.
        image_id: fingerprint of the image the state belongs to.
    """

    clicks: tuple[Click, ...]
    probs: np.ndarray
    feedback: np.ndarray
    roi_map: np.ndarray | None
    roi: Box | None
    image_id: str

    @property
    def nbytes(self) -> int:
        """Memory held by the maps."""
        return self.probs.nbytes + self.feedback.nbytes + (self.roi_map.nbytes if self.roi_map is not None else 0)

    def to_bytes(self, level: int = 1) -> bytes:
        """Compact lossless serialization of everything the next click needs (zlib, ``level``)."""
        h, w = self.feedback.shape
        header = {
            "v": 1, "shape": [h, w], "roi": list(self.roi) if self.roi is not None else None,
            "image_id": self.image_id, "has_roi_map": self.roi_map is not None,
            "clicks": [[c.x, c.y, c.positive] for c in self.clicks],
        }
        maps = self.feedback.tobytes() + (self.roi_map.tobytes() if self.roi_map is not None else b"")
        head = json.dumps(header).encode()
        return len(head).to_bytes(4, "little") + head + zlib.compress(maps, level)

    @classmethod
    def from_bytes(cls, data: bytes) -> PredictorState:
        """Inverse of :meth:`to_bytes`. ``probs`` becomes the dequantized feedback."""
        try:
            n = int.from_bytes(data[:4], "little")
            header = json.loads(data[4:4 + n])
            h, w = header["shape"]
            raw = zlib.decompress(data[4 + n:])
        except (ValueError, KeyError, zlib.error) as exc:
            raise ValueError(f"not a serialized PredictorState: {exc}") from exc
        expected = h * w * (2 if header["has_roi_map"] else 1)
        if len(raw) != expected:
            raise ValueError("serialized PredictorState has the wrong size")
        feedback = np.frombuffer(raw, np.uint8, h * w).reshape(h, w).copy()
        roi_map = np.frombuffer(raw, np.uint8, h * w, h * w).reshape(h, w).copy() if header["has_roi_map"] else None
        clicks = tuple(Click(float(x), float(y), bool(p)) for x, y, p in header["clicks"])
        roi = tuple(int(v) for v in header["roi"]) if header["roi"] is not None else None
        return cls(clicks, dequantize(feedback), feedback, roi_map, roi, header["image_id"])


#: The :class:`PredictorOptions` fields a command line may override, with their flags' help; one list for
#: ``model.evaluation.evaluate`` and ``model.training.validation`` (:func:`add_option_arguments`).
_OPTION_FLAGS: tuple[tuple[str, type | None, str], ...] = (
    ("target_size", int, "Zoom-In long side (px)"),
    ("max_size", int, "longest network-input side (px): the first click's full image, and the cap of a Zoom-In crop"),
    ("expansion_ratio", float, "Zoom-In ROI expansion around the object's box"),
    ("clicked_parts_only", None, "answer only the mask's parts that hold a positive click"),
    ("local_merge", None, "take a corrective click's new map only where its change reaches the click"),
    ("click_guarantee", int, "hold every click's disk of this radius (px) on its side in the answer; -1: off"),
)


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--target-size``, ``--max-size``, ``--expansion-ratio``, ``--[no-]clicked-parts-only``,
    ``--[no-]local-merge`` and ``--click-guarantee`` to ``parser``; unset, each keeps the served default."""
    for name, kind, text in _OPTION_FLAGS:
        flag = "--" + name.replace("_", "-")
        default = getattr(PredictorOptions(), name)
        if kind is None:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{text} (served default: {'on' if default else 'off'})")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"{text} (served default: {default})")


def options_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The :func:`add_option_arguments` flags that were given, as :class:`PredictorOptions` overrides."""
    return {name: getattr(args, name) for name, _, _ in _OPTION_FLAGS if getattr(args, name, None) is not None}


class FCFIPredictor:
    """Runs an FCFI network click by click.

    Args:
        net: a network from :func:`model.build_model` or :func:`model.load_checkpoint`.
        device: where to run; defaults to the network's device.
        options: how to run it (:class:`PredictorOptions`; default: the served settings).
        **overrides: fields of :class:`PredictorOptions` to change (``FCFIPredictor(net, flip=False)``).
    """

    def __init__(self, net: nn.Module, device: str | torch.device | None = None, *,
                 options: PredictorOptions | None = None, **overrides: object) -> None:
        opts = dataclasses.replace(options or PredictorOptions(), **overrides)
        self.options = opts
        if device is None:
            first = next(net.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.zoom_in = opts.zoom_in
        self.target_size = int(opts.target_size)
        self.expansion_ratio = float(opts.expansion_ratio)
        self.min_crop_size = int(opts.min_crop_size)
        self.skip_clicks = int(opts.skip_clicks)
        self.flip = opts.flip
        self.max_size = int(opts.max_size)
        self.threshold = float(opts.threshold)
        self.autocast_dtype = opts.autocast_dtype
        self.clicked_parts_only = bool(opts.clicked_parts_only)
        self.local_merge = bool(opts.local_merge)
        self.click_guarantee = int(opts.click_guarantee)
        self.runner = make_runner(self.net, opts.runtime) if opts.runtime is not None else None
        #: the runtime actually used ("torch" after a fallback; None: the network called as it is).
        self.runtime = self.runner.name if self.runner is not None else None
        #: network passes run so far (one per click; replay runs one per replayed click).
        self.num_passes = 0
        #: milliseconds of the last :meth:`predict` by stage: ``prepare`` (ROI, crop, resize, flip, click
        #: tensors), ``network`` (the runner), ``post`` (flip average, sigmoid, paste, quantization, local merge,
        #: guarantee, clicked parts).
        self.timings: dict[str, float] = {}
        self._image: torch.Tensor | None = None
        self._rgb_cache: tuple[tuple, torch.Tensor] | None = None
        self._image_id = ""
        self._size = (0, 0)

    # ------------------------------------------------------------------ image
    def set_image(self, rgb: np.ndarray) -> None:
        """Set the image all following clicks refer to.

        Args:
            rgb: HxWx3 uint8 RGB.
        """
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("set_image expects an HxWx3 uint8 RGB array")
        if rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise ValueError("image is empty")
        rgb = np.ascontiguousarray(rgb)
        if not rgb.flags.writeable:  # torch.from_numpy wants a writable buffer
            rgb = rgb.copy()
        self._image_id = image_fingerprint(rgb)
        self._size = (rgb.shape[0], rgb.shape[1])
        self._image = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        self._rgb_cache = None

    def set_threads(self, threads: int) -> None:
        """Run the following passes on ``threads`` CPU threads (the runtime's engine for that count)."""
        if self.runner is not None:
            self.runner.set_threads(threads)
        else:
            torch.set_num_threads(max(1, threads))

    def warmup(self, height: int = 360, width: int = 480) -> None:
        """Run one pass on a blank ``height`` x ``width`` input so that the runtime's one-time set-up (kernel
        selection, memory pools) is not paid by the first click. Changes no state; not counted in ``num_passes``."""
        batch = 2 if self.flip else 1
        x = torch.zeros(batch, 4, height, width, device=self.device)
        points = points_tensor([[(height / 2, width / 2, True)]] * batch, self.device)
        new_pts = torch.tensor([[height / 2, width / 2, 1.0]] * batch, device=self.device)
        with torch.inference_mode():
            (self.runner or self.net)(x, points, new_pts, torch.zeros(batch, device=self.device))

    @property
    def image_id(self) -> str:
        """Fingerprint of the current image (states carry it to catch a mix-up)."""
        return self._image_id

    # ---------------------------------------------------------------- predict
    def mask(self, probs: np.ndarray) -> np.ndarray:
        """HxW bool object mask of a probability map from :meth:`predict` (``probs > threshold``)."""
        return np.asarray(probs) > self.threshold

    def predict(self, clicks: list[Click], state: PredictorState | None = None
                ) -> tuple[np.ndarray, PredictorState]:
        """Probability map after the newest click.

        Args:
            clicks: all clicks so far in chronological order (image pixels); the last is the newest
                and drives FFCM.
            state: the state returned for a prefix of ``clicks`` (normally ``clicks[:-1]``); the
                remaining clicks are run one network pass each. None replays every click.
        Returns:
            ``(probs, state)``: HxW float32 in [0, 1] (object where ``probs > threshold``; with
            ``click_guarantee``, every click's disk on its side; with ``clicked_parts_only``, only the parts that
            hold a positive click) and the state to pass with the next click (its maps are the network's, merged
            locally with ``local_merge``, not otherwise filtered).
        """
        if self._image is None:
            raise RuntimeError("call set_image before predict")
        clicks = tuple(clicks)
        self._check_clicks(clicks)
        start = 0
        self.timings = {"prepare": 0.0, "network": 0.0, "post": 0.0}
        if state is not None:
            if state.image_id != self._image_id:
                raise ValueError("state belongs to another image")
            k = len(state.clicks)
            if k > len(clicks) or clicks[:k] != state.clicks:
                raise ValueError("state does not belong to a prefix of these clicks")
            start = k
        for i in range(start, len(clicks)):
            state = self._step(clicks[: i + 1], state)
        assert state is not None
        t0 = time.perf_counter()
        probs = state.probs
        # Parts are chosen on the network's map, then the guarantee carves and adds: a negative click's disk that cut
        # a part in two must not make the clean-up drop the half without a positive click.
        if self.clicked_parts_only:
            probs = clicked_parts(probs, clicks, self.threshold)
        if self.click_guarantee >= 0:
            probs = guarantee_clicks(probs, clicks, self.threshold, self.click_guarantee)
        self.timings["post"] += (time.perf_counter() - t0) * 1000.0
        return probs, state

    def _check_clicks(self, clicks: tuple[Click, ...]) -> None:
        if not clicks:
            raise ValueError("predict needs at least one click")
        h, w = self._size
        for c in clicks:
            if not isinstance(c, Click):
                raise TypeError(f"clicks must be model.Click, got {type(c).__name__}")
            if not (np.isfinite(c.x) and np.isfinite(c.y) and 0 <= c.x < w and 0 <= c.y < h):
                raise ValueError(f"click ({c.x}, {c.y}) lies outside the {w}x{h} image")

    # -------------------------------------------------------------- one click
    def _step(self, clicks: tuple[Click, ...], prev: PredictorState | None) -> PredictorState:
        """One network pass for ``clicks[-1]`` given the state of ``clicks[:-1]``."""
        assert self._image is not None
        t0 = time.perf_counter()
        h, w = self._size
        first = prev is None

        roi: Box | None = None
        if self.zoom_in and len(clicks) > self.skip_clicks and not first:
            tracked = prev.roi_map if prev.roi_map is not None else prev.feedback
            roi = next_roi(prev.roi, dequantize(tracked), clicks, self.expansion_ratio, self.min_crop_size)
        rmin, rmax, cmin, cmax = roi if roi is not None else (0, h - 1, 0, w - 1)
        crop_h, crop_w = rmax - rmin + 1, cmax - cmin + 1
        scale = self.target_size / max(crop_h, crop_w) if roi is not None else 1.0
        if self.max_size and max(crop_h, crop_w) * scale > self.max_size:
            scale = self.max_size / max(crop_h, crop_w)
        out_h, out_w = max(1, int(round(crop_h * scale))), max(1, int(round(crop_w * scale)))

        # Only the crop is dequantized and resized; the RGB part depends on the image and the box alone, so it is
        # kept for the next click (large objects keep the same ROI click after click).
        box = (rmin, rmax, cmin, cmax)
        prev_crop = (np.zeros((crop_h, crop_w), np.float32) if first
                     else dequantize(prev.feedback[rmin:rmax + 1, cmin:cmax + 1]))
        prev_t = torch.from_numpy(prev_crop).to(self.device)[None, None]
        if (out_h, out_w) != (crop_h, crop_w):
            prev_t = F.interpolate(prev_t, size=(out_h, out_w), mode="bilinear", align_corners=True)
        x = torch.cat([self._input_rgb(box, (out_h, out_w)), prev_t], dim=1)

        # Clicks in network-input pixels; the flipped batch entry gets x' = W - 1 - x.
        tclicks = [(out_h * (c.y - rmin) / crop_h, out_w * (c.x - cmin) / crop_w, c.positive) for c in clicks]
        ny, nx, npos = tclicks[-1]
        batch_clicks = [tclicks]
        new_points = [[int(ny), int(nx), float(npos)]]
        if self.flip:
            x = torch.cat([x, torch.flip(x, dims=[3])], dim=0)
            batch_clicks.append([(y, out_w - 1 - cx, p) for y, cx, p in tclicks])
            new_points.append([int(ny), int(out_w - 1 - nx), float(npos)])
        points = points_tensor(batch_clicks, self.device)
        new_pts = torch.tensor(new_points, dtype=torch.float32, device=self.device)
        gate = torch.full((x.shape[0],), 0.0 if first else 1.0, device=self.device)
        t1 = time.perf_counter()

        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                                    enabled=self.autocast_dtype is not None):
            out = (self.runner or self.net)(x, points, new_pts, gate)
        self.num_passes += 1
        t2 = time.perf_counter()

        logits = out["instances"].float()
        fb2 = out.get("feedback2")
        fb2 = fb2.float() if fb2 is not None else None
        if self.flip:
            # Logits are averaged before the sigmoid, feedback maps as probabilities (official).
            logits = 0.5 * (logits[:1] + torch.flip(logits[1:], dims=[3]))
            if fb2 is not None:
                fb2 = 0.5 * (fb2[:1] + torch.flip(fb2[1:], dims=[3]))
        probs, feedback = self._paste(torch.sigmoid(logits), box, keep_float=True)
        roi_map = self._paste(fb2, box)[1] if fb2 is not None else None
        if self.local_merge and not first:
            # Decided on the previous state's uint8 map, so a deserialized state and a replay merge alike.
            prev_probs = dequantize(prev.feedback)
            take = local_change(prev_probs > self.threshold, probs > self.threshold, clicks[-1])
            if take is not None:
                probs = np.where(take, probs, prev_probs)
                feedback = np.where(take, feedback, prev.feedback)
        t3 = time.perf_counter()
        for stage, ms in (("prepare", t1 - t0), ("network", t2 - t1), ("post", t3 - t2)):
            self.timings[stage] += ms * 1000.0
        return PredictorState(clicks, probs, feedback, roi_map, roi, self._image_id)

    def _input_rgb(self, box: Box, size: tuple[int, int]) -> torch.Tensor:
        """[1, 3, h, w] RGB network input of the image crop ``box`` resized to ``size`` (cached for one box)."""
        key = (box, size)
        if self._rgb_cache is None or self._rgb_cache[0] != key:
            assert self._image is not None
            rmin, rmax, cmin, cmax = box
            rgb = self._image[:, :, rmin:rmax + 1, cmin:cmax + 1]
            if tuple(rgb.shape[-2:]) != size:
                rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=True)
            self._rgb_cache = (key, rgb)
        return self._rgb_cache[1]

    def _paste(self, m: torch.Tensor, box: Box, keep_float: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
        """[1, 1, h, w] network-input map in [0, 1] -> HxW image maps, zero outside the box: float32 (only with
        ``keep_float``, else None) and uint8 (:func:`quantize`, computed on the crop only)."""
        rmin, rmax, cmin, cmax = box
        crop = (rmax - rmin + 1, cmax - cmin + 1)
        if tuple(m.shape[-2:]) != crop:
            m = F.interpolate(m, size=crop, mode="bilinear", align_corners=True)
        m = m[0, 0].clamp(0.0, 1.0)
        h, w = self._size
        q = np.zeros((h, w), np.uint8)
        # torch rounds half to even like np.rint, so this equals quantize() of the float map, with both threads.
        q[rmin:rmax + 1, cmin:cmax + 1] = torch.round(m * 255.0).to(torch.uint8).cpu().numpy()
        if not keep_float:
            return None, q
        full = np.zeros((h, w), np.float32)
        full[rmin:rmax + 1, cmin:cmax + 1] = m.cpu().numpy()
        return full, q


def image_fingerprint(rgb: np.ndarray) -> str:
    """Short content hash of an image (shape included)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(rgb.shape).encode())
    h.update(memoryview(np.ascontiguousarray(rgb)).cast("B"))
    return h.hexdigest()
