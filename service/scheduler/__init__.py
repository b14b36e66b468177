"""Dynamic batching for one engine variant: admission (``admission``) and batch forming
(``batcher``), refusing work with the domain errors of ``errors``."""

from service.scheduler.admission import BatchObserver, DeviceLoad
from service.scheduler.batcher import BatchingConfig, BatchScheduler, ItemResult, Outputs
from service.scheduler.decoding import DecodeBudget
from service.scheduler.errors import (
    DeadlineUnmeetable,
    DecodeBusy,
    DecodeTooCostly,
    QueueFull,
    SchedulerError,
    ShuttingDown,
    TooManyImages,
    VariantOutOfService,
)

__all__ = [
    "BatchObserver",
    "BatchScheduler",
    "BatchingConfig",
    "DeadlineUnmeetable",
    "DecodeBudget",
    "DecodeBusy",
    "DecodeTooCostly",
    "DeviceLoad",
    "ItemResult",
    "Outputs",
    "QueueFull",
    "SchedulerError",
    "ShuttingDown",
    "TooManyImages",
    "VariantOutOfService",
]
