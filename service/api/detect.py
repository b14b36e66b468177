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
from engines.model.preprocess import DecodeCost, decode_cost
from engines.precision import RequestedPrecision
from service.api import detect_json
from service.audit import PrecisionAudit
from service.config import Settings
from service.deps import AuditDep, AuthDep, MetricsDep, ModelDep, SettingsDep
from service.errors import BadRequest, UnsupportedMediaType
from service.flow import Route, serve
from service.metrics import Metrics
from service.registry import ServedModel, ServedVariant
from service.scheduler import DecodeBudget, ItemResult
from service.schemas import Detection, DetectResponse, ImageResult, Timing, error_responses

router = APIRouter(tags=["detection"], dependencies=[AuthDep])
_DEFAULT_NOTE = "Default: the model's (GET /models `defaults`; Ultralytics models: as yolo predict)"

IMAGE_TYPES = ("image/", "application/octet-stream")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One or more images as multipart field(s) `image`, one image as the "
        "raw body with an image content type, or JSON "
        '`{"images": [{"base64": "..."}, {"url": "https://..."}]}` '
        "(URLs only for hosts the server allowlists).",
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
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "base64": {"type": "string"},
                                    "url": {"type": "string"},
                                },
                            },
                        }
                    },
                }
            },
        },
    }
}
ERRORS = error_responses(
    {
        400: "invalid image, unknown class or unavailable precision",
        401: "missing or invalid API key",
        404: "unknown model",
        408: "body sent too slowly",
        413: "body over the byte limit, or image over the pixel, side or decode-memory limit",
        415: "unsupported content type",
        422: "invalid query parameter",
        503: "overloaded, decode budget spent, draining or engine out of service (Retry-After)",
        504: "the deadline the client set cannot be met (Retry-After)",
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
    elif content_type.startswith("application/json"):
        settings = request.app.state.settings
        blobs = await detect_json.read_json_images(request, settings, max_images)
    else:
        raise UnsupportedMediaType(
            f"content type {content_type[:64]!r} is not supported: send multipart/form-data "
            "with field 'image', the image bytes with an image/* content type, or JSON "
            '{"images": [{"base64": ...} or {"url": ...}]}'
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
    estimated_ms: float  # admission's estimate of queue + inference, against timing_ms's


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
        request: Request | None,
        model: ServedModel,
        options: DetectOptions,
        settings: Settings,
        metrics: Metrics,
        decoding: DecodeBudget,
        deadline: float,
        audit: PrecisionAudit | None = None,
    ) -> None:
        self._request = request
        self._audit = audit
        self._model = model
        self._options = options
        self._settings = settings
        self._metrics = metrics
        self._decoding = decoding
        self._deadline = deadline
        self._started = time.perf_counter()
        self._blobs: list[bytes] = []
        self._costs: list[DecodeCost] = []
        self._images: dict[int, tuple[PreparedImage, float]] = {}
        self._outcomes: dict[int, ImageOutcome] = {}

    async def read(self, variant: ServedVariant) -> int:
        self._decoding.check([], self._deadline)  # decoding already backed up: shed, unread
        self._blobs = await self._receive()
        # Price every image from its header before any is decoded: one the limits refuse, or
        # that could not be decoded in time, costs nothing but this.
        self._costs = await run_in_threadpool(self._price, self._blobs)
        self._decoding.check(self._costs, self._deadline)
        return len(self._blobs)

    async def _receive(self) -> list[bytes]:
        """The encoded images; subclasses that receive them another way override this."""
        if self._request is None:
            raise TypeError("DetectRoute without a request has nothing to read")
        return await read_images(self._request, self._settings.max_images_per_request)

    def _price(self, blobs: list[bytes]) -> list[DecodeCost]:
        s = self._settings
        return [decode_cost(b, max_pixels=s.max_pixels, max_side=s.max_image_side) for b in blobs]

    async def prepare(self, variant: ServedVariant, index: int) -> np.ndarray:
        started = time.perf_counter()
        image = await self._decoding.run(
            self._costs[index], self._model.pipeline.prepare, self._blobs[index], self._deadline
        )
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
        estimated_ms = result.estimated_s * 1000
        self._outcomes[index] = ImageOutcome(
            image, detections, timing, result.batch_size, estimated_ms
        )

    def server_timing(self) -> str:
        """``Server-Timing``: admission's estimate of queue + inference for the image that
        waited longest, and what it really took (calibration, checked from outside)."""
        if not self._outcomes:
            return ""
        last = max(self._outcomes.values(), key=lambda o: o.timing_ms["queue"])
        actual = last.timing_ms["queue"] + last.timing_ms["inference"]
        return f"estimate;dur={last.estimated_ms:.1f}, actual;dur={actual:.1f}"

    @property
    def blobs(self) -> list[bytes]:
        """The encoded images, in request order (for the annotated reply)."""
        return self._blobs

    async def respond(self, variant: ServedVariant) -> DetectResponse:
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
    responses={**ERRORS, 200: detect_json.OTHER_REPLIES},
    openapi_extra=REQUEST_BODY,
    summary="Detect objects in one or more images",
)
async def detect(
    request: Request,
    model: ModelDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    audit: AuditDep,
    precision: Annotated[
        RequestedPrecision | None,
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
    format: Annotated[
        detect_json.ReplyFormat,
        Query(description="json, or image (= jpeg) / png: the photo with the boxes drawn"),
    ] = "json",
    v: Annotated[
        int | None,
        Query(
            ge=1, le=2, description="2: always a `results` list (v1, the default, is deprecated)"
        ),
    ] = None,
) -> Response:
    """Run the model on the uploaded image(s); boxes are in original-image pixels."""
    client_budget_ms = deadline_ms or x_deadline_ms
    budget_ms = client_budget_ms or settings.default_deadline_ms
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
    options = DetectOptions(conf, iou, max_det, class_ids)
    decoding: DecodeBudget = request.app.state.decode_budget
    route = DetectRoute(request, model, options, settings, metrics, decoding, deadline, audit)
    requested = precision or settings.default_precision
    body = await serve(
        model,
        requested,
        route,
        deadline=deadline,
        metrics=metrics,
        request=request,
        client_deadline=client_budget_ms is not None,
    )
    headers = {
        "X-Precision": body.precision,
        "X-Backend": body.backend,
        "X-Model-Version": str(model.version),  # the version that answered (model control)
        "Server-Timing": route.server_timing(),
    }
    return await detect_json.reply(
        request, body, route.blobs, fmt=format, version=v, settings=settings, headers=headers
    )
