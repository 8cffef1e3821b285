"""Feedback store: the predictor state after each click, per task, object and click sequence.

Keys are chained hashes over (project, task, image, label, model version) and then each click in
order, so the state of every prefix of a click sequence has its own key. A request looks up the
longest stored prefix of its clicks and runs the network only for the clicks after it; an empty
store just means a replay from the first click. So the answer never depends on what the store holds.

``FeedbackStore`` is the interface; :class:`MemoryFeedbackStore` is the in-process default and
:class:`backend.redis_feedback.RedisFeedbackStore` (with ``REDIS_URL``) shares states between replicas.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from typing import Protocol

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
    """Thread-safe LRU of serialized states, bounded by total bytes."""

    shared = False

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._data[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _, evicted = self._data.popitem(last=False)
                self._bytes -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes
