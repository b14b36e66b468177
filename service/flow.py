"""One request path for every protocol: ``POST /detect`` and KServe v2 infer both call ``serve``.

``serve`` owns what must not differ between the routes: which variant answers (and the
``detect_precision_selected`` count), shedding load before a body is read, the in-flight gauge the
autoscaler scales on (requests whose body has arrived: a client trickling its upload is not load),
admission before any decoding, batching, cancellation when the client leaves, and one
``detect_requests_total`` count and duration per request with the status it really ended with
(the reply is built inside the accounting, so a reply that fails is counted as failed).
What differs (how inputs arrive, what follows the engine, the reply's shape) is a ``Route``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import Generic, TypeVar

import numpy as np
from starlette.requests import Request

from engines.precision import Precision
from service.errors import ClientClosedRequest, EngineUnavailable, to_service_error
from service.metrics import Metrics
from service.registry import ServedModel, ServedVariant
from service.scheduler import ItemResult
from service.stats import VariantStats
from service.tracing import past_span, span

Reply = TypeVar("Reply")
T = TypeVar("T")


class Route(ABC, Generic[Reply]):
    """The protocol-specific steps of one request, called by ``serve`` in this order."""

    @abstractmethod
    async def read(self, variant: ServedVariant) -> int:
        """Read and check the inputs (client errors raised here are counted); return how many
        images the request holds."""

    @abstractmethod
    async def prepare(self, variant: ServedVariant, index: int) -> np.ndarray:
        """The engine input (one CHW tensor) for image ``index``."""

    async def finish(self, variant: ServedVariant, index: int, result: ItemResult) -> None:
        """Work on one image's engine outputs as soon as they arrive; nothing by default."""

    @abstractmethod
    async def respond(self, variant: ServedVariant) -> Reply:
        """The reply, once every image is finished (big replies are encoded off the loop)."""


def pick_variant(model: ServedModel, requested: str) -> ServedVariant:
    """The variant that answers; a variant whose engine died is never picked."""
    precision: Precision = model.selector.select(requested, model.unavailable)
    variant = model.variants[precision]
    if not variant.ready:
        raise EngineUnavailable(
            f"{model.name}/{precision.value} is out of service: "
            f"{model.unavailable.get(precision, 'not ready')}"
        )
    return variant


async def serve(
    model: ServedModel,
    requested: str,
    route: Route[Reply],
    *,
    deadline: float,
    metrics: Metrics,
    request: Request | None = None,
    client_deadline: bool = False,
) -> Reply:
    """Answer one request with ``route``; ``deadline`` is a ``time.monotonic()`` instant.

    With ``request``, a client that disconnects cancels its queued images. Every error leaves as
    a ``ServiceError`` (see ``service.errors``), with the status it was counted under; a deadline
    that cannot be met is 504 when ``client_deadline`` (the client set it), else 503 (overload).
    """
    started = time.perf_counter()
    variant = pick_variant(model, requested)
    chosen = variant.record.precision.value
    metrics.precision_selected.labels(model.name, requested, chosen).inc()
    stats = metrics.inference_stats.variant(model.name, chosen)
    status = 500  # no-mutate: every path out sets its own; only an interpreter exit keeps it
    inflight = metrics.inflight.labels(model.name)
    counted = False
    try:
        with span("detect.request", {"model": model.name, "precision": chosen}):
            # Already shedding? Refuse before reading the body: under a retry storm most
            # requests are refused, and reading and parsing their uploads would starve the
            # accepted ones.
            variant.scheduler.admit(1, deadline)
            # The whole body is read before anything watches for a disconnect: both would take
            # messages from the same receive channel, and a body chunk taken by the watcher is
            # lost.
            images = await route.read(variant)
            inflight.inc()
            counted = True
            work = _run(variant, route, images, deadline, stats)
            await (work if request is None else cancel_on_disconnect(request, work))
            reply = await route.respond(variant)
        status = 200
        return reply
    except asyncio.CancelledError:
        status = 499  # client closed the request (nginx's convention)
        raise
    except Exception as exc:
        err = to_service_error(exc, client_deadline=client_deadline)
        status = err.status
        raise err from exc
    finally:
        if counted:
            inflight.dec()
        metrics.requests.labels(model.name, chosen, str(status)).inc()
        elapsed = time.perf_counter() - started
        metrics.request_duration.labels(model.name, chosen).observe(elapsed)
        if status != 499:  # Triton counts a cancelled request as neither success nor failure
            stats.request(status == 200, elapsed)


async def _run(
    variant: ServedVariant, route: Route[Reply], images: int, deadline: float, stats: VariantStats
) -> None:
    scheduler = variant.scheduler

    async def prepare(index: int) -> np.ndarray:
        started = time.perf_counter()
        with span("decode", {"image": index}):
            tensor = await route.prepare(variant, index)
        stats.compute_input.add(time.perf_counter() - started)
        return tensor

    # Shed load before decoding: under overload that CPU is wasted on requests refused anyway.
    # No await between admitting and marking incoming, so a burst of requests sees each other.
    scheduler.admit(images, deadline)
    with scheduler.incoming(images):
        tensors = await asyncio.gather(*(prepare(i) for i in range(images)))

    async def one(index: int, tensor: np.ndarray) -> None:
        queued = time.perf_counter()
        result = await scheduler.submit(tensor, deadline)
        returned = time.perf_counter()
        _trace_batch(index, queued, returned, result)
        stats.item(result.queue_wait_s, result.inference_s, result.batch_size)
        with span("postprocess", {"image": index}):
            await route.finish(variant, index, result)
        stats.compute_output.add(time.perf_counter() - returned)

    await asyncio.gather(*(one(i, t) for i, t in enumerate(tensors)))


def _trace_batch(index: int, queued: float, returned: float, result: ItemResult) -> None:
    """The queue wait and engine run the batcher measured, as spans placed back in time."""
    ran = returned - result.inference_s
    attributes = {"image": index, "batch_size": result.batch_size}
    past_span("queue", queued, min(queued + result.queue_wait_s, ran), attributes)
    past_span("inference", ran, returned, attributes)


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client goes away first, cancel it so queued images are dropped."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while not task.done():
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        # Ours (the client left), not the server's (shutdown): an ordinary outcome, not a crash.
        # Task.cancelling() exists from Python 3.11; before that, trust ``gone``.
        cancelling = getattr(current, "cancelling", lambda: 0)()
        if gone and not cancelling:
            raise ClientClosedRequest("the client disconnected") from None
        raise
    finally:
        watcher.cancel()
