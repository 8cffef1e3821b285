"""The one in-process LRU cache of the backend: bounded by the bytes of its values (and optionally their count).

Used for the in-process feedback store (serialized states), the decoded recent states in front of any store, and
decoded images. Thread-safe: every operation holds one lock, so web threads, the writer thread and the prefetch
thread may share one cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """Least recently used values under keys, at most ``max_bytes`` in total (and ``max_items`` values).

    Args:
        max_bytes: the most bytes (``size`` of every value, summed) kept; a value larger than this alone is never
            kept (:meth:`put` returns False and leaves what the key held).
        size: a value's bytes (e.g. ``len`` of a blob, ``nbytes`` of an array).
        max_items: the most values kept (None: no count limit; 0: nothing is kept).
    """

    def __init__(self, max_bytes: int, size: Callable[[V], int], max_items: int | None = None) -> None:
        if max_bytes < 0 or (max_items is not None and max_items < 0):
            raise ValueError("max_bytes and max_items must be >= 0")
        self.max_bytes = int(max_bytes)
        self.max_items = max_items
        self._size = size
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            self._data.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V) -> bool:
        """Keep ``value`` under ``key`` as the most recently used, evicting the least recently used ones beyond the
        bounds. Returns False, keeping nothing and changing nothing, when the value alone exceeds the bounds."""
        size = int(self._size(value))
        if size > self.max_bytes or self.max_items == 0:
            return False
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes or (self.max_items is not None and len(self._data) > self.max_items):
                _, (_, evicted) = self._data.popitem(last=False)
                self._bytes -= evicted
        return True

    def clear(self) -> None:
        """Drop every value."""
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    @property
    def nbytes(self) -> int:
        """Bytes of the values kept."""
        return self._bytes
