"""A real ``redis-server`` for tests: on 127.0.0.1, a free port, its own temp dir, no persistence.

Tests that need it skip when no ``redis-server`` binary is found, except under CI (``CI`` set), where that fails:
``.ci/run`` installs Debian's ``redis-server`` package when the binary is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def redis_server_binary() -> str:
    """Path of ``redis-server`` (``REDIS_SERVER`` overrides), or skip (fail under CI) when there is none."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if binary is None and Path("/usr/bin/redis-server").exists():  # PATH without /usr/bin in some shells
        binary = "/usr/bin/redis-server"
    if binary is None:
        message = "no redis-server binary (apt-get install redis-server, or set REDIS_SERVER=path)"
        if in_ci():
            pytest.fail(message + "; .ci/run should have installed it")
        pytest.skip(message)
    return binary


class RedisServer:
    """``redis-server`` as a child process; :meth:`stop` and :meth:`start` again keep the port (data is lost)."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # No RDB/AOF: a restart starts empty, like a lost cache. Loopback only.
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"), "--daemonize", "no"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            try:
                client.ping()
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.workdir / "redis.log"
                    text = log.read_text() if log.exists() else ""
                    raise RuntimeError(f"redis-server did not start: {text}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
