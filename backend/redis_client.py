"""The one way this service opens a Redis client (feedback store, fit queue, fit worker)."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def connect(url: str, timeout_s: float | None) -> redis.Redis:
    """A client for ``url``.

    With ``timeout_s``: socket timeouts and one immediate retry on a broken connection only (a connection pooled
    before a Redis restart fails once and is reopened at once); redis-py's default, 10 retries with backoff, would
    stall a click for seconds. Without: redis-py's defaults (RQ sets the socket timeout its blocking dequeue needs).
    """
    if timeout_s is None:
        return redis.Redis.from_url(url)
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)))
