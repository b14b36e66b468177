"""Fetching an image named by URL in a ``/detect`` JSON body, for allowlisted hosts only.

Off unless ``url_fetch_hosts`` lists hosts. A fetch never follows a redirect (a 3xx is refused,
so a listed host cannot bounce the server to an internal address), connects to the address it
checked (no second DNS lookup an attacker could answer differently), refuses private, loopback,
link-local and reserved addresses unless the host is also in ``url_allow_private_hosts``, and
stops at ``url_fetch_max_bytes`` and ``url_fetch_timeout_s``. Runs in a worker thread.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from fnmatch import fnmatch
from urllib.parse import urlsplit

from service.config import Settings
from service.errors import BadRequest, PayloadTooLarge


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        # Certificate checked against the host name, while the socket goes to the checked IP.
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


def _allowed(host: str, patterns: list[str]) -> bool:
    return any(fnmatch(host, pattern.lower()) for pattern in patterns)


def _address(host: str, port: int, allow_private: bool) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise BadRequest(f"image URL host {host!r} does not resolve") from None
    address = str(infos[0][4][0])
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not allow_private and not ip.is_global:
            raise BadRequest(f"image URL host {host!r} resolves to a non-public address")
    return address


def fetch_image(url: str, settings: Settings) -> bytes:
    """The bytes at ``url``, or a 4xx ServiceError saying why not."""
    if not settings.url_fetch_hosts:
        raise BadRequest("image URLs are disabled on this server (url_fetch_hosts is empty)")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise BadRequest("image URL must be http(s)://host/...")
    if parts.username or parts.password:
        raise BadRequest("image URL must not carry credentials")
    if not _allowed(host, settings.url_fetch_hosts):
        raise BadRequest(f"image URL host {host!r} is not in url_fetch_hosts")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadRequest("image URL has an invalid port") from None
    address = _address(host, port, _allowed(host, settings.url_allow_private_hosts))
    kind = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    timeout = settings.url_fetch_timeout_s
    connection = kind(host, address, port, timeout)
    deadline = time.monotonic() + timeout
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    limit = settings.url_fetch_max_bytes
    try:
        connection.request("GET", path, headers={"User-Agent": "detect-serve", "Accept": "image/*"})
        response = connection.getresponse()
        if 300 <= response.status < 400:
            raise BadRequest(f"image URL answered {response.status}: redirects are not followed")
        if response.status != 200:
            raise BadRequest(f"image URL answered {response.status}")
        declared = response.getheader("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"image at URL is {declared} bytes; the limit is {limit}")
        chunks, size = [], 0
        while chunk := response.read(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"image at URL exceeds the limit of {limit} bytes")
            if time.monotonic() > deadline:
                raise BadRequest(f"image URL took longer than {timeout:g}s")
            chunks.append(chunk)
        return b"".join(chunks)
    except (OSError, http.client.HTTPException) as exc:
        raise BadRequest(f"image URL could not be fetched: {type(exc).__name__}") from None
    finally:
        connection.close()
