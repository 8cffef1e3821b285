"""The HTTP service Label Studio talks to (Flask): the composition root that wires the click and the learning path.

Routes: ``GET /health``, ``POST /setup``, ``POST /predict`` (:mod:`backend.serve`), ``POST /webhook``,
``GET /versions``, ``GET /fit`` (fine-tuning jobs, :mod:`backend.learning`).
We speak the ML-backend protocol ourselves instead of using ``label-studio-ml``: its PyPI release
(1.0.9, 2023) pins Flask 1.x and does not import, and its current version is only on GitHub.
"""

from __future__ import annotations

import base64
import errno
import hmac
import logging
import time
from pathlib import Path
from typing import Any

import torch
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from backend.common.errors import BadRequest, Overloaded, ServiceError
from backend.feedback.redis_store import make_feedback_store
from backend.images.loader import image_loader
from backend.learning.intake import WebhookService
from backend.learning.manager import FitManager
from backend.learning.queue import make_fit_queue
from backend.learning.store import TrainingStore
from backend.learning.versions import load_serving
from backend.serve.service import PredictService
from backend.serve.worker import InferenceWorker
from backend.settings import Settings, predictor_options

log = logging.getLogger(__name__)
OPEN_ROUTES = {"/health"}
WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
JSON_ROUTES = {"/predict", "/webhook"}  # a text/plain POST from any web page must not reach them (no CORS preflight)


__all__ = ["OPEN_ROUTES", "WEBHOOK_SECRET_HEADER", "create_app"]


def reason_phrase(message: str, limit: int = 300) -> str:
    """``message`` as an HTTP reason phrase: printable ASCII on one line, at most ``limit`` characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in " ".join(message.split()))
    return (text[: limit - 3] + "...") if len(text) > limit else text or "error"


def create_app(settings: Settings | None = None, worker: InferenceWorker | None = None) -> Flask:
    """Build the service. Starts the inference worker (which loads the model in the background)."""
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    training = TrainingStore(Path(settings.model_dir) / "training")
    # Fine-tuning jobs (its loader serves the promoted version): child processes of this app, or with REDIS_URL
    # queued in Redis for `python -m backend.learning.worker`.
    fit = FitManager(settings, training, queue=make_fit_queue(settings))
    if worker is None:
        def load() -> tuple[torch.nn.Module, str]:  # in the worker thread: the promoted version, else the base
            serving = load_serving(settings)
            return serving.net, serving.version

        worker = InferenceWorker(load, predictor_options(settings), settings.device, settings.queue_size,
                                 settings.torch_threads, settings.max_queue_wait_s).start()
    fit.start(worker)
    images = image_loader(settings)
    store = make_feedback_store(settings)  # Redis when REDIS_URL is set, else in-process
    service = PredictService(worker, images, store, settings.max_clicks, settings.request_timeout,
                             hot_bytes=settings.feedback_hot_mb << 20,
                             max_interactive_tasks=settings.max_interactive_tasks)
    webhooks = WebhookService(training, fit, settings.max_image_pixels, settings.webhook_max_delete)
    if not settings.webhook_secret and not settings.basic_auth_user:
        log.warning("neither WEBHOOK_SECRET nor BASIC_AUTH_USER is set: anyone who reaches this port can post "
                    "annotations to /webhook and start training; set one before exposing the backend")

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb << 20  # refused with 413 before it is read
    app.config["settings"] = settings
    app.config["service"] = service
    app.config["worker"] = worker
    app.config["fit"] = fit

    def basic_auth_ok() -> bool:
        header = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(
            f"{settings.basic_auth_user}:{settings.basic_auth_pass or ''}".encode()).decode()
        return hmac.compare_digest(header.encode(), expected.encode())

    def webhook_secret_ok() -> bool:
        given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
        return bool(settings.webhook_secret) and hmac.compare_digest(given.encode(), settings.webhook_secret.encode())

    @app.before_request
    def authenticate() -> Response | None:
        if request.path in OPEN_ROUTES:
            return None
        if request.path == "/webhook" and (settings.webhook_secret or settings.basic_auth_user):
            # Label Studio's webhooks can carry a custom header (the secret); START_TRAINING comes through its ML
            # client, which sends the backend's basic-auth credentials.
            if webhook_secret_ok() or (settings.basic_auth_user and basic_auth_ok()):
                return None
        elif not settings.basic_auth_user or basic_auth_ok():
            return None
        response = jsonify(error="authentication required")
        response.status_code = 401
        if settings.basic_auth_user:
            response.headers["WWW-Authenticate"] = 'Basic realm="fcfi-backend"'
        return response

    @app.before_request
    def require_json() -> Response | None:
        if request.method == "POST" and request.path in JSON_ROUTES and request.mimetype != "application/json":
            response = jsonify(error=f"{request.path} takes Content-Type: application/json")
            response.status_code = 415
            return response
        return None

    def body() -> Any:
        try:
            data = request.get_json(silent=True, force=True)
        except RecursionError:  # JSON nested thousands deep
            raise BadRequest("request body is nested too deeply") from None
        if data is None:
            raise BadRequest("request body is not valid JSON")
        return data

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="UP", model_class="FCFI", model_version=worker.model_version,
                       model_ready=worker.ready, model_error=worker.error, device=settings.device,
                       network_passes=worker.passes)

    @app.post("/setup")
    def setup() -> Response:
        return jsonify(model_version=worker.model_version)

    @app.post("/predict")
    def predict() -> Response:
        t0 = time.perf_counter()
        result, timings, passes = service.predict(body())
        timings.parts["total"] = (time.perf_counter() - t0) * 1000
        response = jsonify(result)
        response.headers["Server-Timing"] = timings.header()
        response.headers["X-Network-Passes"] = str(passes)
        return response

    @app.post("/webhook")
    def webhook() -> Response:
        return jsonify(webhooks.handle(body()))

    @app.route("/versions", methods=["GET", "POST"])
    def versions() -> Response:
        return jsonify(versions=fit.versions())  # the base version and every version promoted from it

    @app.get("/fit")
    def fit_status() -> Response:
        return jsonify(fit.status())

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> Response:
        log.warning("%s: %s", exc.status, exc.message[:500])
        response = jsonify({**exc.details, "error": exc.message})
        # Label Studio shows the annotator only requests' "<status> Client Error: <reason> for url: ..." of a failed
        # /predict, never the body: the reason phrase carries the message.
        response.status = f"{exc.status} {reason_phrase(exc.message)}"
        if isinstance(exc, Overloaded):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(OSError)
    def storage_error(exc: OSError) -> tuple[Response, int]:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # disk full: say so, keep serving clicks
            log.error("storage full: %s", exc)
            return jsonify(error="the backend's storage is full; nothing was stored (free space under MODEL_DIR)"), 507
        log.exception("unexpected I/O error")
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.description or exc.name), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error")
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500

    return app
