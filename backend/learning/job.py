"""The fit job: ``python -m backend.learning.job --job-id N [--lock-fd FD]``, or the RQ job :func:`run_queued`.

Started by :class:`backend.learning.runners.ProcessRunner` for the app's :class:`backend.learning.manager.FitManager`
(which queues the job in ``MODEL_DIR/fit/state.json``; the runner takes the job lock and passes it on as
``--lock-fd``, and passes the app's settings in ``FIT_SETTINGS_JSON``). Run by hand it reads the settings from the
environment and takes the lock itself (exit code 3 while another job runs).
With ``REDIS_URL`` set the app queues the job through RQ instead (:mod:`backend.learning.queue`) and
``python -m backend.learning.worker`` runs :func:`run_queued`, which waits for the same lock, runs the same
:class:`FitJob` with the worker's settings (its environment) and publishes the serving version for the replicas.
Importing this module imports neither ``redis`` nor ``rq`` (only :func:`run_queued` does, when it runs).

What it does, writing each phase into the job's entry of the state (``GET /fit``):

1. **loading**: the serving network (:func:`backend.learning.versions.load_serving`, i.e. the promoted version or
   the base), the stored samples (read-only) with their images (:func:`backend.images.loader.image_loader`, the app's
   settings: the images are fetched here, never on the webhook's request path) and masks. Held-out samples are whole
   tasks (:func:`backend.learning.gate.choose_samples`); with fewer than ``FIT_MIN_HELDOUT`` held-out or
   ``FIT_MIN_TRAIN`` training samples the job is rejected with what is missing.
2. **eval_before**: per-sample NoC@85/90 of the serving network on the held-out samples, with the evaluation
   protocol (:func:`model.protocol.click_curves`, ``FIT_EVAL_CLICKS`` clicks) and the serving predictor options.
3. **training**: the fine-tuning recipe (:func:`model.training.finetune.fine_tune`, ``FIT_*`` settings) on the training
   samples, with the training step of ``model.training.train``.
4. **eval_after**: the same evaluation of the fine-tuned network.
5. **promoted** (a real improvement in the paired comparison, :func:`backend.learning.gate.decide`): checkpoint
   ``MODEL_DIR/versions/<base>-vN.pth``, then the pointer ``MODEL_DIR/current.json`` (both atomic), which the app
   swaps in; or **rejected** (the candidate is kept as ``MODEL_DIR/fit/rejected.pth``); or **failed** with the error.

CPU: ``FIT_THREADS`` torch threads (default 1) and ``os.nice(FIT_NICE)``, so serving keeps priority.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from backend.images.errors import ImageError
from backend.images.loader import image_loader
from backend.learning.gate import Rejected, choose_samples, decide
from backend.learning.state import FIT_DIR, JOB_LOCK, REJECTED, SETTINGS_ENV, FitState, describe, now, try_lock
from backend.learning.store import SampleRow, StoreError, TrainingStore
from backend.learning.versions import (
    VERSIONS_DIR,
    commit_promotion,
    load_serving,
    next_version,
    read_pointer,
    save_checkpoint_atomic,
    version_file_name,
)
from backend.settings import Settings, predictor_options, settings_from_json
from model import FCFIPredictor
from model.metrics import noc
from model.protocol import click_curves, curve_figures
from model.training import FineTuneConfig, TrainImage, fine_tune, min_object_pixels, training_image

log = logging.getLogger("backend.learning.job")

PROGRESS_EVERY_S = 0.5


def recipe(settings: Settings) -> FineTuneConfig:
    """The fine-tuning recipe of the ``FIT_*`` settings (the rest are
    :class:`model.training.finetune.FineTuneConfig`'s)."""
    return FineTuneConfig(steps=settings.fit_steps, lr=settings.fit_lr, batch_size=max(1, settings.fit_batch_size),
                          crop=settings.fit_crop, image_side=settings.fit_image_side, parts=settings.fit_parts,
                          freeze_bn=settings.fit_freeze_bn, ema=settings.fit_ema)


class FitJob:
    """One fine-tuning job (see the module docstring). :meth:`run` returns the job's final fields."""

    def __init__(self, settings: Settings, job_id: int, state: FitState, expected_base: str | None = None) -> None:
        self.s = settings
        self.job_id = job_id
        self.state = state
        self.expected_base = expected_base
        self.model_dir = Path(settings.model_dir)
        self.device = torch.device(settings.fit_device or settings.device)
        self._last_progress = 0.0
        self._phase = ""
        self.timings: dict[str, float] = {}

    def progress(self, phase: str, step: int, total: int, force: bool = False) -> None:
        """Record progress in the state (at most every 0.5 s unless ``force``)."""
        t = time.monotonic()
        if phase != self._phase:
            log.info("phase %s", phase)
            self._phase, force = phase, True
        if force or t - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = t
            self.state.update_job(self.job_id, progress={"phase": phase, "step": step, "total": total})

    # -- data ------------------------------------------------------------------------------------------------------

    def load_samples(self, store: TrainingStore, rows: list[SampleRow], phase: str,
                     skipped: list[str]) -> list[tuple[SampleRow, np.ndarray, np.ndarray]]:
        """``(row, rgb, mask)`` of every row whose image and mask load; the others are described in ``skipped``."""
        loader = image_loader(self.s, cache_items=4)  # rows of one image are consecutive
        out = []
        for i, row in enumerate(rows):
            self.progress(phase, i, len(rows))
            try:
                rgb = loader.load(row.image_url, task_id=row.task_id, project_id=row.project_id).rgb
                mask = store.load_mask(row)
            except (ImageError, StoreError) as exc:
                skipped.append(f"sample {row.id}: {exc}")
                continue
            h, w = rgb.shape[:2]
            if mask.shape != (h, w):  # Label Studio's natural size should match the decoded image; follow the image
                mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
                if not mask.any():
                    skipped.append(f"sample {row.id}: mask is empty at the image's size")
                    continue
            out.append((row, rgb, mask))
        return out

    def training_images(self, samples: list[tuple[SampleRow, np.ndarray, np.ndarray]],
                        skipped: list[str]) -> list[TrainImage]:
        """Images scaled to at most ``FIT_IMAGE_SIDE`` px on the long side
        (:func:`model.training.finetune.training_image`)."""
        out = []
        for row, rgb, mask in samples:
            image = training_image(rgb, mask, f"task{row.task_id}", self.s.fit_image_side)
            area = int((image.labels > 0).sum())
            if area < min_object_pixels():
                skipped.append(f"sample {row.id}: object too small to train on ({area} px at "
                               f"{image.rgb.shape[1]}x{image.rgb.shape[0]})")
                continue
            out.append(image)
        return out

    # -- evaluation and training -------------------------------------------------------------------------------------

    def evaluate(self, net: nn.Module, samples: list[tuple[SampleRow, np.ndarray, np.ndarray]],
                 phase: str) -> dict[str, Any]:
        """NoC@85/90 (mean and ``per_sample``, in the samples' order), NoF@90 and IoU@1 with the serving predictor
        options and ``FIT_EVAL_CLICKS`` clicks; a sample stops at 90% IoU (both NoCs stay exact)."""
        t0 = time.perf_counter()
        net.eval()
        predictor = FCFIPredictor(net, device=self.device, **predictor_options(self.s))
        n = max(1, self.s.fit_eval_clicks)
        curves = click_curves(predictor, ((rgb, mask.astype(np.int8)) for _, rgb, mask in samples), n,
                              stop_iou=0.90, progress=lambda i: self.progress(phase, i, len(samples)))
        self.timings[phase + "_s"] = round(time.perf_counter() - t0, 2)
        figures = curve_figures(curves, n)
        figures.pop("miou")  # curves stop at 90%
        return {**figures, "clicks": n, "per_sample": {"noc90": [noc(c, 0.90, n) for c in curves],
                                                       "noc85": [noc(c, 0.85, n) for c in curves]}}

    def train(self, net: nn.Module, images: list[TrainImage]) -> dict[str, float]:
        """Fine-tune ``net`` in place with the ``FIT_*`` recipe; returns the first and last loss and the crop."""
        out = fine_tune(net, images, recipe(self.s), seed=self.job_id,
                        progress=lambda step, total: self.progress("training", step, total, force=step == total))
        self.timings["training_s"] = out.pop("seconds")
        return out

    # -- the job ---------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.progress("loading", 0, 0, force=True)
        serving = load_serving(self.s, device=str(self.device))
        net, base = serving.net, serving.base_version
        if self.expected_base and base != self.expected_base:  # a fit worker configured unlike the replicas
            raise ValueError(f"this process's base version is {base!r} but the app that queued the job serves "
                             f"{self.expected_base!r}: give the fit worker the replicas' CHECKPOINT/MODEL_VERSION")
        self.state.update_job(self.job_id, start_version=serving.version)
        skipped: list[str] = []
        store = TrainingStore(self.model_dir / "training", readonly=True)
        try:
            chosen = choose_samples(store.samples(), self.s.fit_min_heldout, self.s.fit_min_train,
                                    max(1, self.s.fit_max_train_samples), max(1, self.s.fit_max_val_samples))
            val = self.load_samples(store, chosen.val, "loading", skipped)
            train = self.training_images(self.load_samples(store, chosen.train, "loading", skipped), skipped)
        finally:
            store.close()
        counts = {"train": len(train), "val": len(val), "holdout": chosen.how, "skipped": len(skipped)}
        self.state.update_job(self.job_id, samples=counts, skipped=skipped[:20])
        for reason in skipped:
            log.warning("skipped %s", reason)
        if len(val) < self.s.fit_min_heldout:
            raise Rejected(f"only {len(val)} of the {self.s.fit_min_heldout} held-out samples the gate needs could be "
                           "loaded" + (f" ({skipped[0]})" if skipped else ""))
        if not train:
            raise Rejected("no training sample could be loaded" + (f" ({skipped[0]})" if skipped else ""))
        self.timings["loading_s"] = round(time.perf_counter() - t0, 2)

        before = self.evaluate(net, val, "eval_before")
        self.state.update_job(self.job_id, before=before)
        loss = self.train(net, train)
        after = self.evaluate(net, val, "eval_after")
        promote, reason = decide(before, after, self.s.fit_gate_alpha, self.s.fit_gate)
        result: dict[str, Any] = {"before": before, "after": after, "loss": loss, "reason": reason}
        meta = {"base_version": base, "parent_version": serving.version, "job_id": self.job_id, "before": before,
                "after": after, "samples": counts, "recipe": dataclasses.asdict(recipe(self.s)), "gate": reason}
        if not promote:
            path = self.model_dir / FIT_DIR / REJECTED
            try:
                save_checkpoint_atomic(net, path, {**meta, "model_version": f"{base}-rejected-job{self.job_id}"})
            except OSError as exc:  # the decision stands; only the copy kept for inspection is lost
                log.warning("fit job %s: the rejected candidate could not be written (%s)", self.job_id, exc)
                return {**result, "status": "rejected", "candidate": None,
                        "candidate_error": f"not written: {exc.strerror or exc}"}
            return {**result, "status": "rejected", "candidate": str(path.relative_to(self.model_dir))}

        version = next_version(self.model_dir, base)
        path = self.model_dir / VERSIONS_DIR / version_file_name(version)
        save_checkpoint_atomic(net, path, {**meta, "model_version": version})
        entry = {"version": version, "checkpoint": str(path.relative_to(self.model_dir)), "base": base,
                 "parent": serving.version, "job_id": self.job_id, "promoted_at": now(), "before": before,
                 "after": after}
        # The commit point: from here on the app serves the new version (and a crash still counts as promoted).
        pruned = commit_promotion(self.model_dir, entry, self.s.fit_keep_versions)
        return {**result, "status": "promoted", "version": version, "pruned": pruned}


def _hold_lock(settings: Settings, lock_fd: int | None) -> int | None:
    if lock_fd is None:
        return try_lock(Path(settings.model_dir) / FIT_DIR / JOB_LOCK)
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours (inherited): confirms it, never blocks
    return lock_fd


def configure_process(settings: Settings) -> None:
    """Torch/OpenCV threads (``FIT_THREADS``) and ``os.nice(FIT_NICE)``: serving keeps priority on a shared host."""
    torch.set_num_threads(max(1, settings.fit_threads))
    with contextlib.suppress(RuntimeError):  # only possible before any parallel work
        torch.set_num_interop_threads(1)
    cv2.setNumThreads(max(1, settings.fit_threads))
    if settings.fit_nice > 0:
        with contextlib.suppress(OSError):
            os.nice(settings.fit_nice)  # serving (and on CUDA its host-side work) keeps priority


def execute(settings: Settings, state: FitState, job_id: int, expected_base: str | None = None,
            **running: Any) -> dict[str, Any]:
    """Run job ``job_id``: mark it running (with ``running``'s fields), run :class:`FitJob`, record the outcome.

    The caller holds the job lock and has checked that the job may run. Returns the job's final entry.
    """
    started = time.time()
    state.update_job(job_id, status="running", pid=os.getpid(), **{"started_at": now(), **running})
    log.info("fit job %s started (pid %d, %d thread(s), device %s)", job_id, os.getpid(),
             torch.get_num_threads(), settings.fit_device or settings.device)
    fitter = FitJob(settings, job_id, state, expected_base)
    try:
        fields = fitter.run()
    except Rejected as exc:
        fields = {"status": "rejected", "reason": str(exc)}
    except Exception as exc:
        log.exception("fit job %s failed", job_id)
        fields = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    final = state.update_job(job_id, **fields, progress=None, timings=fitter.timings, finished_at=now(),
                             wall_s=round(time.time() - started, 2))
    log.info("%s", describe(final))
    return final


def exit_with_parent(parent: int, interval: float = 1.0) -> threading.Thread:
    """End this process (status 143, as SIGTERM would) once ``parent`` is gone, e.g. the app was stopped.

    The job's partial work is lost, which is safe: samples, versions and the pointer are only ever replaced
    atomically, and the next app start marks the job interrupted.
    """
    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                log.warning("the app (pid %d) is gone; stopping this fit job", parent)
                os._exit(143)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    """Run one queued job; exit code 0 when it ended promoted/rejected/failed as recorded, 2 on usage, 3 if busy."""
    ap = argparse.ArgumentParser(prog="python -m backend.learning.job", description=__doc__.split("\n\n")[0])
    ap.add_argument("--job-id", type=int, required=True, help="the job's id in MODEL_DIR/fit/state.json")
    ap.add_argument("--lock-fd", type=int, default=None, help="inherited fd holding MODEL_DIR/fit/job.lock")
    args = ap.parse_args(argv)
    settings = settings_from_json(os.environ[SETTINGS_ENV]) if os.environ.get(SETTINGS_ENV) else Settings.from_env()
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s fit-job-{args.job_id}[%(process)d]: %(message)s")
    configure_process(settings)
    if args.lock_fd is not None:  # a child of the app: it must not outlive the app (SIGTERM, crash)
        exit_with_parent(os.getppid())

    lock = _hold_lock(settings, args.lock_fd)
    if lock is None:
        log.error("another fit job is running (%s is locked)", Path(settings.model_dir) / FIT_DIR / JOB_LOCK)
        return 3
    state = FitState(Path(settings.model_dir))
    job = FitState.job(state.read(), args.job_id)
    if job is None or job["status"] not in ("queued", "running"):
        log.error("fit job %s is not queued or running: %s", args.job_id, job and job["status"])
        return 2
    execute(settings, state, args.job_id, started_at=job.get("started_at") or now())
    return 0


# -- the RQ job (REDIS_URL set: run by python -m backend.learning.worker) -------------------------------------------


def run_queued(job_id: int, base_version: str | None = None) -> dict[str, Any]:
    """The RQ job the app enqueues for fit job ``job_id`` (:mod:`backend.learning.queue`); runs in RQ's work horse.

    Waits for the job lock (one job at a time, whoever runs it), runs the job only if the state still has it
    ``queued`` under this RQ job's id (a stale duplicate does nothing), with the worker's settings (its environment;
    a different base version than the app's, ``base_version``, fails the job), logs to ``fit/job-<id>.log``, and
    publishes the pointer in Redis after the job whatever its outcome (heals a publication a crash missed).
    Returns a short summary (RQ's result).
    """
    from rq import get_current_job

    from backend.learning.queue import publish_serving

    settings = Settings.from_env()
    configure_process(settings)
    model_dir = Path(settings.model_dir)
    state = FitState(model_dir)
    rq_job = get_current_job()
    rq_id = rq_job.id if rq_job is not None else None

    def still_ours() -> str | None:
        """Why this RQ job must not run the fit job (None: it must)."""
        job = FitState.job(state.read(), job_id)
        if job is None:
            return "it is not in fit/state.json"
        if job["status"] != "queued":
            return f"it is {job['status']}"
        if rq_id is not None and job.get("rq_job") not in (None, rq_id):
            return f"it was queued again as {job.get('rq_job')}"
        return None

    lock = None
    while lock is None:  # a job of another worker (or of an app without REDIS_URL) runs: ours is next
        why = still_ours()
        if why is not None:
            log.warning("fit job %s not run by RQ job %s: %s", job_id, rq_id, why)
            return {"job_id": job_id, "status": "skipped", "reason": why}
        lock = try_lock(model_dir / FIT_DIR / JOB_LOCK)
        if lock is None:
            time.sleep(1.0)
    log_path = model_dir / FIT_DIR / f"job-{job_id}.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s fit-job-{job_id}[%(process)d]: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        why = still_ours()  # checked again under the lock: a job that ran meanwhile is not run twice
        if why is not None:
            log.warning("fit job %s not run by RQ job %s: %s", job_id, rq_id, why)
            return {"job_id": job_id, "status": "skipped", "reason": why}
        final = execute(settings, state, job_id, base_version, log=str(log_path.relative_to(model_dir)),
                        host=socket.gethostname(), worker=os.environ.get("RQ_WORKER_ID"), rq_job=rq_id)
        pointer = read_pointer(model_dir)
        if pointer is not None and rq_job is not None:
            try:
                publish_serving(rq_job.connection, settings.redis_prefix, pointer)
                log.info("published serving version %s in Redis", pointer["serving"])
            except Exception as exc:  # the pointer is committed; replicas also follow it while Redis is away
                log.error("could not publish serving version %s in Redis: %s", pointer["serving"], exc)
        return {"job_id": job_id, "status": final["status"], "version": final.get("version")}
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        os.close(lock)


if __name__ == "__main__":
    sys.exit(main())
