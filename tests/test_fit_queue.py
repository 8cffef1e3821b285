"""Fit jobs through Redis (``REDIS_URL``): two replicas and an RQ fit worker sharing one Redis and one ``MODEL_DIR``.

Everything is a real process: ``redis-server``, replicas A and B (``python -m backend``) and, where a test starts
one, ``python -m backend.learning.worker``. The data and the jobs are test_fit's: the tiny network, 64x80 disks from a
stand-in Label Studio, 2 training steps, 3 evaluation clicks, ``FIT_LR=0`` and ``FIT_GATE=always`` so the candidate
equals the serving model and is promoted, deterministically (the gate's rule is tested in test_fit). The tests share
the replicas and run in file order, but each one asserts relative to what it finds (versions, queued job), so any one
of them also runs alone.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from ls_stub import FakeLabelStudio
from PIL import Image
from redis_proc import Backend, FitWorker, RedisServer, child_env, redis_server_binary
from rq import Queue, Worker
from support import FIT_BASE as BASE
from support import FIT_PROJECT as PROJECT
from support import FIT_TRAIN_TASKS as TRAIN_TASKS
from support import FIT_VAL_TASKS as VAL_TASKS
from support import annotation_body, brush_result
from support import fit_image_path as image_path
from support import fit_keypoint as keypoint
from support import task_scene as scene

from backend.common.atomic import atomic_write_json
from backend.learning import state as fit_state
from backend.learning import versions
from backend.learning.queue import SERIALIZER
from model import load_checkpoint, save_checkpoint

PREFIX = "fq:"  # REDIS_PREFIX of these tests
QUEUE = "fq-fit"  # the queue name the app and the worker derive from it
ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 300.0  # a 2-step job takes seconds; the margin is for a loaded 2-core machine


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def checkpoint(tiny_net, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tiny_net, tmp_path_factory.mktemp("ck") / "tiny.pth", meta={"model_version": BASE})


@pytest.fixture(scope="module")
def label_studio() -> Iterator[FakeLabelStudio]:
    ls = FakeLabelStudio().start()
    for task in TRAIN_TASKS + VAL_TASKS:
        buf = io.BytesIO()
        Image.fromarray(scene(task)[0]).save(buf, format="PNG")
        ls.protected_file(image_path(task), buf.getvalue())
    yield ls
    ls.stop()


@dataclass
class Cluster:
    """Replicas A and B, their shared ``MODEL_DIR`` and Redis, and the environment a fit worker gets."""

    a: Backend
    b: Backend
    model_dir: Path
    redis: RedisServer
    env: dict[str, str]
    workdir: Path

    def worker(self, name: str, **overrides: str) -> FitWorker:
        """Start ``python -m backend.learning.worker`` configured like the replicas (plus ``overrides``)."""
        worker = FitWorker(name, self.workdir, {**self.env, **overrides})
        worker.wait_listening()
        return worker

    def queue(self) -> Queue:
        return Queue(QUEUE, connection=self.redis.client(), serializer=SERIALIZER)


@pytest.fixture(scope="module")
def cluster(checkpoint: Path, label_studio: FakeLabelStudio, redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("fit-queue")
    model_dir = tmp / "model"
    env = child_env(CHECKPOINT=str(checkpoint), LABEL_STUDIO_URL=label_studio.url,
                    LABEL_STUDIO_API_KEY=label_studio.legacy_token, MODEL_DIR=str(model_dir),
                    REDIS_URL=redis_server.url, REDIS_PREFIX=PREFIX, FLIP="false", TARGET_SIZE="96", MAX_SIZE="128",
                    TORCH_THREADS="1", FIT_EVERY_N_SAMPLES="0", FIT_STEPS="2", FIT_BATCH_SIZE="2", FIT_LR="0",
                    FIT_CROP="96", FIT_EVAL_CLICKS="3", FIT_THREADS="1", FIT_GATE="always",
                    FIT_MIN_HELDOUT="2", FIT_MIN_TRAIN="1")
    replicas = [Backend(name, tmp, env) for name in ("A", "B")]
    try:
        for replica in replicas:
            replica.wait_ready()
        a, b = replicas
        for i, task in enumerate(TRAIN_TASKS + VAL_TASKS):  # webhooks reach either replica: one training store
            stored = annotate((a, b)[i % 2], task)
            assert stored == 1
        yield Cluster(a, b, model_dir, redis_server, env, tmp)
    finally:
        for replica in replicas:
            replica.stop()


# -- HTTP helpers ------------------------------------------------------------------------------------------------------


def get(replica: Backend, path: str) -> Any:
    r = requests.get(replica.url + path, timeout=30)
    assert r.status_code == 200, (replica.name, r.text)
    return r.json()


def post(replica: Backend, path: str, body: Any) -> Any:
    r = requests.post(replica.url + path, json=body, timeout=60)
    assert r.status_code == 200, (replica.name, r.text)
    return r.json()


def annotate(replica: Backend, task: int) -> int:
    """ANNOTATION_CREATED for ``task`` as Label Studio sends it; returns the samples stored."""
    body = annotation_body([brush_result(scene(task)[1], "Object", f"r{task}")], annotation_id=1000 + task,
                           task_id=task, project_id=PROJECT, data={"image": image_path(task)})
    return post(replica, "/webhook", body)["stored"]


def start_training(replica: Backend) -> dict[str, Any]:
    t0 = time.perf_counter()
    answer = post(replica, "/webhook", {"action": "START_TRAINING", "project": {"id": PROJECT, "title": "Disks"}})
    assert time.perf_counter() - t0 < 1.0, "START_TRAINING must answer within Label Studio's 1 s"
    return answer["job"]


def job_of(replica: Backend, job_id: int) -> dict[str, Any] | None:
    status = get(replica, "/fit")
    return next((j for j in [status["current"], status["queued"], *status["history"]] if j and j["id"] == job_id),
                None)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


def wait_job(replica: Backend, job_id: int, until: Callable[[dict[str, Any]], bool] | None = None,
             timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    """Job ``job_id`` as ``replica``'s ``/fit`` shows it once finished (or once ``until(job)``)."""
    def check() -> dict[str, Any] | None:
        job = job_of(replica, job_id)
        return job if job and (until(job) if until else job["status"] in fit_state.FINISHED) else None
    return wait_for(f"fit job {job_id} on {replica.name}", check, timeout)


