"""The inference worker: one thread owns the model and the device.

Web threads never touch the network: they submit jobs to a bounded queue and wait for the result.
The model loads in the worker thread at start-up, so ``/health`` and ``/setup`` answer at once, and
a new model version can be swapped in between two requests.
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

from model import Click, FCFIPredictor, PredictorState

from .errors import Unavailable

log = logging.getLogger(__name__)

Loader = Callable[[], tuple[torch.nn.Module, str]]


@dataclass
class ClickResult:
    probs: np.ndarray
    state: PredictorState
    passes: int
    network_ms: float


class InferenceWorker:
    """Owns the predictor. ``load`` returns (network, model_version) and runs in the worker thread."""

    def __init__(self, load: Loader, predictor_options: dict[str, Any], device: str = "cpu",
                 queue_size: int = 32, threads: int | None = None) -> None:
        self._load = load
        self._options = predictor_options
        self._device = device
        self._threads = threads
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

    def _install(self, net: torch.nn.Module, version: str) -> None:
        self._predictor = FCFIPredictor(net, device=self._device, **self._options)
        self._image_key = None
        self.model_version = version

    def _run(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        try:
            net, version = self._load()
            self._install(net, version)
            log.info("model %s ready on %s", version, self._device)
        except Exception as exc:  # reported through /health and every /predict
            self._error = f"model failed to load: {exc}"
            self.model_version = "unavailable"
            log.exception("model failed to load")
        self._ready.set()
        while True:
            fn, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def submit(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        try:
            self._queue.put_nowait((fn, future))
        except queue.Full:
            raise Unavailable("the model is busy (request queue full); try again") from None
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
            if self._image_key != image_key:
                pred.set_image(rgb)
                self._image_key = image_key
            before = pred.num_passes
            t0 = time.perf_counter()
            probs, new_state = pred.predict(clicks, state)
            ms = (time.perf_counter() - t0) * 1000
            done = pred.num_passes - before
            self.passes += done
            return ClickResult(probs, new_state, done, ms)

        future = self.submit(job)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise Unavailable(f"the model did not answer within {timeout:g} s") from None

    def swap(self, net: torch.nn.Module, version: str) -> Future:
        """Install a new network between requests (queued like a request)."""
        return self.submit(lambda: self._install(net, version))
