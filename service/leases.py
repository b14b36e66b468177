"""Which served model version each request holds, so a reload can drain the old one.

A request takes a hold on the version it looked up (``ModelRegistry.get``) and keeps it until
its reply has been sent: the HTTP middleware (``LeaseMiddleware``) and the gRPC servicer open a
``request_scope`` around each request, and every hold taken inside it is released when the scope
ends. Work the request queued on that version's batchers has finished by then, so a retired
version whose holds reach zero can close its batchers and engines without failing anyone.

The lookup and the hold happen under the registry's lock, and so does the swap to a new version:
a request either holds the old version before it is retired, or finds the new one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send


class Holds:
    """Count of requests holding one served version; wakes a waiter when a retired version is
    no longer held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._retired = False
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def count(self) -> int:
        return self._count

    def take(self) -> None:
        with self._lock:
            self._count += 1

    def release(self) -> None:
        with self._lock:
            self._count -= 1
            wake = self._retired and self._count == 0
        if wake:
            self._wake()

    def retire(self) -> None:
        """No new holds will come (the registry no longer hands this version out)."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        with self._lock:
            self._retired = True
            idle = self._count == 0
        if idle:
            self._idle.set()

    def _wake(self) -> None:
        loop, idle = self._loop, self._idle
        if loop is None or idle is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            idle.set()
        else:  # released from a worker thread
            loop.call_soon_threadsafe(idle.set)

    async def wait_idle(self, timeout_s: float) -> bool:
        """After ``retire``: True once no request holds this version, False after the timeout."""
        assert self._idle is not None, "retire() first"
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


_scope: ContextVar[list[Holds] | None] = ContextVar("model_holds", default=None)


def hold(holds: Holds) -> None:
    """Take a hold for the current request (nothing outside a request: tools, background)."""
    held = _scope.get()
    if held is None or any(h is holds for h in held):  # one hold per request and version
        return
    holds.take()
    held.append(holds)


@contextmanager
def request_scope() -> Iterator[None]:
    """Every hold taken inside is released on the way out."""
    held: list[Holds] = []
    token = _scope.set(held)
    try:
        yield
    finally:
        _scope.reset(token)
        for holds in held:
            holds.release()


class LeaseMiddleware:
    """One ``request_scope`` per HTTP request, ended once the whole reply has been sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with request_scope():
            await self.app(scope, receive, send)
