"""The backend's one LRU cache: bounded by bytes (and count), least recently used out first, thread-safe."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from backend.common.cache import LRUCache


def blobs(max_bytes: int, max_items: int | None = None) -> LRUCache[str, bytes]:
    return LRUCache(max_bytes, len, max_items=max_items)


def test_the_least_recently_used_values_go_first_when_bytes_run_out() -> None:
    cache = blobs(10)
    assert cache.put("a", b"1234") and cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recently used
    assert cache.put("c", b"1234")  # 12 bytes: b goes
    assert cache.get("b") is None and cache.get("a") == b"1234" and cache.get("c") == b"1234"
    assert (len(cache), cache.nbytes) == (2, 8)


def test_replacing_a_key_counts_its_bytes_once() -> None:
    cache = blobs(10)
    cache.put("a", b"12345678")
    cache.put("a", b"12")
    assert (len(cache), cache.nbytes, cache.get("a")) == (1, 2, b"12")


def test_a_value_larger_than_the_cache_is_not_kept_and_changes_nothing() -> None:
    cache = blobs(10)
    cache.put("a", b"old")
    assert not cache.put("a", b"x" * 11)
    assert (cache.get("a"), cache.nbytes) == (b"old", 3)


def test_the_count_bound_and_a_cache_of_nothing() -> None:
    cache = blobs(1000, max_items=2)
    for key in "abc":
        cache.put(key, b"1")
    assert ("a" in cache, "b" in cache, "c" in cache) == (False, True, True)
    off = blobs(1000, max_items=0)
    assert not off.put("a", b"1") and len(off) == 0
    with pytest.raises(ValueError):
        LRUCache(-1, len)


def test_sizes_come_from_the_size_function_and_clear_empties() -> None:
    cache: LRUCache[tuple, np.ndarray] = LRUCache(100, lambda a: a.nbytes)
    cache.put(("x",), np.zeros(60, np.uint8))
    cache.put(("y",), np.zeros(60, np.uint8))
    assert cache.get(("x",)) is None and cache.nbytes == 60
    cache.clear()
    assert (len(cache), cache.nbytes) == (0, 0)


def test_threads_sharing_one_cache_keep_its_bounds_and_byte_count() -> None:
    cache = blobs(500)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(2000):
            key = str(int(rng.integers(0, 50)))
            if rng.random() < 0.5:
                cache.put(key, b"x" * int(rng.integers(1, 40)))
            else:
                cache.get(key)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = [cache.get(str(k)) for k in range(50)]
    assert cache.nbytes == sum(len(v) for v in kept if v is not None) <= 500
