"""Loopback HTTP servers standing in for Label Studio's file routes and for a cloud bucket, for tests.

:class:`StubServer` is a threaded ``http.server`` on ``127.0.0.1`` with an OS-chosen port that serves routes
registered as Python callables and records every request (method, path, headers). :class:`FakeLabelStudio` adds
the Label Studio behaviour the image loader depends on:

* files under ``/data/upload/...`` (and any other registered path) only with ``Authorization: Token <legacy>`` or
  ``Authorization: Bearer <access>`` where ``<access>`` came from the token exchange and is still valid;
* ``POST /api/token/refresh/`` exchanging the personal access token (a JWT refresh token) for a short-lived JWT
  access token;
* ``GET /tasks/<id>/presign/?fileuri=<urlsafe base64>`` and ``/projects/<id>/presign/`` answering a 303 redirect to
  the URL registered for that cloud URI (the "cloud" server), like Label Studio's storage resolver.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LEGACY_TOKEN = "5f0e9a3c7b21d4e8a6f1c0b9d2e7a4c3b8f6e1d0"


def b64url(data: bytes) -> str:
    """Unpadded base64url, as in JWTs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict) -> str:
    """A JWT-shaped token with the given claims and a dummy signature (nobody verifies it in these tests)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{b64url(b'not-a-real-signature')}"


@dataclass
class Request:
    """One recorded request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header, if any (header names are matched case-insensitively)."""
        for name, value in self.headers.items():
            if name.lower() == "authorization":
                return value
        return None


@dataclass
class Response:
    """What a route answers: ``body`` may be bytes or an iterable of chunks (streamed without Content-Length)."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[Request], Response]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, self.path, dict(self.headers.items()), body)
        stub = self.server.stub
        stub._record(request)
        response = stub._dispatch(request)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if isinstance(response.body, bytes | bytearray):
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            return
        # Streamed body: no Content-Length, the end is marked by closing the connection.
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in response.body:
                self.wfile.write(chunk)
                self.wfile.flush()
                with stub._lock:
                    stub.streamed_bytes += len(chunk)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            with stub._lock:
                stub.stream_aborted = True

    do_GET = _handle
    do_POST = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stub: StubServer


class StubServer:
    """A threaded HTTP server on 127.0.0.1 (port chosen by the OS) with routes as callables.

    Use as a context manager or call :meth:`start`/:meth:`stop`. ``requests`` lists every request received;
    :meth:`count` counts requests to one path (without the query).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._routes: list[tuple[re.Pattern, Route]] = []
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.streamed_bytes = 0
        self.stream_aborted = False
        self._server = _Server((host, 0), _Handler)
        self._server.stub = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the OS gave us."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def route(self, pattern: str, handler: Route) -> None:
        """Serve paths (without the query) that fully match the regular expression ``pattern``."""
        self._routes.insert(0, (re.compile(pattern), handler))

    def file(self, path: str, data: bytes, content_type: str = "image/png") -> None:
        """Serve ``data`` at ``path`` with no authentication."""
        self.route(re.escape(path), lambda request: Response(200, data, {"Content-Type": content_type}))

    def count(self, path: str) -> int:
        """How many requests had this path (query ignored)."""
        with self._lock:
            return sum(1 for r in self.requests if urlsplit(r.path).path == path)

    def authorizations(self) -> list[str | None]:
        """The ``Authorization`` header of every request received, in order (None when absent)."""
        with self._lock:
            return [r.authorization for r in self.requests]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _dispatch(self, request: Request) -> Response:
        path = urlsplit(request.path).path
        for pattern, handler in self._routes:
            if pattern.fullmatch(path):
                return handler(request)
        return Response(404, b"not found", {"Content-Type": "text/plain"})

    def start(self) -> StubServer:
        """Start serving in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeLabelStudio(StubServer):
    """The parts of Label Studio the image loader talks to (see the module docstring).

    ``access_ttl`` is the lifetime of issued access tokens in seconds. ``cloud`` maps cloud URIs to the URL the
    presign route redirects to. ``refresh_delay`` slows the token exchange (to test concurrent refreshes).
    """

    def __init__(self, access_ttl: float = 300.0) -> None:
        super().__init__()
        now = int(time.time())
        self.legacy_token = LEGACY_TOKEN
        self.pat = make_jwt({"token_type": "refresh", "exp": now + 200 * 365 * 86400, "iat": now, "jti": "pat-1",
                             "user_id": 1})
        self.access_ttl = access_ttl
        self.refresh_delay = 0.0
        self.refresh_calls = 0
        self.presign_fileuris: list[str] = []
        self.cloud: dict[str, str] = {}
        self._access: dict[str, float] = {}  # access token -> expiry (server clock)
        self._serial = 0
        self.route(r"/api/token/refresh/", self._refresh)
        self.route(r"/(tasks|projects)/\d+/presign/", self._presign)

    # -- auth --------------------------------------------------------------------------------------------------------

    def is_authorized(self, request: Request) -> bool:
        """True for ``Token <legacy>`` or ``Bearer <valid access token>``."""
        value = request.authorization or ""
        if value == f"Token {self.legacy_token}":
            return True
        if value.startswith("Bearer "):
            with self._lock:
                expiry = self._access.get(value[len("Bearer "):])
            return expiry is not None and time.time() < expiry
        return False

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far invalid (as if its 5 minutes were over)."""
        with self._lock:
            self._access.clear()

    def _refresh(self, request: Request) -> Response:
        with self._lock:
            self.refresh_calls += 1
        if self.refresh_delay:
            time.sleep(self.refresh_delay)
        if request.method != "POST":
            return Response(405, b"")
        try:
            refresh = json.loads(request.body or b"{}").get("refresh")
        except ValueError:
            refresh = None
        if refresh != self.pat:
            return Response(401, json.dumps({"detail": "Token is invalid or expired"}).encode(),
                            {"Content-Type": "application/json"})
        now = time.time()
        with self._lock:
            self._serial += 1
            token = make_jwt({"token_type": "access", "exp": int(now + self.access_ttl), "iat": int(now),
                              "jti": f"access-{self._serial}", "user_id": 1})
            self._access[token] = now + self.access_ttl
        return Response(200, json.dumps({"access": token}).encode(), {"Content-Type": "application/json"})

    # -- files -------------------------------------------------------------------------------------------------------

    def protected_file(self, path: str, data: bytes, content_type: str = "image/png") -> None:
        """Serve ``data`` at ``path`` only to authorized requests (401 otherwise)."""

        def handler(request: Request) -> Response:
            if not self.is_authorized(request):
                return Response(401, b'{"detail":"Authentication credentials were not provided."}',
                                {"Content-Type": "application/json"})
            return Response(200, data, {"Content-Type": content_type})

        self.route(re.escape(path), handler)

    def _presign(self, request: Request) -> Response:
        if not self.is_authorized(request):
            return Response(401, b"")
        values = parse_qs(urlsplit(request.path).query).get("fileuri")
        if not values:
            return Response(400, b"")
        fileuri = base64.urlsafe_b64decode(values[0].encode()).decode()
        with self._lock:
            self.presign_fileuris.append(fileuri)
        target = self.cloud.get(fileuri)
        if target is None:
            return Response(404, b"")
        return Response(303, b"", {"Location": target, "Cache-Control": "no-store, max-age=0"})
