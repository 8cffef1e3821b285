"""Task images: from a Label Studio image reference to a decoded, checked ``HxWx3`` uint8 RGB array.

:class:`backend.images.loader.ImageLoader` turns the image reference in a Label Studio task into an ``HxWx3`` uint8
RGB array, exactly as the browser shows it (EXIF orientation applied), with these rules:

* **Label Studio paths** (``/data/upload/...``, ``/data/local-files/?d=...``, ``/storage-data/...``, ``upload/...``)
  and absolute URLs on the ``LABEL_STUDIO_URL`` origin are fetched from Label Studio with its ``Authorization``
  header (:class:`~backend.images.ls_auth.LabelStudioAuth`).
* **Cloud storage URIs** (``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://``, ``b2://``) go through Label
  Studio's resolver ``GET {LS}/tasks/{task_id}/presign/?fileuri=<urlsafe base64 of the URI>`` (or
  ``/projects/{project_id}/presign/`` without a task), which answers a 303 redirect to a presigned URL or
  streams the file itself. The redirect target never receives the Label Studio token.
* **Plain http(s) URLs** on other hosts are fetched without the token. Unless ``allow_private_hosts``, hosts that
  resolve to loopback, private, link-local, reserved or otherwise non-global addresses are refused (SSRF guard);
  the Label Studio origin itself is always allowed.
* **Local paths** (absolute, or ``file://``) only under ``local_files_root`` after resolving symlinks; otherwise
  refused. Off when ``local_files_root`` is None.

Redirects are followed by hand (at most :data:`backend.images.fetch.MAX_REDIRECTS`): every hop off the Label Studio
origin passes the SSRF check, and once a hop has left that origin the token is never sent again. Downloads are
streamed and cut at ``max_bytes``; images over ``max_pixels`` are refused from their header, before decoding. Decoded
images are kept in a bounded LRU keyed by the URL (plus task/project for cloud URIs), and concurrent loads of the same
key share one download.

Modules: :mod:`~backend.images.errors` (the errors and the HTTP status of each), :mod:`~backend.images.sources`
(which kind of reference, where to fetch it, local files), :mod:`~backend.images.fetch` (guarded HTTP downloads),
:mod:`~backend.images.decode` (bytes to RGB), :mod:`~backend.images.loader` (the loader and its cache),
:mod:`~backend.images.ls_auth` (Label Studio's token) and :mod:`~backend.images.safe_http` (the SSRF guard).
"""
