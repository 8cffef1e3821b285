"""Label Studio authentication for image downloads.

Label Studio 1.23 accepts two kinds of API keys for downloading task images:

* a **legacy token** (an opaque hex string), sent as ``Authorization: Token <key>``. Label Studio 1.2x disables
  legacy tokens for new organisations unless it runs with ``--enable-legacy-api-token``;
* a **personal access token** (PAT): a JWT *refresh* token. Sent raw it gives 401; it must be exchanged at
  ``POST {LABEL_STUDIO_URL}/api/token/refresh/`` with ``{"refresh": PAT}`` for a short-lived access token
  (``{"access": JWT}``, about 5 minutes), which is sent as ``Authorization: Bearer <access>``.

:class:`LabelStudioAuth` hides the difference: :meth:`LabelStudioAuth.headers_for` returns the ``Authorization``
header for a URL on the Label Studio origin and nothing for any other URL, so the key never leaves that origin.
Access tokens are cached and refreshed shortly before they expire (and once more after a 401, through
:meth:`LabelStudioAuth.invalidate`); a lock makes concurrent refreshes collapse into one request.

JWT payloads are decoded without verifying the signature: the backend only reads ``exp`` and ``token_type`` to
decide when to refresh; Label Studio does the verification.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from backend.images.safe_http import origin

__all__ = [
    "LabelStudioAuth",
    "LabelStudioAuthError",
    "LabelStudioConfigError",
    "LabelStudioConnectionError",
    "TokenExpiredError",
    "TokenRefreshError",
    "decode_jwt_claims",
    "origin_of",
    "same_origin",
]

REFRESH_PATH = "/api/token/refresh/"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Refresh this many seconds before ``exp`` (capped at a quarter of the token's lifetime for short-lived tokens).
DEFAULT_REFRESH_MARGIN = 30.0


class LabelStudioAuthError(Exception):
    """Any problem turning ``LABEL_STUDIO_API_KEY`` into a working ``Authorization`` header.

    ``status`` is the HTTP status Label Studio answered, when there was one. Messages never contain the key.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class LabelStudioConfigError(LabelStudioAuthError, ValueError):
    """``LABEL_STUDIO_URL`` is malformed (raised by the constructor)."""


class TokenExpiredError(LabelStudioAuthError):
    """The personal access token (or a raw access token) has passed its ``exp``: the user must make a new one."""


class TokenRefreshError(LabelStudioAuthError):
    """Label Studio refused the PAT exchange at ``/api/token/refresh/`` or answered something unusable."""


class LabelStudioConnectionError(LabelStudioAuthError):
    """Label Studio could not be reached for the PAT exchange (connection refused, DNS, timeout)."""


