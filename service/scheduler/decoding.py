"""The process's decode budget: memory in flight and worker threads for image decoding.

Image bytes are cheap to send and can be expensive to decode (a 77 KiB PNG can ask for a GiB), so
each image is priced from its header (``engines.model.preprocess.decode_cost``) before any pixel
is decoded, and decodes wait, first come first served, until the memory they will hold fits the
budget. Decoding runs on a bounded pool of its own, never on the event loop and never taking the
threads that post-processing and health checks use. The time a decode will take is learnt from
the decodes this process has run (seconds per unit of work), so a request that could not be
decoded before its deadline is refused at once instead of being decoded for nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from engines.model.preprocess import DecodeCost
from service.scheduler.errors import DeadlineUnmeetable, DecodeBusy, DecodeTooCostly

T = TypeVar("T")
# Until this process has decoded something: seconds per unit of work (a byte of decoded samples),
# about what a 1 MP JPEG costs on one core of a small CPU. Learnt from the first decode on.
INITIAL_SECONDS_PER_UNIT = 5e-9
# Small images cost mostly fixed overhead (opening, a thread hand-over): the rate is learnt only
# from images big enough for their size to dominate, or one icon would price every photo.
MIN_WORK_TO_LEARN = 256 * 1024
FIXED_S = 0.002
_ALPHA = 0.2


@dataclass(eq=False)
class _Waiter:
    memory: int
    future: asyncio.Future[None]


class DecodeBudget:
    """Admits image decodes by cost: memory in flight is bounded, decode time is estimated."""

    def __init__(self, *, memory_bytes: int, workers: int = 0) -> None:
        self.memory_bytes = memory_bytes
        self.workers = workers or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        self._in_use = 0
        self._waiting: deque[_Waiter] = deque()
        self._owed_work = 0  # admitted but not yet decoded (waiting or decoding)
        self.seconds_per_unit = INITIAL_SECONDS_PER_UNIT

    def estimate_s(self, work: int) -> float:
        return FIXED_S + work * self.seconds_per_unit

    def backlog_s(self) -> float:
        """Mean time to decode everything already admitted, on every decode worker."""
        return self._owed_work * self.seconds_per_unit / self.workers

    def check(self, costs: list[DecodeCost], deadline: float) -> None:
        """Refuse, before any decoding, images that could never be decoded, or not in time."""
        for i, cost in enumerate(costs):
            if cost.memory_bytes > self.memory_bytes:
                raise DecodeTooCostly(
                    f"image {i} ({cost.width}x{cost.height}) needs about "
                    f"{cost.memory_bytes >> 20} MiB to decode; this server decodes at most "
                    f"{self.memory_bytes >> 20} MiB at a time"
                )
        backlog_s = self.backlog_s()
        own_s = sum(self.estimate_s(c.work) for c in costs) / self.workers
        left_s = deadline - time.monotonic()
        if own_s > left_s:  # too little time even on an idle server: not a matter of load
            raise DeadlineUnmeetable(
                f"deadline cannot be met: decoding needs about {own_s * 1000:.0f} ms, "
                f"{max(0.0, left_s) * 1000:.0f} ms left",
                retry_after_s=backlog_s,
            )
        if backlog_s + own_s > left_s:
            raise DecodeBusy(
                f"decoding is busy: about {(backlog_s + own_s) * 1000:.0f} ms of decoding "
                f"needed, {max(0.0, left_s) * 1000:.0f} ms left",
                retry_after_s=backlog_s,
            )

    async def run(
        self, cost: DecodeCost, decode: Callable[[bytes], T], data: bytes, deadline: float
    ) -> T:
        """Decode ``data`` with ``decode`` in the pool once its memory fits the budget."""
        self._owed_work += cost.work
        try:
            await self._acquire(cost.memory_bytes, deadline)
            released = False
            try:
                left_s = deadline - time.monotonic()
                if self.estimate_s(cost.work) > left_s:  # the deadline covers decoding too
                    raise DeadlineUnmeetable(
                        f"deadline cannot be met: decoding needs about "
                        f"{self.estimate_s(cost.work) * 1000:.0f} ms, "
                        f"{max(0.0, left_s) * 1000:.0f} ms left",
                        retry_after_s=self.backlog_s(),
                    )
                loop = asyncio.get_running_loop()
                job = self._executor.submit(_timed, decode, data)
                # The memory is held until the thread is done, even if the request is cancelled
                # meanwhile (a thread cannot be stopped half-way through a decode).
                released = True
                job.add_done_callback(
                    lambda _: loop.call_soon_threadsafe(self._release, cost.memory_bytes)
                )
                result, seconds = await asyncio.wrap_future(job)
                self._observe(cost.work, seconds)
                return result
            finally:
                if not released:
                    self._release(cost.memory_bytes)
        finally:
            self._owed_work -= cost.work

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- memory in flight ----------------------------------------------------------------------

    async def _acquire(self, memory: int, deadline: float) -> None:
        # An image bigger than what is free still runs alone, so nothing waits forever.
        if not self._waiting and (self._in_use + memory <= self.memory_bytes or not self._in_use):
            self._in_use += memory
            return
        waiter = _Waiter(memory, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), deadline - time.monotonic())
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(memory)  # granted just as we gave up: give it back
            else:
                waiter.future.cancel()
                self._waiting.remove(waiter)
                self._wake()
            if isinstance(exc, asyncio.CancelledError):  # the client left, or shutdown
                raise
            raise DeadlineUnmeetable(
                "deadline cannot be met: decode memory did not free up in time",
                retry_after_s=self.backlog_s(),
            ) from None

    def _release(self, memory: int) -> None:
        self._in_use -= memory
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            first = self._waiting[0]
            if self._in_use and self._in_use + first.memory > self.memory_bytes:
                return
            self._waiting.popleft()
            self._in_use += first.memory
            first.future.set_result(None)

    def _observe(self, work: int, seconds: float) -> None:
        if work < MIN_WORK_TO_LEARN:
            return
        rate = max(0.0, seconds - FIXED_S) / work
        self.seconds_per_unit += _ALPHA * (rate - self.seconds_per_unit)


def _timed(decode: Callable[[bytes], T], data: bytes) -> tuple[T, float]:
    """Time the decode itself, in its thread (not the wait for a free worker)."""
    started = time.monotonic()
    result = decode(data)
    return result, time.monotonic() - started
