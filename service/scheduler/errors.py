"""Why the scheduler refuses or fails a request, in its own terms.

The scheduler knows nothing about HTTP: ``service/errors.py`` is the one place that turns these
into status codes, ``Retry-After`` headers and JSON bodies.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """A request the scheduler refused or could not answer."""


class QueueFull(SchedulerError):
    """The queue holds as many images as it may; ``retry_after_s`` is the estimated wait."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShuttingDown(SchedulerError):
    """The scheduler is closing: new work is refused, unfinished work is failed."""


class TooManyImages(SchedulerError):
    """One request holds more images than the queue could ever hold, however long it waited."""


class DeadlineUnmeetable(SchedulerError):
    """The request cannot be answered before its deadline; ``retry_after_s`` is about how long
    until the work ahead of it has drained enough for the same request to fit."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DecodeBusy(SchedulerError):
    """The process's decode budget (memory in flight, decode workers) cannot take this image in
    time; ``retry_after_s`` is the estimated time to drain what is already decoding."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DecodeTooCostly(SchedulerError):
    """One image needs more decode memory than the whole budget: it could never be decoded."""


class VariantOutOfService(SchedulerError):
    """The engine or a batch worker failed fatally; nothing more runs on this variant."""
