"""The one way this service opens a Redis client (feedback store, fit queue, fit worker), and shows its URL in logs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

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


def redact_url(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
