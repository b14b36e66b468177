"""The FastAPI application factory and its lifespan.

Start-up loads and warms every configured model in a worker thread (readiness stays false until
then) and starts the batchers; shutdown stops accepting, lets accepted requests finish, drains the
batchers and releases the engines.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from service.api import detect, health, kserve, models
from service.audit import PrecisionAudit
from service.config import Settings
from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.schemas import COMMON_ERRORS

log = logging.getLogger(__name__)

DESCRIPTION = """
Object detection over REST. Send an image to `POST /detect` (multipart field `image`, or the raw
bytes with an image content type) and get boxes, labels and scores in original-image pixels.
Pick the variant per request with `precision=fp32|fp16|int8|auto`; `GET /models` lists what is
served with its measured accuracy and speed. KServe v2 / Triton HTTP clients use `/v2/...`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    _register_gpu_metrics(metrics)
    registry = ModelRegistry(settings, metrics)
    audit = PrecisionAudit(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(registry.load)
        registry.start()
        audit.attach(registry)
        ok, reasons = registry.readiness()
        if ok:
            log.info("ready: %s", ", ".join(settings.models))
        else:
            log.error("not ready: %s", "; ".join(reasons))
        try:
            yield
        finally:
            await audit.close()  # shadow runs are optional: stop them before the engines go
            await registry.close(settings.shutdown_grace_s)
            log.info("drained: every accepted request was answered")

    app = FastAPI(
        title="detect-serve",
        summary="Detection serving with proven FP32/FP16/INT8 engines",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.audit = audit
    install_error_handlers(app)
    for module in (detect, models, health, kserve):
        app.include_router(module.router, responses=COMMON_ERRORS)
    _use_error_shape_in_openapi(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Deadline-Ms"],
        )
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    return app


def _use_error_shape_in_openapi(app: FastAPI) -> None:
    """Document the JSON error shape the handlers really send, also for FastAPI's own 422."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
        v2_error = {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        }
        for route, path in schema.get("paths", {}).items():
            shape = v2_error if route.startswith("/v2") else error_ref
            for operation in path.values():
                for status, response in operation.get("responses", {}).items():
                    if status.startswith(("4", "5")):
                        response["content"] = {"application/json": {"schema": shape}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _register_gpu_metrics(metrics: Metrics) -> None:
    """NVML GPU memory/utilisation metrics where a GPU is present; nothing otherwise."""
    try:
        from service.gpu_metrics import register_gpu_collector
    except ImportError:
        return
    if register_gpu_collector(metrics.registry):
        log.info("exporting GPU metrics from NVML")
