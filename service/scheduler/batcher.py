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
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from engines.errors import InferenceError
from service.scheduler.admission import (
    Admission,
    BatchObserver,
    DeviceLoad,
    NullObserver,
    QueueState,
)
from service.scheduler.errors import DeadlineUnmeetable, ShuttingDown, VariantOutOfService

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
RunBatch = Callable[[np.ndarray], Outputs]


@dataclass(frozen=True)
class BatchingConfig:
    """How one variant batches; the defaults users change live in ``service.config.Settings``."""

    max_batch: int
    max_wait_s: float
    max_queue: int
    concurrency: int
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
    # What admission estimated, when it was queued, for its queue wait plus engine time (the
    # calibrated figure the deadline rule used); compare with queue_wait_s + inference_s.
    estimated_s: float


@dataclass(eq=False)  # identity: comparing two requests must never compare their tensors
class _Request:
    tensor: np.ndarray
    future: asyncio.Future[ItemResult]
    enqueued_at: float
    deadline: float
    mean_estimate_s: float  # uncalibrated, for the calibration to learn from
    estimated_s: float  # calibrated, as the deadline rule used it


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
        self._observer: BatchObserver = observer or NullObserver()
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
        self._admission = Admission(
            max_queue=config.max_queue,
            workers=config.concurrency,
            expected_per_image_s=config.expected_per_image_s,
            observer=self._observer,
            max_batch=config.max_batch,
        )
        self._workers: list[asyncio.Task[None]] = []
        self._running_images = 0
        self._running: dict[int, tuple[int, float]] = {}  # batch id -> (size, started)
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
            self._fail(self._queue.popleft(), VariantOutOfService(self._dead))
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
            self._fail(self._queue.popleft(), ShuttingDown("server shutting down"))
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

    def observe_finish(self, seconds: float) -> None:
        """Record how long one request took from its batch's outputs to its answer."""
        self._admission.finish.observe(1, seconds)

    def pending_work_s(self) -> float:
        """Engine time still owed to what is running or queued here."""
        return self._running_left_s() + self._admission.wait_s(len(self._queue))

    def _running_left_s(self) -> float:
        now = time.monotonic()
        left = [self._admission.left_s(size, at, now) for size, at in self._running.values()]
        return sum(left) / self._config.concurrency

    def _others_s(self) -> float:
        return self._device.others_work_s(self) if self._device else 0.0

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
        state = QueueState(
            ahead,
            self._running_images,
            self._running_left_s(),
            self._others_s(),
            self._dead,
            self._closing,
        )
        self._admission.check(images, deadline, state)

    async def submit(self, tensor: np.ndarray, deadline: float) -> ItemResult:
        """Queue one CHW tensor; return the engine outputs for it (leading dim 1).

        ``deadline`` is a ``time.monotonic()`` instant. Raises the refusals of
        ``Admission.check`` (``service.scheduler.errors``), or the engine's error.
        """
        self._check(1, deadline, ahead=len(self._queue))
        now = time.monotonic()
        future: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        mean_s = self._admission.mean_s(
            len(self._queue) + 1,
            workers=self._config.concurrency,
            others_s=self._others_s(),
            running_left_s=self._running_left_s(),
        )
        estimated_s = mean_s * self._admission.calibration.factor
        self._queue.append(_Request(tensor, future, now, deadline, mean_s, estimated_s))
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
                    error = exc if isinstance(exc, Exception) else ShuttingDown("shutting down")
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
        while batch and self._admission.misses(
            min(r.deadline for r in batch), self._admission.needed_s(len(batch), tail=True), now
        ):
            late = min(batch, key=lambda r: r.deadline)
            batch.remove(late)
            self._observer.rejected("deadline")
            self._fail(
                late,
                DeadlineUnmeetable(
                    "deadline cannot be met by the next batch",
                    retry_after_s=self.pending_work_s(),
                ),
            )
        self._observer.queued(len(self._queue))
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        if not batch:
            return
        started = time.monotonic()
        self._observer.batch_started(len(batch), [started - r.enqueued_at for r in batch])
        tensor = np.stack([r.tensor for r in batch])
        self._running_images += len(batch)
        self._running[id(batch)] = (len(batch), started)
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
            del self._running[id(batch)]
        finished = time.monotonic()
        duration = finished - started
        self._admission.batches.observe(len(batch), duration)
        self._observer.batch_finished(len(batch), duration, ok=True)
        for i, req in enumerate(batch):
            self._admission.calibration.observe(req.mean_estimate_s, finished - req.enqueued_at)
            if not req.future.done():
                req.future.set_result(
                    ItemResult(
                        outputs={k: v[i : i + 1] for k, v in outputs.items()},
                        queue_wait_s=started - req.enqueued_at,
                        inference_s=duration,
                        batch_size=len(batch),
                        estimated_s=req.estimated_s,
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
