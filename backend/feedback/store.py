"""Feedback store: the predictor state after each click, per task, object and click sequence.

Keys are chained hashes over (project, task, image, label, model version) and then each click in
order, so the state of every prefix of a click sequence has its own key. A request looks up the
longest stored prefix of its clicks and runs the network only for the clicks after it; an empty
store just means a replay from the first click. So the answer never depends on what the store holds.

``FeedbackStore`` is the interface; :class:`MemoryFeedbackStore` is the in-process default and
:class:`backend.feedback.redis_store.RedisFeedbackStore` (with ``REDIS_URL``) shares states between replicas.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Protocol

from backend.common.cache import LRUCache
from model import Click


class FeedbackStore(Protocol):
    shared: bool  # other processes read what this one writes (written before answering, see StateCache)

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...


def prefix_keys(scope: tuple, clicks: list[Click]) -> list[str]:
    """Keys of the click prefixes 1..n under ``scope`` (project, task, image, label, model version)."""
    h = hashlib.blake2b(repr(scope).encode(), digest_size=16)
    keys = []
    for c in clicks:
        h = h.copy()
        h.update(struct.pack("<dd?", c.x, c.y, c.positive))
        keys.append("fb:" + h.hexdigest())
    return keys


class MemoryFeedbackStore:
    """Thread-safe LRU of serialized states, bounded by total bytes (:class:`backend.common.cache.LRUCache`)."""

    shared = False

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._cache: LRUCache[str, bytes] = LRUCache(max_bytes, len)

    def get(self, key: str) -> bytes | None:
        return self._cache.get(key)

    def put(self, key: str, value: bytes) -> None:
        self._cache.put(key, value)  # a state larger than the whole store is not kept

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def nbytes(self) -> int:
        return self._cache.nbytes
