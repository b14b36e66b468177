"""The image-in, detections-out v2 model ``NAME.detect`` over KServe v2 HTTP.

See ``service.api.v2_models`` for its inputs, outputs and parameters. Over HTTP the ``IMAGE``
input goes in the binary-data extension (what ``tritonclient.http`` sends for BYTES); JSON
``data`` is accepted too, one base64 string per image.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.detect import DetectRoute, ImageOutcome
from service.api.kserve_codec import (
    HEADER_LENGTH,
    InferRequest,
    check_requested_outputs,
    parse_request,
    wants_binary,
)
from service.api.v2_models import (
    IMAGE_INPUT,
    IMAGE_OUTPUTS,
    V2Target,
    detect_options,
    image_blobs,
    is_ready,
    metadata,
    precision_of,
    resolve_v2,
)
from service.api.v2_tensors import from_raw, json_data, to_raw
from service.config import Settings
from service.deps import AuthDep, MetricsDep, RegistryDep, SettingsDep
from service.errors import BadRequest
from service.flow import serve
from service.metrics import Metrics
from service.registry import ServedModel, ServedVariant
from service.scheduler import DecodeBudget

router = APIRouter(prefix="/v2/models", tags=["kserve-v2"], dependencies=[AuthDep])
OUTPUT_NAMES = [name for name, _, _ in IMAGE_OUTPUTS]


class BlobsDetectRoute(DetectRoute):
    """``/detect``'s route (decode, batch, NMS, metrics) for images that arrived already read."""

    def __init__(
        self,
        blobs: list[bytes],
        model: ServedModel,
        options: Any,
        settings: Settings,
        metrics: Metrics,
        decoding: DecodeBudget,
        deadline: float,
    ) -> None:
        super().__init__(None, model, options, settings, metrics, decoding, deadline)
        self._given = blobs
        self.answered_by = ""

    async def read(self, variant: ServedVariant) -> int:
        self.answered_by = precision_of(self._model, variant)
        return await super().read(variant)  # priced against the decode budget like /detect's

    async def _receive(self) -> list[bytes]:
        return self._given

    def outcomes(self) -> list[ImageOutcome]:
        return [self._outcomes[i] for i in range(len(self._blobs))]


def detection_arrays(model: ServedModel, outcomes: list[ImageOutcome]) -> dict[str, np.ndarray]:
    """Per-image detections -> the padded ``NAME.detect`` output tensors."""
    rows = len(outcomes)
    k = max((len(o.detections) for o in outcomes), default=0)
    boxes = np.zeros((rows, k, 4), np.float32)
    scores = np.zeros((rows, k), np.float32)
    classes = np.zeros((rows, k), np.int32)
    labels = np.full((rows, k), b"", dtype=object)
    count = np.zeros((rows,), np.int32)
    names = model.info.class_names
    for i, outcome in enumerate(outcomes):
        dets = outcome.detections
        n = len(dets)
        count[i] = n
        boxes[i, :n] = dets.boxes
        scores[i, :n] = dets.scores
        classes[i, :n] = dets.class_ids
        labels[i, :n] = [names[int(c)].encode() for c in dets.class_ids]
    return {"boxes": boxes, "scores": scores, "classes": classes, "labels": labels, "count": count}


