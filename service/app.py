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

from service.api import (
    detect,
    health,
    kserve,
    kserve_image,
    kserve_repository,
    kserve_stats,
    models,
)
from service.api.kserve_pool import CodecPool
from service.audit import PrecisionAudit
from service.config import Settings
from service.deps import scope_is_authorized
from service.docs_offline import install_offline_docs
from service.errors import install_error_handlers
from service.leases import LeaseMiddleware
from service.limits import BodyLimitMiddleware, BodyLimits
from service.metrics import Metrics
from service.model_control import ModelControl
from service.protocol import ShutdownSignal
from service.registry import ModelRegistry
from service.request_id import RequestIdMiddleware
from service.scheduler import DecodeBudget
from service.schemas import COMMON_ERRORS
from service.version import VERSION

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
    decoding = DecodeBudget(
        memory_bytes=settings.decode_memory_bytes, workers=settings.decode_workers
    )
    v2_codec = CodecPool()
    # uvicorn cancels what is left at the end of the grace period; uploads are cut a second
    # earlier so their clients get a JSON 503 rather than a dropped connection.
    shutdown = ShutdownSignal(cut_after_s=max(0.0, settings.shutdown_grace_s - 1.0))
    audit = PrecisionAudit(settings, metrics)
    control = ModelControl(registry, settings, audit)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(registry.load)
        registry.start()
        audit.attach(registry)
        grpc_server = await _start_grpc(registry, settings, metrics, decoding, control)
        ok, reasons = registry.readiness()
        if ok:
            log.info("ready: %s", ", ".join(settings.models))
        else:
            log.error("not ready: %s", "; ".join(reasons))
        try:
            yield
        finally:
            if grpc_server is not None:
                # Refuse new calls, let accepted ones finish within the grace period.
                await grpc_server.stop(settings.shutdown_grace_s)
            await control.close()  # versions retired by a reload finish their drain
            await audit.close()  # shadow runs are optional: stop them before the engines go
            await registry.close(settings.shutdown_grace_s)
            decoding.close()
            v2_codec.close()
            log.info("drained: every accepted request was answered")

    app = FastAPI(
        title="detect-serve",
        summary="Detection serving with proven FP32/FP16/INT8 engines",
        description=DESCRIPTION,
        version=VERSION,
        lifespan=lifespan,
        docs_url=None,  # served from the package instead of a CDN (service.docs_offline)
        redoc_url=None,
    )
    install_offline_docs(app)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.decode_budget = decoding
    app.state.v2_codec = v2_codec
    app.state.shutdown = shutdown
    app.state.audit = audit
    app.state.model_control = control
    install_error_handlers(app)
    # The image model and statistics routes come before the generic /v2/models/{name} ones.
    for module in (detect, models, health, kserve_image, kserve_stats, kserve_repository, kserve):
        app.include_router(module.router, responses=COMMON_ERRORS)
    _use_error_shape_in_openapi(app)
    # Innermost: a request holds the model version it looked up until its reply is sent.
    app.add_middleware(LeaseMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "X-Deadline-Ms",
                "X-Request-ID",
            ],
            expose_headers=[
                "X-Request-ID",
                "X-Precision",
                "X-Backend",
                "X-Model-Version",
                "Deprecation",
            ],
        )
    limits = BodyLimits(
        settings.max_body_bytes,
        idle_timeout_s=settings.body_idle_timeout_s,
        min_bytes_per_s=settings.body_min_bytes_per_s,
        rate_grace_s=settings.body_rate_grace_s,
    )
    # The offline docs (service.docs_offline) are routes of their own, not FastAPI's docs_url.
    docs = ("/docs", "/docs/oauth2-redirect", "/redoc", app.openapi_url)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        limits=limits,
        shutdown=shutdown,
        authorized=lambda scope: scope_is_authorized(scope, settings.api_keys),
        protected_paths=[p for p in docs if p] if settings.protect_docs else [],
    )
    # Outermost, so even a 413 from the body limit carries (and logs) the request ID.
    app.add_middleware(RequestIdMiddleware, log_requests=settings.log_requests)
    return app


async def _start_grpc(
    registry: ModelRegistry,
    settings: Settings,
    metrics: Metrics,
    decoding: DecodeBudget,
    control: ModelControl,
) -> Any:
    """The KServe v2 gRPC endpoint on the same event loop (None when ``grpc_port`` is 0)."""
    if settings.grpc_port == 0:
        return None
    from service.grpc_v2.server import start_grpc_server

    return await start_grpc_server(registry, settings, metrics, decoding, control)


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
