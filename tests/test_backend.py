"""The HTTP service over real HTTP on loopback, with a stand-in Label Studio serving the images."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from ls_stub import FakeLabelStudio, StubServer
from PIL import Image
from support import CONFIG, H, Server, W, body, keypoint, mask_of, scene, settings_for


@pytest.fixture(scope="module")
def label_studio() -> Iterator[FakeLabelStudio]:
    ls = FakeLabelStudio().start()
    png, _ = scene()
    ls.protected_file("/data/upload/1/scene.png", png)
    ls.protected_file("/data/upload/1/corrupt.png", b"\x89PNG\r\n\x1a\nthis is not an image")
    big = io.BytesIO()
    Image.new("RGB", (3000, 2000)).save(big, format="PNG")
    ls.protected_file("/data/upload/1/big.png", big.getvalue())
    yield ls
    ls.stop()


@pytest.fixture(scope="module")
def server(checkpoint, label_studio) -> Iterator[Server]:
    s = Server(settings_for(checkpoint, label_studio))
    yield s
    s.stop()


CLICKS = [keypoint(80, 60), keypoint(5, 5, positive=False)]


def test_two_click_session_uses_feedback_and_cold_replica_replays(server, checkpoint, label_studio) -> None:
    r1 = requests.post(server.url + "/predict", json=body(CLICKS[:1]), timeout=60)
    assert r1.status_code == 200, r1.text
    assert r1.headers["X-Network-Passes"] == "1"
    region = r1.json()["results"][0]["result"][0]
    assert region["from_name"] == "tag" and region["to_name"] == "image"
    assert region["value"]["brushlabels"] == ["Object"] and region["id"]
    assert r1.json()["results"][0]["model_version"] == "tiny-1"
    m1 = mask_of(r1)
    assert m1.shape == (H, W) and m1[60, 80]

    r2 = requests.post(server.url + "/predict", json=body(CLICKS), timeout=60)
    assert r2.status_code == 200, r2.text
    assert r2.headers["X-Network-Passes"] == "1"  # the stored feedback of click 1 was used
    assert "network;dur=" in r2.headers["Server-Timing"]
    m2 = mask_of(r2)

    cold = Server(settings_for(checkpoint, label_studio))
    try:
        r3 = requests.post(cold.url + "/predict", json=body(CLICKS), timeout=60)
        assert r3.status_code == 200 and r3.headers["X-Network-Passes"] == "2"  # replayed both clicks
        np.testing.assert_array_equal(mask_of(r3), m2)
    finally:
        cold.stop()
    # Undo of click 2 gives exactly the mask of click 1 again.
    r4 = requests.post(server.url + "/predict", json=body(CLICKS[:1]), timeout=60)
    assert r4.headers["X-Network-Passes"] == "1"
    np.testing.assert_array_equal(mask_of(r4), m1)


def test_instant_routes_and_batch_predict(server) -> None:
    assert requests.get(server.url + "/health", timeout=5).json()["status"] == "UP"
    setup = requests.post(server.url + "/setup", json={"project": "3.1"}, timeout=5)
    assert setup.json() == {"model_version": "tiny-1"}
    assert requests.get(server.url + "/versions", timeout=5).json() == {"versions": ["tiny-1"]}
    no_context = {"tasks": [{"id": 1, "data": {"image": "x"}}, {"id": 2, "data": {}}], "label_config": CONFIG,
                  "params": {"context": None}}
    r = requests.post(server.url + "/predict", json=no_context, timeout=5)
    assert r.status_code == 200 and r.json()["results"] == [[], []]  # no prediction per task: nothing stored
    assert requests.post(server.url + "/webhook", json={"action": "PROJECT_UPDATED"}, timeout=5).status_code == 200


NO_BRUSH = '<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image" smart="true">' \
           '<Label value="Object"/></KeyPointLabels></View>'


@pytest.mark.parametrize("name, payload, status, words", [
    ("malformed json", b"{not json", 400, "not valid JSON"),
    ("not an object", [1, 2], 400, "JSON object"),
    ("missing tasks", {"params": {}}, 400, "tasks"),
    ("tasks wrong type", {"tasks": "abc"}, 400, "tasks must be list"),
    ("x wrong type", body([{**keypoint(10, 10), "value": {"x": "5", "y": 3, "keypointlabels": ["Object"]}}]), 400,
     "value.x"),
    ("is_positive wrong type", body([{**keypoint(10, 10), "is_positive": "yes"}]), 400, "is_positive"),
    ("click outside", body([{**keypoint(10, 10), "value": {"x": 130.0, "y": 5.0, "keypointlabels": ["Object"]}}]),
     422, "outside the image"),
    ("zero clicks", body([]), 422, "no smart keypoints"),
    ("thousands of clicks", body([keypoint(10 + i % 100, 10) for i in range(3000)]), 413, "MAX_CLICKS"),
    ("unknown label", body([keypoint(10, 10, label="Cat")]), 422, "'Cat'"),
    ("no BrushLabels", body([keypoint(10, 10)], config=NO_BRUSH), 422, "no <BrushLabels>"),
    ("corrupt image", body([keypoint(10, 10)], image="/data/upload/1/corrupt.png"), 422, ""),
    ("oversized image", body([keypoint(10, 10)], image="/data/upload/1/big.png"), 413, ""),
    ("private url (SSRF guard)", body([keypoint(10, 10)], image="http://127.0.0.1:9/x.png"), 403,
     "ALLOW_PRIVATE_URLS"),
    ("missing image", body([keypoint(10, 10)], image="/data/upload/1/missing.png"), 422, ""),
])
def test_bad_input_gets_clear_error_and_service_survives(server, name, payload, status, words) -> None:
    if isinstance(payload, bytes):
        r = requests.post(server.url + "/predict", data=payload, headers={"Content-Type": "application/json"},
                          timeout=30)
    else:
        r = requests.post(server.url + "/predict", json=payload, timeout=30)
    assert r.status_code == status, (name, r.text)
    error = r.json()["error"]
    assert isinstance(error, str) and words in error
    assert requests.get(server.url + "/health", timeout=5).json()["status"] == "UP"


def test_401_from_label_studio_and_no_token_to_other_hosts(checkpoint, label_studio) -> None:
    other = StubServer().start()
    png, _ = scene()
    other.file("/img.png", png)
    wrong = Server(settings_for(checkpoint, label_studio, label_studio_api_key="0" * 40, allow_private_urls=True))
    try:
        r = requests.post(wrong.url + "/predict", json=body(CLICKS[:1]), timeout=30)
        assert r.status_code == 502 and "LABEL_STUDIO_API_KEY" in r.json()["error"]
        r = requests.post(wrong.url + "/predict", json=body(CLICKS[:1], image=other.url + "/img.png"), timeout=30)
        assert r.status_code == 200, r.text
        assert other.count("/img.png") == 1 and other.authorizations() == [None]  # no token left our hands
        r = requests.post(wrong.url + "/predict", json=body(CLICKS[:1], image="http://127.0.0.1:9/x.png"),
                          timeout=30)
        assert r.status_code in (502, 504) and "127.0.0.1:9" in r.json()["error"]  # unreachable
        assert requests.get(wrong.url + "/health", timeout=5).status_code == 200
    finally:
        wrong.stop()
        other.stop()


def test_basic_auth(checkpoint, label_studio) -> None:
    s = Server(settings_for(checkpoint, label_studio, basic_auth_user="ls", basic_auth_pass="secret"))
    try:
        assert requests.post(s.url + "/setup", json={}, timeout=5).status_code == 401
        assert requests.post(s.url + "/setup", json={}, auth=("ls", "wrong"), timeout=5).status_code == 401
        assert requests.post(s.url + "/setup", json={}, auth=("ls", "secret"), timeout=5).status_code == 200
        assert requests.get(s.url + "/health", timeout=5).status_code == 200  # open for Label Studio's probe
        # With basic auth set, /webhook is no longer open: basic auth (Label Studio's ML client) works.
        assert requests.post(s.url + "/webhook", json={"action": "X"}, timeout=5).status_code == 401
        assert requests.post(s.url + "/webhook", json={"action": "X"}, auth=("ls", "secret"),
                             timeout=5).status_code == 200
    finally:
        s.stop()


def test_webhook_stores_removes_and_rejects(server) -> None:
    from backend.ls.rle import encode_mask

    _, obj = scene()
    region = {"id": "r1", "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": W,
              "original_height": H, "image_rotation": 0,
              "value": {"format": "rle", "rle": encode_mask(obj), "brushlabels": ["Object"]}}
    created = {"action": "ANNOTATION_CREATED", "project": {"id": 3, "label_config": CONFIG},
               "task": {"id": 7, "data": {"image": "/data/upload/1/scene.png"}},
               "annotation": {"id": 11, "task": 7, "project": 3, "result": [region], "was_cancelled": False}}
    r = requests.post(server.url + "/webhook", json=created, timeout=5)
    assert r.status_code == 200 and r.json()["stored"] == 1
    assert requests.post(server.url + "/webhook", json=created, timeout=5).json()["stored"] == 1  # idempotent
    r = requests.post(server.url + "/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 11}]},
                      timeout=5)
    assert r.status_code == 200 and r.json()["removed"] == 1
    bad = {"action": "ANNOTATION_CREATED", "annotation": {"id": "x"}}
    r = requests.post(server.url + "/webhook", json=bad, timeout=5)
    assert r.status_code == 400 and r.json()["error"]
    assert requests.post(server.url + "/webhook", data=b"{", headers={"Content-Type": "application/json"},
                         timeout=5).status_code == 400


def test_an_error_label_studio_shows_carries_the_reason(checkpoint, label_studio) -> None:
    # Started before Label Studio existed: no LABEL_STUDIO_URL. Label Studio shows the annotator only str() of
    # requests' HTTPError for a failed /predict, so the reason must be in the status line, not just the body.
    s = Server(settings_for(checkpoint, label_studio, label_studio_url=None, label_studio_api_key=None))
    try:
        r = requests.post(s.url + "/predict", json=body(CLICKS), timeout=30)
        assert r.status_code == 400 and "LABEL_STUDIO_URL is not set" in r.json()["error"]
        with pytest.raises(requests.HTTPError) as shown:
            r.raise_for_status()  # what Label Studio's ML API client does
        assert "LABEL_STUDIO_URL is not set" in str(shown.value) and "400 Client Error" in str(shown.value)
        assert "BAD REQUEST" not in str(shown.value)
    finally:
        s.stop()


def test_reason_phrase_is_one_safe_line() -> None:
    from backend.app import reason_phrase

    text = reason_phrase("bad\\r\\nSet-Cookie: x=1\r\nnext line \u00e9\u2028 " + "y" * 500)
    assert "\r" not in text and "\n" not in text and len(text) <= 300 and text.isascii()
    assert text.startswith("bad\\r\\nSet-Cookie: x=1 next line ?") and text.endswith("...")
    assert reason_phrase("") == "error"
