"""Feedback states in a real Redis: the store itself, and two backend processes sharing one Redis over HTTP.

Every test runs against a ``redis-server`` child process (``tests/redis_proc.py``), never a mock.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from ls_stub import FakeLabelStudio
from redis_proc import Backend, RedisServer, child_env, free_port, redis_server_binary
from support import Server, body, keypoint, mask_of, scene, settings_for

from backend.common.redis_client import redact_url
from backend.feedback.redis_store import RedisFeedbackStore, make_feedback_store
from backend.feedback.store import MemoryFeedbackStore, prefix_keys
from backend.settings import Settings
from model import Click, save_checkpoint

LOGGER = "backend.feedback.redis_store"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def keys(n: int = 3) -> list[str]:
    return prefix_keys((3, 7, "image-sha", "image", "Object", "v1"), [Click(10.0 * i, 5.0, i % 2 == 0)
                                                                     for i in range(n)])


def outage_lines(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(1 for r in caplog.records if r.name == LOGGER and words in r.getMessage())


# ------------------------------------------------------------------------------------------------ the store itself
def test_put_get_under_prefix_with_ttl(redis_server: RedisServer) -> None:
    store = RedisFeedbackStore(redis_server.url, ttl_s=100, prefix="test1:")
    k = keys()
    assert store.get(k[0]) is None
    store.put(k[0], b"\x00state-1")
    store.put(k[1], b"state-2")
    assert store.get(k[0]) == b"\x00state-1" and store.get(k[1]) == b"state-2" and store.get(k[2]) is None
    raw = redis_server.client()
    # The in-process store's key (``fb:<hash>``), behind the namespace prefix, with the TTL.
    assert k[0].startswith("fb:") and raw.get("test1:" + k[0]) == b"\x00state-1"
    assert 90 <= raw.ttl("test1:" + k[0]) <= 100
    assert sorted(raw.keys("test1:*")) == sorted(f"test1:{x}".encode() for x in k[:2])

    forever = RedisFeedbackStore(redis_server.url, ttl_s=0, prefix="test1b:")
    forever.put(k[0], b"x")
    assert raw.ttl("test1b:" + k[0]) == -1  # no expiry: left to Redis' maxmemory policy

    short = RedisFeedbackStore(redis_server.url, ttl_s=1, prefix="test1c:")
    short.put(k[0], b"x")
    assert short.get(k[0]) == b"x"
    time.sleep(1.2)
    assert short.get(k[0]) is None and store.available


def test_factory_and_settings(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_feedback_store(Settings()), MemoryFeedbackStore)
    for name in ("REDIS_URL", "REDIS_PREFIX", "FEEDBACK_TTL_S"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings.from_env()
    assert defaults.redis_url is None and defaults.feedback_ttl_s == 3600 and defaults.redis_prefix == "fcfi:"
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("FEEDBACK_TTL_S", "60")
    monkeypatch.setenv("REDIS_PREFIX", "ls1:")
    store = make_feedback_store(Settings.from_env())
    assert isinstance(store, RedisFeedbackStore)
    assert (store.ttl_s, store.prefix, store.url) == (60, "ls1:", redis_server.url)
    assert redact_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("redis://user:s3cret@redis:6379/0") == "redis://user:***@redis:6379/0"


def test_unreachable_redis_is_skipped_fast_logged_once_and_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = RedisServer(redis_server_binary(), tmp_path / "redis")  # not started yet: nothing on its port
    store = RedisFeedbackStore(server.url, ttl_s=100, retry_after_s=0.5, log_every_s=3600)
    k = keys()
    t0 = time.monotonic()
    for _ in range(200):
        assert store.get(k[0]) is None
        store.put(k[0], b"lost")  # no exception
    assert time.monotonic() - t0 < 2.0 and not store.available
    assert outage_lines(caplog, "unavailable (") == 1  # one line, not one per request

    server.start()
    try:
        time.sleep(0.6)  # past retry_after_s: the next operation probes Redis again
        store.put(k[1], b"back")
        assert store.available and store.get(k[1]) == b"back"
        assert outage_lines(caplog, "reachable again") == 1
    finally:
        server.stop()


def test_ongoing_outage_is_reported_at_most_every_log_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = RedisFeedbackStore(f"redis://127.0.0.1:{free_port()}/0", retry_after_s=0.05, log_every_s=0.2)
    t0 = time.monotonic()
    calls = 0
    while time.monotonic() - t0 < 0.7:
        store.get("fb:x")
        calls += 1
    assert calls > 10
    assert outage_lines(caplog, "unavailable (") == 1
    assert 1 <= outage_lines(caplog, "still unavailable") <= 4  # ~0.7 s / 0.2 s


def test_hanging_redis_times_out_quickly_then_is_left_alone() -> None:
    # A socket that listens but never answers: connections open (the kernel's backlog), replies never come.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        store = RedisFeedbackStore(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout_s=0.3,
                                   retry_after_s=30)
        t0 = time.monotonic()
        assert store.get("fb:x") is None
        first = time.monotonic() - t0
        assert 0.25 <= first < 2.5, first  # the socket timeout, not redis-py's default 5 s (or its retries)
        t0 = time.monotonic()
        for _ in range(100):
            assert store.get("fb:x") is None
            store.put("fb:x", b"v")
        assert time.monotonic() - t0 < 0.5  # within retry_after_s nobody waits on Redis again


def test_redis_restart_reopens_pooled_connections_without_an_outage(tmp_path: Path) -> None:
    server = RedisServer(redis_server_binary(), tmp_path / "redis").start()
    try:
        store = RedisFeedbackStore(server.url)
        store.put("fb:a", b"1")
        assert store.get("fb:a") == b"1"
        server.stop()
        server.start()  # same port, empty
        assert store.get("fb:a") is None and store.available  # the stale pooled connection was reopened at once
        store.put("fb:a", b"2")
        assert store.get("fb:a") == b"2"
    finally:
        server.stop()


# ------------------------------------------------------------------- two backend processes sharing one Redis, HTTP
@pytest.fixture(scope="module")
def checkpoint(tiny_net, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tiny_net, tmp_path_factory.mktemp("ck") / "tiny.pth", meta={"model_version": "tiny-1"})


@pytest.fixture(scope="module")
def label_studio() -> Iterator[FakeLabelStudio]:
    ls = FakeLabelStudio().start()
    ls.protected_file("/data/upload/1/scene.png", scene()[0])
    yield ls
    ls.stop()


@pytest.fixture(scope="module")
def replicas(checkpoint: Path, label_studio: FakeLabelStudio, redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Backend, Backend]]:
    """Replicas A and B: separate processes, each with its own model and inference worker, one Redis."""
    tmp = tmp_path_factory.mktemp("replicas")
    # The settings test_backend's in-process servers use, so the reference masks are comparable.
    base = child_env(CHECKPOINT=str(checkpoint), LABEL_STUDIO_URL=label_studio.url,
                     LABEL_STUDIO_API_KEY=label_studio.legacy_token, MAX_IMAGE_PIXELS="4000000", FLIP="false",
                     TARGET_SIZE="160", MAX_SIZE="200", TORCH_THREADS="1", REDIS_URL=redis_server.url,
                     FEEDBACK_TTL_S="600",
                     # No decoded states in process memory: every state goes through Redis, which is what these tests
                     # are about (that layer is tested in test_state_cache and test_backend).
                     FEEDBACK_HOT_MB="0")
    started = [Backend(name, tmp, {**base, "MODEL_DIR": str(tmp / f"model-{name}")}) for name in ("A", "B")]
    try:
        for b in started:
            b.wait_ready()
        yield started[0], started[1]
    finally:
        for b in started:
            b.stop()


CLICKS = [keypoint(80, 60), keypoint(5, 5, positive=False), keypoint(100, 70), keypoint(150, 110, positive=False),
          keypoint(60, 50)]


@pytest.fixture(scope="module")
def reference(checkpoint: Path, label_studio: FakeLabelStudio) -> list[np.ndarray]:
    """The masks of a single-process run (in-process store): reference[k] answers clicks 1..k+1."""
    server = Server(settings_for(checkpoint, label_studio))
    try:
        masks = []
        for k in range(1, len(CLICKS) + 1):
            r = requests.post(server.url + "/predict", json=body(CLICKS[:k]), timeout=120)
            assert r.status_code == 200 and r.headers["X-Network-Passes"] == "1", r.text
            masks.append(mask_of(r))
        return masks
    finally:
        server.stop()


def click(replica: Backend, n: int, reference: list[np.ndarray]) -> int:
    """Send clicks 1..n to ``replica``; check the mask against the single-process run; return the network passes."""
    r = requests.post(replica.url + "/predict", json=body(CLICKS[:n]), timeout=120)
    assert r.status_code == 200, (replica.name, r.text)
    np.testing.assert_array_equal(mask_of(r), reference[n - 1])
    return int(r.headers["X-Network-Passes"])


def test_replicas_share_feedback_through_redis(replicas: tuple[Backend, Backend], redis_server: RedisServer,
                                               reference: list[np.ndarray]) -> None:
    a, b = replicas
    redis_server.client().flushall()
    assert click(a, 1, reference) == 1
    assert click(b, 2, reference) == 1  # B resumed from the state A stored (before answering) after click 1
    assert click(a, 3, reference) == 1  # and A from B's
    assert len(redis_server.client().keys("fcfi:fb:*")) == 3  # one state per click, nothing else


def test_redis_outage_mid_session_replays_then_recovers(replicas: tuple[Backend, Backend], redis_server: RedisServer,
                                                        reference: list[np.ndarray]) -> None:
    a, b = replicas
    redis_server.client().flushall()
    assert click(a, 1, reference) == 1
    assert click(b, 2, reference) == 1

    redis_server.stop()
    try:
        t0 = time.monotonic()
        assert click(a, 3, reference) == 3  # no stored feedback reachable: a replay, same mask
        assert click(b, 3, reference) == 3
        assert click(b, 4, reference) == 4
        assert time.monotonic() - t0 < 60
        assert requests.get(a.url + "/health", timeout=5).json()["status"] == "UP"
    finally:
        redis_server.start()  # same port, empty (no persistence)
    time.sleep(1.5)  # past the store's retry interval (1 s): the next click probes Redis again
    assert click(a, 4, reference) == 4  # Redis is back but empty: replay, and the state is stored again
    assert click(b, 5, reference) == 1  # B reads A's state: sharing works again
    for replica in (a, b):
        log = replica.log()
        assert log.count("Redis feedback store at") == 2, log  # one line when it went away, one when it came back
        assert "unavailable" in log and "reachable again" in log
