"""The fit hook: fine-tuning on the annotators' masks, off the request path, one job at a time.

A *job* fine-tunes the serving network on the samples of the training store (:mod:`backend.training_store`),
measures NoC@85/90 on held-out samples before and after, and promotes the result only if it is not worse.
The job runs in its own process (``python -m backend.fit_job``, :mod:`backend.fit_job`), or, with ``REDIS_URL``
set, in ``python -m backend.fit_worker`` through an RQ queue (:mod:`backend.fit_queue`); this module holds what the
app and the job share and the :class:`FitManager` living in the app.

Layout under ``MODEL_DIR``::

    current.json               the pointer: the serving version, its checkpoint, the base it was fine-tuned from,
                               and every promoted version (written atomically; the commit point of a promotion)
    versions/<version>.pth     promoted checkpoints (written atomically before the pointer names them)
    fit/state.json             jobs (queued, running with progress, promoted, rejected, failed) and the sample
                               watermark of the N-samples trigger (written atomically under fit/state.lock)
    fit/job.lock               held (``fcntl.flock``) by the process that runs a job, for the job's whole life
    fit/job-<id>.log           the job process's log
    fit/rejected.pth           the candidate of the last rejected job (for inspection)
    training/                  the training store

Versions: the base version is ``MODEL_VERSION`` or the configured checkpoint's (:func:`checkpoint_version`);
promoted ones are ``<base>-v1``, ``<base>-v2`` ... . The app serves the pointer's version when the pointer's base
equals the configured base (a new ``CHECKPOINT`` starts a new line of versions instead of serving fine-tunes of
the old one).

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
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import torch
from rq.job import JobStatus

from model import default_checkpoint_path, load_checkpoint

from .atomic import atomic_write_bytes
from .fit_queue import WAITING, FitQueue
from .images import ImageLoader
from .ls_auth import LabelStudioAuth
from .settings import Settings

log = logging.getLogger(__name__)

POINTER = "current.json"
VERSIONS_DIR = "versions"
FIT_DIR = "fit"
STATE_FILE = "state.json"
STATE_LOCK = "state.lock"
JOB_LOCK = "job.lock"
REJECTED = "rejected.pth"
MAX_JOBS = 100  # jobs kept in fit/state.json (older finished ones are dropped)
MAX_ATTEMPTS = 3  # an interrupted job is queued again on app start until it has run this often
POLL_S = 0.25  # how often the manager looks at the job, the lock and the pointer
REDIS_POLL_S = 1.0  # with REDIS_URL: how often the manager asks Redis (queued job, published serving version)
FINISHED = ("promoted", "rejected", "failed")
STALE_TMP_S = 600.0  # temp files older than this were left by a killed writer (writes take about a second)
SETTINGS_ENV = "FIT_SETTINGS_JSON"  # the app's Settings, for the job process


# -- files ------------------------------------------------------------------------------------------------------------


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when the file does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def save_checkpoint_atomic(net: torch.nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """Write ``net`` as a checkpoint (:func:`model.checkpoint.checkpoint_bytes`), fsync-ed before it is renamed:
    the model package defines the payload, the backend adds only durability."""
    from model.checkpoint import checkpoint_bytes

    atomic_write_bytes(path, checkpoint_bytes(net, meta))
    return path


# -- settings for the job process -------------------------------------------------------------------------------------


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


def image_loader(settings: Settings, cache_items: int | None = None) -> ImageLoader:
    """The image loader the settings describe (the app's and the job's, so both fetch images the same way)."""
    auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key, timeout=10.0)
    return ImageLoader(auth=auth, local_files_root=settings.local_files_root, max_bytes=settings.max_image_bytes,
                       max_pixels=settings.max_image_pixels,
                       cache_items=settings.image_cache_items if cache_items is None else cache_items,
                       timeout=10.0, allow_private_hosts=settings.allow_private_urls,
                       cache_bytes=settings.image_cache_mb << 20)


def predictor_options(settings: Settings) -> dict[str, Any]:
    """The serving predictor's options (the inference worker and the job's evaluation use the same)."""
    return dict(zoom_in=settings.zoom_in, flip=settings.flip, target_size=settings.target_size,
                expansion_ratio=settings.expansion_ratio, max_size=settings.max_size, runtime=settings.runtime)


# -- versions and the serving checkpoint ------------------------------------------------------------------------------


def checkpoint_version(path: Path, net: torch.nn.Module) -> str:
    """``model_version`` of a checkpoint: its meta entry, else name + content hash."""
    meta = getattr(net, "checkpoint_meta", {}) or {}
    if isinstance(meta.get("model_version"), str):
        return meta["model_version"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    return f"fcfi-{path.stem}-{digest}"


def read_pointer(model_dir: Path) -> dict[str, Any] | None:
    """``MODEL_DIR/current.json``, or None when no version was ever promoted (or the file is unreadable)."""
    try:
        pointer = read_json(Path(model_dir) / POINTER)
    except (OSError, ValueError) as exc:
        log.error("cannot read %s: %s; serving the configured checkpoint", Path(model_dir) / POINTER, exc)
        return None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("serving"), str):
        return None
    return pointer


def promoted_versions(pointer: dict[str, Any] | None, base: str) -> list[dict[str, Any]]:
    """The pointer's promoted entries fine-tuned from ``base``, oldest first."""
    if not pointer:
        return []
    return [e for e in pointer.get("promoted", []) if isinstance(e, dict) and e.get("base") == base]


