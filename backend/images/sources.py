"""Where a task's image reference is fetched from: its kind, Label Studio URLs (paths, cloud presign), local files.

Kinds (:func:`classify`): Label Studio paths (``/data/upload/...``, ``/data/local-files/?d=...``,
``/storage-data/...``, ``upload/...``) become URLs on ``LABEL_STUDIO_URL`` (:func:`ls_url`); cloud storage URIs
(:data:`CLOUD_SCHEMES`) go through Label Studio's presign route (:func:`presign_url`); ``http(s)`` URLs are fetched
as they are (:mod:`backend.images.fetch`); local paths and ``file://`` URLs are read under ``LOCAL_FILES_ROOT`` only
(:func:`read_local`).
"""

from __future__ import annotations

import base64
import errno
import os
import stat
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from backend.images.errors import ImageBadUrl, ImageForbidden, ImageNotFound, ImageTooLarge, describe_url
from backend.images.ls_auth import LabelStudioAuth

__all__ = ["CLOUD_SCHEMES", "LS_PATH_PREFIXES", "classify", "file_url_path", "ls_url", "presign_url", "read_local",
           "require_ls"]

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi", "b2")
LS_PATH_PREFIXES = ("/data/upload/", "/data/local-files", "/storage-data/", "/tasks/", "/projects/")


def classify(url: str) -> str:
    """The kind of an image reference: ``cloud``, ``http``, ``file``, ``ls-path`` (a Label Studio path), ``local``
    (another absolute path) or ``unknown``."""
    lowered = url.lower()
    scheme = lowered.split(":", 1)[0] if ":" in lowered else ""
    if scheme in CLOUD_SCHEMES:
        return "cloud"
    if scheme in ("http", "https"):
        return "http"
    if scheme == "file":
        return "file"
    if url.startswith("upload/") or (url.startswith("/") and not url.startswith("//")):
        path = "/data/" + url if url.startswith("upload/") else url
        if path.startswith(LS_PATH_PREFIXES):
            return "ls-path"
        return "local"
    return "unknown"


def require_ls(auth: LabelStudioAuth | None, what: str) -> LabelStudioAuth:
    """``auth``, when Label Studio is configured; else :class:`ImageBadUrl` saying that ``what`` needs it."""
    if auth is None or not auth.configured:
        raise ImageBadUrl(f"{what} needs Label Studio, but LABEL_STUDIO_URL is not set in the backend")
    return auth


def ls_url(auth: LabelStudioAuth | None, path: str) -> str:
    """The absolute URL of a Label Studio path (``/data/upload/...``, ``upload/...``) on ``LABEL_STUDIO_URL``."""
    auth = require_ls(auth, f"the Label Studio path {describe_url(path, keep_query=True)!r}")
    if path.startswith("upload/"):
        path = "/data/" + path
    return auth.url_for(path)


def presign_url(auth: LabelStudioAuth | None, uri: str, task_id: int | None, project_id: int | None) -> str:
    """Label Studio's resolver URL for a cloud storage URI: the task's ``presign`` route, else the project's."""
    auth = require_ls(auth, f"the cloud storage URI {describe_url(uri)!r}")
    encoded = quote(base64.urlsafe_b64encode(uri.encode("utf-8")).decode("ascii"), safe="")
    for route, value in (("tasks", task_id), ("projects", project_id)):
        if value is None:
            continue
        try:
            number = int(value)
        except (TypeError, ValueError) as exc:
            raise ImageBadUrl(f"the {route[:-1]} id must be an integer, got {value!r}") from exc
        return auth.url_for(f"/{route}/{number}/presign/?fileuri={encoded}")
    raise ImageBadUrl(f"the cloud storage URI {describe_url(uri)!r} needs a task id to be resolved by Label Studio")


def file_url_path(url: str) -> str:
    """The local path of a ``file://`` URL (no host, or ``localhost``)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageBadUrl(f"file:// URLs must not name a host: {describe_url(url)!r}")
    return unquote(parts.path)


def read_local(path_text: str, original: str, root: Path | None, max_bytes: int) -> bytes:
    """The bytes of a local file, only under ``root`` (real paths, symlinks resolved; None: local files are off),
    at most ``max_bytes``; never follows a link swapped in while opening, never blocks on a FIFO."""
    if root is None:
        raise ImageForbidden(
            f"local file paths are disabled ({describe_url(original)!r}); set LOCAL_FILES_ROOT to allow "
            "paths under one folder"
        )
    path = Path(path_text)
    if not path.is_absolute():
        raise ImageBadUrl(f"local paths must be absolute: {path_text!r}")
    if ".." in path.parts:
        raise ImageForbidden(f"'..' is not allowed in local paths: {path_text!r}")
    real = Path(os.path.realpath(path))
    if real != root and not real.is_relative_to(root):
        raise ImageForbidden(f"{path_text!r} is outside LOCAL_FILES_ROOT (after resolving links)")
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise ImageNotFound(f"local file not found: {path_text!r}") from exc
    except PermissionError as exc:
        raise ImageForbidden(f"the backend may not read {path_text!r}") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageForbidden(f"{path_text!r} changed into a symbolic link while being opened") from exc
        raise ImageNotFound(f"cannot open local file {path_text!r}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageNotFound(f"{path_text!r} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > max_bytes:
            raise ImageTooLarge(
                f"{path_text!r} is {info.st_size:,} bytes, over the limit of {max_bytes:,} (MAX_IMAGE_BYTES)"
            )
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{path_text!r} is over the limit of {max_bytes:,} bytes (MAX_IMAGE_BYTES)")
    return data
