"""HTTP/1.1 connection limits below the ASGI app, and the uvicorn server that applies them.

uvicorn's httptools protocol bounds neither the size nor the number of request headers (a 128 MiB
header was read in full, holding the event loop for seconds) and never times out a client that
sends its headers slowly, or nothing at all. ``GuardedHttpToolsProtocol`` adds, per connection:

* a byte limit on the request line plus headers and a limit on their number (431, JSON);
* a deadline for a request's headers once its first byte arrives, and for an idle new
  connection to start one (408 JSON when a request had begun; otherwise the socket is closed);
* a cap on open connections (503 JSON with ``Retry-After``, before anything is read).

Bodies are guarded in ``service.limits`` (an ASGI middleware), where the route's error shape is
known. ``Server`` also tells that middleware when shutdown begins (``ShutdownSignal``), so uploads
still trickling in are cut with a JSON 503 before uvicorn's grace period runs out.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Unavailable"}


@dataclass(frozen=True)
class ProtocolLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    max_connections: int


class ShutdownSignal:
    """When shutdown began (``time.monotonic()``), and a way to wait for it from the loop."""

    def __init__(self, cut_after_s: float = 0.0) -> None:
        self.cut_after_s = cut_after_s  # how long after it began uploads are cut
        self.started_at: float | None = None
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def fire(self) -> None:
        """Safe from a signal handler: the loop is woken through its self-pipe."""
        if self.started_at is None:
            self.started_at = time.monotonic()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()

    def cut_at(self) -> float | None:
        return None if self.started_at is None else self.started_at + self.cut_after_s


def json_response(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error shape; the connection closes."""
    code = {408: "request_timeout", 431: "headers_too_large", 503: "overloaded"}[status]
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    lines = [
        b"HTTP/1.1 %d %s" % (status, REASONS[status]),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        *(f"{k}: {v}".encode() for k, v in (headers or {}).items()),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request over the limits."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, header timeouts and a connection cap."""

    LIMITS: ClassVar[ProtocolLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._header_count = 0
        self._raw_header_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.LIMITS.max_connections:
            message = f"too many open connections (limit {self.LIMITS.max_connections})"
            transport.write(json_response(503, message, {"Retry-After": "1"}))
            transport.close()
            return
        self._arm_header_timer()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # httptools reports a header only once its value is complete, gathering the pieces by
        # concatenation (quadratic: a 96 MiB header held the loop for 13 s), so bytes are
        # counted here, as they arrive, while a request's headers are incomplete.
        if self._in_headers and not self.transport.is_closing():
            self._raw_header_bytes += len(data)
            if self._raw_header_bytes > self.LIMITS.max_header_bytes:
                self._refusal = (431, self._too_big())
                self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = self._raw_header_bytes = 0
        self._in_headers = True
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.LIMITS.max_headers:
            self._refuse(431, f"more than {self.LIMITS.max_headers} request headers")
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error (ours included, raised from a callback) here.
        if self._refusal is None:
            super().send_400_response(msg)
            return
        status, message = self._refusal
        if not self.transport.is_closing():
            self.transport.write(json_response(status, message))
            self.transport.close()

    # -- limits --------------------------------------------------------------------------------

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.LIMITS.max_header_bytes:
            self._refuse(431, self._too_big())

    def _too_big(self) -> str:
        return f"request line and headers exceed {self.LIMITS.max_header_bytes} bytes"

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(
            self.LIMITS.header_timeout_s, self._header_timed_out
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        busy = self.cycle is not None and not self.cycle.response_complete
        if self._in_headers:
            message = f"request headers not received within {self.LIMITS.header_timeout_s:g} s"
            self.transport.write(json_response(408, message))
            self.transport.close()
        elif not busy:  # an idle connection that never started a request
            self.transport.close()


def protocol_class(limits: ProtocolLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, with ``limits`` bound."""
    return type("GuardedHttpTools", (GuardedHttpToolsProtocol,), {"LIMITS": limits})


class Server(uvicorn.Server):
    """uvicorn's server, telling ``signal`` the moment shutdown begins."""

    def __init__(self, config: uvicorn.Config, signal: ShutdownSignal) -> None:
        super().__init__(config)
        self.shutdown_signal = signal

    async def startup(self, sockets: Any = None) -> None:
        self.shutdown_signal.bind(asyncio.get_running_loop())
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.shutdown_signal.fire()


def run(app: Any, settings: Any, *, log_level: str, access_log: bool) -> None:
    """Serve ``app`` (built by ``service.app.create_app``) with the protocol limits of
    ``settings`` until SIGINT/SIGTERM."""
    limits = ProtocolLimits(
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(limits),
        log_level=log_level,
        server_header=False,  # no version banner
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        access_log=access_log,
        log_config=None,  # uvicorn's records go through configure_logging's handler
    )
    Server(config, app.state.shutdown).run()
