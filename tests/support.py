"""Helpers shared by the test modules (no test module imports another): the synthetic scene, a backend on
loopback, Label Studio-shaped /predict bodies, and decoding of the answer."""

from __future__ import annotations

import io
import tempfile
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests
from ls_stub import FakeLabelStudio
from PIL import Image
from werkzeug.serving import make_server

from backend.app import create_app
from backend.learning.store import split_for_task
from backend.ls.rle import decode_rle, encode_alpha, encode_mask
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


# -- Label Studio webhook payloads -------------------------------------------------------------------------------

LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Object" background="#FF0000"/><Label value="Horse" background="#00FF00"/>
  </BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="Object" smart="true"/><Label value="Horse" smart="true"/>
  </KeyPointLabels>
</View>"""

IMAGE_URL = "/data/upload/3/4f2a9c1e-horse.jpg"
PROJECT_ID, TASK_ID, ANNOTATION_ID = 3, 7, 11


def disc(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """``(height, width)`` bool disc."""
    yy, xx = np.ogrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def brush_result(mask: np.ndarray | None = None, label: str = "Object", region_id: str = "r1",
                 *, alpha: np.ndarray | None = None, to_name: str = "image") -> dict[str, Any]:
    """One ``brushlabels`` result item as the editor serialises it (mask as 0/255, or a soft alpha map)."""
    source = alpha if alpha is not None else mask
    height, width = source.shape
    rle = encode_alpha(alpha) if alpha is not None else encode_mask(mask)
    return {
        "id": region_id, "from_name": "tag", "to_name": to_name, "type": "brushlabels", "origin": "manual",
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"format": "rle", "rle": rle, "brushlabels": [label]},
    }


def keypoint_result(region_id: str = "kp1") -> dict[str, Any]:
    return {
        "id": region_id, "from_name": "tag2", "to_name": "image", "type": "keypointlabels", "origin": "manual",
        "original_width": 64, "original_height": 48, "image_rotation": 0, "is_positive": True,
        "value": {"x": 50.0, "y": 50.0, "width": 0.5, "keypointlabels": ["Object"]},
    }


def annotation_body(results: list[Any], action: str = "ANNOTATION_CREATED", *, annotation_id: int = ANNOTATION_ID,
                    task_id: int = TASK_ID, project_id: int = PROJECT_ID, was_cancelled: bool = False,
                    label_config: str | None = LABEL_CONFIG, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A full ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` body (annotation, task and project rows)."""
    project: dict[str, Any] = {
        "id": project_id, "title": "Horses", "description": "", "expert_instruction": "", "show_instruction": False,
        "color": "#FFFFFF", "maximum_annotations": 1, "is_published": False, "model_version": "", "is_draft": False,
        "created_by": 1, "created_at": "2026-11-23T10:00:00.000000Z", "min_annotations_to_start_training": 0,
        "task_number": 3, "finished_task_number": 1, "total_annotations_number": 1, "skipped_annotations_number": 0,
        "sampling": "Sequential sampling", "show_skip_button": True, "organization": 1,
    }
    if label_config is not None:
        project["label_config"] = label_config
    return {
        "action": action,
        "annotation": {
            "id": annotation_id, "result": results, "created_username": " admin@example.com, 1",
            "created_ago": "0 minutes", "completed_by": 1, "was_cancelled": was_cancelled, "ground_truth": False,
            "created_at": "2026-11-23T10:05:00.000000Z", "updated_at": "2026-11-23T10:05:00.000000Z",
            "draft_created_at": None, "lead_time": 12.5, "import_id": None, "last_action": None, "bulk_created": False,
            "task": task_id, "project": project_id, "updated_by": 1, "parent_prediction": None,
            "parent_annotation": None, "last_created_by": None, "result_count": len(results), "unique_id": "c0ffee",
        },
        "task": {
            "id": task_id, "data": data if data is not None else {"image": IMAGE_URL}, "meta": {},
            "created_at": "2026-11-23T09:00:00.000000Z", "updated_at": "2026-11-23T10:05:00.000000Z",
            "is_labeled": True, "overlap": 1, "inner_id": 1, "total_annotations": 1, "cancelled_annotations": 0,
            "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None,
            "project": project_id, "updated_by": 1, "file_upload": 5, "comment_authors": [],
        },
        "project": project,
    }


def delete_body(*annotation_ids: int) -> dict[str, Any]:
    return {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": i} for i in annotation_ids],
            "project": {"id": PROJECT_ID, "label_config": LABEL_CONFIG}}


# -- the fit tests' tasks ---------------------------------------------------------------------------------------------

FIT_H, FIT_W = 64, 80  # the fit tests' images
FIT_PROJECT = 5
FIT_TRAIN_TASKS = [t for t in range(1, 200) if split_for_task(t) == "train"][:3]
FIT_VAL_TASKS = [t for t in range(1, 200) if split_for_task(t) == "val"][:2]
FIT_BASE = "tiny-1"


def task_scene(task: int) -> tuple[np.ndarray, np.ndarray]:
    """A coloured disk (radius 11) on a plain noisy background, different per task, and its mask."""
    rng = np.random.default_rng(task)
    bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    cy, cx = rng.uniform(13, FIT_H - 13), rng.uniform(13, FIT_W - 13)
    yy, xx = np.mgrid[:FIT_H, :FIT_W]
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 11**2
    rgb = np.where(disk[..., None], fg, bg) + rng.normal(0, 4, (FIT_H, FIT_W, 3))
    return rgb.clip(0, 255).astype(np.uint8), disk


def fit_image_path(task: int) -> str:
    return f"/data/upload/{FIT_PROJECT}/task-{task}.png"


def fit_keypoint(x: float, y: float, positive: bool = True) -> dict[str, Any]:
    return {"original_width": FIT_W, "original_height": FIT_H, "image_rotation": 0, "is_positive": positive,
            "value": {"x": 100 * x / FIT_W, "y": 100 * y / FIT_H, "width": 0.5, "keypointlabels": ["Object"]},
            "id": "k", "from_name": "tag2", "to_name": "image", "type": "keypointlabels"}
