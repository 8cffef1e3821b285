"""The fit hook over real HTTP on loopback: webhooks in, a fine-tuning job in its own process, a promoted version out.

The serving model is the session's tiny network (conftest.py) saved as a checkpoint; a stand-in Label Studio
(ls_stub.py) serves small images. Jobs run a couple of steps on 64x80 images with 3 evaluation clicks, so each
takes seconds. ``FIT_LR=0`` with ``FIT_GATE=always`` makes the candidate equal to the serving model and promoted (the
pipeline's tests); a large rate breaks it, and the paired gate rejects it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import support
from ls_stub import FakeLabelStudio
from PIL import Image
from support import FIT_BASE as BASE
from support import FIT_PROJECT as PROJECT
from support import FIT_TRAIN_TASKS as TRAIN_TASKS
from support import FIT_VAL_TASKS as VAL_TASKS
from support import annotation_body, brush_result
from support import fit_image_path as image_path
from support import fit_keypoint as keypoint
from support import task_scene as scene

from backend.common.atomic import atomic_write_json
from backend.learning import gate as fit_gate
from backend.learning import state as fit_state
from backend.learning import versions
from backend.learning.gate import Rejected, choose_samples, decide, readiness, select, task_order
from backend.learning.store import SampleRow, TrainingStore
from backend.settings import Settings, settings_from_json, settings_to_json
from model import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_net, tmp_path_factory) -> Path:
    return save_checkpoint(tiny_net, tmp_path_factory.mktemp("ck") / "tiny.pth", meta={"model_version": BASE})


@pytest.fixture(scope="module")
def label_studio() -> Iterator[FakeLabelStudio]:
    ls = FakeLabelStudio().start()
    for task in range(1, 200):
        rgb, _ = scene(task)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        ls.protected_file(image_path(task), buf.getvalue())
    yield ls
    ls.stop()


def fit_settings(checkpoint: Path, ls: FakeLabelStudio, model_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        checkpoint=str(checkpoint), label_studio_url=ls.url, label_studio_api_key=ls.legacy_token, model_dir=model_dir,
        flip=False, target_size=96, max_size=128, torch_threads=1,
        fit_every_n_samples=0, fit_steps=2, fit_batch_size=2, fit_lr=0.0, fit_crop=96, fit_eval_clicks=3,
        fit_gate="always", fit_min_heldout=2, fit_min_train=1)
    base.update(overrides)
    return Settings(**base)


class Server(support.Server):
    """test_backend's in-thread backend, with fit helpers; ``stop`` kills a job it started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__(settings)

    def get(self, path: str) -> Any:
        r = requests.get(self.url + path, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=30)

    def wait_job(self, job_id: int, until: Any = None, timeout: float = 180.0) -> dict[str, Any]:
        """Poll ``/fit`` until job ``job_id`` is finished (or ``until(job)`` holds); returns the job."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.get("/fit")
            jobs = [j for j in [status["current"], status["queued"], *status["history"]] if j]
            job = next((j for j in jobs if j["id"] == job_id), None)
            if job is not None and (until(job) if until else job["status"] in fit_state.FINISHED):
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"fit job {job_id} did not get there within {timeout:g} s: {job}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.app.config["fit"].shutdown(kill=True)
        super().stop()


def annotate(server: Server, task: int, annotation_id: int | None = None) -> requests.Response:
    """ANNOTATION_CREATED for ``task`` exactly as Label Studio sends it (full rows, brush RLE of the disk)."""
    _, disk = scene(task)
    body = annotation_body([brush_result(disk, "Object", f"r{task}")], annotation_id=annotation_id or 1000 + task,
                           task_id=task, project_id=PROJECT, data={"image": image_path(task)})
    return server.post("/webhook", body)


def start_training(server: Server) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    r = server.post("/webhook", {"action": "START_TRAINING", "project": {"id": PROJECT, "title": "Disks"}})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return r.json(), elapsed


def predict(server: Server, task: int, clicks: list[dict[str, Any]]) -> requests.Response:
    config = (Path(__file__).resolve().parents[1] / "label_config.xml").read_text()
    body = {"tasks": [{"id": task, "data": {"image": image_path(task)}}], "project": f"{PROJECT}.1700000000",
            "label_config": config, "params": {"context": {"result": clicks}}}
    r = server.post("/predict", body)
    assert r.status_code == 200, r.text
    return r


def store_snapshot(model_dir: Path) -> list[tuple]:
    with TrainingStore(model_dir / "training", readonly=True) as store:
        return [(vars(row), store.load_mask(row).tobytes()) for row in store.samples()]


# -- over HTTP ------------------------------------------------------------------------------------------------------


def test_start_training_promotes_a_version_served_without_restart(checkpoint, label_studio, tmp_path) -> None:
    model_dir = tmp_path / "model"
    server = Server(fit_settings(checkpoint, label_studio, model_dir))
    try:
        for task in TRAIN_TASKS + VAL_TASKS:
            r = annotate(server, task)
            assert r.status_code == 200 and r.json()["stored"] == 1 and r.json()["fit_job"] is None, r.text
        with TrainingStore(model_dir / "training", readonly=True) as store:  # the masks Label Studio sent
            rows = store.samples()
            assert sorted(r.task_id for r in rows) == sorted(TRAIN_TASKS + VAL_TASKS)
            for row in rows:
                np.testing.assert_array_equal(store.load_mask(row), scene(row.task_id)[1])
        status = server.get("/fit")
        assert status["samples"] == {"train": 3, "val": 2, "total": 5, "new_since_last_job": 5}
        assert status["current"] is None and status["serving_version"] == BASE and status["every_n_samples"] == 0

        # A two-click session under the base version: click 2 resumes from click 1's stored feedback.
        _, disk = scene(VAL_TASKS[0])
        ys, xs = np.nonzero(disk)
        clicks = [keypoint(xs.mean(), ys.mean()), keypoint(2, 2, positive=False)]
        predict(server, VAL_TASKS[0], clicks[:1])
        assert predict(server, VAL_TASKS[0], clicks).headers["X-Network-Passes"] == "1"

        answer, elapsed = start_training(server)
        assert answer["job"]["status"] == "queued" and answer["samples"] == 5
        assert elapsed < 1.0, f"/webhook took {elapsed:.3f} s (Label Studio's webhook timeout is 1 s)"
        job = server.wait_job(answer["job"]["id"])
        assert job["status"] == "promoted", job
        assert job["version"] == f"{BASE}-v1" and job["start_version"] == BASE
        assert job["before"] == job["after"] and job["before"]["n"] == 2 and job["before"]["clicks"] == 3
        assert job["samples"]["train"] == 3 and job["samples"]["val"] == 2 and job["wall_s"] > 0
        assert "FIT_GATE=always" in job["reason"]

        # Swapped into the running service between requests.
        deadline = time.monotonic() + 30
        while server.post("/setup", {"project": "5.1"}).json()["model_version"] != f"{BASE}-v1":
            assert time.monotonic() < deadline, "the promoted version was not swapped in"
            time.sleep(0.05)
        assert server.get("/versions") == {"versions": [BASE, f"{BASE}-v1"]}
        assert server.get("/fit")["serving_version"] == f"{BASE}-v1"
        after = predict(server, VAL_TASKS[0], clicks)
        assert after.json()["results"][0]["model_version"] == f"{BASE}-v1"
        # The feedback stored under the base version is not reused: both clicks run on the new network.
        assert after.headers["X-Network-Passes"] == "2"
        predict(server, VAL_TASKS[0], clicks[:1])  # the new version's own feedback is used as usual
        assert predict(server, VAL_TASKS[0], clicks).headers["X-Network-Passes"] == "1"

        pointer = json.loads((model_dir / "current.json").read_text())
        assert pointer["serving"] == f"{BASE}-v1" and pointer["base"] == BASE
        assert load_checkpoint(model_dir / pointer["checkpoint"]).checkpoint_meta["model_version"] == f"{BASE}-v1"
        assert not list(model_dir.rglob("*.tmp"))
    finally:
        server.stop()

    # A restart serves the pointer's version, keeps the history, and the next job starts from v1.
    server = Server(fit_settings(checkpoint, label_studio, model_dir))
    try:
        assert server.post("/setup", {}).json()["model_version"] == f"{BASE}-v1"
        status = server.get("/fit")
        assert status["current"]["id"] == job["id"] and status["current"]["status"] == "promoted"
        answer, _ = start_training(server)
        job2 = server.wait_job(answer["job"]["id"])
        assert job2["status"] == "promoted" and job2["start_version"] == f"{BASE}-v1"
        assert job2["version"] == f"{BASE}-v2"
        assert server.get("/fit")["history"][0]["id"] == job["id"]
        deadline = time.monotonic() + 30
        while server.get("/versions")["versions"] != [BASE, f"{BASE}-v1", f"{BASE}-v2"] or \
                server.post("/setup", {}).json()["model_version"] != f"{BASE}-v2":
            assert time.monotonic() < deadline, server.get("/versions")
            time.sleep(0.05)
    finally:
        server.stop()


def test_a_worse_candidate_is_rejected_and_the_serving_version_kept(checkpoint, label_studio, tmp_path) -> None:
    model_dir = tmp_path / "model"
    # The paired gate; a large rate breaks the tiny network.
    server = Server(fit_settings(checkpoint, label_studio, model_dir, fit_lr=0.5, fit_gate="paired"))
    try:
        for task in TRAIN_TASKS + VAL_TASKS:
            assert annotate(server, task).status_code == 200
        answer, _ = start_training(server)
        job = server.wait_job(answer["job"]["id"])
        assert job["status"] == "rejected", job
        assert job["after"]["iou1"] < job["before"]["iou1"] and "not better" in job["reason"], job
        assert job["after"]["noc85"] >= job["before"]["noc85"] and job["after"]["noc90"] >= job["before"]["noc90"]
        assert server.get("/versions") == {"versions": [BASE]}
        assert server.post("/setup", {}).json()["model_version"] == BASE
        assert not (model_dir / "current.json").exists() and not (model_dir / "versions").exists()
        assert (model_dir / job["candidate"]).is_file()  # kept for inspection, never served
    finally:
        server.stop()


def test_a_killed_job_changes_nothing_is_marked_failed_and_restarts(checkpoint, label_studio, tmp_path) -> None:
    model_dir = tmp_path / "model"
    server = Server(fit_settings(checkpoint, label_studio, model_dir, fit_steps=100_000, fit_lr=1e-4))
    try:
        for task in TRAIN_TASKS + VAL_TASKS:
            assert annotate(server, task).status_code == 200
        samples = store_snapshot(model_dir)
        answer, _ = start_training(server)
        running = server.wait_job(answer["job"]["id"], until=lambda j: j["status"] == "running" and (
            j.get("progress") or {}).get("phase") == "training" and j["progress"]["step"] >= 1)
        assert running["progress"]["total"] == 100_000 and running["pid"] > 0
        os.kill(running["pid"], signal.SIGKILL)
        job = server.wait_job(running["id"])
        assert job["status"] == "failed" and job["interrupted"] and "SIGKILL" in job["error"], job
        assert store_snapshot(model_dir) == samples
        assert not (model_dir / "current.json").exists() and not (model_dir / "versions").exists()
        assert server.get("/versions") == {"versions": [BASE]}
        assert server.post("/setup", {}).json()["model_version"] == BASE
        assert server.get("/fit")["current"]["id"] == job["id"]
    finally:
        server.stop()

    # The next app start restarts the interrupted job (here with few steps, so it finishes).
    server = Server(fit_settings(checkpoint, label_studio, model_dir))
    try:
        status = server.get("/fit")
        retry = status["current"] if status["current"]["id"] != job["id"] else status["queued"]
        assert retry is not None and retry["retry_of"] == job["id"] and retry["attempt"] == 2, status
        retry = server.wait_job(retry["id"])
        assert retry["status"] == "promoted", retry
        assert store_snapshot(model_dir) == samples
    finally:
        server.stop()


def test_every_n_new_samples_starts_a_job_and_bad_payloads_count_for_nothing(checkpoint, label_studio,
                                                                             tmp_path) -> None:
    model_dir = tmp_path / "model"
    server = Server(fit_settings(checkpoint, label_studio, model_dir, fit_every_n_samples=3))
    try:
        tasks = TRAIN_TASKS[:2] + VAL_TASKS[:1] + TRAIN_TASKS[2:3]
        assert annotate(server, tasks[0]).json()["fit_job"] is None
        assert annotate(server, tasks[0]).json()["fit_job"] is None  # a repeated delivery is no new sample
        for bad in ({"action": "ANNOTATION_CREATED", "annotation": {"id": "x"}},
                    {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": []}, "task": {"id": 1}},
                    {"action": "START_TRAINING"}, [1, 2]):
            r = server.post("/webhook", bad)
            assert r.status_code == 400 and r.json()["error"], r.text
        assert server.get("/fit")["samples"]["total"] == 1
        assert annotate(server, tasks[1]).json()["fit_job"] is None
        assert server.get("/fit")["current"] is None
        r = annotate(server, tasks[2])
        assert r.json()["fit_job"]["status"] == "queued" and "FIT_EVERY_N_SAMPLES=3" in r.json()["fit_job"]["trigger"]
        job = server.wait_job(r.json()["fit_job"]["id"])
        assert job["status"] in ("promoted", "rejected") and job["before"] and job["after"]
        assert server.get("/fit")["samples"]["new_since_last_job"] == 0
        assert annotate(server, tasks[3]).json()["fit_job"] is None  # 1 new sample since that job
    finally:
        server.stop()


def test_one_job_at_a_time_across_processes(checkpoint, label_studio, tmp_path) -> None:
    model_dir = tmp_path / "model"
    server = Server(fit_settings(checkpoint, label_studio, model_dir))
    try:
        for task in TRAIN_TASKS + VAL_TASKS:
            assert annotate(server, task).status_code == 200
        lock = fit_state.try_lock(model_dir / "fit" / "job.lock")  # as if another app process were running a job
        assert lock is not None
        try:
            answer, _ = start_training(server)
            again, _ = start_training(server)
            assert again["job"]["id"] == answer["job"]["id"]  # triggers join the queued job
            deadline = time.monotonic() + 1.0  # four watcher ticks
            while time.monotonic() < deadline:
                job = server.wait_job(answer["job"]["id"], until=lambda j: True)
                assert job["status"] == "queued" and not job.get("pid")
                time.sleep(0.1)
        finally:
            os.close(lock)
        job = server.wait_job(answer["job"]["id"])
        assert job["status"] == "promoted", job
    finally:
        server.stop()


def test_too_little_data_is_rejected_with_a_reason(checkpoint, label_studio, tmp_path) -> None:
    server = Server(fit_settings(checkpoint, label_studio, tmp_path / "model"))
    try:
        # Empty store: answered at once without starting a process, as an error Label Studio shows on the model card.
        r = server.post("/webhook", {"action": "START_TRAINING", "project": {"id": PROJECT, "title": "Disks"}})
        assert r.status_code == 422 and "Fine-tuning not started: no stored samples" in r.reason
        answer = r.json()
        assert answer["job"]["status"] == "rejected" and "no stored samples" in answer["error"]
        assert server.get("/fit")["current"]["reason"] == "no stored samples to train on"
        assert annotate(server, TRAIN_TASKS[0]).status_code == 200  # one task: nothing can be held out
        gate = server.get("/fit")["gate"]
        assert not gate["ready"] and gate["heldout"] == 0 and gate["train"] == 1, gate
        assert "collecting samples: 1 stored" in gate["waiting_for"] and "FIT_GATE=always" in gate["rule"]
        r = server.post("/webhook", {"action": "START_TRAINING", "project": {"id": PROJECT, "title": "Disks"}})
        assert r.status_code == 422 and "Fine-tuning not started: collecting samples" in r.reason, r.reason
        assert server.get("/fit")["current"]["reason"] == gate["waiting_for"]
        assert server.get("/versions") == {"versions": [BASE]}
    finally:
        server.stop()


def test_the_gate_waits_for_enough_held_out_samples_then_decides(checkpoint, label_studio, tmp_path) -> None:
    # Three held-out samples needed: the two val tasks are not enough until a third task can be moved over.
    server = Server(fit_settings(checkpoint, label_studio, tmp_path / "model", fit_min_heldout=3, fit_min_train=2,
                                 fit_gate="paired"))
    try:
        for task in VAL_TASKS + TRAIN_TASKS[:2]:
            assert annotate(server, task).status_code == 200
        gate = server.get("/fit")["gate"]
        assert not gate["ready"] and (gate["heldout"], gate["train"]) == (3, 1), gate
        assert "3 held-out and 2 training samples" in gate["waiting_for"]
        r = server.post("/webhook", {"action": "START_TRAINING", "project": {"id": PROJECT, "title": "Disks"}})
        assert r.status_code == 422 and "collecting samples: 4 stored" in r.reason, r.reason
        assert annotate(server, TRAIN_TASKS[2]).status_code == 200
        gate = server.get("/fit")["gate"]
        assert gate["ready"] and (gate["heldout"], gate["train"]) == (3, 2) and "waiting_for" not in gate, gate
        answer, _ = start_training(server)
        job = server.wait_job(answer["job"]["id"])
        # FIT_LR=0: the candidate is the serving model, so the paired gate has nothing to promote.
        assert job["status"] == "rejected" and "unchanged on every one of 3 held-out samples" in job["reason"], job
        assert job["samples"]["val"] == 3 and job["samples"]["train"] == 2 and "1 training task" in \
            job["samples"]["holdout"]
        assert server.get("/versions") == {"versions": [BASE]}
    finally:
        server.stop()


def test_the_webhook_never_touches_the_image_source(checkpoint, tmp_path) -> None:
    # A stand-in image server that sleeps 5 s on every request: the webhook must not wait for it.
    import http.server
    import threading

    hits: list[str] = []

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            time.sleep(5)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    ls_url = f"http://127.0.0.1:{slow.server_port}"
    settings = Settings(checkpoint=str(checkpoint), label_studio_url=ls_url, label_studio_api_key="k" * 40,
                        model_dir=tmp_path / "model", torch_threads=1, fit_every_n_samples=0)
    server = Server(settings)
    try:
        times = []
        for task in TRAIN_TASKS + VAL_TASKS:
            _, disk = scene(task)
            for k, url in enumerate((image_path(task), f"{ls_url}/img/{task}.png")):  # an upload and a plain URL
                body = annotation_body([brush_result(disk, "Object", f"r{task}")], annotation_id=1000 + 2 * task + k,
                                       task_id=task, project_id=PROJECT, data={"image": url})
                t0 = time.perf_counter()
                r = server.post("/webhook", body)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200 and r.json()["stored"] == 1, r.text
        assert max(times) < 1.0, times
        assert hits == [], hits
    finally:
        server.stop()
        slow.shutdown()


# -- units ----------------------------------------------------------------------------------------------------------


def scored(noc90: list[int], noc85: list[int] | None = None) -> dict[str, Any]:
    return {"per_sample": {"noc90": noc90, "noc85": noc85 if noc85 is not None else noc90}}


def test_the_paired_gate_promotes_only_a_real_improvement() -> None:
    before = scored([8, 12, 5, 20, 9, 7, 14, 6, 11, 10])
    better = scored([5, 9, 4, 15, 7, 5, 10, 5, 8, 8])  # every sample needs fewer clicks
    promote, reason = decide(before, better, 0.05)
    assert promote and "a real improvement" in reason and "10 better, 0 worse" in reason, reason
    # The same mean fall carried by one sample out of ten: could be noise.
    lucky = scored([8, 12, 5, 1, 9, 7, 14, 6, 11, 10])
    promote, reason = decide(before, lucky, 0.05)
    assert not promote and "could be noise" in reason, reason
    worse = scored([9, 13, 6, 20, 9, 8, 15, 6, 12, 11])
    assert decide(before, worse, 0.05) == (False, decide(before, worse, 0.05)[1])
    assert "not better" in decide(before, worse, 0.05)[1]
    # A regression is never promoted, whatever alpha.
    assert not decide(before, worse, 1.0)[0]
    # NoC@90 unchanged on every sample: NoC@85 decides, by the same rule.
    promote, reason = decide(scored([20] * 10, [9, 8, 7, 9, 8, 7, 9, 8, 7, 9]), scored([20] * 10, [5] * 10), 0.05)
    assert promote and reason.startswith("NoC@85"), reason
    promote, reason = decide(before, before, 0.05)
    assert not promote and "unchanged on every one of 10" in reason
    assert decide(before, worse, 0.05, "always")[0] and decide(before, before, 0.05, "always")[0]
    with pytest.raises(ValueError):
        decide(before, scored([1, 2]), 0.05)


def test_paired_bootstrap_is_one_sided_and_deterministic() -> None:
    change, p = fit_gate.paired_bootstrap([10, 10, 10], [7, 8, 9])
    assert change == pytest.approx(-2.0) and p == 0.0
    change, p = fit_gate.paired_bootstrap([10, 10, 10], [12, 11, 13])
    assert change == pytest.approx(2.0) and p == 1.0
    assert fit_gate.paired_bootstrap([5, 9, 3, 7], [6, 4, 3, 9]) == fit_gate.paired_bootstrap([5, 9, 3, 7],
                                                                                               [6, 4, 3, 9])


def row(i: int, task: int, split: str = "train") -> SampleRow:
    return SampleRow(i, 1, task, i, "r", "Object", "x.png", f"m{i}.png", 8, 8, 4, 0.0, 0.0, split, "")


def test_held_out_samples_are_whole_tasks_chosen_deterministically() -> None:
    rows = [row(i, task=i // 2) for i in range(20)]  # 10 tasks, 2 samples each, none in the val split
    sel = select(rows, 5)
    moved = task_order(set(range(10)))[:3]  # whole tasks until 5 samples are held out: 3 tasks, 6 samples
    assert {r.task_id for r in sel.val} == set(moved) and len(sel.val) == 6 and "3 training task(s)" in sel.how
    assert not {r.task_id for r in sel.train} & {r.task_id for r in sel.val} and len(sel.train) + len(sel.val) == 20
    assert {r.id for r in select(list(reversed(rows)), 5).val} == {r.id for r in sel.val}  # order does not matter
    assert readiness(rows, 5, 14) == {"heldout": 6, "train": 14, "min_heldout": 5, "min_train": 14, "ready": True}
    assert not readiness(rows, 5, 15)["ready"]
    with pytest.raises(Rejected, match="collecting samples: 20 stored"):
        choose_samples(rows, 5, 15, 100, 100)
    rows += [row(100 + i, task=50 + i, split="val") for i in range(5)]
    chosen = choose_samples(rows, 5, 10, 8, 100)
    assert chosen.val == rows[-5:] and chosen.train == rows[12:20] and chosen.how == "the store's val split"
    one_task = [row(i, task=7) for i in range(30)]  # all samples from one image: nothing can be held out
    assert select(one_task, 5).val == [] and not readiness(one_task, 5, 1)["ready"]


def test_settings_reach_the_job_process_unchanged(tmp_path) -> None:
    s = Settings(model_dir=tmp_path, local_files_root=tmp_path / "files", label_studio_api_key="k", fit_steps=7,
                 fit_lr=0.5, torch_threads=None, zoom_in=False)
    assert settings_from_json(settings_to_json(s)) == s


def test_next_version_never_reuses_a_number(tmp_path) -> None:
    assert versions.next_version(tmp_path, "m-1") == "m-1-v1"
    atomic_write_json(tmp_path / "current.json", {"serving": "m-1-v2", "base": "m-1", "promoted": [
        {"version": "m-1-v1", "base": "m-1"}, {"version": "m-1-v2", "base": "m-1"}, {"version": "x-v9", "base": "x"}]})
    assert versions.next_version(tmp_path, "m-1") == "m-1-v3"
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / "m-1-v5.pth").write_bytes(b"")  # left by a job killed before its commit
    assert versions.next_version(tmp_path, "m-1") == "m-1-v6"
    assert versions.next_version(tmp_path, "other") == "other-v1"


def test_a_rejected_candidate_that_cannot_be_written_is_still_rejected(checkpoint, label_studio, tmp_path) -> None:
    model_dir = tmp_path / "model"
    # A folder where the file would go: unwritable.
    (model_dir / fit_state.FIT_DIR / fit_state.REJECTED).mkdir(parents=True)
    server = Server(fit_settings(checkpoint, label_studio, model_dir, fit_lr=0.5, fit_gate="paired"))  # breaks it
    try:
        for task in TRAIN_TASKS + VAL_TASKS:
            assert annotate(server, task).status_code == 200
        answer, _ = start_training(server)
        job = server.wait_job(answer["job"]["id"])
        assert job["status"] == "rejected", job  # not "failed": the decision does not depend on the copy
        assert job["candidate"] is None and "not written" in job["candidate_error"]
        assert server.get("/versions") == {"versions": [BASE]}
    finally:
        server.stop()
