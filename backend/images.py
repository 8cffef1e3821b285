"""Download, check and decode task images for the backend.

:class:`ImageLoader` turns the image reference in a Label Studio task into an ``HxWx3`` uint8 RGB array, exactly
as the browser shows it (EXIF orientation applied), with these rules:

* **Label Studio paths** (``/data/upload/...``, ``/data/local-files/?d=...``, ``/storage-data/...``, ``upload/...``)
  and absolute URLs on the ``LABEL_STUDIO_URL`` origin are fetched from Label Studio with its ``Authorization``
  header (:class:`~backend.ls_auth.LabelStudioAuth`).
* **Cloud storage URIs** (``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://``, ``b2://``) go through Label
  Studio's resolver ``GET {LS}/tasks/{task_id}/presign/?fileuri=<urlsafe base64 of the URI>`` (or
  ``/projects/{project_id}/presign/`` without a task), which answers a 303 redirect to a presigned URL or
  streams the file itself. The redirect target never receives the Label Studio token.
* **Plain http(s) URLs** on other hosts are fetched without the token. Unless ``allow_private_hosts``, hosts that
  resolve to loopback, private, link-local, reserved or otherwise non-global addresses are refused (SSRF guard);
  the Label Studio origin itself is always allowed.
* **Local paths** (absolute, or ``file://``) only under ``local_files_root`` after resolving symlinks; otherwise
  refused. Off when ``local_files_root`` is None.

Redirects are followed by hand (at most :data:`MAX_REDIRECTS`): every hop off the Label Studio origin passes the
SSRF check, and once a hop has left that origin the token is never sent again. Downloads are streamed and cut at
``max_bytes``; images over ``max_pixels`` are refused from their header, before decoding. Decoded images are kept
in a bounded LRU keyed by the URL (plus task/project for cloud URIs), and concurrent loads of the same key share
one download.

Errors are :class:`ImageError` subclasses carrying the HTTP status the service should answer:

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

import base64
import errno
import hashlib
import io
import os
import stat
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import numpy as np
import requests
from PIL import Image, ImageOps

from .errors import ServiceError
from .ls_auth import LabelStudioAuth, LabelStudioAuthError, LabelStudioConnectionError, origin_of
from .safe_http import AddressGuard, BlockedAddressError, GuardedSession, UnsafeURLError, check_url
from .settings import Settings

__all__ = [
    "CLOUD_SCHEMES",
    "ImageAuthError",
    "ImageBadUrl",
    "ImageDecodeError",
    "ImageError",
    "ImageForbidden",
    "ImageLoader",
    "ImageNotFound",
    "ImageTooLarge",
    "ImageUnreachable",
    "LoadedImage",
    "to_rgb_array",
]

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi", "b2")
LS_PATH_PREFIXES = ("/data/upload/", "/data/local-files", "/storage-data/", "/tasks/", "/projects/")
# Decoders we accept: the formats browsers show plus TIFF; exotic ones (EPS runs Ghostscript) are not offered.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
USER_AGENT = "fcfi-labelstudio-backend/0.1 (image loader)"


# -- errors --------------------------------------------------------------------------------------------------------


class ImageError(ServiceError):
    """Base class of image errors: ``status`` is the HTTP status the service answers, ``message`` a user-facing
    explanation (a :class:`~backend.errors.ServiceError`, so the service answers it like any other)."""

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


# -- result --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image: ``rgb`` is a read-only ``HxWx3`` uint8 array (EXIF orientation applied).

    ``key`` is a hex digest of the downloaded bytes: equal keys mean equal images, across URLs, tasks and replicas,
    so it is the right key for embedding and feedback caches.
    """

    rgb: np.ndarray
    key: str

    @property
    def height(self) -> int:
        """Rows of ``rgb`` (the browser's ``naturalHeight``)."""
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        """Columns of ``rgb`` (the browser's ``naturalWidth``)."""
        return int(self.rgb.shape[1])


# -- helpers -------------------------------------------------------------------------------------------------------


def _describe(url: str, keep_query: bool = False) -> str:
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


