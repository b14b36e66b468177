"""Request IDs: taken from ``X-Request-ID`` (or gRPC metadata ``x-request-id``) or made here,
kept in a context variable for the request's logs and error bodies, and sent back.

A client-supplied ID is kept only if it is short printable ASCII (it is echoed into headers and
logs); anything else is replaced with a fresh one.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_VALID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("detect-serve.access")


def accept(presented: str | None) -> str:
    """The client's ID when it is safe to echo, else a new one."""
    if presented and _VALID.match(presented):
        return presented
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current.get()
        return True


class RequestIdMiddleware:
    """Pure ASGI: sets the ID before the app runs, adds the response header, and writes one
    access line per request with method, path, status, duration and the ID."""

    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope.get("headers", []):
            if name == HEADER.encode():
                presented = value.decode("latin-1")
                break
        request_id = accept(presented)
        token = current.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log_requests:
                access_log.info(
                    "%s %s %d %.1fms",
                    scope.get("method", "-"),
                    scope.get("path", "-"),
                    status,
                    (time.perf_counter() - started) * 1000,
                )
            current.reset(token)
