"""Hostile input over real HTTP: URL tricks that would send the Label Studio token elsewhere or reach private
hosts, DNS rebinding, and the service's answer afterwards.

Hosts: the stand-in Label Studio and an "internal" service listen on 127.0.0.1; a "foreign" host listens on
127.0.0.2. Where a test needs a public host, the address policy is patched so that 127.0.0.2 counts as public
(everything else on loopback stays private), which is the only way to have a "public" host on one machine.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from ls_stub import FakeLabelStudio, Response, StubServer
from support import Server, body, keypoint, mask_of, scene, settings_for

from backend.images import safe_http
from backend.images.safe_http import UnsafeURLError, check_url, is_public_address, origin

PNG, OBJ = scene()
UPLOAD = "/data/upload/1/scene.png"


@pytest.fixture(scope="module")
def ls() -> Iterator[FakeLabelStudio]:
    server = FakeLabelStudio().start()
    server.protected_file(UPLOAD, PNG)
    yield server
    server.stop()


@pytest.fixture
def foreign() -> Iterator[StubServer]:
    server = StubServer(host="127.0.0.2").start()
    server.file("/x.png", PNG)
    yield server
    server.stop()


@pytest.fixture
def internal() -> Iterator[StubServer]:
    server = StubServer().start()
    server.file("/secret.png", PNG)
    yield server
    server.stop()


@pytest.fixture
def loopback2_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_http, "is_public_address", lambda address: address == "127.0.0.2")


@pytest.fixture(scope="module")
def open_backend(checkpoint, ls) -> Iterator[Server]:
    """ALLOW_PRIVATE_URLS=true: only the URL rules stand between a trick URL and the token."""
    server = Server(settings_for(checkpoint, ls, allow_private_urls=True))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded_backend(checkpoint, ls) -> Iterator[Server]:
    """The default: private hosts refused."""
    server = Server(settings_for(checkpoint, ls))
    yield server
    server.stop()


def predict(server: Server, image: str) -> requests.Response:
    return requests.post(server.url + "/predict", json=body([keypoint(80, 60)], image=image), timeout=60)


def assert_still_serving(server: Server) -> None:
    assert requests.get(server.url + "/health", timeout=10).json()["model_ready"]
    r = predict(server, UPLOAD)
    assert r.status_code == 200
    mask = mask_of(r)
    assert mask[60, 80] and (mask & OBJ).sum() > 0.5 * mask.sum()  # the clicked object, not the background


def no_token_left_label_studio(ls: FakeLabelStudio, *others: StubServer) -> None:
    for other in others:
        assert all(a is None for a in other.authorizations()), "the token reached another host"
    tokens = {ls.legacy_token, ls.pat}
    for other in others:
        for request in other.requests:
            assert not any(t in str(request.headers) or t in request.path for t in tokens)


def trick_urls(ls: FakeLabelStudio, foreign: StubServer) -> list[str]:
    f, l_ = f"127.0.0.2:{foreign.port}", f"127.0.0.1:{ls.port}"
    return [
        f"http://{f}\\@{l_}{UPLOAD}",  # urllib.parse: Label Studio; urllib3: foreign
        f"HTTP://{f}\\@{l_}{UPLOAD}",  # mixed case scheme
        f"http://{f}%5C@{l_}{UPLOAD}",  # encoded backslash: user info
        f"http://{f}\\\\@{l_}{UPLOAD}",
        f"http://{f}/\\@{l_}{UPLOAD}",
        f"http://{l_}@{f}/x.png",  # plain user info
        f"http://{f}\t@{l_}{UPLOAD}",  # control character
        f"http://{f} @{l_}{UPLOAD}",  # whitespace
    ]


def test_url_rules() -> None:
    assert check_url("HTTP://Example.COM:80/a b".replace(" ", "%20")) == "http://example.com:80/a%20b"
    for bad in ("http://a\\@b/", "http://u:p@h/", "ftp://h/", "http://h\x00/", "http:///x", "http://h%41/",
                "http://h:99999/", "http://bü.de/", "//h/x"):
        with pytest.raises(UnsafeURLError):
            check_url(bad)
    assert origin("http://[::1]:8080/x") == ("http", "::1", 8080)
    assert origin("http://a:1\\@b:2/") is None


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("127.0.0.1", False), ("10.1.2.3", False), ("::ffff:127.0.0.1", False),
     ("::127.0.0.1", False), ("::10.0.0.1", False), ("::8.8.8.8", True), ("fec0::1", False),
     ("fe80::1%eth0", False), ("64:ff9b::10.0.0.1", False), ("64:ff9b::8.8.8.8", True),
     ("2002:7f00:1::", False), ("2001:0:4136:e378:8000:63bf:80ff:fffe", False), ("ff02::1", False),
     ("2606:4700:4700::1111", True)],
)
def test_address_policy(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_trick_urls_never_send_the_token_elsewhere(open_backend, ls, foreign) -> None:
    for url in trick_urls(ls, foreign):
        r = predict(open_backend, url)
        assert r.status_code == 400, (url, r.status_code, r.text)
        assert "URL" in r.json()["error"]
    assert foreign.requests == []
    no_token_left_label_studio(ls, foreign)
    assert_still_serving(open_backend)


def test_redirect_to_a_trick_url_is_refused(open_backend, ls, foreign) -> None:
    for i, target in enumerate(trick_urls(ls, foreign)[:3]):
        ls.route(re.escape(f"/data/upload/1/hop{i}.png"), lambda request, t=target: Response(302, b"", {"Location": t}))
        r = predict(open_backend, f"/data/upload/1/hop{i}.png")
        assert r.status_code == 400 and "redirect" in r.json()["error"], r.text
    assert foreign.requests == []
    no_token_left_label_studio(ls, foreign)


def test_redirect_from_label_studio_to_a_foreign_host_drops_the_token(open_backend, ls, foreign) -> None:
    ls.route(re.escape("/data/upload/1/away.png"),
             lambda request: Response(302, b"", {"Location": f"http://127.0.0.2:{foreign.port}/x.png"}))
    r = predict(open_backend, "/data/upload/1/away.png")
    assert r.status_code == 200 and len(foreign.requests) == 1
    no_token_left_label_studio(ls, foreign)


def test_private_guard_cannot_be_bypassed(guarded_backend, ls, foreign, internal, loopback2_is_public) -> None:
    f, i = f"127.0.0.2:{foreign.port}", f"127.0.0.1:{internal.port}"
    assert predict(guarded_backend, f"http://{f}/x.png").status_code == 200  # a public host is fetched
    for url in (f"http://{i}\\@{f}/x.png", f"http://{i}%5C@{f}/x.png", f"http://{f}@{i}/secret.png"):
        assert predict(guarded_backend, url).status_code == 400, url
    assert predict(guarded_backend, f"http://{i}/secret.png").status_code == 403
    # A public host that redirects to the internal one, plainly or with the backslash trick.
    foreign.route(re.escape("/r1.png"), lambda request: Response(302, b"", {"Location": f"http://{i}/secret.png"}))
    foreign.route(re.escape("/r2.png"), lambda request: Response(
        302, b"", {"Location": f"http://{i}\\@{f}/x.png"}))
    foreign.route(re.escape("/r3.png"), lambda request: Response(
        302, b"", {"Location": f"http://localhost:{internal.port}/secret.png"}))
    assert predict(guarded_backend, f"http://{f}/r1.png").status_code == 403
    assert predict(guarded_backend, f"http://{f}/r2.png").status_code == 400
    assert predict(guarded_backend, f"http://{f}/r3.png").status_code == 403
    assert internal.requests == []
    no_token_left_label_studio(ls, foreign, internal)
    assert_still_serving(guarded_backend)


def test_dns_rebinding_has_no_window(guarded_backend, ls, internal, loopback2_is_public, monkeypatch) -> None:
    """The name answers a public address and a private one in turn; each connection uses what it checked."""
    public = StubServer(host="127.0.0.2")
    try:
        public._server.server_close()
        from ls_stub import _Handler, _Server

        public._server = _Server(("127.0.0.2", internal.port), _Handler)  # the same port on both addresses
        public._server.stub = public
        public.start()
    except OSError:
        pytest.skip("port not free on 127.0.0.2")
    public.file("/a.png", PNG)
    public.file("/b.png", PNG)
    answers = iter(["127.0.0.2", "127.0.0.1"] * 20)
    lock = threading.Lock()

    def rebinding(host: str, port: int):
        import socket

        with lock:
            address = next(answers) if host == "rebind.test" else "127.0.0.1"
        return [(socket.AF_INET, (address, port))]

    monkeypatch.setattr(safe_http, "_system_resolver", rebinding)
    try:
        statuses = [predict(guarded_backend, f"http://rebind.test:{internal.port}/{n}.png").status_code
                    for n in ("a", "b", "secret")]
    finally:
        public.stop()
    assert statuses[0] == 200  # public answer: fetched from the public address
    assert set(statuses[1:]) <= {200, 403, 422}  # the public host again (422: no such file there), or refused
    assert internal.requests == []


def test_errors_do_not_tell_open_ports_from_closed(guarded_backend, internal) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, not listening: connections are refused
        answers = []
        for port in (internal.port, closed):
            r = predict(guarded_backend, f"http://127.0.0.1:{port}/secret.png")
            answers.append((r.status_code, r.json()["error"].replace(str(port), "PORT")))
    assert answers[0] == answers[1] and answers[0][0] == 403
    assert internal.requests == []


# -- /webhook: authenticated, JSON only, bounded -----------------------------------------------------------------------

SECRET = "s3cret-" + "x" * 20


@pytest.fixture(scope="module")
def secret_backend(checkpoint, ls) -> Iterator[Server]:
    server = Server(settings_for(checkpoint, ls, webhook_secret=SECRET, webhook_max_delete=100, max_request_mb=8))
    yield server
    server.stop()


def created(annotation_id: int = 11, task_id: int = 7) -> dict:
    from support import CONFIG, H, W

    from backend.ls.rle import encode_mask

    region = {"id": "r1", "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": W,
              "original_height": H, "image_rotation": 0,
              "value": {"format": "rle", "rle": encode_mask(OBJ), "brushlabels": ["Object"]}}
    return {"action": "ANNOTATION_CREATED", "project": {"id": 3, "label_config": CONFIG},
            "task": {"id": task_id, "data": {"image": UPLOAD}},
            "annotation": {"id": annotation_id, "task": task_id, "project": 3, "result": [region],
                           "was_cancelled": False}}


def hook(server: Server, payload, secret: str | None = SECRET, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if secret is not None:
        headers["X-Webhook-Secret"] = secret
    if isinstance(payload, bytes | str):
        return requests.post(server.url + "/webhook", data=payload, headers=headers, timeout=30, **kwargs)
    return requests.post(server.url + "/webhook", json=payload, headers=headers, timeout=30, **kwargs)


def test_webhook_needs_the_secret_and_json(secret_backend) -> None:
    import json

    assert hook(secret_backend, created(), secret=None).status_code == 401
    assert hook(secret_backend, created(), secret="wrong").status_code == 401
    # What any web page could send: a "simple" text/plain POST, which a browser sends without a CORS preflight.
    plain = hook(secret_backend, json.dumps(created()), headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    r = hook(secret_backend, created())
    assert r.status_code == 200 and r.json()["stored"] == 1
    assert_still_serving(secret_backend)


def test_a_huge_delete_is_refused_and_loses_nothing(secret_backend) -> None:
    assert hook(secret_backend, created(21, 8)).json()["stored"] == 1
    ids = [{"id": i} for i in range(100_000)]
    r = hook(secret_backend, {"action": "ANNOTATIONS_DELETED", "annotations": ids})
    assert r.status_code == 413 and "nothing was deleted" in r.json()["error"]
    r = hook(secret_backend, {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 21}]})
    assert r.status_code == 200 and r.json()["removed"] == 1  # the sample was still there


def test_bodies_over_the_limit_are_refused(secret_backend) -> None:
    big = b'{"action": "X", "pad": "' + b"a" * (9 << 20) + b'"}'
    r = hook(secret_backend, big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = requests.post(secret_backend.url + "/predict", data=big, headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 413
    assert_still_serving(secret_backend)


# -- memory: claimed sizes, 16-bit images ----------------------------------------------------------------------------


def test_claimed_size_is_not_trusted(guarded_backend) -> None:
    import time

    click = keypoint(80, 60)
    click["original_width"] = click["original_height"] = 100_000
    t0 = time.perf_counter()
    r = requests.post(guarded_backend.url + "/predict", json=body([click]), timeout=60)
    assert time.perf_counter() - t0 < 10
    assert r.status_code == 200
    region = r.json()["results"][0]["result"][0]
    assert (region["original_width"], region["original_height"]) == (160, 120)  # the decoded image's size


def test_sixteen_bit_images_are_served(guarded_backend, ls) -> None:
    import io

    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(PNG)).convert("L"), np.uint16) * 257
    for fmt in ("PNG", "TIFF"):
        buffer = io.BytesIO()
        sixteen = Image.fromarray(grey)  # uint16 -> mode I;16
        assert sixteen.mode == "I;16"
        sixteen.save(buffer, fmt)
        path = f"/data/upload/1/sixteen.{fmt.lower()}"
        ls.protected_file(path, buffer.getvalue(), "image/" + fmt.lower())
        r = predict(guarded_backend, path)
        assert r.status_code == 200, r.text
        assert mask_of(r)[60, 80]


# -- 400, not 500 -----------------------------------------------------------------------------------------------------


def test_malformed_numbers_ids_nesting_and_labels_are_400(secret_backend) -> None:
    import json

    text = json.dumps(body([keypoint(80, 60)])).replace('"x": 50.0', '"x": ' + "9" * 400)
    assert "9" * 400 in text
    r = requests.post(secret_backend.url + "/predict", data=text, headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 400 and "finite number" in r.json()["error"]
    r = hook(secret_backend, created(10**30))
    assert r.status_code == 400
    deep = "[" * 100_000 + "]" * 100_000
    for route in ("/predict", "/webhook"):
        r = requests.post(secret_backend.url + route, data=deep,
                          headers={"Content-Type": "application/json", "X-Webhook-Secret": SECRET}, timeout=30)
        assert r.status_code == 400, (route, r.status_code)
    label = "L" * (1 << 20)
    r = requests.post(secret_backend.url + "/predict", json=body([keypoint(80, 60, label=label)]), timeout=30)
    assert r.status_code == 400 and len(r.content) < 2000  # not echoed
    assert_still_serving(secret_backend)


def test_disk_full_on_webhook_is_507_and_serving_goes_on(secret_backend, monkeypatch) -> None:
    import errno

    from backend.learning.store import TrainingStore

    def full(self, event):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TrainingStore, "replace_annotation", full)
    r = hook(secret_backend, created(31, 9))
    assert r.status_code == 507 and "storage is full" in r.json()["error"]
    assert_still_serving(secret_backend)


# -- the learning path -----------------------------------------------------------------------------------------------


def test_old_versions_are_pruned(tmp_path: Path) -> None:
    from backend.learning.versions import prune_versions

    (tmp_path / "versions").mkdir()
    promoted = []
    for n in range(1, 8):
        (tmp_path / "versions" / f"b-v{n}.pth").write_bytes(b"x")
        promoted.append({"version": f"b-v{n}", "checkpoint": f"versions/b-v{n}.pth"})
    promoted.append({"version": "evil", "checkpoint": "../outside.pth"})  # never followed outside versions/
    (tmp_path.parent / "outside.pth").write_bytes(b"x")
    assert prune_versions(tmp_path, promoted, 3) == ["b-v1", "b-v2", "b-v3", "b-v4", "b-v5"]
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == ["b-v6.pth", "b-v7.pth"]
    assert (tmp_path.parent / "outside.pth").exists()
    assert prune_versions(tmp_path, promoted, 0) == []


def test_a_fit_job_does_not_outlive_the_app(tmp_path: Path) -> None:
    """The app is SIGTERMed while its fit job runs: the job process ends too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    app = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os, time\\n"
        "from backend.learning.job import exit_with_parent\\n"
        "exit_with_parent(os.getppid(), 0.2)\\n"
        "time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n")], cwd=root, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)})
    child = int(app.stdout.readline())
    time.sleep(8.0)  # the child imports torch before it watches
    app.send_signal(signal.SIGTERM)
    app.wait(10)
    def alive(pid: int) -> bool:  # a zombie (exited, not yet reaped by whoever adopted it) counts as gone
        try:
            return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
        except FileNotFoundError:
            return False

    deadline = time.time() + 20
    while time.time() < deadline and alive(child):
        time.sleep(0.1)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the job process outlived the app")


