"""The request pipeline: parse -> image -> feedback -> predictor -> encode -> store.

Kept free of Flask so it can be driven directly by tests and benchmarks.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from backend.common.errors import ServiceError, TooLarge
from backend.feedback.state_cache import StateCache
from backend.feedback.store import FeedbackStore, prefix_keys
from backend.ls.rle import encode_mask
from backend.serve.parse import ClickSession, ImageRef, click_session, opened_image, parse_predict
from backend.serve.worker import InferenceWorker

log = logging.getLogger(__name__)


@dataclass
class Timings:
    """Milliseconds spent in each stage of one request (reported in the ``Server-Timing`` header)."""

    parts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + (now - t0) * 1000
        return now

    def header(self) -> str:
        return ", ".join(f"{k};dur={v:.1f}" for k, v in self.parts.items())


class PredictService:
    """Answers ``/predict`` bodies. ``images`` has ``load(url, task_id=, project_id=) -> (rgb, key)``.

    ``store`` holds serialized feedback states; ``hot_bytes`` of recent decoded states stay in process in front
    of it, and writes to it happen after the answer (see :class:`backend.feedback.state_cache.StateCache`).
    """

    def __init__(self, worker: InferenceWorker, images: Any, store: FeedbackStore, max_clicks: int = 200,
                 timeout: float = 60.0, hot_bytes: int = 128 << 20,
                 max_interactive_tasks: int = 1) -> None:
        self.worker = worker
        # Label Studio asks /predict without clicks when an annotator opens a task: the image is then fetched and
        # decoded in the background, so the first click finds it in the loader's cache (a click that arrives
        # while the fetch runs waits for that same fetch). One fetch at a time, at most one waiting.
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._prefetch_pending = threading.Semaphore(2)
        #: images fetched ahead of a first click (tests and benchmarks read it).
        self.prefetched = 0
        self.max_interactive_tasks = max_interactive_tasks
        self.images = images
        self.states = StateCache(store, hot_bytes)
        self.max_clicks = max_clicks
        self.timeout = timeout

    def predict(self, payload: Any) -> tuple[dict[str, Any], Timings, int]:
        """Returns (response body, timings, network passes)."""
        timings = Timings()
        request = parse_predict(payload)
        sessions = [click_session(request, task, self.max_clicks) for task in request.tasks]
        interactive = sum(session is not None for session in sessions)
        if interactive > self.max_interactive_tasks:  # one request must not hold the model for everyone
            raise TooLarge(f"{interactive} tasks with clicks in one request; at most {self.max_interactive_tasks} "
                           "(MAX_INTERACTIVE_TASKS)")
        if interactive:
            self.worker.admit()  # shed before downloading the image, not after
        elif len(sessions) == 1:
            self._fetch_ahead(opened_image(request, request.tasks[0]))
        results, passes = [], 0
        for session in sessions:
            if session is None:
                # No clicks: a task being opened, or batch pre-annotation. An empty list is "no prediction for this
                # task": Label Studio stores nothing (an empty result would be stored and shown as a 0.00% prediction
                # tab on every task).
                results.append([])
                continue
            result, n = self._click(session, timings)
            results.append(result)
            passes += n
        return {"results": results}, timings, passes

    def _fetch_ahead(self, ref: ImageRef | None) -> None:
        """Load ``ref`` in the background (errors are the first click's to report, so they are only logged)."""
        if ref is None or not self._prefetch_pending.acquire(blocking=False):
            return

        def fetch() -> None:
            t0 = time.perf_counter()
            try:
                loaded = self.images.load(ref.url, task_id=ref.task_id, project_id=ref.project_id)
                self.prefetched += 1
                log.info("task %s opened: its %dx%d image fetched ahead of the first click in %.0f ms", ref.task_id,
                         loaded.rgb.shape[1], loaded.rgb.shape[0], (time.perf_counter() - t0) * 1000)
            except Exception as exc:  # noqa: BLE001 - the click will meet the same error and answer it
                log.debug("prefetch of task %s's image failed: %s", ref.task_id, exc)
            finally:
                self._prefetch_pending.release()

        self._prefetch.submit(fetch)

    def _click(self, session: ClickSession, timings: Timings) -> tuple[dict[str, Any], int]:
        t = time.perf_counter()
        loaded = self.images.load(session.image_url, task_id=session.task_id, project_id=session.project_id)
        rgb, image_key = loaded.rgb, loaded.key
        h, w = rgb.shape[:2]
        t = timings.add("image", t)

        clicks = session.clicks(w, h)
        version = self.worker.model_version
        keys = prefix_keys((session.project_id, session.task_id, image_key, session.to_name, session.label, version),
                           clicks)
        state, start = None, 0
        # The newest click always runs: a stored state holds the quantized feedback, not the exact map
        # the answer is thresholded from, so an answer from it could differ from a replay's by a few pixels.
        for k in range(len(keys) - 1, 0, -1):
            state = self.states.get(keys[k - 1])
            if state is not None:
                start = k
                break
        t = timings.add("feedback", t)

        try:
            out = self.worker.run_clicks(rgb, image_key, clicks, state, self.timeout)
        except ValueError as exc:  # a stored state that does not fit (the image changed): replay
            if state is None:
                raise ServiceError(str(exc), 422) from None
            log.warning("stored feedback does not fit (%s); replaying %d clicks", exc, len(clicks))
            out = self.worker.run_clicks(rgb, image_key, clicks, None, self.timeout)
        timings.parts["network"] = timings.parts.get("network", 0.0) + out.network_ms
        t = time.perf_counter()

        mask = out.mask
        score = float(out.probs[mask].mean()) if mask.any() else 0.0
        width, height = session.width or w, session.height or h
        if abs(width - w) > 1 or abs(height - h) > 1:
            # The claimed size is not trusted beyond rounding (100000x100000 would allocate 10 GB): answer at the
            # decoded size, which is the image's natural size Label Studio itself measures.
            log.warning("image is %dx%d but the request says %dx%d; answering at the image's size", w, h,
                        min(width, 10**9), min(height, 10**9))
            width, height = w, h
        elif (height, width) != (h, w):
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        rle = encode_mask(mask)
        t = timings.add("encode", t)

        self.states.save(keys[-1], out.state)  # serialized and stored after the answer leaves
        timings.add("store", t)
        log.info("task %s label %r: %d clicks, %d network passes (resumed after %d), score %.3f",
                 session.task_id, session.label, len(clicks), out.passes, start, score)
        region = {
            "id": uuid.uuid4().hex[:10],
            "from_name": session.brush.from_name,
            "to_name": session.to_name,
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": session.rotation,
            "value": {"format": "rle", "rle": rle, "brushlabels": [session.label]},
            "score": score,
            "readonly": False,
        }
        return {"result": [region], "score": score, "model_version": self.worker.model_version}, out.passes
