"""Request-body limits, enforced while the body streams in (pure ASGI, no buffering).

* Size: a declared ``Content-Length`` over the limit is refused at once with 413 and the body is
  never read; a chunked body is counted as it streams and refused the moment it crosses the limit.
* Time: a client must keep sending: no silence longer than ``idle_timeout_s``, and on average at
  least ``min_bytes_per_s`` once ``rate_grace_s`` has passed (408; slow-upload attacks hold a
  socket, never a decode worker or a place in the in-flight gauge).
* Shutdown: a body still arriving when ``ShutdownSignal.cut_at()`` passes is cut with 503.
* Authentication first: a request without a valid API key (when keys are set) is not told about
  limits (the route answers 401 without reading the body), and ``protected_paths`` (the API docs)
  need a key too.

Errors raised from ``receive`` are ``ServiceError``s, so a handler that is reading the body when
one happens answers with the right status and JSON shape (not 500).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    ShuttingDownError,
    Unauthorized,
    error_body,
)
from service.protocol import ShutdownSignal


class BodyTooLarge(PayloadTooLarge):
    """Raised from ``receive`` when a streamed body crosses the limit."""


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int
    idle_timeout_s: float = math.inf
    min_bytes_per_s: float = 0.0
    rate_grace_s: float = 0.0


async def send_error(send: Send, path: str, err: ServiceError) -> None:
    # KServe v2 clients expect that protocol's own error shape.
    shape = {"error": err.message} if path.startswith("/v2") else error_body(err.code, err.message)
    body = json.dumps(shape).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((k.lower().encode(), v.encode()) for k, v in err.headers.items() if k != "Connection"),
    ]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyReader:
    """``receive`` for one request, with the size, rate, silence and shutdown checks."""

    def __init__(self, receive: Receive, limits: BodyLimits, shutdown: ShutdownSignal) -> None:
        self._receive = receive
        self._limits = limits
        self._shutdown = shutdown
        self._started = self._last = time.monotonic()
        self._seen = 0
        self._done = False

    def _wait_until(self) -> float:
        lim = self._limits
        until = self._last + lim.idle_timeout_s
        if lim.min_bytes_per_s > 0:
            until = min(until, self._started + lim.rate_grace_s + self._seen / lim.min_bytes_per_s)
        cut = self._shutdown.cut_at()
        return until if cut is None else min(until, cut)

    async def __call__(self) -> Message:
        if self._done:  # after the body, receive only reports a disconnect: nothing to guard
            return await self._receive()
        while True:
            incoming = asyncio.ensure_future(self._receive())
            waits: set[asyncio.Future[Any]] = {incoming}
            if self._shutdown.started_at is None:  # wake when shutdown begins, to set the cut
                waits.add(asyncio.ensure_future(self._shutdown.wait()))
            timeout = max(0.0, self._wait_until() - time.monotonic())
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits - {incoming}:
                    waiting.cancel()
                if not incoming.done():
                    incoming.cancel()  # safe: uvicorn keeps unread body until the next receive
            if incoming.done() and not incoming.cancelled():
                return self._account(incoming.result())
            self._check_time()

    def _account(self, message: Message) -> Message:
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            self._last = time.monotonic()
            if self._seen > self._limits.max_body_bytes:
                raise BodyTooLarge(
                    f"request body exceeds the limit of {self._limits.max_body_bytes} bytes"
                )
            self._done = not message.get("more_body", False)
        else:
            self._done = True
        return message

    def _check_time(self) -> None:
        now = time.monotonic()
        cut = self._shutdown.cut_at()
        if cut is not None and now >= cut:
            raise ShuttingDownError("server is shutting down; the upload did not finish in time")
        lim = self._limits
        if now - self._last >= lim.idle_timeout_s:
            raise RequestTimeout(f"no body data received for {lim.idle_timeout_s:g} s")
        owed = (now - self._started - lim.rate_grace_s) * lim.min_bytes_per_s
        if lim.min_bytes_per_s > 0 and self._seen < owed:
            raise RequestTimeout(f"request body sent slower than {lim.min_bytes_per_s:g} bytes/s")
        # Otherwise shutdown just began: wait again, now until the cut as well.


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        *,
        limits: BodyLimits | None = None,
        shutdown: ShutdownSignal | None = None,
        authorized: Callable[[Scope], bool] = lambda scope: True,
        protected_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.limits = limits or BodyLimits(max_body_bytes)
        self.shutdown = shutdown or ShutdownSignal()
        self.authorized = authorized
        self.protected = frozenset(protected_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in self.protected and not self.authorized(scope):
            await send_error(send, path, Unauthorized())
            return
        if self._declared(scope) > self.limits.max_body_bytes and self.authorized(scope):
            limit = self.limits.max_body_bytes
            err = BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            await send_error(send, path, err)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, _BodyReader(receive, self.limits, self.shutdown), tracking_send)
        except ServiceError as err:  # raised where no handler maps it: answer here
            if not started:
                await send_error(send, path, err)

    @staticmethod
    def _declared(scope: Scope) -> int:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return -1
        return -1
