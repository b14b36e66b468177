"""One detection request end to end: decode in a thread, batch, post-process in a thread.

Shared by ``POST /detect`` and the KServe v2 route so both get the same limits, timings and
metrics. Each stage is timed once; the same numbers feed the response and the metrics.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from engines.model.pipeline import DetectOptions, PreparedImage
from engines.model.postprocess import Detections
from engines.precision import Precision
from service.audit import PrecisionAudit
from service.errors import EngineUnavailable
from service.metrics import Metrics
from service.registry import ServedModel, ServedVariant
from service.scheduler import ItemResult


@dataclass(frozen=True)
class ImageOutcome:
    image: PreparedImage
    detections: Detections
    timing_ms: dict[str, float]
    batch_size: int


async def prepare_images(
    model: ServedModel,
    variant: ServedVariant,
    blobs: list[bytes],
    deadline: float,
    metrics: Metrics,
) -> list[tuple[PreparedImage, float]]:
    """Decode + letterbox each image in a worker thread; the batcher knows they are coming."""
    labels = (model.name, variant.spec.precision.value)

    async def one(data: bytes) -> tuple[PreparedImage, float]:
        started = time.perf_counter()
        image = await run_in_threadpool(model.pipeline.prepare, data)
        elapsed = time.perf_counter() - started
        metrics.preprocess_duration.labels(*labels).observe(elapsed)
        return image, elapsed

    # Shed load before decoding: under overload that CPU is wasted on requests refused anyway.
    # No await between admitting and marking incoming, so a burst of requests sees each other.
    variant.scheduler.admit(len(blobs), deadline)
    with variant.scheduler.incoming(len(blobs)):
        return list(await asyncio.gather(*(one(b) for b in blobs)))


async def run_images(
    model: ServedModel,
    variant: ServedVariant,
    prepared: list[tuple[PreparedImage, float]],
    options: DetectOptions,
    deadline: float,
    metrics: Metrics,
    audit: PrecisionAudit | None = None,
) -> list[ImageOutcome]:
    """Submit every prepared image to the variant's batcher and post-process each answer."""
    labels = (model.name, variant.spec.precision.value)

    async def one(image: PreparedImage, decode_s: float) -> ImageOutcome:
        result: ItemResult = await variant.scheduler.submit(image.tensor, deadline)
        started = time.perf_counter()
        detections = await run_in_threadpool(model.pipeline.finish, result.outputs, image, options)
        post_s = time.perf_counter() - started
        variant.scheduler.observe_finish(post_s)
        metrics.postprocess_duration.labels(*labels).observe(post_s)
        if audit is not None:  # maybe re-run in FP32 later, off this request's path
            audit.offer(model, variant, image, result.outputs)
        timing = {
            "decode": decode_s * 1000,
            "queue": result.queue_wait_s * 1000,
            "inference": result.inference_s * 1000,
            "postprocess": post_s * 1000,
        }
        return ImageOutcome(image, detections, timing, result.batch_size)

    return list(await asyncio.gather(*(one(img, dt) for img, dt in prepared)))


def pick_variant(model: ServedModel, requested: str) -> ServedVariant:
    """The variant that answers; a variant whose engine died is never picked."""
    precision: Precision = model.selector.select(requested, model.unavailable)
    variant = model.variants[precision]
    if not variant.ready:
        raise EngineUnavailable(
            f"{model.name}/{precision.value} is out of service: "
            f"{model.unavailable.get(precision.value, 'not ready')}"
        )
    return variant
