"""The /predict pipeline without HTTP: the parser, and :class:`backend.serve.service.PredictService` on a real
worker."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from support import CONFIG, H, W, body, keypoint, scene

from backend.common.errors import BadRequest, TooLarge, Unprocessable
from backend.feedback.store import MemoryFeedbackStore
from backend.images.loader import LoadedImage
from backend.ls.rle import decode_rle
from backend.serve.parse import click_session, opened_image, parse_predict
from backend.serve.service import PredictService
from backend.serve.worker import InferenceWorker

# -- the parser ---------------------------------------------------------------------------------------------------


def test_percent_clicks_become_pixels_of_the_decoded_image() -> None:
    request = parse_predict(body([keypoint(80, 60), keypoint(5, 5, positive=False)]))
    job = click_session(request, request.tasks[0], max_clicks=10)
    assert job is not None and job.label == "Object" and job.image_url == "/data/upload/1/scene.png"
    assert (job.width, job.height, job.task_id, job.project_id) == (W, H, 7, 3)
    got = job.clicks(W, H)
    assert [c.positive for c in got] == [True, False]
    assert np.allclose([(c.x, c.y) for c in got], [(80.0, 60.0), (5.0, 5.0)])
    # The same percentages on a twice as large decode land on the same spot.
    big = job.clicks(2 * W, 2 * H)[0]
    assert np.allclose((big.x, big.y), (160.0, 120.0))
    # A click on the right/bottom edge (100%) is clamped onto the last pixel, never outside.
    edge = parse_predict(body([keypoint(W, H)]))
    c = click_session(edge, edge.tasks[0], 10).clicks(W, H)[0]
    assert W - 1 <= c.x < W and H - 1 <= c.y < H


@pytest.mark.parametrize("payload, error, words", [
    ([], BadRequest, "JSON object"),
    ({"tasks": "x"}, BadRequest, "tasks must be list"),
    ({"tasks": [1]}, BadRequest, "every item of tasks"),
    ({"tasks": [], "params": [1]}, BadRequest, "params must be an object"),
    ({"tasks": [], "params": {"context": 3}}, BadRequest, "context must be an object"),
    ({"tasks": [], "label_config": 5}, BadRequest, "label_config must be a string"),
])
def test_malformed_bodies_are_refused_with_the_field_named(payload, error, words) -> None:
    with pytest.raises(error, match=words):
        parse_predict(payload)


@pytest.mark.parametrize("mutate, error, words", [
    (lambda b: b["params"]["context"]["result"][0]["value"].update(x=float("nan")), BadRequest, "finite"),
    (lambda b: b["params"]["context"]["result"][0]["value"].update(x=140.0), Unprocessable, "outside the image"),
    (lambda b: b["params"]["context"]["result"][0].update(is_positive="yes"), BadRequest, "true or false"),
    (lambda b: b["params"]["context"]["result"][0]["value"].update(keypointlabels=[]), BadRequest, "non-empty"),
    (lambda b: b["tasks"][0].update(data={}), Unprocessable, "missing"),
    (lambda b: b["params"]["context"]["result"][0].update(type="rectanglelabels"), Unprocessable, "smart keypoints"),
])
def test_bad_clicks_are_refused(mutate, error, words) -> None:
    payload = body([keypoint(80, 60)])
    mutate(payload)
    request = parse_predict(payload)
    with pytest.raises(error, match=words):
        click_session(request, request.tasks[0], max_clicks=10)


def test_too_many_clicks_and_no_context() -> None:
    request = parse_predict(body([keypoint(10, 10)] * 4))
    with pytest.raises(TooLarge, match="MAX_CLICKS"):
        click_session(request, request.tasks[0], max_clicks=3)
    empty = parse_predict({"tasks": [{"id": 1, "data": {"image": "a.png"}}], "label_config": CONFIG})
    assert click_session(empty, empty.tasks[0], max_clicks=3) is None
    ref = opened_image(empty, empty.tasks[0])
    assert ref is not None and (ref.url, ref.task_id, ref.project_id) == ("a.png", 1, None)


# -- the service --------------------------------------------------------------------------------------------------


class Images:
    """A stand-in image loader: one synthetic scene, counting loads."""

    def __init__(self) -> None:
        self.loads = 0
        self.rgb = np.asarray(Image.open(io.BytesIO(scene()[0])).convert("RGB"))
        self.rgb.setflags(write=False)
        self._lock = threading.Lock()

    def load(self, url: str, task_id: int | None = None, project_id: int | None = None) -> LoadedImage:
        with self._lock:
            self.loads += 1
        return LoadedImage(self.rgb, "scene-key")


@pytest.fixture(scope="module")
def service(tiny_net) -> Iterator[PredictService]:
    worker = InferenceWorker(lambda: (tiny_net, "tiny-1"), dict(flip=False, target_size=160, max_size=200,
                                                                 runtime="torch"), threads=1).start()
    worker.wait_ready(60)
    yield PredictService(worker, Images(), MemoryFeedbackStore(), max_clicks=20, timeout=30)


def test_a_click_answers_a_brush_region_and_stores_its_state(service: PredictService) -> None:
    answer, timings, passes = service.predict(body([keypoint(80, 60)]))
    region = answer["results"][0]["result"][0]
    assert passes == 1 and region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
    mask = decode_rle(region["value"]["rle"], H, W) > 0
    _, obj = scene()
    assert mask[60, 80] and (mask & obj).sum() > 0.5 * mask.sum()
    assert {"image", "feedback", "network", "encode", "store"} <= set(timings.parts)
    service.states.flush()
    # The second click resumes from the stored state: one pass, not two.
    _, _, passes = service.predict(body([keypoint(80, 60), keypoint(5, 5, positive=False)]))
    assert passes == 1


def test_a_batch_without_clicks_is_answered_empty_without_the_model(service: PredictService) -> None:
    before = service.worker.passes
    answer, _, passes = service.predict({"tasks": [{"id": i, "data": {"image": "x.png"}} for i in range(5)],
                                         "label_config": CONFIG})
    assert passes == 0 and service.worker.passes == before
    assert answer["results"] == [[]] * 5  # an empty prediction list per task: Label Studio stores nothing


def test_two_interactive_tasks_in_one_request_are_refused(service: PredictService) -> None:
    payload = body([keypoint(80, 60)])
    payload["tasks"].append({"id": 8, "data": {"image": "/data/upload/1/scene.png"}})
    with pytest.raises(TooLarge, match="MAX_INTERACTIVE_TASKS"):
        service.predict(payload)
