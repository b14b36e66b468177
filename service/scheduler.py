"""Dynamic batching: one queue per (model, precision), batches run off the event loop.

How a batch forms: a worker (``concurrency`` per engine) waits for the first queued request, then
takes a free slot on the device (``DeviceLoad``: shared by every variant and model the process
serves, so an FP32 and an INT8 batch never fight over the same cores), then keeps collecting until
``max_batch`` requests wait or ``max_wait`` has passed since the first was queued. While the device
is busy, requests pile up and the next batch takes them all: that is what makes batches grow under
load. When nobody else is on the way (no request between arrival and queueing) the worker does not
wait at all, so a lone client pays no batching delay.

Every accepted request gets exactly one outcome: its own outputs, its own error, or a deadline /
shutdown error. Cancelled requests (client went away) are dropped before the engine sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engines.errors import InferenceError
from service.errors import DeadlineExceeded, EngineUnavailable, Overloaded, PayloadTooLarge

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
# Batch times are an average of noisy measurements; refuse work that would need them all to be
# at least this much better than average to meet its deadline.
DEADLINE_SAFETY = 1.25
RunBatch = Callable[[np.ndarray], Outputs]


class BatchObserver(Protocol):
    """Receives what only the scheduler knows (queue wait, batch size, engine time)."""

    def queued(self, depth: int) -> None: ...
    def batch_started(self, size: int, queue_waits_s: list[float]) -> None: ...
    def batch_finished(self, size: int, duration_s: float, ok: bool) -> None: ...
    def rejected(self, reason: str) -> None: ...


class _NullObserver:
    def queued(self, depth: int) -> None: ...
    def batch_started(self, size: int, queue_waits_s: list[float]) -> None: ...
    def batch_finished(self, size: int, duration_s: float, ok: bool) -> None: ...
    def rejected(self, reason: str) -> None: ...


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = 8
    max_wait_s: float = 0.004
    max_queue: int = 64
    concurrency: int = 1
    # Per-image engine time measured by the builder (manifest), used until this process has
    # timed batches of its own; without it, nothing is refused on deadline grounds until then.
    expected_per_image_s: float | None = None


@dataclass(frozen=True)
class ItemResult:
    """One request's share of a batch, with the times the response and metrics report."""

    outputs: Outputs  # every output sliced to this request (leading dim 1)
    queue_wait_s: float
    inference_s: float
    batch_size: int


@dataclass(eq=False)  # identity: comparing two requests must never compare their tensors
class _Request:
    tensor: np.ndarray
    future: asyncio.Future[ItemResult]
    enqueued_at: float
    deadline: float


@dataclass
class _BatchTimes:
    """Running per-image cost (EWMA and its variance), to refuse requests that cannot meet their
    deadline.

    Per-image cost underestimates small batches (fixed overhead is spread thin), which errs on
    the side of running a request rather than refusing it.
    """

    per_image_s: float = 0.0
    samples: int = 0
    variance: float = 0.0
    _alpha: float = field(default=0.2, repr=False)

    @property
    def known(self) -> bool:
        return self.samples > 0 or self.per_image_s > 0

    def observe(self, size: int, duration_s: float) -> None:
        per_image = duration_s / size
        if self.samples == 0:
            self.per_image_s = per_image
        else:
            diff = per_image - self.per_image_s
            self.per_image_s += self._alpha * diff
            self.variance = (1 - self._alpha) * (self.variance + self._alpha * diff * diff)
        self.samples += 1

    def estimate(self, size: int) -> float:
        return self.per_image_s * size

    def pessimistic(self, size: int, tail: bool = True) -> float:
        """For deadlines, which are about the tail: at least DEADLINE_SAFETY over the mean, or
        (``tail``) two standard deviations over it when batch times vary more (a device shared
        with decoding, other processes, thermal limits)."""
        spread = self.per_image_s + 2 * math.sqrt(self.variance) if tail else 0.0
        return max(self.per_image_s * DEADLINE_SAFETY, spread) * size


