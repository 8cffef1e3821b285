"""Predictor states in front of a feedback store: recent ones decoded in process, writes off the request path.

Serializing a state (zlib of two HxW uint8 maps, about 10 ms on a 1-megapixel image on this CPU) and
decompressing it on the next click (about 5 ms) used to sit on every click's response path. Neither has to:

* :meth:`StateCache.save` keeps the live state in a small in-process LRU (bounded by bytes) and hands the
  serialization and the store write to one background thread, so the answer leaves at once;
* :meth:`StateCache.get` answers from that LRU first (no decoding), then from the store (decoded).

A store shared by replicas (``store.shared``, i.e. Redis) is written *before* the answer instead: a client may send
the next click the moment it has the answer, to another replica, which must find the state there (measured with
``benchmarks/load.py``: written after the answer, 1.8 network passes per click at 2 replicas instead of 1).

A resumed click reads only ``feedback``, ``roi_map``, ``roi`` and ``clicks`` of a state, which are identical in a
live and in a decoded state, so where a state comes from never changes the answer. A state that is neither in the
LRU nor written yet (another replica asking within milliseconds of the previous answer, a full queue, a dead
Redis) is a miss, and a miss is a replay with the same mask.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from backend.common.cache import LRUCache
from backend.feedback.store import FeedbackStore
from model import PredictorState

log = logging.getLogger(__name__)


class StateCache:
    """``get``/``save`` predictor states under feedback keys (see :func:`backend.feedback.store.prefix_keys`).

    Args:
        store: where serialized states live (in-process LRU or Redis); written by the background thread, or at
            once when ``store.shared`` is true.
        hot_bytes: memory for decoded recent states (the maps' bytes); 0 disables the in-process layer.
        queue_size: states waiting to be written; when full, :meth:`save` writes synchronously (back-pressure
            instead of dropping).
    """

    def __init__(self, store: FeedbackStore, hot_bytes: int = 64 << 20, queue_size: int = 64) -> None:
        self.store = store
        self.write_behind = not getattr(store, "shared", False)
        self.hot_bytes = hot_bytes
        self._hot: LRUCache[str, PredictorState] = LRUCache(hot_bytes, lambda state: state.nbytes)
        self._queue: queue.Queue[tuple[str, PredictorState] | None] = queue.Queue(queue_size)
        self.written = 0  # states written to the store
        self.write_ms = 0.0  # total time spent serializing and writing them
        self._thread = threading.Thread(target=self._writer, name="feedback-writer", daemon=True)
        self._thread.start()

    def get(self, key: str) -> PredictorState | None:
        """The state stored under ``key`` (decoded), or None. Never raises for an unreadable blob."""
        state = self._hot.get(key)
        if state is not None:
            return state
        blob = self.store.get(key)
        if blob is None:
            return None
        try:
            return PredictorState.from_bytes(blob)
        except ValueError:
            log.warning("dropping an unreadable stored feedback state")
            return None

    def save(self, key: str, state: PredictorState) -> None:
        """Keep ``state`` under ``key``: at once in process; in the store shortly after (background thread), or
        before returning for a shared store."""
        self._hot.put(key, state)  # a state larger than hot_bytes is not kept in process
        if not self.write_behind:
            self._write(key, state)
            return
        try:
            self._queue.put_nowait((key, state))
        except queue.Full:
            self._write(key, state)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every saved state is in the store; False on timeout (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def __len__(self) -> int:
        return len(self._hot)

    def _write(self, key: str, state: PredictorState) -> None:
        t0 = time.perf_counter()
        try:
            self.store.put(key, state.to_bytes())
        except Exception:  # a store that raises must not kill the writer; the state is only a cache
            log.exception("could not store a feedback state")
            return
        self.written += 1
        self.write_ms += (time.perf_counter() - t0) * 1000

    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is not None:
                    self._write(*item)
            finally:
                self._queue.task_done()