async def run_image_model(
    target: V2Target,
    blobs: list[bytes],
    parameters: dict[str, Any],
    settings: Settings,
    metrics: Metrics,
    decoding: DecodeBudget,
    *,
    deadline: float,
    request: Request | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Run ``NAME.detect`` on ``blobs``: (output arrays, response parameters)."""
    model = target.model
    options = detect_options(model, parameters, settings)
    route = BlobsDetectRoute(blobs, model, options, settings, metrics, decoding, deadline)
    requested = str(parameters.get("precision", settings.default_precision))
    await serve(model, requested, route, deadline=deadline, metrics=metrics, request=request)
    variant = model.variants[next(p for p in model.variants if p.value == route.answered_by)]
    chosen = {"precision": route.answered_by, "backend": variant.engine.backend}
    return detection_arrays(model, route.outcomes()), chosen


def _http_images(header: InferRequest, binary: bytes, max_images: int) -> list[bytes]:
    inputs = header.inputs  # names, datatypes and integer shapes checked by parse_request
    if len(inputs) != 1:
        raise BadRequest(f"the image model takes one input, {IMAGE_INPUT!r} (BYTES)")
    spec = inputs[0]
    if spec.name != IMAGE_INPUT or spec.datatype != "BYTES":
        raise BadRequest(f"the image model takes one input, {IMAGE_INPUT!r} (BYTES)")
    shape = spec.shape
    size = (spec.parameters or {}).get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary):
            raise BadRequest("binary_data_size does not match the binary data sent")
        array = from_raw("BYTES", shape, binary[:size])
    else:
        data = spec.data
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise BadRequest(f"JSON data for {IMAGE_INPUT!r} must be base64 strings")
        try:
            decoded = [base64.b64decode(d, validate=True) for d in data]
        except binascii.Error:
            raise BadRequest(f"JSON data for {IMAGE_INPUT!r} must be base64 strings") from None
        array = np.array(decoded, dtype=object)
    return image_blobs(array, max_images)


def encode_http(
    header: InferRequest, arrays: dict[str, np.ndarray], name: str, extra: dict[str, Any]
) -> Response:
    """Output arrays -> v2 HTTP response, binary where the client asked for it."""
    requested = [o.name for o in header.outputs or []]
    tensors, blobs = [], []
    for out, array in arrays.items():
        if requested and out not in requested:
            continue
        datatype, raw = to_raw(array)
        entry: dict[str, Any] = {"name": out, "datatype": datatype, "shape": list(array.shape)}
        if wants_binary(header, out):
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = json_data(array)
        tensors.append(entry)
    body: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": tensors, **extra}
    if header.id is not None:
        body["id"] = header.id
    head = json.dumps(body).encode()
    if not blobs:
        return Response(head, media_type="application/json")
    headers = {"Inference-Header-Content-Length": str(len(head))}
    return Response(head + b"".join(blobs), headers=headers, media_type="application/octet-stream")


@router.get("/{base}.detect", summary="v2 metadata of the image-in model")
@router.get("/{base}.detect/versions/{version}", include_in_schema=False)
async def image_model_metadata(
    base: str, request: Request, registry: RegistryDep
) -> dict[str, Any]:
    return metadata(resolve_v2(registry, f"{base}.detect", request.path_params.get("version")))


@router.get("/{base}.detect/ready", summary="v2 readiness of the image-in model")
@router.get("/{base}.detect/versions/{version}/ready", include_in_schema=False)
async def image_model_ready(base: str, request: Request, registry: RegistryDep) -> JSONResponse:
    target = resolve_v2(registry, f"{base}.detect", request.path_params.get("version"))
    ready = is_ready(target)
    return JSONResponse({"name": target.name, "ready": ready}, status_code=200 if ready else 400)


@router.get("/{base}.detect/config", summary="Triton-style config of the image-in model")
async def image_model_config(
    base: str, registry: RegistryDep, settings: SettingsDep
) -> dict[str, Any]:
    target = resolve_v2(registry, f"{base}.detect")
    return {
        "name": target.name,
        "platform": "ensemble",
        "max_batch_size": settings.max_images_per_request,
        "input": [{"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [
            {"name": n, "data_type": "TYPE_STRING" if t == "BYTES" else f"TYPE_{t}", "dims": s[1:]}
            for n, t, s in IMAGE_OUTPUTS
        ],
    }


@router.post("/{base}.detect/infer", summary="v2 inference on encoded images")
@router.post("/{base}.detect/versions/{version}/infer", include_in_schema=False)
async def image_model_infer(
    base: str, request: Request, registry: RegistryDep, settings: SettingsDep, metrics: MetricsDep
) -> Response:
    target = resolve_v2(registry, f"{base}.detect", request.path_params.get("version"))
    deadline = time.monotonic() + settings.default_deadline_ms / 1000
    body = await request.body()
    # Parsing and validating a body of many MB: off the event loop (as /v2 infer does).
    header, binary = await run_in_threadpool(
        parse_request, body, request.headers.get(HEADER_LENGTH)
    )
    del body
    check_requested_outputs(header, OUTPUT_NAMES)
    blobs = _http_images(header, binary, settings.max_images_per_request)
    parameters = dict(header.parameters or {})
    decoding: DecodeBudget = request.app.state.decode_budget
    arrays, chosen = await run_image_model(
        target, blobs, parameters, settings, metrics, decoding, deadline=deadline, request=request
    )
    extra = {"model_version": str(target.model.version), "parameters": chosen}
    return encode_http(header, arrays, target.name, extra)
