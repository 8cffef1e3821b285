"""The fit hook's use case measured: does the backend adapt to a new domain from N annotations?

Domain: frames of DAVIS-345 (``--domain davis``, default; not among the sets ``model.training.train`` trains on, which
refuses it) or WeizmannHorse (``--domain horse``; note that it *is* a training set of the default model).
DAVIS-345 names no sequences, so frames are grouped into approximate video sequences by the correlation of
32x18 thumbnails (> 0.7, linked transitively) and whole groups go to the held-out side: the held-out frames are
disjoint from the annotated ones and, as far as the grouping finds, come from other shots. With ``--split frame``
single frames are split instead (neighbouring frames of one shot may then fall on both sides).

What it does, end to end as in production:

1. serves the domain's images with a plain local HTTP server and starts the backend as its own process
   (``python -m backend --host 127.0.0.1 --port P``, ``MODEL_DIR`` in a temp folder, ``CHECKPOINT``,
   ``ALLOW_PRIVATE_URLS=true``, ``FIT_EVERY_N_SAMPLES=0``, ``FIT_STEPS`` etc. from the options);
2. measures NoC@85/90 and mIoU of the checkpoint on the held-out frames (in this process, with the serving
   predictor options and the evaluation protocol of ``model.evaluation.evaluate``);
3. POSTs ``--n`` ``ANNOTATION_CREATED`` webhooks exactly as Label Studio sends them (annotation, task and project
   rows, the ground-truth mask as brush RLE of ``backend.ls.rle.encode_mask``), then ``START_TRAINING``;
4. polls ``GET /fit`` until the job is promoted, rejected or failed, and reads its wall time;
5. evaluates the version the backend serves afterwards (and a rejected candidate, ``MODEL_DIR/fit/rejected.pth``)
   on the same held-out frames.

Prints one JSON line. A smoke test: ``python -m benchmarks.adapt --checkpoint X --n 4 --steps 2 --heldout 3
--eval-clicks 3 --fit-env FIT_MIN_HELDOUT=1 FIT_MIN_TRAIN=1`` (the gate's minimums lowered). The real run:
``python -m benchmarks.adapt --checkpoint X --n 10`` (and 25, 50).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from PIL import Image

from backend.learning.versions import read_pointer
from backend.ls.rle import encode_mask
from backend.settings import Settings, predictor_options
from model import FCFIPredictor, default_checkpoint_path, load_checkpoint
from model.protocol import click_curves, curve_figures

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = {"davis": ("DAVIS", "img", "gt"), "horse": ("WeizmannHorse", "images", "masks")}
PROJECT = 1


# -- the domain --------------------------------------------------------------------------------------------------------


def list_frames(root: Path, domain: str) -> list[tuple[str, str]]:
    """``(image path, mask path)`` relative to ``root``, paired by file stem, sorted."""
    folder, images, masks = DOMAINS[domain]
    mask_by_stem = {p.stem: p for p in (root / folder / masks).iterdir() if p.suffix.lower() == ".png"}
    return [(str(p.relative_to(root)), str(mask_by_stem[p.stem].relative_to(root)))
            for p in sorted((root / folder / images).iterdir())
            if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.stem in mask_by_stem]


def load_mask(path: Path) -> np.ndarray:
    """Foreground mask: every non-zero value (DAVIS: all object ids and void merged, as the standard protocol)."""
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > 0


def sequence_groups(root: Path, frames: list[tuple[str, str]], threshold: float = 0.7) -> list[list[int]]:
    """Frames grouped into approximate shots: thumbnail correlation above ``threshold``, linked transitively."""
    thumbs = []
    for image, _ in frames:
        with Image.open(root / image) as img:
            thumbs.append(np.asarray(img.convert("RGB").resize((32, 18)), np.float32).ravel())
    x = np.stack(thumbs)
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    corr = x @ x.T / x.shape[1]
    parent = list(range(len(frames)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(corr > threshold, 1)), strict=True):
        parent[find(int(i))] = find(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(frames)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _rank(key: str) -> bytes:
    return hashlib.sha256(f"adapt:{key}".encode()).digest()


def split_domain(root: Path, frames: list[tuple[str, str]], heldout: int, by_sequence: bool
                 ) -> tuple[list[int], list[int]]:
    """``(annotation pool, held-out frames)``, deterministic; whole groups go to the held-out side."""
    groups = sequence_groups(root, frames) if by_sequence else [[i] for i in range(len(frames))]
    groups.sort(key=lambda g: _rank(frames[min(g)][0]))
    held: list[int] = []
    rest: list[int] = []
    for group in groups:
        (held if len(held) < heldout else rest).extend(group)
    rest.sort(key=lambda i: _rank(frames[i][0]))
    return rest, sorted(held, key=lambda i: _rank(frames[i][0]))[:heldout]


# -- Label Studio's side -----------------------------------------------------------------------------------------------


def serve_folder(root: Path) -> ThreadingHTTPServer:
    """A plain HTTP file server for ``root`` on 127.0.0.1 (the images' origin)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def annotation_created(task_id: int, image_url: str, mask: np.ndarray, label_config: str) -> dict[str, Any]:
    """An ``ANNOTATION_CREATED`` body as Label Studio 1.23 sends it (rows trimmed to the fields it always has)."""
    h, w = mask.shape
    region = {"id": f"r{task_id}", "from_name": "tag", "to_name": "image", "type": "brushlabels", "origin": "manual",
              "original_width": w, "original_height": h, "image_rotation": 0,
              "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": ["Object"]}}
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 10_000 + task_id, "result": [region], "task": task_id, "project": PROJECT,
                       "was_cancelled": False, "ground_truth": False, "completed_by": 1, "lead_time": 30.0,
                       "created_at": "2026-11-23T10:05:00.000000Z", "updated_at": "2026-11-23T10:05:00.000000Z"},
        "task": {"id": task_id, "data": {"image": image_url}, "project": PROJECT, "meta": {}, "is_labeled": True,
                 "created_at": "2026-11-23T09:00:00.000000Z", "updated_at": "2026-11-23T10:05:00.000000Z"},
        "project": {"id": PROJECT, "title": "Adaptation benchmark", "label_config": label_config},
    }


