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
| ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` | unset (off) | basic auth on every route but ``/health`` |
| ``WEBHOOK_SECRET`` | unset | ``/webhook`` requires header ``X-Webhook-Secret: <secret>`` (or the basic auth) |
| ``WEBHOOK_MAX_DELETE`` | ``100`` | ``ANNOTATIONS_DELETED`` events naming more annotations are refused (413) |
| ``MAX_REQUEST_MB`` | ``32`` | larger request bodies are refused (413) before they are read |
| ``MAX_INTERACTIVE_TASKS`` | ``1`` | tasks per ``/predict`` request that carries clicks (Label Studio sends one) |
| ``MAX_IMAGE_PIXELS`` | ``50000000`` | larger images are refused (413) |
| ``MAX_IMAGE_BYTES`` | ``100000000`` | larger downloads are refused (413) |
| ``IMAGE_CACHE_ITEMS`` | ``16`` | decoded images kept (LRU) |
| ``IMAGE_CACHE_MB`` | ``512`` | ... and at most this much memory of decoded pixels |
| ``FEEDBACK_CACHE_MB`` | ``256`` | memory for stored feedback states (LRU) |
| ``FEEDBACK_HOT_MB`` | ``128`` | memory for recent states kept decoded in process (skips decompression) |
| ``REDIS_URL`` | unset (in-process store) | e.g. ``redis://redis:6379/0``: shares feedback, fit jobs, versions |
| ``REDIS_PREFIX`` | ``fcfi:`` | namespace of this service's Redis keys (fit job queue: ``fcfi-fit``) |
| ``FEEDBACK_TTL_S`` | ``3600`` | seconds a feedback state lives in Redis after its click |
| ``MAX_CLICKS`` | ``200`` | more clicks in one request are refused (413) |
| ``QUEUE_SIZE`` | ``32`` | waiting requests before the service answers 503 |
| ``REQUEST_TIMEOUT`` | ``60`` | seconds a request may wait for the model (then its job is dropped unrun) |
| ``MAX_QUEUE_WAIT_S`` | ``5`` | clicks are shed (503, ``Retry-After``) when the queue ahead would take longer |
| ``ZOOM_IN`` / ``FLIP`` | ``true`` / ``true`` | predictor settings |
| ``TARGET_SIZE`` / ``EXPANSION_RATIO`` / ``MAX_SIZE`` | ``480`` / ``3.0`` / ``480`` | predictor: px, ratio, px |
| ``CLICKED_PARTS_ONLY`` | ``true`` | answer only the mask's parts that hold a positive click (``false``: all parts) |
| ``LOCAL_MERGE`` | ``false`` | a corrective click changes the mask only where its change reaches the click |
| ``CLICK_GUARANTEE`` | ``1`` | radius (px) of each click's disk held on the click's side in the answer (-1: off) |
| ``RUNTIME`` | ``openvino`` | CPU runtime of the network: ``openvino``, ``onnxruntime`` or ``torch`` (see below) |
| ``TORCH_THREADS`` | adaptive | CPU threads of a click; unset: the cores other processes leave free (see below) |
| ``MODEL_VERSION`` | from the checkpoint | version string reported to Label Studio |
| ``LOG_LEVEL`` | ``INFO`` | logging level |
| ``FIT_EVERY_N_SAMPLES`` | ``25`` | fine-tune after this many new stored samples; ``0``: only on ``START_TRAINING`` |
| ``FIT_STEPS`` / ``FIT_BATCH_SIZE`` | ``150`` / ``4`` | optimizer steps and crops per step of one job |
| ``FIT_LR`` | ``0.001`` | peak Adam learning rate of the decoder/FCFI layers (backbone: x0.1), cosine decay |
| ``FIT_PARTS`` | ``head`` | ``head``: the ImageNet backbone stays as it is; ``all``: it trains too |
| ``FIT_CROP`` / ``FIT_IMAGE_SIDE`` | ``320`` / ``320`` | training crop side; long image side (px) |
| ``FIT_FREEZE_BN`` | ``true`` | keep BatchNorm statistics of the serving model while fine-tuning (small batches) |
| ``FIT_EMA`` | ``0`` | EMA decay of the fine-tuned weights (``0``: the last weights) |
| ``FIT_EVAL_CLICKS`` | ``20`` | simulated clicks per held-out sample in the before/after NoC evaluation |
| ``FIT_MIN_HELDOUT`` / ``FIT_MIN_TRAIN`` | ``10`` / ``10`` | samples the gate needs before a job may run |
| ``FIT_GATE`` / ``FIT_GATE_ALPHA`` | ``paired`` / ``0.05`` | promotion rule (``backend/learning/gate.py``) |
| ``FIT_MAX_VAL_SAMPLES`` / ``FIT_MAX_TRAIN_SAMPLES`` | ``30`` / ``500`` | newest samples a job evaluates / trains on |
| ``FIT_THREADS`` | ``1`` | torch CPU threads of the job process |
| ``FIT_NICE`` | ``10`` | niceness added to the job process, so serving keeps priority |
| ``FIT_DEVICE`` | ``DEVICE`` | device of the job process |
| ``FIT_KEEP_VERSIONS`` | ``5`` | newest promoted versions whose files are kept in ``MODEL_DIR/versions`` |

``TORCH_THREADS`` unset: before each click the worker measures how many cores other processes used since the last
one and runs on the rest, between 1 and all cores (``backend/serve/cpu_share.py``; on a shared 2-core machine a
click on both cores took 3x longer than on one). A number fixes the count.

``RUNTIME``: a missing package falls back to ``torch`` (PyTorch eager) with a log line; CUDA always runs ``torch``.

Each default is written once, in the field below; ``Settings.from_env`` reads the variables the field names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from model.predictor import CLICK_GUARANTEE, CLICKED_PARTS_ONLY, EXPANSION_RATIO, LOCAL_MERGE, MAX_SIZE, TARGET_SIZE
from model.training import PARTS, FineTuneConfig

GATES = ("paired", "always")  # FIT_GATE's values (backend.learning.gate applies them)
_RECIPE = FineTuneConfig()  # the fit job's recipe defaults (model.training.finetune) are the FIT_* defaults


def _env(default: Any, *names: str, empty_ok: bool = False) -> Any:
    """A setting read from the first of ``names`` that is set (an empty value counts as unset unless
    ``empty_ok``), else ``default``."""
    return field(default=default, metadata={"env": names, "empty_ok": empty_ok})


def _parse(kind: str, raw: str) -> Any:
    base = kind.replace(" | None", "")
    if base == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if base == "int":
        return int(raw)
    if base == "float":
        return float(raw)
    if base == "Path":
        return Path(raw)
    return raw


@dataclass
class Settings:
    model_dir: Path = _env(Path("./data/model"), "MODEL_DIR")
    checkpoint: str | None = _env(None, "CHECKPOINT")
    device: str = _env("cpu", "DEVICE")
    label_studio_url: str | None = _env(None, "LABEL_STUDIO_URL", "LABEL_STUDIO_HOST")
    label_studio_api_key: str | None = _env(None, "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN")
    local_files_root: Path | None = _env(None, "LOCAL_FILES_ROOT")
    allow_private_urls: bool = _env(False, "ALLOW_PRIVATE_URLS")
    basic_auth_user: str | None = _env(None, "BASIC_AUTH_USER")
    basic_auth_pass: str | None = _env(None, "BASIC_AUTH_PASS")
    webhook_secret: str | None = _env(None, "WEBHOOK_SECRET")
    webhook_max_delete: int = _env(100, "WEBHOOK_MAX_DELETE")
    max_request_mb: int = _env(32, "MAX_REQUEST_MB")
    max_interactive_tasks: int = _env(1, "MAX_INTERACTIVE_TASKS")
    max_image_pixels: int = _env(50_000_000, "MAX_IMAGE_PIXELS")
    max_image_bytes: int = _env(100_000_000, "MAX_IMAGE_BYTES")
    image_cache_items: int = _env(16, "IMAGE_CACHE_ITEMS")
    image_cache_mb: int = _env(512, "IMAGE_CACHE_MB")
    feedback_cache_mb: int = _env(256, "FEEDBACK_CACHE_MB")
    feedback_hot_mb: int = _env(128, "FEEDBACK_HOT_MB")
    redis_url: str | None = _env(None, "REDIS_URL")
    redis_prefix: str = _env("fcfi:", "REDIS_PREFIX", empty_ok=True)
    feedback_ttl_s: int = _env(3600, "FEEDBACK_TTL_S")
    max_clicks: int = _env(200, "MAX_CLICKS")
    queue_size: int = _env(32, "QUEUE_SIZE")
    request_timeout: float = _env(60.0, "REQUEST_TIMEOUT")
    max_queue_wait_s: float = _env(5.0, "MAX_QUEUE_WAIT_S")
    zoom_in: bool = _env(True, "ZOOM_IN")
    flip: bool = _env(True, "FLIP")
    target_size: int = _env(TARGET_SIZE, "TARGET_SIZE")
    expansion_ratio: float = _env(EXPANSION_RATIO, "EXPANSION_RATIO")
    max_size: int = _env(MAX_SIZE, "MAX_SIZE")
    clicked_parts_only: bool = _env(CLICKED_PARTS_ONLY, "CLICKED_PARTS_ONLY")
    local_merge: bool = _env(LOCAL_MERGE, "LOCAL_MERGE")
    click_guarantee: int = _env(CLICK_GUARANTEE, "CLICK_GUARANTEE")
    runtime: str = _env("openvino", "RUNTIME")
    torch_threads: int | None = _env(None, "TORCH_THREADS")
    model_version: str | None = _env(None, "MODEL_VERSION")
    log_level: str = _env("INFO", "LOG_LEVEL")
    fit_every_n_samples: int = _env(25, "FIT_EVERY_N_SAMPLES")
    fit_steps: int = _env(_RECIPE.steps, "FIT_STEPS")
    fit_batch_size: int = _env(_RECIPE.batch_size, "FIT_BATCH_SIZE")
    fit_lr: float = _env(_RECIPE.lr, "FIT_LR")
    fit_crop: int = _env(_RECIPE.crop, "FIT_CROP")
    fit_image_side: int = _env(_RECIPE.image_side, "FIT_IMAGE_SIDE")
    fit_parts: str = _env(_RECIPE.parts, "FIT_PARTS")
    fit_freeze_bn: bool = _env(_RECIPE.freeze_bn, "FIT_FREEZE_BN")
    fit_ema: float = _env(_RECIPE.ema, "FIT_EMA")
    fit_eval_clicks: int = _env(20, "FIT_EVAL_CLICKS")
    fit_min_heldout: int = _env(10, "FIT_MIN_HELDOUT")
    fit_min_train: int = _env(10, "FIT_MIN_TRAIN")
    fit_gate: str = _env("paired", "FIT_GATE")
    fit_gate_alpha: float = _env(0.05, "FIT_GATE_ALPHA")
    fit_max_val_samples: int = _env(30, "FIT_MAX_VAL_SAMPLES")
    fit_max_train_samples: int = _env(500, "FIT_MAX_TRAIN_SAMPLES")
    fit_threads: int = _env(1, "FIT_THREADS")
    fit_nice: int = _env(10, "FIT_NICE")
    fit_device: str | None = _env(None, "FIT_DEVICE")
    fit_keep_versions: int = _env(5, "FIT_KEEP_VERSIONS")

    def __post_init__(self) -> None:
        from model.runtime import RUNTIMES

        if self.runtime not in RUNTIMES:
            raise ValueError(f"RUNTIME must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.fit_gate not in GATES:
            raise ValueError(f"FIT_GATE must be one of {', '.join(GATES)}, got {self.fit_gate!r}")
        if self.fit_parts not in PARTS:
            raise ValueError(f"FIT_PARTS must be one of {', '.join(PARTS)}, got {self.fit_parts!r}")
        if self.label_studio_url is not None:
            self.label_studio_url = self.label_studio_url.rstrip("/") or None

    @classmethod
    def from_env(cls) -> Settings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            for name in f.metadata["env"]:
                raw = os.environ.get(name)
                if raw is not None and (raw != "" or f.metadata["empty_ok"]):
                    values[f.name] = _parse(str(f.type), raw)
                    break
        return cls(**values)


def settings_to_json(settings: Settings) -> str:
    """The app's settings as JSON (paths made absolute, so the job process resolves them the same way)."""
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, Path):
            value = str(value.resolve())
        out[f.name] = value
    if out.get("checkpoint") not in (None, "", "default"):
        out["checkpoint"] = str(Path(out["checkpoint"]).resolve())
    return json.dumps(out, default=str)


def settings_from_json(text: str) -> Settings:
    """Inverse of :func:`settings_to_json`; unknown keys (another code version) are ignored."""
    raw = json.loads(text)
    hints = typing.get_type_hints(Settings)
    known = {f.name for f in dataclasses.fields(Settings)}
    values = {}
    for name, value in raw.items():
        if name not in known:
            continue
        if value is not None and Path in typing.get_args(hints[name]) + (hints[name],):
            value = Path(value)
        values[name] = value
    return Settings(**values)


def predictor_options(settings: Settings) -> dict[str, Any]:
    """The serving predictor's options (the inference worker and the job's evaluation use the same)."""
    return dict(zoom_in=settings.zoom_in, flip=settings.flip, target_size=settings.target_size,
                expansion_ratio=settings.expansion_ratio, max_size=settings.max_size, runtime=settings.runtime,
                clicked_parts_only=settings.clicked_parts_only, local_merge=settings.local_merge,
                click_guarantee=settings.click_guarantee)
