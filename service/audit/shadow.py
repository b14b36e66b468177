"""Background FP32 re-runs at the lowest priority on the device.

A sampled request waits in a short queue (full: dropped as ``backlog``). The one worker runs it
only when the device is idle (``DeviceLoad.idle``: no batch running or waiting for a slot, nothing
queued or decoding in any variant), taking a device slot like a batch would; a sample that finds
no idle moment within ``max_wait_s`` is dropped as ``busy``. So a foreground batch never waits
behind a shadow run except one that started while nothing was waiting, and that one is a single
image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from service.scheduler import DeviceLoad

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class Dropped(Exception):
    """Raised by a job that decides not to run after all; ``reason`` is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ShadowQueue(Generic[T, R]):
    """Bounded queue of shadow jobs and the worker that runs them when the device is idle.

    ``infer(job)`` runs holding a device slot (keep it to the engine call); ``finish(job,
    result)`` runs after the slot is given back (judging, bookkeeping).
    """

    def __init__(
        self,
        infer: Callable[[T], Awaitable[R]],
        finish: Callable[[T, R], Awaitable[None]],
        drop: Callable[[T, str], None],
        *,
        max_pending: int = 8,
        max_wait_s: float = 2.0,
        poll_s: float = 0.02,
    ) -> None:
        self._infer = infer
        self._finish = finish
        self._drop = drop
        self._pending: asyncio.Queue[tuple[T, DeviceLoad | None]] = asyncio.Queue(max_pending)
        self._max_wait_s = max_wait_s
        self._poll_s = poll_s
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="audit-shadow")

    def put(self, job: T, device: DeviceLoad | None) -> bool:
        """Queue a job (never waits); False when the backlog is full."""
        if self._worker is None:
            return False
        try:
            self._pending.put_nowait((job, device))
        except asyncio.QueueFull:
            return False
        return True

    async def close(self) -> None:
        """Stop now: shadow work is optional, so pending jobs are simply not run."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def _work(self) -> None:
        while True:
            job, device = await self._pending.get()
            if not await self._wait_idle(device):
                self._drop(job, "busy")
                continue
            slot = device.slot() if device is not None else contextlib.nullcontext()
            try:
                # No await between the idle check and taking the slot, so nothing slips in.
                async with slot:
                    result = await self._infer(job)
                await self._finish(job, result)
            except Dropped as dropped:
                self._drop(job, dropped.reason)
            except Exception:
                log.exception("shadow run failed")
                self._drop(job, "error")

    async def _wait_idle(self, device: DeviceLoad | None) -> bool:
        if device is None:
            return True
        give_up = time.monotonic() + self._max_wait_s
        while not device.idle():
            if time.monotonic() >= give_up:
                return False
            await asyncio.sleep(self._poll_s)
        return True
