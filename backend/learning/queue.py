"""The fit hook over Redis (``REDIS_URL`` set): jobs queued through RQ, the serving version published to replicas.

Without ``REDIS_URL`` the app runs each job in a child process (:class:`backend.learning.manager.FitManager`). With
it, jobs run wherever ``python -m backend.learning.worker`` runs (:mod:`backend.learning.worker`, e.g. one GPU
container beside the replicas), and this module is everything both sides say to each other through Redis:

* **The queue.** ``MODEL_DIR/fit/state.json`` stays the source of truth for ``GET /fit``: the app records a job
  there as ``queued`` and then enqueues an RQ job naming it (``backend.learning.job.run_queued(job_id, base)``) on the
  queue ``<REDIS_PREFIX without ':'>-fit`` (default ``fcfi-fit``), and keeps the RQ job's id in the state.
* **The serving version.** After every job the worker publishes the pointer (``MODEL_DIR/current.json``: serving
  version, checkpoint, base) under ``<REDIS_PREFIX>serving_version``; every replica polls that key about once a second
  and, when it changes, loads the pointer's version from the shared ``MODEL_DIR`` (the file stays the commit point).
  A replica finding the key empty (first start, Redis restarted) fills it from the pointer file, only if still empty.

Everything here raises :class:`redis.RedisError` when Redis is unreachable (short timeouts); callers decide what that
means. :class:`FitQueue` logs one line when Redis goes away and one when it is back, not one per call.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from backend.common.redis_client import connect, redact_url
from backend.settings import Settings

log = logging.getLogger(__name__)

# By name: the app never imports the training code for RQ's sake. Jobs queued before the backend was split into
# packages name backend.fit_job.run_queued, which backend/fit_job.py still resolves.
JOB_FUNCTION = "backend.learning.job.run_queued"
SERVING_KEY = "serving_version"
# No RQ time limit: a job's length depends on FIT_STEPS and the device (minutes to hours on a CPU); a dead worker is
# found by the job lock instead (backend.learning.state.DeadJobs), not by a timeout.
JOB_TIMEOUT = -1
RESULT_TTL_S = 24 * 3600  # RQ's record of a finished job (the state file keeps the history)
# Jobs carry an id and a version string, results a small dict: JSON, not RQ's default pickle, so nothing read from
# Redis is ever unpickled by the app or the worker.
SERIALIZER = JSONSerializer
WAITING = {JobStatus.CREATED, JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}

T = TypeVar("T")


def queue_name(prefix: str) -> str:
    """The RQ queue of a deployment: its ``REDIS_PREFIX`` without the trailing colon, plus ``-fit`` (``fcfi-fit``).

    Tied to the prefix so two deployments sharing one Redis never run each other's jobs on the wrong ``MODEL_DIR``.
    """
    return (prefix.rstrip(":") or "fcfi") + "-fit"


def serving_record(pointer: dict[str, Any]) -> bytes:
    """What is published for a pointer: its serving version, checkpoint and base (not the whole history)."""
    return json.dumps({k: pointer.get(k) for k in ("serving", "checkpoint", "base")}, sort_keys=True).encode()


def publish_serving(client: redis.Redis, prefix: str, pointer: dict[str, Any], only_if_absent: bool = False) -> None:
    """Publish ``pointer`` (``MODEL_DIR/current.json``) for the replicas; raises :class:`redis.RedisError`.

    ``only_if_absent``: a replica filling an empty key (never overwrites what a worker published meanwhile).
    """
    client.set(prefix + SERVING_KEY, serving_record(pointer), nx=only_if_absent)


class FitQueue:
    """The app's side: enqueue jobs, look at them, read the published serving version.

    Args:
        url: ``REDIS_URL``.
        prefix: ``REDIS_PREFIX`` (the serving-version key and the queue name derive from it).
        timeout_s: socket timeouts; short, since the manager thread also swaps versions and must not hang.
    """

    def __init__(self, url: str, prefix: str = "fcfi:", timeout_s: float = 0.5) -> None:
        self.url = redact_url(url)
        self.prefix = prefix
        self.client = connect(url, timeout_s)
        self.name = queue_name(prefix)
        self.queue = Queue(self.name, connection=self.client, serializer=SERIALIZER)
        self._lock = threading.Lock()
        self._down = False

    def enqueue(self, job_id: int, base_version: str | None) -> str:
        """Enqueue fit job ``job_id`` (of ``fit/state.json``); returns the RQ job's id (a new one every time)."""
        rq_job = self._call("enqueue", lambda: self.queue.enqueue(
            JOB_FUNCTION, job_id, base_version, job_id=f"fcfi-fit-{job_id}-{uuid.uuid4().hex[:8]}",
            job_timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL_S, description=f"fit job {job_id}"))
        return rq_job.id

    def job_status(self, rq_id: str) -> tuple[JobStatus | None, str]:
        """``(status, detail)`` of an RQ job; status None when Redis does not know it (e.g. restarted empty).

        ``detail``: the last line of the error of a failed job, or why a finished one skipped its fit job."""

        def fetch() -> tuple[JobStatus | None, str]:
            try:
                job = Job.fetch(rq_id, connection=self.client, serializer=SERIALIZER)
            except NoSuchJobError:
                return None, ""
            status = job.get_status(refresh=False)
            result = job.latest_result() if status in (JobStatus.FAILED, JobStatus.FINISHED) else None
            if result is None:
                return status, ""
            if status == JobStatus.FINISHED:  # run_queued's summary: why it skipped the job
                value = result.return_value
                return status, str(value.get("reason") or "") if isinstance(value, dict) else ""
            lines = (result.exc_string or "").strip().splitlines()
            return status, lines[-1][-300:] if lines else ""

        return self._call("job status", fetch)

    def read_serving(self) -> bytes | None:
        """The published serving record (see :func:`serving_record`), None when nothing is published."""
        return self._call("read serving version", lambda: self.client.get(self.prefix + SERVING_KEY))

    def publish_serving(self, pointer: dict[str, Any], only_if_absent: bool = False) -> None:
        """:func:`publish_serving` with this queue's client."""
        self._call("publish serving version",
                   lambda: publish_serving(self.client, self.prefix, pointer, only_if_absent))

    def info(self) -> dict[str, Any]:
        """``GET /fit``'s ``runner``: the queue, its waiting jobs and registered workers (None while Redis is down).

        RQ counts a worker until it deregisters or its registration expires (minutes after a ``kill -9``)."""
        out: dict[str, Any] = {"kind": "rq", "queue": self.name, "redis": self.url, "waiting": None, "workers": None}
        try:
            out["waiting"] = self._call("queue length", lambda: self.queue.count)
            out["workers"] = self._call("worker count", lambda: Worker.count(connection=self.client, queue=self.queue))
        except redis.RedisError:
            pass
        return out

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; log when Redis goes away (once) and when it is back (once); re-raise Redis errors."""
        try:
            value = fn()
        except redis.RedisError as exc:
            with self._lock:
                if not self._down:
                    self._down = True
                    log.warning("Redis at %s unavailable for fit jobs (%s: %s: %s): jobs wait in fit/state.json, "
                                "replicas follow MODEL_DIR/current.json, until it is back", self.url, op,
                                type(exc).__name__, exc)
            raise
        if self._down:
            with self._lock:
                if self._down:
                    self._down = False
                    log.warning("Redis at %s reachable again for fit jobs", self.url)
        return value


def make_fit_queue(settings: Settings) -> FitQueue | None:
    """The fit queue when ``REDIS_URL`` is set (jobs go to ``python -m backend.learning.worker``), else None."""
    if not settings.redis_url:
        return None
    queue = FitQueue(settings.redis_url, settings.redis_prefix)
    log.info("fit jobs are queued in Redis at %s (queue %r) for `python -m backend.learning.worker`", queue.url,
             queue.name)
    return queue
