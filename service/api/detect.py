"""``POST /detect``: images in, boxes + labels + scores out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from engines.model.pipeline import DetectOptions
from service.deps import AuthDep, MetricsDep, ModelDep, SettingsDep
from service.errors import (
    BadRequest,
    ClientClosedRequest,
    UnsupportedMediaType,
    to_service_error,
)
from service.inference import ImageOutcome, pick_variant, prepare_images, run_images
from service.registry import ServedModel, ServedVariant
from service.schemas import Detection, DetectResponse, ImageResult, Timing, error_responses

router = APIRouter(tags=["detection"], dependencies=[AuthDep])
_DEFAULT_NOTE = "Default: the model's (GET /models `defaults`; Ultralytics models: as yolo predict)"
T = TypeVar("T")

IMAGE_TYPES = ("image/", "application/octet-stream")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One or more images as multipart field(s) `image`, or one image as the "
        "raw body with an image content type.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/jpeg": _BINARY,
            "image/png": _BINARY,
            "image/webp": _BINARY,
            "application/octet-stream": _BINARY,
        },
    }
}
ERRORS = error_responses(
    {
        400: "invalid image, unknown class or unavailable precision",
        401: "missing or invalid API key",
        404: "unknown model",
        413: "body over the byte limit or image over the pixel limit",
        415: "unsupported content type",
        422: "invalid query parameter",
        503: "overloaded or draining (see Retry-After) or engine out of service",
        504: "the deadline cannot be met",
    }
)


async def read_images(request: Request, max_images: int) -> list[bytes]:
    """Multipart ``image`` fields or a raw image body -> list of bytes (never empty)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_images + 1, max_fields=max_images + 8)
        except (MultiPartException, HTTPException) as exc:
            # Starlette raises MultiPartException, or HTTPException(400) inside an app.
            detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
            raise BadRequest(f"malformed multipart body: {detail}") from None
        uploads = [v for v in form.getlist("image") if isinstance(v, UploadFile)]
        if not uploads:
            raise BadRequest("multipart body has no file field named 'image'")
        if len(uploads) > max_images:
            raise BadRequest(f"{len(uploads)} images in one request; the limit is {max_images}")
        blobs = [await u.read() for u in uploads]
    elif content_type.startswith(IMAGE_TYPES):
        blobs = [await request.body()]
    else:
        raise UnsupportedMediaType(
            f"content type {content_type[:64]!r} is not supported: send multipart/form-data "
            "with field 'image', or the image bytes with an image/* content type"
        )
    for i, blob in enumerate(blobs):
        if not blob:
            raise BadRequest(f"image {i} is empty")
    return blobs


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


def _result(model: ServedModel, outcome: ImageOutcome, total_ms: float) -> ImageResult:
    names = model.info.class_names
    dets = outcome.detections
    detections = [
        Detection(
            label=names[int(c)],
            class_id=int(c),
            score=round(float(s), 4),
            box=[round(float(v), 1) for v in b],
        )
        for b, s, c in zip(dets.boxes, dets.scores, dets.class_ids, strict=True)
    ]
    timing = Timing(**{k: round(v, 2) for k, v in outcome.timing_ms.items()}, total=total_ms)
    return ImageResult(
        width=outcome.image.width,
        height=outcome.image.height,
        detections=detections,
        timing_ms=timing,
        batch_size=outcome.batch_size,
    )


async def _detect(
    model: ServedModel,
    variant: ServedVariant,
    blobs: list[bytes],
    options: DetectOptions,
    deadline: float,
    metrics: MetricsDep,
) -> list[ImageOutcome]:
    prepared = await prepare_images(model, variant, blobs, deadline, metrics)
    return await run_images(model, variant, prepared, options, deadline, metrics)


def _track(metrics: MetricsDep, model: str, precision: str) -> Callable[[int, float], None]:
    def record(status: int, seconds: float) -> None:
        metrics.requests.labels(model, precision, str(status)).inc()
        metrics.request_duration.labels(model, precision).observe(seconds)

    return record


@router.post(
    "/detect",
    response_model=DetectResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=REQUEST_BODY,
    summary="Detect objects in one or more images",
)
async def detect(
    request: Request,
    response: Response,
    model: ModelDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    precision: Annotated[
        Literal["fp32", "fp16", "int8", "auto"] | None,
        Query(description="Variant to run; default: the server's (auto)"),
    ] = None,
    conf: Annotated[
        float | None,
        Query(ge=0.0, le=1.0, allow_inf_nan=False, description=_DEFAULT_NOTE),
    ] = None,
    iou: Annotated[
        float | None,
        Query(ge=0.0, le=1.0, allow_inf_nan=False, description=_DEFAULT_NOTE),
    ] = None,
    max_det: Annotated[int | None, Query(ge=1, le=10_000, description=_DEFAULT_NOTE)] = None,
    classes: Annotated[
        str | None, Query(max_length=2048, description="Class ids or names, comma separated")
    ] = None,
    deadline_ms: Annotated[
        float | None,
        Query(ge=1, le=600_000, allow_inf_nan=False, description="Time budget in ms"),
    ] = None,
    x_deadline_ms: Annotated[float | None, Header(gt=0, le=600_000, allow_inf_nan=False)] = None,
) -> DetectResponse:
    """Run the model on the uploaded image(s); boxes are in original-image pixels."""
    started = time.perf_counter()
    budget_ms = deadline_ms or x_deadline_ms or settings.default_deadline_ms
    deadline = time.monotonic() + budget_ms / 1000
    defaults = model.config.defaults if model.config else None
    conf = conf if conf is not None else (defaults.conf if defaults else settings.default_conf)
    iou = iou if iou is not None else (defaults.iou if defaults else settings.default_iou)
    if max_det is None:
        max_det = defaults.max_det if defaults else settings.default_max_det
    if max_det > settings.max_detections:
        raise BadRequest(f"max_det {max_det} exceeds the server limit {settings.max_detections}")
    try:
        class_ids = model.pipeline.parse_classes(classes)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    requested = precision or settings.default_precision
    variant = pick_variant(model, requested)
    chosen = variant.spec.precision.value
    metrics.precision_selected.labels(model.name, requested, chosen).inc()
    record = _track(metrics, model.name, chosen)
    metrics.inflight.labels(model.name).inc()
    status = 500
    try:
        options = DetectOptions(conf, iou, max_det, class_ids)
        # The whole body is read before anything watches for a disconnect: both would take
        # messages from the same receive channel, and a body chunk taken by the watcher is lost.
        blobs = await read_images(request, settings.max_images_per_request)
        outcomes = await cancel_on_disconnect(
            request, _detect(model, variant, blobs, options, deadline, metrics)
        )
        status = 200
    except asyncio.CancelledError:
        status = 499  # client closed the request (nginx's convention)
        raise
    except Exception as exc:
        err = to_service_error(exc)
        status = err.status
        raise err from exc
    finally:
        metrics.inflight.labels(model.name).dec()
        record(status, time.perf_counter() - started)
    total_ms = round((time.perf_counter() - started) * 1000, 2)
    results = [_result(model, o, total_ms) for o in outcomes]
    response.headers["X-Precision"] = chosen
    response.headers["X-Backend"] = variant.engine.backend
    body = DetectResponse(
        model=model.name,
        precision=chosen,
        backend=variant.engine.backend,
        device=variant.engine.device,
    )
    if len(results) == 1:
        only = results[0]
        body.width, body.height, body.detections = only.width, only.height, only.detections
        body.timing_ms, body.batch_size = only.timing_ms, only.batch_size
    else:
        body.results = results
    return body
