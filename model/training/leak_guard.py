"""Guard against evaluation images leaking into training: a perceptual hash of the decoded pixels.

The hash (pHash) is the sign pattern of the 8x8 lowest DCT frequencies (DC left out) of the
grayscale image shrunk to 32x32, against their median: 63 bits that survive re-encoding, resizing and
mild colour changes. Unrelated photos differ in about half of the bits, but two plain scenes (bright sky
over a darker ground) can come within a few bits, so a pair counts as the same picture only when the
hashes differ in at most ``max_distance`` bits *and* their 16x16 grayscale thumbnails correlate by at
least ``MIN_CORRELATION``. Mirrored evaluation images are checked too.

``python -m model.training.leak_guard`` checks every training set under ``--data-root`` against GrabCut,
Berkeley and DAVIS and exits 1 on any match.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from model.evaluation.datasets import DEFAULT_DATA_ROOT, IMAGE_EXTS, KNOWN_DATASETS

MAX_DISTANCE = 10
MIN_CORRELATION = 0.9


@dataclass(frozen=True)
class Fingerprint:
    """pHash and a normalised 16x16 thumbnail (zero mean, unit norm) of an image and of its mirror."""

    hash: int
    mirror_hash: int
    thumb: np.ndarray
    mirror_thumb: np.ndarray


def _thumb(gray: np.ndarray) -> np.ndarray:
    t = cv2.resize(gray, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).flatten()
    t -= t.mean()
    return t / max(float(np.linalg.norm(t)), 1e-6)


def perceptual_hash(gray: np.ndarray) -> int:
    """pHash of an HxW uint8 grayscale image as a 63-bit int."""
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()[1:]
    bits = low > np.median(low)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def fingerprint(path: str | os.PathLike) -> Fingerprint:
    """The fingerprint of an image file. Raises OSError when it cannot be decoded."""
    # A 1/2-size decode is enough for a 32x32 hash and much faster for JPEGs.
    gray = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_2)
    if gray is None:
        raise OSError(f"cannot read image {path}")
    mirror = np.ascontiguousarray(gray[:, ::-1])
    return Fingerprint(perceptual_hash(gray), perceptual_hash(mirror), _thumb(gray), _thumb(mirror))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances [len(a), len(b)] between uint64 hash arrays."""
    x = a[:, None] ^ b[None, :]
    bytes_ = x.view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(bytes_, axis=-1).sum(-1)


def find_matches(train: Iterable[str | os.PathLike], evaluation: Iterable[str | os.PathLike],
                 max_distance: int = MAX_DISTANCE, min_correlation: float = MIN_CORRELATION,
                 progress: bool = False) -> list[tuple[str, str, int, float]]:
    """Every (training image, evaluation image, hash distance, thumbnail correlation) that looks like the same
    picture."""
    train, evaluation = [str(p) for p in train], [str(p) for p in evaluation]
    tf = [fingerprint(p) for p in tqdm(train, desc="hash train", disable=not progress)]
    ef = [fingerprint(p) for p in tqdm(evaluation, desc="hash eval", disable=not progress)]
    if not tf or not ef:
        return []
    th = np.array([f.hash for f in tf], np.uint64)
    out = []
    for mirrored in (False, True):
        eh = np.array([f.mirror_hash if mirrored else f.hash for f in ef], np.uint64)
        for i, j in zip(*np.nonzero(_distances(th, eh) <= max_distance), strict=True):
            corr = float(tf[i].thumb @ (ef[j].mirror_thumb if mirrored else ef[j].thumb))
            if corr >= min_correlation:
                out.append((train[i], evaluation[j], int(_distances(th[i:i + 1], eh[j:j + 1])[0, 0]), corr))
    return out


def evaluation_images(data_root: str | os.PathLike = DEFAULT_DATA_ROOT) -> list[Path]:
    """Every image of GrabCut, Berkeley and DAVIS present under ``data_root``."""
    out: list[Path] = []
    for name, (image_dir, _, _) in KNOWN_DATASETS.items():
        folder = Path(data_root) / name / image_dir
        if folder.is_dir():
            out += sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    return out


def main(argv: list[str] | None = None) -> int:
    from model.training.data import TRAIN_SETS, build_index

    ap = argparse.ArgumentParser(prog="python -m model.training.leak_guard", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    ap.add_argument("--max-distance", type=int, default=MAX_DISTANCE)
    args = ap.parse_args(argv)
    index = build_index(args.data_root, list(TRAIN_SETS))
    train = [args.data_root / e.image for split in index.values() for e in split]
    matches = find_matches(train, evaluation_images(args.data_root), args.max_distance, progress=True)
    for t, e, d, c in matches:
        print(f"MATCH {t} ~ {e} (distance {d}, correlation {c:.3f})")
    print(f"{len(train)} training images, {len(matches)} matches")
    return 1 if matches else 0


if __name__ == "__main__":
    sys.exit(main())
