"""The image loader: task image reference in, decoded RGB out, with a bounded cache and one download per image.

The rules for each kind of reference are in :mod:`backend.images`; this module ties the parts together:
:mod:`~backend.images.sources` (kind and URL), :mod:`~backend.images.fetch` (download),
:mod:`~backend.images.decode` (pixels), and a :class:`~backend.common.cache.LRUCache` of decoded images keyed by the
URL (plus task/project for cloud URIs); concurrent loads of one key share one download.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.common.cache import LRUCache
from backend.images.decode import decode_image, pillow_formats
from backend.images.errors import ImageBadUrl, describe_url
from backend.images.fetch import HttpFetcher
from backend.images.ls_auth import LabelStudioAuth, origin_of
from backend.images.safe_http import AddressGuard
from backend.images.sources import CLOUD_SCHEMES, classify, file_url_path, ls_url, presign_url, read_local
from backend.settings import Settings

__all__ = ["ImageLoader", "LoadedImage", "image_loader"]


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


class ImageLoader:
    """Resolve, download, check, decode and cache task images (see :mod:`backend.images` for the rules).

    Arguments are explicit (nothing is read from the environment): ``auth`` for Label Studio (None: Label
    Studio paths are refused), ``local_files_root`` (None: local paths off), ``max_bytes`` per download,
    ``max_pixels`` per image, ``cache_items`` decoded images kept (0: no cache) in at most ``cache_bytes``,
    ``timeout`` seconds per download (connect, each read, and in total), ``allow_private_hosts`` for plain
    URLs. ``guard`` may replace the address policy (tests); every connection goes through a
    :class:`~backend.images.safe_http.GuardedSession`, never through a proxy (with one the guard could not see where
    a request really goes). Thread-safe.
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
        self.timeout = float(timeout)
        self.allow_private_hosts = bool(allow_private_hosts)
        ls_origin = origin_of(auth.base_url) if auth is not None and auth.base_url else None
        self.guard = guard or AddressGuard(allow_private=self.allow_private_hosts)
        if ls_origin is not None:
            self.guard.trusted.add(ls_origin)  # Label Studio is reached wherever it lives (often on loopback)
        self._http = HttpFetcher(auth, self.guard, self.timeout, self.max_bytes)
        self._lock = threading.Lock()  # the in-flight loads (the cache has its own lock)
        # Bounded by count and by bytes: 16 images of 50 MP would otherwise hold 2.4 GB.
        self._cache: LRUCache[tuple, LoadedImage] = LRUCache(self.cache_bytes, lambda image: image.rgb.nbytes,
                                                             max_items=self.cache_items)
        self._inflight: dict[tuple, Future] = {}
        self.downloads = 0  # completed fetches (network or disk), for tests and metrics
        self._formats = pillow_formats(self.max_pixels)

    # -- public ----------------------------------------------------------------------------------------------------

    def load(self, url: str, task_id: int | None = None, project_id: int | None = None) -> LoadedImage:
        """The decoded image for a task's image reference; raises an
        :class:`~backend.images.errors.ImageError` subclass.

        ``task_id`` (or, failing that, ``project_id``) is needed for cloud storage URIs only.
        """
        if not isinstance(url, str) or not url.strip():
            raise ImageBadUrl("the task has no image URL (empty or not a string)")
        url = url.strip()
        kind = classify(url)
        cache_key: tuple = (url, task_id, project_id) if kind == "cloud" else (url,)
        with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None:
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
            self._cache.put(cache_key, image)  # not kept when over cache_bytes alone, or with cache_items 0
        future.set_result(image)
        return image

    def clear(self) -> None:
        """Drop all cached images."""
        self._cache.clear()

    def cached(self) -> int:
        """Number of decoded images in the cache."""
        return len(self._cache)

    def decode(self, data: bytes) -> np.ndarray:
        """Bytes to an ``HxWx3`` uint8 array with the pixel limit, the format allow-list and EXIF orientation
        (:func:`backend.images.decode.decode_image`)."""
        return decode_image(data, self.max_pixels, self._formats)

    # -- one load ----------------------------------------------------------------------------------------------------

    def _load_uncached(self, url: str, kind: str, task_id: int | None, project_id: int | None) -> LoadedImage:
        if kind == "cloud":
            data = self._http.fetch(presign_url(self.auth, url, task_id, project_id), original=url)
        elif kind == "ls-path":
            data = self._http.fetch(ls_url(self.auth, url), original=url)
        elif kind == "http":
            data = self._http.fetch(url, original=url)
        elif kind == "file":
            data = read_local(file_url_path(url), url, self.local_files_root, self.max_bytes)
        elif kind == "local":
            data = read_local(url, url, self.local_files_root, self.max_bytes)
        else:
            raise ImageBadUrl(
                f"unsupported image reference {describe_url(url)!r}: expected a Label Studio path (/data/upload/...), "
                f"an http(s) URL, a cloud URI ({', '.join(s + '://' for s in CLOUD_SCHEMES)}) or a local path"
            )
        with self._lock:
            self.downloads += 1
        rgb = self.decode(data)
        return LoadedImage(rgb=rgb, key=hashlib.blake2b(data, digest_size=16).hexdigest())


def image_loader(settings: Settings, cache_items: int | None = None) -> ImageLoader:
    """The image loader the settings describe (the app's and the job's, so both fetch images the same way)."""
    auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key, timeout=10.0)
    return ImageLoader(auth=auth, local_files_root=settings.local_files_root, max_bytes=settings.max_image_bytes,
                       max_pixels=settings.max_image_pixels,
                       cache_items=settings.image_cache_items if cache_items is None else cache_items,
                       timeout=10.0, allow_private_hosts=settings.allow_private_urls,
                       cache_bytes=settings.image_cache_mb << 20)
