"""The fit manager: the part of the learning path that lives in the app.

A *job* fine-tunes the serving network on the samples of the training store (:mod:`backend.training_store`),
measures NoC@85/90 on held-out samples before and after, and promotes the result only if a paired comparison
shows a real improvement (:mod:`backend.fit_gate`, :mod:`backend.fit_job`). The job runs in its own process
(``python -m backend.fit_job``), or, with ``REDIS_URL`` set, in ``python -m backend.fit_worker`` through an RQ queue
(:mod:`backend.fit_queue`). The :class:`FitManager` queues jobs, spawns or enqueues them, reaps them and swaps promoted
versions into the inference worker. The jobs' state is :mod:`backend.fit_state`; versions and the serving pointer
are :mod:`backend.versions`.

Triggers: a ``START_TRAINING`` webhook, or ``FIT_EVERY_N_SAMPLES`` new sample rows since the last job. Triggers
coalesce: while a job is queued a new trigger joins it; while one runs, one more job is queued.

Crash safety: the job reads the store read-only and changes the serving model only by writing a new checkpoint
and then the pointer (each temp file + fsync + ``os.replace``), so a killed job leaves samples, pointer and
serving model as they were. A job whose process died is marked ``failed`` with ``interrupted: true`` (the lock
tells: a process that finished cleanly wrote its final status before releasing it), and the next app start
queues it again (at most :data:`MAX_ATTEMPTS` attempts).

With ``REDIS_URL`` (scale-out): the manager of every replica enqueues the ``queued`` job to RQ (once, under the state
lock; again when Redis lost it), never spawns one, and marks it ``failed`` when RQ ended it without running it (its
work horse died before taking the job lock). A job whose worker died while ``running`` is found by the job lock as
above. Promoted versions reach every replica through the serving version published in Redis (polled every
:data:`REDIS_POLL_S`); while Redis is unreachable or has nothing published, the pointer file is watched instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
from rq.job import JobStatus

from model import load_checkpoint

from .fit_gate import RULE, readiness
from .fit_queue import WAITING, FitQueue
from .fit_state import FIT_DIR, JOB_LOCK, FitState, describe, now, try_lock
from .settings import Settings, settings_to_json
from .versions import POINTER, VERSIONS_DIR, base_version, promoted_versions, read_pointer

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # an interrupted job is queued again on app start until it has run this often
POLL_S = 0.25  # how often the manager looks at the job, the lock and the pointer
REDIS_POLL_S = 1.0  # with REDIS_URL: how often the manager asks Redis (queued job, published serving version)
STALE_TMP_S = 600.0  # temp files older than this were left by a killed writer (writes take about a second)
SETTINGS_ENV = "FIT_SETTINGS_JSON"  # the app's Settings, for the job process


# -- the manager in the app -------------------------------------------------------------------------------------------


class FitManager:
    """Queues fit jobs, runs them one at a time in a child process, and swaps promoted versions into the worker.

    Args:
        settings: the service settings (``MODEL_DIR``, ``FIT_*``, and everything the job needs to load images).
        training: the app's training store (sample counts and the N-samples trigger).
        spawn: start jobs from this process (off: only watch, e.g. for tools reading the state).
        queue: with ``REDIS_URL``: jobs go to this RQ queue (``python -m backend.fit_worker`` runs them) instead of a
            child process, and promoted versions are followed through the serving version published in Redis.
    """

    def __init__(self, settings: Settings, training: Any, spawn: bool = True, queue: FitQueue | None = None) -> None:
        self.settings = settings
        self.training = training
        self.model_dir = Path(settings.model_dir)
        self.state = FitState(self.model_dir)
        self.fit_dir = self.model_dir / FIT_DIR
        self.queue = queue
        self.spawn = spawn and queue is None  # queued jobs run in the fit worker
        self.worker: Any = None
        #: the configured base's version: promoted versions fine-tuned from it are served (None: unreadable base,
        #: which the inference worker reports as it fails to load).
        self.base_version: str | None = None
        try:
            self.base_version = base_version(settings)
        except Exception as exc:  # noqa: BLE001 - reported by the worker's load through /health
            log.error("cannot read the configured checkpoint's version (%s); fine-tuning is off", exc)
        self._proc: subprocess.Popen | None = None
        self._proc_job: int | None = None
        self._seen: dict[int, tuple] = {}
        self._pointer_mtime: float | None = None
        self._queue_check_at = 0.0  # monotonic time of the next look at the queued job in Redis
        self._published_at = 0.0  # ... and at the published serving version
        self._published_seen: bytes | None = None  # the published record last acted on
        self._published_ok = False  # the last look found one (else the pointer file is watched)
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
        proc = self._proc
        if kill and proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout)
        if proc is not None and proc.poll() is not None:
            self._reap()

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
        self._queue_check_at = 0.0  # enqueue it now (off the request path: the manager thread talks to Redis)
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
            "runner": self.queue.info() if self.queue is not None else {"kind": "process"},
        }

    def gate(self) -> dict[str, Any]:
        """The promotion gate's rule and whether it has the samples it needs (:func:`backend.fit_gate.readiness`)."""
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
        if self._proc is not None and self._proc.poll() is not None:
            self._reap()
        if self._proc is None:
            self._check_orphans()
            if self.spawn:
                self._maybe_start()
        if self.queue is not None:
            try:
                self._sync_queue()
            except redis.RedisError:  # FitQueue logged it; the job waits in the state until Redis is back
                pass
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

    def _maybe_start(self) -> None:
        if not any(j["status"] == "queued" for j in self.state.read()["jobs"]):
            return
        lock = try_lock(self.fit_dir / JOB_LOCK)
        if lock is None:  # a job runs in another process; it will finish and we will start ours then
            return
        try:
            with self.state.edit() as state:
                self._mark_dead(state)  # we hold the lock: a job still "running" in the state has died
                job = next((j for j in state["jobs"] if j["status"] == "queued"), None)
                if job is None:
                    return
                log_path = self.fit_dir / f"job-{job['id']}.log"
                job.update(status="running", started_at=now(), progress={"phase": "starting", "step": 0, "total": 0},
                           log=str(log_path.relative_to(self.model_dir)))
                job_id = job["id"]
            try:
                self._proc = self._popen(job_id, lock, log_path)
            except Exception as exc:
                self.state.update_job(job_id, status="failed", error=f"could not start the job process: {exc}",
                                      finished_at=now())
                return
            self._proc_job = job_id
            self.state.update_job(job_id, pid=self._proc.pid)
        finally:
            os.close(lock)  # the child holds its inherited copy of the lock until it exits

    def _popen(self, job_id: int, lock_fd: int, log_path: Path) -> subprocess.Popen:
        env = dict(os.environ)
        env[SETTINGS_ENV] = settings_to_json(self.settings)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, self.settings.fit_threads))
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "backend.fit_job", "--job-id", str(job_id), "--lock-fd", str(lock_fd)],
                env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                pass_fds=(lock_fd,))

    def _reap(self) -> None:
        """Our job process has exited: if it did not write a final status, it was interrupted."""
        proc, job_id = self._proc, self._proc_job
        self._proc = self._proc_job = None
        if proc is None or job_id is None:
            return
        code = proc.wait()
        if code < 0:
            how = f"interrupted: the job process was killed by {signal.Signals(-code).name}"
        else:
            how = f"the job process exited with code {code} without a result"
        with self.state.edit() as state:
            job = self.state.job(state, job_id)
            if job is not None and job["status"] == "running":
                self._finish_dead(job, how, interrupted=code < 0, tail=self._log_tail(job))

    def _check_orphans(self) -> None:
        """A job "running" in the state while nobody holds the job lock has died (its process or its app)."""
        if not any(j["status"] == "running" for j in self.state.read()["jobs"]):
            return
        lock = try_lock(self.fit_dir / JOB_LOCK)
        if lock is None:
            return
        try:
            with self.state.edit() as state:
                self._mark_dead(state)
        finally:
            os.close(lock)

    def _mark_dead(self, state: dict[str, Any]) -> None:
        for job in state["jobs"]:
            if job["status"] == "running":
                self._finish_dead(job, "interrupted: the job process is gone (killed, or its app or fit worker "
                                       "stopped)", interrupted=True, tail=self._log_tail(job))

    def _finish_dead(self, job: dict[str, Any], how: str, interrupted: bool, tail: str) -> None:
        # The pointer is the commit point of a promotion: a job killed after writing it did promote.
        pointer = read_pointer(self.model_dir) or {}
        entry = next((e for e in pointer.get("promoted", [])
                      if isinstance(e, dict) and e.get("job_id") == job["id"]), None)
        if entry is not None:
            job.update(status="promoted", version=entry["version"], before=entry.get("before"),
                       after=entry.get("after"), reason="promoted (the job process died after committing)",
                       finished_at=now())
            if self.queue is not None:  # the worker died before publishing it: publish it for the other replicas
                with contextlib.suppress(redis.RedisError):
                    self.queue.publish_serving(pointer)
            return
        job.update(status="failed", error=how + (f"; last log line: {tail}" if tail else ""),
                   interrupted=interrupted, finished_at=now())

    def _log_tail(self, job: dict[str, Any]) -> str:
        path = self.model_dir / str(job.get("log") or "")
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 2000))
                lines = fh.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][-300:] if lines else ""

    def _recover(self) -> None:
        """On app start: remove stale temp files, mark dead jobs interrupted, queue the newest interrupted one again."""
        for folder in (self.model_dir, self.fit_dir, self.model_dir / VERSIONS_DIR):
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                with contextlib.suppress(OSError):
                    if time.time() - tmp.stat().st_mtime > STALE_TMP_S:  # a young one may be another process's
                        tmp.unlink()
                        log.info("removed %s, left by an interrupted write", tmp)
        self._check_orphans()
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

    def _sync_queue(self) -> None:
        """With ``REDIS_URL``: get the queued job into RQ, and fail it when RQ ended it without running it.

        Looks at most every :data:`REDIS_POLL_S` (at once after a trigger). Decisions are taken under the state lock
        with the job re-read, so replicas never enqueue one job twice and a job that started meanwhile is left alone.
        """
        assert self.queue is not None
        t = time.monotonic()
        if t < self._queue_check_at:
            return
        self._queue_check_at = t + REDIS_POLL_S
        queued = next((j for j in self.state.read()["jobs"] if j["status"] == "queued"), None)
        if queued is None:
            return
        status, detail = (None, "")
        if queued.get("rq_job"):
            status, detail = self.queue.job_status(queued["rq_job"])
            if status in WAITING:  # waiting for a worker, or a work horse waiting for the job lock
                return
        with self.state.edit() as state:
            job = self.state.job(state, queued["id"])
            if job is None or job["status"] != "queued" or job.get("rq_job") != queued.get("rq_job"):
                return  # started, finished or enqueued by another replica meanwhile
            if status is None:  # never enqueued, or Redis lost it (restarted without persistence)
                again = bool(job.get("rq_job"))
                job.update(rq_job=self.queue.enqueue(job["id"], self.base_version), queue=self.queue.name)
                log.info("fit job %s %s RQ queue %r as %s", job["id"], "enqueued again in" if again else "sent to",
                         self.queue.name, job["rq_job"])
                return
            if status == JobStatus.FINISHED:  # run_queued skipped it: e.g. the worker has another MODEL_DIR
                job.update(status="failed", finished_at=now(),
                           error=f"the fit worker finished RQ job {job['rq_job']} without running the job (does it "
                                 f"share this app's MODEL_DIR?)" + (f": {detail}" if detail else ""))
                return
            job.update(status="failed", finished_at=now(), interrupted=True,
                       error=f"the fit worker ended RQ job {job['rq_job']} as {status.value} before it started the "
                             f"job (its work horse died?)" + (f": {detail}" if detail else ""))

    def _maybe_swap(self) -> None:
        """Install the pointer's version in the worker when it changed (a job of any process promoted one).

        With ``REDIS_URL`` a change is noticed through the published serving version; while Redis is unreachable or
        has none, through the pointer file's mtime.
        """
        worker = self.worker
        if worker is None or not worker.ready or self.base_version is None:
            return
        if self.queue is not None and self._follow_published():
            return
        try:
            mtime = (self.model_dir / POINTER).stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._pointer_mtime:
            return
        if self._install_pointer("swapped in without restart"):
            self._pointer_mtime = mtime

    def _follow_published(self) -> bool:
        """Poll the serving version published in Redis; on a change install the pointer's version.

        Returns False when Redis is unreachable or nothing is published (the caller watches the pointer file).
        The pointer file stays the truth: the published record only says when to read it, so a stale record can
        never take a replica back to an older version.
        """
        assert self.queue is not None
        t = time.monotonic()
        if t < self._published_at:
            return self._published_ok
        self._published_at = t + REDIS_POLL_S
        try:
            record = self.queue.read_serving()
            if record is None:  # first start, or Redis restarted empty
                self._publish_if_absent()
        except redis.RedisError:  # FitQueue logged the outage; keep serving, follow the pointer file meanwhile
            record = None
        if record is None:
            if self._published_ok:
                log.info("no serving version from Redis: following %s", POINTER)
            self._published_ok = False
            return False
        if not self._published_ok:
            log.info("following the serving version published in Redis")
            self._published_ok = True
        if record != self._published_seen and self._install_pointer("published in Redis; swapped in without restart"):
            self._published_seen = record
        return True

    def _publish_if_absent(self) -> None:
        """Fill an empty serving-version key (first start, Redis restarted empty) from the pointer file, or with the
        base version when nothing was promoted, so promotions are then noticed through Redis. Never overwrites.
        Raises :class:`redis.RedisError`."""
        assert self.queue is not None
        pointer = read_pointer(self.model_dir)
        if pointer is None or pointer.get("base") != self.base_version:
            pointer = {"serving": self.base_version, "checkpoint": None, "base": self.base_version}
        self.queue.publish_serving(pointer, only_if_absent=True)

    def _install_pointer(self, how: str) -> bool:
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
