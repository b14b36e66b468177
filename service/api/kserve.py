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
    check_requested_outputs,
    decode_inputs,
    encode_outputs,
    requested_precision,
    split_body,
)
from service.deps import AuthDep, MetricsDep, RegistryDep, SettingsDep, check_api_key_for_ops
from service.errors import BadRequest, ModelNotFound
from service.flow import Route, serve
from service.registry import ModelRegistry, ServedModel, ServedVariant
from service.scheduler import ItemResult

router = APIRouter(prefix="/v2", tags=["kserve-v2"])
ops = [AuthDep]
PRECISIONS = {p.value for p in Precision}


def resolve(registry: ModelRegistry, name: str) -> tuple[ServedModel, str | None]:
    """``model`` or ``model.precision`` -> (served model, explicit precision or None)."""
    base, _, suffix = name.rpartition(".")
    if base and suffix in PRECISIONS and base in registry.models:
        return registry.models[base], suffix
    if name in registry.models:
        return registry.models[name], None
    raise ModelNotFound(f"unknown v2 model {name[:64]!r}; see GET /v2/models/... or /models")


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


@router.get("", summary="v2 server metadata")
async def v2_server() -> dict[str, Any]:
    return {"name": "detect-serve", "version": "2", "extensions": ["binary_tensor_data"]}


@router.get("/models/{model_name}", dependencies=ops, summary="v2 model metadata")
@router.get("/models/{model_name}/versions/{version}", dependencies=ops, include_in_schema=False)
async def v2_model(model_name: str, registry: RegistryDep) -> dict[str, Any]:
    model, precision = resolve(registry, model_name)
    info = model.info
    return {
        "name": model_name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
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

    def dims(shape: tuple[int | None, ...]) -> list[int]:
        return _shape(shape[1:])

    return {
        "name": model_name,
        "platform": "onnxruntime_onnx",
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
async def v2_model_ready(model_name: str, registry: RegistryDep) -> JSONResponse:
    model, precision = resolve(registry, model_name)
    variants = (
        model.variants.values()
        if precision is None
        else [v for p, v in model.variants.items() if p.value == precision]
    )
    ready = any(v.ready for v in variants)
    return JSONResponse({"name": model_name, "ready": ready}, status_code=200 if ready else 400)


class V2Route(Route[Response]):
    """Preprocessed NCHW tensors in, one per batcher item; raw engine outputs out."""

    def __init__(
        self, model: ServedModel, name: str, header: dict[str, Any], binary: bytes, max_images: int
    ) -> None:
        self._model = model
        self._name = name
        self._header = header
        self._binary = binary
        self._max_images = max_images
        self._batch = np.empty((0,), np.float32)
        self._rows: dict[int, dict[str, np.ndarray]] = {}

    async def read(self, variant: ServedVariant) -> int:
        arrays = decode_inputs(self._header, self._binary)
        expected = self._model.info.inputs[0]
        batch = arrays.get(expected.name)
        want = tuple(d for d in expected.shape[1:])
        if batch is None or batch.ndim != 4 or tuple(batch.shape[1:]) != want:
            raise BadRequest(
                f"expected input {expected.name!r} of shape [-1, {', '.join(map(str, want))}]"
            )
        if not 1 <= batch.shape[0] <= self._max_images:
            raise BadRequest(f"batch of {batch.shape[0]}; allowed 1..{self._max_images}")
        check_requested_outputs(self._header, [t.name for t in self._model.info.outputs])
        self._batch = batch
        return int(batch.shape[0])

    async def prepare(self, variant: ServedVariant, index: int) -> np.ndarray:
        row: np.ndarray = self._batch[index].astype(np.float32, copy=False)
        return row

    async def finish(self, variant: ServedVariant, index: int, result: ItemResult) -> None:
        self._rows[index] = result.outputs

    def respond(self, variant: ServedVariant) -> Response:
        rows = [self._rows[i] for i in range(len(self._rows))]
        outputs = {n: np.concatenate([r[n] for r in rows]) for n in rows[0]}
        chosen = {"precision": variant.record.precision.value, "backend": variant.engine.backend}
        extra = {"parameters": chosen}
        body, headers = encode_outputs(self._header, outputs, self._name, extra)
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
    model, precision = resolve(registry, model_name)
    deadline = time.monotonic() + settings.default_deadline_ms / 1000
    header, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
    requested = precision or requested_precision(header)
    route = V2Route(model, model_name, header, binary, settings.max_images_per_request)
    return await serve(model, requested, route, deadline=deadline, metrics=metrics, request=request)
