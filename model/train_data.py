"""Training data: the object index over ../shared/data, the validation split and augmentation.

An *object* is one training target: a binary mask (COCO_MVal, WeizmannHorse, HumanSeg) or one or
more label ids of a label map (every BSDS region; every CCP garment, plus the whole person).
GrabCut, Berkeley and DAVIS are evaluation sets and are refused here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .sampling import sample_initial_clicks

EVAL_ONLY = {"grabcut", "berkeley", "davis"}
# name -> (image dir, mask dir, kind)
TRAIN_SETS = {
    "COCO_MVal": ("img", "gt", "binary"),
    "WeizmannHorse": ("images", "masks", "binary"),
    "HumanSeg": ("images", "masks", "binary"),
    "BSDS_regions": ("images", "labels", "regions"),
    "CCP_subset": ("images", "labels", "clothing"),
}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp"}


@dataclass
class Entry:
    """One image with its candidate objects (tuples of label ids; ``(255,)`` for binary masks)."""

    dataset: str
    image: str
    mask: str
    objects: list[tuple[int, ...]] = field(default_factory=list)


def _split_of(stem: str, val_fraction: float) -> str:
    h = int(hashlib.sha1(stem.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def build_index(root: Path, datasets: list[str], val_fraction: float = 0.05, min_area: int = 400
                ) -> dict[str, list[Entry]]:
    """Index the training sets under ``root`` and split them deterministically (by file-name hash).

    Returns ``{"train": [...], "val": [...]}``. Raises if an evaluation set is requested.
    """
    out: dict[str, list[Entry]] = {"train": [], "val": []}
    for name in datasets:
        if name.lower() in EVAL_ONLY:
            raise ValueError(f"{name} is an evaluation set; never train on it")
        if name not in TRAIN_SETS:
            raise ValueError(f"unknown training set {name!r}; choose from {', '.join(TRAIN_SETS)}")
        img_dir, mask_dir, kind = TRAIN_SETS[name]
        masks = {p.stem: p for p in (root / name / mask_dir).iterdir() if p.suffix.lower() in IMAGE_EXTS}
        images = sorted(p for p in (root / name / img_dir).iterdir()
                        if p.suffix.lower() in IMAGE_EXTS and p.stem in masks)
        for img in tqdm(images, desc=f"index {name}", leave=False, disable=None):
            mask_path = masks[img.stem]
            if kind == "binary":
                objects = [(255,)]
            else:
                labels = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
                ids, counts = np.unique(labels, return_counts=True)
                objects = [(int(i),) for i, c in zip(ids, counts, strict=True) if i > 0 and c >= min_area]
                if kind == "clothing" and (labels > 0).sum() >= min_area:
                    objects.append(tuple(int(i) for i in ids if i > 0))  # the whole person
            if objects:
                rel = lambda p: str(p.relative_to(root))  # noqa: E731
                out[_split_of(f"{name}/{img.stem}", val_fraction)].append(
                    Entry(name, rel(img), rel(mask_path), objects))
    return out


def save_data_list(index: dict[str, list[Entry]], path: Path) -> None:
    """Record exactly which images and objects a run trained and validated on."""
    path.write_text(json.dumps({k: [e.__dict__ for e in v] for k, v in index.items()}, indent=0))


@dataclass
class LoadedImage:
    rgb: np.ndarray  # HxWx3 uint8
    labels: np.ndarray  # HxW uint8 (binary masks: 0/255)
    objects: list[tuple[int, ...]]
    dataset: str


def load_entries(root: Path, entries: list[Entry], max_side: int = 640) -> list[LoadedImage]:
    """Decode every image once into memory, scaled so the long side is at most ``max_side``."""
    loaded = []
    for e in tqdm(entries, desc="load images", leave=False, disable=None):
        bgr = cv2.imread(str(root / e.image), cv2.IMREAD_COLOR)
        labels = cv2.imread(str(root / e.mask), cv2.IMREAD_GRAYSCALE)
        if bgr is None or labels is None:
            raise OSError(f"cannot read {e.image} / {e.mask}")
        if labels.shape != bgr.shape[:2]:
            labels = cv2.resize(labels, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_NEAREST)
        if e.objects == [(255,)]:
            labels = np.where(labels > 127, 255, 0).astype(np.uint8)
        s = max_side / max(bgr.shape[:2])
        if s < 1:
            size = (round(bgr.shape[1] * s), round(bgr.shape[0] * s))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        loaded.append(LoadedImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), labels, e.objects, e.dataset))
    return loaded


@dataclass
class AugmentConfig:
    crop: tuple[int, int] = (320, 480)
    scale: tuple[float, float] = (0.75, 1.40)
    merge_prob: float = 0.15
    paste_prob: float = 0.3
    jitter_prob: float = 0.75
    min_object_pixels: int = 60


class SampleMaker:
    """Random training samples: object choice, copy-paste, scale, flip, crop, colour jitter, clicks."""

    def __init__(self, images: list[LoadedImage], config: AugmentConfig) -> None:
        if not images:
            raise ValueError("no training images")
        self.images = images
        self.cfg = config

    def _object(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb, object mask, other-objects mask) from a random image."""
        img = self.images[rng.integers(len(self.images))]
        k = rng.integers(len(img.objects))
        ids = set(img.objects[k])
        if len(img.objects) > 1 and rng.random() < self.cfg.merge_prob:
            ids |= set(img.objects[rng.integers(len(img.objects))])
        mask = np.isin(img.labels, list(ids))
        others = (img.labels > 0) & ~mask
        return img.rgb, mask, others

    def _paste(self, rgb: np.ndarray, mask: np.ndarray, others: np.ndarray, rng: np.random.Generator):
        """Copy-paste: put another image's object cut-out somewhere on this image."""
        src_rgb, src_mask, _ = self._object(rng)
        ys, xs = np.nonzero(src_mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        cut, cut_mask = src_rgb[y0:y1, x0:x1], src_mask[y0:y1, x0:x1]
        h, w = mask.shape
        s = rng.uniform(0.3, 0.9) * min(h / cut.shape[0], w / cut.shape[1], 1.5)
        size = (max(4, int(cut.shape[1] * s)), max(4, int(cut.shape[0] * s)))
        if size[0] >= w or size[1] >= h:
            return rgb, mask, others
        cut = cv2.resize(cut, size, interpolation=cv2.INTER_LINEAR)
        cut_mask = cv2.resize(cut_mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        top, left = rng.integers(0, h - size[1]), rng.integers(0, w - size[0])
        pasted = np.zeros_like(mask)
        pasted[top:top + size[1], left:left + size[0]] = cut_mask
        rgb = rgb.copy()
        rgb[top:top + size[1], left:left + size[0]][cut_mask] = cut[cut_mask]
        if rng.random() < 0.5 or (mask & ~pasted).sum() < self.cfg.min_object_pixels:
            return rgb, pasted, (others | mask) & ~pasted  # the pasted object is the target
        return rgb, mask & ~pasted, (others | pasted) & ~(mask & ~pasted)  # it occludes the target

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, bool]]]:
        """Returns (rgb float32 [3, H, W] in [0, 1], mask float32 [1, H, W] in {0, 1}, clicks)."""
        cfg = self.cfg
        for _ in range(20):
            rgb, mask, others = self._object(rng)
            if rng.random() < cfg.paste_prob:
                rgb, mask, others = self._paste(rgb, mask, others, rng)
            s = rng.uniform(*cfg.scale)
            size = (max(8, round(rgb.shape[1] * s)), max(8, round(rgb.shape[0] * s)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
            lab = cv2.resize((mask.astype(np.uint8) + 2 * others.astype(np.uint8)), size,
                             interpolation=cv2.INTER_NEAREST)
            if rng.random() < 0.5:
                rgb, lab = rgb[:, ::-1], lab[:, ::-1]
            ch, cw = cfg.crop
            ph, pw = max(0, ch - lab.shape[0]), max(0, cw - lab.shape[1])
            if ph or pw:
                rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)))
                lab = np.pad(lab, ((0, ph), (0, pw)))
            ys, xs = np.nonzero(lab == 1)
            if ys.size < cfg.min_object_pixels:
                continue
            # A crop that surely contains one random object pixel.
            i = rng.integers(ys.size)
            top = int(np.clip(ys[i] - rng.integers(0, ch), 0, lab.shape[0] - ch))
            left = int(np.clip(xs[i] - rng.integers(0, cw), 0, lab.shape[1] - cw))
            rgb = rgb[top:top + ch, left:left + cw]
            lab = lab[top:top + ch, left:left + cw]
            obj = lab == 1
            if obj.sum() < cfg.min_object_pixels:
                continue
            img = rgb.astype(np.float32)
            if rng.random() < cfg.jitter_prob:  # brightness +-0.25, contrast -0.15..+0.4
                img = img * (1 + rng.uniform(-0.15, 0.4)) + 255 * rng.uniform(-0.25, 0.25) * 0.5
            if rng.random() < cfg.jitter_prob:  # RGB shift +-10
                img = img + rng.uniform(-10, 10, 3)
            img = np.clip(img, 0, 255) / 255.0
            clicks = sample_initial_clicks(obj, rng, others=lab == 2)
            return (np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32),
                    obj[None].astype(np.float32), clicks)
        raise RuntimeError("could not draw a training sample with a visible object in 20 tries")
