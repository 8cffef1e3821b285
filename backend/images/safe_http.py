"""Outgoing HTTP with one URL parser and the address check made on the connection itself.

Two rules keep the Label Studio token and the SSRF guard honest:

* **One parser.** :func:`check_url` parses with ``urllib3.util.parse_url``, the parser requests itself uses to
  pick the host it connects to, and returns that parser's canonical URL; the caller sends exactly that URL and
  decides "is this Label Studio?" (:func:`origin`) from the same parse. URLs that parsers read differently are
  refused outright: backslashes, control characters, whitespace, user info (``user@``), percent signs or
  non-ASCII characters in the host, and anything but http(s). (``http://FOREIGN\\@LS_HOST/`` reads as
  ``LS_HOST`` to ``urllib.parse`` and as ``FOREIGN`` to urllib3.)
* **Check what you connect to.** :class:`GuardedSession` resolves the host once inside the connection, refuses
  it unless every address is public (or the origin is trusted, e.g. Label Studio, or private hosts are allowed),
  and connects to exactly the checked address. No second resolution happens between check and connect, so DNS
  rebinding has no window, and every redirect hop passes the same check because every hop opens a connection
  through it. A refused host is refused before any packet is sent to it, so the answer says nothing about
  which of its ports are open.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, LocationParseError, NameResolutionError, NewConnectionError
from urllib3.util import parse_url

__all__ = [
    "AddressGuard",
    "BlockedAddressError",
    "GuardedSession",
    "Origin",
    "UnsafeURLError",
    "check_url",
    "is_public_address",
    "origin",
]

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 8192
Origin = tuple[str, str, int]  # (scheme, host without brackets or trailing dot, port), lower-case

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


class UnsafeURLError(ValueError):
    """The URL is malformed or could be read differently by different parsers."""


class BlockedAddressError(Exception):
    """A connection was refused before it was made: the host resolves to a non-public address.

    Not an ``OSError``, so urllib3 neither retries it nor wraps it into a connection error.
    """

    def __init__(self, host: str) -> None:
        super().__init__(f"{host} resolves to a non-public address")
        self.host = host


def check_url(url: str) -> str:
    """The canonical form of an http(s) URL, as the HTTP client will use it; raises :class:`UnsafeURLError`."""
    if not isinstance(url, str) or not url:
        raise UnsafeURLError("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if "\\" in url:
        raise UnsafeURLError("backslashes are not allowed in URLs")
    if any(ch <= " " or ch == "\x7f" or ch.isspace() for ch in url):
        raise UnsafeURLError("control characters and whitespace are not allowed in URLs")
    try:
        parsed = parse_url(url)
    except (LocationParseError, ValueError) as exc:
        raise UnsafeURLError("the URL cannot be parsed") from exc
    scheme = (parsed.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise UnsafeURLError("only http and https URLs are fetched")
    authority = re.split(r"[/?#]", url.split("//", 1)[1], maxsplit=1)[0] if "//" in url else ""
    if parsed.auth is not None or "@" in authority:
        raise UnsafeURLError("user info (user:password@) is not allowed in URLs")
    if not parsed.host:
        raise UnsafeURLError("the URL has no host")
    # urllib3 would decode %XX and IDNA-encode non-ASCII host names: refuse both rather than reason about them.
    if "%" in authority or not authority.isascii():
        raise UnsafeURLError("percent signs and non-ASCII characters are not allowed in the host (use punycode)")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnsafeURLError("the URL has an invalid port")
    return parsed.url


def origin(url: str) -> Origin | None:
    """``(scheme, host, port)`` of a URL :func:`check_url` accepts (default ports filled in), else None."""
    try:
        parsed = parse_url(check_url(url))
    except UnsafeURLError:
        return None
    scheme = parsed.scheme.lower()
    host = parsed.host.lower().strip("[]").rstrip(".")
    return scheme, host, parsed.port or DEFAULT_PORTS[scheme]


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address; IPv4 embedded in IPv6 is judged as IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL:  # deprecated site-local, still routed inside some networks
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]
        if embedded is None and (ip in _NAT64 or ip in _IPV4_COMPATIBLE):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def _system_resolver(host: str, port: int) -> list[tuple[int, tuple]]:
    return [(info[0], info[4]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass
class AddressGuard:
    """Which connections may be made.

    Attributes:
        allow_private: connect anywhere (``ALLOW_PRIVATE_URLS``).
        trusted: origins connected to whatever they resolve to (Label Studio's own origin).
        resolver: ``(host, port) -> [(family, sockaddr), ...]``; None: the system resolver.
        is_public: the address policy; None: :func:`is_public_address`.
    """

    allow_private: bool = False
    trusted: set[Origin] = field(default_factory=set)
    resolver: Callable[[str, int], list[tuple[int, tuple]]] | None = None
    is_public: Callable[[str], bool] | None = None

    def addresses(self, scheme: str, host: str, port: int) -> list[tuple[int, tuple]]:
        """The socket addresses to connect to, in order; raises :class:`BlockedAddressError` or ``socket.gaierror``."""
        infos = (self.resolver or _system_resolver)(host, port)
        key = (scheme, host.lower().strip("[]").rstrip("."), port)
        if not self.allow_private and key not in self.trusted:
            public = self.is_public or is_public_address
            # Every address must pass: a name that resolves to a public and a private address is refused.
            if not infos or not all(public(str(sockaddr[0])) for _, sockaddr in infos):
                raise BlockedAddressError(host)
        return infos


class _GuardedConnectionMixin:
    guard: AddressGuard
    scheme_name = "http"

    def _new_conn(self) -> socket.socket:  # replaces urllib3's resolve-and-connect
        try:
            infos = self.guard.addresses(self.scheme_name, self._dns_host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        last: OSError | None = None
        for family, sockaddr in infos:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if isinstance(self.timeout, int | float):
                    sock.settimeout(self.timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)  # exactly the address that was checked
                return sock
            except TimeoutError as exc:
                sock.close()
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from exc
            except OSError as exc:
                sock.close()
                last = exc
        raise NewConnectionError(self, "Failed to establish a new connection") from last


def _pool_classes(guard: AddressGuard) -> dict[str, type]:
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection),
                     {"guard": guard, "scheme_name": "http"})
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection),
                      {"guard": guard, "scheme_name": "https"})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._guard)


class GuardedSession(requests.Session):
    """A ``requests.Session`` whose every connection passes ``guard`` (no proxies, no ``.netrc``)."""

    def __init__(self, guard: AddressGuard) -> None:
        super().__init__()
        self.trust_env = False
        self.guard = guard
        adapter = _GuardedAdapter(guard)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
