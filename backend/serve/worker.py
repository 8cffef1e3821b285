"""The inference worker: one thread owns the model and the device.

Web threads never touch the network: they submit jobs to a bounded queue and wait for the result.
The model loads in the worker thread at start-up, so ``/health`` and ``/setup`` answer at once, and
a new model version can be swapped in between two requests.

Fairness under load: the worker keeps a moving average of how long a job takes, and a click is refused at
admission (:class:`~backend.common.errors.Overloaded`, 503 with ``Retry-After``) when the jobs ahead of it would keep
it waiting longer than ``max_wait`` seconds, so the clicks that are accepted are answered quickly instead of
every click timing out. Every job carries a deadline; one whose deadline has passed (its client has given up)
is dropped without running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from backend.common.errors import Overloaded, Unavailable
from backend.serve.cpu_share import CpuShare
from model import Click, FCFIPredictor, PredictorState

log = logging.getLogger(__name__)

Loader = Callable[[], tuple[torch.nn.Module, str]]


@dataclass
class ClickResult:
    """One click's answer: ``probs`` HxW float32 in [0, 1], ``mask`` HxW bool (the predictor's threshold)."""

    probs: np.ndarray
    mask: np.ndarray
    state: PredictorState
    passes: int
    network_ms: float


class InferenceWorker:
    """Owns the predictor. ``load`` returns (network, model_version) and runs in the worker thread."""

    def __init__(self, load: Loader, predictor_options: dict[str, Any], device: str = "cpu",
                 queue_size: int = 32, threads: int | None = None, max_wait: float = 5.0) -> None:
        self._load = load
        self.max_wait = max_wait
        self._job_s: float | None = None  # moving average of a job's run time
        self._busy = 0
        #: jobs dropped because their deadline passed before they ran (the client had given up).
        self.dropped = 0
        self._options = predictor_options
        self._device = device
        self._threads = threads
        self._max_threads = threads or 1
        self._share: CpuShare | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._ready = threading.Event()
        self._error: str | None = None
        self._predictor: FCFIPredictor | None = None
        self._image_key: str | None = None
        self.model_version = "loading"
        #: network passes since start (one per click run; replays count each replayed click).
        self.passes = 0
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)

    def start(self) -> InferenceWorker:
        self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._error is None

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def runtime(self) -> str | None:
        """The runtime running the network (after any fallback); None before the model has loaded."""
        return self._predictor.runtime if self._predictor is not None else None

    def _install(self, net: torch.nn.Module, version: str) -> None:
        predictor = FCFIPredictor(net, device=self._device, **self._options)
        try:
            # The runtime's one-time set-up happens here, not in the first click: for every thread count a click
            # may get (a runtime compiles one engine per count).
            for threads in (self._share.choices if self._share is not None else [self._max_threads]):
                predictor.set_threads(threads)
                predictor.warmup()
        except Exception as exc:  # an optimisation only: a network that cannot run says so at its first click
            log.warning("warm-up pass failed (%s: %s)", type(exc).__name__, exc)
        self._predictor = predictor
        self._image_key = None
        self.model_version = version

    def _run(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        self._max_threads = torch.get_num_threads()
        # Without a fixed thread count, each click runs on the cores other processes leave free (cpu_share).
        self._share = CpuShare(self._max_threads) if not self._threads and self._device == "cpu" else None
        try:
            net, version = self._load()
            self._install(net, version)
            log.info("model %s ready on %s (runtime %s)", version, self._device, self.runtime)
        except Exception as exc:  # reported through /health and every /predict
            self._error = f"model failed to load: {exc}"
            self.model_version = "unavailable"
            log.exception("model failed to load")
        self._ready.set()
        while True:
            fn, future, deadline = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            if deadline is not None and time.monotonic() > deadline:
                self.dropped += 1
                future.set_exception(Unavailable("the request waited past its deadline and was dropped"))
                continue
            self._busy = 1
            t0 = time.perf_counter()
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                took = time.perf_counter() - t0
                self._job_s = took if self._job_s is None else 0.8 * self._job_s + 0.2 * took
                self._busy = 0

    def expected_wait(self) -> float:
        """Seconds a job submitted now would wait before it runs (0 until a job has been timed)."""
        return (self._queue.qsize() + self._busy) * (self._job_s or 0.0)

    def admit(self) -> None:
        """Refuse new work at once when the queue ahead would exceed ``max_wait`` (raises :class:`Overloaded`)."""
        wait = self.expected_wait()
        if self.max_wait > 0 and wait > self.max_wait:
            raise Overloaded(f"the model is busy: about {wait:.0f} s of clicks are waiting (MAX_QUEUE_WAIT_S is "
                             f"{self.max_wait:g}); try again", retry_after=max(1, round(wait - self.max_wait)))

    def submit(self, fn: Callable[[], Any], deadline: float | None = None) -> Future:
        """Queue ``fn`` for the worker thread; ``deadline`` (``time.monotonic()``): drop it if not started by then."""
        future: Future = Future()
        try:
            self._queue.put_nowait((fn, future, deadline))
        except queue.Full:
            raise Overloaded("the model is busy (request queue full); try again", retry_after=1) from None
        return future

    def wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout):
            raise Unavailable("the model is still loading; try again in a few seconds")
        if self._error:
            raise Unavailable(self._error)

    def run_clicks(self, rgb: np.ndarray, image_key: str, clicks: list[Click], state: PredictorState | None,
                   timeout: float) -> ClickResult:
        """Predict in the worker thread; called from a web thread. ``image_key`` names the image content."""
        self.wait_ready(timeout)

        def job() -> ClickResult:
            pred = self._predictor
            assert pred is not None
            if self._share is not None:
                pred.set_threads(self._share.threads())
            if self._image_key != image_key:
                pred.set_image(rgb)
                self._image_key = image_key
            before = pred.num_passes
            t0 = time.perf_counter()
            probs, new_state = pred.predict(clicks, state)
            ms = (time.perf_counter() - t0) * 1000
            done = pred.num_passes - before
            self.passes += done
            return ClickResult(probs, pred.mask(probs), new_state, done, ms)

        self.admit()
        future = self.submit(job, deadline=time.monotonic() + timeout)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise Unavailable(f"the model did not answer within {timeout:g} s") from None

    def swap(self, net: torch.nn.Module, version: str) -> Future:
        """Install a new network between requests (queued like a request)."""
        return self.submit(lambda: self._install(net, version))