def predicted_version(replica: Backend) -> str:
    """``model_version`` of a ``/predict`` answer (one positive click on a disk)."""
    task = VAL_TASKS[0]
    ys, xs = np.nonzero(scene(task)[1])
    body = {"tasks": [{"id": task, "data": {"image": image_path(task)}}], "project": f"{PROJECT}.1700000000",
            "label_config": (ROOT / "label_config.xml").read_text(),
            "params": {"context": {"result": [keypoint(xs.mean(), ys.mean())]}}}
    return post(replica, "/predict", body)["results"][0]["model_version"]


def serving(replica: Backend) -> str:
    return post(replica, "/setup", {"project": f"{PROJECT}.1"})["model_version"]


# -- tests -------------------------------------------------------------------------------------------------------------


def test_without_a_worker_the_job_waits_queued_in_redis_and_survives_a_redis_restart(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    job = start_training(a)
    assert job["status"] == "queued"
    assert start_training(b)["id"] == job["id"]  # a trigger on another replica joins the queued job

    # The replicas' managers enqueue it to RQ once (under the state lock), and /fit on either says where it waits.
    queued = wait_job(b, job["id"], until=lambda j: bool(j.get("rq_job")), timeout=30)
    assert queued["status"] == "queued" and queued["queue"] == QUEUE
    assert cluster.queue().job_ids == [queued["rq_job"]]
    time.sleep(3.0)  # many manager ticks on both replicas: still one RQ job, still queued, nothing ran
    for replica in (a, b):
        waiting = job_of(replica, job["id"])
        assert waiting["status"] == "queued" and waiting["rq_job"] == queued["rq_job"] and not waiting.get("pid")
        assert get(replica, "/fit")["runner"] == {"kind": "rq", "queue": QUEUE, "redis": cluster.redis.url,
                                                  "waiting": 1, "workers": 0}
    assert cluster.queue().job_ids == [queued["rq_job"]]

    # Redis restarts empty (no persistence): the queue is lost, the state is not; the job is enqueued again.
    cluster.redis.stop()
    try:
        assert predicted_version(a) == serving(a)  # serving goes on without Redis
        assert job_of(b, job["id"])["status"] == "queued" and get(b, "/fit")["runner"]["workers"] is None
    finally:
        cluster.redis.start()
    again = wait_job(a, job["id"], until=lambda j: j.get("rq_job") not in (None, queued["rq_job"]), timeout=30)
    assert again["status"] == "queued"
    wait_for("the job back in the RQ queue", lambda: cluster.queue().job_ids == [again["rq_job"]], timeout=10)
    time.sleep(2.0)
    assert cluster.queue().job_ids == [again["rq_job"]]  # once, although both replicas noticed


def test_the_worker_runs_the_job_and_both_replicas_serve_the_promoted_version(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    before = get(a, "/versions")["versions"]
    assert get(b, "/versions")["versions"] == before and serving(a) == serving(b) == before[-1]
    job = start_training(a)  # joins the job the previous test left queued, if any: one job, one new version
    worker = cluster.worker("worker-promote")
    try:
        done = wait_job(b, job["id"])
        assert done["status"] == "promoted", (done, worker.log())
        version = done["version"]
        assert version == f"{BASE}-v{len(before)}" and done["start_version"] == before[-1]
        assert done["worker"] == "worker-promote" and done["rq_job"] and done["pid"] != worker.proc.pid
        assert done["before"]["n"] == 2 and done["before"]["clicks"] == 3 and "FIT_GATE=always" in done["reason"]
        assert f"fit job {job['id']} promoted" in (cluster.model_dir / done["log"]).read_text()  # the job's own log

        # Published in Redis after the pointer, and swapped into BOTH replicas between requests.
        published = json.loads(cluster.redis.client().get(PREFIX + "serving_version"))
        pointer = json.loads((cluster.model_dir / "current.json").read_text())
        assert published == {"serving": version, "checkpoint": pointer["checkpoint"], "base": BASE}
        for replica in (a, b):
            wait_for(f"{version} served by {replica.name}", lambda r=replica: serving(r) == version)
            assert get(replica, "/versions")["versions"] == [*before, version]
            assert predicted_version(replica) == version
            assert get(replica, "/fit")["serving_version"] == version
            assert f"now serving {version} (published in Redis" in replica.log()
        assert not cluster.queue().job_ids
    finally:
        worker.stop()


def test_killing_the_worker_mid_job_marks_it_failed_and_keeps_the_serving_version(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    version, versions = serving(a), get(a, "/versions")["versions"]
    pointer = (cluster.model_dir / "current.json").read_bytes() if (cluster.model_dir / "current.json").exists() \
        else None
    worker = cluster.worker("worker-killed", FIT_STEPS="100000", FIT_LR="0.0001")  # a job that never ends
    try:
        job = start_training(b)
        running = wait_job(a, job["id"], until=lambda j: j["status"] == "running" and (
            j.get("progress") or {}).get("phase") == "training" and j["progress"]["step"] >= 1)
        assert running["worker"] == "worker-killed" and running["progress"]["total"] == 100_000
        # The container dies: the worker and its work horse (RQ forks one per job, in its own process group).
        os.kill(running["pid"], signal.SIGKILL)
        worker.kill()

        # A replica finds the job lock free while the job is "running": failed, interrupted (no stuck "running").
        failed = wait_job(b, job["id"], timeout=30)
        assert failed["status"] == "failed" and failed["interrupted"] and "interrupted" in failed["error"], failed
        assert job_of(a, job["id"])["status"] == "failed"
        lock = fit_state.try_lock(cluster.model_dir / "fit" / "job.lock")  # nobody holds it: the next job can run
        assert lock is not None
        os.close(lock)

        # Nothing served changed.
        after = (cluster.model_dir / "current.json").read_bytes() if pointer is not None else None
        assert after == pointer
        time.sleep(1.5)  # past a Redis poll of both replicas
        for replica in (a, b):
            assert serving(replica) == version and predicted_version(replica) == version
            assert get(replica, "/versions")["versions"] == versions
    finally:
        worker.stop()
        for registered in Worker.all(connection=cluster.redis.client()):  # RQ would keep counting it for minutes
            if registered.name == "worker-killed":
                registered.register_death()


def children(pid: int) -> list[int]:
    """Pids of the processes whose parent is ``pid`` (RQ's work horse of a worker)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_job_waits_for_the_job_lock_and_a_work_horse_dying_before_it_starts_fails_it(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    version = serving(a)
    # As if a job of another worker or app were running.
    lock = fit_state.try_lock(cluster.model_dir / "fit" / "job.lock")
    assert lock is not None
    worker = None
    try:
        job = start_training(a)
        worker = cluster.worker("worker-waiting")
        queued = wait_job(a, job["id"], until=lambda j: bool(j.get("rq_job")), timeout=30)
        rq_job = queued["rq_job"]
        wait_for("the work horse to take the RQ job",
                 lambda: cluster.queue().fetch_job(rq_job).get_status() == "started", timeout=60)
        time.sleep(2.0)
        assert job_of(b, job["id"])["status"] == "queued"  # one job at a time: it waits for the lock, runs nothing
        horses = children(worker.proc.pid)
        assert len(horses) == 1, horses
        os.kill(horses[0], signal.SIGKILL)  # e.g. the OOM killer
        failed = wait_job(b, job["id"], timeout=60)
        assert failed["status"] == "failed" and "before it started" in failed["error"], failed
        assert "Work-horse terminated unexpectedly" in failed["error"] and worker.proc.poll() is None
        assert serving(a) == serving(b) == version
    finally:
        os.close(lock)
        if worker is not None:
            worker.stop()


def test_a_worker_configured_unlike_the_replicas_fails_the_job_with_the_reason(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    version = serving(a)
    # Another MODEL_DIR: the worker finds no such job and skips it; the replicas say so instead of waiting forever.
    worker = cluster.worker("worker-elsewhere", MODEL_DIR=str(cluster.workdir / "another-model-dir"))
    try:
        job = start_training(a)
        failed = wait_job(b, job["id"], timeout=60)
        assert failed["status"] == "failed" and "share this app's MODEL_DIR" in failed["error"], failed
        assert "not in fit/state.json" in failed["error"]
    finally:
        worker.stop()
    # Another base version (CHECKPOINT/MODEL_VERSION): the job fails rather than start a line of versions that the
    # replicas would never serve.
    worker = cluster.worker("worker-other-base", MODEL_VERSION="another-base")
    try:
        job = start_training(b)
        failed = wait_job(a, job["id"])
        assert failed["status"] == "failed" and "'another-base'" in failed["error"], failed
        assert f"serves {BASE!r}" in failed["error"] and failed["worker"] == "worker-other-base"
    finally:
        worker.stop()
    assert serving(a) == serving(b) == version and not (cluster.model_dir / "versions" / "another-base-v1.pth").exists()


def test_replicas_follow_the_pointer_file_while_redis_is_down(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    before = serving(a)
    cluster.redis.stop()
    try:
        # A version promoted while Redis is away (as a job of an app without REDIS_URL would): only the file says so.
        model_dir = cluster.model_dir
        current = versions.read_pointer(model_dir) or {"promoted": []}
        source = model_dir / current["checkpoint"] if current.get("checkpoint") else Path(cluster.env["CHECKPOINT"])
        version = versions.next_version(model_dir, BASE)
        path = model_dir / "versions" / versions.version_file_name(version)
        versions.save_checkpoint_atomic(load_checkpoint(source), path, {"model_version": version})
        entry = {"version": version, "checkpoint": str(path.relative_to(model_dir)), "base": BASE, "job_id": None}
        atomic_write_json(model_dir / "current.json", {"schema": 1, "serving": version, "base": BASE,
                                                           "checkpoint": entry["checkpoint"],
                                                           "promoted": [*current["promoted"], entry]})
        for replica in (a, b):
            wait_for(f"{version} served by {replica.name} without Redis", lambda r=replica: serving(r) == version)
            assert predicted_version(replica) == version and version != before
            assert get(replica, "/fit")["runner"]["workers"] is None  # /fit answers too, without queue figures
            log = replica.log()
            assert "unavailable for fit jobs" in log and f"now serving {version} (swapped in" in log
    finally:
        cluster.redis.start()
    # Redis is back, empty (nothing published): the replicas stay on the pointer's version.
    time.sleep(1.5)
    for replica in (a, b):
        assert serving(replica) == version
        wait_for(f"{replica.name} says Redis is back",
                 lambda r=replica: "reachable again for fit jobs" in r.log(), timeout=10)