def _describe_raw(url: str) -> str:
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


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit / 32-bit / float single-channel data to uint8 (16-bit: divide by 257; others by their range)."""
    if mode.startswith("I;16"):
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    data = arr.astype(np.float64)
    finite = data[np.isfinite(data)]
    top = float(finite.max()) if finite.size else 0.0
    if mode == "F" and top <= 1.0:
        scale = 255.0
    elif top <= 255.0:
        scale = 1.0
    elif top <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    return np.clip(np.nan_to_num(data * scale), 0, 255).round().astype(np.uint8)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any Pillow image to a contiguous ``HxWx3`` uint8 array.

    Grey, palette, CMYK and YCbCr are converted by Pillow; transparency (RGBA, LA, PA, palette with a transparent
    index) is composited over white; 16-bit and float single-channel images are scaled to 0-255 (Pillow's own
    conversion would clip them to 255).
    """
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _scale_to_uint8(np.asarray(image), mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa") or (mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


# -- loader --------------------------------------------------------------------------------------------------------


class ImageLoader:
    """Resolve, download, check, decode and cache task images (see the module docstring for the rules).

    Arguments are explicit (nothing is read from the environment): ``auth`` for Label Studio (None: Label
    Studio paths are refused), ``local_files_root`` (None: local paths off), ``max_bytes`` per download,
    ``max_pixels`` per image, ``cache_items`` decoded images kept (0: no cache) in at most ``cache_bytes``,
    ``timeout`` seconds per download (connect, each read, and in total), ``allow_private_hosts`` for plain
    URLs. ``guard`` may replace the address policy (tests); every connection goes through a
    :class:`~backend.safe_http.GuardedSession`, never through a proxy (with one the guard could not see where a
    request really goes). Thread-safe.
    """

    def __init__(
        self,
        auth: LabelStudioAuth | None,
        local_files_root: Path | None,
        max_bytes: int,
        max_pixels: int,
        cache_items: int,
        timeout: float,
        allow_private_hosts: bool,
        *,
        cache_bytes: int = 512 << 20,
        guard: AddressGuard | None = None,
    ) -> None:
        if max_bytes <= 0 or max_pixels <= 0 or cache_items < 0 or timeout <= 0:
            raise ValueError("max_bytes, max_pixels and timeout must be positive and cache_items >= 0")
        self.auth = auth
        self.local_files_root = Path(os.path.realpath(local_files_root)) if local_files_root is not None else None
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.cache_items = int(cache_items)
        self.cache_bytes = int(cache_bytes)
        self._cached_bytes = 0
        self.timeout = float(timeout)
        self.allow_private_hosts = bool(allow_private_hosts)
        ls_origin = origin_of(auth.base_url) if auth is not None and auth.base_url else None
        self.guard = guard or AddressGuard(allow_private=self.allow_private_hosts)
        if ls_origin is not None:
            self.guard.trusted.add(ls_origin)  # Label Studio is reached wherever it lives (often on loopback)
        self._session = GuardedSession(self.guard)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, LoadedImage] = OrderedDict()
        self._inflight: dict[tuple, Future] = {}
        self.downloads = 0  # completed fetches (network or disk), for tests and metrics
        # Pillow refuses images over 2x MAX_IMAGE_PIXELS inside Image.open: keep that limit above ours, so that our
        # own check (with a clear message) decides.
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < self.max_pixels:
            Image.MAX_IMAGE_PIXELS = self.max_pixels
        Image.init()
        self._formats = tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)

    # -- public ----------------------------------------------------------------------------------------------------

    def load(self, url: str, task_id: int | None = None, project_id: int | None = None) -> LoadedImage:
        """The decoded image for a task's image reference; raises an :class:`ImageError` subclass.

        ``task_id`` (or, failing that, ``project_id``) is needed for cloud storage URIs only.
        """
        if not isinstance(url, str) or not url.strip():
            raise ImageBadUrl("the task has no image URL (empty or not a string)")
        url = url.strip()
        kind = self._classify(url)
        cache_key: tuple = (url, task_id, project_id) if kind == "cloud" else (url,)
        with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None:
                self._cache.move_to_end(cache_key)
                return hit
            future = self._inflight.get(cache_key)
            owner = future is None
            if owner:
                future = Future()
                self._inflight[cache_key] = future
        if not owner:
            return future.result()
        try:
            image = self._load_uncached(url, kind, task_id, project_id)
        except BaseException as exc:
            future.set_exception(exc)
            with self._lock:
                self._inflight.pop(cache_key, None)
            raise
        with self._lock:
            self._inflight.pop(cache_key, None)
            if self.cache_items > 0 and image.rgb.nbytes <= self.cache_bytes:
                self._cache[cache_key] = image
                self._cached_bytes += image.rgb.nbytes
                self._cache.move_to_end(cache_key)
                # Bounded by count and by bytes: 16 images of 50 MP would otherwise hold 2.4 GB.
                while len(self._cache) > self.cache_items or self._cached_bytes > self.cache_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._cached_bytes -= old.rgb.nbytes
        future.set_result(image)
        return image

    def clear(self) -> None:
        """Drop all cached images."""
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0

    def cached(self) -> int:
        """Number of decoded images in the cache."""
        with self._lock:
            return len(self._cache)

    def decode(self, data: bytes) -> np.ndarray:
        """Bytes to an ``HxWx3`` uint8 array with the pixel limit, the format allow-list and EXIF orientation."""
        # No warnings.catch_warnings here (it is not thread-safe): Pillow only warns above MAX_IMAGE_PIXELS, which
        # the constructor keeps >= max_pixels, and such images are refused below anyway.
        try:
            image = Image.open(io.BytesIO(data), formats=self._formats)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"the image has too many pixels (limit {self.max_pixels:,})") from exc
        except Image.UnidentifiedImageError as exc:
            raise ImageDecodeError(
                f"the downloaded data ({len(data):,} bytes) is not a supported image "
                f"({', '.join(self._formats)})"
            ) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageDecodeError(f"cannot read the image header: {exc}") from exc
        with image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError(f"the image has an invalid size {width}x{height}")
            if width * height > self.max_pixels:
                raise ImageTooLarge(
                    f"the image is {width}x{height} = {width * height:,} pixels, over the limit of "
                    f"{self.max_pixels:,} (MAX_IMAGE_PIXELS)"
                )
            try:
                image.load()
            except Image.DecompressionBombError as exc:
                raise ImageTooLarge(f"the image has too many pixels (limit {self.max_pixels:,})") from exc
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                raise ImageDecodeError(f"the image is corrupt or truncated: {exc}") from exc
            try:
                oriented = ImageOps.exif_transpose(image)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
                oriented = image
            try:
                rgb = to_rgb_array(oriented)
            except (OSError, ValueError) as exc:
                raise ImageDecodeError(f"cannot convert a {image.mode} image to RGB: {exc}") from exc
        rgb.setflags(write=False)
        return rgb

    # -- resolution --------------------------------------------------------------------------------------------------

    def _classify(self, url: str) -> str:
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

    def _load_uncached(self, url: str, kind: str, task_id: int | None, project_id: int | None) -> LoadedImage:
        if kind == "cloud":
            data = self._fetch_http(self._presign_url(url, task_id, project_id), original=url)
        elif kind == "ls-path":
            data = self._fetch_http(self._ls_url(url), original=url)
        elif kind == "http":
            data = self._fetch_http(url, original=url)
        elif kind == "file":
            data = self._read_local(self._file_url_path(url), original=url)
        elif kind == "local":
            data = self._read_local(url, original=url)
        else:
            raise ImageBadUrl(
                f"unsupported image reference {_describe(url)!r}: expected a Label Studio path (/data/upload/...), "
                f"an http(s) URL, a cloud URI ({', '.join(s + '://' for s in CLOUD_SCHEMES)}) or a local path"
            )
        with self._lock:
            self.downloads += 1
        rgb = self.decode(data)
        return LoadedImage(rgb=rgb, key=hashlib.blake2b(data, digest_size=16).hexdigest())

    def _require_ls(self, what: str) -> LabelStudioAuth:
        if self.auth is None or not self.auth.configured:
            raise ImageBadUrl(f"{what} needs Label Studio, but LABEL_STUDIO_URL is not set in the backend")
        return self.auth

    def _ls_url(self, path: str) -> str:
        auth = self._require_ls(f"the Label Studio path {_describe(path, keep_query=True)!r}")
        if path.startswith("upload/"):
            path = "/data/" + path
        return auth.url_for(path)

    def _presign_url(self, uri: str, task_id: int | None, project_id: int | None) -> str:
        auth = self._require_ls(f"the cloud storage URI {_describe(uri)!r}")
        encoded = quote(base64.urlsafe_b64encode(uri.encode("utf-8")).decode("ascii"), safe="")
        for route, value in (("tasks", task_id), ("projects", project_id)):
            if value is None:
                continue
            try:
                number = int(value)
            except (TypeError, ValueError) as exc:
                raise ImageBadUrl(f"the {route[:-1]} id must be an integer, got {value!r}") from exc
            return auth.url_for(f"/{route}/{number}/presign/?fileuri={encoded}")
        raise ImageBadUrl(f"the cloud storage URI {_describe(uri)!r} needs a task id to be resolved by Label Studio")

    # -- network -----------------------------------------------------------------------------------------------------

    def _blocked(self, url: str) -> ImageForbidden:
        scheme, host, port = origin_of(url) or ("", "?", 0)
        hint = ""
        if urlsplit(url).path.startswith(LS_PATH_PREFIXES):
            shown = f"[{host}]" if ":" in host else host
            hint = (f" If {scheme}://{shown}:{port} is your Label Studio, set LABEL_STUDIO_URL to exactly that origin "
                    "(scheme, host and port).")
        return ImageForbidden(
            f"refusing to fetch {_describe(url)}: {host} is not a public address. Plain image URLs on "
            "loopback/private networks are blocked unless the backend allows them (ALLOW_PRIVATE_URLS=true); Label "
            "Studio's own URLs are always allowed." + hint
        )

    def _fetch_http(self, url: str, original: str) -> bytes:
        deadline = time.monotonic() + self.timeout
        token_allowed = True  # becomes False for good once a hop leaves the Label Studio origin
        retried_auth = False
        hops = 0
        while True:
            # The URL is checked and canonicalised by the parser the HTTP client connects with; the token
            # decision below and the connection both use this exact string.
            try:
                url = check_url(url)
            except UnsafeURLError as exc:
                what = "redirect target" if hops else "image URL"
                raise ImageBadUrl(f"refused {what} {_describe_raw(url)}: {exc}") from exc
            on_ls = self.auth is not None and self.auth.is_label_studio_url(url)
            token_allowed = token_allowed and on_ls
            headers = {"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"}
            auth_header: dict[str, str] = {}
            if token_allowed and self.auth is not None:
                try:
                    auth_header = self.auth.auth_header()
                except LabelStudioConnectionError as exc:
                    raise ImageUnreachable(exc.message) from exc
                except LabelStudioAuthError as exc:
                    raise ImageAuthError(exc.message) from exc
                headers.update(auth_header)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ImageUnreachable(f"timed out after {self.timeout:g} s fetching {_describe(url)}", 504)
            try:
                response = self._session.get(
                    url, headers=headers, stream=True, allow_redirects=False, timeout=min(self.timeout, remaining)
                )
            except BlockedAddressError as exc:
                raise self._blocked(url) from exc
            except requests.Timeout as exc:
                raise ImageUnreachable(f"timed out after {self.timeout:g} s fetching {_describe(url)}", 504) from exc
            except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
                raise ImageBadUrl(f"invalid image URL {_describe(url)!r}") from exc
            except requests.RequestException as exc:
                raise ImageUnreachable(self._connection_message(url, on_ls, exc)) from exc
            with response:
                status = response.status_code
                if response.is_redirect:
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise ImageUnreachable(f"more than {MAX_REDIRECTS} redirects fetching {_describe(original)}")
                    url = urljoin(url, response.headers.get("Location", ""))
                    continue
                if status == 401 and on_ls and auth_header and not retried_auth and self.auth.can_refresh:
                    self.auth.invalidate(auth_header)  # the access token may have been revoked or expired early
                    retried_auth = True
                    continue
                if status != 200:
                    raise self._status_error(status, url, original, on_ls and token_allowed)
                return self._read_body(response, url, deadline)

    def _read_body(self, response: requests.Response, url: str, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            raise ImageTooLarge(
                f"{_describe(url)} is {int(declared):,} bytes, over the limit of {self.max_bytes:,} (MAX_IMAGE_BYTES)"
            )
        buffer = bytearray()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                buffer += chunk
                if len(buffer) > self.max_bytes:
                    raise ImageTooLarge(
                        f"{_describe(url)} is over the limit of {self.max_bytes:,} bytes (MAX_IMAGE_BYTES)"
                    )
                if time.monotonic() > deadline:
                    raise ImageUnreachable(f"timed out after {self.timeout:g} s downloading {_describe(url)}", 504)
        except requests.Timeout as exc:
            raise ImageUnreachable(f"timed out after {self.timeout:g} s downloading {_describe(url)}", 504) from exc
        except requests.RequestException as exc:
            raise ImageUnreachable(f"the download of {_describe(url)} broke off: {type(exc).__name__}") from exc
        return bytes(buffer)

    def _connection_message(self, url: str, on_ls: bool, exc: Exception) -> str:
        # One message for every way a connection fails (refused, reset, unresolvable): the caller learns nothing
        # about which ports of a host are open.
        host = (origin_of(url) or ("", "?", 0))[1]
        text = f"cannot connect to {host} to fetch {_describe(url)}"
        if on_ls:
            text += (
                "; check LABEL_STUDIO_URL: it must be reachable from the backend (not 'localhost' inside Docker)"
            )
        return text

    def _status_error(self, status: int, url: str, original: str, with_token: bool) -> ImageError:
        where = _describe(url, keep_query=with_token)
        if status in (401, 403):
            if with_token or (self.auth is not None and self.auth.is_label_studio_url(url)):
                return ImageAuthError(self._ls_auth_message(status, where))
            return ImageAuthError(
                f"{where} refused the download (HTTP {status}); the backend sends no credentials to hosts other "
                "than LABEL_STUDIO_URL (for cloud storage, the presigned URL may have expired)"
            )
        if status in (404, 410):
            text = f"image not found: {where} answered HTTP {status}"
            if "/presign/" in url:
                text += (
                    f" (Label Studio could not resolve {_describe(original)}: no cloud storage of this project "
                    "matches it, or the task does not exist)"
                )
            return ImageNotFound(text)
        if status in (408, 504):
            return ImageUnreachable(f"{where} timed out (HTTP {status})", 504)
        return ImageUnreachable(f"{where} answered HTTP {status} instead of the image")

    def _ls_auth_message(self, status: int, where: str) -> str:
        auth = self.auth
        base = f"Label Studio refused the image download {where} (HTTP {status}): "
        if auth is None or auth.token_kind == "none":
            return base + "LABEL_STUDIO_API_KEY is not set in the backend; set it to a personal access token"
        if status == 403:
            return base + "the user of LABEL_STUDIO_API_KEY has no access to this project or file"
        if auth.token_kind == "legacy":
            return base + (
                "LABEL_STUDIO_API_KEY is wrong, or it is a legacy token and legacy tokens are disabled (the default "
                "in Label Studio 1.2x): use a personal access token, or start Label Studio with "
                "--enable-legacy-api-token"
            )
        return base + "LABEL_STUDIO_API_KEY was rejected even after a fresh token exchange; create a new one"

    # -- local files -------------------------------------------------------------------------------------------------

    def _file_url_path(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ImageBadUrl(f"file:// URLs must not name a host: {_describe(url)!r}")
        return unquote(parts.path)

    def _read_local(self, path_text: str, original: str) -> bytes:
        root = self.local_files_root
        if root is None:
            raise ImageForbidden(
                f"local file paths are disabled ({_describe(original)!r}); set LOCAL_FILES_ROOT to allow "
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
            if info.st_size > self.max_bytes:
                raise ImageTooLarge(
                    f"{path_text!r} is {info.st_size:,} bytes, over the limit of {self.max_bytes:,} (MAX_IMAGE_BYTES)"
                )
            data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise ImageTooLarge(f"{path_text!r} is over the limit of {self.max_bytes:,} bytes (MAX_IMAGE_BYTES)")
        return data


def image_loader(settings: Settings, cache_items: int | None = None) -> ImageLoader:
    """The image loader the settings describe (the app's and the job's, so both fetch images the same way)."""
    auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key, timeout=10.0)
    return ImageLoader(auth=auth, local_files_root=settings.local_files_root, max_bytes=settings.max_image_bytes,
                       max_pixels=settings.max_image_pixels,
                       cache_items=settings.image_cache_items if cache_items is None else cache_items,
                       timeout=10.0, allow_private_hosts=settings.allow_private_urls,
                       cache_bytes=settings.image_cache_mb << 20)
