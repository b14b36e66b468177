"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import MetricsDep, RegistryDep, check_api_key_for_ops

router = APIRouter(tags=["operations"], dependencies=[Depends(check_api_key_for_ops)])


@router.get("/health/live", summary="The process is up (restart it if not)")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/health/ready", summary="Every model is warm and serving (route traffic if 200)")
async def ready(registry: RegistryDep) -> JSONResponse:
    ok, reasons = registry.readiness()
    if registry.draining:
        ok, reasons = False, ["draining for shutdown", *reasons]
    body = {"status": "ready" if ok else "not ready", "reasons": reasons}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
