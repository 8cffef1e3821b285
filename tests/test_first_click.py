"""The first click of an image: the image is fetched when the task opens, not when the annotator clicks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from ls_stub import FakeLabelStudio
from support import CONFIG, Server, body, keypoint, mask_of, scene, settings_for

IMAGE = "/data/upload/1/scene.png"


@pytest.fixture
def label_studio() -> Iterator[FakeLabelStudio]:
    ls = FakeLabelStudio().start()
    png, _ = scene()
    ls.protected_file(IMAGE, png)
    yield ls
    ls.stop()


@pytest.fixture
def server(checkpoint, label_studio) -> Iterator[Server]:
    s = Server(settings_for(checkpoint, label_studio))
    yield s
    s.stop()


def opened(task: dict | None = None, config: str = CONFIG) -> dict:
    """What Label Studio sends when a task opens: the task, no context."""
    return {"tasks": [task or {"id": 7, "data": {"image": IMAGE}}], "project": "3.17", "label_config": config}


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_opening_a_task_fetches_its_image_once(server, label_studio) -> None:
    service = server.app.config["service"]
    t0 = time.perf_counter()
    r = requests.post(f"{server.url}/predict", json=opened(), timeout=10)
    answered = time.perf_counter() - t0
    assert r.status_code == 200 and r.json()["results"] == [[]]
    assert answered < 1.0
    assert wait_for(lambda: service.prefetched == 1)
    assert label_studio.count(IMAGE) == 1
    r = requests.post(f"{server.url}/predict", json=body([keypoint(80, 60)]), timeout=60)
    assert r.status_code == 200 and mask_of(r)[60, 80]
    assert label_studio.count(IMAGE) == 1  # the click found the decoded image
    assert "image;dur=" in r.headers["Server-Timing"]


def test_open_requests_that_name_no_usable_image_fetch_nothing(server, label_studio) -> None:
    cases = [
        opened(config="<View><Image name='x' value='$img'/></View>"),  # no such data key
        opened(config="this is not xml"),
        opened({"id": 7, "data": {"image": 5}}),
        opened({"id": 7, "data": "nope"}),
        {"tasks": [{"id": i, "data": {"image": IMAGE}} for i in range(50)], "label_config": CONFIG},  # a batch
    ]
    for payload in cases:
        r = requests.post(f"{server.url}/predict", json=payload, timeout=10)
        assert r.status_code == 200, r.text
    time.sleep(0.5)
    assert label_studio.count(IMAGE) == 0
    assert server.app.config["service"].prefetched == 0
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "UP"


def test_a_failed_prefetch_is_reported_by_the_click(server, label_studio) -> None:
    missing = {"id": 8, "data": {"image": "/data/upload/1/missing.png"}}
    assert requests.post(f"{server.url}/predict", json=opened(missing), timeout=10).status_code == 200
    assert wait_for(lambda: label_studio.count("/data/upload/1/missing.png") == 1)
    r = requests.post(f"{server.url}/predict", json=body([keypoint(80, 60)], image="/data/upload/1/missing.png"),
                      timeout=60)
    assert r.status_code == 422 and "not found" in r.json()["error"]
