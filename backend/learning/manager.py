"""The fit manager: the part of the learning path that lives in the app.

A *job* fine-tunes the serving network on the samples of the training store (:mod:`backend.learning.store`),
measures NoC@85/90 on held-out samples before and after, and promotes the result only if a paired comparison
shows a real improvement (:mod:`backend.learning.gate`, :mod:`backend.learning.job`). The job runs in its own process
(``python -m backend.learning.job``), or, with ``REDIS_URL`` set, in ``python -m backend.learning.worker`` through an
RQ queue (:mod:`backend.learning.queue`). The :class:`FitManager` queues jobs, has its runner
(:mod:`backend.learning.runners`) spawn or enqueue them, and swaps promoted versions into the inference worker. The
jobs' state and the dead-job rules are :mod:`backend.learning.state`; versions and the serving pointer are
:mod:`backend.learning.versions`.

Triggers: a ``START_TRAINING`` webhook, or ``FIT_EVERY_N_SAMPLES`` new sample rows since the last job. Triggers
coalesce: while a job is queued a new trigger joins it; while one runs, one more job is queued.

Crash safety: the job reads the store read-only and changes the serving model only by writing a new checkpoint
and then the pointer (each temp file + fsync + ``os.replace``), so a killed job leaves samples, pointer and
serving model as they were. A job whose process died is marked ``failed`` with ``interrupted: true`` (the lock
tells: a process that finished cleanly wrote its final status before releasing it;
:class:`backend.learning.state.DeadJobs`), and the next app start queues it again (at most :data:`MAX_ATTEMPTS`
attempts).

With ``REDIS_URL`` (scale-out): the manager of every replica enqueues the ``queued`` job to RQ (once, under the state
lock; again when Redis lost it), never spawns one, and marks it ``failed`` when RQ ended it without running it (its
work horse died before taking the job lock). A job whose worker died while ``running`` is found by the job lock as
above. Promoted versions reach every replica through the serving version published in Redis (polled every
:data:`backend.learning.runners.REDIS_POLL_S`); while Redis is unreachable or has nothing published, the pointer file is
watched instead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from backend.learning.gate import RULE, readiness
from backend.learning.queue import FitQueue
from backend.learning.runners import ProcessRunner, QueueRunner
from backend.learning.state import FIT_DIR, DeadJobs, FitState, describe, now
from backend.learning.versions import POINTER, VERSIONS_DIR, base_version, promoted_versions, read_pointer
from backend.settings import Settings
from model import load_checkpoint

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # an interrupted job is queued again on app start until it has run this often
POLL_S = 0.25  # how often the manager looks at the job, the lock and the pointer
STALE_TMP_S = 600.0  # temp files older than this were left by a killed writer (writes take about a second)


# -- the manager in the app -------------------------------------------------------------------------------------------


class FitManager:
    """Queues fit jobs, has its runner run them one at a time (:mod:`backend.learning.runners`: a child process, or
    RQ with ``REDIS_URL``), and swaps promoted versions into the inference worker.

    Args:
        settings: the service settings (``MODEL_DIR``, ``FIT_*``, and everything the job needs to load images).
        training: the app's training store (sample counts and the N-samples trigger).
        spawn: start jobs from this process (off: only watch, e.g. for tools reading the state).
        queue: with ``REDIS_URL``: jobs go to this RQ queue (``python -m backend.learning.worker`` runs them) instead
            of a child process, and promoted versions are followed through the serving version published in Redis.
    """

    def __init__(self, settings: Settings, training: Any, spawn: bool = True, queue: FitQueue | None = None) -> None:
        self.settings = settings
        self.training = training
        self.model_dir = Path(settings.model_dir)
        self.state = FitState(self.model_dir)
        self.fit_dir = self.model_dir / FIT_DIR
        self.worker: Any = None
        #: the configured base's version: promoted versions fine-tuned from it are served (None: unreadable base,
        #: which the inference worker reports as it fails to load).
        self.base_version: str | None = None
        try:
            self.base_version = base_version(settings)
        except Exception as exc:  # noqa: BLE001 - reported by the worker's load through /health
            log.error("cannot read the configured checkpoint's version (%s); fine-tuning is off", exc)
        #: the dead-job rules; a job found promoted after its death is published by the runner (RQ: for the replicas)
        self.dead = DeadJobs(self.state, lambda: read_pointer(self.model_dir),
                             publish=lambda pointer: self.runner.publish(pointer))
        self.runner: ProcessRunner | QueueRunner = (
            QueueRunner(self.state, self.dead, queue, self.base_version, self.install_pointer) if queue is not None
            else ProcessRunner(self.state, self.dead, settings, spawn))
        self._seen: dict[int, tuple] = {}
        self._pointer_mtime: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fit-manager", daemon=True)

    def start(self, worker: Any) -> FitManager:
        """Attach the inference worker, recover from a crashed job and start watching."""
        self.worker = worker
        self.fit_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._thread.start()
        return self

    def shutdown(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop watching; with ``kill``, SIGKILL the job process this manager started (it is marked interrupted)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.runner.shutdown(kill, timeout)

    # -- triggers (request path: quick, no model, no images) --------------------------------------------------------

    def request(self, trigger: str, project_id: int | None = None, retry_of: int | None = None,
                attempt: int = 1) -> dict[str, Any]:
        """Queue a job (or join the one already queued); returns the job that will serve the request."""
        count = self.training.count()
        watermark = self.training.max_id()
        gate = self.gate()
        with self.state.edit() as state:
            state["watermark"] = max(int(state["watermark"]), watermark)
            queued = next((j for j in state["jobs"] if j["status"] == "queued"), None)
            if queued is not None:
                return dict(queued)
            job: dict[str, Any] = {"id": state["next_id"], "trigger": trigger, "project_id": project_id,
                                   "queued_at": now(), "attempt": attempt, "retry_of": retry_of,
                                   "status": "queued", "progress": None}
            state["next_id"] += 1
            if count == 0:  # nothing to learn from: answer at once instead of starting a process
                job.update(status="rejected", reason="no stored samples to train on", finished_at=now())
            elif not gate["ready"]:  # the gate could not tell a real improvement: do not spend the CPU
                job.update(status="rejected", reason=gate["waiting_for"], finished_at=now())
            state["jobs"].append(job)
        log.info("%s (trigger %s%s)", describe(job), trigger, f", project {project_id}" if project_id else "")
        self.runner.woken()
        self._wake.set()
        return dict(job)

    def samples_stored(self) -> dict[str, Any] | None:
        """After a webhook stored samples: queue a job when ``FIT_EVERY_N_SAMPLES`` new rows have accumulated."""
        n = self.settings.fit_every_n_samples
        if n <= 0:
            return None
        new = self.training.count_after(int(self.state.read()["watermark"]))
        if new < n:
            return None
        return self.request(f"{new} new samples (FIT_EVERY_N_SAMPLES={n})")

    # -- reads for the routes ---------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The body of ``GET /fit``."""
        state = self.state.read()
        jobs = list(reversed(state["jobs"]))  # newest first
        queued = next((j for j in jobs if j["status"] == "queued"), None)
        running = next((j for j in jobs if j["status"] == "running"), None)
        current = running or next((j for j in jobs if j["status"] != "queued"), None) or queued
        counts = self.training.counts()
        return {
            "serving_version": self.worker.model_version if self.worker is not None else None,
            "base_version": self.base_version,
            "versions": self.versions(),
            "samples": {**counts, "total": sum(counts.values()),
                        "new_since_last_job": self.training.count_after(int(state["watermark"]))},
            "every_n_samples": self.settings.fit_every_n_samples,
            "gate": self.gate(),
            "current": current,
            "queued": queued if queued is not current else None,
            "history": [j for j in jobs if j is not current and j is not queued],
            "runner": self.runner.info(),
        }

    def gate(self) -> dict[str, Any]:
        """The promotion gate's rule and whether it has the samples it needs
        (:func:`backend.learning.gate.readiness`)."""
        s = self.settings
        ready = readiness(self.training.samples(), s.fit_min_heldout, s.fit_min_train)
        return {"rule": RULE if s.fit_gate == "paired" else "FIT_GATE=always: every candidate is promoted",
                "alpha": s.fit_gate_alpha, **ready}

    def versions(self) -> list[str]:
        """The base version and every version promoted from it, oldest first (``GET /versions``)."""
        if self.base_version is None:
            return [self.worker.model_version] if self.worker is not None else []
        pointer = read_pointer(self.model_dir)
        return [self.base_version] + [e["version"] for e in promoted_versions(pointer, self.base_version)]

    # -- the watcher -----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # the watcher must survive anything (a full disk, a broken file); it retries
                log.exception("fit manager")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _tick(self) -> None:
        self.runner.tick()
        self._log_transitions()
        self._maybe_swap()

    def _log_transitions(self) -> None:
        for job in self.state.read()["jobs"][-5:]:
            progress = job.get("progress") or {}
            key = (job["status"], progress.get("phase"))
            if self._seen.get(job["id"]) != key:
                if job["id"] in self._seen or job["status"] != "queued":
                    log.info("%s", describe(job))
                self._seen[job["id"]] = key

    def _recover(self) -> None:
        """On app start: remove stale temp files, mark dead jobs interrupted, queue the newest interrupted one again."""
        for folder in (self.model_dir, self.fit_dir, self.model_dir / VERSIONS_DIR):
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                with contextlib.suppress(OSError):
                    if time.time() - tmp.stat().st_mtime > STALE_TMP_S:  # a young one may be another process's
                        tmp.unlink()
                        log.info("removed %s, left by an interrupted write", tmp)
        self.dead.check_orphans()
        state = self.state.read()
        if any(j["status"] in ("queued", "running") for j in state["jobs"]) or not state["jobs"]:
            return
        last = state["jobs"][-1]
        if last["status"] == "failed" and last.get("interrupted") and not last.get("retried"):
            attempt = int(last.get("attempt") or 1)
            if attempt >= MAX_ATTEMPTS:
                log.warning("fit job %s was interrupted %d times; not restarting it", last["id"], attempt)
                return
            self.state.update_job(last["id"], retried=True)
            job = self.request(f"restart of interrupted job {last['id']}", last.get("project_id"),
                               retry_of=last["id"], attempt=attempt + 1)
            log.info("fit job %s restarts interrupted job %s", job["id"], last["id"])

    def _maybe_swap(self) -> None:
        """Install the pointer's version in the worker when it changed (a job of any process promoted one).

        With ``REDIS_URL`` a change is noticed through the published serving version; while Redis is unreachable or
        has none, through the pointer file's mtime.
        """
        worker = self.worker
        if worker is None or not worker.ready or self.base_version is None:
            return
        if self.runner.follow_published():
            return
        try:
            mtime = (self.model_dir / POINTER).stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._pointer_mtime:
            return
        if self.install_pointer("swapped in without restart"):
            self._pointer_mtime = mtime

    def install_pointer(self, how: str) -> bool:
        """Swap the pointer's version into the inference worker if it is new; False to try again later."""
        worker = self.worker
        pointer = read_pointer(self.model_dir)
        if pointer is None or pointer.get("base") != self.base_version or pointer["serving"] == worker.model_version:
            return True
        path = self.model_dir / str(pointer.get("checkpoint", ""))
        try:
            net = load_checkpoint(path, device=self.settings.device)
            worker.swap(net, pointer["serving"]).result(timeout=max(60.0, self.settings.request_timeout))
        except Exception as exc:  # e.g. the queue is full: try again on the next tick
            log.warning("could not swap in %s from %s yet: %s", pointer["serving"], path, exc)
            return False
        log.info("now serving %s (%s)", pointer["serving"], how)
        return True
