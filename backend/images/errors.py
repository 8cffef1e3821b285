"""The image errors, each with the HTTP status the service answers, and URLs shown in their messages safely.

Every error is an :class:`ImageError` subclass (a :class:`~backend.common.errors.ServiceError`) carrying the HTTP status
the service should answer:

================================ ====== =====================================================================
exception                        status when
================================ ====== =====================================================================
:class:`ImageBadUrl`              400   empty/unsupported URL, Label Studio path without ``LABEL_STUDIO_URL``,
                                        cloud URI without task id
:class:`ImageForbidden`           403   SSRF guard, local path outside the root or local paths off
:class:`ImageNotFound`            422   the source answered 404/410, or the local file does not exist. Not 404:
                                        Label Studio would read that as "backend route missing"
:class:`ImageTooLarge`            413   more than ``max_bytes`` or ``max_pixels``
:class:`ImageDecodeError`         422   not a supported image, truncated or corrupt
:class:`ImageAuthError`           502   Label Studio (or another host) answered 401/403, or the PAT exchange
                                        failed. Not 401/403: Label Studio would read that as its own
                                        credentials for the backend being wrong
:class:`ImageUnreachable`         502   connection refused, DNS failure, 5xx or other unexpected status
                                  504   timeout
================================ ====== =====================================================================

Error messages name the host and path but never the token, credentials in URLs or presigned query strings.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from backend.common.errors import ServiceError

__all__ = [
    "ImageAuthError",
    "ImageBadUrl",
    "ImageDecodeError",
    "ImageError",
    "ImageForbidden",
    "ImageNotFound",
    "ImageTooLarge",
    "ImageUnreachable",
    "describe_raw_url",
    "describe_url",
]


class ImageError(ServiceError):
    """Base class of image errors: ``status`` is the HTTP status the service answers, ``message`` a user-facing
    explanation (a :class:`~backend.common.errors.ServiceError`, so the service answers it like any other)."""

    status = 502


class ImageBadUrl(ImageError):
    """The image reference cannot be resolved (malformed, unsupported scheme, missing configuration)."""

    status = 400


class ImageForbidden(ImageError):
    """Refused by policy: SSRF guard, local path outside ``local_files_root``, or local paths disabled."""

    status = 403


class ImageNotFound(ImageError):
    """The source says the image does not exist (404/410), or the local file is missing."""

    status = 422


class ImageTooLarge(ImageError):
    """More than ``max_bytes`` bytes or ``max_pixels`` pixels."""

    status = 413


class ImageDecodeError(ImageError):
    """The bytes are not a supported, intact image."""

    status = 422


class ImageAuthError(ImageError):
    """Label Studio (or another host) refused the download with 401/403, or the token exchange failed."""

    status = 502


class ImageUnreachable(ImageError):
    """The host could not be reached or answered an unexpected status (502), or timed out (504)."""

    status = 502


# -- URLs in messages ----------------------------------------------------------------------------------------------


def describe_url(url: str, keep_query: bool = False) -> str:
    """A URL safe to show: no user info, no query (presigned signatures) unless asked, at most 200 characters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    try:
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        pass
    text = urlunsplit((parts.scheme, netloc, parts.path, parts.query if keep_query else "", ""))
    return text if len(text) <= 200 else text[:197] + "..."


def describe_raw_url(url: str) -> str:
    """A refused URL as written (not as any parser reads it), without user info or query, escaped, capped."""
    text = url.split("?", 1)[0].split("#", 1)[0]
    if "//" in text:
        head, rest = text.split("//", 1)
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = "***@" + authority.rsplit("@", 1)[1]
        text = f"{head}//{authority}{slash}{path}"
    shown = ascii(text)
    return shown if len(shown) <= 200 else shown[:197] + "..."
