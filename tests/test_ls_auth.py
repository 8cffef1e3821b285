"""LabelStudioAuth: origin checks, legacy tokens, the PAT exchange and its refresh, over real loopback HTTP."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from ls_stub import LEGACY_TOKEN, FakeLabelStudio, make_jwt

from backend.images.ls_auth import (
    LabelStudioAuth,
    LabelStudioConfigError,
    LabelStudioConnectionError,
    TokenExpiredError,
    TokenRefreshError,
    decode_jwt_claims,
    origin_of,
    same_origin,
)


@pytest.fixture
def ls():
    with FakeLabelStudio() as server:
        yield server


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# -- origins ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("http://localhost:8080", "http://localhost:8080/data/upload/1/x.png", True),
        ("http://LocalHost:8080/", "http://localhost:8080", True),
        ("http://example.com", "http://example.com:80/x", True),
        ("https://example.com/ls", "https://example.com:443/other", True),
        ("http://example.com.", "http://example.com/", True),
        ("http://[::1]:8080", "http://[::1]:8080/x", True),
        ("http://localhost:8080", "http://127.0.0.1:8080", False),
        ("http://localhost:8080", "http://localhost:8081", False),
        ("http://example.com", "https://example.com", False),
        ("http://example.com", "http://example.com.evil.org", False),
        ("http://example.com", "s3://example.com/x", False),
        ("http://example.com:99999", "http://example.com:99999", False),
        ("/data/upload/1/x.png", "/data/upload/1/x.png", False),
    ],
)
def test_same_origin(a: str, b: str, same: bool) -> None:
    assert same_origin(a, b) is same
    assert same_origin(b, a) is same


def test_origin_of_normalises() -> None:
    assert origin_of("HTTPS://Example.COM/x?y") == ("https", "example.com", 443)
    assert origin_of("ftp://example.com") is None


# -- token shapes -----------------------------------------------------------------------------------------------------


def test_decode_jwt_claims() -> None:
    token = make_jwt({"token_type": "refresh", "exp": 123})
    assert decode_jwt_claims(token) == {"token_type": "refresh", "exp": 123}
    assert decode_jwt_claims(LEGACY_TOKEN) is None
    assert decode_jwt_claims("a.b.c") is None
    assert decode_jwt_claims("..") is None


def test_legacy_token_header_only_for_label_studio_origin() -> None:
    auth = LabelStudioAuth("http://ls.example:8080/", f"  Token {LEGACY_TOKEN}\n", 5)
    assert auth.token_kind == "legacy"
    assert auth.base_url == "http://ls.example:8080"
    assert auth.headers_for("http://ls.example:8080/data/upload/1/x.png") == {"Authorization": f"Token {LEGACY_TOKEN}"}
    assert auth.headers_for("http://other.example/x.png") == {}
    assert auth.headers_for("http://ls.example:9000/x.png") == {}
    assert auth.headers_for("https://ls.example:8080/x.png") == {}
    assert LEGACY_TOKEN not in repr(auth)


def test_no_key_and_no_url() -> None:
    auth = LabelStudioAuth(None, None, 5)
    assert not auth.configured and not auth.has_key
    assert auth.auth_header() == {}
    assert auth.headers_for("http://anything/x.png") == {}
    with pytest.raises(LabelStudioConfigError):
        auth.url_for("/data/upload/1/x.png")


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://ls", "http://", "http://u:p@ls:8080", "http://ls:99999"])
def test_bad_base_url(url: str) -> None:
    with pytest.raises(LabelStudioConfigError):
        LabelStudioAuth(url, LEGACY_TOKEN, 5)


def test_url_for_keeps_sub_path() -> None:
    auth = LabelStudioAuth("https://ls.example/label-studio/", LEGACY_TOKEN, 5)
    assert auth.url_for("/data/upload/1/x.png") == "https://ls.example/label-studio/data/upload/1/x.png"


def test_raw_access_token_is_sent_as_bearer_until_it_expires() -> None:
    clock = FakeClock()
    token = make_jwt({"token_type": "access", "exp": int(clock.now) + 100})
    auth = LabelStudioAuth("http://ls.example", token, 5, clock=clock)
    assert auth.token_kind == "access"
    assert auth.auth_header() == {"Authorization": f"Bearer {token}"}
    clock.now += 200
    with pytest.raises(TokenExpiredError) as info:
        auth.auth_header()
    assert token not in str(info.value)


# -- PAT exchange over HTTP -------------------------------------------------------------------------------------------


def test_pat_is_exchanged_cached_and_refreshed_before_exp(ls: FakeLabelStudio) -> None:
    clock = FakeClock()
    auth = LabelStudioAuth(ls.url, ls.pat, 5, clock=clock)
    assert auth.token_kind == "pat" and auth.can_refresh
    first = auth.auth_header()
    assert first["Authorization"].startswith("Bearer ")
    access = first["Authorization"].split(" ", 1)[1]
    assert decode_jwt_claims(access)["token_type"] == "access"
    assert access != ls.pat
    assert auth.auth_header() == first  # cached
    assert ls.refresh_calls == 1
    request = ls.requests[-1]
    assert request.method == "POST" and request.path == "/api/token/refresh/"
    assert request.authorization is None  # the PAT travels in the body, not as a header

    clock.now += ls.access_ttl - 40  # still more than the 30 s margin before exp
    assert auth.auth_header() == first
    clock.now += 20  # now inside the margin: renew
    second = auth.auth_header()
    assert second != first
    assert ls.refresh_calls == 2 and auth.refresh_count == 2


def test_invalidate_drops_only_the_rejected_token(ls: FakeLabelStudio) -> None:
    auth = LabelStudioAuth(ls.url, ls.pat, 5)
    old = auth.auth_header()
    auth.invalidate(old)
    new = auth.auth_header()
    assert new != old and ls.refresh_calls == 2
    auth.invalidate(old)  # a late thread reporting the old token must not force a third exchange
    assert auth.auth_header() == new and ls.refresh_calls == 2


def test_concurrent_callers_share_one_exchange(ls: FakeLabelStudio) -> None:
    ls.refresh_delay = 0.2
    auth = LabelStudioAuth(ls.url, ls.pat, 5)
    headers: list[dict] = []
    threads = [threading.Thread(target=lambda: headers.append(auth.auth_header())) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ls.refresh_calls == 1
    assert len({h["Authorization"] for h in headers}) == 1


def test_rejected_pat(ls: FakeLabelStudio) -> None:
    wrong = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 3600, "jti": "other"})
    auth = LabelStudioAuth(ls.url, wrong, 5)
    with pytest.raises(TokenRefreshError) as info:
        auth.auth_header()
    assert info.value.status == 401
    assert "LABEL_STUDIO_API_KEY" in str(info.value)
    assert wrong not in str(info.value)


def test_expired_pat_fails_without_a_request(ls: FakeLabelStudio) -> None:
    expired = make_jwt({"token_type": "refresh", "exp": int(time.time()) - 10})
    auth = LabelStudioAuth(ls.url, expired, 5)
    with pytest.raises(TokenExpiredError):
        auth.auth_header()
    assert ls.requests == []


def test_unreachable_label_studio() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    auth = LabelStudioAuth(f"http://127.0.0.1:{port}", make_jwt({"token_type": "refresh"}), 2)
    start = time.monotonic()
    with pytest.raises(LabelStudioConnectionError) as info:
        auth.auth_header()
    assert time.monotonic() - start < 2
    assert "LABEL_STUDIO_URL" in str(info.value)


def test_pat_for_label_studio_without_refresh_route() -> None:
    from ls_stub import StubServer

    with StubServer() as old_ls:
        auth = LabelStudioAuth(old_ls.url, make_jwt({"token_type": "refresh"}), 5)
        with pytest.raises(TokenRefreshError) as info:
            auth.auth_header()
    assert info.value.status == 404
