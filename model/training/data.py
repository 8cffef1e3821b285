"""Training data: the object index over ../shared/data, the validation split and augmentation.

An *object* is one training target: a binary mask (COCO_MVal, WeizmannHorse, HumanSeg,
OxfordPets_subset) or one or more label ids of a label map (every BSDS region, every COCO instance,
every CCP garment plus the whole person). GrabCut, Berkeley and DAVIS are evaluation sets and are
refused here. In binary masks the value 128 is an uncertain band (OxfordPets_subset's trimap band, as in
GrabCut): it is ignored by every loss and never clicked.

The index keeps, per object, its area as a fraction of the image and how many image sides it touches,
so the sampler can skip tiny objects and draw few "stuff" regions (a BSDS region touching three sides is
sky or ground, not an object anyone clicks).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from model.evaluation.datasets import IMAGE_EXTS
from model.training.sampling import sample_initial_clicks

EVAL_ONLY = {"grabcut", "berkeley", "davis"}
#: Stand-ins for a team's own domain, for measuring the fit hook: never in the default model's training mix.
DOMAIN_ONLY = {"dsb2018_nuclei", "camvid"}
IGNORE_VALUE = 128  # the uncertain band of binary masks


@dataclass(frozen=True)
class TrainSet:
    """Where a training set's files are, how its masks read, and its share of the samples.

    ``kind``: ``binary`` (0 / 255, 128 ignored), ``regions`` (label ids, stuff included), ``instances``
    (label ids, things only) or ``clothing`` (label ids, plus the union as the whole person).
    ``weight``: the set's share of training draws (normalised over the sets in use), chosen so COCO-like
    photos of everyday objects, what annotators label, are drawn most.
    ``ignore_value``: a label id that is an uncertain band, not an object (VOC's 255 void band; binary masks'
    128 is handled by ``kind``), or None.
    ``whole_split``: the set's held-out images give one whole object each to the whole-object validation part.
    ``photo_fraction``: share of the set's images (by file-name hash) whose objects, all of them above a small
    area, form the *photos* validation part (0: none). Those images are never trained on.
    """

    image_dir: str
    mask_dir: str
    kind: str
    weight: float
    ignore_value: int | None = None
    whole_split: bool = True
    photo_fraction: float = 0.0


TRAIN_SETS: dict[str, TrainSet] = {
    "COCO_MVal": TrainSet("img", "gt", "binary", 0.18),
    "COCO_instances": TrainSet("images", "labels", "instances", 0.24, photo_fraction=0.07),
    "OxfordPets_subset": TrainSet("images", "masks", "binary", 0.12),
    "WeizmannHorse": TrainSet("images", "masks", "binary", 0.08),
    "HumanSeg": TrainSet("images", "masks", "binary", 0.08),
    "BSDS_regions": TrainSet("images", "labels", "regions", 0.08),
    "CCP_subset": TrainSet("images", "labels", "clothing", 0.08),
    # PASCAL VOC 2012 photos (20 classes, connected parts of the class masks, 255 = void band).
    "VOC2012_val": TrainSet("images", "labels", "instances", 0.16, ignore_value=255, whole_split=False,
                            photo_fraction=0.12),
}


@dataclass
class Entry:
    """One image with its candidate objects.

    ``objects``: tuples of label ids (``(255,)`` for binary masks); ``info``: per object
    ``[area fraction of the image, number of image sides touched]``.
    """

    dataset: str
    image: str
    mask: str
    objects: list[tuple[int, ...]] = field(default_factory=list)
    info: list[list[float]] = field(default_factory=list)


def _unit_hash(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _split_of(stem: str, val_fraction: float) -> str:
    return "val" if _unit_hash(stem) < val_fraction else "train"


def binary_labels(raw: np.ndarray) -> np.ndarray:
    """A binary mask as read (HxW uint8) -> 255 object (> 128), 128 ignore (== 128), 0 background."""
    out = np.where(raw > IGNORE_VALUE, 255, 0).astype(np.uint8)
    out[raw == IGNORE_VALUE] = IGNORE_VALUE
    return out


def object_info(mask: np.ndarray) -> list[float]:
    """``[area fraction, sides touched]`` of an HxW bool object mask."""
    sides = int(mask[0].any()) + int(mask[-1].any()) + int(mask[:, 0].any()) + int(mask[:, -1].any())
    return [round(float(mask.mean()), 5), sides]


def is_whole_object(info: list[float], min_area_frac: float = 0.01) -> bool:
    """An object a user would click as a whole: not tiny, not a region spread over three image sides."""
    return info[0] >= min_area_frac and info[1] <= 2


def _objects_of(labels: np.ndarray, kind: str, min_area: int, min_area_frac: float,
                ignore_value: int | None = None) -> tuple[list[tuple[int, ...]], list[list[float]]]:
    floor = max(min_area, min_area_frac * labels.size)
    if kind == "binary":
        mask = labels == 255
        return ([(255,)], [object_info(mask)]) if mask.sum() >= floor else ([], [])
    ids, counts = np.unique(labels, return_counts=True)
    objects = [(int(i),) for i, c in zip(ids, counts, strict=True) if 0 < i != ignore_value and c >= floor]
    if kind == "clothing" and (labels > 0).sum() >= floor:
        objects.append(tuple(int(i) for i in ids if i > 0))  # the whole person
    return objects, [object_info(np.isin(labels, list(o))) for o in objects]


#: The photos validation part keeps objects of at least this share of their image (and :data:`PHOTO_MIN_PIXELS`),
#: small ones included, at most :data:`PHOTO_MAX_OBJECTS` per image (chosen by hash), whatever sides they touch:
#: everyday photos at full variety (small objects, clutter, thin parts), where the whole-object part keeps one
#: large, centred object per image.
PHOTO_MIN_FRAC = 0.002
PHOTO_MIN_PIXELS = 200
PHOTO_MAX_OBJECTS = 4


#: Share of each training set's images held out as the validation split (``model.training.train --val-fraction`` and
#: ``model.training.validation`` default to it, so both see the same split).
VAL_FRACTION = 0.07


def build_index(root: Path, datasets: list[str], val_fraction: float = VAL_FRACTION, min_area: int = 400,
                min_area_frac: float = 0.0) -> dict[str, list[Entry]]:
    """Index the training sets under ``root`` and split them deterministically (by file-name hash).

    Args:
        root: the data folder (``../shared/data``).
        datasets: names from :data:`TRAIN_SETS`.
        val_fraction: share of each set's images held out for the whole-object validation part.
        min_area: training objects smaller than this many pixels are dropped.
        min_area_frac: ... or smaller than this fraction of the image.
    Returns:
        ``{"train": [...], "val": [...], "photos": [...]}``. ``val`` is the whole-object part: a held-out image
        keeps exactly one object, a whole one (:func:`is_whole_object`) picked by hash, so the split is fixed;
        held-out images without one are left out of both lists. ``photos`` is the everyday-photo part: one entry
        per object of the images :attr:`TrainSet.photo_fraction` holds out (see :data:`PHOTO_MIN_FRAC`). An
        image in either part is never in ``train``. Raises if an evaluation set is requested.
    """
    out: dict[str, list[Entry]] = {"train": [], "val": [], "photos": []}
    for name in datasets:
        if name.lower() in EVAL_ONLY:
            raise ValueError(f"{name} is an evaluation set; never train on it")
        if name.lower() in DOMAIN_ONLY:
            raise ValueError(f"{name} is a domain set of the fit hook's benchmark; never train the default model on it")
        if name not in TRAIN_SETS:
            raise ValueError(f"unknown training set {name!r}; choose from {', '.join(TRAIN_SETS)}")
        ts = TRAIN_SETS[name]
        masks = {p.stem: p for p in (root / name / ts.mask_dir).iterdir() if p.suffix.lower() in IMAGE_EXTS}
        images = sorted(p for p in (root / name / ts.image_dir).iterdir()
                        if p.suffix.lower() in IMAGE_EXTS and p.stem in masks)
        for img in tqdm(images, desc=f"index {name}", leave=False, disable=None):
            mask_path = masks[img.stem]
            raw = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if raw is None:
                raise OSError(f"cannot read {mask_path}")
            labels = binary_labels(raw) if ts.kind == "binary" else raw
            key = f"{name}/{img.stem}"
            held_whole = ts.whole_split and _split_of(key, val_fraction) == "val"
            held_photo = _unit_hash(key) < ts.photo_fraction
            rel = lambda p: str(p.relative_to(root))  # noqa: E731
            if held_photo:
                objects, info = _objects_of(labels, ts.kind, PHOTO_MIN_PIXELS, PHOTO_MIN_FRAC, ts.ignore_value)
                order = sorted(range(len(objects)), key=lambda k: _unit_hash(f"photo/{key}/{objects[k]}"))
                for k in sorted(order[:PHOTO_MAX_OBJECTS]):
                    out["photos"].append(Entry(name, rel(img), rel(mask_path), [objects[k]], [info[k]]))
            if held_whole:
                objects, info = _objects_of(labels, ts.kind, min_area, 0.0, ts.ignore_value)
                whole = [k for k, i in enumerate(info) if is_whole_object(i)]
                if whole:
                    k = whole[int(_unit_hash(f"object/{key}") * len(whole))]
                    out["val"].append(Entry(name, rel(img), rel(mask_path), [objects[k]], [info[k]]))
            if held_whole or held_photo:
                continue
            objects, info = _objects_of(labels, ts.kind, min_area, min_area_frac, ts.ignore_value)
            if objects:
                out["train"].append(Entry(name, rel(img), rel(mask_path), objects, info))
    return out


def present_sets(root: Path) -> list[str]:
    """The training sets of :data:`TRAIN_SETS` that exist under ``root``, in table order."""
    return [n for n in TRAIN_SETS if (Path(root) / n).is_dir()]


def save_data_list(index: dict[str, list[Entry]], path: Path) -> None:
    """Record exactly which images and objects a run trained and validated on."""
    path.write_text(json.dumps({k: [e.__dict__ for e in v] for k, v in index.items()}, indent=0))


@dataclass
class TrainImage:
    """A decoded training image with its label map.

    Attributes:
        rgb: HxWx3 uint8.
        labels: HxW uint8 label map (binary masks: 0 / 255, 128 = ignore band).
        ignore_value: the label id of the uncertain band that no loss counts and no click lands on; None: 128 for
            a binary mask, no band otherwise (:attr:`band_value`).
        objects: the candidate objects, tuples of label ids.
        dataset: the set's name (for per-set sampling weights).
        weights: optional relative draw weight per object (None: uniform).
    """

    rgb: np.ndarray
    labels: np.ndarray
    objects: list[tuple[int, ...]]
    dataset: str
    weights: list[float] | None = None
    ignore_value: int | None = None

    @property
    def band_value(self) -> int | None:
        """The label id of the uncertain band: ``ignore_value``, else 128 for a binary mask (``objects`` is
        ``[(255,)]``), else None."""
        if self.ignore_value is not None:
            return self.ignore_value
        return IGNORE_VALUE if self.objects == [(255,)] else None

    @property
    def ignore(self) -> np.ndarray | None:
        """HxW bool map of pixels no loss counts (binary masks' 128 band, VOC's 255 void band), or None."""
        value = self.band_value
        if value is None:
            return None
        band = self.labels == value
        return band if band.any() else None


def load_entries(root: Path, entries: list[Entry], max_side: int = 640, stuff_weight: float = 1.0
                 ) -> list[TrainImage]:
    """Decode every image once into memory, scaled so the long side is at most ``max_side``.

    ``stuff_weight``: relative draw weight of objects that touch three or more image sides.
    """
    loaded = []
    for e in tqdm(entries, desc="load images", leave=False, disable=None):
        bgr = cv2.imread(str(root / e.image), cv2.IMREAD_COLOR)
        labels = cv2.imread(str(root / e.mask), cv2.IMREAD_GRAYSCALE)
        if bgr is None or labels is None:
            raise OSError(f"cannot read {e.image} / {e.mask}")
        if labels.shape != bgr.shape[:2]:
            labels = cv2.resize(labels, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_NEAREST)
        binary = TRAIN_SETS[e.dataset].kind == "binary" if e.dataset in TRAIN_SETS else e.objects == [(255,)]
        if binary:
            labels = binary_labels(labels)
        s = max_side / max(bgr.shape[:2])
        if s < 1:
            size = (round(bgr.shape[1] * s), round(bgr.shape[0] * s))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        weights = [stuff_weight if (i[1] if len(i) > 1 else 0) >= 3 else 1.0 for i in e.info] if e.info else None
        ignore_value = IGNORE_VALUE if binary else (TRAIN_SETS[e.dataset].ignore_value if e.dataset in TRAIN_SETS
                                                    else None)
        loaded.append(TrainImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), labels, list(e.objects), e.dataset,
                                 weights, ignore_value))
    return loaded


@dataclass
class AugmentConfig:
    """The augmentation recipe; the defaults are the training recipe (``model.training.train``).

    Attributes:
        crop: HxW of a sample.
        view_prob: share of *scale-matched views*: a window of ``view_range`` times the image (at the crop's
            aspect) that contains the whole object, resized to the crop, so the network sees whole objects at
            the scale the evaluation's first click shows them. The rest are native-scale crops.
        view_range: window size as a fraction of the image's larger extent (at the crop's aspect).
        scale: resize range of native-scale crops.
        merge_prob: chance of merging a second object of the image into the target.
        paste_prob: chance of pasting another image's object cut-out.
        paste_feather: Gaussian sigma (px) of the pasted cut-out's alpha edge; 0 = hard edge.
        jitter_prob: chance of each colour jitter.
        min_object_pixels: a sample's object must keep at least this many pixels in the crop.
    """

    crop: tuple[int, int] = (320, 480)
    view_prob: float = 0.7
    view_range: tuple[float, float] = (0.3, 1.0)
    scale: tuple[float, float] = (0.75, 1.40)
    merge_prob: float = 0.15
    paste_prob: float = 0.1
    paste_feather: float = 1.5
    jitter_prob: float = 0.75
    min_object_pixels: int = 60


# Label codes inside the sampler: 0 background, 1 target, 2 other objects, 3 ignore.
_TARGET, _OTHER, _IGNORE = 1, 2, 3


def crop_padded(arr: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
    """``arr[top:top+h, left:left+w]`` where pixels outside ``arr`` are 0 (any leading 2 dims)."""
    out = np.zeros((h, w, *arr.shape[2:]), arr.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, arr.shape[0]), min(left + w, arr.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = arr[y0:y1, x0:x1]
    return out


class SampleMaker:
    """Random training samples: object choice, copy-paste, scale-matched view or native-scale crop, flip,
    colour jitter, clicks.

    Args:
        images: the decoded training images.
        config: the augmentation recipe.
        dataset_weights: share of draws per dataset name (normalised over the sets present); None draws
            images uniformly, whatever their set.
    """

    def __init__(self, images: list[TrainImage], config: AugmentConfig,
                 dataset_weights: dict[str, float] | None = None) -> None:
        if not images:
            raise ValueError("no training images")
        self.images = images
        self.cfg = config
        self.groups: list[np.ndarray] = []
        self.group_p: np.ndarray | None = None
        if dataset_weights:
            names = sorted({img.dataset for img in images})
            self.groups = [np.array([i for i, img in enumerate(images) if img.dataset == n]) for n in names]
            p = np.array([float(dataset_weights.get(n, 0.0)) for n in names])
            if p.sum() <= 0:
                raise ValueError("dataset weights are all zero for the sets in use")
            self.group_p = p / p.sum()

    def _image(self, rng: np.random.Generator) -> TrainImage:
        if self.group_p is None:
            return self.images[rng.integers(len(self.images))]
        group = self.groups[rng.choice(len(self.groups), p=self.group_p)]
        return self.images[group[rng.integers(len(group))]]

    def _object(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(rgb HxWx3 uint8, label codes HxW uint8: 1 target, 2 other objects, 3 ignore) of a random object."""
        img = self._image(rng)
        if img.weights:
            w = np.asarray(img.weights, float)
            k = rng.choice(len(img.objects), p=w / w.sum())
        else:
            k = rng.integers(len(img.objects))
        ids = set(img.objects[k])
        if len(img.objects) > 1 and rng.random() < self.cfg.merge_prob:
            ids |= set(img.objects[rng.integers(len(img.objects))])
        target = np.isin(img.labels, list(ids))
        others = img.labels > 0
        if img.band_value is not None:
            others &= img.labels != img.band_value
        lab = np.where(target, _TARGET, np.where(others, _OTHER, 0))
        ignore = img.ignore
        if ignore is not None:
            lab[ignore] = _IGNORE
        return img.rgb, lab.astype(np.uint8)

    def _paste(self, rgb: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Copy-paste: blend another image's object cut-out (feathered edge) somewhere on this image; the pasted
        object becomes the target or occludes it."""
        src_rgb, src_lab = self._object(rng)
        ys, xs = np.nonzero(src_lab == _TARGET)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        cut, cut_mask = src_rgb[y0:y1, x0:x1], src_lab[y0:y1, x0:x1] == _TARGET
        h, w = lab.shape
        s = rng.uniform(0.3, 0.9) * min(h / cut.shape[0], w / cut.shape[1], 1.5)
        size = (max(4, int(cut.shape[1] * s)), max(4, int(cut.shape[0] * s)))
        if size[0] >= w or size[1] >= h:
            return rgb, lab
        cut = cv2.resize(cut, size, interpolation=cv2.INTER_LINEAR)
        cut_mask = cv2.resize(cut_mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        alpha = cut_mask.astype(np.float32)
        if self.cfg.paste_feather > 0:
            alpha = cv2.GaussianBlur(alpha, (0, 0), self.cfg.paste_feather)
        top, left = rng.integers(0, h - size[1]), rng.integers(0, w - size[0])
        rgb = rgb.copy()
        window = rgb[top:top + size[1], left:left + size[0]].astype(np.float32)
        rgb[top:top + size[1], left:left + size[0]] = np.rint(
            alpha[..., None] * cut + (1 - alpha[..., None]) * window).astype(np.uint8)
        pasted = np.zeros(lab.shape, bool)
        pasted[top:top + size[1], left:left + size[0]] = cut_mask
        lab = lab.copy()
        remaining = (lab == _TARGET) & ~pasted
        if rng.random() < 0.5 or remaining.sum() < self.cfg.min_object_pixels:
            lab[lab == _TARGET] = _OTHER  # the pasted object is the target
            lab[pasted] = _TARGET
        else:
            lab[pasted] = _OTHER  # it occludes the target
        return rgb, lab

    def _view(self, rgb: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A window at the crop's aspect holding the whole target, resized to the crop."""
        ch, cw = self.cfg.crop
        aspect = cw / ch
        ys, xs = np.nonzero(lab == _TARGET)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        margin = rng.uniform(1.05, 1.3)
        # Window height that holds the object (plus the 2-pixel pad below, at the largest crop scale).
        need = max((y1 - y0) * margin, (x1 - x0) * margin / aspect) + 4 * max(y1 - y0, (x1 - x0) / aspect) / ch
        full = max(lab.shape[0], lab.shape[1] / aspect)  # window height that holds the image
        wh = max(need, rng.uniform(*self.cfg.view_range) * full, 8.0)
        ww = wh * aspect

        def place(lo_obj: float, hi_obj: float, extent: float, size: float) -> float:
            lo, hi = hi_obj - size, lo_obj  # the window contains [lo_obj, hi_obj)
            inside = (0.0, extent - size) if size <= extent else (extent - size, 0.0)
            a, b = max(lo, inside[0]), min(hi, inside[1])  # prefer windows inside the image
            return rng.uniform(a, b) if a <= b else rng.uniform(min(lo, hi), max(lo, hi))

        s = ch / wh
        pad = 2 / s  # keep the object two crop pixels off the window's edges (rounding included)
        top = place(y0 - pad, y1 + pad, lab.shape[0], wh)
        left = place(x0 - pad, x1 + pad, lab.shape[1], ww)
        size = (max(1, round(lab.shape[1] * s)), max(1, round(lab.shape[0] * s)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
        t, l_ = round(top * s), round(left * s)
        return crop_padded(rgb, t, l_, ch, cw), crop_padded(lab, t, l_, ch, cw)

    def _native(self, rgb: np.ndarray, lab: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray] | None:
        """A crop at 0.75-1.4 of the native scale that surely contains one random target pixel."""
        cfg = self.cfg
        s = rng.uniform(*cfg.scale)
        size = (max(8, round(rgb.shape[1] * s)), max(8, round(rgb.shape[0] * s)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
        ch, cw = cfg.crop
        ys, xs = np.nonzero(lab == _TARGET)
        if ys.size < cfg.min_object_pixels:
            return None
        i = rng.integers(ys.size)
        top = int(np.clip(ys[i] - rng.integers(0, ch), 0, max(0, lab.shape[0] - ch)))
        left = int(np.clip(xs[i] - rng.integers(0, cw), 0, max(0, lab.shape[1] - cw)))
        return crop_padded(rgb, top, left, ch, cw), crop_padded(lab, top, left, ch, cw)

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, bool]]]:
        """Returns (rgb float32 [3, H, W] in [0, 1], mask float32 [1, H, W]: 1 object, 0 background,
        -1 ignore, clicks ``(y, x, positive)``, the first at the object's centre)."""
        cfg = self.cfg
        for _ in range(20):
            rgb, lab = self._object(rng)
            if rng.random() < cfg.paste_prob:
                rgb, lab = self._paste(rgb, lab, rng)
            if rng.random() < 0.5:
                rgb, lab = rgb[:, ::-1], lab[:, ::-1]
            if rng.random() < cfg.view_prob:
                rgb, lab = self._view(rgb, lab, rng)
            else:
                cropped = self._native(rgb, lab, rng)
                if cropped is None:
                    continue
                rgb, lab = cropped
            obj = lab == _TARGET
            if obj.sum() < cfg.min_object_pixels:
                continue
            img = rgb.astype(np.float32)
            if rng.random() < cfg.jitter_prob:  # brightness +-0.25, contrast -0.15..+0.4
                img = img * (1 + rng.uniform(-0.15, 0.4)) + 255 * rng.uniform(-0.25, 0.25) * 0.5
            if rng.random() < cfg.jitter_prob:  # RGB shift +-10
                img = img + rng.uniform(-10, 10, 3)
            img = np.clip(img, 0, 255) / 255.0
            ignore = lab == _IGNORE
            clicks = sample_initial_clicks(obj, rng, others=lab == _OTHER, ignore=ignore)
            mask = np.where(ignore, -1.0, obj.astype(np.float32))[None].astype(np.float32)
            return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32), mask, clicks
        raise RuntimeError("could not draw a training sample with a visible object in 20 tries")
