"""KServe v2 / Triton HTTP inference protocol, so tritonclient and perf_analyzer work unchanged.

Every served variant is a v2 model named ``{model}.{precision}`` (e.g. ``yolov3-tiny-coco.int8``);
the bare ``{model}`` name runs the ``auto`` policy, or the precision given as request parameter
``precision``. Inputs are the model's own preprocessed tensor (NCHW float32, as Triton would take
it); outputs are the raw engine outputs. Each image row goes through the same batcher as
``/detect``, so v2 and REST traffic are batched together.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from engines.precision import Precision
from service.api.kserve_codec import HEADER_LENGTH, decode_inputs, encode_outputs, split_body
from service.deps import AuthDep, MetricsDep, RegistryDep, SettingsDep, check_api_key_for_ops
from service.errors import BadRequest, ModelNotFound, to_service_error
from service.inference import pick_variant
from service.registry import ModelRegistry, ServedModel, ServedVariant

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


async def _run_rows(
    variant: ServedVariant, batch: np.ndarray, deadline: float
) -> dict[str, np.ndarray]:
    results = await asyncio.gather(
        *(variant.scheduler.submit(row.astype(np.float32, copy=False), deadline) for row in batch)
    )
    names = results[0].outputs.keys()
    return {n: np.concatenate([r.outputs[n] for r in results]) for n in names}


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
    started = time.perf_counter()
    model, precision = resolve(registry, model_name)
    header, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
    requested = precision or str((header.get("parameters") or {}).get("precision", "auto"))
    variant = pick_variant(model, requested)
    arrays = decode_inputs(header, binary)
    expected = model.info.inputs[0]
    batch = arrays.get(expected.name)
    want = tuple(d for d in expected.shape[1:])
    if batch is None or batch.ndim != 4 or tuple(batch.shape[1:]) != want:
        raise BadRequest(
            f"expected input {expected.name!r} of shape [-1, {', '.join(map(str, want))}]"
        )
    if not 1 <= batch.shape[0] <= settings.max_images_per_request:
        raise BadRequest(f"batch of {batch.shape[0]}; allowed 1..{settings.max_images_per_request}")
    chosen = variant.record.precision.value
    deadline = time.monotonic() + settings.default_deadline_ms / 1000
    status = 500
    try:
        variant.scheduler.admit(batch.shape[0], deadline)  # all rows or none
        outputs = await _run_rows(variant, batch, deadline)
        status = 200
    except Exception as exc:
        err = to_service_error(exc)
        status = err.status
        raise err from exc
    finally:
        metrics.requests.labels(model.name, chosen, str(status)).inc()
        metrics.request_duration.labels(model.name, chosen).observe(time.perf_counter() - started)
    extra = {"parameters": {"precision": chosen, "backend": variant.engine.backend}}
    body, headers = encode_outputs(header, outputs, model_name, extra)
    return Response(body, headers=headers, media_type=headers["content-type"])