def origin_of(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) URL, lower-cased, default ports filled in; None if not http(s) or
    not a URL the backend fetches (:func:`backend.images.safe_http.check_url`).

    The same parser the HTTP client connects with decides it, so "on the Label Studio origin" means the request
    really goes there. IPv6 hosts come without brackets; a trailing dot on the host name is dropped.
    """
    return origin(url.strip()) if isinstance(url, str) else None


def same_origin(url_a: str, url_b: str) -> bool:
    """True when both URLs are http(s) with the same scheme, host and port (``:80``/``:443`` normalised).

    Host names are compared as written (``localhost`` and ``127.0.0.1`` differ), which is what a browser's
    same-origin rule does too; nothing is resolved.
    """
    a, b = origin_of(url_a), origin_of(url_b)
    return a is not None and a == b


def _b64url_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def decode_jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT-shaped token (three base64url parts, a JSON header with ``alg``), unverified.

    Returns None for anything else, e.g. a legacy hex token.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    try:
        header, claims = _b64url_json(parts[0]), _b64url_json(parts[1])
    except (ValueError, UnicodeError, binascii.Error):
        return None
    if not isinstance(header, dict) or "alg" not in header or not isinstance(claims, dict):
        return None
    return claims


def _normalise_key(api_key: str | None) -> str | None:
    """Strip whitespace, quotes and a pasted ``Token ``/``Bearer `` prefix."""
    if api_key is None:
        return None
    key = api_key.strip().strip("'\"").strip()
    for prefix in ("token ", "bearer "):
        if key.lower().startswith(prefix):
            key = key[len(prefix):].strip()
    return key or None


def _normalise_base_url(url: str | None) -> str | None:
    if url is None or not url.strip():
        return None
    base = url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname:
        raise LabelStudioConfigError(
            f"LABEL_STUDIO_URL must be an absolute http(s) URL such as http://localhost:8080, got {base!r}"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise LabelStudioConfigError("LABEL_STUDIO_URL must not contain credentials, a query or a fragment")
    if origin_of(base) is None:
        raise LabelStudioConfigError(f"LABEL_STUDIO_URL has an invalid host or port: {base!r}")
    return base


class LabelStudioAuth:
    """The Label Studio base URL and the ``Authorization`` header for requests to that origin only.

    ``url`` is ``LABEL_STUDIO_URL`` (None: no Label Studio configured), ``api_key`` is ``LABEL_STUDIO_API_KEY``
    (None: requests go out without a header and Label Studio will answer 401), ``timeout`` bounds the PAT
    exchange. ``session`` and ``clock`` (``time.time``) can be injected; ``refresh_margin`` is how many seconds
    before ``exp`` an access token is renewed. Thread-safe.
    """

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        timeout: float = 10.0,
        *,
        session: requests.Session | None = None,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url: str | None = _normalise_base_url(url)
        self.timeout = float(timeout)
        self.refresh_margin = float(refresh_margin)
        self._key = _normalise_key(api_key)
        self._clock = clock
        self._session = session or requests.Session()
        self._session.trust_env = False  # no proxies or ~/.netrc credentials on the refresh request
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_renew_at = 0.0
        self._refresh_count = 0
        claims = decode_jwt_claims(self._key) if self._key else None
        self._claims = claims
        if self._key is None:
            self.token_kind = "none"
        elif claims is None:
            self.token_kind = "legacy"
        elif claims.get("token_type") == "access":
            self.token_kind = "access"
        else:  # Label Studio PATs carry token_type "refresh"; any other JWT is treated the same way
            self.token_kind = "pat"

    # -- introspection -------------------------------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        """True when ``LABEL_STUDIO_URL`` is set."""
        return self.base_url is not None

    @property
    def has_key(self) -> bool:
        """True when ``LABEL_STUDIO_API_KEY`` is set."""
        return self._key is not None

    @property
    def refresh_count(self) -> int:
        """How many PAT exchanges this object has made (for tests and metrics)."""
        return self._refresh_count

    @property
    def can_refresh(self) -> bool:
        """True when the key is a PAT, i.e. a rejected access token may be renewed by a new exchange."""
        return self.token_kind == "pat"

    def __repr__(self) -> str:  # never show the key
        return f"LabelStudioAuth(url={self.base_url!r}, token_kind={self.token_kind!r})"

    # -- URLs ----------------------------------------------------------------------------------------------------

    def url_for(self, path: str) -> str:
        """``path`` (``/data/upload/...``) joined to the base URL, keeping a sub-path such as ``https://h/ls``."""
        if self.base_url is None:
            raise LabelStudioConfigError(f"LABEL_STUDIO_URL is not set, so {path!r} cannot be resolved")
        return self.base_url + "/" + path.lstrip("/")

    def is_label_studio_url(self, url: str) -> bool:
        """True when ``url`` is on the Label Studio origin (scheme, host and port)."""
        return self.base_url is not None and same_origin(url, self.base_url)

    # -- headers -------------------------------------------------------------------------------------------------

    def headers_for(self, url: str) -> dict[str, str]:
        """``{"Authorization": ...}`` if ``url`` is on the Label Studio origin and a key is set, else ``{}``."""
        if not self.is_label_studio_url(url):
            return {}
        return self.auth_header()

    def auth_header(self) -> dict[str, str]:
        """The ``Authorization`` header for Label Studio (``{}`` without a key); exchanges/refreshes a PAT.

        Raises :class:`TokenExpiredError`, :class:`TokenRefreshError` or :class:`LabelStudioConnectionError`.
        """
        if self.token_kind == "none":
            return {}
        if self.token_kind == "legacy":
            return {"Authorization": f"Token {self._key}"}
        if self.token_kind == "access":
            exp = self._claims.get("exp") if self._claims else None
            if isinstance(exp, int | float) and exp <= self._clock():
                raise TokenExpiredError(
                    "LABEL_STUDIO_API_KEY is a Label Studio access token that has expired; use a personal access "
                    "token (Account & Settings > Personal Access Token) or a legacy token instead",
                    401,
                )
            return {"Authorization": f"Bearer {self._key}"}
        return {"Authorization": f"Bearer {self._access_token()}"}

    def invalidate(self, header: dict[str, str] | None = None) -> None:
        """Forget the cached access token (after Label Studio answered 401 with it).

        With ``header`` (the one that was rejected), only that token is dropped, so threads that fail with the
        same old token trigger one refresh, not one each.
        """
        with self._lock:
            if header is not None and self._access is not None:
                if header.get("Authorization") != f"Bearer {self._access}":
                    return
            self._access = None
            self._access_renew_at = 0.0

    # -- PAT exchange ----------------------------------------------------------------------------------------------

    def _access_token(self) -> str:
        now = self._clock()
        token = self._access
        if token is not None and now < self._access_renew_at:
            return token
        with self._lock:
            now = self._clock()
            if self._access is not None and now < self._access_renew_at:
                return self._access  # another thread refreshed while we waited
            self._check_pat_not_expired(now)
            access = self._exchange()
            claims = decode_jwt_claims(access) or {}
            exp, iat = claims.get("exp"), claims.get("iat")
            if isinstance(exp, int | float):
                lifetime = exp - (iat if isinstance(iat, int | float) else now)
                margin = min(self.refresh_margin, max(lifetime, 0.0) / 4)
                renew_at = exp - margin
            else:
                renew_at = now + 60.0  # no exp: renew every minute, to be safe
            self._access, self._access_renew_at = access, renew_at
            return access

    def _check_pat_not_expired(self, now: float) -> None:
        exp = self._claims.get("exp") if self._claims else None
        if isinstance(exp, int | float) and exp <= now:
            raise TokenExpiredError(
                "LABEL_STUDIO_API_KEY is a personal access token that has expired; create a new one in Label "
                "Studio (Account & Settings > Personal Access Token)",
                401,
            )

    def _exchange(self) -> str:
        url = self.url_for(REFRESH_PATH)
        try:
            response = self._session.post(
                url, json={"refresh": self._key}, timeout=self.timeout, allow_redirects=False,
                headers={"Accept": "application/json"},
            )
        except requests.Timeout as exc:
            raise LabelStudioConnectionError(
                f"timed out after {self.timeout:g} s exchanging the personal access token at {url}"
            ) from exc
        except requests.RequestException as exc:
            raise LabelStudioConnectionError(
                f"cannot reach Label Studio at {self.base_url} to exchange the personal access token "
                f"({type(exc).__name__}); check LABEL_STUDIO_URL"
            ) from exc
        with response:
            status = response.status_code
            if status in (401, 403):
                raise TokenRefreshError(
                    f"Label Studio rejected LABEL_STUDIO_API_KEY at {REFRESH_PATH} (HTTP {status}): the personal "
                    "access token is wrong, revoked or from another Label Studio instance",
                    status,
                )
            if response.is_redirect:
                raise TokenRefreshError(
                    f"Label Studio redirected the token exchange (HTTP {status}) to "
                    f"{response.headers.get('Location', '?')}; set LABEL_STUDIO_URL to the address it redirects to",
                    status,
                )
            if status == 404:
                raise TokenRefreshError(
                    f"{url} does not exist (HTTP 404): this Label Studio has no personal access tokens (it is "
                    "older than 1.17?); use a legacy token, or check LABEL_STUDIO_URL",
                    status,
                )
            if status != 200:
                raise TokenRefreshError(f"token exchange at {url} failed with HTTP {status}", status)
            try:
                body = response.json()
            except ValueError as exc:
                raise TokenRefreshError(f"token exchange at {url} did not answer JSON", status) from exc
        access = body.get("access") if isinstance(body, dict) else None
        if not isinstance(access, str) or not access:
            raise TokenRefreshError(f"token exchange at {url} answered no 'access' token", status)
        self._refresh_count += 1
        return access