# -- the backend -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_backend(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    """``python -m backend`` in its own process group (so its fit job can be stopped with it)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the backend exited with code {proc.returncode}")
        try:
            health = requests.get(url + "/health", timeout=2).json()
            if health.get("model_ready") or health.get("model_error"):
                if health.get("model_error"):
                    raise SystemExit(f"the backend cannot load the model: {health['model_error']}")
                return health
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the backend was not ready within {timeout:g} s")


def wait_job(url: str, job_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(url + "/fit", timeout=10).json()
        for job in [status["current"], status["queued"], *status["history"]]:
            if job and job["id"] == job_id and job["status"] in ("promoted", "rejected", "failed"):
                return job
        time.sleep(0.5)
    raise SystemExit(f"fit job {job_id} did not finish within {timeout:g} s")


# -- evaluation --------------------------------------------------------------------------------------------------------


def evaluate(checkpoint: Path, samples: list[tuple[np.ndarray, np.ndarray]], settings: Settings,
             n_clicks: int) -> dict[str, Any]:
    """NoC@85/90, NoF@90, IoU@1 and mIoU of a checkpoint with the serving predictor options (all clicks run)."""
    t0 = time.perf_counter()
    predictor = FCFIPredictor(load_checkpoint(checkpoint), **predictor_options(settings))
    curves = click_curves(predictor, [(rgb, gt.astype(np.int8)) for rgb, gt in samples], n_clicks)
    figures = {k: round(v, 4) for k, v in curve_figures(curves, n_clicks).items()}
    return {**figures, "seconds": round(time.perf_counter() - t0, 1)}


def evaluate_cached(checkpoint: Path, names: list[str], samples: list[tuple[np.ndarray, np.ndarray]],
                    settings: Settings, n_clicks: int) -> dict[str, Any]:
    """:func:`evaluate`, remembered under ~/.cache/fcfi-backend/adapt by checkpoint content, held-out frames and
    predictor options: the runs for N = 10, 25, 50 share one "before" (its ``seconds`` is the first run's)."""
    key = hashlib.sha256(checkpoint.read_bytes())
    key.update(json.dumps([names, n_clicks, predictor_options(settings)], sort_keys=True, default=str).encode())
    cache = Path.home() / ".cache" / "fcfi-backend" / "adapt" / f"before-{key.hexdigest()[:24]}.json"
    if cache.is_file():
        return {**json.loads(cache.read_text()), "cached": True}
    result = evaluate(checkpoint, samples, settings, n_clicks)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.adapt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None,
                    help="the serving checkpoint before adaptation (default: the shipped weights, if present)")
    ap.add_argument("--domain", choices=sorted(DOMAINS), default="davis")
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=10, help="annotations sent (10, 25, 50)")
    ap.add_argument("--heldout", type=int, default=30, help="held-out frames evaluated before and after")
    ap.add_argument("--split", choices=["sequence", "frame"], default="sequence",
                    help="hold out whole (approximate) shots, or single frames")
    ap.add_argument("--steps", type=int, default=None, help="FIT_STEPS (default: the backend's)")
    ap.add_argument("--batch-size", type=int, default=None, help="FIT_BATCH_SIZE (default: the backend's)")
    ap.add_argument("--lr", type=float, default=None, help="FIT_LR (default: the backend's)")
    ap.add_argument("--fit-env", nargs="*", default=[], metavar="NAME=VALUE",
                    help="more settings of the backend, e.g. FIT_MIN_HELDOUT=5")
    ap.add_argument("--eval-clicks", type=int, default=20, help="clicks per held-out frame, here and in the job")
    ap.add_argument("--fit-threads", type=int, default=1, help="FIT_THREADS of the job")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the held-out evaluation here")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job")
    ap.add_argument("--keep", action="store_true", help="keep the temp MODEL_DIR and backend log")
    args = ap.parse_args(argv)
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint_path()
    if not checkpoint.is_file():
        ap.error(f"no checkpoint at {checkpoint}: the default weights are not shipped yet, pass --checkpoint PATH")
    if args.n < 1 or args.heldout < 1 or (args.steps or 0) < 0 or args.eval_clicks < 1:
        ap.error("--n, --heldout and --eval-clicks must be >= 1 and --steps >= 0")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    root = args.data_root
    frames = list_frames(root, args.domain)
    pool, held = split_domain(root, frames, args.heldout, args.split == "sequence")
    if len(pool) < args.n:
        ap.error(f"only {len(pool)} frames left to annotate after holding out {len(held)}")
    annotate = pool[: args.n]

    def sample(i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = frames[i]
        with Image.open(root / image) as img:
            rgb = np.asarray(img.convert("RGB"))
        return rgb, load_mask(root / mask)

    work = Path(tempfile.mkdtemp(prefix="adapt-"))
    model_dir = work / "model"
    files = serve_folder(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MODEL_DIR=str(model_dir), CHECKPOINT=str(checkpoint.resolve()), ALLOW_PRIVATE_URLS="true",
               FIT_EVERY_N_SAMPLES="0", FIT_EVAL_CLICKS=str(args.eval_clicks), FIT_THREADS=str(args.fit_threads),
               TORCH_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    for name, value in (("FIT_STEPS", args.steps), ("FIT_BATCH_SIZE", args.batch_size), ("FIT_LR", args.lr)):
        if value is not None:
            env[name] = str(value)
    for item in args.fit_env:
        name, _, value = item.partition("=")
        env[name] = value
    settings = Settings.from_env()  # this process's predictor options = the backend's (same environment)
    proc = start_backend(env, port, work / "backend.log")
    try:
        wait_ready(url, proc, 300)
        held_samples = [sample(i) for i in held]
        before = evaluate_cached(checkpoint, [frames[i][0] for i in held], held_samples, settings, args.eval_clicks)

        label_config = (ROOT / "label_config.xml").read_text()
        hook_ms = []
        for i in annotate:
            _, mask = sample(i)
            body = annotation_created(i + 1, f"http://127.0.0.1:{files.server_port}/{frames[i][0]}", mask,
                                      label_config)
            t0 = time.perf_counter()
            r = requests.post(url + "/webhook", json=body, timeout=30)
            hook_ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200 or r.json().get("stored") != 1:
                raise SystemExit(f"webhook for frame {frames[i][0]}: {r.status_code} {r.text[:300]}")
        t0 = time.perf_counter()
        r = requests.post(url + "/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}, timeout=30)
        hook_ms.append((time.perf_counter() - t0) * 1000)
        if r.status_code not in (200, 422):  # 422: refused at once (the gate is still collecting samples)
            r.raise_for_status()
        job = wait_job(url, r.json()["job"]["id"], args.timeout)
        deadline = time.monotonic() + 60  # a promoted version is swapped in between requests, shortly after
        while True:
            serving = requests.post(url + "/setup", json={}, timeout=10).json()["model_version"]
            if job["status"] != "promoted" or serving == job["version"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)

        pointer = read_pointer(model_dir)
        after_path = model_dir / pointer["checkpoint"] if pointer else checkpoint
        result: dict[str, Any] = {
            "domain": DOMAINS[args.domain][0], "split": args.split, "n": args.n, "heldout": len(held),
            "eval_clicks": args.eval_clicks, "checkpoint": str(checkpoint),
            "fit_env": {k: env[k] for k in sorted(env) if k.startswith("FIT_")},
            "job": {k: job.get(k) for k in ("id", "status", "reason", "error", "version", "wall_s", "timings",
                                            "samples", "before", "after", "loss")},
            "gate": requests.get(url + "/fit", timeout=10).json()["gate"],
            "serving_after": serving,
            "heldout_before": before,
            "heldout_after": evaluate(after_path, held_samples, settings, args.eval_clicks),
            "webhook_ms": {"median": round(statistics.median(hook_ms), 1),
                           "p95": round(float(np.percentile(hook_ms, 95)), 1), "max": round(max(hook_ms), 1)},
        }
        if job["status"] == "rejected" and job.get("candidate"):
            result["heldout_candidate"] = evaluate(model_dir / job["candidate"], held_samples, settings,
                                                   args.eval_clicks)
        result["total_s"] = round(time.perf_counter() - t_start, 1)
        print(json.dumps(result), flush=True)
        return result
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the backend and a fit job still running in its group
        except ProcessLookupError:
            pass
        proc.wait(30)
        files.shutdown()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
