"""The fit jobs' state and its rules: ``MODEL_DIR/fit/``, shared by the app's manager, the job process, the RQ worker.

Layout::

    fit/state.json      jobs (queued, running with progress, promoted, rejected, failed) and the sample watermark of
                        the N-samples trigger (written atomically under fit/state.lock)
    fit/job.lock        held (``fcntl.flock``) by the process that runs a job, for the job's whole life
    fit/job-<id>.log    the job process's log
    fit/rejected.pth    the candidate of the last rejected job (for inspection)

The dead-job rules live here too (:class:`DeadJobs`): a job ``running`` in the state while nobody holds the job lock
has died; it ends ``promoted`` when the serving pointer names it (the pointer is the commit point of a promotion),
else ``failed`` with ``interrupted``. The manager and its runners (:mod:`backend.learning.runners`) call them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backend.common.atomic import atomic_write_json, read_json

log = logging.getLogger(__name__)

FIT_DIR = "fit"
STATE_FILE = "state.json"
STATE_LOCK = "state.lock"
JOB_LOCK = "job.lock"
REJECTED = "rejected.pth"
MAX_JOBS = 100  # jobs kept in fit/state.json (older finished ones are dropped)
FINISHED = ("promoted", "rejected", "failed")
SETTINGS_ENV = "FIT_SETTINGS_JSON"  # the app's Settings, for the job process (backend.settings.settings_to_json)
GONE = "interrupted: the job process is gone (killed, or its app or fit worker stopped)"


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path``, or None when another open file holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def now() -> float:
    return round(time.time(), 3)


class FitState:
    """``MODEL_DIR/fit/state.json``: read without a lock (atomic file), changed under ``fit/state.lock``.

    Schema: ``{"schema": 1, "next_id": int, "watermark": int, "jobs": [job, ...]}``, jobs ordered by id. A job is
    a dict: ``id, status (queued|running|promoted|rejected|failed), trigger, project_id, queued_at, started_at,
    finished_at, wall_s, pid, progress {phase, step, total}, samples {train, val, holdout, skipped}, before, after
    ({noc85, noc90, miou, n, clicks}), start_version, version (promoted), reason, error, interrupted, attempt,
    retry_of, log``.
    """

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.dir = self.model_dir / FIT_DIR
        self.path = self.dir / STATE_FILE
        self.lock_path = self.dir / STATE_LOCK
        self._thread_lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        try:
            state = read_json(self.path)
        except ValueError:  # cannot happen with atomic writes; start afresh rather than fail every request
            log.error("%s is not valid JSON; starting a new job history", self.path)
            state = None
        if not isinstance(state, dict):
            state = {}
        state.setdefault("schema", 1)
        state.setdefault("next_id", 1)
        state.setdefault("watermark", 0)
        state.setdefault("jobs", [])
        return state

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under the lock (threads and processes); the change is written when the block ends."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._thread_lock:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                state = self.read()
                yield state
                excess = len(state["jobs"]) - MAX_JOBS
                if excess > 0:  # drop the oldest finished jobs
                    old = {j["id"] for j in state["jobs"] if j["status"] in FINISHED}
                    old = set(sorted(old)[:excess])
                    state["jobs"] = [j for j in state["jobs"] if j["id"] not in old]
                atomic_write_json(self.path, state)
            finally:
                os.close(fd)

    @staticmethod
    def job(state: dict[str, Any], job_id: int) -> dict[str, Any] | None:
        return next((j for j in state["jobs"] if j["id"] == job_id), None)

    def update_job(self, job_id: int, **fields: Any) -> dict[str, Any]:
        """Set fields of one job; returns a copy of the job."""
        with self.edit() as state:
            job = self.job(state, job_id)
            if job is None:
                raise KeyError(f"no fit job {job_id}")
            job.update(fields)
            return dict(job)


Pointer = dict[str, Any]


class DeadJobs:
    """The dead-job rules: which jobs have died, and how each one ends.

    A job whose process finished cleanly wrote its final status before releasing the job lock, so a job still
    ``running`` while nobody holds the lock has died (its process, or the app or fit worker that ran it). It ends:

    * ``promoted`` when the serving pointer names it (it died after the commit point): the pointer is then
      published for the other replicas (``publish``), since the process died before doing so;
    * else ``failed`` with ``interrupted`` (when it was killed) and the last line of its log in the error.

    Args:
        state: the jobs' state.
        read_pointer: reads the serving pointer ``MODEL_DIR/current.json``, or None
            (:func:`backend.learning.versions.read_pointer`).
        publish: tells the other replicas about a pointer (with ``REDIS_URL``; a no-op without).
    """

    def __init__(self, state: FitState, read_pointer: Callable[[], Pointer | None],
                 publish: Callable[[Pointer], None] = lambda pointer: None) -> None:
        self.state = state
        self.read_pointer = read_pointer
        self.publish = publish

    def check_orphans(self) -> None:
        """A job "running" in the state while nobody holds the job lock has died (its process or its app)."""
        if not any(j["status"] == "running" for j in self.state.read()["jobs"]):
            return
        lock = try_lock(self.state.dir / JOB_LOCK)
        if lock is None:
            return
        try:
            with self.state.edit() as state:
                self.mark_dead(state)
        finally:
            os.close(lock)

    def mark_dead(self, state: dict[str, Any]) -> None:
        """End every ``running`` job of ``state`` (being edited); the caller holds the job lock, so they all died."""
        for job in state["jobs"]:
            if job["status"] == "running":
                self.settle(job, GONE, interrupted=True)

    def settle(self, job: dict[str, Any], how: str, interrupted: bool) -> None:
        """End ``job`` (an entry of a state being edited), whose process died without recording its outcome."""
        pointer = self.read_pointer() or {}
        entry = next((e for e in pointer.get("promoted", [])
                      if isinstance(e, dict) and e.get("job_id") == job["id"]), None)
        if entry is not None:  # the pointer is the commit point of a promotion: killed after writing it, it promoted
            job.update(status="promoted", version=entry["version"], before=entry.get("before"),
                       after=entry.get("after"), reason="promoted (the job process died after committing)",
                       finished_at=now())
            self.publish(pointer)  # the job died before publishing it: for the other replicas
            return
        tail = log_tail(self.state.model_dir, job)
        job.update(status="failed", error=how + (f"; last log line: {tail}" if tail else ""),
                   interrupted=interrupted, finished_at=now())


def log_tail(model_dir: Path, job: dict[str, Any]) -> str:
    """The last line of a job's log (``job["log"]``, relative to ``model_dir``), at most 300 characters; "" if none."""
    path = Path(model_dir) / str(job.get("log") or "")
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 2000))
            lines = fh.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def summary(job: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few fields of a job a webhook answer carries."""
    if job is None:
        return None
    return {k: job.get(k) for k in ("id", "status", "trigger")}


def describe(job: dict[str, Any]) -> str:
    """One log line for a job's status."""
    text = f"fit job {job['id']} {job['status']}"
    progress = job.get("progress") or {}
    if job["status"] == "running" and progress:
        text += f" ({progress.get('phase')} {progress.get('step', 0)}/{progress.get('total', 0)})"
    if job.get("reason") and job["status"] in FINISHED:  # the gate's reason names the figures it decided on
        text += f": {job['reason']}"
    elif job.get("before") and job.get("after"):
        b, a = job["before"], job["after"]
        text += (f": NoC@85 {b['noc85']:.2f} -> {a['noc85']:.2f}, NoC@90 {b['noc90']:.2f} -> {a['noc90']:.2f} "
                 f"on {b['n']} held-out samples")
    if job.get("version"):
        text += f"; now serving {job['version']}"
    if job.get("error"):
        text += f": {job['error']}"
    return text
