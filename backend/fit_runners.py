"""How the fit manager runs jobs: as child processes of the app, or through RQ with ``REDIS_URL``.

:class:`backend.fit.FitManager` keeps the job state, the triggers, the dead-job bookkeeping and the swap of promoted
versions; a runner adds what differs between the two ways of running a job:

* :class:`ProcessRunner` (no ``REDIS_URL``): takes the job lock, starts ``python -m backend.fit_job`` with the lock
  inherited, reaps the process and marks a job whose process died without a result;
* :class:`QueueRunner` (``REDIS_URL``): enqueues the queued job to RQ (once, under the state lock; again when Redis
  lost it), fails it when RQ ended it without running it, publishes the pointer for the other replicas, and follows
  the serving version published in Redis.

The manager calls ``tick`` from its watcher thread only; ``woken`` (a trigger) comes from a request thread and only
resets a poll time.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from rq.job import JobStatus

from .fit_queue import WAITING, FitQueue
from .fit_state import JOB_LOCK, now, try_lock
from .settings import settings_to_json
from .versions import POINTER, read_pointer

if TYPE_CHECKING:
    from .fit import FitManager

log = logging.getLogger("backend.fit")  # the manager's logger: one stream for what the fit path does in the app

REDIS_POLL_S = 1.0  # how often the queue runner asks Redis (queued job, published serving version)
SETTINGS_ENV = "FIT_SETTINGS_JSON"  # the app's Settings, for the job process


class ProcessRunner:
    """Runs the queued job as a child process of the app (one at a time, across processes by the job lock).

    Args:
        manager: the fit manager (its state, folders, settings and dead-job bookkeeping).
        spawn: start jobs (off: only reap; e.g. tools that only read the state).
    """

    kind = "process"

    def __init__(self, manager: FitManager, spawn: bool = True) -> None:
        self.m = manager
        self.spawn = spawn
        self._proc: subprocess.Popen | None = None
        self._proc_job: int | None = None

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def woken(self) -> None:
        """A trigger queued a job: nothing to do, the next tick starts it."""

    def tick(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._reap()
        if self._proc is None:
            self.m.check_orphans()
            if self.spawn:
                self._maybe_start()

    def follow_published(self) -> bool:
        """No published version without Redis: the manager watches the pointer file."""
        return False

    def publish(self, pointer: dict[str, Any]) -> None:
        """Nothing to publish without Redis (every process reads the pointer file)."""

    def shutdown(self, kill: bool, timeout: float) -> None:
        """With ``kill``, SIGKILL the job process (it is then marked interrupted); reap it if it has ended."""
        proc = self._proc
        if kill and proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout)
        if proc is not None and proc.poll() is not None:
            self._reap()

    def _maybe_start(self) -> None:
        if not any(j["status"] == "queued" for j in self.m.state.read()["jobs"]):
            return
        lock = try_lock(self.m.fit_dir / JOB_LOCK)
        if lock is None:  # a job runs in another process; it will finish and we will start ours then
            return
        try:
            with self.m.state.edit() as state:
                self.m.mark_dead(state)  # we hold the lock: a job still "running" in the state has died
                job = next((j for j in state["jobs"] if j["status"] == "queued"), None)
                if job is None:
                    return
                log_path = self.m.fit_dir / f"job-{job['id']}.log"
                job.update(status="running", started_at=now(), progress={"phase": "starting", "step": 0, "total": 0},
                           log=str(log_path.relative_to(self.m.model_dir)))
                job_id = job["id"]
            try:
                self._proc = self._popen(job_id, lock, log_path)
            except Exception as exc:
                self.m.state.update_job(job_id, status="failed", error=f"could not start the job process: {exc}",
                                      finished_at=now())
                return
            self._proc_job = job_id
            self.m.state.update_job(job_id, pid=self._proc.pid)
        finally:
            os.close(lock)  # the child holds its inherited copy of the lock until it exits

    def _popen(self, job_id: int, lock_fd: int, log_path: Path) -> subprocess.Popen:
        env = dict(os.environ)
        env[SETTINGS_ENV] = settings_to_json(self.m.settings)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, self.m.settings.fit_threads))
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
        with self.m.state.edit() as state:
            job = self.m.state.job(state, job_id)
            if job is not None and job["status"] == "running":
                self.m.finish_dead(job, how, interrupted=code < 0, tail=self.m.log_tail(job))


class QueueRunner:
    """With ``REDIS_URL``: jobs go to an RQ queue (``python -m backend.fit_worker`` runs them), and promoted versions
    are followed through the serving version published in Redis.

    Args:
        manager: the fit manager.
        queue: the deployment's fit queue.
    """

    kind = "rq"

    def __init__(self, manager: FitManager, queue: FitQueue) -> None:
        self.m = manager
        self.queue = queue
        self._queue_check_at = 0.0  # monotonic time of the next look at the queued job in Redis
        self._published_at = 0.0  # ... and at the published serving version
        self._published_seen: bytes | None = None  # the published record last acted on
        self._published_ok = False  # the last look found one (else the pointer file is watched)

    def info(self) -> dict[str, Any]:
        return self.queue.info()

    def woken(self) -> None:
        """A trigger queued a job: enqueue it on the next tick (off the request path: the watcher talks to Redis)."""
        self._queue_check_at = 0.0

    def tick(self) -> None:
        self.m.check_orphans()
        try:
            self._sync()
        except redis.RedisError:  # FitQueue logged it; the job waits in the state until Redis is back
            pass

    def publish(self, pointer: dict[str, Any]) -> None:
        """Publish the pointer for the other replicas (a worker died after committing, before publishing)."""
        try:
            self.queue.publish_serving(pointer)
        except redis.RedisError:
            pass

    def shutdown(self, kill: bool, timeout: float) -> None:
        """Jobs run in the fit worker: nothing of ours to stop."""

    def _sync(self) -> None:
        """Get the queued job into RQ, and fail it when RQ ended it without running it.

        Looks at most every :data:`REDIS_POLL_S` (at once after a trigger). Decisions are taken under the state lock
        with the job re-read, so replicas never enqueue one job twice and a job that started meanwhile is left alone.
        """
        t = time.monotonic()
        if t < self._queue_check_at:
            return
        self._queue_check_at = t + REDIS_POLL_S
        queued = next((j for j in self.m.state.read()["jobs"] if j["status"] == "queued"), None)
        if queued is None:
            return
        status, detail = (None, "")
        if queued.get("rq_job"):
            status, detail = self.queue.job_status(queued["rq_job"])
            if status in WAITING:  # waiting for a worker, or a work horse waiting for the job lock
                return
        with self.m.state.edit() as state:
            job = self.m.state.job(state, queued["id"])
            if job is None or job["status"] != "queued" or job.get("rq_job") != queued.get("rq_job"):
                return  # started, finished or enqueued by another replica meanwhile
            if status is None:  # never enqueued, or Redis lost it (restarted without persistence)
                again = bool(job.get("rq_job"))
                job.update(rq_job=self.queue.enqueue(job["id"], self.m.base_version), queue=self.queue.name)
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

    def follow_published(self) -> bool:
        """Poll the serving version published in Redis; on a change install the pointer's version.

        Returns False when Redis is unreachable or nothing is published (the caller watches the pointer file).
        The pointer file stays the truth: the published record only says when to read it, so a stale record can
        never take a replica back to an older version.
        """
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
        if record != self._published_seen and self.m.install_pointer("published in Redis; swapped in without restart"):
            self._published_seen = record
        return True

    def _publish_if_absent(self) -> None:
        """Fill an empty serving-version key (first start, Redis restarted empty) from the pointer file, or with the
        base version when nothing was promoted, so promotions are then noticed through Redis. Never overwrites.
        Raises :class:`redis.RedisError`."""
        pointer = read_pointer(self.m.model_dir)
        if pointer is None or pointer.get("base") != self.m.base_version:
            pointer = {"serving": self.m.base_version, "checkpoint": None, "base": self.m.base_version}
        self.queue.publish_serving(pointer, only_if_absent=True)

