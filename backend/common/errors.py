"""One error type for everything a request can get wrong, carrying its HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    """An error answered as JSON ``{"error": message, **details}`` with ``status`` (the message is also the HTTP
    reason phrase: Label Studio shows the annotator nothing else of a failed call)."""

    status = 500

    def __init__(self, message: str, status: int | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if status is not None:
            self.status = status


class BadRequest(ServiceError):
    status = 400


class Unprocessable(ServiceError):
    """Well-formed JSON whose content cannot be served (unknown label, click outside the image ...)."""

    status = 422


class TooLarge(ServiceError):
    status = 413


class Unavailable(ServiceError):
    """The model is not ready or the queue is full; Label Studio may retry."""

    status = 503


class Overloaded(Unavailable):
    """Shed at admission: the queue ahead is longer than the service answers in time; retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = int(retry_after)
