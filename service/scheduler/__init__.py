"""Dynamic batching for one engine variant: admission (``admission``) and batch forming
(``batcher``), refusing work with the domain errors of ``errors``."""

from service.scheduler.admission import BatchObserver, DeviceLoad
from service.scheduler.batcher import BatchingConfig, BatchScheduler, ItemResult, Outputs
from service.scheduler.errors import (
    DeadlineUnmeetable,
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
    "DeviceLoad",
    "ItemResult",
    "Outputs",
    "QueueFull",
    "SchedulerError",
    "ShuttingDown",
    "TooManyImages",
    "VariantOutOfService",
]
