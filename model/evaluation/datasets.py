"""Evaluation datasets: GrabCut, Berkeley, DAVIS-345 and any ``images/`` + ``masks/`` folder.

Every loader yields :class:`Sample` objects ``(name, rgb, gt)``:

* ``rgb``: HxWx3 uint8, RGB order;
* ``gt``: HxW int8, ``1`` object, ``0`` background, ``-1`` ignore (excluded from IoU and from the
  clicker).

Mask conventions follow the official FCFI/RITM loaders (``GrabCutDataset``, ``BerkeleyDataset``, ``DavisDataset``):

* GrabCut and Berkeley (the Berkeley loader is the GrabCut one): channel 0 of the mask as
  ``cv2.imread`` reads it; ``128`` -> ignore, ``> 128`` -> object, anything else background.
* DAVIS: ``max`` over the 3 channels of ``cv2.imread(gt)`` ``> 0`` -> object; no ignore. For the
  palette PNGs this merges every DAVIS object id (and the void label 255) into one target.
* A generic folder (``--dataset PATH``): ``images/`` and ``masks/`` matched by file stem, 0/255
  masks. Read like GrabCut but over the max of the channels: ``128`` -> ignore, ``> 128`` -> object.

Samples are listed in sorted file-name order of the image folder; images without a mask are
skipped, as in the official loaders (which list the images and look the mask up by stem).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

#: name -> (image folder, mask folder, mask convention)
KNOWN_DATASETS: dict[str, tuple[str, str, str]] = {
    "GrabCut": ("data_GT", "boundary_GT", "grabcut"),
    "Berkeley": ("images", "masks", "grabcut"),
    "DAVIS": ("img", "gt", "davis"),
}

DEFAULT_DATA_ROOT = Path("..") / "shared" / "data"


@dataclass(frozen=True)
class Sample:
    """One evaluation instance.

    Attributes:
        name: the image's file stem (unique within a dataset).
        rgb: HxWx3 uint8 RGB image.
        gt: HxW int8 mask: 1 object, 0 background, -1 ignore.
    """

    name: str
    rgb: np.ndarray
    gt: np.ndarray


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (grayscale images are replicated to 3 channels)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def decode_mask(raw: np.ndarray, convention: str) -> np.ndarray:
    """Turn a mask as ``cv2.imread`` returns it (HxW or HxWxC uint8) into the HxW int8 gt.

    Args:
        raw: the mask array.
        convention: ``"grabcut"`` (channel 0: 128 ignore, >128 object), ``"davis"`` (max over
            channels > 0 object, no ignore) or ``"binary"`` (max over channels: 128 ignore,
            >128 object).
    Returns:
        HxW int8 in {-1, 0, 1}.
    """
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if convention == "grabcut":
        ch = raw[:, :, 0]
    elif convention in ("davis", "binary"):
        ch = raw.max(axis=2)
    else:
        raise ValueError(f"unknown mask convention {convention!r}")
    gt = np.zeros(ch.shape, np.int8)
    if convention == "davis":
        gt[ch > 0] = 1
        return gt
    gt[ch > 128] = 1
    gt[ch == 128] = -1
    return gt


def read_mask(path: str | os.PathLike, convention: str) -> np.ndarray:
    """Read a mask file with :func:`decode_mask` semantics. Returns HxW int8 in {-1, 0, 1}."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if convention == "binary" else cv2.IMREAD_COLOR)
    if raw is None:
        raise OSError(f"cannot read mask {path}")
    if raw.ndim == 3 and raw.shape[2] == 4:  # drop alpha of RGBA masks
        raw = raw[:, :, :3]
    if raw.dtype != np.uint8:
        raw = (raw > 0).astype(np.uint8) * 255 if raw.dtype == bool else np.clip(raw, 0, 255).astype(np.uint8)
    return decode_mask(raw, convention)


class EvalDataset:
    """A folder of images and masks paired by file stem.

    Args:
        root: the dataset folder.
        image_dir: image sub-folder name.
        mask_dir: mask sub-folder name.
        convention: mask decoding, see :func:`decode_mask`.
        name: display name (defaults to the folder name).
    """

    def __init__(self, root: str | os.PathLike, image_dir: str, mask_dir: str, convention: str,
                 name: str | None = None) -> None:
        self.root = Path(root)
        self.name = name or self.root.name
        self.convention = convention
        images = self.root / image_dir
        masks = self.root / mask_dir
        if not images.is_dir() or not masks.is_dir():
            raise FileNotFoundError(f"{self.root}: expected sub-folders {image_dir}/ and {mask_dir}/")
        by_stem = {}
        for p in sorted(masks.iterdir()):
            if p.suffix.lower() in IMAGE_EXTS:
                by_stem.setdefault(p.stem, p)
        self.pairs: list[tuple[str, Path, Path]] = []
        for p in sorted(images.iterdir()):
            if p.suffix.lower() in IMAGE_EXTS and p.stem in by_stem:
                self.pairs.append((p.stem, p, by_stem[p.stem]))
        if not self.pairs:
            raise FileNotFoundError(f"{self.root}: no image in {image_dir}/ has a mask of the same stem "
                                    f"in {mask_dir}/")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        name, image_path, mask_path = self.pairs[index]
        rgb = read_rgb(image_path)
        gt = read_mask(mask_path, self.convention)
        if gt.shape != rgb.shape[:2]:
            raise ValueError(f"{name}: mask {gt.shape} and image {rgb.shape[:2]} differ in size")
        return Sample(name, rgb, gt)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]


def load_dataset(name_or_path: str, data_root: str | os.PathLike = DEFAULT_DATA_ROOT) -> EvalDataset:
    """Open a dataset by name (``GrabCut``, ``Berkeley``, ``DAVIS``; case-insensitive) or by path.

    A name is looked up as ``data_root/<Name>``. Anything else is a folder holding ``images/`` and
    ``masks/`` (0/255 masks, ``binary`` convention).
    """
    for known, (image_dir, mask_dir, convention) in KNOWN_DATASETS.items():
        if name_or_path.lower() == known.lower():
            return EvalDataset(Path(data_root) / known, image_dir, mask_dir, convention, name=known)
    path = Path(name_or_path)
    if not path.is_dir():
        names = ", ".join(KNOWN_DATASETS)
        raise FileNotFoundError(f"{name_or_path!r} is neither a known dataset ({names}) nor a folder")
    return EvalDataset(path, "images", "masks", "binary", name=path.resolve().name)
