"""The ``/webhook`` pipeline without Flask: parse the event, change the training store, trigger fit jobs.

Like :class:`backend.serve.service.PredictService` for ``/predict``: the app only authenticates, reads the JSON body
and returns what :meth:`WebhookService.handle` answers; tests and tools drive it directly.
"""

from __future__ import annotations

import logging
from typing import Any

from backend.common.errors import TooLarge, Unprocessable
from backend.learning.state import summary
from backend.learning.webhooks import AnnotationEvent, DeleteEvent, TrainEvent, parse_event

log = logging.getLogger(__name__)


class WebhookService:
    """Answers Label Studio's webhook events.

    Args:
        training: the training store (:class:`backend.learning.store.TrainingStore`).
        fit: the fit manager (``samples_stored()`` and ``request(trigger, project_id=)``).
        max_pixels: larger annotation masks are refused (``MAX_IMAGE_PIXELS``).
        max_delete: an ``ANNOTATIONS_DELETED`` event naming more annotations is refused whole (``WEBHOOK_MAX_DELETE``).
    """

    def __init__(self, training: Any, fit: Any, max_pixels: int, max_delete: int) -> None:
        self.training = training
        self.fit = fit
        self.max_pixels = max_pixels
        self.max_delete = max_delete

    def handle(self, payload: Any) -> dict[str, Any]:
        """The JSON answer to one event body; raises a :class:`~backend.common.errors.ServiceError` for a bad one."""
        event = parse_event(payload, max_pixels=self.max_pixels)
        training = self.training
        if isinstance(event, AnnotationEvent):
            stored = training.replace_annotation(event)
            for reason in event.skipped:
                log.info("webhook %s annotation %s: skipped %s", event.action, event.annotation_id, reason)
            log.info("webhook %s annotation %s: %d samples stored (%d in store)", event.action,
                     event.annotation_id, stored, training.count())
            job = self.fit.samples_stored() if stored else None  # FIT_EVERY_N_SAMPLES; queues only, never trains
            return {"status": "ok", "action": event.action, "stored": stored, "skipped": event.skipped,
                    "fit_job": summary(job)}
        if isinstance(event, DeleteEvent):
            if len(event.annotation_ids) > self.max_delete:
                raise TooLarge(f"ANNOTATIONS_DELETED names {len(event.annotation_ids):,} annotations; at most "
                               f"{self.max_delete} per event are deleted (WEBHOOK_MAX_DELETE); nothing was deleted")
            removed = training.delete_annotations(event.annotation_ids)
            log.info("webhook ANNOTATIONS_DELETED %s: %d samples removed", event.annotation_ids, removed)
            return {"status": "ok", "action": "ANNOTATIONS_DELETED", "removed": removed}
        if isinstance(event, TrainEvent):
            job = self.fit.request("START_TRAINING", project_id=event.project_id)  # queued; trained elsewhere
            samples = training.count()
            log.info("webhook START_TRAINING for project %s: %d samples stored, fit job %s %s", event.project_id,
                     samples, job["id"], job["status"])
            answer = {"status": "ok", "action": "START_TRAINING", "samples": samples, "job": summary(job)}
            if job["status"] == "rejected":  # decided at once: Label Studio shows this on the model's card
                raise Unprocessable(f"Fine-tuning not started: {job.get('reason')}; submit brush masks on at least "
                                    "two tasks, then train again", details={**answer, "status": "rejected"})
            answer["message"] = (f"Fine-tuning job {job['id']} is {job['status']} on {samples} stored samples; GET "
                                 "/fit shows its progress, and a promoted model appears as a new model version")
            return answer
        action = getattr(event, "action", type(event).__name__)
        log.info("webhook %s ignored", action)
        return {"status": "ignored", "action": action}
