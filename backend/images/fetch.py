"""Image downloads over HTTP: redirects followed by hand, the SSRF guard on every hop, the Label Studio token only on
its origin, size and time limits, and errors that say what went wrong without leaking the token."""

from __future__ import annotations

import time
from urllib.parse import urljoin, urlsplit

import requests

from backend.images.errors import (
    ImageAuthError,
    ImageBadUrl,
    ImageError,
    ImageForbidden,
    ImageNotFound,
    ImageTooLarge,
    ImageUnreachable,
    describe_raw_url,
    describe_url,
)
from backend.images.ls_auth import LabelStudioAuth, LabelStudioAuthError, LabelStudioConnectionError, origin_of
from backend.images.safe_http import AddressGuard, BlockedAddressError, GuardedSession, UnsafeURLError, check_url
from backend.images.sources import LS_PATH_PREFIXES

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
USER_AGENT = "fcfi-labelstudio-backend/0.1 (image loader)"


class HttpFetcher:
    """Downloads image bytes (see the module docstring).

    Args:
        auth: Label Studio's token (None: no token is ever sent).
        guard: the address policy; every connection goes through a :class:`~backend.images.safe_http.GuardedSession`,
            never through a proxy (with one the guard could not see where a request really goes).
        timeout: seconds per download (connect, each read, and in total).
        max_bytes: larger downloads are refused.
    """

    def __init__(self, auth: LabelStudioAuth | None, guard: AddressGuard, timeout: float, max_bytes: int) -> None:
        self.auth = auth
        self.guard = guard
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self._session = GuardedSession(guard)

    def _blocked(self, url: str) -> ImageForbidden:
        scheme, host, port = origin_of(url) or ("", "?", 0)
        hint = ""
        if urlsplit(url).path.startswith(LS_PATH_PREFIXES):
            shown = f"[{host}]" if ":" in host else host
            hint = (f" If {scheme}://{shown}:{port} is your Label Studio, set LABEL_STUDIO_URL to exactly that origin "
                    "(scheme, host and port).")
        return ImageForbidden(
            f"refusing to fetch {describe_url(url)}: {host} is not a public address. Plain image URLs on "
            "loopback/private networks are blocked unless the backend allows them (ALLOW_PRIVATE_URLS=true); Label "
            "Studio's own URLs are always allowed." + hint
        )

    def fetch(self, url: str, original: str) -> bytes:
        """The body of ``url`` (``original``: the task's reference, for messages); raises an :class:`ImageError`."""
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
                raise ImageBadUrl(f"refused {what} {describe_raw_url(url)}: {exc}") from exc
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
                raise ImageUnreachable(f"timed out after {self.timeout:g} s fetching {describe_url(url)}", 504)
            try:
                response = self._session.get(
                    url, headers=headers, stream=True, allow_redirects=False, timeout=min(self.timeout, remaining)
                )
            except BlockedAddressError as exc:
                raise self._blocked(url) from exc
            except requests.Timeout as exc:
                raise ImageUnreachable(f"timed out after {self.timeout:g} s fetching {describe_url(url)}", 504) from exc
            except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
                raise ImageBadUrl(f"invalid image URL {describe_url(url)!r}") from exc
            except requests.RequestException as exc:
                raise ImageUnreachable(self._connection_message(url, on_ls, exc)) from exc
            with response:
                status = response.status_code
                if response.is_redirect:
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise ImageUnreachable(f"more than {MAX_REDIRECTS} redirects fetching {describe_url(original)}")
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
                f"{describe_url(url)} is {int(declared):,} bytes, over the limit of {self.max_bytes:,} "
                "(MAX_IMAGE_BYTES)"
            )
        buffer = bytearray()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                buffer += chunk
                if len(buffer) > self.max_bytes:
                    raise ImageTooLarge(
                        f"{describe_url(url)} is over the limit of {self.max_bytes:,} bytes (MAX_IMAGE_BYTES)"
                    )
                if time.monotonic() > deadline:
                    raise ImageUnreachable(f"timed out after {self.timeout:g} s downloading {describe_url(url)}", 504)
        except requests.Timeout as exc:
            raise ImageUnreachable(f"timed out after {self.timeout:g} s downloading {describe_url(url)}", 504) from exc
        except requests.RequestException as exc:
            raise ImageUnreachable(f"the download of {describe_url(url)} broke off: {type(exc).__name__}") from exc
        return bytes(buffer)

    def _connection_message(self, url: str, on_ls: bool, exc: Exception) -> str:
        # One message for every way a connection fails (refused, reset, unresolvable): the caller learns nothing
        # about which ports of a host are open.
        host = (origin_of(url) or ("", "?", 0))[1]
        text = f"cannot connect to {host} to fetch {describe_url(url)}"
        if on_ls:
            text += (
                "; check LABEL_STUDIO_URL: it must be reachable from the backend (not 'localhost' inside Docker)"
            )
        return text

    def _status_error(self, status: int, url: str, original: str, with_token: bool) -> ImageError:
        where = describe_url(url, keep_query=with_token)
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
                    f" (Label Studio could not resolve {describe_url(original)}: no cloud storage of this project "
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
