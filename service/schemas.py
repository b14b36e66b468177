"""Response bodies of the REST API (what clients and the OpenAPI schema see)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Detection(BaseModel):
    label: str = Field(examples=["person"])
    class_id: int = Field(examples=[0])
    score: float = Field(examples=[0.87])
    box: list[float] = Field(
        description="x1, y1, x2, y2 in original-image pixels",
        examples=[[48.6, 398.1, 245.3, 902.7]],
    )


class Timing(BaseModel):
    decode: float = Field(description="decode + letterbox, ms")
    queue: float = Field(description="wait in the batching queue, ms")
    inference: float = Field(description="engine time of the batch this image ran in, ms")
    postprocess: float = Field(description="decode outputs + NMS + box mapping, ms")
    total: float = Field(description="whole request inside the service, ms")


class ImageResult(BaseModel):
    width: int
    height: int
    detections: list[Detection]
    timing_ms: Timing
    batch_size: int = Field(description="images in the engine batch this image ran in")


class DetectResponse(BaseModel):
    """One image: its result inline. Several images: ``results`` in upload order."""

    model: str = Field(examples=["yolov3-tiny-coco"])
    precision: str = Field(examples=["fp32"])
    backend: str = Field(examples=["onnxruntime"])
    device: str = Field(examples=["cpu"])
    width: int | None = Field(None, examples=[810])
    height: int | None = Field(None, examples=[1080])
    detections: list[Detection] | None = None
    timing_ms: Timing | None = None
    batch_size: int | None = None
    results: list[ImageResult] | None = None


class LiveAgreementInfo(BaseModel):
    agreement: float | None = Field(
        None, description="mAP50-95 agreement with FP32 on sampled live traffic (rolling)"
    )
    samples: int = Field(description="shadow samples in the rolling window")
    budget: float = Field(description="the build's acceptance budget for this variant")
    demoted: str | None = Field(None, description="why `auto` avoids this variant now")


class VariantInfo(BaseModel):
    precision: str
    backend: str
    device: str
    ready: bool
    agreement: float | None = Field(None, description="mAP50-95 agreement with FP32")
    latency_ms: dict[int, float] = Field(default_factory=dict, description="batch size -> ms")
    latency_measured_under: str | None = Field(None, description="the load behind latency_ms")
    live_latency_ms: dict[int, float] = Field(
        default_factory=dict,
        description="batch size -> ms per batch on this host now (what `auto` ranks by)",
    )
    live_samples: dict[int, int] = Field(
        default_factory=dict, description="batch size -> batches behind the live figure"
    )
    live_measured_under: dict[int, str] = Field(
        default_factory=dict, description="batch size -> where the live figure comes from"
    )
    note: str = ""
    live: LiveAgreementInfo | None = Field(
        None, description="live precision audit (reduced precisions with an FP32 sibling)"
    )


class ModelDefaults(BaseModel):
    conf: float
    iou: float
    max_det: int
    source: str = Field(
        description="where the values come from: model.yaml, ultralytics (yolo predict's), "
        "settings (DETECT_DEFAULT_*), '+'-joined when mixed"
    )


class ModelBatching(BaseModel):
    max_batch: int = Field(description="the model's max batch (never above its own static batch)")
    max_wait_ms: float


class ModelEntry(BaseModel):
    name: str
    input_size: list[int]
    layout: str
    classes: list[str]
    auto_precision: str
    auto_under_pressure: bool = Field(
        False, description="`auto` has moved to its fastest variant (queue wait over the SLO)"
    )
    variants: list[VariantInfo]
    unavailable: dict[str, str] = Field(
        default_factory=dict, description="precision -> why not served"
    )
    defaults: ModelDefaults | None = Field(None, description="effective request defaults")
    batching: ModelBatching | None = Field(None, description="effective batching")


class ModelsResponse(BaseModel):
    default_model: str
    models: list[ModelEntry]
    failed: dict[str, str] = Field(default_factory=dict, description="model -> why it did not load")


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = Field(None, description="also in the X-Request-ID header")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, all with the JSON error body."""
    return {
        code: {"model": ErrorResponse, "description": why} for code, why in descriptions.items()
    }


# Statuses any route may answer (auth, body limit, unknown model, overload); documented on every
# route so clients and schema-driven fuzzers know them.
COMMON_ERRORS = error_responses(
    {
        400: "malformed request",
        401: "missing or invalid API key (when API keys are configured)",
        404: "unknown model or route",
        413: "request body over the byte limit",
        422: "invalid parameter",
        503: "overloaded, draining, or engine out of service (see Retry-After)",
    }
)
