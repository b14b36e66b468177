"""Admission: whether a request may join a variant's queue, and whether a batch can still run.

What is owed (per-image batch cost learnt from the engine, the work that follows a batch, the
work of other variants on the same device) decides whether a deadline can be met. The rule is
written once, in ``Admission.needed_s``; the door (``Admission.check``) and the batcher (dropping
late requests from a batch about to run) both use it.

The estimate is calibrated against what really happened: every queued image records what was
estimated for it and how long it really waited, and the estimate is scaled by the median of
actual / estimated over recent images (``Calibration``), so a request is refused when it would
more likely than not be late. A fixed pessimism (mean plus two standard deviations, times a
safety factor) refused requests at half the queue that would have been on time. The batcher drops
a request that can no longer make it before its batch runs, so the door need not be pessimistic.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from service.scheduler.errors import (
    DeadlineUnmeetable,
    QueueFull,
    ShuttingDown,
    TooManyImages,
    VariantOutOfService,
)

# Until enough images have been answered to measure the estimate's error: how much longer than
# the mean estimate an image may take.
DEADLINE_SAFETY = 1.25
CALIBRATION_QUANTILE = 0.5  # the door refuses what would more likely than not be late
# A batch about to run drops a request unless it is all but sure to make it: an answer after its
# deadline is wasted engine time, and nothing has been spent on it yet.
CALIBRATION_TAIL_QUANTILE = 0.9
CALIBRATION_MIN_SAMPLES = 16
CALIBRATION_FACTOR_RANGE = (0.5, 4.0)  # one odd stretch of measurements cannot run away


class BatchObserver(Protocol):
    """Receives what only the scheduler knows (queue wait, batch size, engine time)."""

    def queued(self, depth: int) -> None: ...
    def batch_started(self, size: int, queue_waits_s: list[float]) -> None: ...
    def batch_finished(self, size: int, duration_s: float, ok: bool) -> None: ...
    def rejected(self, reason: str) -> None: ...


class NullObserver:
    def queued(self, depth: int) -> None: ...
    def batch_started(self, size: int, queue_waits_s: list[float]) -> None: ...
    def batch_finished(self, size: int, duration_s: float, ok: bool) -> None: ...
    def rejected(self, reason: str) -> None: ...


@dataclass
class BatchTimes:
    """Running batch cost (EWMAs), to refuse requests that cannot meet their deadline.

    A batch has a fixed cost as well as a per-image one, so batch times are kept per batch size
    as measured; a size not seen yet is priced from the running per-image cost.
    """

    per_image_s: float = 0.0  # a first guess (the build's timing) until measured here
    measured: bool = False
    _alpha: float = field(default=0.2, repr=False)
    _by_size: dict[int, float] = field(default_factory=dict, repr=False)

    @property
    def known(self) -> bool:
        return self.measured or self.per_image_s > 0

    def observe(self, size: int, duration_s: float) -> None:
        per_image = duration_s / size
        if self.measured:
            self.per_image_s += self._alpha * (per_image - self.per_image_s)
        else:  # the first batch measured here replaces the guess outright
            self.per_image_s = per_image
            self.measured = True
        seen = self._by_size.get(size)
        self._by_size[size] = (
            duration_s if seen is None else seen + self._alpha * (duration_s - seen)
        )

    def estimate(self, size: int) -> float:
        return self.per_image_s * size

    def batch_s(self, size: int) -> float:
        return self._by_size.get(size, self.per_image_s * size)

    def queue_s(self, images: int, max_batch: int) -> float:
        """Time to run ``images`` in batches of up to ``max_batch``: full batches, then the rest."""
        full, rest = divmod(images, max_batch)
        return full * self.batch_s(max_batch) + (self.batch_s(rest) if rest else 0.0)


class Calibration:
    """How far real waits land from the mean estimate: actual / estimated over recent images.

    ``factor`` is the median of that ratio, so ``estimate * factor`` is as often early as late;
    ``tail_factor`` its 90th percentile; before enough images were answered, both are
    ``DEADLINE_SAFETY``. The window is kept sorted as it changes (a few hundred floats: one
    insertion and one removal per answer), so both are always current and cost one lookup.
    """

    def __init__(self, window: int = 256) -> None:
        self._ratios: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []

    @property
    def factor(self) -> float:
        return self._quantile(CALIBRATION_QUANTILE)

    @property
    def tail_factor(self) -> float:
        return self._quantile(CALIBRATION_TAIL_QUANTILE)

    @property
    def samples(self) -> int:
        return len(self._ratios)

    def observe(self, estimated_s: float, actual_s: float) -> None:
        if estimated_s <= 0:
            return
        if len(self._ratios) == self._ratios.maxlen:  # the oldest leaves the window
            del self._sorted[bisect.bisect_left(self._sorted, self._ratios[0])]
        ratio = actual_s / estimated_s
        self._ratios.append(ratio)
        bisect.insort(self._sorted, ratio)

    def _quantile(self, q: float) -> float:
        if len(self._sorted) < CALIBRATION_MIN_SAMPLES:
            return DEADLINE_SAFETY
        low, high = CALIBRATION_FACTOR_RANGE
        return min(max(self._sorted[int(q * (len(self._sorted) - 1))], low), high)


class DeviceMember(Protocol):
    def pending_work_s(self) -> float: ...
    @property
    def busy(self) -> bool: ...


class DeviceLoad:
    """Every scheduler whose engine shares one device (a GPU, or the CPU).

    Variants of one model (FP32 and INT8 under ``auto``) or several models run their batches on
    the same device at the same time, so a deadline estimate that counted only its own queue
    would be optimistic exactly when the server is busiest.
    """

    def __init__(self, concurrency: int = 1) -> None:
        self._members: list[DeviceMember] = []
        # On a CPU, two sessions running at once just split the cores (and each batch then takes
        # twice as long as any estimate says); on a GPU, a bounded number of streams overlap.
        self._slots = asyncio.Semaphore(concurrency)

    def slot(self) -> asyncio.Semaphore:
        return self._slots

    def join(self, member: DeviceMember) -> None:
        self._members.append(member)

    def others_work_s(self, me: DeviceMember) -> float:
        return sum(m.pending_work_s() for m in self._members if m is not me)

    def idle(self) -> bool:
        """No batch running or waiting for a slot, nothing queued or decoding anywhere: the
        only time background work (the precision audit's shadow runs) may take a slot."""
        return not self._slots.locked() and not any(m.busy for m in self._members)


@dataclass(frozen=True)
class QueueState:
    """What the batcher knows when a request arrives."""

    ahead: int  # images queued (and, at the door, still decoding) before this request
    running: int  # images inside the engine right now
    running_left_s: float  # mean time until the batches running now are done
    others_s: float  # engine time owed to other variants on the same device
    dead: str | None  # why the variant is out of service, if it is
    closing: bool


class Admission:
    """The cost model of one variant and the rules that refuse work at its door."""

    def __init__(
        self,
        *,
        max_queue: int,
        workers: int,
        expected_per_image_s: float | None,
        observer: BatchObserver,
        max_batch: int,
    ) -> None:
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._workers = workers
        self._observer = observer
        self.batches = BatchTimes(per_image_s=expected_per_image_s or 0.0)
        # What follows the engine for each request (post-processing, waiting for a thread); the
        # deadline covers the whole answer, not just the batch.
        self.finish = BatchTimes()
        self.calibration = Calibration()

    def mean_s(
        self,
        images: int,
        *,
        workers: int,
        others_s: float = 0.0,
        running_left_s: float = 0.0,
    ) -> float:
        """Mean time until the last of ``images`` queued (run by ``workers`` batch workers) is
        out of the engine, after what is running now and ``others_s`` of other variants' work
        on the device."""
        per_worker = -(-images // workers)  # the workers split the queue between them
        return running_left_s + self.batches.queue_s(per_worker, self._max_batch) + others_s

    def left_s(self, size: int, started: float, now: float) -> float:
        """Mean time still to go for a batch of ``size`` that started at ``started``."""
        return max(0.0, self.batches.batch_s(size) - (now - started))

    def needed_s(
        self,
        images: int,
        *,
        workers: int = 1,
        others_s: float = 0.0,
        running_left_s: float = 0.0,
        tail: bool = False,
    ) -> float:
        """The deadline rule: the calibrated time to answer the last of ``images``, finishing
        included (``tail``: as late as it gets 9 times in 10, for a batch about to run)."""
        mean_s = self.mean_s(
            images, workers=workers, others_s=others_s, running_left_s=running_left_s
        )
        factor = self.calibration.tail_factor if tail else self.calibration.factor
        return mean_s * factor + self.finish.estimate(1)

    @staticmethod
    def misses(deadline: float, needed_s: float, now: float) -> bool:
        return now + needed_s > deadline

    def wait_s(self, images: int) -> float:
        """Mean engine time for ``images`` images on this variant's workers."""
        return self.batches.queue_s(-(-images // self._workers), self._max_batch)

    def check(self, images: int, deadline: float, state: QueueState) -> None:
        """Refuse what could never be answered in time, or at all; otherwise return."""
        if state.dead is not None:
            raise VariantOutOfService(state.dead)
        if state.closing:
            self._observer.rejected("shutting_down")
            raise ShuttingDown("server is shutting down")
        if images > self._max_queue:  # could never be queued, however long it waited
            raise TooManyImages(
                f"{images} images in one request; this server queues at most "
                f"{self._max_queue} per variant"
            )
        if state.ahead + images > self._max_queue:
            self._observer.rejected("queue_full")
            raise QueueFull(
                f"queue full ({self._max_queue} waiting)",
                retry_after_s=state.running_left_s + self.wait_s(state.ahead + 1),
            )
        now = time.monotonic()
        needed_s = self.needed_s(
            state.ahead + images,
            workers=self._workers,
            others_s=state.others_s,
            running_left_s=state.running_left_s,
        )
        if self.batches.known and self.misses(deadline, needed_s, now):
            self._observer.rejected("deadline")
            left_s = max(0.0, deadline - now)
            raise DeadlineUnmeetable(
                f"deadline cannot be met: about {needed_s * 1000:.0f} ms needed, "
                f"{left_s * 1000:.0f} ms left",
                # By then the work ahead has drained enough for the same budget to suffice.
                retry_after_s=needed_s - left_s,
            )