def version_file_name(version: str) -> str:
    """A file name for a version string (anything but ``[A-Za-z0-9._-]`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", version) + ".pth"


def next_version(model_dir: Path, base: str) -> str:
    """``<base>-v<n>``: one more than every promoted version of ``base`` and every file already in versions/
    (a file a killed job left without committing the pointer is never overwritten)."""
    numbers = [0]
    pattern = re.compile(re.escape(base) + r"-v(\d+)$")
    for entry in promoted_versions(read_pointer(model_dir), base):
        m = pattern.match(str(entry.get("version", "")))
        if m:
            numbers.append(int(m.group(1)))
    file_pattern = re.compile(re.escape(version_file_name(base)[:-4]) + r"-v(\d+)\.pth$")
    folder = Path(model_dir) / VERSIONS_DIR
    if folder.is_dir():
        for p in folder.iterdir():
            m = file_pattern.match(p.name)
            if m:
                numbers.append(int(m.group(1)))
    return f"{base}-v{max(numbers) + 1}"


def prune_versions(model_dir: Path, promoted: list[dict[str, Any]], keep: int) -> list[str]:
    """Delete the checkpoint files of all but the newest ``keep`` promoted versions (each is about 12 MB).

    The pointer keeps every entry as history; the served version is the newest, so it always stays. Returns the
    versions whose files were deleted. ``keep`` < 1 keeps everything.
    """
    if keep < 1:
        return []
    removed = []
    for entry in promoted[:-keep]:
        rel = entry.get("checkpoint")
        if not isinstance(rel, str):
            continue
        path = Path(model_dir) / rel
        if path.parent.name != VERSIONS_DIR or not path.is_file():
            continue  # never delete outside versions/; already gone
        try:
            path.unlink()
            removed.append(str(entry.get("version")))
        except OSError as exc:
            log.warning("cannot prune %s: %s", path, exc)
    return removed


@dataclass
class Serving:
    """What the service serves: ``net`` as ``version``, fine-tuned from ``base_version`` (equal when not)."""

    net: torch.nn.Module
    version: str
    base_version: str
    path: Path


def load_serving(settings: Settings, device: str | None = None) -> Serving:
    """Load the serving network: the pointer's version if it was fine-tuned from the configured base, else the base.

    The base is ``CHECKPOINT`` (or the shipped weights) and its version ``MODEL_VERSION`` or
    :func:`checkpoint_version`. Raises like :func:`model.load_checkpoint` when the base cannot be loaded.
    """
    device = device or settings.device
    if settings.checkpoint and settings.checkpoint != "default":
        path = Path(settings.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"CHECKPOINT={path} does not exist")
        net = load_checkpoint(path, device=device)
    else:  # the shipped weights; load_checkpoint explains how to make them when they are missing
        path = default_checkpoint_path()
        net = load_checkpoint(None, device=device)
    base = settings.model_version or checkpoint_version(path, net)
    pointer = read_pointer(Path(settings.model_dir))
    if pointer is None:
        return Serving(net, base, base, path)
    if pointer.get("base") != base:
        log.warning("%s names %s, fine-tuned from %r, but the configured checkpoint is %r: serving %r",
                    POINTER, pointer["serving"], pointer.get("base"), base, base)
        return Serving(net, base, base, path)
    promoted_path = Path(settings.model_dir) / str(pointer.get("checkpoint", ""))
    try:
        promoted = load_checkpoint(promoted_path, device=device)
    except Exception as exc:  # a damaged file must not take the service down: serve the base, say why
        log.error("cannot load the promoted version %s from %s (%s); serving %r", pointer["serving"],
                  promoted_path, exc, base)
        return Serving(net, base, base, path)
    del net
    return Serving(promoted, pointer["serving"], base, promoted_path)


def decide(before: dict[str, float], after: dict[str, float]) -> tuple[bool, str]:
    """Promote iff the candidate is not worse: NoC@90 lower or equal, ties broken by NoC@85, then by mIoU.

    The last tie-break matters when NoC saturates (every sample at the click limit, e.g. a weak model or few
    evaluation clicks): NoC cannot tell a broken candidate from a good one there, the mean IoU can.
    Returns ``(promote, reason)``.
    """
    for key, lower_is_better, tol in (("noc90", True, 1e-9), ("noc85", True, 1e-9), ("miou", False, 1e-6)):
        b, a = float(before[key]), float(after[key])
        if abs(a - b) > tol:
            better = a < b if lower_is_better else a > b
            name = {"noc90": "NoC@90", "noc85": "NoC@85", "miou": "mIoU"}[key]
            return better, f"{name} {b:.3f} -> {a:.3f} ({'better' if better else 'worse'})"
    return True, "not worse: NoC@90, NoC@85 and mIoU unchanged"


# -- locks and state --------------------------------------------------------------------------------------------------


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
        self.dir = Path(model_dir) / FIT_DIR
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
    if job.get("before") and job.get("after"):
        b, a = job["before"], job["after"]
        text += (f": NoC@85 {b['noc85']:.2f} -> {a['noc85']:.2f}, NoC@90 {b['noc90']:.2f} -> {a['noc90']:.2f} "
                 f"on {b['n']} held-out samples")
    if job.get("version"):
        text += f"; now serving {job['version']}"
    if job.get("reason") and job["status"] in FINISHED:
        text += f" ({job['reason']})"
    if job.get("error"):
        text += f": {job['error']}"
    return text


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
        self.base_version: str | None = None
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

    # -- wiring ----------------------------------------------------------------------------------------------------

    def loader(self) -> tuple[torch.nn.Module, str]:
        """The inference worker's loader: :func:`load_serving`, remembering the base version."""
        serving = load_serving(self.settings)
        self.base_version = serving.base_version
        return serving.net, serving.version

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
            "current": current,
            "queued": queued if queued is not current else None,
            "history": [j for j in jobs if j is not current and j is not queued],
            "runner": self.queue.info() if self.queue is not None else {"kind": "process"},
        }

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
