"""Service configuration from environment variables, with documented defaults.

| variable | default | meaning |
|---|---|---|
| ``MODEL_DIR`` | ``./data/model`` | promoted checkpoints, the training store, job state |
| ``CHECKPOINT`` | shipped ``model/weights/lite0_fcfi.pth`` | the initial serving checkpoint |
| ``DEVICE`` | ``cpu`` | ``cpu`` or ``cuda`` (``cuda:N``) |
| ``LABEL_STUDIO_URL`` | unset | Label Studio base URL, e.g. ``http://localhost:8080`` (or ``LABEL_STUDIO_HOST``) |
| ``LABEL_STUDIO_API_KEY`` | unset | legacy token or personal access token (``LABEL_STUDIO_ACCESS_TOKEN`` also read) |
| ``LOCAL_FILES_ROOT`` | unset (off) | allow plain local paths under this folder |
| ``ALLOW_PRIVATE_URLS`` | ``false`` | fetch plain URLs on private / loopback addresses (other than Label Studio's) |
| ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` | unset (off) | basic auth on all routes but ``/health``, ``/webhook`` |
| ``MAX_IMAGE_PIXELS`` | ``50000000`` | larger images are refused (413) |
| ``MAX_IMAGE_BYTES`` | ``100000000`` | larger downloads are refused (413) |
| ``IMAGE_CACHE_ITEMS`` | ``16`` | decoded images kept (LRU) |
| ``FEEDBACK_CACHE_MB`` | ``256`` | memory for stored feedback states (LRU) |
| ``FEEDBACK_HOT_MB`` | ``128`` | memory for recent states kept decoded in process (skips decompression) |
| ``REDIS_URL`` | unset (in-process store) | e.g. ``redis://redis:6379/0``: shares feedback, fit jobs, versions |
| ``REDIS_PREFIX`` | ``fcfi:`` | namespace of this service's Redis keys (fit job queue: ``fcfi-fit``) |
| ``FEEDBACK_TTL_S`` | ``3600`` | seconds a feedback state lives in Redis after its click |
| ``MAX_CLICKS`` | ``200`` | more clicks in one request are refused (413) |
| ``QUEUE_SIZE`` | ``32`` | waiting requests before the service answers 503 |
| ``REQUEST_TIMEOUT`` | ``60`` | seconds a request may wait for the model |
| ``ZOOM_IN`` / ``FLIP`` | ``true`` / ``true`` | predictor settings |
| ``TARGET_SIZE`` / ``EXPANSION_RATIO`` / ``MAX_SIZE`` | ``480`` / ``3.0`` / ``800`` | predictor: px, ratio, px |
| ``TORCH_THREADS`` | torch's default | CPU threads of the inference worker |
| ``MODEL_VERSION`` | from the checkpoint | version string reported to Label Studio |
| ``LOG_LEVEL`` | ``INFO`` | logging level |
| ``FIT_EVERY_N_SAMPLES`` | ``25`` | fine-tune after this many new stored samples; ``0``: only on ``START_TRAINING`` |
| ``FIT_STEPS`` / ``FIT_BATCH_SIZE`` | ``60`` / ``4`` | optimizer steps and crops per step of one job |
| ``FIT_LR`` | ``0.0002`` | Adam learning rate of the decoder/FCFI layers (backbone: x0.1) |
| ``FIT_CROP`` | ``320`` | training images are scaled to this long side and cropped to this square (px) |
| ``FIT_FREEZE_BN`` | ``true`` | keep BatchNorm statistics of the serving model while fine-tuning (small batches) |
| ``FIT_EVAL_CLICKS`` | ``20`` | simulated clicks per held-out sample in the before/after NoC evaluation |
| ``FIT_MAX_VAL_SAMPLES`` / ``FIT_MAX_TRAIN_SAMPLES`` | ``20`` / ``500`` | newest samples a job evaluates / trains on |
| ``FIT_THREADS`` | ``1`` | torch CPU threads of the job process |
| ``FIT_NICE`` | ``10`` | niceness added to the job process, so serving keeps priority |
| ``FIT_DEVICE`` | ``DEVICE`` | device of the job process |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def _str(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@dataclass
class Settings:
    model_dir: Path = Path("./data/model")
    checkpoint: str | None = None
    device: str = "cpu"
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    local_files_root: Path | None = None
    allow_private_urls: bool = False
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    max_image_pixels: int = 50_000_000
    max_image_bytes: int = 100_000_000
    image_cache_items: int = 16
    feedback_cache_mb: int = 256
    feedback_hot_mb: int = 128
    redis_url: str | None = None
    redis_prefix: str = "fcfi:"
    feedback_ttl_s: int = 3600
    max_clicks: int = 200
    queue_size: int = 32
    request_timeout: float = 60.0
    zoom_in: bool = True
    flip: bool = True
    target_size: int = 480
    expansion_ratio: float = 3.0
    max_size: int = 800
    torch_threads: int | None = None
    model_version: str | None = None
    log_level: str = "INFO"
    fit_every_n_samples: int = 25
    fit_steps: int = 60
    fit_batch_size: int = 4
    fit_lr: float = 2e-4
    fit_crop: int = 320
    fit_freeze_bn: bool = True
    fit_eval_clicks: int = 20
    fit_max_val_samples: int = 20
    fit_max_train_samples: int = 500
    fit_threads: int = 1
    fit_nice: int = 10
    fit_device: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        root = _str("LOCAL_FILES_ROOT")
        threads = _str("TORCH_THREADS")
        return cls(
            model_dir=Path(_str("MODEL_DIR") or "./data/model"),
            checkpoint=_str("CHECKPOINT"),
            device=_str("DEVICE") or "cpu",
            label_studio_url=(_str("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST") or "").rstrip("/") or None,
            label_studio_api_key=_str("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"),
            local_files_root=Path(root) if root else None,
            allow_private_urls=_bool("ALLOW_PRIVATE_URLS", False),
            basic_auth_user=_str("BASIC_AUTH_USER"),
            basic_auth_pass=_str("BASIC_AUTH_PASS"),
            max_image_pixels=_int("MAX_IMAGE_PIXELS", 50_000_000),
            max_image_bytes=_int("MAX_IMAGE_BYTES", 100_000_000),
            image_cache_items=_int("IMAGE_CACHE_ITEMS", 16),
            feedback_cache_mb=_int("FEEDBACK_CACHE_MB", 256),
            feedback_hot_mb=_int("FEEDBACK_HOT_MB", 128),
            redis_url=_str("REDIS_URL"),
            redis_prefix=os.environ.get("REDIS_PREFIX", "fcfi:"),
            feedback_ttl_s=_int("FEEDBACK_TTL_S", 3600),
            max_clicks=_int("MAX_CLICKS", 200),
            queue_size=_int("QUEUE_SIZE", 32),
            request_timeout=_float("REQUEST_TIMEOUT", 60.0),
            zoom_in=_bool("ZOOM_IN", True),
            flip=_bool("FLIP", True),
            target_size=_int("TARGET_SIZE", 480),
            expansion_ratio=_float("EXPANSION_RATIO", 3.0),
            max_size=_int("MAX_SIZE", 800),
            torch_threads=int(threads) if threads else None,
            model_version=_str("MODEL_VERSION"),
            log_level=_str("LOG_LEVEL") or "INFO",
            fit_every_n_samples=_int("FIT_EVERY_N_SAMPLES", 25),
            fit_steps=_int("FIT_STEPS", 60),
            fit_batch_size=_int("FIT_BATCH_SIZE", 4),
            fit_lr=_float("FIT_LR", 2e-4),
            fit_crop=_int("FIT_CROP", 320),
            fit_freeze_bn=_bool("FIT_FREEZE_BN", True),
            fit_eval_clicks=_int("FIT_EVAL_CLICKS", 20),
            fit_max_val_samples=_int("FIT_MAX_VAL_SAMPLES", 20),
            fit_max_train_samples=_int("FIT_MAX_TRAIN_SAMPLES", 500),
            fit_threads=_int("FIT_THREADS", 1),
            fit_nice=_int("FIT_NICE", 10),
            fit_device=_str("FIT_DEVICE"),
        )
