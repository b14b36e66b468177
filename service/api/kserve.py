"""KServe v2 / Triton HTTP inference protocol, so tritonclient and perf_analyzer work unchanged.

Every served variant is a v2 model named ``{model}.{precision}`` (e.g. ``yolov3-tiny-coco.int8``);
the bare ``{model}`` name runs the ``auto`` policy, or the precision given as request parameter
``precision``. Inputs are the model's own preprocessed tensor (NCHW float32, as Triton would take
it); outputs are the raw engine outputs. Each image row goes through the same batcher as
``/detect``, so v2 and REST traffic are batched together.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from engines.precision import Precision
from service.api.kserve_codec import (
    HEADER_LENGTH,
    InferRequest,
    check_output_types,
    check_requested_outputs,
    requested_precision,
)
from service.api.kserve_pool import CodecPool
from service.api.v2_models import TensorRows, platform, resolve_v2
from service.deps import AuthDep, MetricsDep, RegistryDep, SettingsDep, check_api_key_for_ops
from service.errors import ModelNotFound
from service.flow import serve
from service.registry import ModelRegistry, ServedModel, ServedVariant
from service.version import VERSION

router = APIRouter(prefix="/v2", tags=["kserve-v2"])
ops = [AuthDep]
PRECISIONS = {p.value for p in Precision}


def resolve(
    registry: ModelRegistry, name: str, version: str | None = None
) -> tuple[ServedModel, str | None]:
    """``model`` or ``model.precision`` -> (served model, explicit precision or None); 404 for
    a precision never built or a version not served (see ``service.api.v2_models``)."""
    target = resolve_v2(registry, name, version)
    if target.image:  # NAME.detect has its own routes (service.api.kserve_image)
        raise ModelNotFound(f"{name[:64]!r} is served by its own v2 routes")
    return target.model, target.precision


def _shape(dims: tuple[int | None, ...]) -> list[int]:
    return [-1 if d is None else d for d in dims]


@router.get("/health/live", summary="v2 liveness")
async def v2_live(request: Request, settings: SettingsDep) -> JSONResponse:
    check_api_key_for_ops(request, settings)
    return JSONResponse({"live": True})


@router.get("/health/ready", summary="v2 readiness")
async def v2_ready(request: Request, registry: RegistryDep, settings: SettingsDep) -> JSONResponse:
    check_api_key_for_ops(request, settings)
    ok, _ = registry.readiness()
    ok = ok and not registry.draining
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("", dependencies=ops, summary="v2 server metadata")
async def v2_server() -> dict[str, Any]:
    return {
        "name": "detect-serve",
        "version": VERSION,
        "extensions": ["binary_tensor_data", "statistics", "model_repository"],
    }


@router.get("/models/{model_name}", dependencies=ops, summary="v2 model metadata")
@router.get("/models/{model_name}/versions/{version}", dependencies=ops, include_in_schema=False)
async def v2_model(model_name: str, request: Request, registry: RegistryDep) -> dict[str, Any]:
    model, precision = resolve(registry, model_name, request.path_params.get("version"))
    info = model.info
    return {
        "name": model_name,
        "versions": [str(model.version)],
        "platform": platform(resolve_v2(registry, model_name).variant()),
        "parameters": {"precision": precision or "auto", "layout": model.pipeline.layout.name},
        "inputs": [
            {"name": t.name, "datatype": "FP32", "shape": _shape(t.shape)} for t in info.inputs
        ],
        "outputs": [
            {"name": t.name, "datatype": "FP32", "shape": _shape(t.shape)} for t in info.outputs
        ],
    }


@router.get("/models/{model_name}/config", dependencies=ops, summary="Triton-style model config")
async def v2_config(
    model_name: str, registry: RegistryDep, settings: SettingsDep
) -> dict[str, Any]:
    model, _ = resolve(registry, model_name)
    answering = resolve_v2(registry, model_name).variant()

    def dims(shape: tuple[int | None, ...]) -> list[int]:
        return _shape(shape[1:])

    return {
        "name": model_name,
        "platform": platform(answering),
        "max_batch_size": settings.max_batch,
        "input": [
            {"name": t.name, "data_type": "TYPE_FP32", "dims": dims(t.shape)}
            for t in model.info.inputs
        ],
        "output": [
            {"name": t.name, "data_type": "TYPE_FP32", "dims": dims(t.shape)}
            for t in model.info.outputs
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": int(settings.max_wait_ms * 1000)},
    }


@router.get("/models/{model_name}/ready", dependencies=ops, summary="v2 model readiness")
@router.get(
    "/models/{model_name}/versions/{version}/ready", dependencies=ops, include_in_schema=False
)
async def v2_model_ready(model_name: str, request: Request, registry: RegistryDep) -> JSONResponse:
    model, precision = resolve(registry, model_name, request.path_params.get("version"))
    variants = (
        model.variants.values()
        if precision is None
        else [v for p, v in model.variants.items() if p.value == precision]
    )
    ready = any(v.ready for v in variants)
    return JSONResponse({"name": model_name, "ready": ready}, status_code=200 if ready else 400)


class V2Route(TensorRows[Response]):
    """Preprocessed NCHW tensors in, one per batcher item; raw engine outputs out."""

    def __init__(
        self,
        model: ServedModel,
        name: str,
        header: InferRequest,
        arrays: dict[str, np.ndarray],
        max_images: int,
        codec: CodecPool,
    ) -> None:
        super().__init__(model, arrays, max_images)
        self._name = name
        self._header = header
        self._codec = codec

    async def read(self, variant: ServedVariant) -> int:
        check_requested_outputs(self._header, [t.name for t in self._model.info.outputs])
        return await super().read(variant)

    async def respond(self, variant: ServedVariant) -> Response:
        outputs = self.outputs()
        check_output_types(outputs)
        chosen = {"precision": variant.record.precision.value, "backend": variant.engine.backend}
        extra = {"model_version": str(self._model.version), "parameters": chosen}
        body, headers = await self._codec.encode(self._header, outputs, self._name, extra)
        return Response(body, headers=headers, media_type=headers["content-type"])


@router.post("/models/{model_name}/infer", dependencies=ops, summary="v2 inference")
@router.post(
    "/models/{model_name}/versions/{version}/infer", dependencies=ops, include_in_schema=False
)
async def v2_infer(
    model_name: str,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Response:
    model, precision = resolve(registry, model_name, request.path_params.get("version"))
    deadline = time.monotonic() + settings.default_deadline_ms / 1000
    codec: CodecPool = request.app.state.v2_codec
    body = await request.body()
    # Parsing, validation and tensor conversion of a body of many MB: off the event loop. No
    # tensor can hold more values than the body had bytes (JSON or binary).
    header, arrays = await codec.parse(
        body, request.headers.get(HEADER_LENGTH), settings.max_body_bytes
    )
    del body
    requested = precision or requested_precision(header)
    route = V2Route(model, model_name, header, arrays, settings.max_images_per_request, codec)
    return await serve(model, requested, route, deadline=deadline, metrics=metrics, request=request)
