"""The in-process layer of decoded states in front of the feedback store, and the background writer."""

from __future__ import annotations

import threading

import numpy as np

from backend.feedback.state_cache import StateCache
from backend.feedback.store import MemoryFeedbackStore
from model import Click, PredictorState


def state(h: int = 40, w: int = 60, seed: int = 0, n_clicks: int = 1) -> PredictorState:
    rng = np.random.default_rng(seed)
    probs = rng.random((h, w), dtype=np.float32)
    feedback = (probs * 255).round().astype(np.uint8)
    clicks = tuple(Click(float(i), float(i), True) for i in range(n_clicks))
    return PredictorState(clicks, probs, feedback, feedback[::-1].copy(), (0, h - 1, 0, w - 1), f"img-{seed}")


class SlowStore(MemoryFeedbackStore):
    """A store whose writes wait for ``release`` (a slow Redis), counting reads."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.reads = 0

    def get(self, key: str) -> bytes | None:
        self.reads += 1
        return super().get(key)

    def put(self, key: str, value: bytes) -> None:
        assert self.release.wait(10)
        super().put(key, value)


class BrokenStore(MemoryFeedbackStore):
    def put(self, key: str, value: bytes) -> None:
        raise OSError("disk on fire")


def test_save_returns_before_the_store_write_and_get_serves_the_live_state() -> None:
    store = SlowStore()
    cache = StateCache(store)
    s = state()
    cache.save("fb:a", s)  # returns although the store write is blocked
    assert store.get("fb:a") is None
    assert cache.get("fb:a") is s  # from process memory: no store read, no decoding
    assert store.reads == 1  # only the direct check above
    store.release.set()
    assert cache.flush(5)
    assert store.get("fb:a") == s.to_bytes()
    assert cache.written == 1 and cache.write_ms > 0


def test_a_state_from_the_store_equals_the_live_one_where_a_resume_reads() -> None:
    store = MemoryFeedbackStore()
    writer = StateCache(store)
    s = state(seed=3, n_clicks=2)
    writer.save("fb:b", s)
    assert writer.flush(5)
    other = StateCache(store)  # another replica: nothing in its process memory
    got = other.get("fb:b")
    assert got is not None and got is not s
    np.testing.assert_array_equal(got.feedback, s.feedback)
    np.testing.assert_array_equal(got.roi_map, s.roi_map)
    assert got.roi == s.roi and got.clicks == s.clicks and got.image_id == s.image_id
    assert other.get("fb:missing") is None


def test_process_memory_is_bounded_by_bytes_and_evicts_least_recent() -> None:
    one = state().nbytes
    store = SlowStore()  # writes never land: only the in-process layer can answer
    cache = StateCache(store, hot_bytes=2 * one + one // 2)
    a, b, c = state(seed=1), state(seed=2), state(seed=3)
    cache.save("fb:a", a)
    cache.save("fb:b", b)
    assert cache.get("fb:a") is a  # a is now the most recent
    cache.save("fb:c", c)
    assert len(cache) == 2 and cache.get("fb:b") is None
    assert cache.get("fb:a") is a and cache.get("fb:c") is c
    too_big = StateCache(MemoryFeedbackStore(), hot_bytes=one - 1)
    too_big.save("fb:x", a)
    assert len(too_big) == 0 and too_big.flush(5) and too_big.get("fb:x") is not None  # still stored
    store.release.set()


def test_full_queue_writes_synchronously_instead_of_dropping() -> None:
    store = SlowStore()
    cache = StateCache(store, hot_bytes=0, queue_size=1)
    done = threading.Event()

    def save_three() -> None:
        for i in range(3):  # 1 in the writer, 1 queued, the 3rd must wait for room
            cache.save(f"fb:{i}", state(seed=i))
        done.set()

    threading.Thread(target=save_three, daemon=True).start()
    assert not done.wait(0.3)  # back-pressure, not a silent drop
    store.release.set()
    assert done.wait(5) and cache.flush(5)
    assert all(store.get(f"fb:{i}") == state(seed=i).to_bytes() for i in range(3))


def test_a_failing_store_is_logged_and_the_writer_keeps_going(caplog) -> None:
    cache = StateCache(BrokenStore(), hot_bytes=0)
    cache.save("fb:a", state())
    assert cache.flush(5)
    assert "could not store a feedback state" in caplog.text
    good = StateCache(MemoryFeedbackStore(), hot_bytes=0)
    good.save("fb:b", state())
    assert good.flush(5) and good.get("fb:b") is not None


def test_unreadable_blob_is_a_miss() -> None:
    store = MemoryFeedbackStore()
    store.put("fb:bad", b"not a state")
    assert StateCache(store).get("fb:bad") is None


def test_a_shared_store_is_written_before_save_returns() -> None:
    class SharedStore(MemoryFeedbackStore):
        shared = True

    store = SharedStore()
    cache = StateCache(store)
    s = state(seed=5)
    cache.save("fb:s", s)  # no flush: another replica may ask for it the moment the answer is out
    assert store.get("fb:s") == s.to_bytes() and cache.written == 1
    assert cache.get("fb:s") is s
