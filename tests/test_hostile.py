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

from backend import safe_http
from backend.safe_http import UnsafeURLError, check_url, is_public_address, origin
from model import save_checkpoint

PNG, OBJ = scene()
UPLOAD = "/data/upload/1/scene.png"


@pytest.fixture(scope="module")
def checkpoint(tiny_net, tmp_path_factory) -> Path:
    return save_checkpoint(tiny_net, tmp_path_factory.mktemp("ck") / "tiny.pth", meta={"model_version": "tiny-1"})


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
