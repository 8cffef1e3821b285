"""Helpers shared by the test modules (no test module imports another): the synthetic scene, a backend on
loopback, Label Studio-shaped /predict bodies, and decoding of the answer."""

from __future__ import annotations

import io
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
import requests
from ls_stub import FakeLabelStudio
from PIL import Image
from werkzeug.serving import make_server

from backend.app import create_app
from backend.rle import decode_rle
from backend.settings import Settings

CONFIG = (Path(__file__).resolve().parents[1] / "label_config.xml").read_text()
W, H = 160, 120


def scene() -> tuple[bytes, np.ndarray]:
    """A GrabCut-like image: a bright ellipse on a dark textured background, and its mask."""
    rng = np.random.default_rng(0)
    rgb = (rng.normal(40, 8, (H, W, 3))).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    obj = ((yy - 60) / 30.0) ** 2 + ((xx - 80) / 40.0) ** 2 <= 1
    rgb[obj] = (210, 190, 60)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue(), obj


class Server:
    """A backend on 127.0.0.1 with an OS-chosen port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.http = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.app.config["worker"].wait_ready(120)

    def stop(self) -> None:
        self.http.shutdown()


def settings_for(checkpoint: Path, ls: FakeLabelStudio, **overrides) -> Settings:
    base = dict(checkpoint=str(checkpoint), label_studio_url=ls.url, label_studio_api_key=ls.legacy_token,
                model_dir=Path(tempfile.mkdtemp(prefix="model-dir-")),
                max_image_pixels=4_000_000, flip=False, target_size=160, max_size=200, torch_threads=1)
    base.update(overrides)
    return Settings(**base)


def keypoint(x: float, y: float, positive: bool = True, label: str = "Object") -> dict:
    return {"original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": 100 * x / W, "y": 100 * y / H, "width": 0.5, "keypointlabels": [label]},
            "is_positive": positive, "id": "k", "from_name": "tag2", "to_name": "image", "type": "keypointlabels"}


def body(points: list[dict], image: str = "/data/upload/1/scene.png", config: str = CONFIG) -> dict:
    return {"tasks": [{"id": 7, "data": {"image": image}}], "project": "3.1700000000", "label_config": config,
            "params": {"context": {"result": points}}}


def mask_of(response: requests.Response) -> np.ndarray:
    region = response.json()["results"][0]["result"][0]
    assert region["type"] == "brushlabels" and region["value"]["format"] == "rle"
    assert (region["original_width"], region["original_height"]) == (W, H)
    return decode_rle(region["value"]["rle"], region["original_height"], region["original_width"]) > 0




def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    """HxW bool disk."""
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_data_root(root: Path) -> None:
    """A tiny COCO_MVal-like and BSDS-like training tree, plus an evaluation set that must be refused."""
    rng = np.random.default_rng(0)
    for i in range(8):
        img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        mask = disk(96, 128, 48, 40 + 5 * i, 20).astype(np.uint8) * 255
        img[mask > 0] = (230, 40, 40)
        for folder, sub, data in (("COCO_MVal", "img", img), ("COCO_MVal", "gt", mask)):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / folder / sub / f"s{i}.{'jpg' if sub == 'img' else 'png'}"), data)
        labels = np.ones((96, 128), np.uint8)
        labels[:, 64:] = 2
        (root / "BSDS_regions" / "images").mkdir(parents=True, exist_ok=True)
        (root / "BSDS_regions" / "labels").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "BSDS_regions" / "images" / f"b{i}.jpg"), img)
        cv2.imwrite(str(root / "BSDS_regions" / "labels" / f"b{i}.png"), labels)