# -- fairness under load -----------------------------------------------------------------------------------------------


def test_one_request_may_not_carry_many_clicked_tasks(guarded_backend) -> None:
    payload = body([keypoint(80, 60)])
    payload["tasks"] = [{"id": 7 + i, "data": {"image": UPLOAD}} for i in range(8)]
    r = requests.post(guarded_backend.url + "/predict", json=payload, timeout=30)
    assert r.status_code == 413 and "MAX_INTERACTIVE_TASKS" in r.json()["error"]
    assert_still_serving(guarded_backend)


def test_overload_is_shed_quickly_and_accepted_clicks_are_answered(checkpoint, ls) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    server = Server(settings_for(checkpoint, ls, max_queue_wait_s=0.3, flip=True))
    try:
        assert predict(server, UPLOAD).status_code == 200  # times one job

        def click(i: int) -> tuple[int, float, str | None]:
            t0 = time.perf_counter()
            r = requests.post(server.url + "/predict", json=body([keypoint(80, 60), keypoint(5 + i % 20, 5, False)]),
                              timeout=60)
            return r.status_code, time.perf_counter() - t0, r.headers.get("Retry-After")

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(click, range(96)))
        statuses = {s for s, _, _ in answers}
        assert statuses <= {200, 503}, statuses  # no other error
        shed = [(t, ra) for s, t, ra in answers if s == 503]
        assert shed and all(ra and int(ra) >= 1 for _, ra in shed)
        assert max(t for t, _ in shed) < 1.0  # refused at admission, not after a wait
        accepted = [t for s, t, _ in answers if s == 200]
        assert len(accepted) >= 3 and max(accepted) < 10.0  # answered well within REQUEST_TIMEOUT (60 s)
        assert_still_serving(server)
    finally:
        server.stop()


def test_jobs_past_their_deadline_are_dropped_unrun() -> None:
    import time

    from backend.serve.worker import InferenceWorker

    worker = InferenceWorker(lambda: (__import__("torch").nn.Identity(), "v"), {}, queue_size=8).start()
    worker.wait_ready(30)
    ran = []
    gate = worker.submit(lambda: time.sleep(0.3))
    late = worker.submit(lambda: ran.append(1), deadline=time.monotonic() + 0.05)
    gate.result(5)
    with pytest.raises(Exception, match="deadline"):
        late.result(5)
    assert ran == [] and worker.dropped == 1
