"""Admission: whether a request may join a variant's queue, and whether a batch can still run.

What is owed (per-image batch cost learnt from the engine, the work that follows a batch, the
work of other variants on the same device) decides whether a deadline can be met. The rule is
written once, in ``Admission.needed_s``; the door (``Admission.check``) and the batcher (dropping
late requests from a batch about to run) both use it.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from service.scheduler.errors import (
    DeadlineUnmeetable,
    QueueFull,
    ShuttingDown,
    TooManyImages,
    VariantOutOfService,
)

# Batch times are an average of noisy measurements; refuse work that would need them all to be
# at least this much better than average to meet its deadline.
DEADLINE_SAFETY = 1.25


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
    ) -> None:
        self._max_queue = max_queue
        self._workers = workers
        self._observer = observer
        self.batches = BatchTimes(per_image_s=expected_per_image_s or 0.0)
        # What follows the engine for each request (post-processing, waiting for a thread); the
        # deadline covers the whole answer, not just the batch.
        self.finish = BatchTimes()

    def needed_s(
        self, images: int, *, tail: bool, workers: int = 1, others_s: float = 0.0
    ) -> float:
        """The deadline rule: time to answer the last of ``images`` (run by ``workers`` batch
        workers), after ``others_s`` of other variants' work on the device, finishing included;
        all with the safety margins."""
        own_s = self.batches.pessimistic(images, tail) / workers
        return own_s + others_s * DEADLINE_SAFETY + self.finish.estimate(1)

    @staticmethod
    def misses(deadline: float, needed_s: float, now: float) -> bool:
        return now + needed_s > deadline

    def wait_s(self, images: int) -> float:
        """Mean engine time for ``images`` images on this variant's workers."""
        return self.batches.estimate(images) / self._workers

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
                retry_after_s=self.wait_s(state.ahead + state.running + 1),
            )
        now = time.monotonic()
        # The variance term is for queueing under load. On an idle device it is left out: the
        # estimate only changes when batches run, and one slow batch's variance must not refuse
        # every tight deadline for good.
        others_s = state.others_s
        idle = state.ahead == 0 and not state.running and others_s == 0
        needed_s = self.needed_s(
            state.ahead + images + state.running,
            tail=not idle,
            workers=self._workers,
            others_s=others_s,
        )
        if self.batches.known and self.misses(deadline, needed_s, now):
            self._observer.rejected("deadline")
            raise DeadlineUnmeetable(
                f"deadline cannot be met: about {needed_s * 1000:.0f} ms needed, "
                f"{max(0.0, deadline - now) * 1000:.0f} ms left"
            )
