"""``POST /detect``: images in, boxes + labels + scores out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from engines.model.pipeline import DetectOptions, PreparedImage
from engines.model.postprocess import Detections
from engines.precision import RequestedPrecision
from service.audit import PrecisionAudit
from service.deps import AuditDep, AuthDep, MetricsDep, ModelDep, SettingsDep
from service.errors import BadRequest, UnsupportedMediaType
from service.flow import Route, serve
from service.metrics import Metrics
from service.registry import ServedModel, ServedVariant
from service.scheduler import ItemResult
from service.schemas import Detection, DetectResponse, ImageResult, Timing, error_responses

router = APIRouter(tags=["detection"], dependencies=[AuthDep])

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


@dataclass(frozen=True)
class ImageOutcome:
    image: PreparedImage
    detections: Detections
    timing_ms: dict[str, float]
    batch_size: int


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


class DetectRoute(Route[DetectResponse]):
    """Images in (decoded in worker threads), boxes out (decoded and NMS'd in worker threads)."""

    def __init__(
        self,
        request: Request,
        model: ServedModel,
        options: DetectOptions,
        max_images: int,
        metrics: Metrics,
        audit: PrecisionAudit | None = None,
    ) -> None:
        self._request = request
        self._audit = audit
        self._model = model
        self._options = options
        self._max_images = max_images
        self._metrics = metrics
        self._started = time.perf_counter()
        self._blobs: list[bytes] = []
        self._images: dict[int, tuple[PreparedImage, float]] = {}
        self._outcomes: dict[int, ImageOutcome] = {}

    async def read(self, variant: ServedVariant) -> int:
        self._blobs = await read_images(self._request, self._max_images)
        return len(self._blobs)

    async def prepare(self, variant: ServedVariant, index: int) -> np.ndarray:
        started = time.perf_counter()
        image = await run_in_threadpool(self._model.pipeline.prepare, self._blobs[index])
        elapsed = time.perf_counter() - started
        self._metrics.preprocess_duration.labels(*self._labels(variant)).observe(elapsed)
        self._images[index] = (image, elapsed)
        return image.tensor

    async def finish(self, variant: ServedVariant, index: int, result: ItemResult) -> None:
        image, decode_s = self._images[index]
        started = time.perf_counter()
        pipeline = self._model.pipeline
        detections = await run_in_threadpool(pipeline.finish, result.outputs, image, self._options)
        post_s = time.perf_counter() - started
        variant.scheduler.observe_finish(post_s)
        self._metrics.postprocess_duration.labels(*self._labels(variant)).observe(post_s)
        if self._audit is not None:  # maybe re-run in FP32 later, off this request's path
            self._audit.offer(self._model, variant, image, result.outputs)
        timing = {
            "decode": decode_s * 1000,
            "queue": result.queue_wait_s * 1000,
            "inference": result.inference_s * 1000,
            "postprocess": post_s * 1000,
        }
        self._outcomes[index] = ImageOutcome(image, detections, timing, result.batch_size)

    def respond(self, variant: ServedVariant) -> DetectResponse:
        total_ms = round((time.perf_counter() - self._started) * 1000, 2)
        outcomes = [self._outcomes[i] for i in range(len(self._blobs))]
        results = [_result(self._model, o, total_ms) for o in outcomes]
        body = DetectResponse(
            model=self._model.name,
            precision=variant.record.precision.value,
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

    def _labels(self, variant: ServedVariant) -> tuple[str, str]:
        return self._model.name, variant.record.precision.value


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
    audit: AuditDep,
    precision: Annotated[
        RequestedPrecision | None,
        Query(description="Variant to run; default: the server's (auto)"),
    ] = None,
    conf: Annotated[float, Query(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.25,
    iou: Annotated[float, Query(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.45,
    max_det: Annotated[int, Query(ge=1, le=10_000)] = 300,
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
    budget_ms = deadline_ms or x_deadline_ms or settings.default_deadline_ms
    deadline = time.monotonic() + budget_ms / 1000
    if max_det > settings.max_detections:
        raise BadRequest(f"max_det {max_det} exceeds the server limit {settings.max_detections}")
    try:
        class_ids = model.pipeline.parse_classes(classes)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    options = DetectOptions(conf, iou, max_det, class_ids)
    route = DetectRoute(request, model, options, settings.max_images_per_request, metrics, audit)
    requested = precision or settings.default_precision
    body = await serve(model, requested, route, deadline=deadline, metrics=metrics, request=request)
    response.headers["X-Precision"] = body.precision
    response.headers["X-Backend"] = body.backend
    return body
