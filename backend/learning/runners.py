"""How the fit manager runs jobs: as child processes of the app, or through RQ with ``REDIS_URL``.

:class:`backend.learning.manager.FitManager` keeps the triggers and the swap of promoted versions; the job state and
the dead-job rules are :mod:`backend.learning.state`'s. A runner gets those (and, for RQ, a callback that installs the
pointer's version) as constructor arguments, never the manager, and adds what differs between the two ways of
running a job:

* :class:`ProcessRunner` (no ``REDIS_URL``): takes the job lock, starts ``python -m backend.learning.job`` with the
  lock inherited, reaps the process and ends a job whose process died without a result
  (:class:`~backend.learning.state.DeadJobs`);
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq.job import JobStatus

from backend.learning.queue import WAITING, FitQueue
from backend.learning.state import JOB_LOCK, SETTINGS_ENV, DeadJobs, FitState, now, try_lock
from backend.learning.versions import POINTER, read_pointer
from backend.settings import Settings, settings_to_json

# The manager's logger: one stream for what the fit path does in the app.
log = logging.getLogger("backend.learning.manager")

REDIS_POLL_S = 1.0  # how often the queue runner asks Redis (queued job, published serving version)
# The folder above the backend package: the job process imports it from there (also when it is not pip-installed).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class ProcessRunner:
    """Runs the queued job as a child process of the app (one at a time, across processes by the job lock).

    Args:
        state: the jobs' state (``MODEL_DIR/fit``).
        dead: the dead-job rules over that state.
        settings: the app's settings, passed on to the job process.
        spawn: start jobs (off: only reap; e.g. tools that only read the state).
    """

    kind = "process"

    def __init__(self, state: FitState, dead: DeadJobs, settings: Settings, spawn: bool = True) -> None:
        self.state = state
        self.dead = dead
        self.settings = settings
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
            self.dead.check_orphans()
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
        if not any(j["status"] == "queued" for j in self.state.read()["jobs"]):
            return
        lock = try_lock(self.state.dir / JOB_LOCK)
        if lock is None:  # a job runs in another process; it will finish and we will start ours then
            return
        try:
            with self.state.edit() as state:
                self.dead.mark_dead(state)  # we hold the lock: a job still "running" in the state has died
                job = next((j for j in state["jobs"] if j["status"] == "queued"), None)
                if job is None:
                    return
                log_path = self.state.dir / f"job-{job['id']}.log"
                job.update(status="running", started_at=now(), progress={"phase": "starting", "step": 0, "total": 0},
                           log=str(log_path.relative_to(self.state.model_dir)))
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
        root = str(PACKAGE_ROOT)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "backend.learning.job", "--job-id", str(job_id), "--lock-fd", str(lock_fd)],
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
                self.dead.settle(job, how, interrupted=code < 0)


class QueueRunner:
    """With ``REDIS_URL``: jobs go to an RQ queue (``python -m backend.learning.worker`` runs them), and promoted
    versions are followed through the serving version published in Redis.

    Args:
        state: the jobs' state (``MODEL_DIR/fit``).
        dead: the dead-job rules over that state.
        queue: the deployment's fit queue.
        base_version: the app's base version (sent with each job; a worker with another one fails it).
        install_pointer: swaps the pointer's version into the inference worker (``how`` it came, for the log);
            False to be called again later.
    """

    kind = "rq"

    def __init__(self, state: FitState, dead: DeadJobs, queue: FitQueue, base_version: str | None,
                 install_pointer: Callable[[str], bool]) -> None:
        self.state = state
        self.dead = dead
        self.queue = queue
        self.base_version = base_version
        self.install_pointer = install_pointer
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
        self.dead.check_orphans()
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
        if record != self._published_seen and self.install_pointer("published in Redis; swapped in without restart"):
            self._published_seen = record
        return True

    def _publish_if_absent(self) -> None:
        """Fill an empty serving-version key (first start, Redis restarted empty) from the pointer file, or with the
        base version when nothing was promoted, so promotions are then noticed through Redis. Never overwrites.
        Raises :class:`redis.RedisError`."""
        pointer = read_pointer(self.state.model_dir)
        if pointer is None or pointer.get("base") != self.base_version:
            pointer = {"serving": self.base_version, "checkpoint": None, "base": self.base_version}
        self.queue.publish_serving(pointer, only_if_absent=True)

