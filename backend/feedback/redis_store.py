"""Feedback states in Redis, shared by every replica of the service.

With ``REDIS_URL`` set, the compressed predictor state after each click goes to Redis under the same key the
in-process store uses (``fb:<hash>``, see :func:`backend.feedback.store.prefix_keys`) behind a namespace prefix
(``REDIS_PREFIX``, default ``fcfi:``) and with a time to live (``FEEDBACK_TTL_S``). So the next click of a session
may land on any replica and still costs one network pass.

Redis is a cache here, never a dependency: the answer does not depend on what the store holds (a miss means a
replay of the clicks, which gives the identical mask). So when Redis is unreachable, :meth:`RedisFeedbackStore.get`
answers ``None`` and :meth:`RedisFeedbackStore.put` does nothing, and serving goes on. To keep a dead or hanging
Redis from stalling clicks, sockets time out after a fraction of a second and, after a failure, Redis is left alone
for ``retry_after_s`` (one probe per interval, not one per request); the first operation that succeeds again ends
the outage. Outages are logged when they start, at most every ``log_every_s`` while they last, and when they end.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from backend.common.redis_client import connect, redact_url
from backend.feedback.store import FeedbackStore, MemoryFeedbackStore
from backend.settings import Settings

log = logging.getLogger(__name__)


class RedisFeedbackStore:
    """:class:`backend.feedback.store.FeedbackStore` on a Redis server; never raises for Redis trouble.

    ``url`` is a redis-py URL (``redis://[[user]:password@]host:port/db``, ``rediss://``, ``unix://``).
    ``ttl_s`` <= 0 keeps states until Redis evicts them (configure ``maxmemory-policy allkeys-lru`` then).
    """

    shared = True  # every replica reads it: states are written before the answer leaves

    def __init__(self, url: str, ttl_s: int = 3600, prefix: str = "fcfi:", timeout_s: float = 0.3,
                 retry_after_s: float = 1.0, log_every_s: float = 60.0) -> None:
        self.url = redact_url(url)
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self.log_every_s = log_every_s
        self.client = connect(url, timeout_s)
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic time the current outage began
        self._retry_at = 0.0  # no Redis calls before this monotonic time
        self._skipped = 0  # operations not done since the last outage log line
        self._last_log = 0.0

    @property
    def available(self) -> bool:
        """False from a failed operation until one succeeds again."""
        return self._down_since is None

    def get(self, key: str) -> bytes | None:
        """The stored state, or None when absent, expired or Redis is unreachable."""
        if not self._may_try():
            return None
        try:
            value = self.client.get(self.prefix + key)
        except redis.RedisError as exc:
            self._failed("get", exc)
            return None
        self._succeeded()
        return value

    def put(self, key: str, value: bytes) -> None:
        """Store a state (with the TTL); skipped when Redis is unreachable."""
        if not self._may_try():
            return
        try:
            self.client.set(self.prefix + key, value, ex=self.ttl_s if self.ttl_s > 0 else None)
        except redis.RedisError as exc:
            self._failed("put", exc)
            return
        self._succeeded()

    def ping(self) -> bool:
        """Whether Redis answers now (used at start-up to log where states go)."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            self._failed("ping", exc)
            return False
        self._succeeded()
        return True

    # -- outage bookkeeping --------------------------------------------------------------------------------------------

    def _may_try(self) -> bool:
        if self._down_since is None:
            return True
        now = time.monotonic()
        with self._lock:
            if now >= self._retry_at:
                self._retry_at = now + self.retry_after_s  # this caller probes; the others keep skipping
                return True
            self._skipped += 1
            self._log_ongoing(now)
            return False

    def _failed(self, op: str, exc: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self._retry_at = now + self.retry_after_s
            self._skipped += 1
            if self._down_since is None:
                self._down_since = now
                self._last_log = now
                self._skipped = 0
                log.warning("Redis feedback store at %s unavailable (%s: %s: %s); serving goes on, replaying "
                            "clicks without stored feedback, until it is back", self.url, op, type(exc).__name__,
                            exc)
            else:
                self._log_ongoing(now)

    def _log_ongoing(self, now: float) -> None:
        """Called with the lock held: one line per ``log_every_s`` while the outage lasts."""
        if self._down_since is not None and now - self._last_log >= self.log_every_s:
            log.warning("Redis feedback store at %s still unavailable after %.1f s (%d operations skipped since the "
                        "last report)", self.url, now - self._down_since, self._skipped)
            self._last_log = now
            self._skipped = 0

    def _succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            log.warning("Redis feedback store at %s reachable again after %.1f s", self.url,
                        time.monotonic() - self._down_since)
            self._down_since = None
            self._skipped = 0


def make_feedback_store(settings: Settings) -> FeedbackStore:
    """Redis when ``REDIS_URL`` is set (shared by replicas), else the in-process LRU."""
    if not settings.redis_url:
        return MemoryFeedbackStore(settings.feedback_cache_mb << 20)
    store = RedisFeedbackStore(settings.redis_url, ttl_s=settings.feedback_ttl_s, prefix=settings.redis_prefix)
    if store.ping():
        log.info("feedback states in Redis at %s (prefix %r, TTL %d s)", store.url, store.prefix, store.ttl_s)
    return store