class DeviceLoad:
    """Every scheduler whose engine shares one device (a GPU, or the CPU).

    Variants of one model (FP32 and INT8 under ``auto``) or several models run their batches on
    the same device at the same time, so a deadline estimate that counted only its own queue
    would be optimistic exactly when the server is busiest.
    """

    def __init__(self, concurrency: int = 1) -> None:
        self._members: list[BatchScheduler] = []
        # On a CPU, two sessions running at once just split the cores (and each batch then takes
        # twice as long as any estimate says); on a GPU, a bounded number of streams overlap.
        self._slots = asyncio.Semaphore(concurrency)

    def slot(self) -> asyncio.Semaphore:
        return self._slots

    def join(self, scheduler: BatchScheduler) -> None:
        self._members.append(scheduler)

    def others_work_s(self, me: BatchScheduler) -> float:
        return sum(m.pending_work_s() for m in self._members if m is not me)

    def idle(self) -> bool:
        """No batch running or waiting for a slot, nothing queued or decoding anywhere: the
        only time background work (the precision audit's shadow runs) may take a slot."""
        return not self._slots.locked() and not any(m.busy for m in self._members)


class BatchScheduler:
    """Batches single-image requests for one engine variant."""

    def __init__(
        self,
        run_batch: RunBatch,
        config: BatchingConfig,
        *,
        observer: BatchObserver | None = None,
        executor: Executor | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        name: str = "scheduler",
        device: DeviceLoad | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._config = config
        self._observer: BatchObserver = observer or _NullObserver()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=config.concurrency, thread_name_prefix=name
        )
        self._on_fatal = on_fatal
        self._name = name
        self._queue: deque[_Request] = deque()
        self._wakeup = asyncio.Event()
        self._incoming = 0
        self._closing = False
        self._dead: str | None = None
        self._times = _BatchTimes(per_image_s=config.expected_per_image_s or 0.0)
        # What follows the engine for each request (post-processing, waiting for a thread); the
        # deadline covers the whole answer, not just the batch.
        self._finish = _BatchTimes()
        self._workers: list[asyncio.Task[None]] = []
        self._running_images = 0
        self._device = device
        if device is not None:
            device.join(self)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._worker(), name=f"{self._name}-{i}")
            for i in range(self._config.concurrency)
        ]
        for task in self._workers:
            task.add_done_callback(self._worker_exited)

    def _worker_exited(self, task: asyncio.Task[None]) -> None:
        """A worker that dies unexpectedly would leave queued requests waiting forever: fail
        them, and every later one, loudly instead."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._dead = f"batch worker {task.get_name()} crashed: {exc!r}"
        log.error("%s", self._dead, exc_info=exc)
        while self._queue:
            self._fail(self._queue.popleft(), EngineUnavailable(self._dead))
        if self._on_fatal is not None and isinstance(exc, Exception):
            self._on_fatal(exc)

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop accepting, finish everything already accepted, then stop the workers."""
        self._closing = True
        self._wakeup.set()
        if self._workers:
            _done, pending = await asyncio.wait(self._workers, timeout=timeout_s)
            for task in pending:
                task.cancel()
            # Let cancelled workers unwind (give back the device slot, answer their batch)
            # before the engine under them is closed.
            await asyncio.gather(*pending, return_exceptions=True)
        # Anything still queued (only after a timeout) gets an answer rather than hanging.
        while self._queue:
            self._fail(self._queue.popleft(), Overloaded("server shutting down"))
        if self._own_executor:
            self._executor.shutdown(wait=False)

    @property
    def observer(self) -> BatchObserver:
        return self._observer

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def dead_reason(self) -> str | None:
        return self._dead

    @property
    def busy(self) -> bool:
        """Requests queued, on their way (decoding) or running."""
        return bool(self._queue or self._incoming or self._running_images)

    @property
    def device(self) -> DeviceLoad | None:
        return self._device

    def _safe(self, images: int, tail: bool = True) -> float:
        """Time to answer a batch of ``images``, with the safety margin, finishing included."""
        return self._times.pessimistic(images, tail) + self._finish.estimate(1)

    def observe_finish(self, seconds: float) -> None:
        """Record how long one request took from its batch's outputs to its answer."""
        self._finish.observe(1, seconds)

    def pending_work_s(self) -> float:
        """Engine time still owed to what is running or queued here."""
        images = self._running_images + len(self._queue)
        return self._times.estimate(images) / self._config.concurrency

    def _others_s(self) -> float:
        return self._device.others_work_s(self) if self._device else 0.0

    def estimated_wait_s(self, queued: int | None = None) -> float:
        """Time until a new request is answered: ``queued`` images (default: the queue) ahead
        of it, everything running, and itself."""
        ahead = (len(self._queue) if queued is None else queued) + self._running_images + 1
        return self._times.estimate(ahead) / self._config.concurrency

    # -- submission ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def incoming(self, images: int = 1) -> Iterator[None]:
        """Mark images as on their way (decoding) so a forming batch waits for them."""
        self._incoming += images
        try:
            yield
        finally:
            self._incoming -= images

    def admit(self, images: int, deadline: float) -> None:
        """Refuse at the door what ``submit`` would refuse, before any decoding is spent on it.

        Under overload most of the CPU would otherwise go into decoding requests that are then
        refused, starving the ones already accepted. Counts the images still being decoded as
        ahead (they will be queued before these): mark admitted images ``incoming`` before the
        next await, so a burst of requests sees each other. ``submit`` re-checks later.
        """
        self._check(images, deadline, ahead=len(self._queue) + self._incoming)

    def _check(self, images: int, deadline: float, ahead: int) -> None:
        if self._dead is not None:
            raise EngineUnavailable(self._dead)
        if self._closing:
            self._observer.rejected("shutting_down")
            raise Overloaded("server is shutting down", retry_after_s=5)
        if images > self._config.max_queue:  # could never be queued, however long it waited
            raise PayloadTooLarge(
                f"{images} images in one request; this server queues at most "
                f"{self._config.max_queue} per variant"
            )
        if ahead + images > self._config.max_queue:
            self._observer.rejected("queue_full")
            raise Overloaded(
                f"queue full ({self._config.max_queue} waiting)",
                retry_after_s=self.estimated_wait_s(ahead),
            )
        now = time.monotonic()
        # The variance term is for queueing under load. On an idle device it is left out: the
        # estimate only changes when batches run, and one slow batch's variance must not refuse
        # every tight deadline for good.
        others_s = self._others_s()
        idle = ahead == 0 and not self._running_images and others_s == 0
        own_s = self._times.pessimistic(ahead + images + self._running_images, tail=not idle)
        needed_s = own_s / self._config.concurrency + others_s * DEADLINE_SAFETY
        needed_s += self._finish.estimate(1)
        if self._times.known and now + needed_s > deadline:
            self._observer.rejected("deadline")
            raise DeadlineExceeded(
                f"deadline cannot be met: about {needed_s * 1000:.0f} ms needed, "
                f"{max(0.0, deadline - now) * 1000:.0f} ms left"
            )

    async def submit(self, tensor: np.ndarray, deadline: float) -> ItemResult:
        """Queue one CHW tensor; return the engine outputs for it (leading dim 1).

        ``deadline`` is a ``time.monotonic()`` instant. Raises ``Overloaded`` (queue full or
        shutting down), ``DeadlineExceeded`` (cannot finish in time), ``EngineUnavailable``.
        """
        self._check(1, deadline, ahead=len(self._queue))
        now = time.monotonic()
        future: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(tensor, future, now, deadline))
        self._observer.queued(len(self._queue))
        self._wakeup.set()
        return await future

    # -- batching ------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while await self._first_request():
            slot = self._device.slot() if self._device else contextlib.nullcontext()
            async with slot:  # the device runs one batch at a time (per its concurrency)
                if not self._queue:  # another worker of this variant took them meanwhile
                    continue
                batch = await self._collect()
                try:
                    await self._run(batch)
                except BaseException as exc:
                    # _run answers its own batch; this covers anything failing around it, so
                    # requests already taken off the queue never wait forever.
                    error = exc if isinstance(exc, Exception) else Overloaded("shutting down")
                    for req in batch:
                        self._fail(req, error)
                    raise

    async def _first_request(self) -> bool:
        """Wait until something is queued; False once closing with nothing left."""
        while not self._queue:
            if self._closing:
                return False
            self._wakeup.clear()
            await self._wakeup.wait()
        return True

    async def _collect(self) -> list[_Request]:
        """With a request queued, wait for more until full or max_wait has passed."""
        first_at = self._queue[0].enqueued_at
        while len(self._queue) < self._config.max_batch and not self._closing:
            remaining = first_at + self._config.max_wait_s - time.monotonic()
            if remaining <= 0 or self._incoming == 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # not builtin TimeoutError on 3.10
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        return self._take()

    def _take(self) -> list[_Request]:
        batch: list[_Request] = []
        while self._queue and len(batch) < self._config.max_batch:
            req = self._queue.popleft()
            if req.future.done():  # cancelled: the client went away
                self._observer.rejected("cancelled")
                continue
            batch.append(req)
        # Every request must be able to wait for the whole batch: drop those that cannot (the
        # tightest deadlines first), which also shortens the batch for the others.
        now = time.monotonic()
        tail = bool(len(batch) > 1 or self._queue or self._running_images)  # as at admission
        while batch and now + self._safe(len(batch), tail) > min(r.deadline for r in batch):
            late = min(batch, key=lambda r: r.deadline)
            batch.remove(late)
            self._observer.rejected("deadline")
            self._fail(late, DeadlineExceeded("deadline cannot be met by the next batch"))
        self._observer.queued(len(self._queue))
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        if not batch:
            return
        started = time.monotonic()
        self._observer.batch_started(len(batch), [started - r.enqueued_at for r in batch])
        tensor = np.stack([r.tensor for r in batch])
        self._running_images += len(batch)
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, tensor
            )
            _check_batch(outputs, len(batch))
        except BaseException as exc:  # every waiting request must hear about it
            self._observer.batch_finished(len(batch), time.monotonic() - started, ok=False)
            self._fail_batch(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self._running_images -= len(batch)
        duration = time.monotonic() - started
        self._times.observe(len(batch), duration)
        self._observer.batch_finished(len(batch), duration, ok=True)
        for i, req in enumerate(batch):
            if not req.future.done():
                req.future.set_result(
                    ItemResult(
                        outputs={k: v[i : i + 1] for k, v in outputs.items()},
                        queue_wait_s=started - req.enqueued_at,
                        inference_s=duration,
                        batch_size=len(batch),
                    )
                )

    def _fail_batch(self, batch: list[_Request], exc: BaseException) -> None:
        if isinstance(exc, InferenceError) and exc.fatal:
            self._dead = f"engine {self._name} failed: {exc}"
            log.error("%s", self._dead)
            if self._on_fatal is not None:
                self._on_fatal(exc)
        else:
            log.warning("batch of %d failed in %s: %s", len(batch), self._name, exc)
        for req in batch:
            self._fail(req, exc if isinstance(exc, Exception) else InferenceError(str(exc)))

    @staticmethod
    def _fail(req: _Request, exc: Exception) -> None:
        if not req.future.done():
            req.future.set_exception(exc)


def _check_batch(outputs: Outputs, size: int) -> None:
    for name, value in outputs.items():
        if value.shape[:1] != (size,):
            raise InferenceError(
                f"engine returned {name} with shape {value.shape} for a batch of {size}"
            )
